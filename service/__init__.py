"""mcdrop's HTTP service: FastAPI + uvicorn, dynamic batching, v1 and Open Inference (v2).

Layers (each imports only the ones above it)::

    settings.py   Settings from MCDROP_* environment variables
    responses.py  the JSON response class (orjson, numpy arrays as they are)
    errors.py     service exceptions and the one mapping to HTTP status codes
    metrics.py    hand-written Prometheus metrics
    batching.py   per-model queue + worker thread calling MCPredictor.predict_many
    runtime.py    data plane: JSON <-> arrays, validation, models, batchers
    middleware.py body-size limit, access log and request metrics
    deps.py       request helpers shared by the routes (auth, JSON body)
    routes_v1.py  health, metrics, /v1 JSON API
    routes_v2.py  Open Inference Protocol (/v2)
    direct.py     prediction routes dispatched straight to their handlers (ASGI)
    app.py        create_app(settings)
    server.py     main(argv) behind ``mcdrop serve``
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["create_app", "Settings"]
