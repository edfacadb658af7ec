"""The service's Prometheus metrics, on prometheus_client.

:class:`ServiceMetrics` declares every metric the service exports in a registry of its own
(one per app, so two apps in one process, as in the tests, never share counts);
``GET /metrics`` renders them.

Under ``mcdrop serve --workers N`` every worker is a process with its own app: the launcher
sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder, removed at exit) before the workers
start, prometheus_client then keeps each value in a file there, and :meth:`render`
aggregates the files of all workers, so any worker's ``/metrics`` shows the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["ServiceMetrics", "CONTENT_TYPE", "MULTIPROC_ENV", "multiprocess_enabled"]

# The text format generate_latest writes (prometheus_client's CONTENT_TYPE_LATEST names a
# newer version string for the same text; scrapers and the tests expect this one).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_enabled() -> bool:
    """Whether prometheus_client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` files."""
    return bool(os.environ.get(MULTIPROC_ENV))


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
        self.queue_time = Histogram(
            "mcdrop_queue_wait_seconds",
            "Time a prediction waited in its model's queue before its batch started.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "mcdrop_batch_compute_seconds",
            "Engine time of one batch (one predict_many call).",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "mcdrop_batch_rows", "Input rows per engine call.", ("model",),
            buckets=ROWS_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "mcdrop_batch_requests", "Requests per engine call.", ("model",),
            buckets=ROWS_BUCKETS, registry=r,
        )  # fmt: skip
        # Across worker processes: the queues add up; a model is ready if any worker has it.
        self.queue_depth = Gauge(
            "mcdrop_queue_depth", "Requests waiting in the model's queue.", ("model",),
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.mc_samples = Counter(
            "mcdrop_mc_samples_total",
            "Monte Carlo forward samples served (samples x rows, successful requests).",
            ("model",),
            registry=r,
        )
        self.predictions = Counter(
            "mcdrop_predictions_total",
            "Prediction requests handled by the batcher, by outcome.",
            ("model", "outcome"),
            registry=r,
        )
        self.model_ready = Gauge(
            "mcdrop_model_ready", "1 when the model is loaded and warmed up.", ("model",),
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip

    def value(self, name: str, **labels: str) -> float:
        """One sample of this process's metrics by its full name (0 when absent)."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    def render(self) -> bytes:
        """The Prometheus text exposition: this app's metrics, or every worker's."""
        if multiprocess_enabled():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)

    @staticmethod
    def process_exited() -> None:
        """Drop this process's live gauges from the shared files (multiprocess mode)."""
        if multiprocess_enabled():
            mark_process_dead(os.getpid())
