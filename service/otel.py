"""Optional OpenTelemetry spans: off by default, ``MCDROP_OPENTELEMETRY=true`` to turn on.

Needs the ``otel`` extra (``pip install 'mcdrop[otel]'``: opentelemetry-sdk). Per HTTP
request the service then records:

- a server span ``HTTP <method> <route>``, child of the caller's ``traceparent`` when it sent
  a valid one (its trace id is kept; the response's ``traceparent`` names this span);
- for a prediction, two children: ``mcdrop.queue_wait`` (arrival at the model's batcher to
  the start of its batch) and ``mcdrop.batch_compute`` (the batch's start to the answer),
  with the model, version, rows and the batch's engine time as attributes.

Spans go to the tracer provider the process has (one set by ``opentelemetry-instrument``
or by the embedding program); when there is none, :func:`enable` installs the SDK's with
an OTLP exporter if ``opentelemetry-exporter-otlp`` is installed (its usual ``OTEL_*``
variables apply), else one that prints finished spans to stderr as JSON.

The spans of the batcher thread are made after the fact, with the times it measured, so
the engine's hot loop carries no tracing call; turned off, the cost is one ``None`` check
per request.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from service.tracing import RequestContext

__all__ = ["Spans", "active", "enable", "disable"]

log = logging.getLogger("mcdrop.service")

_active: Spans | None = None


class Spans:
    """Makes the service's spans with one tracer.

    Parameters
    ----------
    tracer : opentelemetry.trace.Tracer
    """

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        self._trace, self._kind, self._flags = trace, SpanKind, TraceFlags
        self._remote, self._span_context = NonRecordingSpan, SpanContext
        self.tracer = tracer

    def begin(self, ctx: RequestContext, method: str) -> None:
        """Start the server span of a request; ``ctx`` takes its trace and span ids."""
        parent = None
        if ctx.parent_id is not None:
            remote = self._span_context(
                trace_id=int(ctx.trace_id, 16),
                span_id=int(ctx.parent_id, 16),
                is_remote=True,
                trace_flags=self._flags(int(ctx.flags, 16)),
            )
            parent = self._trace.set_span_in_context(self._remote(remote))
        span = self.tracer.start_span(f"HTTP {method}", context=parent, kind=self._kind.SERVER)
        sc = span.get_span_context()
        ctx.trace_id, ctx.span_id = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        ctx.flags = f"{int(sc.trace_flags):02x}"
        ctx.span = span

    def end(self, ctx: RequestContext, method: str, route: str, status: int) -> None:
        """End the server span of a request, named after its route template."""
        span = ctx.span
        if span is None:
            return
        span.update_name(f"HTTP {method} {route}")
        span.set_attribute("http.request.method", method)
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("mcdrop.request_id", ctx.request_id)
        span.end()

    def work(
        self,
        ctx: RequestContext,
        labels: tuple[str, str],
        rows: int,
        queue_ns: int,
        compute_ns: int,
        total_ns: int,
        ok: bool,
    ) -> None:
        """The queue-wait and batch-compute spans of one request, from the batcher's times
        (durations ending now): called by the batcher thread when the request is answered."""
        parent = self._trace.set_span_in_context(ctx.span)
        end = time.time_ns()
        arrived = end - total_ns
        began = arrived + queue_ns
        attrs = {"mcdrop.model": labels[0], "mcdrop.version": labels[1], "mcdrop.rows": rows}
        wait = self.tracer.start_span(
            "mcdrop.queue_wait", context=parent, start_time=arrived, attributes=attrs
        )
        wait.end(end_time=began)
        compute = self.tracer.start_span(
            "mcdrop.batch_compute", context=parent, start_time=began, attributes=attrs
        )
        compute.set_attribute("mcdrop.engine_ns", compute_ns)
        if not ok:
            compute.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        compute.end(end_time=end)


def active() -> Spans | None:
    """The spans maker when tracing is on, else None."""
    return _active


def enable(tracer_provider: Any = None) -> Spans:
    """Turn the spans on (the service's ``opentelemetry`` setting does at app start).

    Parameters
    ----------
    tracer_provider : opentelemetry.trace.TracerProvider, optional
        Where spans go; default: the process's, or a new SDK one (module docstring).

    Raises
    ------
    ImportError
        opentelemetry-sdk is not installed (``pip install 'mcdrop[otel]'``).
    """
    global _active
    try:
        from opentelemetry import trace
        from opentelemetry.sdk import trace as _sdk  # noqa: F401 (the extra is installed)
    except ImportError as exc:
        raise ImportError(
            "MCDROP_OPENTELEMETRY=true needs opentelemetry-sdk: pip install 'mcdrop[otel]'"
        ) from exc

    provider = tracer_provider
    if provider is None:
        provider = trace.get_tracer_provider()
        if not hasattr(provider, "add_span_processor"):  # the API's default: no SDK yet
            provider = _sdk_provider()
            trace.set_tracer_provider(provider)
    _active = Spans(provider.get_tracer("mcdrop"))
    return _active


def disable() -> None:
    """Turn the spans off (app shutdown; tests)."""
    global _active
    _active = None


def _sdk_provider() -> Any:
    """The SDK's provider with OTLP export when available, else JSON lines on stderr."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("opentelemetry: no OTLP exporter installed; spans print to stderr")
        exporter: Any = ConsoleSpanExporter(out=sys.stderr)
    else:
        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
