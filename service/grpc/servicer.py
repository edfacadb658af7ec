"""``inference.GRPCInferenceService`` over the data plane.

Each method is a few lines: convert the protobuf request, call the
:class:`~service.plane.DataPlane`, convert back. The :func:`rpc` decorator is the one place
where exceptions become gRPC statuses (through :func:`service.errors.grpc_status_for`, the
same table as the HTTP codes) and where the API key is checked. The model and repository
methods need the key when one is set, as their HTTP routes do; health and server metadata
do not.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

import mcdrop
from service import model_info, tracing
from service.access_log import write_access_line
from service.errors import (
    INTERNAL_ERROR_MESSAGE,
    BadRequest,
    NotFound,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    Unprocessable,
    grpc_status_for,
    message_for,
    shown,
)
from service.grpc import codec
from service.grpc.schema import SERVICE, message_class
from service.plane import DataPlane
from service.settings import Settings

__all__ = ["Servicer", "rpc", "EXTENSIONS"]

log = logging.getLogger("mcdrop.service")

EXTENSIONS = ("model_configuration", "statistics", "model_repository")
Handler = Callable[["Servicer", Any, grpc.aio.ServicerContext], Awaitable[Any]]

_Msg = {n: message_class(n) for n in (
    "ServerLiveResponse", "ServerReadyResponse", "ModelReadyResponse",
    "ServerMetadataResponse", "ModelConfigResponse", "ModelStatisticsResponse",
    "RepositoryIndexResponse", "RepositoryModelLoadResponse", "RepositoryModelUnloadResponse",
    "ModelStreamInferResponse",
)}  # fmt: skip


def _check_key(key: str | None, context: grpc.aio.ServicerContext) -> None:
    """When an API key is set, require metadata ``authorization: Bearer <key>``."""
    if key is None:
        return
    header = dict(context.invocation_metadata() or ()).get("authorization")
    if header is None:
        raise Unauthorized(
            "this method needs an API key: send metadata 'authorization: Bearer <key>'"
        )
    scheme, _, token = str(header).partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8"), key.encode("utf-8")
    ):
        raise Unauthorized("invalid API key")


def status_of(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status and message of ``exc``: :func:`~service.errors.grpc_status_for` and the
    message HTTP would send, or INTERNAL with a generic message for an unexpected error
    (whose traceback goes to the server log only)."""
    code = grpc_status_for(exc)
    if code == "INTERNAL" and not isinstance(exc, (ServiceError, mcdrop.McdropError)):
        log.error("gRPC %s: %s: %s", method, type(exc).__name__, exc, exc_info=exc)
        return grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE
    return grpc.StatusCode[code], message_for(exc)


def _parse(method: str, raw: bytes) -> Any:
    """The ``<method>Request`` in ``raw``; one that does not parse is bad input."""
    try:
        return message_class(f"{method}Request").FromString(raw)
    except DecodeError:
        raise BadRequest(f"the {method}Request message does not parse") from None


def _echo(ctx: tracing.RequestContext) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", ctx.request_id), ("traceparent", ctx.traceparent))


