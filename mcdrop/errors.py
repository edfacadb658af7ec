"""The mcdrop exception tree.

Every error mcdrop raises on purpose derives from :class:`McdropError`; the ones caused by
bad input are also ``ValueError`` so that generic code keeps working::

    McdropError
    ├── InvalidInputError (ValueError)       empty / non-finite / wrongly shaped input, bad S
    ├── NoDropoutError (ValueError)          MC sampling of a model without dropout
    ├── UnsupportedModelError (ValueError)   a dropout site mcdrop cannot key per row
    ├── ModelOutputError (ValueError)        the model returned non-finite or unusable output
    ├── ManifestError (ValueError)           a model folder's model.toml is wrong
    ├── WeightsError (ValueError)            weights missing or not matching the architecture
    └── DataError (ValueError)               a data file with wrong columns, NaNs, ...

The service maps this tree to HTTP status codes in one place (``service/errors.py``).
"""

from __future__ import annotations

__all__ = [
    "McdropError",
    "InvalidInputError",
    "NoDropoutError",
    "UnsupportedModelError",
    "ModelOutputError",
    "ManifestError",
    "WeightsError",
    "DataError",
]


class McdropError(Exception):
    """Base class of every error raised by mcdrop on purpose."""


class InvalidInputError(McdropError, ValueError):
    """The input cannot be predicted on (empty, non-finite, wrong shape, bad sample count)."""


class NoDropoutError(McdropError, ValueError):
    """The model has no dropout, so MC sampling would report zero variance."""


class UnsupportedModelError(McdropError, ValueError):
    """The model uses dropout in a way mcdrop cannot sample reproducibly."""


class ModelOutputError(McdropError, ValueError):
    """The model returned something mcdrop cannot summarise (NaN/Inf, wrong structure)."""


class ManifestError(McdropError, ValueError):
    """A model repository manifest is missing, malformed or inconsistent."""


class WeightsError(McdropError, ValueError):
    """Model weights are missing or do not match the architecture."""


class DataError(McdropError, ValueError):
    """A data file cannot be used (wrong column count, NaNs, unreadable)."""
