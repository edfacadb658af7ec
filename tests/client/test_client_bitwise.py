"""``Client.predict(bitwise=True)`` / ``AsyncClient.predict``: the v1 ``bitwise`` field is
sent only when asked for (the server's side is tested in tests/reliability/test_bitwise.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mcdrop.client import AsyncClient, Client

ANSWER = {"model": "toy1d", "samples": 8, "seed": 1, "mean": [[0.5]], "variance": [[0.1]],
          "std": [[0.3]], "stderr": [[0.1]]}  # fmt: skip


def _recorder(bodies: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=ANSWER)

    return httpx.MockTransport(handle)


def test_bitwise_is_sent_only_when_asked() -> None:
    bodies: list[dict[str, Any]] = []
    with Client("http://mcdrop.test", transport=_recorder(bodies)) as c:
        c.predict("toy1d", [[0.5]], samples=8, seed=1, bitwise=True)
        c.predict("toy1d", [[0.5]], samples=8, seed=1)
    assert bodies[0]["bitwise"] is True and bodies[0]["seed"] == 1
    assert "bitwise" not in bodies[1]


@pytest.mark.anyio
async def test_async_client_sends_bitwise() -> None:
    bodies: list[dict[str, Any]] = []
    async with AsyncClient("http://mcdrop.test", transport=_recorder(bodies)) as c:
        out = await c.predict("toy1d", [[0.5]], samples=8, seed=1, bitwise=True)
    assert bodies == [{"inputs": [[0.5]], "samples": 8, "seed": 1, "bitwise": True}]
    assert out.mean.shape == (1, 1)
