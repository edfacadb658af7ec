"""``unless_disconnected``: a request whose client left is withdrawn from its model's queue
(never computed); a server that cannot report disconnects just gets the answer."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
import torch

from mcdrop.predictor import MCRequest, Prediction
from service.batching import Batcher
from service.deps import unless_disconnected
from service.errors import ClientDisconnected, status_for
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.anyio


class FakeRequest:
    """Only ``receive`` is used: it yields the messages given, then blocks (or raises)."""

    def __init__(self, messages: list[Any]) -> None:
        self.messages = list(messages)

    async def receive(self) -> dict[str, Any]:
        if not self.messages:
            await asyncio.sleep(3600)
        msg = self.messages.pop(0)
        if isinstance(msg, BaseException):
            raise msg
        if isinstance(msg, float):
            await asyncio.sleep(msg)
            return {"type": "http.disconnect"}
        return dict(msg)


async def test_answer_when_the_client_stays() -> None:
    async def work() -> int:
        await asyncio.sleep(0.01)
        return 7

    assert await unless_disconnected(FakeRequest([]), work()) == 7  # type: ignore[arg-type]


async def test_a_server_that_cannot_report_disconnects_still_answers() -> None:
    async def work() -> str:
        await asyncio.sleep(0.05)
        return "ok"

    req = FakeRequest([RuntimeError("receive not supported")])
    assert await unless_disconnected(req, work()) == "ok"  # type: ignore[arg-type]


async def test_work_errors_pass_through() -> None:
    async def work() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await unless_disconnected(FakeRequest([]), work())  # type: ignore[arg-type]


async def test_disconnect_withdraws_a_queued_request_from_the_batcher() -> None:
    """One request blocks the worker; a second, queued, loses its client: it leaves the
    queue, is counted as cancelled and never reaches the engine."""
    gate = threading.Event()
    seen: list[int] = []

    def run_batch(reqs: Any) -> list[Any]:
        seen.extend(int(r.inputs[0, 0]) for r in reqs)
        gate.wait(5)
        t = torch.zeros(1, 1)
        return [Prediction("regression", t, t, t, t, 2, torch.ones(1, dtype=torch.int64), 0)
                for _ in reqs]  # fmt: skip

    metrics = ServiceMetrics()
    b = Batcher("m", run_batch, max_batch_rows=1, max_delay_s=0, max_queue_size=4,
                metrics=metrics)  # fmt: skip
    b.start()
    try:
        first = asyncio.ensure_future(b.submit(MCRequest(np.ones((1, 1)), 2, 1), 1, 5))
        for _ in range(500):  # bounded: 5 s
            if seen or first.done():
                break
            await asyncio.sleep(0.01)
        assert seen, first
        req = FakeRequest([0.05])  # the client leaves after 50 ms
        second = b.submit(MCRequest(np.full((1, 1), 2.0), 2, 1), 1, 5)
        with pytest.raises(ClientDisconnected) as info:
            await unless_disconnected(req, second)  # type: ignore[arg-type]
        assert status_for(info.value) == 499
        assert b.depth == 0
        gate.set()
        await asyncio.wait_for(first, 5)
    finally:
        gate.set()
        assert b.stop(5)
    assert seen == [1]  # the withdrawn request never ran
    cancelled = {"model": "m", "version": "", "outcome": "cancelled"}
    assert metrics.value("mcdrop_predictions_total", **cancelled) == 1
