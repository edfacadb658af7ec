"""Open Inference Protocol (KServe v2 / Triton) over JSON. Handlers are thin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

import mcdrop
from mcdrop.schemas import (
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
)
from service import codec_v2, codec_v2_binary, model_info, tracing
from service.body import parse_json
from service.deps import admit, get_plane, json_body, require_api_key, unless_disconnected
from service.plane import DataPlane
from service.responses import FastJSONResponse

__all__ = ["router", "EXTENSIONS"]

# The protocol extensions the server metadata advertises (Triton's names).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` references inlined.

    Inside the OpenAPI document a ``#/$defs/...`` reference would point at the document's
    root, where nothing is, so generated clients and fuzzers could not read the body.
    """
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return dict(walk(schema))


# The route reads the body itself (JSON-only checks, depth limit), so FastAPI cannot infer
# it: document it here.
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_defs(InferenceRequest.model_json_schema())}
        },
    }
}

router = APIRouter(tags=["v2"])
# Full prefix here (not nested under "/v2") so the route template seen by the access log
# and the metrics is the whole path.
models = APIRouter(prefix="/v2/models/{name}", dependencies=[Depends(require_api_key)])
# The infer routes check the API key themselves: no dependency to solve on the hot path.
hot = APIRouter(prefix="/v2/models/{name}")
# Statistics of every model: registered before ``models`` so that "stats" is not a name.
every = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    """Server name, version and protocol extensions."""
    return {"name": "mcdrop", "version": mcdrop.__version__, "extensions": list(EXTENSIONS)}


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """The process is up."""
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    """200 when the models are loaded and warmed up, 503 otherwise."""
    return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)


@models.get("", response_model=ModelMetadata, responses=_ERRORS)
@models.get("/versions/{version}", response_model=ModelMetadata, responses=_ERRORS)
async def model_metadata(
    name: str, version: str | None = None, plane: DataPlane = Depends(get_plane)
) -> dict[str, Any]:
    """Inputs, outputs and versions of a model."""
    return codec_v2.metadata(plane.get(name, version))


@models.get("/ready", responses=_ERRORS)
@models.get("/versions/{version}/ready", responses=_ERRORS)
async def model_ready(
    name: str, version: str | None = None, plane: DataPlane = Depends(get_plane)
) -> dict[str, Any]:
    """200 when the model serves; 503 if it failed to load; 404 if unknown."""
    return plane.model_ready(name, version)


@models.get("/config", responses=_ERRORS)
@models.get("/versions/{version}/config", responses=_ERRORS)
async def model_config(
    name: str, version: str | None = None, plane: DataPlane = Depends(get_plane)
) -> dict[str, Any]:
    """Triton's model configuration (``max_batch_size``, ``input``/``output`` with
    ``data_type`` and ``dims``, ...), as perf_analyzer and Triton's tools read it."""
    return model_info.model_config(plane, name, version)


@every.get("/v2/models/stats", responses=_ERRORS)
async def all_statistics(plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    """The statistics extension for every served model."""
    return model_info.model_statistics(plane, None, None)


@models.get("/stats", responses=_ERRORS)
@models.get("/versions/{version}/stats", responses=_ERRORS)
async def model_statistics(
    name: str, version: str | None = None, plane: DataPlane = Depends(get_plane)
) -> dict[str, Any]:
    """The statistics extension (Triton's fields): counts and cumulative nanoseconds of
    successes, failures, queue wait and compute; rows answered and engine calls."""
    return model_info.model_statistics(plane, name, version)


async def _v2_body(request: Request) -> Any:
    """The parsed body: JSON, or a binary-extension body with its tensors inlined."""
    declared = request.headers.get(codec_v2_binary.HEADER)
    if declared is None:
        return await json_body(request, v2=True)
    head, tail = codec_v2_binary.split_body(await request.body(), declared)
    obj = parse_json(head, request.app.state.settings.max_json_depth)
    return codec_v2_binary.inline_binary_inputs(obj, tail)


@hot.post("/infer", response_model=InferenceResponse, responses=_ERRORS, openapi_extra=_INFER_BODY)
@hot.post(
    "/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """Inference; MC options in ``parameters``: ``mc_samples``, ``seed``.

    JSON, or Triton's binary tensor extension (``Inference-Header-Content-Length``).
    """
    plane = await admit(request, name)
    body = await _v2_body(request)
    model = plane.get(name, version)
    every, names = codec_v2_binary.binary_outputs(body)
    # The body's id names the request in the logs when no header did (errors included).
    tracing.adopt_body_id(body.get("id") if isinstance(body, dict) else None)
    req = codec_v2.decode(model, body)
    answer = await unless_disconnected(request, plane.infer(model, req.infer))
    out = codec_v2.encode(model, answer, req)
    if not every and not names:
        return FastJSONResponse(out)
    content, head = codec_v2_binary.encode(out, every, names)
    return Response(
        content,
        media_type="application/octet-stream",
        headers={codec_v2_binary.HEADER: str(head)},
    )


router.include_router(every)
router.include_router(models)
router.include_router(hot)
