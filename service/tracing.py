"""Request ids and W3C trace context: one :class:`RequestContext` per request.

The access-log middleware makes the context when a request arrives and keeps it in a
context variable for the request's task, so that anything logged while the request runs
can name it (:class:`RequestIdFilter` puts ``request_id`` and ``trace_id`` on every log
record) and the response can echo it:

- ``X-Request-ID``: the client's id when it is well-formed (1 to 128 characters of letters,
  digits and ``._:~+=@/-``, starting with a letter or digit); otherwise, or when absent, a
  fresh one (32 hex digits). A hostile value (control characters, a megabyte, a log
  injection) is never logged or echoed: it is replaced. A v2 body's ``id`` becomes the
  request id when no header gave one (:func:`adopt_body_id`).
- ``traceparent`` (W3C Trace Context, level 1): a valid header keeps its trace id and flags;
  the server's own span id becomes the parent of whatever the client does next, and the
  response carries ``traceparent: 00-<trace id>-<server span id>-<flags>``. An invalid or
  absent header starts a new trace (flags ``00``: not sampled by the caller).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RequestContext",
    "RequestIdFilter",
    "adopt_body_id",
    "clean_request_id",
    "current",
    "finish",
    "parse_traceparent",
    "start",
    "MAX_REQUEST_ID",
]

MAX_REQUEST_ID = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~+=@/-]*")  # and at most MAX_REQUEST_ID long
# version - trace id - parent id - flags; a later version may append "-" and more fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# Ids need to be unique, not secret: a seeded generator (from os.urandom) costs half of
# secrets.token_hex per request; a forked child reseeds, so workers never share a stream.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


def _fresh_ids() -> tuple[str, str, str]:
    """A request id, a trace id (32 lowercase hex digits each) and a span id (16), from one
    draw (a request needs all three or two of them), none all zeros (W3C forbids zero ids)."""
    while True:
        digits = f"{_rng.getrandbits(320):080x}"
        rid, trace, span = digits[:32], digits[32:64], digits[64:]
        if rid != _ZERO_TRACE and trace != _ZERO_TRACE and span != _ZERO_SPAN:
            return rid, trace, span


@dataclass
class RequestContext:
    """What identifies one request in logs, headers and spans.

    Attributes
    ----------
    request_id : str
        Echoed as ``X-Request-ID``; in every log record of the request.
    given : bool
        Whether ``request_id`` came from the client (header or body) rather than made here.
    trace_id, span_id : str
        32 and 16 lowercase hex digits: the trace (the caller's, or new) and this server's
        span in it.
    parent_id : str or None
        The caller's span, from a valid ``traceparent``.
    flags : str
        Trace flags, two hex digits (``01``: sampled by the caller).
    span : opentelemetry Span or None
        The request's server span when OpenTelemetry is on (:mod:`service.otel`).
    """

    request_id: str
    given: bool
    trace_id: str
    span_id: str
    parent_id: str | None = None
    flags: str = "00"
    span: Any = field(default=None, repr=False)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header of the response (this server's span as the parent)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "mcdrop_request", default=None
)


def clean_request_id(value: str | None) -> str | None:
    """``value`` when it is an acceptable request id, else None (make a new one)."""
    if value is None or len(value) > MAX_REQUEST_ID or _ID.fullmatch(value) is None:
        return None
    return value


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid W3C ``traceparent``, else None.

    Invalid: another shape, uppercase hex, version ``ff``, a version-00 header with extra
    fields, an all-zero trace or parent id (the specification's rules).
    """
    if value is None or len(value) > 512:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace == _ZERO_TRACE:
        return None
    if parent == _ZERO_SPAN:
        return None
    return trace, parent, flags


def start(request_id: str | None, traceparent: str | None) -> tuple[RequestContext, object]:
    """Make the context of a new request from its headers and make it current.

    Returns
    -------
    (RequestContext, token)
        The token resets the context variable (:func:`finish`).
    """
    rid = clean_request_id(request_id)
    parsed = parse_traceparent(traceparent)
    new_rid, trace, span = _fresh_ids()
    parent, flags = None, "00"
    if parsed is not None:
        trace, parent, flags = parsed
    ctx = RequestContext(
        request_id=rid if rid is not None else new_rid,
        given=rid is not None,
        trace_id=trace,
        span_id=span,
        parent_id=parent,
        flags=flags,
    )
    return ctx, _current.set(ctx)


def finish(token: object) -> None:
    """Forget the request's context (the token :func:`start` returned)."""
    _current.reset(token)  # type: ignore[arg-type]


def current() -> RequestContext | None:
    """The context of the request being handled, if any."""
    return _current.get()


def adopt_body_id(body_id: object) -> None:
    """Use a v2 body's ``id`` as the request id when the client sent no ``X-Request-ID``
    (and the id is acceptable as one)."""
    ctx = _current.get()
    if ctx is None or ctx.given or not isinstance(body_id, str):
        return
    rid = clean_request_id(body_id)
    if rid is not None:
        ctx.request_id, ctx.given = rid, True


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to every record (``-`` outside a request),
    for formats such as ``"%(request_id)s"``. Put it on handlers: a logger's filters do
    not see the records of its children."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current.get()
        record.request_id = ctx.request_id if ctx is not None else "-"
        record.trace_id = ctx.trace_id if ctx is not None else "-"
        return True
