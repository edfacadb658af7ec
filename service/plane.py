"""The data plane: protocol-neutral operations over the served models.

:class:`DataPlane` loads the repository's models (one :class:`~service.runtime.ModelRuntime`
each), finds the model a request names, answers health and readiness, and submits checked
requests. Every front end calls the same methods: the v1 and v2 routes today, the gRPC
servicer next. It never sees a body: the codecs turn bodies into
:class:`~service.runtime.InferRequest` and :class:`~service.runtime.Answer` back into bodies.

Everything here runs on the event loop except :meth:`DataPlane.load` (a worker thread at
startup) and the engine calls (the batcher threads).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mcdrop
from mcdrop.repository import load_repository
from service.errors import ModelNotReady, NotFound
from service.metrics import ServiceMetrics
from service.runtime import Answer, InferRequest, ModelRuntime
from service.settings import Settings

__all__ = ["DataPlane"]

log = logging.getLogger("mcdrop.service")


class DataPlane:
    """Every model of the repository folder, loaded, warmed up and batched.

    Parameters
    ----------
    settings : Settings
    metrics : ServiceMetrics
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ModelRuntime] = {}
        self.failures: dict[str, str] = {}
        self.loaded = False

    @property
    def ready(self) -> bool:
        """True once loading finished with at least one model serving."""
        return self.loaded and any(rt.ready for rt in self.models.values())

    def load(self) -> None:
        """Load and warm up every model (blocking: run it in a thread); start batchers."""
        root = Path(self.settings.models_dir)
        try:
            repo = load_repository(root)
        except mcdrop.McdropError as exc:
            self.failures[str(root)] = str(exc)
            log.error("model repository %s: %s", root, exc)
            self.loaded = True
            return
        self.failures.update(repo.failures)
        for name, loaded in repo.models.items():
            rt = ModelRuntime(loaded, self.settings, self.metrics)
            try:
                rt.warm_up()
            except Exception as exc:  # a model's code may raise anything
                self.failures[loaded.path.name] = f"warm-up failed: {type(exc).__name__}: {exc}"
                self.metrics.model_ready.labels(name, loaded.manifest.version).set(0)
                continue
            self.models[name] = rt
        for folder, reason in self.failures.items():
            log.error("model folder %s not served: %s", folder, reason)
        for rt in self.models.values():
            rt.start()
            log.info("model %s %s ready (%s)", rt.name, rt.manifest.version, rt.manifest.task)
        self.loaded = True

    def stop(self, timeout: float) -> None:
        """Stop every batcher after its queued requests finish (blocking)."""
        for rt in self.models.values():
            rt.stop(timeout)

    def get(self, name: str, version: str | None = None) -> ModelRuntime:
        """The runtime of model ``name`` (404 if unknown, 503 if it failed to load)."""
        rt = self.models.get(name)
        if rt is None:
            if name in self.failures:
                raise ModelNotReady(f"model '{name}' failed to load: {self.failures[name]}")
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"no model named '{name}' (served models: {known})")
        if version is not None and version != rt.manifest.version:
            raise NotFound(
                f"model '{name}' has no version '{version}' (served: {rt.manifest.version})"
            )
        return rt

    # -------------------------------------------------------------- operations

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``{"name", "ready": true}`` for a serving model; 503 / 404 otherwise."""
        rt = self.get(name, version)
        if not rt.ready:
            raise ModelNotReady(f"model '{name}' is not ready; retry shortly")
        return {"name": rt.name, "ready": True}

    def health(self) -> dict[str, Any]:
        """The readiness report (see :class:`mcdrop.schemas.ReadyResponse`)."""
        return {
            "status": "ready" if self.ready else "not ready",
            "models": sorted(n for n, rt in self.models.items() if rt.ready),
            "failures": dict(self.failures),
        }

    def served(self) -> list[ModelRuntime]:
        """The served models, sorted by name."""
        return [self.models[n] for n in sorted(self.models)]

    def refuse_if_busy(self, name: str) -> None:
        """503 (QueueFull) at once when model ``name`` has a full queue; nothing otherwise
        (unknown names are reported after the body is read, as before)."""
        rt = self.models.get(name)
        if rt is not None and rt.batcher is not None:
            rt.batcher.refuse_if_full()

    async def infer(self, model: ModelRuntime, req: InferRequest) -> Answer:
        """Submit a checked request to ``model``'s batcher and wait for the answer."""
        return await model.submit(req)
