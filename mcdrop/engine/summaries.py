"""Per-task summaries: how draws fold into running statistics, and what a task reports.

The engine knows two tasks, each one object here, so no code elsewhere asks which task it
runs: :class:`RegressionSummary` (moments of the outputs, 1/tau and a heteroscedastic
head's predicted variance as the aleatoric part) and :class:`ClassSummary` (moments of the
softmax probabilities, entropies, mutual information, variation ratio). A new statistic
is one name in :mod:`mcdrop.fields` and one line in a ``_fields`` method.

Shapes: U units (samples) of a chunk, b rows, N rows of a chunk, ``*O`` one row's output,
C classes, T members of an exact mixture.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from mcdrop.engine.config import Task
from mcdrop.engine.plan import Group, Plan
from mcdrop.errors import ModelOutputError
from mcdrop.prediction import Prediction
from mcdrop.stats import (
    ClassStats,
    Moments,
    entropy,
    grouped_class_stats,
    grouped_moments,
    mc_standard_error,
)

__all__ = ["TaskSummary", "RegressionSummary", "ClassSummary", "summary_for"]

Stats = dict[str, torch.Tensor]


class TaskSummary(ABC):
    """Folding and summarising for one task (see the module docstring)."""

    task: Task

    @abstractmethod
    def new_acc(self, g: Group, plan: Plan) -> None:
        """Give ``g`` empty accumulators for the outputs ``plan`` describes."""

    @abstractmethod
    def moments(self, acc: Any) -> Moments:
        """The moments of the sampled quantity whose MC error is reported."""

    @abstractmethod
    def update(
        self, g: Group, main: torch.Tensor, logvar: torch.Tensor | None, rows: torch.Tensor | None
    ) -> None:
        """Fold draws ``main`` (U, b, *O) (and ``logvar`` (U * b, *O)) into ``g`` at ``rows``."""

    @abstractmethod
    def grouped(
        self, main: torch.Tensor, logvar: torch.Tensor | None, slot: torch.Tensor, n_slots: int
    ) -> list[tuple[torch.Tensor, ...]]:
        """Per-slot statistics of a chunk (N, *O) whose row i belongs to ``slot[i]``: one
        tuple for the main accumulator, a second for the aleatoric one if any."""

    @abstractmethod
    def add(self, g: Group, units: int, parts: list[tuple[torch.Tensor, ...]]) -> None:
        """Fold ``units`` draws of ``g``'s rows, given as :meth:`grouped` slices."""

    @abstractmethod
    def _fields(self, groups: Sequence[Group]) -> tuple[Stats, torch.Tensor, torch.Tensor]:
        """(task statistics incl. ``mean`` and ``variance``, sampled variance, counts) of
        ``groups`` laid end to end."""

    @abstractmethod
    def exact(self, main: torch.Tensor, logvar: torch.Tensor | None, w: torch.Tensor) -> Stats:
        """Statistics of the exact mixture: ``main`` (T, b, *O) float64, weights (T,)."""

    def finish(self, groups: Sequence[Group]) -> list[Prediction]:
        """Predictions of finished groups. Summaries are row-wise, so groups whose rows
        have the same output shape are summarised together (their accumulators laid end
        to end) and each gets views of its rows: a fixed number of operations per call."""
        out: list[Prediction | None] = [None] * len(groups)
        buckets: dict[tuple[Any, ...], list[int]] = {}
        for i, g in enumerate(groups):
            m = self.moments(g.acc)
            assert m.mean is not None
            buckets.setdefault((tuple(m.mean.shape[1:]), g.hetero_acc is not None), []).append(i)
        for idx in buckets.values():
            for i, pred in zip(idx, self._finish_bucket([groups[i] for i in idx])):
                out[i] = pred
        return out  # type: ignore[return-value]

    def _finish_bucket(self, groups: list[Group]) -> list[Prediction]:
        stats, sampled, count = self._fields(groups)
        var = stats["variance"]
        stats["std"] = var.sqrt()
        stats["stderr"] = mc_standard_error(sampled, count)  # of the sampled part only
        sizes = [len(g.x) for g in groups]
        parts = {k: (v,) if len(groups) == 1 else v.split(sizes) for k, v in stats.items()}
        return [
            Prediction(
                task=self.task.value,
                samples=g.samples,
                samples_per_row=torch.full((sizes[i],), g.samples, dtype=torch.int64),
                seed=g.seed,
                draws=torch.cat(g.draws) if g.draws else None,
                **{k: v[i] for k, v in parts.items()},  # type: ignore[arg-type]
            )
            for i, g in enumerate(groups)
        ]


