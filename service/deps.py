"""Helpers the routes share: the data plane, API-key check, JSON body reading."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from service.errors import BadRequest, ClientDisconnected, Unauthorized, UnsupportedMediaType
from service.runtime import DataPlane, parse_json

__all__ = ["get_plane", "require_api_key", "read_json", "unless_disconnected"]

T = TypeVar("T")

_THREAD_PARSE_BYTES = 1 << 20  # bigger bodies are parsed off the event loop


# The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in
# its thread pool, two thread hops per request for a dictionary lookup.


async def get_plane(request: Request) -> DataPlane:
    """The app's :class:`~service.runtime.DataPlane`."""
    plane: DataPlane = request.app.state.plane
    return plane


async def require_api_key(request: Request) -> None:
    """When MCDROP_API_KEY is set, require ``Authorization: Bearer <key>`` (401 otherwise)."""
    key: str | None = request.app.state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8"), key.encode("utf-8")
    ):
        raise Unauthorized("invalid API key")


def _check_content_type(request: Request) -> None:
    """A declared Content-Type must be JSON; a missing one is read as JSON."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        shown = media[:60]
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got '{shown}' "
            "(with curl: -H 'Content-Type: application/json')"
        )


async def read_json(request: Request, *, v2: bool = False) -> Any:
    """Read and parse the JSON body (size limits are enforced by the middleware).

    v2 refuses the binary tensor extension with a clear 400 and accepts a missing
    Content-Type (tritonclient sends none in JSON mode).
    """
    if v2 and "inference-header-content-length" in request.headers:
        raise BadRequest(
            "only JSON is supported: this server does not implement the binary tensor "
            "extension; send inputs and outputs with binary_data=False"
        )
    _check_content_type(request)
    body = await request.body()
    depth: int = request.app.state.settings.max_json_depth
    if len(body) > _THREAD_PARSE_BYTES:
        return await anyio.to_thread.run_sync(parse_json, body, depth)
    return parse_json(body, depth)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (a prediction), withdrawing it if the client disconnects first.

    Call it after the body has been read: the next ASGI message is then the disconnect.
    ``work`` runs in the calling task; one watcher task waits for the disconnect and
    cancels the caller, which takes a request that has not started out of its model's
    queue (the batcher drops it), so a client that gave up costs no compute; one already
    running finishes and its answer is dropped. (Running ``work`` in a task of its own and
    waiting for either cost a second task and ``asyncio.wait`` per request.)

    Raises
    ------
    ClientDisconnected
        The client went away first (499 in the access log; nobody reads the answer).
    """
    caller = asyncio.current_task()
    assert caller is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server cannot tell us: just wait for the answer
            return
        gone = True
        caller.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        # Ours alone (no shutdown cancelling the request too): the client left. Python
        # 3.10 does not count cancellations (no Task.uncancel): there, ours is assumed.
        uncancel = getattr(caller, "uncancel", None)
        if gone and (uncancel is None or uncancel() == 0):
            raise ClientDisconnected("the client closed the connection before the answer") from None
        raise
    finally:
        watcher.cancel()
