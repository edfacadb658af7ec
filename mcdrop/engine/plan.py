"""The shared nouns of the engine: a Plan (one forward pass of a model, found once per
input signature) and a Group (one request's rows, seed, samples and running statistics).

Shapes: S samples, B rows of a group, U units (sampled subnetworks) of a chunk, N rows of
one forward chunk, ``*O`` one row's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mcdrop import _sampling
from mcdrop.engine.compiled import CompiledSuffix
from mcdrop.engine.prefix import Prefix
from mcdrop.errors import ModelOutputError

__all__ = ["Plan", "Group", "Segment", "unpack_output", "holds_rows", "row_slots"]


@dataclass
class Plan:
    """What one forward pass of the model looks like for one input signature.

    ``layouts`` maps a dropout site to (row dimension, entries per row folded into it);
    ``prefix`` is the deterministic prefix when the model was cut, else None.
    """

    layouts: dict[int, tuple[int, int]]
    sites: list[_sampling.SiteRecord]
    per_row_bytes: int
    prefix: Prefix | None = None
    prefix_reason: str = ""
    hetero: bool = False  # the model returns (mean, log_variance)
    compiled: CompiledSuffix | None = None  # compile=True: the suffix as one compiled graph
    compile_reason: str = ""  # why the passes run eagerly under compile=True


@dataclass
class Group:
    """One request's rows and the running state of its samples."""

    x: torch.Tensor  # (B, ...)
    seed: int
    samples: int
    frontier: tuple[Any, ...] | None = None  # the prefix's output for x, cached per call
    acc: Any = None  # the task summary's accumulator
    hetero_acc: Any = None  # Moments of the predicted aleatoric variance, or None
    draws: list[torch.Tensor] = field(default_factory=list)  # (U, B, *O) pieces
    start: int = 0  # first sample index (a device's share of a sharded request)
    keep: bool = False  # keep the raw draws of this request


Segment = tuple[Group, int, int]
"""(group, first sample, end sample) of one forward chunk."""


def unpack_output(y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main output, log-variance or None) from what the model returned."""
    if isinstance(y, torch.Tensor):
        return y, None
    if isinstance(y, (tuple, list)) and len(y) == 2 and all(isinstance(t, torch.Tensor) for t in y):
        if y[0].shape != y[1].shape:
            raise ModelOutputError(
                f"a model returning two tensors must return (mean, log_variance) of equal "
                f"shape; got {tuple(y[0].shape)} and {tuple(y[1].shape)}"
            )
        return y[0], y[1]
    raise ModelOutputError(
        f"the model must return a tensor or a (mean, log_variance) pair, got {type(y).__name__}"
    )


def holds_rows(v: Any, n: int) -> bool:
    """Whether a forward value is a tensor with ``n`` rows along dim 0 (a per-row input or
    activation, as opposed to a constant passed alongside)."""
    return isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n


def row_slots(units: Sequence[int], widths: Sequence[int]) -> torch.Tensor:
    """For each row of a chunk of segments (segment k: ``units[k]`` units of ``widths[k]``
    rows, unit-major), its slot among the segments' rows laid end to end: row i of
    segment k's block is slot ``sum(widths[:k]) + i % widths[k]``. Shape (N,), int64."""
    n_seg = torch.tensor([u * b for u, b in zip(units, widths)], dtype=torch.int64)
    b_seg = torch.tensor(widths, dtype=torch.int64)
    seg_of = torch.repeat_interleave(torch.arange(len(widths)), n_seg)  # (N,)
    pos = torch.arange(int(n_seg.sum())) - (torch.cumsum(n_seg, 0) - n_seg)[seg_of]
    return (torch.cumsum(b_seg, 0) - b_seg)[seg_of] + pos % b_seg[seg_of]
