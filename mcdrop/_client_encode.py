"""Encoding predict requests for :mod:`mcdrop.client`: inputs (numbers, token ids or texts)
and the options, checked before anything is sent. Transport-free, like
:mod:`mcdrop._client_core`; import the public names from :mod:`mcdrop.client`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from mcdrop._client_core import InputError
from mcdrop.errors import InvalidInputError
from mcdrop.fields import check_samples, check_seed
from mcdrop.schemas import PredictRequest

__all__ = ["as_array", "predict_body"]

# Non-finite rows named in an InputError message; the rest are counted.
_MAX_ROWS_NAMED = 10


def as_array(inputs: Any) -> np.ndarray:
    """Inputs (nested lists, ndarray, torch tensor, anything with __array__) as a wire array.

    Integer inputs (Python ints, numpy or torch integer dtypes) become int64 and are sent as
    JSON integers, so token-id models (``input_dtype = "int64"``) can be queried; every
    other numeric input becomes float64. A float array is sent as floats even when its
    values are whole: the server, not the client, decides whether a model takes them.

    Returns
    -------
    ndarray (B, *F)
        int64 or float64.

    Raises
    ------
    InputError
        Ragged, non-numeric, boolean, empty or non-finite inputs (non-finite rows are
        named), and integers outside the int64 range.
    """
    if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):  # a torch tensor, duck-typed
        inputs = inputs.detach().cpu().numpy()
    try:
        arr = np.asarray(inputs)
    except (ValueError, OverflowError) as exc:  # ragged nested lists
        raise InputError(f"inputs are not a rectangular array: {exc}") from exc
    # numpy turns [[True, 2]] into int64 and [[1, 2**63]] into float64 silently; a bool
    # among numbers is a mistake (the server refuses JSON true/false as numbers) and a
    # rounded id is a wrong id, so both are refused here with a reason.
    problem = _scan(inputs) if isinstance(inputs, (list, tuple)) else None
    if arr.dtype.kind == "b" or problem == "bool":
        raise InputError("inputs hold booleans: send numbers (0/1 as integers) instead")
    if problem == "big":
        raise InputError(
            "inputs hold integers outside the int64 range [-2**63, 2**63 - 1] "
            "(the widest integer a model input can take)"
        )
    if arr.dtype.kind not in "iuf":
        raise InputError(
            f"inputs must be int or float numbers with rows of equal length (got dtype {arr.dtype})"
        )
    if arr.ndim == 0:
        raise InputError("inputs must be a batch of rows, got a single number")
    if arr.shape[0] == 0:
        raise InputError("inputs are empty: send at least one row")
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64_MAX:
            raise InputError(
                f"inputs hold the integer {int(arr.max())}, above the int64 maximum 2**63 - 1"
            )
        return arr.astype(np.int64, copy=False)
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)  # (B,)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(int(i)) for i in bad[:_MAX_ROWS_NAMED])
        more = f" and {len(bad) - _MAX_ROWS_NAMED} more" if len(bad) > _MAX_ROWS_NAMED else ""
        raise InputError(f"inputs contain NaN or infinite values in row(s) {shown}{more}")
    return arr


_INT64_MAX = int(np.iinfo(np.int64).max)


def _scan(value: list[Any] | tuple[Any, ...]) -> str | None:
    """``"bool"`` or ``"big"`` (an int outside int64) if nested lists hold one, else None.

    Iterative, so deep nesting cannot reach the recursion limit.
    """
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, (bool, np.bool_)):
            return "bool"
        elif isinstance(v, int) and not -_INT64_MAX - 1 <= v <= _INT64_MAX:
            return "big"
    return None


def _texts(inputs: Any) -> list[str] | None:
    """Raw texts (a list of strings, one per row, for a model with a tokenizer), else None."""
    if not isinstance(inputs, (list, tuple)) or not inputs or not isinstance(inputs[0], str):
        return None
    if not all(isinstance(t, str) for t in inputs):
        raise InputError("inputs mix texts and numbers: send one text per row, or numbers only")
    return list(inputs)


def _checked(check: Any, value: Any, name: str) -> int:
    """A :mod:`mcdrop.fields` check whose error is raised as this module's InputError."""
    try:
        return int(check(value, name) if name else check(value))
    except InvalidInputError as exc:
        raise InputError(str(exc)) from exc


def predict_body(
    inputs: Any,
    samples: int | None,
    seed: int | None,
    return_samples: bool,
    bitwise: bool = False,
) -> bytes:
    """The JSON body of ``POST /v1/models/{name}/predict``, inputs encoded on a fast path.

    Integer inputs are written as JSON integers, floats as JSON floats (see
    :func:`as_array`).
    """
    if return_samples and "return_samples" not in PredictRequest.model_fields:
        raise InputError(
            "return_samples=True: the v1 predict API of this mcdrop version cannot return "
            "the raw Monte Carlo draws"
        )
    texts = _texts(inputs)
    payload: dict[str, Any] = {"inputs": as_array(inputs) if texts is None else texts}
    if samples is not None:
        payload["samples"] = _checked(check_samples, samples, "samples")
    if seed is not None:
        payload["seed"] = _checked(check_seed, seed, "")
    if return_samples:
        payload["return_samples"] = True
    if bitwise:
        payload["bitwise"] = True
    # orjson writes numpy arrays itself (C-contiguous, native-endian ones), about 10x faster
    # than tolist() + json; int64 arrays become JSON integers, float64 ones JSON floats;
    # non-finite values were rejected above.
    if texts is None:
        payload["inputs"] = np.ascontiguousarray(payload["inputs"])
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
