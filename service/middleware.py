"""Pure ASGI middleware: request body limit, access log and per-request metrics."""

from __future__ import annotations

import json
import logging
import time
import zlib
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, error_response
from service.metrics import ServiceMetrics

__all__ = ["BodyLimitMiddleware", "AccessLogMiddleware"]

access_log = logging.getLogger("mcdrop.access")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


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

    def _check_declared(self, scope: Scope) -> None:
        """413 up front when the (possibly compressed) Content-Length is over the limit."""
        declared = _header(scope, b"content-length")
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
        try:
            self._check_declared(scope)
            inflater = _inflater(_header(scope, b"content-encoding"))
        except (BadRequest, PayloadTooLarge, UnsupportedMediaType) as exc:
            await error_response(exc)(scope, receive, send)
            return
        received = 0
        started = False
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

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as exc:
            if started:
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
    """One JSON line per request on logger ``mcdrop.access`` and the HTTP metrics.

    The route label is the matched route template (``/v1/models/{name}/predict``), so
    metric cardinality does not grow with model names or bad URLs.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0

        async def tracking_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._record(scope, status, sent, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, sent: int, elapsed: float) -> None:
        route_obj: Any = scope.get("route")
        route = getattr(route_obj, "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(
                json.dumps(
                    {
                        "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                        "method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "bytes": sent,
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    }
                )
            )
