"""The gRPC status of every error, through the servicer's one decorator, without a server:
a stand-in plane raises each error where the real one would, and a stand-in context
records the status the call aborts with."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mcdrop.errors import InvalidInputError, ManifestError, ModelOutputError
from service.errors import (
    INTERNAL_ERROR_MESSAGE,
    BadRequest,
    ModelNotReady,
    NotFound,
    QueueFull,
    RequestTimeout,
    Unprocessable,
)
from service.grpc.schema import message_class
from service.grpc.servicer import Servicer
from service.metrics import ServiceMetrics
from service.settings import Settings

REQUEST = message_class("ModelInferRequest")(model_name="m").SerializeToString()


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


class Context:
    """What the servicer uses of a call: metadata, the deadline, trailing metadata; abort
    raises."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        raise Aborted(code, message)


class Plane:
    """A plane whose first step raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.metrics = ServiceMetrics()

    def refuse_if_busy(self, name: str) -> None:
        raise self.exc


def _abort(exc: BaseException, key: str | None = None, metadata: Any = ()) -> Aborted:
    servicer = Servicer(Plane(exc), Settings(api_key=key))  # type: ignore[arg-type]
    with pytest.raises(Aborted) as info:
        asyncio.run(servicer.ModelInfer(REQUEST, Context(metadata)))
    # the failed call is counted once, under the status it got
    labels = {"method": "ModelInfer", "code": info.value.code.name}
    registry = servicer.plane.metrics.registry
    assert registry.get_sample_value("mcdrop_grpc_requests_total", labels) == 1
    return info.value


@pytest.mark.parametrize(
    "exc,code",
    [
        (BadRequest("b"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unprocessable("u"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidInputError("i"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelOutputError("o"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("n"), grpc.StatusCode.NOT_FOUND),
        (QueueFull("q"), grpc.StatusCode.UNAVAILABLE),
        (ModelNotReady("r"), grpc.StatusCode.UNAVAILABLE),
        (RequestTimeout("t"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ManifestError("a misconfigured model"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_error_statuses(exc: Exception, code: grpc.StatusCode) -> None:
    got = _abort(exc)
    assert got.code == code and got.message and "Traceback" not in got.message


def test_unexpected_errors_are_internal_with_a_generic_message() -> None:
    got = _abort(RuntimeError("secret internal detail 0xdeadbeef"))
    assert got.code == grpc.StatusCode.INTERNAL and got.message == INTERNAL_ERROR_MESSAGE


def test_the_key_is_checked_before_anything_else() -> None:
    busy = QueueFull("q")
    assert _abort(busy, key="k").code == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer nope"),)
    assert _abort(busy, key="k", metadata=wrong).code == grpc.StatusCode.UNAUTHENTICATED
    right = (("authorization", "bearer k"),)  # the scheme is case-insensitive, as on HTTP
    assert _abort(busy, key="k", metadata=right).code == grpc.StatusCode.UNAVAILABLE


def test_a_streamed_request_the_client_abandons_counts_as_cancelled() -> None:
    """A stream whose client goes away while a request is still being answered: that
    request is withdrawn and counted CANCELLED, not OK."""
    servicer = Servicer(Plane(QueueFull("unused")), Settings())  # type: ignore[arg-type]
    started = asyncio.Event()

    async def never_answers(request: Any, context: Any) -> Any:
        started.set()
        await asyncio.sleep(3600)

    servicer._infer = never_answers  # type: ignore[method-assign]

    async def run() -> None:
        async def requests() -> Any:
            yield REQUEST
            await asyncio.sleep(3600)  # the stream stays open

        stream = servicer.ModelStreamInfer(requests(), Context())
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.wait_for(started.wait(), 5)
        first.cancel()  # the client goes away
        with pytest.raises(asyncio.CancelledError):
            await first
        await stream.aclose()
        await asyncio.sleep(0.05)  # the withdrawn answer's task finishes its cancellation

    asyncio.run(run())
    registry = servicer.plane.metrics.registry
    get = registry.get_sample_value
    labels = {"method": "ModelStreamInfer"}
    assert get("mcdrop_grpc_requests_total", {**labels, "code": "CANCELLED"}) == 1
    assert get("mcdrop_grpc_requests_total", {**labels, "code": "OK"}) is None
