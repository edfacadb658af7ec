"""Launching the service: logging, the models folder, uvicorn (one or many workers).

Shared by both engines: ``mcdrop serve`` (:mod:`service.server`) and the Ray Serve
deployment (:mod:`service.ray_app`) import this module and not each other.

SIGTERM/SIGINT under uvicorn: it stops accepting connections, lets in-flight requests
finish for up to ``MCDROP_DRAIN_SECONDS`` (``timeout_graceful_shutdown``; those still
running then get a JSON 503), then the lifespan shutdown stops each model's batcher after
its queue is empty. Connections get the limits of :mod:`service.connections`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.connections import configure
from service.metrics import MULTIPROC_ENV
from service.settings import ENV_PREFIX, Settings
from service.tracing import RequestIdFilter

__all__ = [
    "app_factory",
    "configure_logging",
    "find_model_folders",
    "models_root",
    "run_uvicorn",
    "uvicorn_options",
    "MANIFEST",
]

MANIFEST = "model.toml"


def find_model_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root`` holding a manifest (hidden and ``_`` folders skipped)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / MANIFEST).is_file()
    )  # fmt: skip


def _attach_stderr(logger: logging.Logger, fmt: str) -> None:
    """One stderr handler of ours on ``logger`` (a second call adds none); its records
    carry the request id of the request that logged them (service.tracing)."""
    flag = "_mcdrop_handler"
    if not any(getattr(h, flag, False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(fmt))
        h.addFilter(RequestIdFilter())
        setattr(h, flag, True)
        logger.addHandler(h)


def configure_logging(level: str) -> None:
    """Log records of ``mcdrop.*`` to stderr; access lines (already JSON) as they are."""
    lib = logging.getLogger("mcdrop")
    _attach_stderr(lib, "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    lib.setLevel(level.upper())
    access = logging.getLogger("mcdrop.access")
    _attach_stderr(access, "%(message)s")
    access.propagate = False
    # Access lines are INFO records: "warning" and above turn them off, as in uvicorn.
    access.setLevel(level.upper())


def models_root(settings: Settings) -> Path | None:
    """The resolved models folder, or None after telling the user it holds no model."""
    root = Path(settings.models_dir).resolve()
    if find_model_folders(root):
        return root
    print(
        f"mcdrop serve: no models in {root}: expected one sub-folder per model with a "
        f"{MANIFEST} (and model.py + weights.safetensors, or a transformers folder). "
        "Without --models-dir and MCDROP_MODELS_DIR, mcdrop serve serves the default "
        "models that ship with the package; `mcdrop inspect FOLDER` checks a folder.",
        file=sys.stderr,
    )
    return None


def app_factory() -> FastAPI:
    """The app from ``MCDROP_*`` variables (uvicorn's factory for ``--workers`` > 1)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    configure(settings.conn)  # this worker's connection limits, before its first connection
    return create_app(settings)


@contextmanager
def _metrics_folder() -> Iterator[None]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers: a fresh folder, removed afterwards
    (one the user set is used as it is and kept)."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="mcdrop-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` options of ``mcdrop serve`` (the tests serve with them too);
    makes ``settings.conn`` this process's connection limits."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # mcdrop.access writes one JSON line per request
        "timeout_graceful_shutdown": settings.drain_seconds,
        "lifespan": "on",
        # The protocol class with the connection limits (an import path: workers import it).
        "http": configure(settings.conn),
        "timeout_keep_alive": settings.conn.idle_timeout_s,
        # h11's own head limit, above ours so that ours answers first (431, JSON).
        "h11_max_incomplete_event_size": settings.conn.max_header_bytes + 2**20,
    }


def run_uvicorn(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT: the app in this process, or ``settings.workers``
    processes that each build it from the environment."""
    common = uvicorn_options(settings)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # Each worker process builds its own app from the environment.
    for name, value in {
        "models_dir": str(settings.models_dir), "host": settings.host,
        "port": str(settings.port), "log_level": settings.log_level,
        "workers": str(settings.workers),
        # Empty reads as unset (no gRPC): --no-grpc must win over an inherited variable.
        "grpc_port": "" if settings.grpc_port is None else str(settings.grpc_port),
    }.items():  # fmt: skip
        os.environ[ENV_PREFIX + name.upper()] = value
    with _metrics_folder():
        uvicorn.run(
            "service.launch:app_factory",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
