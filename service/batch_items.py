"""The batcher's bookkeeping (:mod:`service.batching`): a queued request, a batch in the
engine, and the hand-over of answers from the worker thread to the event loop.

A :class:`Queued` request is made on the event loop by ``Batcher.submit``; the worker
thread takes it into a :class:`Running` batch and, once the job is done, sends the answers
back with :func:`hand_over`: one ``call_soon_threadsafe`` per event loop and batch, in
which :func:`settle` resolves each future unless its caller has given up on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcdrop.prediction import MCRequest
from service.batch_jobs import Job
from service.tracing import RequestContext, current

__all__ = ["Queued", "Running", "expire", "settle", "hand_over"]


@dataclass(eq=False)
class Queued:
    """One request from its ``submit`` until its answer: its future on its event loop."""

    request: MCRequest
    rows: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    alone: bool = False  # a bitwise request: its own batch, the engine call it gets alone
    enqueued: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued -> running | dropped
    cancelled: bool = False  # set by the event loop once nobody waits for it (it ran)
    ctx: RequestContext | None = field(default_factory=current)  # its request (spans)


@dataclass(eq=False)
class Running:
    """A batch in the engine: its job and the worker time spent on it."""

    items: list[Queued]
    job: Job | None
    began: float  # when the worker took the batch
    busy: float = 0.0  # seconds of worker time on this job (its steps, not the others')
    steps: int = 0  # steps run (0: new)
    error: BaseException | None = None

    @property
    def abandoned(self) -> bool:
        return all(it.cancelled for it in self.items)


def expire(fut: asyncio.Future[Any]) -> None:
    """Runs on the event loop when a request's time is up."""
    if not fut.done():
        fut.set_exception(TimeoutError())


def settle(
    fut: asyncio.Future[Any], pred: Any, exc: BaseException | None, count: Callable[[], Any]
) -> None:
    """Runs on the event loop: resolve the future unless the caller gave up on it (then
    :meth:`service.batching.Batcher.submit` counted it), and count the outcome the caller gets."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(pred)  # type: ignore[arg-type]
    count()


def _settle_all(entries: list[tuple[Any, ...]]) -> None:
    """:func:`settle` for each ``(future, pred, exc, count)`` of a batch."""
    for fut, pred, exc, count in entries:
        settle(fut, pred, exc, count)


def hand_over(loop: asyncio.AbstractEventLoop, entries: list[tuple[Any, ...]]) -> None:
    """Settle ``entries`` on their event loop (from the worker thread)."""
    try:
        loop.call_soon_threadsafe(_settle_all, entries)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
