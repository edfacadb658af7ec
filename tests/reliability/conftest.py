"""Fixtures of the reliability tests (fuzzing, faults, load against the real server).

The tiny models and the real-server launcher of ``tests/service`` are reused: that folder
is put on ``sys.path`` so ``svc_helpers`` imports by module name (neither folder has an
``__init__.py``, so neither shadows the ``service`` package).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (_HERE.parent / "service", _HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fault_models import write_fault_repo  # noqa: E402
from helpers.live_server import server_factory  # noqa: E402, F401 (fixture)
from svc_helpers import write_tiny_repo  # noqa: E402


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reg, clf, slow and broken (missing weights) from tests/service."""
    return write_tiny_repo(tmp_path_factory.mktemp("rel-repo"))


@pytest.fixture(scope="session")
def fault_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good models next to broken ones, plus an OOM-raising and a slow model."""
    return write_fault_repo(tmp_path_factory.mktemp("fault-repo"))
