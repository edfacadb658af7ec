"""Planning: what one forward pass of a model looks like, found once per input signature.

A recording pass with 2 and then 3 identical rows lists every dropout call ("site") and,
from how each site's shape grows with the rows, the dimension holding the rows (and how
many entries per row are folded into it, as in attention's (batch * heads, ...)). The plan
also says whether the model splits into a deterministic prefix and a stochastic suffix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mcdrop import _sampling, _split
from mcdrop.errors import NoDropoutError

if TYPE_CHECKING:
    from mcdrop.predictor import MCPredictor

log = logging.getLogger("mcdrop")


@dataclass
class _Plan:
    layouts: dict[int, tuple[int, int]]
    sites: list[_sampling.SiteRecord]
    per_row_bytes: int
    split: _split.Split | None = None
    split_reason: str = ""
    hetero: bool = False


def record(model: nn.Module, x: torch.Tensor) -> list[_sampling.SiteRecord]:
    ctx = _sampling.SamplingContext(mode="record")
    with torch.inference_mode(), _sampling.sampling(ctx):
        model(x)
    return ctx.records


def plan_for(pred: MCPredictor, x: torch.Tensor) -> _Plan:
    """The cached plan for inputs shaped like ``x``: sites, row layouts, split."""
    sig = (tuple(x.shape[1:]), x.dtype)
    plan = pred._plans.get(sig)
    if plan is not None:
        return plan
    one = x[:1]
    r2 = record(pred.model, one.expand(2, *one.shape[1:]).contiguous())
    r3 = record(pred.model, one.expand(3, *one.shape[1:]).contiguous())
    if not r2:
        raise NoDropoutError(
            f"{type(pred.model).__name__} ran no dropout: MC sampling would report zero "
            "variance. Add dropout (e.g. mcdrop.MCDropout) to the model"
        )
    layouts: dict[int, tuple[int, int]] = {}
    per_row = x[0].numel() * x.element_size()
    if len(r2) == len(r3):
        for k, (a, b) in enumerate(zip(r2, r3)):
            if len(a.shape) != len(b.shape):
                continue
            diff = [d for d in range(len(a.shape)) if a.shape[d] != b.shape[d]]
            if len(diff) == 1 and a.shape[diff[0]] % 2 == 0:
                d = diff[0]
                m = a.shape[d] // 2
                if b.shape[d] == 3 * m:
                    layouts[k] = (d, m)
                    per_row = max(per_row, math.prod(a.shape) // 2 * 4)
    with torch.inference_mode():
        y = pred.model(one.expand(2, *one.shape[1:]).contiguous())
    hetero = not isinstance(y, torch.Tensor)
    plan = _Plan(layouts, r2, per_row_bytes=per_row * 8, hetero=hetero)
    if pred.split_mode == "auto":
        choose_split(pred, plan, x)
    pred._plans[sig] = plan
    return plan


def choose_split(pred: MCPredictor, plan: _Plan, x: torch.Tensor) -> None:
    """Adopt a prefix split if it reproduces replication on a few rows and samples."""
    from mcdrop.predictor import _Group, _split_output

    probe = x[: min(len(x), 3)]
    result: _split.Split | str
    if isinstance(pred.model, nn.Sequential):
        result = _split.sequential_split(pred.model, probe)
    else:
        result = _split.fx_split(pred.model)
    if isinstance(result, str):
        plan.split_reason = result
        log.info("mcdrop: replicating inputs for %s: %s", type(pred.model).__name__, result)
        return
    # Check the split against replication on a few rows and samples before trusting it.
    try:
        a = pred._forward_units(plan, _Group(probe, 12345, 3), 0, 3, None)
        plan.split = result
        b = pred._forward_units(plan, _Group(probe, 12345, 3), 0, 3, None)
    except Exception as exc:
        plan.split = None
        plan.split_reason = f"split forward failed ({type(exc).__name__}: {exc})"
        log.warning("mcdrop: not splitting %s: %s", type(pred.model).__name__, plan.split_reason)
        return
    ya, yb = _split_output(a)[0].float(), _split_output(b)[0].float()
    scale = float(torch.nan_to_num(ya, 0.0, 0.0, 0.0).abs().max()) + 1e-6
    same = ya.shape == yb.shape and torch.allclose(
        ya, yb, rtol=1e-4, atol=1e-5 * scale, equal_nan=True
    )
    if not same:
        plan.split = None
        plan.split_reason = "split output differs from replication"
        log.warning("mcdrop: not splitting %s: %s", type(pred.model).__name__, plan.split_reason)
    else:
        plan.split_reason = f"split ({result.strategy})"
