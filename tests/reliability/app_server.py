"""uvicorn serving an app built here from a thread, with the app at hand (its plane and
batchers), for the budget and fairness tests; and a copy of the toy1d model."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from helpers.live_server import MODELS_DIR

from service.app import create_app
from service.settings import Settings

__all__ = ["Served", "serve", "toy_copy", "rss_bytes"]


@dataclass
class Served:
    url: str
    app: Any

    def runtime(self, name: str) -> Any:
        """The model's :class:`service.runtime.ModelRuntime`."""
        return self.app.state.plane.models[name]


@contextmanager
def serve(settings: Settings, timeout: float = 90.0) -> Iterator[Served]:
    """uvicorn on a free 127.0.0.1 port in a thread, once ``/health/ready`` is 200;
    stopped on exit."""
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    while httpx.get(url + "/health/ready", timeout=5).status_code != 200:  # models load
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server's models were not ready in time")
        time.sleep(0.05)
    try:
        yield Served(url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def toy_copy(root: Path, name: str, max_compute_seconds: float | None = None) -> Path:
    """models/toy1d copied to ``root/name`` under that name (and, if given, with
    ``[sampling] max_compute_seconds``)."""
    dst = root / name
    shutil.copytree(MODELS_DIR / "toy1d", dst)
    toml = (dst / "model.toml").read_text()
    toml = re.sub(r'^name = "toy1d"', f'name = "{name}"', toml, flags=re.M)
    if max_compute_seconds is not None:
        toml = toml.replace(
            "[sampling]\n", f"[sampling]\nmax_compute_seconds = {max_compute_seconds}\n"
        )
    (dst / "model.toml").write_text(toml)
    return dst


def rss_bytes() -> int:
    """Resident memory of this process (the in-thread server's too), from /proc."""
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
