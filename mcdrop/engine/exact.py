"""Exact MC dropout ensemble: all 2^n subnetworks with their probabilities.

For a model with n dropout units per row (n small), the predictive distribution is a finite
mixture: subnetwork k drops the units set in the bits of k and has probability
prod p^dropped (1 - p)^kept. Enumerating it gives ground truth for the sampled engine.
Shapes: T = 2^n members, b rows, ``*O`` one row's output.
"""

from __future__ import annotations

import math

import torch

from mcdrop import _sampling
from mcdrop.engine.plan import Plan, unpack_output
from mcdrop.engine.runner import Runner, mc_flags
from mcdrop.errors import InvalidInputError
from mcdrop.prediction import Prediction

__all__ = ["MAX_EXACT_UNITS", "predict_exact"]

MAX_EXACT_UNITS = 16


def _units_per_site(plan: Plan) -> list[int]:
    """Dropout units per row at each site (0 where p = 0)."""
    sizes = []
    for rec in plan.sites:
        per = math.prod(rec.shape) // 2 if rec.kind in ("element", "alpha") else rec.shape[1]
        sizes.append(per if rec.p > 0 else 0)
    return sizes


def _log_weights(plan: Plan, sizes: list[int], bits: torch.Tensor) -> torch.Tensor:
    """log P(member) for every member, from the dropped bits (T, n)."""
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    logw = torch.zeros(bits.shape[0], dtype=torch.float64, device=bits.device)  # (T,)
    for k, rec in enumerate(plan.sites):
        if sizes[k] == 0 or rec.p >= 1:
            continue
        dropped = bits[:, offsets[k] : offsets[k] + sizes[k]].sum(dim=1).double()
        logw += dropped * math.log(rec.p) + (sizes[k] - dropped) * math.log1p(-rec.p)
    return logw


def predict_exact(runner: Runner, x: torch.Tensor) -> Prediction:
    """Exact predictive summaries of ``runner.model`` on ``x`` (B, ...); see module doc."""
    dev = runner.device
    with mc_flags(runner.model):
        plan = runner.plan(x)
        sizes = _units_per_site(plan)
        n = sum(sizes)
        if n > MAX_EXACT_UNITS:
            raise InvalidInputError(
                f"exact=True enumerates 2^n subnetworks; this model has n = {n} dropout units "
                f"per row (at most {MAX_EXACT_UNITS} allowed)"
            )
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        total = 2**n
        ids = torch.arange(total, device=dev)
        bits = ((ids.unsqueeze(1) >> torch.arange(max(n, 1), device=dev)) & 1).bool()  # dropped

        def mask_fn(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
            o = offsets[site]
            return ~bits[keys][:, o : o + numel]

        w = torch.exp(_log_weights(plan, sizes, bits))  # (T,)
        b = len(x)
        ctx = _sampling.SamplingContext(
            mode="keyed", keys=ids, rows_per_unit=b, layouts=plan.layouts, mask_fn=mask_fn
        )
        xs = x.unsqueeze(0).expand(total, *x.shape).reshape(total * b, *x.shape[1:])
        with torch.inference_mode(), _sampling.sampling(ctx), runner.autocast():
            y = runner.model(xs)
    main, logvar = unpack_output(y)
    stats = runner.summary.exact(main.double().reshape(total, b, *main.shape[1:]), logvar, w)
    var = stats["variance"]
    # No Monte Carlo error: all 2^n members are counted.
    return Prediction(
        task=runner.summary.task.value,
        std=var.sqrt(),
        stderr=torch.zeros_like(var),
        samples=total,
        samples_per_row=torch.full((b,), total),
        seed=0,
        exact=True,
        **stats,  # type: ignore[arg-type]
    )
