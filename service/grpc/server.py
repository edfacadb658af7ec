"""The gRPC server: grpcio's asyncio server in the app's process and event loop.

:func:`serving` is entered by the app's lifespan after the models load and left before
the batchers stop, so gRPC calls go through the same data plane, batchers and limits as
HTTP ones, and a SIGTERM drains both: ``server.stop(grace)`` refuses new calls and lets
the ones in flight finish within ``MCDROP_DRAIN_SECONDS`` (counted from the signal, as
the HTTP drain is).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from service.connections import stop_budget
from service.grpc.schema import METHODS, SERVICE, STREAM_METHODS, message_class
from service.grpc.servicer import Servicer
from service.plane import DataPlane
from service.settings import Settings

__all__ = ["serving", "handler"]

log = logging.getLogger("mcdrop.service")


def handler(servicer: Servicer) -> grpc.GenericRpcHandler:
    """The service's method table (no generated stubs: each method is a servicer method;
    it parses its request bytes itself, see :func:`~service.grpc.servicer.rpc`)."""
    methods = {}
    for name, _, resp in METHODS:
        methods[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            response_serializer=message_class(resp).SerializeToString,
        )
    for name, _, resp in STREAM_METHODS:
        methods[name] = grpc.stream_stream_rpc_method_handler(
            getattr(servicer, name),
            response_serializer=message_class(resp).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """grpcio channel options: the HTTP body limit as the largest message received.

    The port is opened with SO_REUSEPORT, grpcio's default, which ``--workers N`` needs
    (each worker binds it; the kernel spreads the connections). The price: a second
    server of the same user on the same port shares it instead of failing to start; a
    port another user or a program without SO_REUSEPORT holds still fails loudly."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1),
    ]


@asynccontextmanager
async def serving(settings: Settings, plane: DataPlane) -> AsyncIterator[int | None]:
    """Serve gRPC on ``settings.host``:``settings.grpc_port`` while inside; yields the bound
    port (None when ``grpc_port`` is None).

    Raises
    ------
    RuntimeError
        The port cannot be bound (the message names it).
    """
    if settings.grpc_port is None:
        yield None
        return
    server = grpc.aio.server(options=server_options(settings))
    server.add_generic_rpc_handlers((handler(Servicer(plane, settings)),))
    address = _address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot listen on {address}: {exc} (is it in use?)") from None
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s", _address(settings.host, port))
    try:
        yield port
    finally:
        # New calls are refused now; those in flight get what uvicorn's HTTP drain left of
        # MCDROP_DRAIN_SECONDS (all of it when no HTTP request was in flight).
        await server.stop(stop_budget(settings.drain_seconds))
