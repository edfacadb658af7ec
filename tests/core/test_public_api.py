"""``mcdrop.__all__`` is the public namespace: every name resolves, none is missing."""

from __future__ import annotations

import types

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