class RegressionSummary(TaskSummary):
    """Sample mean and variance; aleatoric part = 1/tau + mean predicted variance."""

    task = Task.REGRESSION

    def __init__(self, tau: float | None) -> None:
        self.tau = tau

    def new_acc(self, g: Group, plan: Plan) -> None:
        g.acc = Moments()
        g.hetero_acc = Moments() if plan.hetero else None

    def moments(self, acc: Any) -> Moments:
        return acc  # type: ignore[no-any-return]

    def update(
        self, g: Group, main: torch.Tensor, logvar: torch.Tensor | None, rows: torch.Tensor | None
    ) -> None:
        g.acc.update(main, rows)
        if logvar is not None:
            assert g.hetero_acc is not None
            u, b = main.shape[:2]
            g.hetero_acc.update(torch.exp(logvar.double().reshape(u, b, *logvar.shape[1:])), rows)

    def grouped(
        self, main: torch.Tensor, logvar: torch.Tensor | None, slot: torch.Tensor, n_slots: int
    ) -> list[tuple[torch.Tensor, ...]]:
        parts: list[tuple[torch.Tensor, ...]] = [grouped_moments(main, slot, n_slots)]
        if logvar is not None:
            parts.append(grouped_moments(torch.exp(logvar.double()), slot, n_slots))
        return parts

    def add(self, g: Group, units: int, parts: list[tuple[torch.Tensor, ...]]) -> None:
        g.acc.add(units, *parts[0])
        if len(parts) > 1:
            assert g.hetero_acc is not None
            g.hetero_acc.add(units, *parts[1])

    def _aleatoric(self, epi: torch.Tensor, predicted: torch.Tensor | None) -> torch.Tensor:
        alea = torch.zeros_like(epi)
        if predicted is not None:
            alea = alea + predicted
        if self.tau is not None:
            alea = alea + 1.0 / self.tau
        return alea

    def _fields(self, groups: Sequence[Group]) -> tuple[Stats, torch.Tensor, torch.Tensor]:
        one = len(groups) == 1
        m: Moments = groups[0].acc if one else Moments.concat([g.acc for g in groups])
        epi = m.variance()
        h_parts = [g.hetero_acc for g in groups if g.hetero_acc is not None]
        hetero = (h_parts[0] if one else Moments.concat(h_parts)) if h_parts else None
        alea = self._aleatoric(epi, None if hetero is None else hetero.mean)
        assert m.mean is not None and m.count is not None
        stats = {
            "mean": m.mean,
            "variance": epi + alea,
            "epistemic_variance": epi,
            "aleatoric_variance": alea,
        }
        return stats, epi, m.count

    def exact(self, main: torch.Tensor, logvar: torch.Tensor | None, w: torch.Tensor) -> Stats:
        wv = w.view(-1, *([1] * (main.dim() - 1)))
        mean = (wv * main).sum(0)
        epi = (wv * (main - mean) ** 2).sum(0)
        predicted = None
        if logvar is not None:
            predicted = (wv * torch.exp(logvar.double().reshape(main.shape))).sum(0)
        alea = self._aleatoric(epi, predicted)
        return {
            "mean": mean,
            "variance": epi + alea,
            "epistemic_variance": epi,
            "aleatoric_variance": alea,
        }


def _check_logits(per_row: tuple[int, ...] | torch.Size) -> None:
    """A classifier's output row must be one vector of logits."""
    if len(per_row) != 1:
        raise ModelOutputError(
            f"a classifier must return logits shaped (batch, classes); got per-row shape "
            f"{tuple(per_row)}"
        )


class ClassSummary(TaskSummary):
    """Moments of the softmax probabilities, entropies, BALD, variation ratio."""

    task = Task.CLASSIFICATION

    def new_acc(self, g: Group, plan: Plan) -> None:
        g.acc = ClassStats()
        g.hetero_acc = None  # a classifier's second output is not a variance

    def moments(self, acc: Any) -> Moments:
        return acc.moments  # type: ignore[no-any-return]

    def update(
        self, g: Group, main: torch.Tensor, logvar: torch.Tensor | None, rows: torch.Tensor | None
    ) -> None:
        _check_logits(main.shape[2:])
        g.acc.update(torch.softmax(main.double(), dim=-1), rows)

    def grouped(
        self, main: torch.Tensor, logvar: torch.Tensor | None, slot: torch.Tensor, n_slots: int
    ) -> list[tuple[torch.Tensor, ...]]:
        _check_logits(main.shape[1:])
        return [grouped_class_stats(torch.softmax(main.double(), dim=-1), slot, n_slots)]

    def add(self, g: Group, units: int, parts: list[tuple[torch.Tensor, ...]]) -> None:
        g.acc.add(units, *parts[0])

    def _fields(self, groups: Sequence[Group]) -> tuple[Stats, torch.Tensor, torch.Tensor]:
        acc = groups[0].acc if len(groups) == 1 else ClassStats.concat([g.acc for g in groups])
        stats = acc.summary()
        var = acc.moments.variance()
        stats["mean"] = stats["probs"]
        stats["variance"] = var
        assert acc.moments.count is not None
        return stats, var, acc.moments.count

    def exact(self, main: torch.Tensor, logvar: torch.Tensor | None, w: torch.Tensor) -> Stats:
        total, b = main.shape[:2]
        wv = w.view(-1, *([1] * (main.dim() - 1)))
        p = torch.softmax(main, dim=-1)  # (T, b, C)
        mean = (wv * p).sum(0)
        pe = entropy(mean)
        ee = (w.view(-1, 1) * entropy(p)).sum(0)
        votes = torch.zeros_like(mean)
        votes.scatter_add_(-1, p.argmax(-1).T, w.view(-1, 1).expand(total, b).T.contiguous())
        return {
            "mean": mean,
            "variance": (wv * (p - mean) ** 2).sum(0),
            "probs": mean,
            "predictive_entropy": pe,
            "expected_entropy": ee,
            "mutual_information": (pe - ee).clamp_min(0),
            "variation_ratio": 1 - votes.max(-1).values,
        }


def summary_for(task: Task, tau: float | None) -> TaskSummary:
    """The summary object of ``task``."""
    return ClassSummary() if task is Task.CLASSIFICATION else RegressionSummary(tau)
