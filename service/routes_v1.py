"""Health, metrics and the v1 JSON API. Handlers are thin: the data plane does the work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from mcdrop.schemas import (
    ErrorResponse,
    LiveResponse,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
)
from service import codec_v1
from service.deps import admit, get_plane, json_body, require_api_key, unless_disconnected
from service.metrics import CONTENT_TYPE
from service.plane import DataPlane
from service.responses import FastJSONResponse

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}

router = APIRouter()
models = APIRouter(prefix="/v1/models", dependencies=[Depends(require_api_key)], tags=["v1"])
# The predict route checks the API key itself: no dependency to solve on the hot path.
hot = APIRouter(prefix="/v1/models", tags=["v1"])


@router.get("/health/live", response_model=LiveResponse, tags=["health"])
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "live"}


@router.get("/health/ready", response_model=ReadyResponse, tags=["health"],
            responses={503: {"model": ReadyResponse}})  # fmt: skip
async def ready(plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    """200 once every loadable model is loaded and warmed up; 503 before, or if none is."""
    return JSONResponse(plane.health(), status_code=200 if plane.ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, tags=["health"])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@models.get("", response_model=ModelList, responses=_ERRORS)
async def list_models(plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    """Served models, and the folders that failed to load with the reason."""
    return codec_v1.model_list(plane.served(), plane.failures)


@models.get("/{name}", response_model=ModelInfo, responses=_ERRORS)
async def model_info(name: str, plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    """One model's manifest and state."""
    return codec_v1.model_info(plane.get(name))


@hot.post("/{name}/predict", response_model=PredictResponse, responses=_ERRORS,
          openapi_extra=_PREDICT_BODY)  # fmt: skip
async def predict(name: str, request: Request) -> FastJSONResponse:
    """MC dropout prediction: mean, variance, std, stderr (+ class statistics)."""
    plane = await admit(request, name)
    body = await json_body(request)
    model = plane.get(name)
    req = codec_v1.decode(model, body)
    answer = await unless_disconnected(request, plane.infer(model, req))
    return FastJSONResponse(codec_v1.encode(model, answer))


router.include_router(models)
router.include_router(hot)
