"""The app factory: ``create_app(settings, *, plane=None, metrics=None)``.

The app is the data plane behind thin routes, wrapped in the service's middleware, with
``/docs`` and ``/redoc`` served from assets that ship with the package (fastapi-offline),
so the API pages work without internet access.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

import mcdrop
from mcdrop.errors import McdropError
from service import control, otel, page, routes_repository, routes_v1, routes_v2
from service.body import describe_error
from service.connections import stop_budget
from service.direct import DirectRoutes
from service.errors import ServiceError, Unprocessable, error_response, from_http_status
from service.grpc import serving as grpc_serving
from service.metrics import ServiceMetrics
from service.middleware import AccessLogMiddleware, BodyLimitMiddleware
from service.plane import DataPlane
from service.settings import Settings

__all__ = ["create_app", "DOCS_STATIC_URL", "BEARER_SCHEME"]

log = logging.getLogger("mcdrop.service")

DOCS_STATIC_URL = "/static-offline-docs"  # Swagger UI and ReDoc assets (fastapi-offline)
BEARER_SCHEME = "bearer"
_PROTECTED = ("/v1/models", "/v2/models", "/v2/repository")  # the routes require_api_key guards
# FastAPI 0.165 and later instrument every request once a process has an OpenTelemetry
# provider: a second server span beside the service's own (service.otel), in every trace,
# and a look for providers on every request (~20 us of a digits prediction's event-loop
# time, none set). The service records its spans and metrics itself: theirs stay off.
_FRAMEWORK_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings | None = None,
    *,
    plane: DataPlane | None = None,
    metrics: ServiceMetrics | None = None,
    background_load: bool = True,
) -> FastAPI:
    """Build the FastAPI app.

    Models load (and warm up) in a background task the lifespan startup starts, each in a
    loader thread with a timeout (:mod:`service.control`); the server reports ready only
    after. On shutdown each model's batcher finishes its queue (bounded by
    ``settings.drain_seconds``).

    Parameters
    ----------
    settings : Settings, optional
        Default: :meth:`Settings.from_env`.
    plane : DataPlane, optional
        The data plane to serve (another front end may share it); default: a new one
        over ``settings`` and ``metrics``, loaded in the lifespan startup.
    metrics : ServiceMetrics, optional
        Default: the plane's, or a new registry of this app's own.
    background_load : bool
        True (the default): the lifespan startup returns at once and the models load in
        a background task (the port binds, ``/health/ready`` is 503 until they are
        loaded). False: the startup waits for them (Ray Serve, whose replica counts as
        started when the startup returns).
    """
    settings = settings if settings is not None else Settings.from_env()
    if metrics is None:
        metrics = plane.metrics if plane is not None else ServiceMetrics()
    plane = plane if plane is not None else DataPlane(settings, metrics)
    app = FastAPIOffline(
        title="mcdrop",
        version=mcdrop.__version__,
        description="Monte Carlo dropout uncertainty over HTTP (v1 JSON API and the "
        "Open Inference Protocol v2).",
        lifespan=_lifespan(settings, plane, metrics, background_load),
        static_url=DOCS_STATIC_URL,
        **_FRAMEWORK_TELEMETRY,
    )
    app.state.settings = settings
    app.state.plane = plane
    app.state.metrics = metrics
    if settings.opentelemetry:  # optional spans (service.otel); off by default
        otel.enable()
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_repository.router)
    if settings.page:  # the browser page (GET /, /static, the card); MCDROP_PAGE=false drops it
        app.include_router(page.router)
    _install_error_handlers(app)
    if settings.api_key is not None:
        _document_bearer_auth(app)
    # Added innermost first: the access log sees every response, the 413s included.
    # The prediction routes (their routers are included without a prefix, so their
    # paths are the served ones; tests/service check them against the OpenAPI paths).
    direct = [r for r in (*routes_v1.hot.routes, *routes_v2.hot.routes) if isinstance(r, APIRoute)]
    app.add_middleware(DirectRoutes, routes=direct)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "traceparent"],
            expose_headers=["X-Request-ID", "traceparent"],  # readable by browser clients
        )
    # Outermost; it also answers the requests the shutdown cuts with a JSON 503 (and logs it).
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    return app


def _lifespan(
    settings: Settings, plane: DataPlane, metrics: ServiceMetrics, background_load: bool = True
) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background: the port binds and /health/live answers at
        # once, /health/ready says 503 (naming the folders) until they are loaded.
        loading = None
        if not plane.loaded:
            control.claim_parallel_pool()  # before the loader threads (it says why)
            plane.prepare()
            # (load_all freezes what is alive once loaded: see DataPlane.load_all)
            loading = asyncio.create_task(plane.load_all())
            if not background_load:
                await loading
        previous = sys.getswitchinterval()
        sys.setswitchinterval(settings.switch_interval_ms / 1000.0)
        try:
            # gRPC (when settings.grpc_port is set) in this loop, over the same plane; its
            # exit drains the calls in flight before the batchers stop.
            async with grpc_serving(settings, plane) as grpc_port:
                app.state.grpc_port = grpc_port  # the bound port (port 0: a free one)
                yield
        finally:
            await plane.close()
            if loading is not None and not loading.done():
                loading.cancel()  # a hung model's thread is abandoned, never waited for
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            # What is left of the drain, plus a chunk's time: the process exits in time.
            await asyncio.to_thread(plane.stop, stop_budget(settings.drain_seconds))
            sys.setswitchinterval(previous)
            metrics.process_exited()

    return lifespan


def _document_bearer_auth(app: FastAPI) -> None:
    """Put the API key in the OpenAPI schema: a bearer scheme (the Authorize button of
    /docs) required by every model route."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The server's MCDROP_API_KEY.",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(_PROTECTED):
                for op in operations.values():
                    op["security"] = [{BEARER_SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"error": ...}``; no traceback or input value is echoed."""

    async def on_service(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        # Method and path cut: an error message never grows with the request.
        method, path = request.method[:32], request.url.path[:200]
        if exc.status_code == 404:
            msg = f"no route {method} {path}; see /docs for the API"
        elif exc.status_code == 405:
            msg = f"method {method} is not allowed on {path}"
        else:
            msg = str(exc.detail)
        return error_response(from_http_status(exc.status_code, msg))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors: list[Any] = list(exc.errors())
        first = describe_error(errors[0], None) if errors else "invalid request"
        return error_response(Unprocessable(first))

    app.add_exception_handler(ServiceError, on_service)
    app.add_exception_handler(McdropError, on_service)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_service)
