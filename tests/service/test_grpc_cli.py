"""Where ``mcdrop serve`` puts gRPC: 8001 by default, ``--grpc-port``, ``MCDROP_GRPC_PORT``,
``--no-grpc``; plain ``Settings()`` (tests, embedders) serves no gRPC at all."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from service import server
from service.grpc import serving
from service.settings import Settings


def _served(monkeypatch: pytest.MonkeyPatch, repo: Path, *argv: str, env: str = "") -> Any:
    seen: list[Settings] = []
    monkeypatch.setattr(server, "run_uvicorn", seen.append)
    monkeypatch.delenv("MCDROP_GRPC_PORT", raising=False)
    if env:
        monkeypatch.setenv("MCDROP_GRPC_PORT", env)
    code = server.main(["--models-dir", str(repo), *argv])
    return seen[0].grpc_port if code == 0 else code


def test_serve_grpc_port(monkeypatch: pytest.MonkeyPatch, tiny_repo: Path) -> None:
    assert _served(monkeypatch, tiny_repo) == server.DEFAULT_GRPC_PORT == 8001
    assert _served(monkeypatch, tiny_repo, "--grpc-port", "9101") == 9101
    assert _served(monkeypatch, tiny_repo, env="9102") == 9102
    assert _served(monkeypatch, tiny_repo, "--grpc-port", "9103", env="9102") == 9103
    assert _served(monkeypatch, tiny_repo, "--no-grpc", env="9102") is None
    assert _served(monkeypatch, tiny_repo, "--grpc-port", "70000") == 2
    with pytest.raises(SystemExit):
        _served(monkeypatch, tiny_repo, "--grpc-port", "9104", "--no-grpc")


def test_plain_settings_serve_no_grpc() -> None:
    async def port() -> int | None:
        async with serving(Settings(), plane=None) as p:  # type: ignore[arg-type]
            return p

    assert Settings().grpc_port is None and asyncio.run(port()) is None


def test_a_port_held_by_another_program_fails_loudly() -> None:
    """A port bound without SO_REUSEPORT (another program) stops the start-up, naming it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        async def start() -> None:
            async with serving(Settings(grpc_port=port), plane=None):  # type: ignore[arg-type]
                pass

        with pytest.raises(RuntimeError, match=f"gRPC cannot listen on 127.0.0.1:{port}"):
            asyncio.run(start())
