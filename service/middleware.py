"""Pure ASGI middleware: request body limit, access log, per-request metrics and ids."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import otel, tracing
from service.access_log import access_log, write_access_line
from service.connections import shutdown_answer
from service.errors import (
    BadRequest,
    PayloadTooLarge,
    TrackedSend,
    UnsupportedMediaType,
    error_response,
)
from service.metrics import ServiceMetrics

__all__ = ["BodyLimitMiddleware", "AccessLogMiddleware", "METHODS", "method_label"]


# The method label's values: HTTP's registered methods, and "other" for any other token a
# client sends (h11 and httptools accept any), so a client cannot add series at will.
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
)


def method_label(method: str) -> str:
    """``method`` when it is one of :data:`METHODS`, else ``"other"``."""
    return method if method in METHODS else "other"


def _headers(scope: Scope, first: bytes, second: bytes) -> tuple[str | None, str | None]:
    """The values of two headers (the first of each name), in one pass over the list."""
    a = b = None
    for key, value in scope.get("headers", ()):
        key = key.lower()
        if key == first:
            if a is None:
                a = str(value.decode("latin-1"))
        elif key == second and b is None:
            b = str(value.decode("latin-1"))
    return a, b


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length up front, and while streaming
    (chunked bodies or a Content-Length that lies)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than {self.max_bytes} bytes "
            "(MCDROP_MAX_BODY_BYTES); send fewer rows per request"
        )

    def _check_declared(self, declared: str | None) -> None:
        """413 up front when the (possibly compressed) Content-Length is over the limit."""
        if declared is None:
            return
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not an integer") from None
        if size > self.max_bytes:
            raise self._too_large()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, encoding = _headers(scope, b"content-length", b"content-encoding")
        try:
            self._check_declared(length)
            inflater = _inflater(encoding)
        except (BadRequest, PayloadTooLarge, UnsupportedMediaType) as exc:
            await error_response(exc)(scope, receive, send)
            return
        received = 0
        if inflater is not None:  # the app sees the inflated body, without the encoding
            scope = _without_encoding(scope)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                if inflater is not None:
                    room = self.max_bytes - received
                    message = _inflate(inflater, message, room, self._too_large)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        tracked = TrackedSend(send)
        try:
            await self.app(scope, limited_receive, tracked)
        except PayloadTooLarge as exc:
            if tracked.started:
                raise
            await error_response(exc)(scope, receive, send)


def _inflater(encoding: str | None) -> Any:
    """A zlib decompressor for a request's Content-Encoding (None for identity)."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":  # zlib-wrapped, as RFC 9110 defines it
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise UnsupportedMediaType(
        f"Content-Encoding '{enc[:40]}' is not supported; send gzip, deflate or identity"
    )


def _without_encoding(scope: Scope) -> Scope:
    """The scope with Content-Encoding and Content-Length (of the compressed body) removed."""
    out = dict(scope)
    drop = (b"content-encoding", b"content-length")
    out["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in drop]
    return out


def _inflate(inflater: Any, message: Message, room: int, too_large: Any) -> Message:
    """One body message inflated, never to more than ``room`` + 1 bytes (413 past it).

    The bound goes to zlib itself, so a small bomb never expands in memory.
    """
    try:
        out: bytes = inflater.decompress(message.get("body", b""), room + 1)
    except zlib.error:
        raise BadRequest("the request body is not valid for its Content-Encoding") from None
    if len(out) > room:
        raise too_large()
    if not message.get("more_body", False) and not inflater.eof:
        raise BadRequest("the compressed request body is truncated")
    return {**message, "body": out}


class AccessLogMiddleware:
    """One JSON line per request on logger ``mcdrop.access``, the HTTP metrics, and the
    request's id and trace context (:mod:`service.tracing`).

    The route label is the matched route template (``/v1/models/{name}/predict``) and the
    method label one of :data:`METHODS` or "other", so metric cardinality does not grow
    with model names, bad URLs or invented methods. Every response carries
    ``X-Request-ID`` and ``traceparent``; the context is current while the request runs,
    so its log records name it too. A request that the server's shutdown cancels before
    its response began gets the service's JSON 503
    (:func:`~service.connections.shutdown_answer`), not uvicorn's plain-text 500.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, method, status) -> the counter's increment and the histogram's observe,
        # bound once: prometheus_client's labels() checks and locks on every call. As
        # bounded as the labels are (route templates, METHODS, status codes).
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0
        ctx, token = tracing.start(*_headers(scope, b"x-request-id", b"traceparent"))
        method = method_label(str(scope.get("method", "")))
        spans = otel.active()
        if spans is not None:
            spans.begin(ctx, method)

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, sent, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                message = _with_ids(message, ctx)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            # The server's shutdown cut the request: its JSON 503, recorded here (a
            # response already begun can only be cut; any other cancellation goes on).
            answer = None if started else shutdown_answer()
            if answer is None:
                raise
            await answer(scope, receive, tracking_send)
        finally:
            route = _route(scope)
            try:
                self._record(scope, route, status, sent, time.perf_counter() - start, ctx)
            finally:
                if spans is not None:
                    spans.end(ctx, method, route, status)
                tracing.finish(token)

    def _record(
        self,
        scope: Scope,
        route: str,
        status: int,
        sent: int,
        elapsed: float,
        ctx: tracing.RequestContext,
    ) -> None:
        method = str(scope.get("method", ""))
        key = (route, method_label(method), str(status))
        series = self._series.get(key)
        if series is None:
            m = self.metrics
            series = (m.requests.labels(*key).inc, m.latency.labels(route).observe)
            self._series[key] = series
        inc, observe = series
        inc()
        observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            fields = {
                "method": method[:16],
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "bytes": sent,
                "client": f"{client[0]}:{client[1]}" if client else None,
            }
            write_access_line(fields, ctx)


def _with_ids(message: Message, ctx: tracing.RequestContext) -> Message:
    """A response start with ``X-Request-ID`` and ``traceparent`` added (read when the
    response starts: a v2 body's id, adopted by the route, is known by then)."""
    headers = [
        *message.get("headers", ()),
        (b"x-request-id", ctx.request_id.encode("ascii")),
        (b"traceparent", ctx.traceparent.encode("ascii")),
    ]
    return {**message, "headers": headers}


def _route(scope: Scope) -> str:
    """The matched route template, or "unmatched"."""
    route_obj: Any = scope.get("route")
    return str(getattr(route_obj, "path", None) or "unmatched")
