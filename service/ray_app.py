"""The mcdrop service as a Ray Serve deployment (``mcdrop serve --engine ray``).

The same FastAPI app (:func:`service.app.create_app`) and the same engine run inside every
replica; Ray Serve adds the HTTP proxy in front, routes each request to a replica, queues at
most ``max_queued_requests`` per proxy and answers 503 beyond that::

    client --HTTP--> Ray proxy --(max_ongoing per replica, max_queued)--> replica 1..N
                                                                            create_app()
                                                                            batcher threads

Lifecycle of a replica under Ray Serve 2.60: the constructor runs (settings, logging), then
Ray calls :meth:`MCDropReplica.__serve_build_asgi_app__` once, which builds the app inside
the replica process (nothing with a lock or a thread is pickled), then Ray runs the app's
lifespan startup once (models load and warm up, one batcher thread per model starts). On
replica shutdown Ray runs the lifespan shutdown (batchers drain their queues) and then
:meth:`MCDropReplica.__del__`.

Three entry points:

- :func:`build_app` -> a Serve ``Application`` for ``serve.run`` (Python);
- :func:`app_builder` -> the same from a ``serve deploy`` config's ``args``
  (``import_path: service.ray_app:app_builder``, see ``deploy/ray/serve_config.yaml``);
- :func:`main` -> what ``mcdrop serve --engine ray`` runs: a local Ray, Serve on
  host:port, blocking until SIGINT/SIGTERM.

Ray is an optional dependency: ``pip install 'mcdrop[ray]'``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import ray
    from ray import serve
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mcdrop's Ray Serve engine needs Ray Serve, which is not installed "
        f"({_exc}). Install the extra: pip install 'mcdrop[ray]' "
        "(it pins ray[serve]==2.60.0)."
    ) from _exc

import torch
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.launch import configure_logging, models_root
from service.settings import APP_NAME, RaySettings, Settings

__all__ = [
    "RaySettings",
    "MCDropReplica",
    "build_app",
    "app_builder",
    "main",
    "REPLICA_HEADER",
    "DEPLOYMENT_NAME",
    "APP_NAME",
]

log = logging.getLogger("mcdrop.service")

REPLICA_HEADER = "x-mcdrop-replica"
DEPLOYMENT_NAME = "mcdrop"


# ------------------------------------------------------------------------------ replica


class _ReplicaHeader:
    """Adds ``x-mcdrop-replica: <replica id>`` to every HTTP response, so that clients
    and tests can see which replica answered."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.value = replica_id.encode("latin-1", "replace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((REPLICA_HEADER.encode(), self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit use of the class)
        return f"pid-{os.getpid()}"


@serve.ingress()
class MCDropReplica:
    """One Serve replica: the mcdrop FastAPI app with its own models and batchers.

    Parameters
    ----------
    settings : Settings
        The service settings (models folder, batching, limits); the same for every replica.
    """

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level)
        self._settings = settings
        self._replica = _replica_id()
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Called by Ray once per replica, after __init__ and before the lifespan startup.
        app = create_app(self._settings, background_load=False)  # started = models loaded
        app.add_middleware(_ReplicaHeader, replica_id=self._replica)
        self._app = app
        return app

    def diagnostics(self) -> dict[str, Any]:
        """This replica's identity and state (callable through a deployment handle)."""
        plane = self._app.state.plane if self._app is not None else None
        batchers = sorted(
            t.name for t in threading.enumerate() if t.name.startswith("mcdrop-batcher-")
        )
        return {
            "replica": self._replica,
            "pid": os.getpid(),
            "models": sorted(plane.models) if plane is not None else [],
            "failures": dict(plane.failures) if plane is not None else {},
            "ready": bool(plane is not None and plane.ready),
            "batcher_threads": batchers,
            "torch_threads": torch.get_num_threads(),
        }

    def __del__(self) -> None:
        # Ray runs the app's lifespan shutdown (batchers drained) before this.
        replica = getattr(self, "_replica", "?")  # __init__ may have failed
        log.info("mcdrop replica %s stopped (pid %d)", replica, os.getpid())


def build_app(settings: Settings | None = None, ray_settings: RaySettings | None = None) -> Any:
    """A Ray Serve application serving ``settings.models_dir`` with ``create_app``.

    Parameters
    ----------
    settings : Settings, optional
        Default: :meth:`Settings.from_env`. ``models_dir`` must be readable by every
        replica (same path on every node: bake the models into the image or mount them).
    ray_settings : RaySettings, optional
        Default: ``settings.ray``.

    Returns
    -------
    ray.serve.Application
        For ``serve.run(app, name=..., route_prefix=...)``.
    """
    settings = settings if settings is not None else Settings.from_env()
    rs = ray_settings if ray_settings is not None else settings.ray
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "num_replicas": rs.num_replicas,
        "max_ongoing_requests": rs.max_ongoing,
        "max_queued_requests": rs.max_queued,
        "ray_actor_options": {"num_cpus": rs.num_cpus},
        # Let in-flight requests finish on scale-down / shutdown, as uvicorn does.
        "graceful_shutdown_timeout_s": max(1.0, settings.drain_seconds),
        # Ray sleeps one wait loop (2 s by default) before it first looks for ongoing
        # requests, all from the same budget: with a short drain nothing was left for the
        # app's shutdown (batchers finishing, the replica's "stopped" line) before the
        # controller killed the replica. A quarter of the budget per loop leaves room.
        "graceful_shutdown_wait_loop_s": min(2.0, max(0.1, settings.drain_seconds / 4)),
    }
    if rs.autoscaling is not None:
        options["autoscaling_config"] = rs.autoscaling
    return serve.deployment(**options)(MCDropReplica).bind(settings)


