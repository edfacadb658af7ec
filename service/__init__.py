"""mcdrop's HTTP service: FastAPI + uvicorn, dynamic batching, v1 and Open Inference (v2).

Layers (each imports only the ones above it; no cycles)::

    settings.py    Settings from MCDROP_* (pydantic-settings; Ray's options nested)
    responses.py   the JSON response class (orjson, numpy arrays as they are)
    errors.py      service exceptions and the one mapping to HTTP status codes
    metrics.py     prometheus_client metrics, one registry per app (multiprocess workers)
    body.py        reading and parsing bodies, depth limit, wording of schema errors
    batching.py    per-model queue + worker thread calling MCPredictor.predict_many
    runtime.py     one model: lifecycle, batcher, shared array checks, answers
    codec_v1.py    v1 JSON <-> InferRequest / Answer
    codec_v2.py    Open Inference Protocol JSON <-> InferRequest / Answer
    plane.py       the protocol-neutral data plane: models, health, find, submit
    middleware.py  body-size limit, access log and request metrics
    deps.py        request helpers shared by the routes (auth, body, disconnects)
    routes_v1.py   health, metrics, /v1 JSON API (thin)
    routes_v2.py   Open Inference Protocol (/v2) (thin)
    direct.py      prediction routes dispatched straight to their handlers (ASGI)
    app.py         create_app(settings, *, plane=None, metrics=None)
    launch.py      logging, the models folder, uvicorn (shared by both engines)
    server.py      main(argv) behind ``mcdrop serve``
    ray_app.py     the Ray Serve deployment (``--engine ray``, optional)

A new protocol is a codec plus a front end over the same plane (see docs/architecture.md).
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["create_app", "Settings"]
