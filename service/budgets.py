"""Per-request budgets, checked before a request is queued (issue 18 items 2 and 3).

Two things a request can make the server do are bounded up front, from what the request
says and what the server knows about the model:

- **Compute**: rows x samples x the model's cost per row-sample, measured at warm-up
  (:func:`measure_budget`). Over the model's ``max_compute_seconds`` (``model.toml``), or
  ``MCDROP_MAX_COMPUTE_S`` when it sets none: 422 naming the limit.
- **Answer size**: an upper bound on the bytes of the answer, from the rows, the output
  shape, the statistics asked for and their encoding (:func:`v1_answer_bytes`,
  :func:`v2_answer_bytes`). Over ``MCDROP_MAX_RESPONSE_BYTES``: 422 naming the limit.

The bounds are upper bounds (the tests check that real answers stay below them): a JSON
number is at most 24 characters plus a separator (float64, e.g.
``-2.2250738585072014e-308``), 15 plus one as float32; binary numbers are 4 or 8 bytes.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mcdrop.manifest import Manifest
from service.errors import Unprocessable
from service.settings import Settings

__all__ = [
    "ComputeBudget",
    "PER_ROW_FIELDS",
    "measure_cost",
    "measure_budget",
    "check_answer_size",
    "v1_answer_bytes",
    "v2_answer_bytes",
]

PER_ROW_FIELDS = ("predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio")
"""Statistics with one number per row (B,); the others have the output's shape (B, *O)."""

JSON_NUMBER_BYTES = {"FP32": 16, "FP64": 25}  # longest number written, plus a separator
BINARY_NUMBER_BYTES = {"FP32": 4, "FP64": 8}
_FIXED_BYTES = 4096  # names, version, seed, keys and the like: small and bounded
_PER_OUTPUT_BYTES = 256  # one v2 output's name, datatype, shape and parameters
_ESCAPED = 6  # a string character written as \uXXXX at worst


