"""``mcdrop serve``: run the service under uvicorn.

SIGTERM/SIGINT: uvicorn stops accepting connections, lets in-flight requests finish for up
to ``MCDROP_DRAIN_SECONDS`` (``timeout_graceful_shutdown``), then the lifespan shutdown
stops each model's batcher after its queue is empty.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from service.settings import ENV_PREFIX, Settings

__all__ = ["main", "app_factory", "configure_logging", "find_model_folders"]

MANIFEST = "model.toml"


def find_model_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root`` holding a manifest (hidden and ``_`` folders skipped)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / MANIFEST).is_file()
    )  # fmt: skip


def configure_logging(level: str) -> None:
    """Log records of ``mcdrop.*`` to stderr; access lines (already JSON) as they are."""
    handler_flag = "_mcdrop_handler"
    lib = logging.getLogger("mcdrop")
    if not any(getattr(h, handler_flag, False) for h in lib.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        setattr(h, handler_flag, True)
        lib.addHandler(h)
    lib.setLevel(level.upper())
    access = logging.getLogger("mcdrop.access")
    if not any(getattr(h, handler_flag, False) for h in access.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        setattr(h, handler_flag, True)
        access.addHandler(h)
    access.propagate = False
    # Access lines are INFO records: "warning" and above turn them off, as in uvicorn.
    access.setLevel(level.upper())


def app_factory() -> FastAPI:
    """The app from ``MCDROP_*`` variables (uvicorn's factory for ``--workers`` > 1)."""
    from service.app import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcdrop serve",
        description="Serve the models of a repository folder over HTTP (v1 JSON API and the "
        "Open Inference Protocol v2). Every option also reads MCDROP_<OPTION> from the "
        "environment; the command line wins.",
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--models-dir", type=Path, help="model repository folder (default: models/)")
    p.add_argument("--workers", type=int, help="worker processes, each loading every model")
    p.add_argument(
        "--engine",
        choices=["uvicorn", "ray"],
        default="uvicorn",
        help="uvicorn (default) or ray: the same app as Ray Serve replicas (needs mcdrop[ray]; "
        "see 'mcdrop serve --engine ray --help')",
    )
    p.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default=None
    )
    return p


def models_root(settings: Settings) -> Path | None:
    """The resolved models folder, or None after telling the user it holds no model."""
    root = Path(settings.models_dir).resolve()
    if find_model_folders(root):
        return root
    print(
        f"mcdrop serve: no models in {root}: expected one sub-folder per model with a "
        f"{MANIFEST} (see docs/service.md). Train the default models or pass "
        "--models-dir FOLDER.",
        file=sys.stderr,
    )
    return None


def _wants_ray(argv: list[str]) -> bool:
    """True for ``--engine ray`` / ``--engine=ray`` (its own parser takes the rest)."""
    for i, a in enumerate(argv):
        if a == "--engine=ray" or (a == "--engine" and argv[i + 1 : i + 2] == ["ray"]):
            return True
    return False


def main(argv: Sequence[str]) -> int:
    """Run the server until SIGTERM/SIGINT; 0 on a clean exit, 2 on a configuration error."""
    argv = list(argv)
    if _wants_ray(argv):
        try:
            from service.ray_app import main as ray_main
        except ImportError as exc:
            print(f"mcdrop serve: {exc}", file=sys.stderr)
            return 2
        return ray_main(argv)
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env().with_overrides(
            host=args.host,
            port=args.port,
            models_dir=args.models_dir,
            workers=args.workers,
            log_level=args.log_level,
        )
    except ValueError as exc:
        print(f"mcdrop serve: {exc}", file=sys.stderr)
        return 2
    root = models_root(settings)
    if root is None:
        return 2
    settings = settings.with_overrides(models_dir=root)
    configure_logging(settings.log_level)

    import uvicorn

    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # mcdrop.access writes one JSON line per request
        "timeout_graceful_shutdown": max(1, round(settings.drain_seconds)),
        "lifespan": "on",
    }
    if settings.workers == 1:
        from service.app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
    else:
        # Each worker process builds its own app from the environment.
        for name, value in {
            "models_dir": str(root), "host": settings.host, "port": str(settings.port),
            "log_level": settings.log_level, "workers": str(settings.workers),
        }.items():  # fmt: skip
            os.environ[ENV_PREFIX + name.upper()] = value
        uvicorn.run(
            "service.server:app_factory",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
    return 0
