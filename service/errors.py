"""The one place where errors become HTTP status codes (and gRPC ones: :func:`grpc_status_for`).

Service code raises the exceptions below (or lets :mod:`mcdrop.errors` ones through);
:func:`status_for` picks the code and :func:`error_response` writes ``{"error": "..."}``.
Nothing else in the service chooses a status code for an error.

Service exceptions (all :class:`ServiceError`)::

    ServiceError
    ├── BadRequest              400  unparseable body: malformed JSON, too deep, NaN literal,
    │                                binary tensor data
    ├── Unauthorized            401  missing or wrong API key (with WWW-Authenticate)
    ├── NotFound                404  unknown model, version or route
    ├── MethodNotAllowed        405
    ├── PayloadTooLarge         413  body over MCDROP_MAX_BODY_BYTES
    ├── ReadTimeout             408  the request head or body arrived too slowly
    │                                (MCDROP_CONN_HEADER_TIMEOUT_S, ..._MIN_BODY_RATE)
    ├── UnsupportedMediaType    415  a v1 body that is not JSON
    ├── Unprocessable           422  well-formed JSON that does not fit the model
    ├── ModelNotReady           503  the model failed to load, or the server is stopping
    ├── QueueFull               503  the model's queue is full (with Retry-After)
    ├── TooManyConnections      503  over MCDROP_CONN_MAX_CONNECTIONS (with Retry-After)
    ├── HeadersTooLarge         431  request line + headers over MCDROP_CONN_MAX_HEADER_BYTES
    ├── RequestTimeout          504  no answer within MCDROP_REQUEST_TIMEOUT_S
    └── ClientDisconnected      499  the client closed the connection before the answer
                                     (nobody reads it: for the access log and metrics)

mcdrop's own tree: InvalidInputError -> 422; ModelOutputError (non-finite or unusable
model output for this input) -> 422; NoDropoutError, UnsupportedModelError, ManifestError,
WeightsError, DataError (server-side configuration) -> 500. Anything else -> 500 with a
generic message; the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect

from mcdrop.errors import InvalidInputError, McdropError, ModelOutputError
from service.responses import FastJSONResponse

__all__ = [
    "ServiceError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "Unprocessable",
    "ModelNotReady",
    "QueueFull",
    "RequestTimeout",
    "ClientDisconnected",
    "ReadTimeout",
    "HeadersTooLarge",
    "TooManyConnections",
    "shown",
    "shown_int",
    "shown_shape",
    "status_for",
    "grpc_status_for",
    "error_response",
    "TrackedSend",
    "INTERNAL_ERROR_MESSAGE",
]

log = logging.getLogger("mcdrop.service")

INTERNAL_ERROR_MESSAGE = "internal server error; the server log has the details"


class ServiceError(Exception):
    """An error the service answers on purpose; ``headers`` are added to the response."""

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    """The body cannot be read as a request at all."""


class Unauthorized(ServiceError):
    """Missing or wrong credentials."""

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": 'Bearer realm="mcdrop"'})


class NotFound(ServiceError):
    """No such model, version or route."""


class MethodNotAllowed(ServiceError):
    """The route exists but not with this method."""


class PayloadTooLarge(ServiceError):
    """The body is over the size limit."""


class UnsupportedMediaType(ServiceError):
    """The body declares a content type other than JSON."""


class Unprocessable(ServiceError):
    """Valid JSON that does not fit the schema or the model."""


class ModelNotReady(ServiceError):
    """The model cannot serve now (failed to load, or the server is shutting down)."""


class QueueFull(ServiceError):
    """The model's request queue is full; retry shortly."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class RequestTimeout(ServiceError):
    """The request was not answered within the configured time."""


class ClientDisconnected(ServiceError):
    """The client went away while its request waited; the request was withdrawn."""


class ReadTimeout(ServiceError):
    """The client sent its request head or body too slowly (the connection is closed)."""


class HeadersTooLarge(ServiceError):
    """The request line and headers are over the size limit (the connection is closed)."""