class ModelRuntime(Protocol):
    """What the budgets read of a :class:`service.runtime.ModelRuntime` (which imports
    this module)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def settings(self) -> Settings: ...

    def output_fields(self) -> tuple[str, ...]: ...


# ------------------------------------------------------------------------------ compute


@dataclass(frozen=True)
class ComputeBudget:
    """A model's compute budget per request.

    Attributes
    ----------
    seconds_per_unit : float
        Engine seconds per row-sample (one row through one sampled subnetwork), measured.
    max_seconds : float
        The most engine time one request may need.
    source : str
        Where ``max_seconds`` comes from (named in the 422).
    """

    seconds_per_unit: float
    max_seconds: float
    source: str

    @property
    def max_units(self) -> int:
        """Most row-samples (rows x samples) one request may ask for."""
        return max(1, int(self.max_seconds / self.seconds_per_unit))

    def estimate(self, rows: int, samples: int) -> float:
        """Estimated engine seconds of a request of ``rows`` rows and ``samples`` samples."""
        return rows * samples * self.seconds_per_unit

    def check(self, model: str, rows: int, samples: int) -> None:
        """422 when the request is over budget; nothing otherwise.

        Raises
        ------
        Unprocessable
            rows x samples is more than :attr:`max_units`.
        """
        units = rows * samples
        if units <= self.max_units:
            return
        raise Unprocessable(
            f"this request needs about {self.estimate(rows, samples):,.1f} s of compute "
            f"({rows:,} rows x {samples:,} samples at {self.seconds_per_unit * 1e6:.3g} us "
            f"per row-sample, measured at warm-up); model '{model}' allows "
            f"{self.max_seconds:g} s per request ({self.source}), that is "
            f"{self.max_units:,} row-samples: send fewer rows or samples, or split the request"
        )

    def describe(self) -> dict[str, Any]:
        """The budget as plain data (model metadata)."""
        return {
            "max_compute_seconds": self.max_seconds,
            "seconds_per_row_sample": self.seconds_per_unit,
            "max_row_samples": self.max_units,
        }


def measure_cost(
    run: Callable[[int, int], Any],
    rows: int,
    max_samples: int,
    chunk_rows: int,
    max_run_s: float = 0.25,
    repeats: int = 2,
) -> float:
    """Seconds per row-sample of ``run(rows, samples)`` (a prediction), measured on one
    full forward chunk: the size large requests run in, where the fixed cost of a call is
    a small share.

    The sample count grows four-fold from 4 up to the samples of one chunk
    (``chunk_rows // rows``, at most ``max_samples``), or until a call takes
    ``max_run_s`` (a slow model is measured on a smaller call); that size then runs
    ``repeats`` times and the fastest counts (a thread descheduled for a time slice would
    otherwise look slow). Small requests are over-estimated, the safe side; a machine busy
    at warm-up measures a higher cost, so a stricter budget.
    """
    full = max(1, min(max_samples, chunk_rows // rows))
    samples = min(4, full)

    def timed() -> float:
        t0 = time.perf_counter()
        run(rows, samples)
        return time.perf_counter() - t0

    elapsed = timed()
    while samples < full and elapsed < max_run_s:
        samples = min(full, samples * 4)
        elapsed = timed()
    for _ in range(repeats - 1):
        elapsed = min(elapsed, timed())
    return max(elapsed, 1e-9) / (rows * samples)


def measure_budget(model: ModelRuntime, predictor: Any) -> ComputeBudget:
    """The compute budget of ``model``, its cost measured on ``predictor`` with rows of
    zeros (the warm-up's input)."""
    m = model.manifest
    rows = min(m.max_batch_rows, 16)
    x = np.zeros((rows, *m.input_shape), dtype=np.dtype(m.input_dtype))
    chunk = int(predictor.describe(x)["max_rows"])

    def run(r: int, s: int) -> None:
        predictor.predict(x[:r], samples=s, seed=0)

    cost = measure_cost(run, rows, m.max_samples, chunk)
    if m.max_compute_seconds is not None:
        return ComputeBudget(cost, m.max_compute_seconds, "max_compute_seconds in model.toml")
    return ComputeBudget(cost, model.settings.max_compute_s, "MCDROP_MAX_COMPUTE_S")


# ------------------------------------------------------------------------------ answer size


def _numbers(model: ModelRuntime, name: str) -> int:
    """Numbers per row of statistic ``name``."""
    return 1 if name in PER_ROW_FIELDS else math.prod(model.manifest.output_shape)


@functools.lru_cache(maxsize=256)
def _v1_layout(output_shape: tuple[int, ...], fields: tuple[str, ...]) -> tuple[int, int, int]:
    """(fixed bytes, bytes per row, bytes per row of one draw) of a v1 answer with ``fields``
    of a model with ``output_shape``: float64 numbers as nested lists, whose nesting costs
    ``[`` ``]`` ``,`` per level. Computed once per model (it is checked on every request)."""
    per_number = JSON_NUMBER_BYTES["FP64"]
    out = math.prod(output_shape)
    level = 3 * (1 + len(output_shape))
    fixed, per_row = _FIXED_BYTES, 0
    for name in fields:
        fixed += 64
        per_row += per_number + 3 if name in PER_ROW_FIELDS else out * per_number + level
    return fixed, per_row, out * per_number + level


def v1_answer_bytes(model: ModelRuntime, rows: int, samples: int, draws: bool) -> int:
    """Upper bound of the bytes of a v1 answer (float64 numbers as nested lists)."""
    fixed, per_row, per_draw_row = _v1_layout(model.manifest.output_shape, model.output_fields())
    size = fixed + rows * per_row
    if draws:
        size += samples * (3 + rows * per_draw_row)
    return size


def v2_answer_bytes(
    model: ModelRuntime, rows: int, names: Iterable[str], binary: Callable[[str], bool],
    datatype: str, id_chars: int,
) -> int:  # fmt: skip
    """Upper bound of the bytes of a v2 answer: outputs ``names`` of ``datatype`` (FP32 or
    FP64), flat data in JSON or, where ``binary(name)``, raw bytes; the echoed id."""
    size = _FIXED_BYTES + _ESCAPED * id_chars
    for name in names:
        per_number = (BINARY_NUMBER_BYTES if binary(name) else JSON_NUMBER_BYTES)[datatype]
        size += _PER_OUTPUT_BYTES + rows * _numbers(model, name) * per_number
    return size


def check_answer_size(model: ModelRuntime, size: int) -> None:
    """422 when an answer of up to ``size`` bytes is more than ``MCDROP_MAX_RESPONSE_BYTES``.

    Raises
    ------
    Unprocessable
        The bound is over the limit.
    """
    limit = model.settings.max_response_bytes
    if size > limit:
        raise Unprocessable(
            f"the answer could take up to {size:,} bytes (rows x outputs x statistics in "
            f"this encoding); the limit is {limit:,} bytes (MCDROP_MAX_RESPONSE_BYTES): "
            "ask for fewer rows, outputs or draws, or binary outputs"
        )
