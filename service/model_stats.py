"""Per-model inference statistics: Triton's statistics extension and its metric names.

A :class:`ModelStats` belongs to one served model version (its batcher makes it) and is
fed where the work happens: the batcher thread reports each engine call and each request's
outcome with the times it measured, and the event loop reports requests that timed out in
the queue or were refused. It keeps Triton's cumulative counts (``GET /v2/models/{m}/stats``
and gRPC ``ModelStatistics`` read :meth:`ModelStats.snapshot`) and moves the Prometheus
series of the same facts (``nv_inference_*`` and mcdrop's own) in the same call, so the two
views cannot drift apart.

Definitions (Triton's): a request's *queue* time runs from its arrival at the batcher to
the start of its batch; its *compute_infer* time is the whole engine time of the batch it
ran in (a request of a batch of 8 counts all of it, as in Triton); *success* time runs
from arrival to the answer. So for the successful requests ``queue.count ==
compute_infer.count == success.count`` and ``success.ns >= queue.ns + compute_infer.ns``.
``inference_count`` counts rows of successful requests; ``execution_count`` engine calls.
Input and output conversion happen inside the engine call here, so ``compute_input`` and
``compute_output`` count the requests with 0 ns: their time is in ``compute_infer``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from service import otel
from service.metrics import ServiceMetrics
from service.tracing import RequestContext

__all__ = ["Duration", "ModelStats", "shared_snapshot"]


@dataclass
class Duration:
    """A count and the total of its durations in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Count ``count`` more events that took ``ns`` nanoseconds in all."""
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        """``{"count", "ns"}``."""
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """The statistics of one model version (thread-safe).

    Parameters
    ----------
    name, version : str
        The model and its version (the labels of its series).
    metrics : ServiceMetrics, optional
        Where the Prometheus series live; None records the statistics only.
    """

    def __init__(self, name: str, version: str, metrics: ServiceMetrics | None = None) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0  # ms since the epoch of the last answer; 0: none yet
        self.success, self.fail, self.queue = Duration(), Duration(), Duration()
        self.compute_infer = Duration()
        self.batches: dict[int, Duration] = {}  # rows per engine call -> its compute_infer
        self._m = metrics
        if metrics is not None:  # label lookups once, not per request
            labels = (name, version)
            self._queue_time = metrics.queue_time.labels(*labels)
            self._compute_time = metrics.compute_time.labels(*labels)
            self._batch_rows = metrics.batch_rows.labels(*labels)
            self._batch_requests = metrics.batch_requests.labels(*labels)
            self._batch_reruns = metrics.batch_reruns.labels(*labels)
            self._mc_samples = metrics.mc_samples.labels(*labels)
            self._nv = [
                g.labels(*labels)
                for g in (
                    metrics.nv_success, metrics.nv_failure, metrics.nv_count,
                    metrics.nv_exec_count, metrics.nv_request_us, metrics.nv_queue_us,
                    metrics.nv_compute_us, metrics.fail_us, metrics.last_inference,
                )
            ]  # fmt: skip

    def executed(self, rows: int, requests: int, compute_ns: int, calls: int = 1) -> None:
        """A batch ran: ``rows`` rows of ``requests`` requests in ``calls`` engine calls (more
        than one when a failed batch was re-run request by request), ``compute_ns`` in all."""
        with self._lock:
            self.execution_count += calls
            if calls:  # Triton's batch statistics are of executions that ran
                self.batches.setdefault(rows, Duration()).add(compute_ns)
        if self._m is not None:
            self._compute_time.observe(compute_ns / 1e9)
            self._batch_rows.observe(rows)
            self._batch_requests.observe(requests)
            self._nv[3].inc(calls)

    def succeeded(
        self, compute_ns: int, answered: list[tuple[int, int, int, int, RequestContext | None]]
    ) -> None:
        """The requests of one batch answered: per request ``(rows, samples, queue_ns,
        total_ns, ctx)`` (rows of ``samples`` MC samples each; ``ctx``: its request, for the
        OpenTelemetry spans when they are on); ``compute_ns``: the batch's engine time.

        Counted for the whole batch at once (one update of each count and series, not one
        per request); only the queue-wait histogram takes a value per request."""
        if not answered:
            return
        labels = (self.name, self.version)
        rows = samples = queue_ns = total_ns = 0
        for r, s, q, t, ctx in answered:
            if ctx is not None and ctx.span is not None:
                _spans(ctx, labels, r, q, compute_ns, t, True)
            rows += r
            samples += s * r
            queue_ns += q
            total_ns += t
        n = len(answered)
        with self._lock:
            self.inference_count += rows
            self.success.add(total_ns, n)
            self.queue.add(queue_ns, n)
            self.compute_infer.add(compute_ns * n, n)
            now = time.time_ns()
            self.last_inference_ms = now // 1_000_000
        if self._m is not None:
            observe = self._queue_time.observe
            for _, _, q, _, _ in answered:
                observe(q / 1e9)
            self._mc_samples.inc(samples)
            nv = self._nv
            nv[0].inc(n)
            nv[2].inc(rows)
            nv[4].inc(total_ns / 1000)
            nv[5].inc(queue_ns / 1000)
            nv[6].inc(compute_ns * n / 1000)
            nv[8].set(now / 1e9)

    def rerun(self) -> None:
        """A batch of several requests failed and is re-run request by request (so that
        only the request at fault gets the error): Prometheus only."""
        if self._m is not None:
            self._batch_reruns.inc()

    def failed(
        self,
        total_ns: int,
        queue_ns: int | None = None,
        ctx: RequestContext | None = None,
        rows: int = 0,
        compute_ns: int = 0,
    ) -> None:
        """One request failed (an error, a timeout in the queue or a refusal), after
        ``total_ns``; ``queue_ns`` when it reached a batch (mcdrop's wait histogram)."""
        if ctx is not None and ctx.span is not None and queue_ns is not None:
            _spans(ctx, (self.name, self.version), rows, queue_ns, compute_ns, total_ns, False)
        with self._lock:
            self.fail.add(total_ns)
        if self._m is not None:
            if queue_ns is not None:
                self._queue_time.observe(queue_ns / 1e9)
            self._nv[1].inc()
            self._nv[7].inc(total_ns / 1000)

    def snapshot(self) -> dict[str, Any]:
        """Triton's ``model_stats`` entry for this model version."""
        with self._lock:
            answered = {"count": self.success.count, "ns": 0}
            batches = [
                {
                    "batch_size": rows,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for rows, d in sorted(self.batches.items())
            ]
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    "compute_input": dict(answered),
                    "compute_infer": self.compute_infer.as_dict(),
                    "compute_output": dict(answered),
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": batches,
            }


def _spans(ctx: RequestContext, labels: tuple[str, str], *times: Any) -> None:
    spans = otel.active()
    if spans is not None:
        spans.work(ctx, labels, *times)


def _us(us: float) -> int:
    """Cumulative microseconds of a shared series -> Triton's integer nanoseconds."""
    return round(us * 1000)


def shared_snapshot(
    name: str, version: str, values: dict[tuple[str, str, str], float]
) -> dict[str, Any]:
    """Triton's ``model_stats`` entry of a model version summed over every worker process,
    from the shared series (:meth:`ServiceMetrics.shared_values`; ``--workers`` > 1).

    The counts are those of :meth:`ModelStats.snapshot` added up over the workers (ns
    through microseconds, so rounded to 1 ns per event at most). ``batch_stats`` is empty:
    counts per batch size are not shared between the workers.
    """

    def v(metric: str) -> float:
        return values.get((metric, name, version), 0.0)

    success = int(v("nv_inference_request_success"))
    answered = {"count": success, "ns": 0}
    return {
        "name": name,
        "version": version,
        "last_inference": round(v("mcdrop_last_inference_timestamp_seconds") * 1000),
        "inference_count": int(v("nv_inference_count")),
        "execution_count": int(v("nv_inference_exec_count")),
        "inference_stats": {
            "success": {"count": success, "ns": _us(v("nv_inference_request_duration_us"))},
            "fail": {
                "count": int(v("nv_inference_request_failure")),
                "ns": _us(v("mcdrop_inference_failure_duration_us")),
            },
            "queue": {"count": success, "ns": _us(v("nv_inference_queue_duration_us"))},
            "compute_input": dict(answered),
            "compute_infer": {
                "count": success,
                "ns": _us(v("nv_inference_compute_infer_duration_us")),
            },
            "compute_output": dict(answered),
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [],
    }
