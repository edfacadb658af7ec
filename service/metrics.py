"""The service's Prometheus metrics, on prometheus_client.

:class:`ServiceMetrics` declares every metric the service exports in a registry of its own
(one per app, so two apps in one process, as in the tests, never share counts);
``GET /metrics`` renders them.

Under ``mcdrop serve --workers N`` every worker is a process with its own app: the launcher
sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder, removed at exit) before the workers
start, prometheus_client then keeps each value in a file there, and :meth:`render`
aggregates the files of all workers, so any worker's ``/metrics`` shows the whole server.

Model series carry the labels ``model`` and ``version``. Beside mcdrop's own names the
service exports Triton's (``nv_inference_*``, labels ``model`` and ``version``, durations in
microseconds, cumulative), so that dashboards made for Triton read mcdrop unchanged.
prometheus_client appends ``_total`` to every counter's name, which would break those
names, so they are gauges that only ever increase: in multiprocess mode their mode is
``sum`` over every worker, dead ones included, which is how counters add up.

Process metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...):
prometheus_client's ``ProcessCollector`` describes the process that renders, and in
multiprocess mode nothing but the files is rendered. There, :class:`WorkerProcessCollector`
reads ``/proc`` of every live worker that has written a metrics file and reports each one
with a ``pid`` label (``sum by`` over ``pid`` gives the server); a dead worker's series
disappear with it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "ServiceMetrics",
    "WorkerProcessCollector",
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "multiprocess_enabled",
]

# The text format generate_latest writes (prometheus_client's CONTENT_TYPE_LATEST names a
# newer version string for the same text; scrapers and the tests expect this one).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL = ("model", "version")  # the labels of every per-model series
_PID_FILE = re.compile(r"_(\d+)\.db$")  # prometheus_client's per-process value files


def multiprocess_enabled() -> bool:
    """Whether prometheus_client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` files."""
    return bool(os.environ.get(MULTIPROC_ENV))


class WorkerProcessCollector(Collector):
    """Process metrics of every live worker, each with a ``pid`` label (multiprocess mode).

    Parameters
    ----------
    folder : str
        The ``PROMETHEUS_MULTIPROC_DIR``: a worker is a process that wrote a file there.
    proc : str
        Where procfs is mounted.
    """

    def __init__(self, folder: str, proc: str = "/proc") -> None:
        self.folder = folder
        self.proc = proc

    def pids(self) -> list[int]:
        """The processes with a metrics file that are still running, sorted."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        found = {int(m.group(1)) for n in names if (m := _PID_FILE.search(n))}
        return sorted(p for p in found if os.path.exists(os.path.join(self.proc, str(p))))

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self.pids():
            one = ProcessCollector(pid=functools.partial(int, pid), proc=self.proc, registry=None)
            for family in one.collect():
                out = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value)
        return list(merged.values())


class ServiceMetrics:
    """Every metric the service exports (one instance per app).

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Where the metrics are registered; default: a new one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if not multiprocess_enabled():  # there, render() reads every worker's /proc
            ProcessCollector(registry=r)
        self.requests = Counter(
            "mcdrop_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "mcdrop_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_requests = Counter(
            "mcdrop_grpc_requests_total",
            "gRPC calls by method and status code (a streamed request counts once).",
            ("method", "code"),
            registry=r,
        )
        self.grpc_latency = Histogram(
            "mcdrop_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer, by method.",
            ("method",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "mcdrop_queue_wait_seconds",
            "Time a prediction waited in its model's queue before its batch started.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "mcdrop_batch_compute_seconds",
            "Engine time of one batch (one predict_many call).",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "mcdrop_batch_rows", "Input rows per engine call.", MODEL,
            buckets=ROWS_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "mcdrop_batch_requests", "Requests per engine call.", MODEL,
            buckets=ROWS_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_reruns = Counter(
            "mcdrop_batch_reruns",
            "Batches that failed as a whole and were re-run request by request.",
            MODEL,
            registry=r,
        )
        # Across worker processes: the queues add up; a model is ready if any worker has it.
        self.queue_depth = Gauge(
            "mcdrop_queue_depth", "Requests waiting in the model's queue.", MODEL,
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.mc_samples = Counter(
            "mcdrop_mc_samples_total",
            "Monte Carlo forward samples served (samples x rows, successful requests).",
            MODEL,
            registry=r,
        )
        self.predictions = Counter(
            "mcdrop_predictions_total",
            "Prediction requests handled by the batcher, by outcome.",
            (*MODEL, "outcome"),
            registry=r,
        )
        self.model_ready = Gauge(
            "mcdrop_model_ready", "1 when the model is loaded and warmed up.", MODEL,
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self._triton_names(r)

    def _triton_names(self, r: CollectorRegistry) -> None:
        """Triton's series (cumulative; see the module docstring for why gauges)."""

        def total(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, MODEL, registry=r, multiprocess_mode="sum")

        self.nv_success = total(
            "nv_inference_request_success", "Successful inference requests (Triton's name)."
        )
        self.nv_failure = total(
            "nv_inference_request_failure", "Failed inference requests (Triton's name)."
        )
        self.nv_count = total(
            "nv_inference_count", "Rows inferred by successful requests (Triton's name)."
        )
        self.nv_exec_count = total(
            "nv_inference_exec_count", "Engine calls (batches) that ran (Triton's name)."
        )
        self.nv_request_us = total(
            "nv_inference_request_duration_us",
            "Cumulative time of successful requests from queue entry to answer, microseconds.",
        )
        self.nv_queue_us = total(
            "nv_inference_queue_duration_us",
            "Cumulative queue wait of successful requests, microseconds (Triton's name).",
        )
        self.nv_compute_us = total(
            "nv_inference_compute_infer_duration_us",
            "Cumulative engine time of successful requests (each request counts its whole "
            "batch's time, as in Triton), microseconds.",
        )
        # The rest of Triton's statistics extension, so that under --workers it adds up
        # from the shared files like the series above (service.model_stats).
        self.fail_us = total(
            "mcdrop_inference_failure_duration_us",
            "Cumulative time of failed requests from queue entry to the error, microseconds.",
        )
        self.last_inference = Gauge(
            "mcdrop_last_inference_timestamp_seconds",
            "When the model last answered a request (Unix time; 0: never).",
            MODEL,
            registry=r,
            multiprocess_mode="max",
        )

    @staticmethod
    def shared_values() -> dict[tuple[str, str, str], float]:
        """Every worker's model series summed as ``/metrics`` shows them (multiprocess mode):
        ``{(sample name, model, version): value}``; empty in a single process."""
        if not multiprocess_enabled():
            return {}
        out: dict[tuple[str, str, str], float] = {}
        for family in MultiProcessCollector(None).collect():
            for s in family.samples:
                if "model" in s.labels and "version" in s.labels and len(s.labels) == 2:
                    out[(s.name, s.labels["model"], s.labels["version"])] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        """One sample of this process's metrics by its full name (0 when absent)."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    def render(self) -> bytes:
        """The Prometheus text exposition: this app's metrics, or every worker's."""
        if multiprocess_enabled():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            merged.register(WorkerProcessCollector(os.environ[MULTIPROC_ENV]))
            return generate_latest(merged)
        return generate_latest(self.registry)

    @staticmethod
    def process_exited() -> None:
        """Drop this process's live gauges from the shared files (multiprocess mode)."""
        if multiprocess_enabled():
            mark_process_dead(os.getpid())
