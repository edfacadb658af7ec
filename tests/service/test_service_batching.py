"""The batcher on its own, with a fake engine: batch formation, limits, failures, drain."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from mcdrop.predictor import MCRequest, Prediction
from service.batching import Batcher
from service.errors import ModelNotReady, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.anyio


def _pred(value: float) -> Prediction:
    t = torch.tensor([[value]])
    return Prediction("regression", t, t, t, t, 1, torch.ones(1, dtype=torch.int64), 0)


class FakeEngine:
    """Records the size of every call; sleeps ``delay``; fails on inputs == 'bad'."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, requests: Sequence[MCRequest]) -> list[Prediction]:
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.calls.append(len(requests))
        time.sleep(self.delay)
        if any(r.inputs == "bad" for r in requests):
            raise RuntimeError("boom")
        return [_pred(float(r.inputs)) for r in requests]


def _batcher(engine: FakeEngine, **kw: Any) -> Batcher:
    opts: dict[str, Any] = {"max_batch_rows": 8, "max_delay_s": 0.05, "max_queue_size": 16}
    opts.update(kw)
    b = Batcher("fake", engine, metrics=ServiceMetrics(), **opts)
    b.start()
    return b


async def test_concurrent_requests_share_engine_calls_off_the_event_loop() -> None:
    engine = FakeEngine()
    b = _batcher(engine)
    try:
        preds = await asyncio.gather(*(b.submit(MCRequest(i), 1, 5) for i in range(8)))
        assert [float(p.mean) for p in preds] == list(range(8))
        assert sum(engine.calls) == 8 and max(engine.calls) > 1
        assert engine.threads == {"mcdrop-batcher-fake"}
    finally:
        b.stop(5)


async def test_batches_respect_max_rows() -> None:
    engine = FakeEngine()
    engine.gate.clear()  # hold the worker so that every request is queued first
    b = _batcher(engine, max_batch_rows=4)
    try:
        tasks = [asyncio.ensure_future(b.submit(MCRequest(i), 2, 5)) for i in range(6)]
        await asyncio.sleep(0.1)
        engine.gate.set()
        await asyncio.gather(*tasks)
        # The first request was taken before the gate opened; later batches hold 2 x 2 rows.
        assert sum(engine.calls) == 6 and max(engine.calls) <= 2
    finally:
        b.stop(5)


async def test_batching_off_runs_every_request_alone() -> None:
    engine = FakeEngine()
    b = _batcher(engine, batching=False)
    try:
        await asyncio.gather(*(b.submit(MCRequest(i), 1, 5) for i in range(6)))
        assert engine.calls == [1] * 6
    finally:
        b.stop(5)


async def test_a_failing_request_does_not_fail_its_batch() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    b = _batcher(engine)
    try:
        items = [MCRequest(1), MCRequest("bad"), MCRequest(3)]
        tasks = [asyncio.ensure_future(b.submit(r, 1, 5)) for r in items]
        await asyncio.sleep(0.05)
        engine.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert float(results[0].mean) == 1 and float(results[2].mean) == 3  # type: ignore[union-attr]
        assert isinstance(results[1], RuntimeError)
        # The worker is still serving.
        assert float((await b.submit(MCRequest(4), 1, 5)).mean) == 4
    finally:
        b.stop(5)


async def test_lone_requests_skip_the_queue_delay_and_bursts_still_batch() -> None:
    engine = FakeEngine()
    b = _batcher(engine, max_delay_s=0.3)
    try:
        t0 = time.monotonic()
        await b.submit(MCRequest(0), 1, 5)  # no batch seen yet: waits for company
        first = time.monotonic() - t0
        t0 = time.monotonic()
        for i in range(3):  # a lone closed-loop client: after a batch of one, no wait
            await b.submit(MCRequest(i), 1, 5)
        lone = (time.monotonic() - t0) / 3
        assert first >= 0.25 and lone < 0.15, (first, lone)
        # A burst queued at once is still taken together, and that turns the wait back on.
        preds = await asyncio.gather(*(b.submit(MCRequest(i), 1, 5) for i in range(6)))
        assert [float(p.mean) for p in preds] == list(range(6))
        burst = engine.calls[4:]  # [6], or [1, 5] if the worker woke between the submits
        assert engine.calls[:4] == [1] * 4 and sum(burst) == 6 and burst[-1] > 1, engine.calls
        t0 = time.monotonic()
        await b.submit(MCRequest(9), 1, 5)
        assert time.monotonic() - t0 >= 0.25  # waited for company again
    finally:
        b.stop(5)


async def test_full_queue_is_refused_at_once() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    b = _batcher(engine, max_queue_size=2, batching=False)
    try:
        first = asyncio.ensure_future(b.submit(MCRequest(0), 1, 5))
        await asyncio.sleep(0.05)  # taken by the worker, which now waits at the gate
        queued = [asyncio.ensure_future(b.submit(MCRequest(i), 1, 5)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as info:
            await b.submit(MCRequest(3), 1, 5)
        assert info.value.headers["Retry-After"] == "1"
        with pytest.raises(QueueFull):  # the check routes make before reading a body
            b.refuse_if_full()
        engine.gate.set()
        await asyncio.gather(first, *queued)
    finally:
        b.stop(5)


async def test_refuse_if_full_passes_while_there_is_room() -> None:
    engine = FakeEngine()
    b = _batcher(engine, max_queue_size=1, batching=False)
    try:
        b.refuse_if_full()  # empty queue: no exception
        assert float((await b.submit(MCRequest(5), 1, 5)).mean) == 5
    finally:
        b.stop(5)


async def test_timed_out_request_leaves_the_queue() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    b = _batcher(engine, batching=False)
    try:
        first = asyncio.ensure_future(b.submit(MCRequest(0), 1, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestTimeout):
            await b.submit(MCRequest(1), 1, 0.05)
        assert b.depth == 0
        engine.gate.set()
        await first
        assert engine.calls == [1]  # the timed-out request never reached the engine
    finally:
        b.stop(5)


async def test_stop_finishes_queued_requests_then_refuses() -> None:
    engine = FakeEngine(delay=0.02)
    b = _batcher(engine, batching=False)
    tasks = [asyncio.ensure_future(b.submit(MCRequest(i), 1, 5)) for i in range(4)]
    await asyncio.sleep(0.01)
    stopped = asyncio.ensure_future(asyncio.to_thread(b.stop, 5))
    results = await asyncio.gather(*tasks)
    assert await stopped
    assert [float(p.mean) for p in results] == [0, 1, 2, 3]
    with pytest.raises(ModelNotReady):
        await b.submit(MCRequest(9), 1, 5)
