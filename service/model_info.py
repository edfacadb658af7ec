"""Model configuration and statistics, as Triton's clients and tools read them.

Two protocol-neutral functions that the HTTP routes (``GET /v2/models/{m}/config`` and
``/stats``) and the gRPC servicer (``ModelConfig``, ``ModelStatistics``) both call:

- :func:`model_config`: Triton's model configuration (``model_config.proto``) in its JSON
  form, with what perf_analyzer and Triton's model tooling read: ``name``, ``platform``,
  ``backend``, ``max_batch_size``, ``input`` and ``output`` (``data_type`` as ``TYPE_FP32``
  and ``dims`` without the batch dimension), ``dynamic_batching``, ``instance_group``,
  ``version_policy``, ``model_transaction_policy``; mcdrop's own options in ``parameters``
  (Triton's ``{"key": {"string_value": ...}}`` map).
- :func:`model_statistics`: the statistics extension's ``{"model_stats": [...]}``, read from
  each served version's :class:`~service.model_stats.ModelStats` (its batcher feeds it);
  under ``--workers`` N from the series every worker shares, so that they add up.

The mapping is written from the specification (the Open Inference Protocol's statistics
extension and Triton's ``model_config.proto``): v2 datatype ``FP32`` is ``TYPE_FP32`` and so
on; an output of one number per row (the v2 shape ``[-1]``) is ``dims: [1]`` with
``reshape: {"shape": []}``, Triton's way of writing a per-row scalar of a batching model.
"""

from __future__ import annotations

from typing import Any

from mcdrop.manifest import version_key
from service import codec_v2
from service.metrics import ServiceMetrics
from service.model_stats import ModelStats, shared_snapshot
from service.plane import DataPlane
from service.runtime import ModelRuntime

__all__ = ["model_config", "model_statistics", "BACKEND", "triton_type"]

BACKEND = "mcdrop"


def triton_type(datatype: str) -> str:
    """The model-config ``data_type`` of a v2 tensor datatype (``FP32`` -> ``TYPE_FP32``;
    ``BYTES`` is ``TYPE_STRING``, as in Triton)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor(meta: dict[str, Any]) -> dict[str, Any]:
    """One v2 metadata tensor (shape with the batch dimension -1) -> a config tensor."""
    dims = [int(d) for d in meta["shape"][1:]]
    out: dict[str, Any] = {"name": meta["name"], "data_type": triton_type(meta["datatype"])}
    if dims:
        out["dims"] = dims
    else:  # one value per row: Triton cannot write dims [], it reshapes [1] to a scalar
        out["dims"] = [1]
        out["reshape"] = {"shape": []}
    return out


def _instance_kind(device: str) -> str:
    """Triton's instance kind for the service's ``device`` setting."""
    if device == "auto":
        import torch  # already loaded by the runtime; only asked here

        return "KIND_GPU" if torch.cuda.is_available() else "KIND_CPU"
    return "KIND_CPU" if device == "cpu" else "KIND_GPU"


def model_config(plane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    """Triton's model configuration of a served model (JSON form of ``ModelConfig``).

    Parameters
    ----------
    plane : DataPlane
    name : str
        The model.
    version : str or None
        A served version; None: the default one.

    Returns
    -------
    dict
        ``name``, ``platform``, ``backend``, ``max_batch_size``, ``input``, ``output``, ...

    Raises
    ------
    NotFound, ModelNotReady
        As :meth:`DataPlane.get`: an unknown model or version; a model that failed to load.
    """
    rt = plane.get(name, version)
    meta = codec_v2.metadata(rt)
    m, s = rt.manifest, plane.settings
    config: dict[str, Any] = {
        "name": m.name,
        "platform": codec_v2.PLATFORM,
        "backend": BACKEND,
        "version_policy": {"all": {}},
        "max_batch_size": m.max_batch_rows,
        "input": [_tensor(t) for t in meta["inputs"]],
        "output": [_tensor(t) for t in meta["outputs"]],
        "instance_group": [{"name": f"{m.name}_0", "kind": _instance_kind(s.device), "count": 1}],
        "model_transaction_policy": {"decoupled": False},
        "parameters": {
            key: {"string_value": str(value)}
            for key, value in {
                "task": m.task,
                "version": m.version,
                "default_samples": m.default_samples,
                "max_samples": m.max_samples,
                "engine_batch_rows": rt.batch_rows,
            }.items()
        },
    }
    if s.batching_enabled and rt.batch_rows > 1:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(s.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": s.max_queue_size},
        }
    return config


def _versions(plane: DataPlane, name: str) -> list[ModelRuntime]:
    """Every served version of ``name``, oldest first."""
    served = plane.versions.get(name, {})
    return [served[v] for v in sorted(served, key=version_key)]


def _runtimes(plane: DataPlane, name: str | None, version: str | None) -> list[ModelRuntime]:
    """The served runtimes a statistics request names (every version of every model,
    every version of one, or one); 404 / 503 for a model or version that is not served."""
    if name is None:
        return [rt for n in sorted(plane.versions) for rt in _versions(plane, n)]
    if version is not None:
        return [plane.get(name, version)]
    plane.get(name, None)  # 404 / 503 with the reason when it is not served
    return _versions(plane, name)


def _snapshot(rt: ModelRuntime, shared: dict[tuple[str, str, str], float]) -> dict[str, Any]:
    if shared:  # --workers: every worker's counts, as /metrics adds them up
        return shared_snapshot(rt.name, rt.manifest.version, shared)
    if rt.batcher is None:  # loaded but not started: nothing has run
        return ModelStats(rt.name, rt.manifest.version).snapshot()
    return rt.batcher.stats.snapshot()


def model_statistics(plane: DataPlane, name: str | None, version: str | None) -> dict[str, Any]:
    """The statistics extension's answer: ``{"model_stats": [...]}``.

    Parameters
    ----------
    plane : DataPlane
    name : str or None
        One model, or None for every served model.
    version : str or None
        One version of ``name``, or None for all its served versions.

    Returns
    -------
    dict
        ``model_stats``: per model version ``name``, ``version``, ``last_inference`` (ms
        since the epoch, 0 before the first), ``inference_count`` (rows answered),
        ``execution_count`` (engine calls), ``inference_stats`` (``success``, ``fail``,
        ``queue``, ``compute_input``, ``compute_infer``, ``compute_output``, ``cache_hit``,
        ``cache_miss``, each ``{"count", "ns"}``) and ``batch_stats`` (per rows per call).

    Raises
    ------
    NotFound, ModelNotReady
        As :meth:`DataPlane.get`.
    """
    runtimes = _runtimes(plane, name, version)
    shared = ServiceMetrics.shared_values()
    return {"model_stats": [_snapshot(rt, shared) for rt in runtimes]}
