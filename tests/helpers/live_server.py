"""The one live-server harness of the tests (and of ``benchmarks/load.py``).

Three ways to reach a real app, from the cheapest:

- :func:`app_client`: an httpx client wired to an app in-process (ASGI, lifespan included);
- :func:`live_server`: uvicorn in a thread of the test process, on a free loopback port
  (:func:`live_app` also hands over the app, for tests that look at its batchers);
- :func:`start_server`: the real ``mcdrop serve`` in a subprocess (signals, workers, the
  command line), with its output in a log file (a pipe nobody reads would block it once
  about 64 KiB of access lines are written). ``server_factory`` is the fixture form.

Servers bind 127.0.0.1 only and get the caller's ``MCDROP_*`` settings and none inherited
from the environment. The port binds before the models load (the service loads them in the
background), so start-up waits, bounded, until loading has finished: ``/health/ready``
answers 200, or 503 naming failed folders and none still loading (a repository with a
broken folder under strict readiness). Stopping sends SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings

__all__ = [
    "ROOT",
    "MODELS_DIR",
    "LiveApp",
    "ServerProcess",
    "app_client",
    "free_port",
    "live_app",
    "live_server",
    "metric",
    "server_factory",
    "settled",
    "start_server",
]

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "models"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settled(response: httpx.Response) -> bool:
    """Whether a ``/health/ready`` answer says loading has finished: 200, or 503 with no
    folder still loading (only failures left)."""
    if response.status_code == 200:
        return True
    if response.status_code != 503:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "status" in body and body.get("loading") == []


async def _until_loaded(app: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not app.state.plane.loaded:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app's models did not load within {timeout} s")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def app_client(
    settings: Settings, *, wait: bool = True, timeout: float = 120.0
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to a fresh app in-process, lifespan included (``c.app``);
    with ``wait`` (the default) it is handed over once the models are loaded."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if wait:
            await _until_loaded(app, timeout)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://mcdrop.test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


@dataclass
class LiveApp:
    """An app served from a thread by :func:`live_app`: its base URL and the app itself
    (its plane and batchers at hand)."""

    url: str
    app: Any
    server: uvicorn.Server  # (its ``server_state`` counts the open connections)
    port: int

    def runtime(self, name: str) -> Any:
        """The model's :class:`service.runtime.ModelRuntime`."""
        return self.app.state.plane.models[name]


@contextmanager
def live_app(
    settings: Settings, timeout: float = 60.0, options: dict[str, Any] | None = None
) -> Iterator[LiveApp]:
    """uvicorn serving ``create_app(settings)`` from a thread on a free 127.0.0.1 port;
    yields once the start-up load has finished; stopped on exit. ``options`` replaces the
    ``uvicorn.Config`` options (say, ``mcdrop serve``'s: ``service.launch.uvicorn_options``
    without host and port)."""
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if options is None:
        options = {"log_level": "warning", "access_log": False, "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not (server.started and app.state.plane.loaded):
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server did not start or load its models")
        time.sleep(0.02)
    try:
        yield LiveApp(f"http://127.0.0.1:{port}", app, server, port)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextmanager
def live_server(
    api_key: str | None = None,
    timeout: float = 60.0,
    models_dir: Path = MODELS_DIR,
    settings: Settings | None = None,
) -> Iterator[str]:
    """Serve ``models_dir`` (default: the repository's models) from a thread; yields the
    base URL once the models are loaded. ``settings``, when given, replaces the others."""
    if settings is None:
        settings = Settings(models_dir=models_dir, api_key=api_key, log_level="warning")
    with live_app(settings, timeout) as served:
        yield served.url


@dataclass
class ServerProcess:
    """A ``mcdrop serve`` subprocess on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    models_dir: Path,
    env: dict[str, str] | None = None,
    *,
    log_path: Path | None = None,
    ready_timeout: float = 60.0,
    until: str = "settled",
    tree: Path = ROOT,
    args: Sequence[str] = (),
) -> ServerProcess:
    """Start ``python -m mcdrop.cli serve`` with ``MCDROP_*`` settings ``env``, running the
    code of source ``tree`` (this checkout; ``benchmarks/load_ab.py`` passes others), with
    more command-line ``args`` (such as ``--no-grpc``) after the port and model folder.

    Returns once loading has finished (:func:`settled`: ``/health/ready`` is 200, or 503
    with only failures); raises RuntimeError with the end of the server's log if it exits
    or has not finished within ``ready_timeout`` seconds (and stops it). ``until="live"``
    returns as soon as ``/health/live`` answers 200 (the models may still be loading).
    """
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")}
    # mcdrop serve's gRPC default is the fixed port 8001: tests in parallel would share it
    # (SO_REUSEPORT) and talk to each other's servers. Port 0 binds a free one.
    full["MCDROP_GRPC_PORT"] = "0"
    full.update(env or {})
    full["PYTHONPATH"] = str(tree) + os.pathsep + full.get("PYTHONPATH", "")
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="mcdrop-serve-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "mcdrop.cli", "serve", "--port", str(port),
           "--models-dir", str(models_dir), *args]  # fmt: skip
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=tree, env=full, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", port, log_path, dict(env or {}))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if until == "live":
                if httpx.get(server.url + "/health/live", timeout=1.0).status_code == 200:
                    return server
            elif settled(httpx.get(server.url + "/health/ready", timeout=1.0)):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready within {ready_timeout} s:\n{server.log()[-4000:]}")


def metric(url: str, name: str) -> float:
    """One sample of a server's /metrics by its full name with labels (0 when absent)."""
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start real servers inside a test; every one is stopped (SIGTERM, then SIGKILL)."""
    started: list[ServerProcess] = []

    def start(repo: Path, env: dict[str, str] | None = None) -> ServerProcess:
        log = tmp_path / f"server{len(started)}.log"
        # the default models take 30-60 s to load on the shared 2-core machine (langid)
        s = start_server(repo, env, log_path=log, ready_timeout=120.0)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
