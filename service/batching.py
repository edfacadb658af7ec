"""Dynamic batching: one bounded queue and one worker thread per model.

The event loop only enqueues and awaits; torch runs in the worker thread::

    request --submit()--> deque (bounded) --worker thread--> predict_many(batch)
       ^                                                          |
       +------ future resolved via loop.call_soon_threadsafe -----+

The worker takes the first waiting request, then keeps taking requests until the batch
holds ``max_batch_rows`` rows or ``max_delay_s`` has passed since it took the first, and
runs the whole batch in one engine call. After a batch of one it does not wait (a lone
client gains nothing from it); a larger batch turns the wait back on. The engine gives
every request the masks it would get alone, so a seeded answer does not depend on what it
was batched with.

``run_batch`` returns one result per request; a result that is an exception (say, one
request's non-finite output) fails that request alone.

A full queue answers :class:`~service.errors.QueueFull` at once (503 + Retry-After). A
request that times out is removed from the queue if it has not started; if it has, its
result is dropped. When a batch fails, each of its requests is re-run alone so that one bad
request cannot fail the others; the worker survives any exception.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from mcdrop.prediction import MCRequest
from service.errors import ModelNotReady, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics
from service.model_stats import ModelStats

__all__ = ["Batcher"]

log = logging.getLogger("mcdrop.service")


class _Result(Protocol):
    samples: int  # MC samples per row (for the metrics)


R = TypeVar("R", bound=_Result)
RunBatch = Callable[[Sequence[MCRequest]], Sequence["R | Exception"]]


@dataclass(eq=False)
class _Item:
    request: MCRequest
    rows: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued -> running | dropped


def _expire(fut: asyncio.Future[Any]) -> None:
    """Runs on the event loop when a request's time is up."""
    if not fut.done():
        fut.set_exception(TimeoutError())


