"""Helpers the routes share: the data plane, API-key check, body, client disconnects."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request

from service.body import read_json
from service.body_limits import body_bounds, read_body
from service.errors import ClientDisconnected, Unauthorized
from service.plane import DataPlane

__all__ = ["get_plane", "require_api_key", "admit", "json_body", "unless_disconnected"]

T = TypeVar("T")


# The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in
# its thread pool, two thread hops per request for a dictionary lookup.


async def get_plane(request: Request) -> DataPlane:
    """The app's :class:`~service.plane.DataPlane`."""
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


async def admit(request: Request, name: str) -> DataPlane:
    """The first steps of a prediction route: API key, then a full queue refused at once
    (before the body is read: a refusal must cost little), then an unknown or failed model
    (404, 503), then the body, read within the model's own limits (413 past its size,
    422 for too many arrays, objects or keys: :func:`~service.body.read_body`), where
    the route's ``request.body()`` finds it. Returns the data plane."""
    await require_api_key(request)
    plane: DataPlane = request.app.state.plane
    plane.refuse_if_busy(name)
    model = plane.get(name)
    m = model.manifest
    s = request.app.state.settings
    bounds = body_bounds(name, m.input_shape, m.max_batch_rows, model.loaded.takes_text,
                         s.max_body_bytes, s.max_json_depth)  # fmt: skip
    await read_body(request, bounds)
    return plane


async def json_body(request: Request, *, v2: bool = False) -> Any:
    """The parsed JSON body, within the app's depth limit (see :func:`~service.body.read_json`)."""
    return await read_json(request, request.app.state.settings.max_json_depth, v2=v2)


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
