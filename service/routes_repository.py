"""Triton's model repository extension over HTTP: index, load, unload. Handlers are thin.

- ``POST /v2/repository/index``: every model folder as ``{"name", "version", "state",
  "reason"}``; an empty body or ``{"ready": true}`` (READY ones only).
- ``POST /v2/repository/models/{name}/load``: load (or reload) the model from its folders.
  An empty body or ``{"parameters": {}}``; Triton's ``config`` and ``file:`` overrides are
  refused (422): a model is always read from its folder.
- ``POST /v2/repository/models/{name}/unload``: stop serving it (``{"parameters":
  {"unload_dependents": bool}}`` is accepted; a model has no dependents here).

Load and unload need ``MCDROP_MODEL_CONTROL=explicit`` (400 naming the setting otherwise);
the data plane does the work (:meth:`~service.plane.DataPlane.load_model`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from mcdrop.schemas import ErrorResponse
from service.body import json_type, parse_json
from service.deps import get_plane, require_api_key
from service.errors import Unprocessable, shown
from service.plane import DataPlane

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422)
}

router = APIRouter(
    prefix="/v2/repository", tags=["v2 repository"], dependencies=[Depends(require_api_key)]
)


async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The optional JSON object body (empty: ``{}``), with only the ``allowed`` keys."""
    raw = await request.body()
    if not raw.strip():
        return {}
    obj = parse_json(raw, request.app.state.settings.max_json_depth)
    if not isinstance(obj, dict):
        raise Unprocessable(f"the body must be a JSON object, got {json_type(obj)}")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unprocessable(
            f"unknown field {shown(extra[0])}; allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return obj


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise Unprocessable(f"parameters must be an object, got {json_type(params)}")
    return params


@router.post("/index", responses=_ERRORS)
async def index(request: Request, plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    """Every model folder with its name, version, state and the reason."""
    body = await _body(request, {"ready"})
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise Unprocessable(f"ready must be true or false, got {json_type(ready)}")
    return JSONResponse(plane.repository_index(ready_only=ready))


@router.post("/models/{name}/load", responses=_ERRORS)
async def load(name: str, request: Request, plane: DataPlane = Depends(get_plane)) -> JSONResponse:
    """Load or reload a model from its folders (new manifest, new weights); the old
    version answers until the new one is warmed up."""
    params = _parameters(await _body(request, {"parameters"}))
    refused = sorted(k for k in params if k == "config" or k.startswith("file:"))
    if refused:
        raise Unprocessable(
            f"load parameter {shown(refused[0])} is not supported: mcdrop reads a model "
            "from its folder in the repository (change the folder, then load)"
        )
    await plane.load_model(name)
    return JSONResponse({})


@router.post("/models/{name}/unload", responses=_ERRORS)
async def unload(
    name: str, request: Request, plane: DataPlane = Depends(get_plane)
) -> JSONResponse:
    """Stop serving a model: queued requests finish, new ones get 404."""
    params = _parameters(await _body(request, {"parameters"}))
    dependents = params.get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise Unprocessable(f"unload_dependents must be true or false, got {json_type(dependents)}")
    await plane.unload_model(name)
    return JSONResponse({})
