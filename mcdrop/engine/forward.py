"""One keyed forward pass over (group, sample range, active rows) segments.

Each sample is one unit (a sampled subnetwork) keyed by (seed, sample index); a segment
repeats its group's rows once per unit. With a prefix, the groups' cached frontier
values are repeated instead of the inputs. Shapes: U units, b rows of a segment, N rows of
the chunk (sum over segments of units * b), ``*O`` one row's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from mcdrop import _sampling
from mcdrop.engine.masks import unit_keys_many
from mcdrop.engine.plan import Group, Plan, holds_rows, row_slots

__all__ = ["ActiveSegment", "forward_segments", "ensure_frontiers"]

ActiveSegment = tuple[Group, int, int, torch.Tensor | None]
"""(group, first sample, end sample, active rows or None for all)."""

Autocast = Callable[[], AbstractContextManager[Any]]


def ensure_frontiers(plan: Plan, groups: Sequence[Group], autocast: Autocast) -> None:
    """Run the deterministic prefix once for every group that has no cached output,
    all of them in one pass (they share the plan, so their inputs concatenate)."""
    assert plan.prefix is not None
    need = list({id(g): g for g in groups if g.frontier is None}.values())
    if not need:
        return
    with torch.inference_mode(), autocast():
        if len(need) == 1:
            need[0].frontier = tuple(plan.prefix.prefix(need[0].x))
            return
        sizes = [len(g.x) for g in need]
        outs = tuple(plan.prefix.prefix(torch.cat([g.x for g in need])))
    total = sum(sizes)
    per_value = [v.split(sizes) if holds_rows(v, total) else [v] * len(need) for v in outs]
    for i, g in enumerate(need):
        g.frontier = tuple(parts[i] for parts in per_value)


def _values(plan: Plan, g: Group, rows: torch.Tensor | None) -> list[Any]:
    """The forward values of a group (its inputs, or its frontier), at ``rows``."""
    vals = g.frontier if plan.prefix is not None else (g.x,)
    assert vals is not None
    b = len(g.x)
    return [(v if rows is None else v[rows]) if holds_rows(v, b) else v for v in vals]


def _arguments(
    per_seg: list[list[Any]], units: list[int], widths: list[int], device: torch.device
) -> list[Any]:
    """The suffix's arguments: each segment's rows repeated once per unit, laid end to end."""
    args: list[Any] = []
    if len(per_seg) == 1:
        u = units[0]
        for v in per_seg[0]:
            if holds_rows(v, widths[0]):
                # reshape copies: the suffix may write in place without touching the cache
                v = v.unsqueeze(0).expand(u, *v.shape).reshape(u * v.shape[0], *v.shape[1:])
            args.append(v)
        return args
    # Row i of segment k's block is row (i mod b_k) of that segment's inputs; one
    # index_select per input builds every block (and copies, protecting the cache).
    index = row_slots(units, widths).to(device)
    for j, first in enumerate(per_seg[0]):
        if holds_rows(first, widths[0]):
            args.append(torch.cat([vals[j] for vals in per_seg]).index_select(0, index))
        else:
            args.append(first)
    return args


def _row_unit(units: list[int], widths: list[int], device: torch.device) -> torch.Tensor:
    """The unit of each row of a chunk: segment k holds ``units[k]`` units of
    ``widths[k]`` rows each, unit-major. Shape (N,), int64."""
    per_unit = torch.repeat_interleave(
        torch.tensor(widths, device=device), torch.tensor(units, device=device)
    )  # (U,) rows of each unit
    return torch.repeat_interleave(torch.arange(sum(units), device=device), per_unit)


def _context(
    plan: Plan, keys: torch.Tensor, units: list[int], widths: list[int], device: torch.device
) -> _sampling.SamplingContext:
    if len(set(widths)) == 1:
        # Every unit holds the same number of rows: masks broadcast, no gather.
        return _sampling.SamplingContext(
            mode="keyed", keys=keys, rows_per_unit=widths[0], layouts=plan.layouts
        )
    row_unit = _row_unit(units, widths, device)  # (N,)
    return _sampling.SamplingContext(
        mode="keyed", keys=keys, row_unit=row_unit, layouts=plan.layouts
    )


def forward_segments(
    model: nn.Module,
    plan: Plan,
    segs: Sequence[ActiveSegment],
    device: torch.device,
    autocast: Autocast,
) -> tuple[Any, int]:
    """One forward pass over ``segs``: (output, N rows run).

    Output rows are segment-major, then unit-major: segment i contributes
    (s1 - s0) * b_i rows, unit by unit, each unit holding the segment's b_i rows.
    """
    keys = unit_keys_many([(g.seed, s0, s1) for g, s0, s1, _ in segs], device)  # (U,)
    if plan.prefix is not None:
        ensure_frontiers(plan, [g for g, *_ in segs], autocast)
    units = [s1 - s0 for _, s0, s1, _ in segs]
    widths = [len(g.x) if rows is None else len(rows) for g, _, _, rows in segs]
    args = _arguments([_values(plan, g, rows) for g, _, _, rows in segs], units, widths, device)
    if plan.compiled is not None:
        # The compiled graph takes the keys and each row's unit as inputs: no context.
        with torch.inference_mode(), autocast():
            out = plan.compiled(*args, keys, _row_unit(units, widths, device))
        return out, sum(u * b for u, b in zip(units, widths))
    ctx = _context(plan, keys, units, widths, device)
    fn = plan.prefix.suffix if plan.prefix is not None else model
    with torch.inference_mode(), _sampling.sampling(ctx), autocast():
        out = fn(*args)
    return out, sum(u * b for u, b in zip(units, widths))
