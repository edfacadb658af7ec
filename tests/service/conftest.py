"""Fixtures of the service tests (helpers live in svc_helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.live_server import server_factory  # noqa: F401 (fixture)
from svc_helpers import ROOT, write_tiny_repo

from service.launch import find_model_folders


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository folder with the tiny models (built once per session)."""
    return write_tiny_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def default_or_tiny_repo(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's models/ when it holds models, else a copy of the tiny repository."""
    if find_model_folders(ROOT / "models"):
        return ROOT / "models"
    dest = tmp_path_factory.mktemp("fallback") / "models"
    shutil.copytree(tiny_repo, dest)
    return dest
