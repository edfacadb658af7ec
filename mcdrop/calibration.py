"""Is the uncertainty right? Scores for predictive distributions, and fitting tau.

Regression (N rows; a Gaussian predictive is given by its mean and std, the MC mixture by
its T raw draws):

- :func:`rmse` of the predictive mean;
- :func:`gaussian_log_likelihood` / :func:`gaussian_nll` of N(mean, std^2);
- :func:`mixture_log_likelihood`: the paper's form, an equal-weight mixture of
  N(draw_t, 1/tau) over the T draws (logsumexp over samples);
- :func:`crps_gaussian`: the continuous ranked probability score of N(mean, std^2);
- :func:`interval_coverage` / :func:`coverage_curve`: how often central Gaussian intervals
  contain the truth, against their nominal level;
- :func:`fit_tau`: the model precision tau maximising held-out log-likelihood.

Classification (N rows, C classes; labels are integer class indices):

- :func:`expected_calibration_error` (equal-width confidence bins),
- :func:`brier_score` (multi-class, sum over classes),
- :func:`reliability_curve` (the data of a reliability diagram).

Everything takes numpy arrays or tensors (anything ``np.asarray`` accepts), works in
float64 and raises :class:`~mcdrop.errors.InvalidInputError` (a ``ValueError``) on wrong
shapes, NaN/Inf, non-positive spreads or out-of-range labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import torch

from mcdrop.errors import InvalidInputError

__all__ = [
    "rmse",
    "gaussian_log_likelihood",
    "gaussian_nll",
    "mixture_log_likelihood",
    "crps_gaussian",
    "interval_coverage",
    "coverage_curve",
    "expected_calibration_error",
    "brier_score",
    "reliability_curve",
    "fit_tau",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _arr(name: str, a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric array: {exc}") from exc
    if out.size == 0:
        raise InvalidInputError(f"{name} is empty")
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise InvalidInputError(f"{name} contains {bad} NaN or Inf value(s)")
    return out


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {k: v.shape for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {list(s)}" for k, s in shapes.items())
        raise InvalidInputError(f"shapes must match: {desc}")


def _positive(name: str, a: np.ndarray) -> None:
    if (a <= 0).any():
        raise InvalidInputError(f"{name} must be > 0 everywhere, got min {a.min()!r}")


def _ndtr(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (through torch, which has it; numpy does not)."""
    return torch.special.ndtr(torch.from_numpy(z)).numpy()


# --------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------


def rmse(y: Any, mean: Any) -> float:
    """Root mean squared error of the predictive mean.

    Parameters
    ----------
    y, mean : array (N, *O)
        Targets and predictive means, same shape.

    Returns
    -------
    float
    """
    yt, m = _arr("y", y), _arr("mean", mean)
    _same_shape(y=yt, mean=m)
    return float(np.sqrt(np.mean((yt - m) ** 2)))


def gaussian_log_likelihood(y: Any, mean: Any, std: Any) -> np.ndarray:
    """Log density of ``y`` under N(mean, std^2), per element.

    Parameters
    ----------
    y, mean, std : array (N, *O)
        ``std`` > 0 (the predictive standard deviation, 1/tau included if applicable).

    Returns
    -------
    ndarray (N, *O)
    """
    yt, m, s = _arr("y", y), _arr("mean", mean), _arr("std", std)
    _same_shape(y=yt, mean=m, std=s)
    _positive("std", s)
    return -0.5 * _LOG_2PI - np.log(s) - 0.5 * ((yt - m) / s) ** 2


def gaussian_nll(y: Any, mean: Any, std: Any) -> float:
    """Mean negative Gaussian log-likelihood; see :func:`gaussian_log_likelihood`.

    Returns
    -------
    float
        ``-mean(gaussian_log_likelihood(y, mean, std))`` (nats per element).
    """
    return float(-np.mean(gaussian_log_likelihood(y, mean, std)))


