"""Connection-level limits of ``mcdrop serve``: uvicorn's HTTP protocols with timers added.

uvicorn has a keep-alive timeout (idle time *between* requests) and nothing else: a socket
that never sends a byte, a head sent one line every few seconds, or a body at one byte per
second is kept open for ever, and httptools buffers a request head of any size (one 96 MiB
header held the event loop for 7 s). The protocols here are uvicorn's own (h11 or
httptools, :data:`PARSERS`) with one timer and a few counters per connection. Its phases:

- *idle* (just opened, or answered): closed silently after ``idle_timeout_s`` without a
  byte (between requests this is uvicorn's keep-alive timer, set to the same value);
- *head*: the request line and headers must be complete within ``header_timeout_s`` of
  their first byte (else 408) and within ``max_header_bytes`` (else 431);
- *body*: at least ``min_body_rate`` bytes/s over each window of ``body_timeout_s`` (else
  408), unless the server itself stopped reading;
- *app*: the whole request is in; the app's own limits apply (request timeout).

Past ``max_connections``, a new connection closes the one that has waited longest with no
request under way (idle, or its head still arriving: a 503 then), so a crowd of slow
sockets at the cap cannot lock clients out; when every connection has a request under way,
the new one is served a JSON 503 (``Connection: close``) instead of the app. The work added
per received chunk is a few attribute updates; nothing is done per byte.

Shutdown: uvicorn cancels the requests still running when its graceful-shutdown time
(``MCDROP_DRAIN_SECONDS``) is over and answers them with a plain-text 500.
:func:`shutdown_answer` is the service's JSON 503 they get instead (the
protocols note when the server's shutdown began), and :func:`stop_budget` tells the app's
lifespan how long it may still wait for the engines.

Limits are per process: :func:`configure` sets them (``mcdrop serve`` and each worker
process do, from :class:`ConnectionSettings`) before uvicorn creates a protocol.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, model_validator
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import (
    HeadersTooLarge,
    ModelNotReady,
    ReadTimeout,
    ServiceError,
    TooManyConnections,
    error_response,
    status_for,
)
from service.responses import FastJSONResponse

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HttpToolsProtocol = None  # type: ignore[assignment, misc]

__all__ = [
    "ConnectionSettings",
    "PARSERS",
    "configure",
    "stop_budget",
    "shutdown_answer",
    "H11Guarded",
    "HttpToolsGuarded",
]

log = logging.getLogger("mcdrop.service")

CONN_PREFIX = "MCDROP_CONN_"
PARSERS = ("auto", "httptools", "h11")
FD_RESERVE = 64  # descriptors kept free for model files, logs and the listening sockets
ENGINE_GRACE_S = 1.0  # after the drain: time for the engines to finish their chunk


class ConnectionSettings(BaseModel):
    """Connection limits of ``mcdrop serve``; each field is
    ``MCDROP_CONN_<FIELD NAME UPPERCASE>`` (:attr:`service.settings.Settings.conn`).

    Attributes
    ----------
    idle_timeout_s : float
        A connection with no request under way (just opened, or between requests) is
        closed after this long without a byte (uvicorn's keep-alive timeout too).
    header_timeout_s : float
        From the first byte of a request to the end of its headers; past it: 408.
    body_timeout_s : float
        The body must arrive at ``min_body_rate`` bytes/s on average over each window of
        this length (not counting time the server itself stops reading); else 408.
    min_body_rate : int
        Bytes per second (see ``body_timeout_s``).
    max_connections : int
        Open connections per process. One more closes the connection idle (or sending
        its head) the longest, or, if none is, gets a 503 for its request. Lowered at
        start to the descriptor limit (``ulimit -n``) less 64.
    max_header_bytes : int
        Request line plus headers; more: 431.
    http_parser : str
        ``auto`` (httptools when installed, else h11), ``httptools`` or ``h11``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    idle_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    min_body_rate: int = 1024
    max_connections: int = 1000
    max_header_bytes: int = 64 * 1024
    http_parser: str = "auto"

    @model_validator(mode="after")
    def _ranges(self) -> ConnectionSettings:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(f"{CONN_PREFIX}{name.upper()} {rule}, got {getattr(self, name)!r}")

        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            check(name, getattr(self, name) > 0, "must be > 0")
        for name in ("min_body_rate", "max_connections"):
            check(name, getattr(self, name) >= 1, "must be at least 1")
        check("max_header_bytes", self.max_header_bytes >= 1024, "must be at least 1024")
        check("http_parser", self.http_parser in PARSERS, f"must be one of {', '.join(PARSERS)}")
        check(
            "http_parser",
            self.http_parser != "httptools" or HttpToolsProtocol is not None,
            "needs httptools, which is not installed",
        )
        return self


class _State:
    """This process's limits and the moment its shutdown began."""

    settings: ClassVar[ConnectionSettings] = ConnectionSettings()
    draining_since: ClassVar[float | None] = None


def _fd_cap(wanted: int) -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


def configure(settings: ConnectionSettings) -> str:
    """Make ``settings`` this process's limits; returns uvicorn's ``http`` option (the
    import path of the protocol class), so that worker processes import the same one."""
    cap = _fd_cap(settings.max_connections)
    if cap < settings.max_connections:
        log.warning(
            "mcdrop: %sMAX_CONNECTIONS lowered from %d to %d (descriptor limit less %d)",
            CONN_PREFIX, settings.max_connections, cap, FD_RESERVE,
        )  # fmt: skip
        settings = settings.model_copy(update={"max_connections": cap})
    _State.settings = settings
    _State.draining_since = None
    use_h11 = settings.http_parser == "h11" or HttpToolsProtocol is None
    return f"{__name__}:{'H11Guarded' if use_h11 else 'HttpToolsGuarded'}"


def stop_budget(drain_seconds: float) -> float:
    """How long the lifespan shutdown may wait for the engines: what is left of the drain
    (counted from the server's shutdown) plus :data:`ENGINE_GRACE_S`, so the process exits
    within the drain plus one chunk; the whole drain when no shutdown was seen."""
    since = _State.draining_since
    if since is None:
        return drain_seconds
    return max(0.0, since + drain_seconds - time.monotonic()) + ENGINE_GRACE_S


# ------------------------------------------------------------------ canned answers


def _raw_response(exc: ServiceError) -> bytes:
    """A complete HTTP/1.1 response for ``exc`` that closes the connection, written
    straight to the transport (no request cycle exists yet, or it is abandoned)."""
    body = orjson.dumps({"error": exc.message})
    status = status_for(exc)
    extra = [
        f"{name.lower()}: {value}\r\n".encode("latin-1")
        for name, value in exc.headers.items()
        if name.lower() != "connection"
    ]
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        *extra,
        b"connection: close\r\n\r\n",
        body,
    ])  # fmt: skip


