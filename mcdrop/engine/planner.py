"""The planner: what one forward pass of a model looks like, found once per input signature.

A recording pass with 2 and then 3 identical rows lists every dropout call ("site") and,
from how each site's shape grows with the rows, the dimension holding the rows (and how
many entries per row are folded into it, as in attention's (batch * heads, ...)). The plan
also says whether the model has a deterministic prefix to run once per call; a prefix is
adopted only if it reproduces plain input replication on a few rows and samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mcdrop import _sampling
from mcdrop.engine.compiled import CompiledSuffix, rewrite
from mcdrop.engine.config import SplitMode
from mcdrop.engine.plan import Group, Plan, unpack_output
from mcdrop.engine.prefix import Prefix, fx_prefix, sequential_prefix
from mcdrop.errors import NoDropoutError

__all__ = ["Planner", "record"]

log = logging.getLogger("mcdrop")

Probe = Callable[[Plan, Group], Any]
"""Runs samples [0, 3) of a group under a plan: the output the prefix check compares."""


def record(model: nn.Module, x: torch.Tensor) -> list[_sampling.SiteRecord]:
    """The dropout sites one forward pass of ``model`` on ``x`` runs, in call order."""
    ctx = _sampling.SamplingContext(mode="record")
    with torch.inference_mode(), _sampling.sampling(ctx):
        model(x)
    return ctx.records


def _layouts(
    r2: list[_sampling.SiteRecord], r3: list[_sampling.SiteRecord], per_row: int
) -> tuple[dict[int, tuple[int, int]], int]:
    """Row layouts of the sites from passes with 2 and 3 rows, and bytes per row."""
    layouts: dict[int, tuple[int, int]] = {}
    if len(r2) != len(r3):
        return layouts, per_row
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
    return layouts, per_row


class Planner:
    """Plans of one model on one device, cached per input signature (row shape, dtype).

    ``probe`` runs a few keyed samples under a plan; the planner uses it to check a prefix
    against replication before adopting it.
    """

    def __init__(
        self, model: nn.Module, split: SplitMode, probe: Probe, *, compile: bool = False
    ) -> None:
        self.model = model
        self.split = split
        self.compile = compile
        self.probe = probe
        self.plans: dict[tuple[Any, ...], Plan] = {}

    def cached(self, x: torch.Tensor) -> Plan | None:
        """The plan for inputs shaped like ``x`` (B, ...) if one was made, else None (no
        MC flags needed: nothing runs)."""
        return self.plans.get((tuple(x.shape[1:]), x.dtype))

    def plan_for(self, x: torch.Tensor) -> Plan:
        """The cached plan for inputs shaped like ``x`` (B, ...); MC flags must be set."""
        sig = (tuple(x.shape[1:]), x.dtype)
        plan = self.plans.get(sig)
        if plan is not None:
            return plan
        one = x[:1]
        two = one.expand(2, *one.shape[1:]).contiguous()
        r2 = record(self.model, two)
        r3 = record(self.model, one.expand(3, *one.shape[1:]).contiguous())
        if not r2:
            raise NoDropoutError(
                f"{type(self.model).__name__} ran no dropout: MC sampling would report zero "
                "variance. Add dropout (e.g. mcdrop.MCDropout) to the model"
            )
        layouts, per_row = _layouts(r2, r3, x[0].numel() * x.element_size())
        with torch.inference_mode():
            y = self.model(two)
        plan = Plan(layouts, r2, per_row_bytes=per_row * 8, hetero=not isinstance(y, torch.Tensor))
        if self.split is SplitMode.AUTO:
            self._choose_prefix(plan, x)
        if self.compile:
            self._choose_compiled(plan)
        self.plans[sig] = plan
        return plan

    def _choose_compiled(self, plan: Plan) -> None:
        """compile=True: the stochastic part (the suffix, or the whole model) as one
        compiled graph with explicit keys, where :mod:`mcdrop.engine.compiled` can build
        it; otherwise the passes stay eager and the plan says why."""
        name = type(self.model).__name__
        target = plan.prefix.suffix if plan.prefix is not None else self.model
        moved = sorted(site for site, (dim, _) in plan.layouts.items() if dim != 0)
        graph = (
            f"dropout sites {moved} hold the rows outside dimension 0" if moved
            else rewrite(target) if isinstance(target, nn.Module)
            else "the suffix is not a module"
        )  # fmt: skip
        if isinstance(graph, str):
            plan.compile_reason = graph
            log.warning("mcdrop: compile=True runs %s eagerly: %s", name, graph)
            return
        plan.compiled = CompiledSuffix(graph)
        log.info("mcdrop: compiling the stochastic part of %s (%s)", name, plan.prefix_reason)

    def _choose_prefix(self, plan: Plan, x: torch.Tensor) -> None:
        """Adopt a prefix if it reproduces replication on a few rows and samples."""
        probe = x[: min(len(x), 3)]
        name = type(self.model).__name__
        found: Prefix | str
        if isinstance(self.model, nn.Sequential):
            found = sequential_prefix(self.model, probe)
        else:
            found = fx_prefix(self.model)
        if isinstance(found, str):
            plan.prefix_reason = found
            log.info("mcdrop: replicating inputs for %s: %s", name, found)
            return
        try:
            a = self.probe(plan, Group(probe, 12345, 3))
            plan.prefix = found
            b = self.probe(plan, Group(probe, 12345, 3))
        except Exception as exc:  # any failure of the cut model means: do not cut
            plan.prefix = None
            plan.prefix_reason = f"split forward failed ({type(exc).__name__}: {exc})"
            log.warning("mcdrop: not splitting %s: %s", name, plan.prefix_reason)
            return
        ya, yb = unpack_output(a)[0].float(), unpack_output(b)[0].float()
        scale = float(torch.nan_to_num(ya, 0.0, 0.0, 0.0).abs().max()) + 1e-6
        same = ya.shape == yb.shape and torch.allclose(
            ya, yb, rtol=1e-4, atol=1e-5 * scale, equal_nan=True
        )
        if not same:
            plan.prefix = None
            plan.prefix_reason = "split output differs from replication"
            log.warning("mcdrop: not splitting %s: %s", name, plan.prefix_reason)
        else:
            plan.prefix_reason = f"split ({found.strategy})"
