"""Run the real ``mcdrop serve`` in a subprocess on 127.0.0.1, for tests and benchmarks.

::

    with start_server(Path("models"), {"MCDROP_MAX_QUEUE_SIZE": "16"}) as server:
        httpx.get(server.url + "/v1/models")

The server gets a free loopback port, the caller's ``MCDROP_*`` settings (and none
inherited from the environment), and its output goes to a log file. Start-up waits, bounded,
until ``/health/ready`` answers 200; stopping sends SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port", "start_server"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
) -> ServerProcess:
    """Start ``python -m mcdrop.cli serve`` with ``MCDROP_*`` settings ``env``.

    Returns once ``/health/ready`` is 200; raises RuntimeError with the end of the server's
    log if it exits or is not ready within ``ready_timeout`` seconds (and stops it).
    """
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")}
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="mcdrop-serve-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "mcdrop.cli", "serve", "--port", str(port),
           "--models-dir", str(models_dir)]  # fmt: skip
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", port, log_path, dict(env or {}))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.url + "/health/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready within {ready_timeout} s:\n{server.log()[-4000:]}")