class TooManyConnections(ServiceError):
    """The server holds its maximum of open connections; retry shortly."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s), "Connection": "close"})


_SERVICE_STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    MethodNotAllowed: 405,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    ModelNotReady: 503,
    QueueFull: 503,
    RequestTimeout: 504,
    ClientDisconnected: 499,  # nginx's "client closed request"
    ReadTimeout: 408,
    HeadersTooLarge: 431,
    TooManyConnections: 503,
}

_HTTP_STATUS_CLASS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
}


def status_for(exc: BaseException) -> int:
    """The HTTP status code for ``exc``."""
    if isinstance(exc, ServiceError):
        for cls in type(exc).__mro__:
            if cls in _SERVICE_STATUS:
                return _SERVICE_STATUS[cls]
        return 500
    if isinstance(exc, (InvalidInputError, ModelOutputError)):
        return 422
    if isinstance(exc, ClientDisconnect):  # gone while its body was read (or cut off)
        return 499
    return 500


# The gRPC status (a grpc.StatusCode name) of each error: bad input is INVALID_ARGUMENT,
# never UNKNOWN or INTERNAL; 413 is what grpcio itself answers past the message limit.
_GRPC_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    431: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_status_for(exc: BaseException) -> str:
    """The gRPC status code name (``grpc.StatusCode[...]``) for ``exc``: the HTTP status
    of :func:`status_for`, translated; ``INTERNAL`` for server-side failures."""
    return _GRPC_STATUS.get(status_for(exc), "INTERNAL")


def from_http_status(status: int, message: str) -> ServiceError:
    """Wrap a framework-raised HTTP status (404 route, 405 method, ...) as a ServiceError."""
    cls = _HTTP_STATUS_CLASS.get(status, BadRequest if 400 <= status < 500 else ServiceError)
    if cls is Unauthorized:
        return Unauthorized(message)
    return cls(message)


SHOWN_CHARS = 64  # how much of a client's string an error message repeats


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` quoted for an error message: cut to ``limit`` characters (an ellipsis says
    so) and escaped where it is not encodable UTF-8 (a lone surrogate), so that a message
    never grows with the request nor fails to render."""
    cut = text[:limit]
    safe = cut.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"'{safe}'" + ("…" if len(text) > limit else "")


def shown_int(value: int) -> str:
    """An integer for an error message: as it is up to 18 digits, else its size (a client
    may send 4,300 digits, and Python refuses to print a product of such numbers)."""
    if -(10**18) < value < 10**18:
        return str(value)
    return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"


def shown_shape(shape: Any, limit: int = 8) -> str:
    """A client's shape for an error message: at most ``limit`` dimensions, each
    :func:`shown_int` (an ellipsis says there were more); not a list of ints: its type."""
    if not isinstance(shape, list):
        return f"a {type(shape).__name__}"
    dims = [shown_int(d) if isinstance(d, int) else type(d).__name__ for d in shape[:limit]]
    return "[" + ", ".join(dims) + (", …]" if len(shape) > limit else "]")


def message_for(exc: BaseException) -> str:
    """The client-facing message: ours verbatim, never a traceback or internal detail."""
    if isinstance(exc, ServiceError):
        return exc.message
    if isinstance(exc, ModelOutputError):
        return f"the model produced unusable output for this input: {exc}"
    if isinstance(exc, InvalidInputError):
        return str(exc)
    if isinstance(exc, McdropError):
        return "the model is misconfigured on the server; the server log has the details"
    if isinstance(exc, ClientDisconnect):
        return "the client closed the connection before its request body arrived"
    return INTERNAL_ERROR_MESSAGE


class TrackedSend:
    """An ASGI ``send`` that notes whether the response has begun: a middleware may answer
    an error with :func:`error_response` only before that (after, it can only cut it)."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def error_response(exc: BaseException) -> FastJSONResponse:
    """``{"error": message}`` with the status (and headers) :func:`status_for` picks."""
    status = status_for(exc)
    if status >= 500 and not isinstance(exc, ServiceError):
        log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    headers = exc.headers if isinstance(exc, ServiceError) else None
    return FastJSONResponse({"error": message_for(exc)}, status_code=status, headers=headers)