def mixture_log_likelihood(y: Any, draws: Any, tau: float) -> np.ndarray:
    """The paper's MC log-likelihood: log (1/T) sum_t N(y; draw_t, 1/tau), per element.

    ``logsumexp_t(-tau/2 (y - draw_t)^2) - log T - 1/2 log(2 pi) + 1/2 log tau``
    (Gal & Ghahramani 2016, the test log-likelihood of Table 1).

    Parameters
    ----------
    y : array (N, *O)
        Targets, in the units of the draws.
    draws : array (T, N, *O)
        Raw MC outputs (e.g. ``Prediction.draws``), un-normalised.
    tau : float
        Model precision (> 0), in the units of ``y``.

    Returns
    -------
    ndarray (N, *O)
    """
    yt, d = _arr("y", y), _arr("draws", draws)
    if d.shape[1:] != yt.shape:
        raise InvalidInputError(
            f"draws must be shaped (T, *y.shape) = (T, {', '.join(map(str, yt.shape))}), "
            f"got {list(d.shape)}"
        )
    tau = _check_tau(tau)
    a = -0.5 * tau * (yt[None] - d) ** 2  # (T, N, *O)
    amax = a.max(axis=0)
    lse = amax + np.log(np.exp(a - amax).sum(axis=0))
    return lse - math.log(d.shape[0]) - 0.5 * _LOG_2PI + 0.5 * math.log(tau)


def _check_tau(tau: Any) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"tau must be a positive number, got {tau!r}")
    if not math.isfinite(tau) or tau <= 0:
        raise InvalidInputError(f"tau must be a positive finite number, got {tau!r}")
    return float(tau)


def crps_gaussian(y: Any, mean: Any, std: Any) -> np.ndarray:
    """Continuous ranked probability score of N(mean, std^2) at ``y``, per element.

    Closed form with z = (y - mean) / std:
    ``std * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))``. Lower is better; it has the
    units of ``y`` and reduces to the absolute error as std -> 0.

    Parameters
    ----------
    y, mean, std : array (N, *O)

    Returns
    -------
    ndarray (N, *O)
    """
    yt, m, s = _arr("y", y), _arr("mean", mean), _arr("std", std)
    _same_shape(y=yt, mean=m, std=s)
    _positive("std", s)
    z = (yt - m) / s
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return s * (z * (2.0 * _ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))


def _levels(levels: Sequence[float] | np.ndarray) -> np.ndarray:
    lv = _arr("levels", levels).reshape(-1)
    if ((lv <= 0) | (lv >= 1)).any():
        raise InvalidInputError(f"levels must lie strictly between 0 and 1, got {lv.tolist()}")
    return lv


def interval_coverage(
    y: Any, mean: Any, std: Any, levels: Sequence[float] | np.ndarray = (0.5, 0.8, 0.9, 0.95, 0.99)
) -> dict[float, float]:
    """Fraction of ``y`` inside the central Gaussian interval of each nominal level.

    The interval of level ``c`` is ``mean +- z std`` with ``z = Phi^-1((1 + c) / 2)``. A
    calibrated model covers about ``c`` of the points at every level.

    Parameters
    ----------
    y, mean, std : array (N, *O)
    levels : sequence of float in (0, 1)

    Returns
    -------
    dict
        ``{level: observed fraction}``.
    """
    yt, m, s = _arr("y", y), _arr("mean", mean), _arr("std", std)
    _same_shape(y=yt, mean=m, std=s)
    _positive("std", s)
    out = {}
    for c in _levels(levels):
        z = NormalDist().inv_cdf((1.0 + c) / 2.0)
        out[float(c)] = float(np.mean(np.abs(yt - m) <= z * s))
    return out


def coverage_curve(y: Any, mean: Any, std: Any, points: int = 19) -> tuple[np.ndarray, np.ndarray]:
    """Nominal vs observed coverage on a grid of levels (the data of a coverage plot).

    Returns
    -------
    nominal, observed : ndarray (points,)
        Levels ``0.05 ... 0.95`` (for 19 points) and the observed fractions.
    """
    nominal = np.linspace(0.0, 1.0, points + 2)[1:-1]
    cov = interval_coverage(y, mean, std, nominal)
    return nominal, np.array([cov[float(c)] for c in nominal])