def rpc(*, protected: bool) -> Callable[[Handler], Handler]:
    """Wrap a servicer method: the API key (when ``protected``), the request message
    parsed, then errors to statuses.

    The wrapped method is called with the raw request bytes (the server registers no
    deserializer): a message that does not parse is bad input, INVALID_ARGUMENT, where
    grpcio's own deserialization failure would be INTERNAL.
    Any error aborts the call with :func:`status_of`.
    """

    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        async def call(self: Servicer, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            # The request id and trace context, as HTTP's: in every log line of the call,
            # and echoed in the trailing metadata (x-request-id, traceparent).
            start = time.perf_counter()
            meta = dict(context.invocation_metadata() or ())
            ctx, token = tracing.start(meta.get("x-request-id"), meta.get("traceparent"))
            code = grpc.StatusCode.OK
            try:
                if protected:
                    _check_key(self.settings.api_key, context)
                request = _parse(method.__name__, raw)
                if method.__name__ == "ModelInfer":
                    tracing.adopt_body_id(request.id or None)
                return await method(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code, message = status_of(exc, method.__name__)
                await context.abort(code, message, trailing_metadata=_echo(ctx))
            finally:
                context.set_trailing_metadata(_echo(ctx))
                self.record(method.__name__, code, time.perf_counter() - start, ctx, context)
                tracing.finish(token)

        return call

    return wrap


def _version(v: str) -> str | None:
    return v or None  # proto3: an unset string is "", meaning the default version


class Servicer:
    """The methods of ``inference.GRPCInferenceService``.

    Parameters
    ----------
    plane : DataPlane
        The same data plane the HTTP routes call.
    settings : Settings
    """

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings

    def record(
        self,
        method: str,
        code: grpc.StatusCode,
        elapsed: float,
        ctx: tracing.RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Count a call (or one request of a stream) in ``mcdrop_grpc_requests_total`` and
        its duration, and write its access line (the shape of HTTP's)."""
        metrics = self.plane.metrics
        metrics.grpc_requests.labels(method, code.name).inc()
        metrics.grpc_latency.labels(method).observe(elapsed)
        fields = {
            "method": "gRPC",
            "path": f"/{SERVICE}/{method}",
            "route": f"/{SERVICE}/{method}",
            "status": code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "client": context.peer(),
        }
        write_access_line(fields, ctx)

    # -------------------------------------------------------------- health, metadata

    @rpc(protected=False)
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _Msg["ServerLiveResponse"](live=True)

    @rpc(protected=False)
    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _Msg["ServerReadyResponse"](ready=self.plane.ready)

    @rpc(protected=True)
    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            ready = self.plane.model_ready(request.name, _version(request.version))["ready"]
        except NotFound:
            raise
        except ServiceError:  # failed to load or stopping: "not ready", as Triton says
            ready = False
        return _Msg["ModelReadyResponse"](ready=bool(ready))

    @rpc(protected=False)
    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _Msg["ServerMetadataResponse"](
            name="mcdrop", version=mcdrop.__version__, extensions=list(EXTENSIONS)
        )

    @rpc(protected=True)
    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return codec.metadata(self.plane.get(request.name, _version(request.version)))

    # -------------------------------------------------------------- inference

    @rpc(protected=True)
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self._infer(request, context)

    async def ModelStreamInfer(  # noqa: N802
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[Any]:
        """Every request of the stream is answered by one message of the stream, in the
        order the answers come (each carries its request's ``id``); an error answers its
        request with ``error_message`` and the stream goes on, as Triton's does."""
        try:
            _check_key(self.settings.api_key, context)
        except Unauthorized as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        meta = dict(context.invocation_metadata() or ())
        end = object()  # put after the last request was read
        tasks: set[asyncio.Future[None]] = set()

        async def answer(raw: bytes) -> None:
            stream, request = _Msg["ModelStreamInferResponse"], None
            start, code = time.perf_counter(), grpc.StatusCode.OK
            ctx, token = tracing.start(meta.get("x-request-id"), meta.get("traceparent"))
            try:
                request = _parse("ModelInfer", raw)
                tracing.adopt_body_id(request.id or None)
                resp = stream(infer_response=await self._infer(request, context))
            except asyncio.CancelledError:  # the client went away (or the server stops)
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message = status_of(exc, "ModelStreamInfer")
                resp = stream(error_message=message)
                if request is not None and request.id:  # which request failed
                    resp.infer_response.id = request.id
            finally:
                self.record("ModelStreamInfer", code, time.perf_counter() - start, ctx, context)
                tracing.finish(token)
            await answers.put(resp)

        async def read() -> None:
            try:
                async for raw in requests:
                    tasks.add(asyncio.ensure_future(answer(raw)))
            finally:  # a broken request stream ends ours too, once the answers are out
                await answers.put(end)

        reader = asyncio.ensure_future(read())
        try:
            reading, sent = True, 0
            while reading or sent < len(tasks):
                item = await answers.get()
                if item is end:
                    reading = False
                    continue
                sent += 1
                yield item
        finally:  # the client went away: withdraw what is still queued
            reader.cancel()
            for t in tasks:
                t.cancel()

    async def _infer(self, request: Any, context: Any) -> Any:
        self.plane.refuse_if_busy(request.model_name)
        model = self.plane.get(request.model_name, _version(request.model_version))
        req = codec.decode_infer(model, request)
        answer = await self._within_deadline(self.plane.infer(model, req.infer), context)
        return codec.encode_infer(model, answer, req)

    async def _within_deadline(self, work: Awaitable[Any], context: Any) -> Any:
        """Await ``work``, withdrawn (out of the queue if not started) at the client's
        deadline when that comes before the server's own request timeout."""
        left = context.time_remaining()
        if left is None or left >= self.settings.request_timeout_s:
            return await work
        try:
            return await asyncio.wait_for(work, max(left, 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no answer within the call's deadline ({left:.3f} s)") from None

    # -------------------------------------------------------------- config, statistics

    @rpc(protected=True)
    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        config = model_info.model_config(self.plane, request.name, _version(request.version))
        return json_format.ParseDict(
            {"config": config}, _Msg["ModelConfigResponse"](), ignore_unknown_fields=True
        )

    @rpc(protected=True)
    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        # An empty name asks for every model, as in Triton.
        name = request.name or None
        stats = model_info.model_statistics(self.plane, name, _version(request.version))
        return json_format.ParseDict(
            stats, _Msg["ModelStatisticsResponse"](), ignore_unknown_fields=True
        )

    # -------------------------------------------------------------- repository

    @rpc(protected=True)
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        resp = _Msg["RepositoryIndexResponse"]()
        for m in self.plane.repository_index(ready_only=request.ready):
            resp.models.add(name=m["name"], version=m["version"], state=m["state"],
                            reason=m["reason"])  # fmt: skip
        return resp

    @rpc(protected=True)
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        refused = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
        if refused:  # as POST /v2/repository/models/{m}/load answers
            raise Unprocessable(
                f"load parameter {shown(refused[0])} is not supported: mcdrop reads a model "
                "from its folder in the repository (change the folder, then load)"
            )
        await self.plane.load_model(request.model_name)
        return _Msg["RepositoryModelLoadResponse"]()

    @rpc(protected=True)
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self.plane.unload_model(request.model_name)
        return _Msg["RepositoryModelUnloadResponse"]()
