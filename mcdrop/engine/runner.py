"""The runner: a call's (group, sample range) segments packed into forward chunks.

It owns one model on one device: plans its inputs, packs samples into chunks of at most
``max_rows`` rows (S x B), halves a chunk that runs out of memory, and folds each chunk's
outputs into the groups' accumulators through the task summary. Shapes: U units of a
chunk, b rows of a segment, N rows of a chunk, ``*O`` one row's output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mcdrop import layers
from mcdrop.engine.config import EngineConfig
from mcdrop.engine.forward import ActiveSegment, forward_segments
from mcdrop.engine.plan import Group, Plan, Segment, row_slots, unpack_output
from mcdrop.engine.planner import Planner
from mcdrop.engine.summaries import TaskSummary
from mcdrop.errors import ModelOutputError

__all__ = ["Runner", "RunStats", "RunWork", "CPU_BUDGET_BYTES", "mc_flags"]

log = logging.getLogger("mcdrop")

CPU_BUDGET_BYTES = 64 * 2**20
"""Bytes of activations per chunk on CPU (tests lower it through MCDROP_TEST_CHUNK_BYTES)."""

CUDA_FREE_SHARE = 0.4
"""Share of the free CUDA memory one chunk may use."""


@dataclass
class RunStats:
    """What the last call ran: the rows of each forward chunk (planning passes excluded)."""

    chunk_rows: list[int] = field(default_factory=list)


@dataclass
class RunWork:
    """A run in progress (:meth:`Runner.begin`): the (plan, groups) parts still to run and
    the (group, first sample, end sample) ranges left of the current part."""

    parts: list[tuple[Plan, list[Group]]]
    keep: bool
    stats: RunStats
    part: int = 0
    pending: list[Segment] | None = None
    budget: int = 1

    @property
    def done(self) -> bool:
        """True once every part has run."""
        return self.part >= len(self.parts)


def _next_chunk(pending: list[Segment], budget: int) -> list[Segment]:
    """Take the next chunk's segments (at most ``budget`` rows) off the front of
    ``pending``, whole samples of a group at a time (a group wider than the budget runs one
    sample per chunk)."""
    segs: list[Segment] = []
    room = budget
    while pending and room > 0:
        g, s0, s1 = pending[0]
        b = len(g.x)
        take = min(s1 - s0, max(1, room // b)) if (room >= b or not segs) else 0
        if take == 0:
            break
        segs.append((g, s0, s0 + take))
        room -= take * b
        if s0 + take == s1:
            pending.pop(0)
        else:
            pending[0] = (g, s0 + take, s1)
    return segs


@contextmanager
def mc_flags(model: nn.Module) -> Iterator[None]:
    """Dropout in MC mode, everything else in eval mode; the modes restored on exit."""
    saved = layers.set_mc_flags(model)
    try:
        yield
    finally:
        layers.restore_flags(saved)


class Runner:
    """Chunked, keyed MC forward passes of one model on one device."""

    def __init__(
        self, model: nn.Module, device: torch.device, config: EngineConfig, summary: TaskSummary
    ) -> None:
        self.model = model
        self.device = device
        self.config = config
        self.summary = summary
        self.planner = Planner(model, config.split, self._probe, compile=config.compile)
        self.stats = RunStats()
        # Rows per chunk that fitted after an out-of-memory error: later calls start there.
        # Runner state, so the user's max_rows option is never rewritten.
        self.fitted_rows: int | None = None
        self._flags_held = False  # inside run(): MC flags entered once for the whole call

    # ------------------------------------------------------------------ planning

    def autocast(self) -> AbstractContextManager[Any]:
        return self.config.autocast(self.device)

    def plan(self, x: torch.Tensor) -> Plan:
        """The plan of inputs shaped like ``x``; call under :func:`mc_flags`."""
        return self.planner.plan_for(x)

    def chunk_rows(self, plan: Plan) -> int:
        """Rows (samples x batch) per forward chunk under ``plan``."""
        rows = self.config.max_rows
        if rows is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = int(free * CUDA_FREE_SHARE)
            else:
                budget = CPU_BUDGET_BYTES
            rows = max(1, budget // max(1, plan.per_row_bytes))
        return rows if self.fitted_rows is None else min(rows, self.fitted_rows)

    def _probe(self, plan: Plan, g: Group) -> Any:
        out, _ = forward_segments(self.model, plan, [(g, 0, 3, None)], self.device, self.autocast)
        return out

    # ------------------------------------------------------------------ forward passes

    def forward(self, plan: Plan, segs: Sequence[ActiveSegment]) -> Any:
        """One forward chunk over ``segs``, counted in :attr:`stats`."""
        out, rows = forward_segments(self.model, plan, segs, self.device, self.autocast)
        self.stats.chunk_rows.append(rows)
        return out

    @contextmanager
    def _mc(self) -> Iterator[None]:
        """:func:`mc_flags` on the model, or nothing when a caller up the stack already
        holds them (:meth:`run` holds them for its planning and all its chunks)."""
        if self._flags_held:
            yield
            return
        self._flags_held = True
        try:
            with mc_flags(self.model):
                yield
        finally:
            self._flags_held = False

    def run(self, groups: list[Group], keep: bool) -> None:
        """All samples of ``groups``, folded into their accumulators, under one entry into
        MC flags (a stepped run, :meth:`begin` and :meth:`step`, enters them per chunk, as
        other work may use the model in between)."""
        with self._mc():
            work = self.begin(groups, keep)
            while not self.step(work):
                pass

    def begin(self, groups: list[Group], keep: bool) -> RunWork:
        """Plan ``groups`` and give them empty accumulators; :meth:`step` then runs them one
        forward chunk at a time (a caller may interleave other work between chunks, or stop)."""
        # Made before, as a rule: then nothing runs and MC flags need not be entered.
        plans = [p for g in groups if (p := self.planner.cached(g.x)) is not None]
        if len(plans) < len(groups):  # planning runs the model
            with self._mc():
                plans = [self.plan(g.x) for g in groups]
        self.stats = RunStats()  # the passes of this call, not those of planning
        # One plan per chunk keeps the shared forward well-defined.
        if len({id(p) for p in plans}) > 1:
            parts = [(p, [g]) for g, p in zip(groups, plans)]
        else:
            parts = [(plans[0], groups)] if groups else []
        for plan, gs in parts:
            for g in gs:
                self.summary.new_acc(g, plan)
        return RunWork(parts, keep, self.stats)

    def step(self, work: RunWork) -> bool:
        """Run the next forward chunk of ``work``; True once every sample has run.

        The chunks, and so the numbers, are those of one uninterrupted :meth:`run`: masks
        are keyed by (seed, sample), and the packing below does not depend on what ran in
        between."""
        if work.done:
            return True
        plan, groups = work.parts[work.part]
        if work.pending is None:  # a new part: its chunk budget is fixed for all its chunks
            work.budget = self.chunk_rows(plan)
            work.pending = [(g, g.start, g.start + g.samples) for g in groups]
        segs = _next_chunk(work.pending, work.budget)
        self.stats = work.stats  # interleaved runs: the stats of the one that ran last
        with self._mc():
            self._run_chunk(plan, segs, work.keep)
        if not work.pending:
            work.part += 1
            work.pending = None
        return work.done

    def _run_chunk(self, plan: Plan, segs: list[Segment], keep: bool) -> None:
        try:
            y = self.forward(plan, [(g, s0, s1, None) for g, s0, s1 in segs])
        except torch.OutOfMemoryError as exc:
            self._halve(plan, segs, keep, exc)
            return
        if len(segs) == 1:
            g, s0, s1 = segs[0]
            self.fold(g, y, s1 - s0, None, keep or g.keep)
        else:
            self._fold_segments(segs, y, keep)

    def _halve(
        self, plan: Plan, segs: list[Segment], keep: bool, exc: torch.OutOfMemoryError
    ) -> None:
        """Rerun a chunk that ran out of memory in pieces of half its rows."""
        total = sum((s1 - s0) * len(g.x) for g, s0, s1 in segs)
        if total <= min(len(g.x) for g, _, _ in segs):
            raise exc  # not even one sample of a group fits: the error is the user's to see
        budget = max(1, total // 2)
        self.fitted_rows = budget
        log.warning("mcdrop: out of memory with %d rows per chunk; retrying with %d", total, budget)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for g, s0, s1 in segs:
            step = max(1, budget // len(g.x))
            for a in range(s0, s1, step):
                self._run_chunk(plan, [(g, a, min(s1, a + step))], keep)

    # ------------------------------------------------------------------ folding

    def fold(self, g: Group, y: Any, u: int, rows: torch.Tensor | None, keep: bool) -> None:
        """Fold the outputs of ``u`` units of ``g`` at ``rows`` (all when None)."""
        main, logvar = unpack_output(y)
        b = len(g.x) if rows is None else len(rows)
        main = main.float().reshape(u, b, *main.shape[1:])  # (U, b, *O)
        if not bool(torch.isfinite(main).all()):
            bad = torch.nonzero(
                ~torch.isfinite(main.reshape(u, b, -1)).all(dim=2).all(dim=0)
            ).flatten()
            rows_bad = bad if rows is None else rows[bad]
            raise ModelOutputError(
                f"the model returned NaN or Inf for rows {rows_bad.tolist()[:10]}"
            )
        if keep:
            g.draws.append(main.cpu())
        self.summary.update(g, main, logvar, rows)

    def _fold_segments(self, segs: list[Segment], y: Any, keep: bool) -> None:
        """Fold one chunk holding several groups' segments, in a fixed number of tensor
        operations: the statistics of every (group, row) at once, then per-group views."""
        main, logvar = unpack_output(y)
        main = main.float()  # (N, *O)
        units = [s1 - s0 for _, s0, s1 in segs]
        widths = [len(g.x) for g, _, _ in segs]
        if not bool(torch.isfinite(main).all()):
            offset = 0
            for (g, _, _), u, b in zip(segs, units, widths):  # finds and names the rows
                part = main[offset : offset + u * b]
                lv = None if logvar is None else logvar[offset : offset + u * b]
                self.fold(g, part if lv is None else (part, lv), u, None, False)
                offset += u * b
            raise ModelOutputError("the model returned NaN or Inf")  # not reached: a fold raised
        slot = row_slots(units, widths).to(main.device)
        per_slot = self.summary.grouped(main, logvar, slot, sum(widths))
        t = offset = 0
        for (g, _, _), u, b in zip(segs, units, widths):
            self.summary.add(g, u, [tuple(v[t : t + b] for v in part) for part in per_slot])
            if keep or g.keep:
                g.draws.append(main[offset : offset + u * b].reshape(u, b, *main.shape[1:]).cpu())
            t += b
            offset += u * b