def fit_tau(
    y: Any,
    draws: Any,
    method: Literal["mixture", "gaussian"] = "mixture",
    bounds: tuple[float, float] = (1e-4, 1e6),
) -> float:
    """The model precision tau that maximises the mean held-out log-likelihood.

    Parameters
    ----------
    y : array (N, *O)
        Held-out targets (not the training data: there the draws fit too well).
    draws : array (T, N, *O)
        Raw MC outputs for those rows.
    method : {"mixture", "gaussian"}
        "mixture" (default, as the paper's tau search) maximises
        :func:`mixture_log_likelihood`; "gaussian" maximises the likelihood of
        N(sample mean, sample variance + 1/tau), the predictive that
        :class:`~mcdrop.MCPredictor` reports with ``tau`` set.
    bounds : (float, float)
        Search interval for tau.

    Returns
    -------
    float
        The maximiser, found by a log-spaced grid then golden-section refinement in log tau.
    """
    yt, d = _arr("y", y), _arr("draws", draws)
    if d.ndim < 1 or d.shape[1:] != yt.shape:
        raise InvalidInputError(f"draws must be shaped (T, *y.shape), got {list(d.shape)}")
    if method not in ("mixture", "gaussian"):
        raise InvalidInputError(f"method must be 'mixture' or 'gaussian', got {method!r}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (0 < lo < hi and math.isfinite(hi)):
        raise InvalidInputError(f"bounds must satisfy 0 < low < high, got {bounds!r}")
    mean = d.mean(axis=0)
    var = d.var(axis=0, ddof=1) if d.shape[0] > 1 else np.zeros_like(mean)

    def score(log_tau: float) -> float:
        tau = math.exp(log_tau)
        if method == "mixture":
            return float(mixture_log_likelihood(yt, d, tau).mean())
        return float(gaussian_log_likelihood(yt, mean, np.sqrt(var + 1.0 / tau)).mean())

    grid = np.linspace(math.log(lo), math.log(hi), 81)
    vals = [score(g) for g in grid]
    i = int(np.argmax(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, e = b - ratio * (b - a), a + ratio * (b - a)
    fc, fe = score(c), score(e)
    for _ in range(60):
        if fc > fe:
            b, e, fe = e, c, fc
            c = b - ratio * (b - a)
            fc = score(c)
        else:
            a, c, fc = c, e, fe
            e = a + ratio * (b - a)
            fe = score(e)
    return math.exp((a + b) / 2.0)


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


def _class_inputs(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _arr("probs", probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InvalidInputError(f"probs must be shaped (N, C) with C >= 2, got {list(p.shape)}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise InvalidInputError("probs must be non-negative and each row must sum to 1")
    lab = _arr("labels", labels)
    if lab.shape != (p.shape[0],):
        raise InvalidInputError(
            f"labels must be shaped (N,) = ({p.shape[0]},), got {list(lab.shape)}"
        )
    if (lab != np.round(lab)).any() or (lab < 0).any() or (lab >= p.shape[1]).any():
        raise InvalidInputError(f"labels must be integers in [0, {p.shape[1] - 1}]")
    return p, lab.astype(np.int64)


def reliability_curve(probs: Any, labels: Any, bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence and accuracy of the top class (a reliability diagram's data).

    Parameters
    ----------
    probs : array (N, C)
        Predictive class probabilities.
    labels : array (N,)
        True class indices.
    bins : int
        Equal-width bins over the confidence [0, 1]; a confidence on an inner edge goes to
        the upper bin, 1.0 to the last.

    Returns
    -------
    dict
        ``edges`` (bins + 1,), ``confidence``, ``accuracy`` (bins,; NaN in empty bins),
        ``counts`` (bins,).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InvalidInputError(f"bins must be a positive integer, got {bins!r}")
    p, lab = _class_inputs(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == lab).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=bins) / counts
        accuracy = np.bincount(idx, weights=correct, minlength=bins) / counts
    return {"edges": edges, "confidence": confidence, "accuracy": accuracy, "counts": counts}


def expected_calibration_error(probs: Any, labels: Any, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) x |accuracy - confidence|.

    Parameters
    ----------
    probs : array (N, C)
    labels : array (N,)
    bins : int

    Returns
    -------
    float in [0, 1]
    """
    rc = reliability_curve(probs, labels, bins)
    n = rc["counts"].sum()
    full = rc["counts"] > 0
    gap = np.abs(rc["accuracy"][full] - rc["confidence"][full])
    return float((rc["counts"][full] / n * gap).sum())


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over rows of sum_c (p_c - 1[c = label])^2.

    Parameters
    ----------
    probs : array (N, C)
    labels : array (N,)

    Returns
    -------
    float in [0, 2]
    """
    p, lab = _class_inputs(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(lab)), lab] = 1.0
    return float(np.mean(((p - onehot) ** 2).sum(axis=1)))
