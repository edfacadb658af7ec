"""``mcdrop.__all__`` is the public namespace: every name resolves, none is missing; and no
module is too long to read."""

from __future__ import annotations

import types
from pathlib import Path

import mcdrop
import mcdrop.errors


def test_every_exported_name_resolves() -> None:
    for name in mcdrop.__all__:
        assert getattr(mcdrop, name) is not None, name


def test_all_is_the_lazy_exports_the_errors_and_the_version() -> None:
    lazy = set(mcdrop._LAZY)
    assert len(mcdrop.__all__) == len(set(mcdrop.__all__))  # no name twice
    assert set(mcdrop.__all__) == lazy | set(mcdrop.errors.__all__) | {"__version__"}
    assert sorted(dir(mcdrop)) == sorted(mcdrop.__all__)


def test_nothing_public_is_left_out_of_all() -> None:
    for name in mcdrop.__all__:
        getattr(mcdrop, name)  # load every lazy export, so the namespace is complete
    public = {
        n
        for n, v in vars(mcdrop).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
        and n not in {"TYPE_CHECKING", "Any", "annotations"}
    }  # fmt: skip
    assert public <= set(mcdrop.__all__), public - set(mcdrop.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        mcdrop.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("mcdrop.no_such_name resolved")


def test_no_module_of_the_library_or_service_is_over_500_lines() -> None:
    # docs/architecture.md: a module a newcomer can read in one sitting (issue 14).
    root = Path(__file__).resolve().parents[2]
    sizes = {
        str(path.relative_to(root)): len(path.read_text(encoding="utf-8").splitlines())
        for package in ("mcdrop", "service")
        for path in (root / package).rglob("*.py")
    }
    assert len(sizes) > 40  # the walk found the packages
    too_long = {name: n for name, n in sizes.items() if n > 500}
    assert not too_long, f"modules over 500 lines (split them by job): {too_long}"
