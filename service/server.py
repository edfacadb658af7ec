"""``mcdrop serve``: parse the command line and start an engine.

uvicorn (the default) runs in :func:`service.launch.run_uvicorn`, with the gRPC server
(:mod:`service.grpc`, port 8001 unless ``--grpc-port`` or ``--no-grpc``) in its event
loop; ``--engine ray`` hands the whole command line to :func:`service.ray_app.main`, which
has its own options. Ray is an optional dependency, so that module is imported only when
asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from service.launch import configure_logging, models_root, run_uvicorn
from service.settings import Settings

__all__ = ["main", "DEFAULT_GRPC_PORT"]

DEFAULT_GRPC_PORT = 8001  # beside HTTP's 8000, as Triton does


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcdrop serve",
        description="Serve the models of a repository folder over HTTP (v1 JSON API and the "
        "Open Inference Protocol v2) and gRPC (the Open Inference Protocol). Every option "
        "also reads MCDROP_<OPTION> from the environment; the command line wins.",
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    grpc = p.add_mutually_exclusive_group()
    grpc.add_argument(
        "--grpc-port",
        type=int,
        help=f"TCP port of the Open Inference Protocol over gRPC (default {DEFAULT_GRPC_PORT})",
    )
    grpc.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
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


def _wants_ray(argv: list[str]) -> bool:
    """True for ``--engine ray`` / ``--engine=ray`` (its own parser takes the rest)."""
    for i, a in enumerate(argv):
        if a == "--engine=ray" or (a == "--engine" and argv[i + 1 : i + 2] == ["ray"]):
            return True
    return False


def _ray_main(argv: list[str]) -> int:
    try:
        ray_app = importlib.import_module("service.ray_app")  # optional: mcdrop[ray]
    except ImportError as exc:
        print(f"mcdrop serve: {exc}", file=sys.stderr)
        return 2
    code: int = ray_app.main(argv)
    return code


def _grpc_port(args: argparse.Namespace, settings: Settings) -> int | None:
    """--no-grpc, else --grpc-port, else MCDROP_GRPC_PORT, else 8001."""
    if args.no_grpc:
        return None
    if args.grpc_port is not None:
        port: int = args.grpc_port
        return port
    return DEFAULT_GRPC_PORT if settings.grpc_port is None else settings.grpc_port


def main(argv: Sequence[str]) -> int:
    """Run the server until SIGTERM/SIGINT; 0 on a clean exit, 2 on a configuration error."""
    argv = list(argv)
    if _wants_ray(argv):
        return _ray_main(argv)
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env().with_overrides(
            host=args.host,
            port=args.port,
            models_dir=args.models_dir,
            workers=args.workers,
            log_level=args.log_level,
        )
        # A copy, not with_overrides: that one cannot set None (--no-grpc).
        settings = type(settings)(**{**dict(settings), "grpc_port": _grpc_port(args, settings)})
    except ValueError as exc:
        print(f"mcdrop serve: {exc}", file=sys.stderr)
        return 2
    root = models_root(settings)
    if root is None:
        return 2
    settings = settings.with_overrides(models_dir=root)
    configure_logging(settings.log_level)
    run_uvicorn(settings)
    return 0
