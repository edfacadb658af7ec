"""Streaming moments and the predictive summaries of MC dropout.

All accumulators are float64 and merge exactly (Chan et al.'s parallel update), so the
result does not depend on how the S samples were chunked, up to float rounding.
Shapes: S samples, B rows, ``*O`` one row's output shape, C classes.
"""

from __future__ import annotations

import torch

__all__ = [
    "Moments",
    "ClassStats",
    "entropy",
    "grouped_class_stats",
    "grouped_moments",
    "mc_standard_error",
]

_EPS = 1e-12


class Moments:
    """Running count, mean and sum of squared deviations (M2) per element, in float64.

    ``counts`` may differ per row (adaptive sampling), so it has shape (B,).
    """

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None  # (B,)
        self.mean: torch.Tensor | None = None  # (B, *O)
        self.m2: torch.Tensor | None = None  # (B, *O)

    def update(self, draws: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Fold in ``draws`` of shape (k, b, *O) for rows ``rows`` (all rows when None)."""
        x = draws.to(torch.float64)
        bmean = x.mean(dim=0)  # (b, *O)
        self.add(x.shape[0], bmean, ((x - bmean) ** 2).sum(dim=0), rows)

    def add(
        self, k: int, bmean: torch.Tensor, bm2: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """Fold in ``k`` draws per row given by their mean and M2, each (b, *O) float64."""
        if self.mean is None:
            assert rows is None, "first update must cover every row"
            self.count = torch.full(
                (bmean.shape[0],), float(k), dtype=torch.float64, device=bmean.device
            )
            self.mean, self.m2 = bmean, bm2
            return
        assert self.count is not None and self.m2 is not None
        idx = rows if rows is not None else slice(None)
        na = self.count[idx]
        na_b = na.view(-1, *([1] * (bmean.dim() - 1)))
        n = na_b + k
        delta = bmean - self.mean[idx]
        self.mean[idx] = self.mean[idx] + delta * (k / n)
        self.m2[idx] = self.m2[idx] + bm2 + delta**2 * (na_b * k / n)
        self.count[idx] = na + k

    @classmethod
    def concat(cls, parts: list[Moments]) -> Moments:
        """One accumulator holding the rows of ``parts`` one after another."""
        out = cls()
        out.count = torch.cat([p.count for p in parts])  # type: ignore[misc]
        out.mean = torch.cat([p.mean for p in parts])  # type: ignore[misc]
        out.m2 = torch.cat([p.m2 for p in parts])  # type: ignore[misc]
        return out

    def merge(self, other: Moments) -> None:
        """Fold in another accumulator over the same rows (Chan's parallel update)."""
        assert other.mean is not None and other.count is not None and other.m2 is not None
        if self.mean is None:
            self.count, self.mean, self.m2 = (
                other.count.clone(),
                other.mean.clone(),
                other.m2.clone(),
            )
            return
        assert self.count is not None and self.m2 is not None
        dev = self.mean.device
        nb, mb, m2b = other.count.to(dev), other.mean.to(dev), other.m2.to(dev)
        shape = (-1, *([1] * (self.mean.dim() - 1)))
        na_, nb_ = self.count.view(shape), nb.view(shape)
        n = na_ + nb_
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb_ / n)
        self.m2 = self.m2 + m2b + delta**2 * (na_ * nb_ / n)
        self.count = self.count + nb

    def variance(self, ddof: int = 1) -> torch.Tensor:
        """Per-element variance; ddof=1 gives the unbiased sample variance (0 when S = 1)."""
        assert self.count is not None and self.m2 is not None
        c = self.count.view(-1, *([1] * (self.m2.dim() - 1)))
        return torch.where(c > ddof, self.m2 / (c - ddof).clamp_min(1), torch.zeros_like(self.m2))


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` with 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim=dim)


class ClassStats:
    """Streaming classification summaries over samples of softmax probabilities."""

    def __init__(self) -> None:
        self.moments = Moments()  # of probabilities (B, C)
        self.entropy_sum: torch.Tensor | None = None  # (B,)
        self.votes: torch.Tensor | None = None  # (B, C) argmax counts

    def update(self, probs: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """``probs``: (k, b, C) softmax probabilities of k samples."""
        p = probs.to(torch.float64)
        bmean = p.mean(dim=0)  # (b, C)
        votes = torch.zeros(p.shape[1:], dtype=torch.float64, device=p.device)
        votes.scatter_add_(
            -1,
            p.argmax(dim=-1).T,
            torch.ones(p.shape[1], p.shape[0], dtype=torch.float64, device=p.device),
        )
        self.add(
            p.shape[0], bmean, ((p - bmean) ** 2).sum(dim=0), entropy(p).sum(dim=0), votes, rows
        )

    def add(
        self,
        k: int,
        bmean: torch.Tensor,
        bm2: torch.Tensor,
        entropy_sum: torch.Tensor,
        votes: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> None:
        """Fold in ``k`` samples per row given by the mean and M2 of their probabilities
        (b, C), the sum of their entropies (b,) and their argmax counts (b, C)."""
        self.moments.add(k, bmean, bm2, rows)
        if self.entropy_sum is None:
            self.entropy_sum, self.votes = entropy_sum, votes
            return
        assert self.votes is not None
        idx = rows if rows is not None else slice(None)
        self.entropy_sum[idx] += entropy_sum
        self.votes[idx] += votes

    @classmethod
    def concat(cls, parts: list[ClassStats]) -> ClassStats:
        """One accumulator holding the rows of ``parts`` one after another."""
        out = cls()
        out.moments = Moments.concat([p.moments for p in parts])
        out.entropy_sum = torch.cat([p.entropy_sum for p in parts])  # type: ignore[misc]
        out.votes = torch.cat([p.votes for p in parts])  # type: ignore[misc]
        return out

    def merge(self, other: ClassStats) -> None:
        """Fold in another accumulator over the same rows."""
        assert other.entropy_sum is not None and other.votes is not None
        self.moments.merge(other.moments)
        dev = self.moments.mean.device if self.moments.mean is not None else None
        if self.entropy_sum is None or self.votes is None:
            self.entropy_sum, self.votes = other.entropy_sum.clone(), other.votes.clone()
        else:
            self.entropy_sum = self.entropy_sum + other.entropy_sum.to(dev)
            self.votes = self.votes + other.votes.to(dev)

    def summary(self) -> dict[str, torch.Tensor]:
        """probs, predictive/expected entropy, mutual information, variation ratio."""
        m = self.moments
        assert m.mean is not None and m.count is not None and self.entropy_sum is not None
        assert self.votes is not None
        probs = m.mean
        pe = entropy(probs)
        ee = self.entropy_sum / m.count
        # MI >= 0 by Jensen; clamp the tiny negative values float rounding can give.
        mi = (pe - ee).clamp_min(0.0)
        vr = 1.0 - self.votes.max(dim=-1).values / m.count
        return {
            "probs": probs,
            "predictive_entropy": pe,
            "expected_entropy": ee,
            "mutual_information": mi,
            "variation_ratio": vr,
        }


def grouped_moments(
    x: torch.Tensor, index: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and M2 of the rows of ``x`` (N, *O) gathered into ``size`` groups by ``index``
    (N,): the statistics of many (request, row) pairs of one forward chunk in a fixed
    number of operations. Every group must receive at least one row."""
    x = x.to(torch.float64)
    count = torch.zeros(size, dtype=torch.float64, device=x.device)
    count.index_add_(0, index, torch.ones(len(index), dtype=torch.float64, device=x.device))
    total = torch.zeros((size, *x.shape[1:]), dtype=torch.float64, device=x.device)
    mean = total.index_add_(0, index, x) / count.view(-1, *([1] * (x.dim() - 1)))
    dev = x - mean.index_select(0, index)
    m2 = torch.zeros_like(mean).index_add_(0, index, dev * dev)
    return mean, m2


def grouped_class_stats(
    probs: torch.Tensor, index: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :meth:`ClassStats.add` takes, for the rows of ``probs`` (N, C) gathered into
    ``size`` groups by ``index`` (N,): mean and M2 of the probabilities (size, C), the sum
    of their entropies (size,) and their argmax counts (size, C)."""
    p = probs.to(torch.float64)
    mean, m2 = grouped_moments(p, index, size)
    ent = torch.zeros(size, dtype=torch.float64, device=p.device).index_add_(0, index, entropy(p))
    votes = torch.zeros(size, p.shape[1], dtype=torch.float64, device=p.device)
    votes.index_put_(
        (index, p.argmax(dim=-1)),
        torch.ones(len(index), dtype=torch.float64, device=p.device),
        accumulate=True,
    )
    return mean, m2, ent, votes


def mc_standard_error(variance: torch.Tensor, samples: torch.Tensor | int) -> torch.Tensor:
    """Monte Carlo standard error of the sample mean: sqrt(variance / S)."""
    s = samples if isinstance(samples, int) else samples.to(variance.dtype)
    if isinstance(s, torch.Tensor):
        s = s.view(-1, *([1] * (variance.dim() - 1)))
    return torch.sqrt(variance / s)