def app_builder(args: Mapping[str, Any]) -> Any:
    """Builder for ``serve run`` / ``serve deploy`` (``service.ray_app:app_builder``).

    ``args`` (the config's ``args:`` block) may set any :class:`Settings` field (e.g.
    ``models_dir``, ``max_batch_rows``) and any :class:`RaySettings` field; unset fields
    come from the ``MCDROP_*`` / ``MCDROP_RAY_*`` environment, then the defaults. The
    config's ``deployments:`` section, when present, overrides the replica options again
    (that is Ray's rule).
    """
    args = dict(args or {})
    service_fields = set(Settings.model_fields) - {"ray"}
    ray_fields = set(RaySettings.model_fields)
    unknown = sorted(set(args) - service_fields - ray_fields)
    if unknown:
        raise ValueError(
            f"unknown args in the Serve config: {', '.join(unknown)} (known: Settings "
            "fields such as models_dir, and RaySettings fields such as max_ongoing)"
        )
    # Strings are parsed as in the environment (comma-separated lists, "~" expanded).
    settings = Settings.from_env().with_overrides(
        **{k: v for k, v in args.items() if k in service_fields}
    )
    ray_over = {k: v for k, v in args.items() if k in ray_fields}
    return build_app(settings, _ray_options(settings.ray, ray_over))


def _ray_options(rs: RaySettings, changes: Mapping[str, Any]) -> RaySettings:
    """``rs`` with the non-None ``changes``; a replica count given here replaces
    autoscaling from the environment, and autoscaling given here a replica count."""
    given = {k: v for k, v in changes.items() if v is not None}
    cleared: dict[str, Any] = {}
    if "autoscaling" in given:
        cleared["replicas"] = None
    elif "replicas" in given:
        cleared["autoscaling"] = None
    return RaySettings(**{**dict(rs), **cleared, **given})


# ------------------------------------------------------------------------------ command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcdrop serve --engine ray",
        description="Serve the models of a repository folder through Ray Serve replicas on "
        "a local Ray instance (or MCDROP_RAY_ADDRESS). Options also read MCDROP_<OPTION> "
        "and MCDROP_RAY_<OPTION>; the command line wins.",
    )
    p.add_argument("--engine", choices=["ray"], default="ray", help=argparse.SUPPRESS)
    p.add_argument("--host", help="interface the Ray proxy listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port of the Ray proxy (default 8000)")
    p.add_argument("--models-dir", type=Path, help="model repository folder (default: models/)")
    p.add_argument("--replicas", type=int, help="replicas, each loading every model")
    p.add_argument("--max-ongoing", type=int, help="requests per replica at once")
    p.add_argument("--max-queued", type=int, help="requests queued before 503")
    p.add_argument("--num-cpus", type=float, help="CPUs reserved per replica")
    p.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default=None
    )
    return p


def main(argv: Sequence[str]) -> int:
    """Run the service on Ray Serve until SIGINT/SIGTERM.

    Returns 0 after a clean shutdown, 2 on a configuration error (message on stderr).
    """
    args = _parser().parse_args(list(argv))
    try:
        settings = Settings.from_env().with_overrides(
            host=args.host, port=args.port, models_dir=args.models_dir, log_level=args.log_level
        )
        rs = _ray_options(settings.ray, {
            "replicas": args.replicas, "max_ongoing": args.max_ongoing,
            "max_queued": args.max_queued, "num_cpus": args.num_cpus,
        })  # fmt: skip
    except ValueError as exc:
        print(f"mcdrop serve: {exc}", file=sys.stderr)
        return 2
    root = models_root(settings)
    if root is None:
        return 2
    settings = settings.with_overrides(models_dir=root)
    configure_logging(settings.log_level)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down Ray Serve", signum)
        stop.set()

    init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if rs.address == "local":
        # Local replicas import service/ and mcdrop/ from this checkout even when it is
        # not installed; a cluster's nodes need mcdrop installed (see deploy/ray/).
        src = str(Path(__file__).resolve().parent.parent)
        init["runtime_env"] = {"env_vars": {"PYTHONPATH": _pythonpath_with(src)}}
    ray.init(address=rs.address, **init)
    # After ray.init: Ray's core installs its own SIGTERM handler (it aborts the process),
    # and ours must replace it so that SIGTERM shuts Serve down cleanly.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, rs), name=rs.app_name, route_prefix=rs.route_prefix)
        log.info(
            "mcdrop on Ray Serve: http://%s:%d%s, %s replica(s)",
            settings.host, settings.port, rs.route_prefix.rstrip("/"), rs.num_replicas,
        )  # fmt: skip
        while not stop.wait(0.5):
            pass
        log.info("stopping: replicas drain their queues (up to %.0f s)", settings.drain_seconds)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
    return 0


def _pythonpath_with(path: str) -> str:
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    return os.pathsep.join([path, *[p for p in parts if p != path]])
