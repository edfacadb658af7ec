"""User inputs to checked tensors: the engine's one place for input and seed checks.

Shapes: B rows, ``...`` one row's shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from mcdrop.errors import InvalidInputError
from mcdrop.fields import check_seed, draw_seed

__all__ = ["as_tensor", "checked", "seed_of", "model_rejects_inputs"]


def seed_of(seed: Any) -> int:
    """The seed of a call: ``seed`` checked, or a fresh one when it is None."""
    return draw_seed() if seed is None else check_seed(seed)


def as_tensor(x: Any) -> torch.Tensor:
    """``x`` as a tensor of at least one row (B, ...), not yet checked for finite values.

    Raises
    ------
    InvalidInputError
        Object or boolean arrays, ragged lists, non-arrays, zero rows.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise InvalidInputError("inputs must be numeric, got an object array")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"inputs must be a rectangular numeric array: {exc}") from exc
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"inputs must be a tensor or array, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise InvalidInputError(f"inputs must hold at least one row, got shape {tuple(x.shape)}")
    if x.dtype == torch.bool:
        raise InvalidInputError("inputs must be numeric, got booleans")
    return x


def checked(x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Finite rows of ``x`` (B, ...), floats cast to ``dtype``, on ``device``.

    Raises
    ------
    InvalidInputError
        Naming the rows that hold NaN or Inf.
    """
    if x.is_floating_point():
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)  # (B,)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            raise InvalidInputError(f"inputs contain NaN or Inf in rows {shown}")
        if x.dtype != dtype and dtype.is_floating_point:
            x = x.to(dtype)
    return x.to(device)


@contextmanager
def model_rejects_inputs() -> Iterator[None]:
    """An IndexError from the model's forward is a problem of the inputs (token ids outside
    an embedding's vocabulary, class indices out of range): say so as InvalidInputError."""
    try:
        yield
    except IndexError as exc:
        raise InvalidInputError(
            f"the model could not index with these inputs ({exc}); if they are ids or "
            "indices, check that every value is within the model's range"
        ) from exc
