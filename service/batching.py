"""Dynamic batching: one bounded queue and one worker thread per model.

The event loop only enqueues and awaits; torch runs in the worker thread::

    request --submit()--> deque (bounded) --worker thread--> predict_many(batch)
       ^                                                          |
       +------ future resolved via loop.call_soon_threadsafe -----+

The worker takes the first waiting request, then keeps taking requests until the batch
holds ``max_batch_rows`` rows or ``max_delay_s`` has passed since it took the first, and
starts the whole batch as one engine job (``MCPredictor.start_many``). After a batch of one
it does not wait (a lone client gains nothing from it); a larger batch turns the wait back
on. The engine gives every request the masks it would get alone, so a seeded answer does
not depend on what it was batched with.

Fair scheduling: a job runs one forward chunk per step, and the worker steps its running
jobs in turn (round robin), taking the requests that arrived meanwhile as a new job
without waiting for company; a new job's first step comes next (unless the step just run
was a new job's: then an older job's turn comes first, so new arrivals cannot starve a
long job). A one-row request that arrives while a maximal request runs waits for the
rest of the chunk in progress, not for all of the request. A job of small requests is one
chunk, so under ordinary load nothing interleaves and batches form as before.

``start_batch`` returns a job whose ``results()`` has one entry per request; an entry that
is an exception (say, one request's non-finite output) fails that request alone. A plain
``run_batch`` callable is run as a job of one step.

A full queue answers :class:`~service.errors.QueueFull` at once (503 + Retry-After). A
request that times out (or whose client leaves) is removed from the queue if it has not
started; if it has, it is marked cancelled and a job whose requests are all cancelled is
dropped at its next chunk boundary, so its work stops. It is counted once: as timed out
(or cancelled), never also as ok. When a batch fails, each of its requests is re-run alone
so that one bad request cannot fail the others; the worker survives any exception.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from mcdrop.prediction import MCRequest
from service.batch_items import Queued, Running, expire, hand_over
from service.batch_jobs import EngineJob, Job, OneShot, StartBatch
from service.errors import ModelNotReady, QueueFull, RequestTimeout
from service.metrics import ServiceMetrics
from service.model_stats import ModelStats

__all__ = ["Batcher", "EngineJob", "Job"]

log = logging.getLogger("mcdrop.service")


class _Result(Protocol):
    samples: int  # MC samples per row (for the metrics)


R = TypeVar("R", bound=_Result)
RunBatch = Callable[[Sequence[MCRequest]], Sequence["R | Exception"]]


class Batcher(Generic[R]):
    """Queue + worker thread of one model.

    Parameters
    ----------
    name : str
        The model name (metric label, messages, thread name).
    run_batch : callable, optional
        ``run_batch(requests) -> results``, one per request in order (a prediction with a
        ``samples`` count, or an exception for that request alone); called only from the
        worker thread (e.g. around ``MCPredictor.predict_many``). Runs as one step.
    start_batch : callable, optional
        ``start_batch(requests) -> job`` (:class:`Job`), instead of ``run_batch``: the
        worker steps the job a chunk at a time, interleaved with the other running jobs,
        and drops it once all its requests are cancelled.
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
    chunks : int
        Job steps (engine chunks) the worker has run.
    busy_s : float
        Seconds the worker has spent in the engine (steps and results).
    dropped : int
        Jobs dropped unfinished because every request of theirs was cancelled.
    """

    def __init__(
        self,
        name: str,
        run_batch: RunBatch[R] | None = None,
        *,
        start_batch: StartBatch | None = None,
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
        if start_batch is None:
            if run_batch is None:
                raise TypeError("Batcher needs run_batch or start_batch")
            one: RunBatch[R] = run_batch

            def start_batch(requests: Sequence[MCRequest]) -> Job:
                return OneShot(one, requests)

        self._start_batch = start_batch
        self.chunks = 0
        self.busy_s = 0.0
        self.dropped = 0
        self._counters: dict[str, Callable[[], Any]] = {}
        self.max_batch_rows = max(1, max_batch_rows)
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue_size = max_queue_size
        self.batching = batching and self.max_batch_rows > 1
        self.metrics = metrics
        # The depth gauge's child, bound once: it is set twice per request.
        self._depth = None if metrics is None else metrics.queue_depth.labels(name, version)
        self._queue: deque[Queued] = deque()
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

    async def submit(
        self, request: MCRequest, rows: int, timeout: float, *, alone: bool = False
    ) -> R:
        """Queue one request and wait for its prediction; with ``alone`` it runs as a batch
        of its own (the same engine call, so the same chunk shapes, as when it is sent
        alone: a seeded answer then is byte-identical whatever the load).

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
        item = Queued(request, rows, loop.create_future(), loop, alone)
        with self._cond:
            if self._closed:
                raise ModelNotReady(f"model '{self.name}' is shutting down; retry elsewhere")
            self.refuse_if_full()
            self._queue.append(item)
            self._set_depth()
            self._cond.notify()
        # A timer on the one future (not asyncio.wait_for, which adds a second future and
        # callbacks per request on the event loop's hot path).
        timer = loop.call_later(timeout, expire, item.future)
        try:
            result: R = await item.future
            return result
        except (TimeoutError, asyncio.CancelledError) as exc:
            abandoned = self._abandon(item)
            if not abandoned:
                # It is running: its job stops at the next chunk if nobody else waits on
                # it, and the worker counts it in no outcome (it is counted here, once).
                item.cancelled = True
            if isinstance(exc, asyncio.CancelledError):
                self._count("cancelled")  # the client left (if it was queued: never computed)
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

    def _abandon(self, item: Queued) -> bool:
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
        active: deque[Running] = deque()  # jobs in the engine, stepped in turn
        owed = False  # the last step was a new job's while older ones waited
        while True:
            batch = self._take(wait=not active)
            if batch is None:
                return  # stopped, queue drained, nothing running
            run: Running | None = None
            try:
                if batch:
                    fresh = self._begin(batch)
                    # A new job (short, as a rule) runs next, unless the last step went to
                    # a new job too: then an older one's turn comes first, so a stream of
                    # new requests cannot starve a long one.
                    if owed:
                        active.extend(fresh)
                    else:
                        active.extendleft(reversed(fresh))
                if active:
                    run = active.popleft()
                    owed = run.steps == 0 and bool(active)
                    if self._advance(run):
                        self._finish(run, active)
                    else:
                        active.append(run)
            except Exception as exc:  # pragma: no cover - the steps catch model errors
                log.exception("batcher %s: unexpected failure", self.name)
                failed = list(active) + ([run] if run is not None and run not in active else [])
                for r in failed:
                    for it in r.items:
                        self._resolve(it, None, exc)
                active.clear()

    def _take(self, wait: bool = True) -> list[Queued] | None:
        """The next batch: blocking (None once stopped and drained) or, while jobs run,
        what is queued now (maybe nothing), without waiting for company."""
        with self._cond:
            while not self._queue:
                if not wait:
                    return []
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            if self.batching and not first.alone:
                # Wait for company only when it has been coming: a lone closed-loop client
                # cannot send its next request while its first one waits (2.5 ms lost per
                # request at concurrency 1). One lone batch switches the wait off; the
                # requests that queue meanwhile form a larger batch, which switches it on.
                # Never while other jobs run: they would wait too.
                delay = self.max_delay_s if wait and self._last_batch_size > 1 else 0.0
                deadline = time.monotonic() + delay
                while rows < self.max_batch_rows:
                    if self._queue:
                        nxt = self._queue[0]
                        if nxt.alone or rows + nxt.rows > self.max_batch_rows:
                            break  # a request that runs alone starts the next batch
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

    def _begin(self, batch: list[Queued]) -> list[Running]:
        """Start ``batch`` as a job; a batch the engine refuses is started request by
        request, so only the request at fault gets the error."""
        start = time.monotonic()
        run = Running(batch, None, start)
        try:
            run.job = self._start_batch([it.request for it in batch])
        except Exception as exc:
            if len(batch) > 1:
                return [r for it in batch for r in self._begin([it])]
            run.error = exc
        run.busy = time.monotonic() - start
        return [run]

    def _advance(self, run: Running) -> bool:
        """One step of ``run``'s job; True when it is finished, failed or abandoned."""
        if run.error is not None or run.job is None:
            return True
        if run.abandoned:
            self.dropped += 1  # nobody waits: its remaining chunks are never computed
            return True
        t0 = time.monotonic()
        run.steps += 1
        try:
            done = run.job.step()
        except Exception as exc:
            run.error, done = exc, True
        dt = time.monotonic() - t0
        run.busy += dt
        self.busy_s += dt
        self.chunks += 1
        return done

    def _finish(self, run: Running, active: deque[Running]) -> None:
        """Answer the requests of a finished job (or re-run a failed batch one by one)."""
        results: Sequence[Any] = ()
        if run.error is None and run.job is not None and not run.abandoned:
            t0 = time.monotonic()
            try:
                results = run.job.results()
            except Exception as exc:
                run.error = exc
            run.busy += time.monotonic() - t0
        if run.error is not None and len(run.items) > 1:
            self.stats.rerun()
            for it in run.items:  # re-run alone: only the request at fault gets the error
                if not it.cancelled:
                    active.extend(self._begin([it]))
            return
        end = time.monotonic()
        compute_ns = int(run.busy * 1e9)
        calls = 0 if run.error is not None or run.abandoned else 1
        self.stats.executed(sum(it.rows for it in run.items), len(run.items), compute_ns, calls)
        if run.error is not None:
            results = [run.error] * len(run.items)
        elif run.abandoned:
            results = [None] * len(run.items)
        self._answer(run, results, compute_ns, end)

    def _answer(self, run: Running, results: Sequence[Any], compute_ns: int, end: float) -> None:
        """Count the requests of a finished job, then send each its answer or error."""
        answered: list[tuple[int, int, int, int, Any]] = []
        for it, r in zip(run.items, results, strict=True):
            queue_ns = int((run.began - it.enqueued) * 1e9)
            total_ns = int((end - it.enqueued) * 1e9)
            # (A cancelled one's outcome was counted by submit() when it gave up.)
            if it.cancelled or isinstance(r, BaseException):
                self.stats.failed(total_ns, queue_ns, it.ctx, it.rows, compute_ns)
            else:
                answered.append((it.rows, r.samples, queue_ns, total_ns, it.ctx))
        # Counted before any answer is sent, so a client that reads the statistics after its
        # answer finds its request in them.
        self.stats.succeeded(compute_ns, answered)
        # One hand-over per event loop for the whole batch (a wake-up of the loop each, not
        # one per request).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        for it, r in zip(run.items, results, strict=True):
            if not it.cancelled:
                exc = r if isinstance(r, BaseException) else None
                pred = None if exc is not None else r
                by_loop.setdefault(it.loop, []).append(self._entry(it, pred, exc))
        for loop, entries in by_loop.items():
            hand_over(loop, entries)

    def _entry(self, it: Queued, pred: R | None, exc: BaseException | None) -> tuple[Any, ...]:
        """What :func:`settle` needs to answer ``it``: its future, the answer and the count."""
        return (it.future, pred, exc, self._counter("ok" if exc is None else "error"))

    def _resolve(self, it: Queued, pred: R | None, exc: BaseException | None) -> None:
        hand_over(it.loop, [self._entry(it, pred, exc)])

    # ------------------------------------------------------------------ metrics

    def _set_depth(self) -> None:
        if self._depth is not None:
            self._depth.set(len(self._queue))

    def _count(self, outcome: str) -> None:
        self._counter(outcome)()

    def _counter(self, outcome: str) -> Callable[[], Any]:
        """The increment of one outcome's counter (bound once: it runs per request)."""
        fn = self._counters.get(outcome)
        if fn is None:
            if self.metrics is None:
                fn = _nothing
            else:
                fn = self.metrics.predictions.labels(self.name, self.version, outcome).inc
            self._counters[outcome] = fn
        return fn


def _nothing() -> None:
    return None
