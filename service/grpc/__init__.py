"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``).

- :mod:`service.grpc.schema`: the protobuf messages, in a private descriptor pool;
- :mod:`service.grpc.codec`: protobuf tensors to the data plane's requests and back;
- :mod:`service.grpc.servicer`: the methods, auth and the error-to-status decorator;
- :mod:`service.grpc.server`: grpcio's asyncio server, started by the app's lifespan.

:func:`serving` imports grpcio only when a port is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.plane import DataPlane
    from service.settings import Settings

__all__ = ["serving"]


@asynccontextmanager
async def serving(settings: Settings, plane: DataPlane) -> AsyncIterator[int | None]:
    """Serve gRPC while inside (nothing when ``settings.grpc_port`` is None); yields the
    bound port. See :func:`service.grpc.server.serving`."""
    if settings.grpc_port is None:
        yield None
        return
    from service.grpc import server

    async with server.serving(settings, plane) as port:
        yield port
