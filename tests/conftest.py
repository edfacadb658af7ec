"""Shared fixtures: seeded torch state per test, tiny models, CI's shape knobs; the
``container`` test runs only when ``-m`` names it.

Two environment variables let CI run the engine tests again in other GEMM shapes, to
catch float32 comparisons that only hold for one chunking or thread split:

- ``MCDROP_TEST_THREADS``: torch's intra-op thread count for the whole run;
- ``MCDROP_TEST_CHUNK_BYTES``: the engine's CPU activation budget per chunk (default
  64 MiB), so that default-sized predictors split their rows into other chunks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

DEFAULT_MODELS = Path(__file__).resolve().parents[1] / "models"

_THREADS = os.environ.get("MCDROP_TEST_THREADS")
if _THREADS:
    torch.set_num_threads(int(_THREADS))


def pytest_configure(config: pytest.Config) -> None:
    # schemathesis is a pytest plugin, so pytest rewrites the asserts of its modules as it
    # imports them, lazily, deep inside the fuzz tests' fixture; in xdist workers that
    # rewrite has raised CPython 3.11's "AST constructor recursion depth mismatch"
    # SystemError (3 of 5 runs here). Its asserts are not the tests', so leave them as is.
    hook = getattr(config.pluginmanager, "rewrite_hook", None)
    must_rewrite = getattr(hook, "_must_rewrite", None)
    if isinstance(must_rewrite, set):
        must_rewrite.discard("schemathesis")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The container test builds an image with podman as root (minutes, and it installs
    # packages): it runs only when the marker expression names it, as in `-m container`.
    if "container" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="builds the Docker image with podman; select it with "
                            "`python3 scripts/dev.py test -m container` (CI does)")  # fmt: skip
    for item in items:
        if item.get_closest_marker("container") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _chunk_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = os.environ.get("MCDROP_TEST_CHUNK_BYTES")
    if budget:
        import mcdrop.engine.runner

        monkeypatch.setattr(mcdrop.engine.runner, "CPU_BUDGET_BYTES", int(budget))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    # Seed per test (never at import) so tests do not depend on their order.
    torch.manual_seed(1234)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(42)


@pytest.fixture(scope="session")
def default_models_subset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(*names)``: a fresh model repository holding copies of those default models.

    For servers whose tests use only some of ``models/``: loading and warming up one small
    model takes a fraction of what all of them (the text model's tokenizer included) take.
    """

    def make(*names: str) -> Path:
        repo = tmp_path_factory.mktemp("models")
        for name in names:
            skip = shutil.ignore_patterns("__pycache__")
            shutil.copytree(DEFAULT_MODELS / name, repo / name, ignore=skip)
        return repo

    return make
