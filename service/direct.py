"""Direct dispatch of the prediction routes: the innermost of the service's middleware.

A prediction request is the one route where the framework's per-request work shows: on a
digits request at concurrency 32 the event loop spent more time in routing (every route's
pattern tried in order), FastAPI's parameter and dependency solving and the exception
middleware than in mcdrop's own parsing, validation and answer. This layer matches
``POST`` requests against the prediction routes' own compiled patterns and awaits their
endpoint functions directly; every other request goes on to the app unchanged.

Nothing about the routes changes: the endpoints are the FastAPI route functions (they take
only path parameters and the request, and check the API key themselves), their OpenAPI
description stays the app's, errors become responses through the same
:func:`~service.errors.error_response` the app's exception handlers use, and the outer
middleware (body limit, CORS, access log and metrics, which reads ``scope["route"]``) sees
the same scope.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response

__all__ = ["DirectRoutes"]

Endpoint = Callable[..., Awaitable[Response]]


def _route_path(scope: Scope) -> str:
    """The path the app's router matches (``root_path`` removed, as Starlette does)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path != root and path[len(root)] == "/":
        return path[len(root) :]
    return path


class DirectRoutes:
    """Send ``POST`` requests for the given endpoints straight to them.

    Parameters
    ----------
    app : ASGI app
        Everything else goes here.
    routes : sequence of APIRoute
        The app's routes whose endpoints take only ``request`` and string path
        parameters (matched by each route's own ``path_regex``).
    """

    def __init__(self, app: ASGIApp, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self._table: list[tuple[re.Pattern[str], APIRoute, Endpoint]] = [
            (r.path_regex, r, r.endpoint) for r in routes if "POST" in (r.methods or ())
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = _route_path(scope)
            for regex, route, endpoint in self._table:
                m = regex.match(path)
                if m is None:
                    continue
                params: dict[str, Any] = m.groupdict()
                scope["route"] = route
                scope["endpoint"] = endpoint
                scope["path_params"] = params
                try:
                    response = await endpoint(request=Request(scope, receive, send), **params)
                except Exception as exc:  # the app's handlers do exactly this
                    response = error_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
