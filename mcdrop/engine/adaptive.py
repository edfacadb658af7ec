"""Adaptive sample counts (``samples="auto"``): draw in rounds until each row is precise.

Round one draws ``first`` samples for every row; each later round doubles the count for
the rows whose Monte Carlo standard error is still above ``rtol * |mean| + atol``, until
``cap``. Masks are keyed by (seed, sample), so a row's draws are the ones a fixed-S call
with its final count would make.
"""

from __future__ import annotations

import torch

from mcdrop.engine.plan import Group
from mcdrop.engine.runner import Runner, RunStats, mc_flags
from mcdrop.errors import InvalidInputError
from mcdrop.prediction import Prediction
from mcdrop.stats import mc_standard_error

__all__ = ["predict_adaptive"]


def predict_adaptive(
    runner: Runner,
    x: torch.Tensor,
    seed: int,
    keep: bool,
    rtol: float,
    atol: float,
    first: int,
    cap: int,
) -> Prediction:
    """A prediction of ``x`` (B, ...) with per-row sample counts; see the module doc."""
    if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
        raise InvalidInputError("rtol and atol must be >= 0 and not both 0")
    g = Group(x, seed, min(first, cap))
    with mc_flags(runner.model):
        plan = runner.plan(x)
        runner.stats = RunStats()
        runner.summary.new_acc(g, plan)
        per_row = torch.full((len(x),), 0, dtype=torch.int64)  # (B,)
        active = torch.arange(len(x), device=runner.device)
        done = 0
        target = min(first, cap)
        budget = runner.chunk_rows(plan)
        while True:
            rows = None if len(active) == len(x) else active
            s0 = done
            while s0 < target:
                s1 = min(target, s0 + max(1, budget // len(active)))
                y = runner.forward(plan, [(g, s0, s1, rows)])
                runner.fold(g, y, s1 - s0, rows, keep and rows is None)
                s0 = s1
            per_row[active.cpu()] = target
            done = target
            moments = runner.summary.moments(g.acc)
            assert moments.mean is not None and moments.count is not None
            se = mc_standard_error(moments.variance(), moments.count)
            ok = (se <= rtol * moments.mean.abs() + atol).reshape(len(x), -1).all(dim=1)  # (B,)
            active = torch.nonzero(~ok).flatten()
            if len(active) == 0 or done >= cap:
                break
            target = min(cap, done * 2)
            keep = False  # draws of later rounds cover only some rows
    g.samples = done
    pred = runner.summary.finish([g])[0]
    pred.samples_per_row = per_row
    if not keep:
        pred.draws = None
    return pred
