"""Tolerances for float32 work compared across different shapes.

A float32 forward pass rounds differently when the same rows run in another GEMM shape:
another chunk size, another batch composition, another thread split or another kernel's
edge tile. Each output then moves by a few units in the last place (ulp) of float32 per
accumulating layer. Identical masks therefore give statistics that agree to float32
rounding, never bitwise, and never to 1e-12. The bound used here:

- the value scale ``c`` of a statistic is the largest ``|mean| + sd`` over the tensor (the
  size of the float32 numbers that were summed);
- a mean may move by ``ULPS * eps32 * c``;
- a variance ``mean((y - ybar)^2)`` moves by about ``2 * sd * dy``, bounded by
  ``ULPS * eps32 * 2 * c^2``.

``ULPS = 64`` covers a network of up to about eight accumulating layers with an error of
a few ulps each, with headroom: seen on two CPUs, differences were 3e-9 to 1e-6 relative.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

EPS32 = float(torch.finfo(torch.float32).eps)  # 1.19e-7
ULPS = 64


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def value_scale(mean: Any, variance: Any | None = None) -> float:
    """Largest ``|mean| + sd`` over a tensor (at least 1e-30, so a bound is never 0)."""
    m = np.abs(_np(mean))
    if variance is not None:
        m = m + np.sqrt(np.maximum(_np(variance), 0.0))
    return max(float(m.max()) if m.size else 0.0, 1e-30)


def assert_close_f32(
    actual: Any, expected: Any, *, scale: float | None = None, ulps: int = ULPS, what: str = ""
) -> None:
    """``|actual - expected| <= ulps * eps32 * scale`` elementwise (scale: ``max |expected|``).

    Pass ``scale=value_scale(mean, variance)`` for a mean and ``2 * scale**2`` for a
    variance of float32 outputs (see the module docstring).
    """
    a, b = _np(actual), _np(expected)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    c = value_scale(b) if scale is None else scale
    bound = ulps * EPS32 * c
    err = float(np.abs(a - b).max()) if a.size else 0.0
    assert err <= bound, f"{what}: max |difference| {err:.3g} > float32 bound {bound:.3g}"


def assert_stats_close_f32(actual: Any, expected: Any, *, ulps: int = ULPS) -> None:
    """Mean and variance of two predictions agree to float32 rounding of the outputs."""
    c = value_scale(expected.mean, expected.variance)
    assert_close_f32(actual.mean, expected.mean, scale=c, ulps=ulps, what="mean")
    assert_close_f32(actual.variance, expected.variance, scale=2 * c * c, ulps=ulps,
                     what="variance")  # fmt: skip
