"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

Counters, gauges and histograms with labels, safe to update from the batcher threads.
:class:`ServiceMetrics` declares every metric the service exports; ``GET /metrics``
renders them.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "ServiceMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Labels = tuple[str, ...]
M = TypeVar("M", bound="_Metric")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def _label_str(self, key: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = list(zip(self.label_names, key)) + list(extra)
        if not pairs:
            return ""
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{self._label_str(k)} {_fmt(v)}" for k, v in items]


class Gauge(Counter):
    """A value that goes up and down per label set."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with ``_sum`` and ``_count``."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets or LATENCY_BUCKETS))
        self._data: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[i] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            entry = self._data.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def sum(self, **labels: str) -> float:
        with self._lock:
            entry = self._data.get(self._key(labels))
            return entry[1][0] if entry else 0.0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        lines = self.header()
        for key, (counts, total) in items:
            cum = 0
            for bound, c in zip((*self.buckets, math.inf), counts):
                cum += c
                le = (("le", _fmt(bound)),)
                lines.append(f"{self.name}_bucket{self._label_str(key, le)} {cum}")
            lines.append(f"{self.name}_sum{self._label_str(key)} {_fmt(total)}")
            lines.append(f"{self.name}_count{self._label_str(key)} {cum}")
        return lines


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: M) -> M:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """Every metric the service exports (one instance per app)."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = r.add(
            Counter(
                "mcdrop_http_requests_total",
                "HTTP requests by route template, method and status code.",
                ("route", "method", "status"),
            )
        )
        self.latency = r.add(
            Histogram(
                "mcdrop_http_request_duration_seconds",
                "Time from request start to the end of the response, by route template.",
                ("route",),
            )
        )
        self.queue_time = r.add(
            Histogram(
                "mcdrop_queue_wait_seconds",
                "Time a prediction waited in its model's queue before its batch started.",
                ("model",),
            )
        )
        self.compute_time = r.add(
            Histogram(
                "mcdrop_batch_compute_seconds",
                "Engine time of one batch (one predict_many call).",
                ("model",),
            )
        )
        self.batch_rows = r.add(
            Histogram(
                "mcdrop_batch_rows",
                "Input rows per engine call.",
                ("model",),
                buckets=ROWS_BUCKETS,
            )
        )
        self.batch_requests = r.add(
            Histogram(
                "mcdrop_batch_requests",
                "Requests per engine call.",
                ("model",),
                buckets=ROWS_BUCKETS,
            )
        )
        self.queue_depth = r.add(
            Gauge("mcdrop_queue_depth", "Requests waiting in the model's queue.", ("model",))
        )
        self.mc_samples = r.add(
            Counter(
                "mcdrop_mc_samples_total",
                "Monte Carlo forward samples served (samples x rows, successful requests).",
                ("model",),
            )
        )
        self.predictions = r.add(
            Counter(
                "mcdrop_predictions_total",
                "Prediction requests handled by the batcher, by outcome.",
                ("model", "outcome"),
            )
        )
        self.model_ready = r.add(
            Gauge("mcdrop_model_ready", "1 when the model is loaded and warmed up.", ("model",))
        )

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return self.registry.render()
