"""Helpers of the service tests: tiny model repositories, in-process apps, real servers."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from mcdrop.repository import Manifest, save_model
from service.app import create_app
from service.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "mcdrop_service_test_models", Path(__file__).with_name("tiny_models.py")
)
assert _spec is not None and _spec.loader is not None
tiny_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_models)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(tiny_models.__file__)
FEATURES = 4


def _manifest(name: str, task: str, factory: str, **kw: Any) -> Manifest:
    base: dict[str, Any] = {
        "name": name,
        "version": "1",
        "task": task,
        "description": f"tiny {task} test model",
        "input_shape": (FEATURES,),
        "output_shape": (1,),
        "default_samples": 16,
        "max_samples": 200,
        "max_batch_rows": 8,
        "factory": factory,
    }
    base.update(kw)
    return Manifest(**base)


def write_tiny_repo(root: Path, *, slow_delay: float = 0.2, broken: bool = True) -> Path:
    """reg (regression), clf (3 classes), slow (sleeps, raises on a row of 13s), broken."""
    torch.manual_seed(0)
    save_model(
        root / "reg",
        tiny_models.build_regressor(),
        _manifest("reg", "regression", "build_regressor", tau=4.0),
        SOURCE,
    )
    save_model(
        root / "clf",
        tiny_models.build_classifier(),
        _manifest(
            "clf",
            "classification",
            "build_classifier",
            output_shape=(3,),
            output_names=("a", "b", "c"),
        ),
        SOURCE,
    )
    slow = _manifest(
        "slow", "regression", "build_slow", max_batch_rows=1, config={"delay": slow_delay}
    )
    save_model(root / "slow", tiny_models.build_slow(delay=slow_delay), slow, SOURCE)
    if broken:
        save_model(
            root / "broken",
            tiny_models.build_regressor(),
            _manifest("broken", "regression", "build_regressor"),
            SOURCE,
        )
        (root / "broken" / "weights.safetensors").unlink()
    return root


def make_settings(repo: Path, **kw: Any) -> Settings:
    """Test settings: small limits so that each limit is cheap to reach."""
    base: dict[str, Any] = {
        "models_dir": repo,
        "max_body_bytes": 64 * 1024,
        "max_queue_size": 4,
        "max_queue_delay_ms": 5.0,
        "request_timeout_s": 5.0,
        "drain_seconds": 5.0,
    }
    base.update(kw)
    return Settings(**base)


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to a fresh app in-process, lifespan included."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://mcdrop.test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A ``mcdrop serve`` subprocess on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    repo: Path, log_path: Path, env: dict[str, str] | None = None, timeout: float = 40.0
) -> Server:
    """Start ``python -m mcdrop.cli serve`` and wait (bounded) until /health/ready is 200."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT)
    cmd = [
        sys.executable,
        "-m",
        "mcdrop.cli",
        "serve",
        "--port",
        str(port),
        "--models-dir",
        str(repo),
    ]
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by the subprocess' end
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", port, log_path, env or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready within {timeout} s:\n{server.log()}")


def stop_server(server: Server, timeout: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)
    return server.proc.returncode
