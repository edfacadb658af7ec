"""The stochastic suffix as one compiled graph, with the unit keys as explicit inputs.

The eager engine routes every dropout call through ``torch.nn.functional`` wrappers that
read the masks' unit keys from a thread-local sampling context (:mod:`mcdrop._sampling`).
``torch.compile`` cannot see through that: dynamo would trace the wrapper as torch's own
dropout on fake tensors. So the compiled path does not use the context at all. It traces
the module with ``torch.fx``, replaces each dropout node by :func:`explicit_dropout`, whose
keys and row-to-unit map are ordinary graph inputs, and hands that graph to
``torch.compile``. The mask hash (:func:`mcdrop.engine.masks._keep_mask_torch`) is plain int32
tensor arithmetic, so inductor fuses it with the multiply and the surrounding pointwise
ops instead of materialising masks.

The masks are the eager engine's, bit for bit: dropout call number ``site`` of a forward
pass gets ``keep_mask(keys, site, numel, p)`` for the same (seed, sample) unit keys. Only
the float32 rounding of the fused kernels may differ.

What it covers: element-wise dropout (``nn.Dropout`` and subclasses such as
``MCDropout``, ``F.dropout``, ``torch.dropout``) acting on tensors whose first dimension
holds the rows, in models ``torch.fx`` can trace. Anything else (channel or alpha dropout,
attention dropout, modules that gate dropout on their own ``training`` flag, untraceable
control flow) makes :func:`rewrite` return the reason, and the engine runs eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mcdrop import _sampling
from mcdrop.engine.masks import _keep_mask_torch

__all__ = ["CompiledSuffix", "explicit_dropout", "rewrite"]

log = logging.getLogger("mcdrop")


def explicit_dropout(
    x: torch.Tensor, keys: torch.Tensor, row_unit: torch.Tensor, site: int, p: float
) -> torch.Tensor:
    """Keyed inverted dropout of ``x`` (N*m, ...) whose rows belong to units ``row_unit``.

    ``keys`` (U,) are the unit keys, ``row_unit`` (N,) the unit of each of the N rows; a
    row's elements are ``x.reshape(N, -1)[row]``, as in the eager keyed path.
    """
    if p == 0.0:
        return x
    n = row_unit.shape[0]
    xr = x.reshape(n, -1)  # (N, F)
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = _keep_mask_torch(keys, site, xr.shape[1], p)  # (U, F)
    mask = keep.to(x.dtype).index_select(0, row_unit) * (1.0 / (1.0 - p))  # (N, F)
    return (xr * mask).reshape(x.shape)


def _dropout_p(node: fx.Node, modules: dict[str, nn.Module]) -> float | str | None:
    """The p of an element-wise dropout node; a reason string for other stochastic nodes;
    None for deterministic ones."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.Dropout):
            return float(m.p)
        if isinstance(m, (nn.modules.dropout._DropoutNd, *_sampling._FLAG_TRAINING)):
            return f"{type(m).__name__} at '{node.target}' (only element-wise dropout compiles)"
        return None
    if node.op == "call_method" and node.target == "dropout":
        return "Tensor.dropout method calls"
    if node.op != "call_function":
        return None
    target = node.target
    name = getattr(target, "__name__", "")
    wrapped = getattr(target, "__mcdrop_wrapper__", False)
    if target in (F.dropout, torch.dropout, _sampling.ORIGINALS.get("dropout")) or (
        wrapped and name == "dropout"
    ):
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        if not isinstance(p, (int, float)):
            return f"a dropout whose p is computed at run time ({node.name})"
        return float(p)
    if wrapped or target in _sampling.ORIGINALS.values():
        return f"{name} (only element-wise dropout compiles)"
    if target is torch.nn.functional.scaled_dot_product_attention:
        return "attention with dropout_p (scaled_dot_product_attention)"
    return None


def rewrite(module: nn.Module) -> fx.GraphModule | str:
    """``module`` as an fx graph taking ``(*inputs, keys, row_unit)``, each dropout replaced
    by :func:`explicit_dropout` with its site number; or the reason it cannot be."""
    _sampling._install_patches()
    try:
        gm = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception as exc:  # data-dependent control flow and more
        return f"torch.fx could not trace the model ({type(exc).__name__}: {exc})"
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    for n in placeholders:
        env[n] = graph.node_copy(n, lambda a: env[a])
    keys, row_unit = graph.placeholder("mcdrop_keys"), graph.placeholder("mcdrop_row_unit")
    site = 0
    for n in nodes:
        if n.op == "placeholder":
            continue
        p = _dropout_p(n, modules)
        if isinstance(p, str):
            return p
        if p is None:
            env[n] = graph.node_copy(n, lambda a: env[a])
            continue
        x = env[n.args[0] if n.args else n.kwargs["input"]]  # type: ignore[index]
        env[n] = graph.call_function(explicit_dropout, (x, keys, row_unit, site, p))
        site += 1
    if site == 0:
        return "no dropout node in the traced graph"
    new = fx.GraphModule(gm, graph)
    new.graph.eliminate_dead_code()
    new.recompile()
    return new


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        (tuple(a.shape), a.dtype, a.device.type) if isinstance(a, torch.Tensor) else type(a)
        for a in args
    )


class CompiledSuffix:
    """A rewritten graph under ``torch.compile``: ``suffix(*inputs, keys, row_unit)``.

    torch.compile's default shape policy: the first signature compiles with static shapes;
    when a dimension changes (another chunk or batch size), dynamo compiles once more with
    that dimension dynamic, and later sizes reuse it. The first call of every signature
    is timed and logged (it includes any compilation), so the service pays for them at
    warm-up; ``compilations`` maps each signature seen to those seconds.
    """

    def __init__(self, graph: fx.GraphModule, *, mode: str | None = None) -> None:
        self.graph = graph
        self._fn: Callable[..., Any] = torch.compile(graph, mode=mode)
        self.compilations: dict[tuple[Any, ...], float] = {}

    def __call__(self, *args: Any) -> Any:
        sig = _signature(args)
        if sig in self.compilations:
            return self._fn(*args)
        t0 = time.perf_counter()
        out = self._fn(*args)
        self.compilations[sig] = dt = time.perf_counter() - t0
        log.info("mcdrop: first compiled call for input shape %s: %.1f s", sig[0], dt)
        return out