def _settle(fut: asyncio.Future[Any], pred: Any, exc: BaseException | None) -> None:
    """Runs on the event loop: resolve the future unless the caller gave up on it."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(pred)  # type: ignore[arg-type]


class Batcher(Generic[R]):
    """Queue + worker thread of one model.

    Parameters
    ----------
    name : str
        The model name (metric label, messages, thread name).
    run_batch : callable
        ``run_batch(requests) -> results``, one per request in order (a prediction with a
        ``samples`` count, or an exception for that request alone); called only from the
        worker thread (e.g. around ``MCPredictor.predict_many``).
    max_batch_rows : int
        Most rows per engine call (a single larger request still runs, alone).
    max_delay_s : float
        How long to wait for more requests after taking the first of a batch.
    max_queue_size : int
        Most requests waiting; beyond it :meth:`submit` raises QueueFull.
    batching : bool
        False: every request runs alone.
    metrics : ServiceMetrics, optional
    version : str
        The model's version (metric label).

    Attributes
    ----------
    stats : ModelStats
        Triton's statistics of this model version, fed by the worker and :meth:`submit`.
    """

    def __init__(
        self,
        name: str,
        run_batch: RunBatch[R],
        *,
        max_batch_rows: int,
        max_delay_s: float,
        max_queue_size: int,
        batching: bool = True,
        metrics: ServiceMetrics | None = None,
        version: str = "",
    ) -> None:
        self.name = name
        self.version = version
        self.stats = ModelStats(name, version, metrics)
        self._run_batch = run_batch
        self.max_batch_rows = max(1, max_batch_rows)
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue_size = max_queue_size
        self.batching = batching and self.max_batch_rows > 1
        self.metrics = metrics
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_batch_size = 2  # start by waiting for company

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._worker, name=f"mcdrop-batcher-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Refuse new requests, let the worker finish the queued ones, join it.

        Returns True when the worker finished within ``timeout`` seconds.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        return len(self._queue)

    # ------------------------------------------------------------------ event-loop side

    async def submit(self, request: MCRequest, rows: int, timeout: float) -> R:
        """Queue one request and wait for its prediction.

        Raises
        ------
        QueueFull
            The queue holds ``max_queue_size`` requests.
        ModelNotReady
            The batcher is stopping.
        RequestTimeout
            No answer within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        item = _Item(request, rows, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise ModelNotReady(f"model '{self.name}' is shutting down; retry elsewhere")
            self.refuse_if_full()
            self._queue.append(item)
            self._set_depth()
            self._cond.notify()
        # A timer on the one future (not asyncio.wait_for, which adds a second future and
        # callbacks per request on the event loop's hot path).
        timer = loop.call_later(timeout, _expire, item.future)
        try:
            result: R = await item.future
            return result
        except (TimeoutError, asyncio.CancelledError) as exc:
            abandoned = self._abandon(item)
            if abandoned and isinstance(exc, asyncio.CancelledError):
                self._count("cancelled")  # withdrawn before it ran: never computed
            if isinstance(exc, TimeoutError):
                if abandoned:  # one that started is counted by the worker
                    self.stats.failed(int((time.monotonic() - item.enqueued) * 1e9))
                self._count("timeout")
                raise RequestTimeout(
                    f"model '{self.name}' did not answer within {timeout:g} s; "
                    "retry with fewer rows or samples, or later"
                ) from None
            raise
        finally:
            timer.cancel()

    def refuse_if_full(self) -> None:
        """Raise QueueFull if the queue is full. :meth:`submit` calls it under the lock;
        routes call it without, before reading and parsing the body, so that past
        saturation a refusal costs next to nothing (a momentary depth is all it needs)."""
        if len(self._queue) >= self.max_queue_size:
            self._count("rejected")
            self.stats.failed(0)
            raise QueueFull(
                f"model '{self.name}' has {len(self._queue)} requests waiting (the limit); "
                "retry after a short wait"
            )

    def _abandon(self, item: _Item) -> bool:
        """Take ``item`` out of the queue if it has not started; True if it was."""
        with self._cond:
            if item.state == "queued":
                try:
                    self._queue.remove(item)
                except ValueError:  # pragma: no cover - taken between checks
                    pass
                item.state = "dropped"
                self._set_depth()
                return True
            return False

    # ------------------------------------------------------------------ worker side

    def _worker(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._process(batch)
            except Exception as exc:  # pragma: no cover - _process catches model errors
                log.exception("batcher %s: unexpected failure", self.name)
                for it in batch:
                    self._resolve(it, None, exc)

    def _take(self) -> list[_Item] | None:
        """Block for the next batch; None once stopped and drained."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            if self.batching:
                # Wait for company only when it has been coming: a lone closed-loop client
                # cannot send its next request while its first one waits (2.5 ms lost per
                # request at concurrency 1). One lone batch switches the wait off; the
                # requests that queue meanwhile form a larger batch, which switches it on.
                delay = self.max_delay_s if self._last_batch_size > 1 else 0.0
                deadline = time.monotonic() + delay
                while rows < self.max_batch_rows:
                    if self._queue:
                        nxt = self._queue[0]
                        if rows + nxt.rows > self.max_batch_rows:
                            break
                        batch.append(self._queue.popleft())
                        rows += nxt.rows
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._cond.wait(remaining)
            self._last_batch_size = len(batch)
            for it in batch:
                it.state = "running"
            self._set_depth()
            return batch

    def _process(self, batch: list[_Item]) -> None:
        start = time.monotonic()
        calls = 1  # engine calls that returned (Triton's executions)
        results: list[tuple[_Item, R | None, BaseException | None]]
        try:
            out = self._run_batch([it.request for it in batch])
            results = [_outcome(it, r) for it, r in zip(batch, out, strict=True)]
        except Exception as exc:
            calls = 0
            if len(batch) == 1:
                results = [(batch[0], None, exc)]
            else:
                # Re-run alone so that only the request at fault gets the error.
                results = []
                for it in batch:
                    try:
                        results.append(_outcome(it, self._run_batch([it.request])[0]))
                        calls += 1
                    except Exception as one_exc:
                        results.append((it, None, one_exc))
        end = time.monotonic()
        compute_ns = int((end - start) * 1e9)
        self.stats.executed(sum(it.rows for it in batch), len(batch), compute_ns, calls)
        for it, pred, err in results:
            queue_ns, total_ns = int((start - it.enqueued) * 1e9), int((end - it.enqueued) * 1e9)
            if err is None and pred is not None:
                self._count("ok")
                self.stats.succeeded(it.rows, pred.samples, queue_ns, compute_ns, total_ns)
            else:
                self._count("error")
                self.stats.failed(total_ns, queue_ns)
            self._resolve(it, pred, err)

    def _resolve(self, it: _Item, pred: R | None, exc: BaseException | None) -> None:
        try:
            it.loop.call_soon_threadsafe(_settle, it.future, pred, exc)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # ------------------------------------------------------------------ metrics

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name, self.version).set(len(self._queue))

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.predictions.labels(self.name, self.version, outcome).inc()


def _outcome(it: _Item, r: Any) -> tuple[_Item, Any, BaseException | None]:
    """(item, result, None) or (item, None, error) for one entry of ``run_batch``'s list."""
    return (it, None, r) if isinstance(r, BaseException) else (it, r, None)