def _busy() -> TooManyConnections:
    return TooManyConnections(
        f"the server holds its maximum of {_State.settings.max_connections} connections "
        f"({CONN_PREFIX}MAX_CONNECTIONS); retry shortly"
    )


async def _busy_app(scope: Any, receive: Any, send: Any) -> None:
    """The app of a connection over the cap: a JSON 503 that closes it."""
    await error_response(_busy())(scope, receive, send)


def shutdown_answer() -> FastJSONResponse | None:
    """The JSON 503 (``Connection: close``) for a request that the server's shutdown
    cancelled (still running when ``MCDROP_DRAIN_SECONDS`` was over), where uvicorn would
    send a plain-text 500; None when the server is not shutting down (the cancellation is
    not the shutdown's). The access-log middleware sends it, so the log records the 503."""
    if _State.draining_since is None:
        return None
    exc = ModelNotReady(
        "the server is shutting down: this request did not finish within "
        "MCDROP_DRAIN_SECONDS; retry elsewhere"
    )
    exc.headers["Connection"] = "close"
    return error_response(exc)


# ------------------------------------------------------------------ the guard

_IDLE, _HEAD, _BODY, _APP = range(4)


class _Guard:
    """The timers and counters, mixed into a uvicorn protocol (see the module docstring).

    The phase is read from uvicorn's own request cycle after each chunk the parser gets,
    so the same code holds under h11 and httptools.
    """

    # Provided by uvicorn's protocol classes.
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any
    flow: Any
    loop: asyncio.AbstractEventLoop
    app: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        lim = _State.settings
        self._g_phase = _IDLE
        self._g_head = 0  # bytes of the request head so far
        self._g_bytes = 0  # bytes received on this connection
        self._g_mark = 0  # _g_bytes when the body window began
        self._g_cycle: Any = None  # the request whose body or app phase this is
        self._g_timer: asyncio.TimerHandle | None = None
        self._g_since = self.loop.time()  # since when no request is under way
        if len(self.connections) > lim.max_connections and not self._g_evict():
            self.app = _busy_app
        self._g_arm(lim.idle_timeout_s, self._g_on_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._g_cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        self._g_bytes += len(data)
        if self._g_phase != _BODY:  # bytes of a request head (or of a pipelined one)
            self._g_head += len(data)
            if self._g_head > _State.settings.max_header_bytes and self._g_head_too_large(data):
                return
        super().data_received(data)  # type: ignore[misc]
        self._g_classify()

    def _g_head_too_large(self, data: bytes) -> bool:
        """Past the limit (rare): refuse (431) unless this chunk ends a head within the
        limit (it may carry a body too). The parser never holds more than the limit."""
        end = data.find(b"\r\n\r\n")
        if end >= 0 and self._g_head - len(data) + end + 4 <= _State.settings.max_header_bytes:
            return False
        self._g_refuse(HeadersTooLarge(self._g_too_large()))
        return True

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._g_classify()

    def shutdown(self) -> None:
        if _State.draining_since is None:
            _State.draining_since = time.monotonic()
        super().shutdown()  # type: ignore[misc]

    # ------------------------------------------------------------------ phases

    def _g_classify(self) -> None:
        """The phase from uvicorn's request cycle, after the parser took a chunk or a
        response ended."""
        if self.transport.is_closing():
            self._g_cancel()
            return
        cycle = self.cycle
        lim = _State.settings
        if cycle is not None and cycle is not self._g_cycle and not cycle.response_complete:
            self._g_cycle = cycle  # a new request's head is complete
            self._g_head = 0
            if cycle.more_body:
                self._g_phase = _BODY
                self._g_mark = self._g_bytes
                self._g_arm(lim.body_timeout_s, self._g_on_body_window)
            else:
                self._g_phase = _APP
                self._g_cancel()
        elif cycle is None or cycle.response_complete:  # waiting for a request head
            phase = self._g_phase
            if phase == _APP:  # answered: idle again (uvicorn's keep-alive timer runs)
                self._g_phase = _IDLE
                self._g_since = self.loop.time()
                self._g_head = 0
                self._g_cancel()
            elif phase == _BODY or (phase == _IDLE and self._g_head > 0):
                # Bytes of a head arrived (or the answer came before the whole body:
                # what follows counts as the next head, under the same limits).
                self._g_phase = _HEAD
                if phase == _BODY:  # (an idle connection keeps its start: since it opened)
                    self._g_head = 0
                    self._g_since = self.loop.time()
                self._g_arm(lim.header_timeout_s, self._g_on_head_timeout)
            elif phase == _HEAD and self._g_head > lim.max_header_bytes:
                self._g_refuse(HeadersTooLarge(self._g_too_large()))
        elif self._g_phase == _BODY and not cycle.more_body:
            self._g_phase = _APP  # the whole body is in: the app's own limits apply
            self._g_cancel()

    def _g_evict(self) -> bool:
        """Over the cap: close the connection that has waited longest without a request
        under way (idle, or its head still arriving), so that a slowloris crowd at the cap
        cannot lock clients out; False when every connection has a request under way.
        O(connections), and only past the cap."""
        victim: Any = None
        for other in self.connections:
            if other is not self and getattr(other, "_g_phase", _APP) <= _HEAD:
                if victim is None or other._g_since < victim._g_since:
                    victim = other
        if victim is None:
            return False
        if victim._g_phase == _HEAD:
            victim._g_refuse(_busy())  # a 503, as if it had come after the cap was hit
        else:
            victim._g_cancel()
            victim._g_phase = _APP  # never chosen twice while it closes
            victim.transport.close()
        return True

    # ------------------------------------------------------------------ timers

    def _g_arm(self, delay: float, callback: Any) -> None:
        if self._g_timer is not None:
            self._g_timer.cancel()
        self._g_timer = self.loop.call_later(delay, callback)

    def _g_cancel(self) -> None:
        if self._g_timer is not None:
            self._g_timer.cancel()
            self._g_timer = None

    def _g_on_idle(self) -> None:
        self._g_timer = None
        if self._g_phase == _IDLE and not self.transport.is_closing():
            self.transport.close()

    def _g_on_head_timeout(self) -> None:
        self._g_timer = None
        if self._g_phase == _HEAD:
            lim = _State.settings
            self._g_refuse(ReadTimeout(
                f"the request headers did not arrive within {lim.header_timeout_s:g} s "
                f"({CONN_PREFIX}HEADER_TIMEOUT_S)"
            ))  # fmt: skip

    def _g_on_body_window(self) -> None:
        self._g_timer = None
        if self._g_phase != _BODY:
            return
        lim = _State.settings
        window = lim.body_timeout_s
        received = self._g_bytes - self._g_mark
        if self.flow.read_paused or received >= lim.min_body_rate * window:
            # Fast enough, or the server itself stopped reading (the app is busy).
            self._g_mark = self._g_bytes
            self._g_arm(window, self._g_on_body_window)
            return
        cycle = self._g_cycle
        if cycle is not None:  # the app sees a disconnect, and cannot answer over ours
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self._g_refuse(ReadTimeout(
            f"the request body arrived at {received / window:.0f} bytes/s, under "
            f"{lim.min_body_rate} ({CONN_PREFIX}MIN_BODY_RATE)"
        ))  # fmt: skip

    def _g_too_large(self) -> str:
        return (
            f"the request line and headers are larger than "
            f"{_State.settings.max_header_bytes} bytes ({CONN_PREFIX}MAX_HEADER_BYTES)"
        )

    def _g_refuse(self, exc: ServiceError) -> None:
        """Answer ``exc`` and close; nothing more is read from this connection."""
        self._g_cancel()
        self._g_phase = _APP
        if not self.transport.is_closing():
            self.transport.write(_raw_response(exc))
            self.transport.close()


class H11Guarded(_Guard, H11Protocol):  # type: ignore[misc]
    """uvicorn's h11 protocol with the connection limits."""


if HttpToolsProtocol is not None:

    class HttpToolsGuarded(_Guard, HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol with the connection limits."""

else:  # pragma: no cover - httptools is a dependency; kept importable without it
    HttpToolsGuarded = None  # type: ignore[assignment, misc]
