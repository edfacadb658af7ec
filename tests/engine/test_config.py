"""EngineConfig: options checked once, strings become enums that still compare as strings."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from mcdrop import InvalidInputError, MCDropout, MCPredictor
from mcdrop.engine.config import EngineConfig, Precision, SplitMode, Task


def test_strings_become_enums_equal_to_the_strings() -> None:
    c = EngineConfig(task="classification", precision="bf16", split="off")  # type: ignore[arg-type]
    assert c.task is Task.CLASSIFICATION and c.task == "classification"
    assert c.precision is Precision.BF16 and f"{c.precision}" == "bf16"
    assert c.split is SplitMode.OFF and str(c.split) == "off"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("task", "regresion", "task must be 'regression' or 'classification', got 'regresion'"),
        ("precision", "fp64", "precision must be fp32, bf16 or fp16, got 'fp64'"),
        ("split", "on", "split must be 'auto' or 'off', got 'on'"),
        ("tau", -1.0, "tau must be a positive finite number, got -1.0"),
        ("tau", float("inf"), "tau must be a positive finite number"),
        ("max_rows", 0, "max_rows must be at least 1, got 0"),
        ("samples", 1.5, "samples must be a positive integer, got 1.5"),
        ("max_samples", 0, "max_samples must be at least 1"),
    ],
)
def test_bad_options_are_refused_by_name(option: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        EngineConfig(**{option: value})  # type: ignore[arg-type]
    assert message in str(err.value)
    model = nn.Sequential(nn.Linear(2, 2), MCDropout(0.2))
    with pytest.raises(InvalidInputError):  # the predictor checks through the same config
        MCPredictor(model, **{option: value})  # type: ignore[arg-type]


def test_config_is_frozen_and_sample_count_is_bounded() -> None:
    c = EngineConfig(samples=10, max_samples=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.samples = 5  # type: ignore[misc]
    assert c.sample_count(None) == 10 and c.sample_count(20) == 20
    with pytest.raises(InvalidInputError, match="samples must be at most 20, got 21"):
        c.sample_count(21)
