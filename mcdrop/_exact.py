"""Exact MC dropout ensemble: all 2^n subnetworks with their probabilities.

For a model with n dropout units per row (n small), the predictive distribution is a finite
mixture: subnetwork k drops the units set in the bits of k and has probability
prod p^dropped (1 - p)^kept. Enumerating it gives ground truth for the sampled engine.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from mcdrop import _sampling, layers
from mcdrop.errors import InvalidInputError
from mcdrop.prediction import Prediction
from mcdrop.stats import entropy

if TYPE_CHECKING:
    from mcdrop.predictor import MCPredictor

MAX_EXACT_UNITS = 16


def predict_exact(pred: MCPredictor, x: torch.Tensor) -> Prediction:
    """Exact predictive summaries of ``pred.model`` on ``x`` (B, ...); see module doc."""
    from mcdrop.predictor import _split_output

    saved = layers.set_mc_flags(pred.model)
    try:
        plan = pred._plan(x)
        sizes = []
        for k, rec in enumerate(plan.sites):
            d, m = plan.layouts.get(k, (0, rec.shape[0] // 2))
            per = math.prod(rec.shape) // 2 if rec.kind in ("element", "alpha") else rec.shape[1]
            sizes.append(per if rec.p > 0 else 0)
        n = sum(sizes)
        if n > MAX_EXACT_UNITS:
            raise InvalidInputError(
                f"exact=True enumerates 2^n subnetworks; this model has n = {n} dropout units "
                f"per row (at most {MAX_EXACT_UNITS} allowed)"
            )
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        total = 2**n
        ids = torch.arange(total, device=pred.device)
        bits = (
            (ids.unsqueeze(1) >> torch.arange(max(n, 1), device=pred.device)) & 1
        ).bool()  # (2^n, n) True = dropped

        def mask_fn(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
            o = offsets[site]
            return ~bits[keys][:, o : o + numel]

        logw = torch.zeros(total, dtype=torch.float64, device=pred.device)
        for k, rec in enumerate(plan.sites):
            if sizes[k] == 0:
                continue
            dropped = bits[:, offsets[k] : offsets[k] + sizes[k]].sum(dim=1).double()
            logw += (
                dropped * math.log(rec.p) + (sizes[k] - dropped) * math.log1p(-rec.p)
                if rec.p < 1
                else 0
            )
        w = torch.exp(logw)  # (2^n,)
        b = len(x)
        ctx = _sampling.SamplingContext(
            mode="keyed", keys=ids, rows_per_unit=b, layouts=plan.layouts, mask_fn=mask_fn
        )
        xs = x.unsqueeze(0).expand(total, *x.shape).reshape(total * b, *x.shape[1:])
        with torch.inference_mode(), _sampling.sampling(ctx), pred._autocast():
            y = pred.model(xs)
    finally:
        layers.restore_flags(saved)
    main, logvar = _split_output(y)
    main = main.double().reshape(total, b, *main.shape[1:])
    wv = w.view(-1, *([1] * (main.dim() - 1)))
    if pred.task == "classification":
        p = torch.softmax(main, dim=-1)
        mean = (wv * p).sum(0)
        var = (wv * (p - mean) ** 2).sum(0)
        ee = (w.view(-1, 1) * entropy(p)).sum(0)
        pe = entropy(mean)
        votes = torch.zeros_like(mean)
        votes.scatter_add_(-1, p.argmax(-1).T, w.view(-1, 1).expand(total, b).T.contiguous())
        return _exact_prediction(
            pred.task, mean, var, total, b,
            probs=mean,
            predictive_entropy=pe,
            expected_entropy=ee,
            mutual_information=(pe - ee).clamp_min(0),
            variation_ratio=1 - votes.max(-1).values,
        )  # fmt: skip
    mean = (wv * main).sum(0)
    epi = (wv * (main - mean) ** 2).sum(0)
    alea = torch.zeros_like(epi)
    if logvar is not None:
        alea = alea + (wv * torch.exp(logvar.double().reshape(total, b, *logvar.shape[1:]))).sum(0)
    if pred.tau is not None:
        alea = alea + 1.0 / pred.tau
    var = epi + alea
    return _exact_prediction(
        pred.task, mean, var, total, b, epistemic_variance=epi, aleatoric_variance=alea
    )


def _exact_prediction(
    task: str, mean: torch.Tensor, var: torch.Tensor, total: int, b: int, **extra: torch.Tensor
) -> Prediction:
    """A Prediction of the exact mixture: no Monte Carlo error, all 2^n members counted."""
    return Prediction(
        task=task,
        mean=mean,
        variance=var,
        std=var.sqrt(),
        stderr=torch.zeros_like(var),
        samples=total,
        samples_per_row=torch.full((b,), total),
        seed=0,
        exact=True,
        **extra,  # type: ignore[arg-type]
    )
