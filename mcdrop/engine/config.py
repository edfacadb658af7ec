"""The engine's options: one frozen dataclass, validated once, with string enums.

Every option check lives here, so the facade, the shard replicas and the repository all
see the same rules and error messages.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import torch

from mcdrop.errors import InvalidInputError
from mcdrop.fields import check_samples

__all__ = ["Task", "Precision", "SplitMode", "EngineConfig"]


class _Choice(str, Enum):
    """A string enum whose members print as their value (``f"{Task.REGRESSION}"``)."""

    def __str__(self) -> str:
        return str(self.value)


class Task(_Choice):
    """What the model predicts: regression outputs or classification logits."""

    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class Precision(_Choice):
    """Autocast precision of the forward passes (statistics are always float64)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class SplitMode(_Choice):
    """Whether to run the deterministic prefix once per call ("auto") or never ("off")."""

    AUTO = "auto"
    OFF = "off"


_E = TypeVar("_E", bound=Enum)


def _member(kind: type[_E], value: Any, message: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise InvalidInputError(f"{message}, got {value!r}") from None


@dataclass(frozen=True)
class EngineConfig:
    """The options of an :class:`~mcdrop.MCPredictor`; see its docstring for each one.

    Construction checks every field and converts strings to the enums, so code holding a
    config never re-checks it.
    """

    samples: int = 100
    task: Task = Task.REGRESSION
    tau: float | None = None
    max_rows: int | None = None
    precision: Precision = Precision.FP32
    split: SplitMode = SplitMode.AUTO
    max_samples: int = 10_000
    compile: bool = False

    def __post_init__(self) -> None:
        task = _member(Task, self.task, "task must be 'regression' or 'classification'")
        precision = _member(Precision, self.precision, "precision must be fp32, bf16 or fp16")
        split = _member(SplitMode, self.split, "split must be 'auto' or 'off'")
        tau = self.tau
        if tau is not None and not (
            isinstance(tau, (int, float)) and not isinstance(tau, bool)
            and tau > 0 and math.isfinite(tau)
        ):  # fmt: skip
            raise InvalidInputError(f"tau must be a positive finite number, got {tau!r}")
        if self.max_rows is not None:
            check_samples(self.max_rows, "max_rows")
        if not isinstance(self.compile, bool):
            raise InvalidInputError(f"compile must be True or False, got {self.compile!r}")
        # frozen: the checked values go in through object.__setattr__, once.
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "precision", precision)
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "tau", None if tau is None else float(tau))
        object.__setattr__(self, "samples", check_samples(self.samples))
        object.__setattr__(self, "max_samples", check_samples(self.max_samples, "max_samples"))

    def sample_count(self, samples: Any) -> int:
        """S for a call: the default when None, else ``samples`` within [1, max_samples]."""
        if samples is None:
            return self.samples
        return check_samples(samples, maximum=self.max_samples)

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """The autocast context of the forward passes on ``device``."""
        if self.precision is Precision.FP32:
            return nullcontext()
        dtype = torch.bfloat16 if self.precision is Precision.BF16 else torch.float16
        return torch.autocast(device.type, dtype=dtype)
