"""The one vocabulary of statistic names, and the checks every layer shares.

Torch-free and pydantic-free, so the engine, the wire schemas, the client and the service
codecs all import it. A new statistic is one line here and one summary method in the
engine; the test ``tests/engine/test_fields.py`` keeps :class:`mcdrop.Prediction`, the wire
schemas and the client result class in agreement with these tuples.
"""

from __future__ import annotations

import numbers
import secrets

from mcdrop.errors import InvalidInputError

__all__ = [
    "COMMON_FIELDS",
    "REGRESSION_FIELDS",
    "CLASSIFICATION_FIELDS",
    "STATISTIC_FIELDS",
    "MAX_SEED",
    "check_seed",
    "check_samples",
    "draw_seed",
]

COMMON_FIELDS: tuple[str, ...] = ("mean", "variance", "std", "stderr")
"""Statistics of every task, each shaped (B, *O)."""

REGRESSION_FIELDS: tuple[str, ...] = ("epistemic_variance", "aleatoric_variance")
"""Regression only: the variance split into model and noise parts, (B, *O)."""

CLASSIFICATION_FIELDS: tuple[str, ...] = (
    "probs",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
)
"""Classification only: probabilities (B, C) and four per-row scores (B,)."""

STATISTIC_FIELDS: tuple[str, ...] = COMMON_FIELDS + REGRESSION_FIELDS + CLASSIFICATION_FIELDS
"""Every statistic a prediction can carry, in wire order."""

MAX_SEED = 2**63 - 1
"""Largest seed accepted (seeds are in [0, 2**63 - 1])."""


def _is_int(value: object) -> bool:
    # bool is an Integral too, but ``seed=True`` is a mistake, not the seed 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed: object) -> int:
    """The seed as a Python int.

    Raises
    ------
    InvalidInputError
        When ``seed`` is not an integer (``bool`` included) or outside [0, MAX_SEED].
    """
    if not _is_int(seed):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}")
    value = int(seed)  # type: ignore[call-overload]
    if not 0 <= value <= MAX_SEED:
        raise InvalidInputError(f"seed must be in [0, 2**63 - 1], got {value}")
    return value


def draw_seed() -> int:
    """A fresh random seed for an unseeded call (62 bits, well inside [0, MAX_SEED])."""
    return secrets.randbits(62)


def check_samples(samples: object, name: str = "samples", maximum: int | None = None) -> int:
    """A sample count as a Python int in [1, maximum].

    Parameters
    ----------
    samples : object
        The count to check.
    name : str
        How error messages name it (``samples``, ``max_samples``, ``mc_samples``, ...).
    maximum : int, optional
        Upper bound, inclusive; no bound when None.

    Raises
    ------
    InvalidInputError
        When ``samples`` is not a positive integer (``bool`` included) or above ``maximum``.
    """
    if not _is_int(samples):
        raise InvalidInputError(f"{name} must be a positive integer, got {samples!r}")
    value = int(samples)  # type: ignore[call-overload]
    if value < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum}, got {value}")
    return value
