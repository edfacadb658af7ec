"""Calibration metrics against closed forms and naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcdrop.calibration import (
    brier_score,
    coverage_curve,
    crps_gaussian,
    expected_calibration_error,
    fit_tau,
    gaussian_log_likelihood,
    gaussian_nll,
    interval_coverage,
    mixture_log_likelihood,
    reliability_curve,
    rmse,
)
from mcdrop.errors import InvalidInputError


def test_rmse_closed_form() -> None:
    assert rmse([0.0, 0.0], [3.0, 4.0]) == pytest.approx(math.sqrt(12.5))
    assert rmse(torch.tensor([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0


def test_gaussian_log_likelihood_closed_form() -> None:
    # N(0, 1) at 0: -1/2 log(2 pi); N(1, 2^2) at 3: -1/2 log(2 pi) - log 2 - 1/2
    ll = gaussian_log_likelihood([0.0, 3.0], [0.0, 1.0], [1.0, 2.0])
    assert ll[0] == pytest.approx(-0.5 * math.log(2 * math.pi))
    assert ll[1] == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(2.0) - 0.5)
    assert gaussian_nll([0.0, 3.0], [0.0, 1.0], [1.0, 2.0]) == pytest.approx(-ll.mean())


def test_mixture_ll_reduces_to_gaussian_for_identical_draws() -> None:
    y = np.array([0.3, -1.0, 2.0])
    draws = np.tile(np.array([0.1, 0.0, 1.5]), (7, 1))  # (T, N), all draws equal
    tau = 4.0
    ref = gaussian_log_likelihood(y, draws[0], np.full(3, 1 / math.sqrt(tau)))
    np.testing.assert_allclose(mixture_log_likelihood(y, draws, tau), ref, rtol=1e-12)


def test_mixture_ll_naive_reference() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=5)
    draws = rng.normal(size=(50, 5))
    tau = 0.7
    dens = np.sqrt(tau / (2 * math.pi)) * np.exp(-0.5 * tau * (y - draws) ** 2)
    np.testing.assert_allclose(
        mixture_log_likelihood(y, draws, tau), np.log(dens.mean(0)), rtol=1e-10
    )
    # far from all draws: the direct density underflows, logsumexp stays finite
    far = mixture_log_likelihood(np.array([1e3]), np.zeros((10, 1)), 1.0)
    assert far[0] == pytest.approx(-0.5 * 1e6 - 0.5 * math.log(2 * math.pi))


def test_crps_closed_forms() -> None:
    # CRPS(N(0,1), 0) = 2 phi(0) - 1/sqrt(pi) = (sqrt 2 - 1)/sqrt(pi)
    assert crps_gaussian([0.0], [0.0], [1.0])[0] == pytest.approx(
        (math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-12
    )
    # scale equivariance: CRPS(N(m, s^2), m) = s (sqrt 2 - 1)/sqrt(pi)
    assert crps_gaussian([5.0], [5.0], [3.0])[0] == pytest.approx(
        3 * (math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-12
    )
    # tiny spread -> absolute error
    assert crps_gaussian([2.0], [0.5], [1e-9])[0] == pytest.approx(1.5, rel=1e-6)


def test_crps_matches_naive_integral() -> None:
    # CRPS = integral (F(x) - 1[x >= y])^2 dx, by the trapezoid rule
    y, m, s = 0.7, -0.2, 1.3

    def trapezoid(lo: float, hi: float, step: float) -> float:
        x = np.linspace(lo, hi, 100_001)
        cdf = torch.special.ndtr(torch.from_numpy((x - m) / s)).numpy()
        f = (cdf - step) ** 2
        return float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(x)))

    # split at y, where the step function jumps, so the rule sees smooth pieces
    ref = trapezoid(m - 12 * s, y, 0.0) + trapezoid(y, m + 12 * s, 1.0)
    assert crps_gaussian([y], [m], [s])[0] == pytest.approx(ref, rel=1e-5)


def test_interval_coverage_exact_and_calibrated() -> None:
    # +-1.96 sd holds 95%: points at 1.9 sd are inside, 2.0 sd outside
    cov = interval_coverage([1.9, 2.0], [0.0, 0.0], [1.0, 1.0], levels=[0.95])
    assert cov == {0.95: 0.5}
    rng = np.random.default_rng(1)
    y = rng.normal(size=20_000)
    nominal, observed = coverage_curve(y, np.zeros_like(y), np.ones_like(y))
    assert nominal[0] == pytest.approx(0.05) and nominal[-1] == pytest.approx(0.95)
    np.testing.assert_allclose(observed, nominal, atol=0.015)


def test_ece_brier_reliability_closed_forms() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins of width 0.1: conf 0.9 (2 rows, acc 0.5) -> bin 9; 0.6 -> bin 6; 0.7 -> bin 7
    rc = reliability_curve(probs, labels, bins=10)
    assert rc["counts"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 2]
    assert rc["accuracy"][9] == 0.5 and rc["confidence"][9] == pytest.approx(0.9)
    assert np.isnan(rc["accuracy"][0])
    ece = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(ece)
    brier = (2 * 0.01 + 2 * 0.81 + 2 * 0.16 + 2 * 0.09) / 4
    assert brier_score(probs, labels) == pytest.approx(brier)
    # perfect one-hot predictions
    eye = np.eye(3)
    assert brier_score(eye, [0, 1, 2]) == 0.0
    assert expected_calibration_error(eye, [0, 1, 2]) == 0.0


def test_fit_tau_recovers_noise_precision() -> None:
    rng = np.random.default_rng(2)
    n, t = 4000, 30
    f = rng.normal(size=n)
    draws = f[None] + 0.01 * rng.normal(size=(t, n))  # nearly certain model
    y = f + rng.normal(scale=0.5, size=n)  # noise precision 4
    for method in ("mixture", "gaussian"):
        tau = fit_tau(y, draws, method=method)
        assert tau == pytest.approx(4.0, rel=0.08), method
    # the fitted tau is (locally) optimal
    tau = fit_tau(y, draws)
    best = mixture_log_likelihood(y, draws, tau).mean()
    for other in (tau * 0.9, tau * 1.1):
        assert mixture_log_likelihood(y, draws, other).mean() < best


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rmse([1.0, 2.0], [1.0]), "shapes must match"),
        (lambda: rmse([1.0, float("nan")], [1.0, 2.0]), "y contains 1 NaN"),
        (lambda: gaussian_nll([0.0], [0.0], [0.0]), "std must be > 0"),
        (lambda: crps_gaussian([0.0], [0.0], [-1.0]), "std must be > 0"),
        (lambda: mixture_log_likelihood([0.0, 1.0], np.zeros((3, 4)), 1.0), "draws must be"),
        (lambda: mixture_log_likelihood([0.0], np.zeros((3, 1)), -1.0), "tau must be"),
        (lambda: mixture_log_likelihood([0.0], np.full((3, 1), np.inf), 1.0), "Inf"),
        (lambda: interval_coverage([0.0], [0.0], [1.0], levels=[1.0]), "strictly between"),
        (lambda: brier_score([[0.5, 0.6]], [0]), "sum to 1"),
        (lambda: brier_score([[0.5, 0.5]], [2]), r"labels must be integers in \[0, 1\]"),
        (lambda: expected_calibration_error([0.5, 0.5], [0]), r"shaped \(N, C\)"),
        (lambda: reliability_curve([[0.5, 0.5]], [0, 1]), "labels must be shaped"),
        (lambda: reliability_curve([[0.5, 0.5]], [0], bins=0), "bins must be"),
        (lambda: fit_tau([0.0], np.zeros((2, 1)), method="median"), "method must be"),
        (lambda: rmse([], []), "empty"),
    ],
)
def test_typed_errors(call, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-50, 50), min_size=1, max_size=8),
    st.floats(0.05, 20),
    st.floats(0.05, 20),
)
def test_invariants(ys: list[float], s: float, tau: float) -> None:
    y = np.array(ys)
    crps = crps_gaussian(y, np.zeros_like(y), np.full_like(y, s))
    assert (crps >= 0).all()
    # CRPS <= E|X - y| (it subtracts half the spread term), and E|X - y| <= |y| + s sqrt(2/pi)
    assert (crps <= np.abs(y) + s * math.sqrt(2 / math.pi) + 1e-9).all()
    # a mixture of identical components is that component; the mixture of T draws is
    # bounded above by its best component
    draws = np.stack([y + 0.3, y - 0.3])
    mix = mixture_log_likelihood(y, draws, tau)
    one = mixture_log_likelihood(y, draws[:1], tau)
    assert np.allclose(mix, one)
