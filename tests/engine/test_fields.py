"""One vocabulary of statistic names: the engine's Prediction, the wire schema and the
client's result class carry exactly the names of mcdrop.fields, in the same order; the
shared seed and sample-count checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mcdrop import InvalidInputError, MCDropout, MCPredictor, Prediction
from mcdrop._client_core import PredictResult
from mcdrop.fields import (
    CLASSIFICATION_FIELDS,
    COMMON_FIELDS,
    MAX_SEED,
    REGRESSION_FIELDS,
    STATISTIC_FIELDS,
    check_samples,
    check_seed,
)
from mcdrop.schemas import PredictRequest, PredictResponse


def _statistics(names: list[str]) -> list[str]:
    """The names among ``names`` that belong to the statistic vocabulary's slots: every
    name except the ones that describe the call (model, samples, seed, ...)."""
    meta = {"task", "model", "samples", "samples_per_row", "seed", "draws", "exact", "raw"}
    return [n for n in names if n not in meta]


def test_the_three_groups_partition_the_vocabulary() -> None:
    groups = [COMMON_FIELDS, REGRESSION_FIELDS, CLASSIFICATION_FIELDS]
    assert sum(len(g) for g in groups) == len(set(STATISTIC_FIELDS)) == len(STATISTIC_FIELDS)
    assert STATISTIC_FIELDS == COMMON_FIELDS + REGRESSION_FIELDS + CLASSIFICATION_FIELDS


def test_prediction_schema_and_client_agree_with_the_vocabulary() -> None:
    engine = _statistics([f.name for f in dataclasses.fields(Prediction)])
    wire = _statistics(list(PredictResponse.model_fields))
    client = _statistics([f.name for f in dataclasses.fields(PredictResult)])
    assert engine == wire == client == list(STATISTIC_FIELDS)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_prediction_fills_exactly_its_tasks_statistics(task: str) -> None:
    width = 3 if task == "classification" else 1
    model = nn.Sequential(nn.Linear(2, 6), MCDropout(0.3), nn.Linear(6, width))
    out = MCPredictor(model, samples=8, task=task).predict(torch.randn(4, 2), seed=1)  # type: ignore[arg-type]
    extra = CLASSIFICATION_FIELDS if task == "classification" else REGRESSION_FIELDS
    filled = [n for n in STATISTIC_FIELDS if getattr(out, n) is not None]
    assert filled == [n for n in STATISTIC_FIELDS if n in COMMON_FIELDS + extra]
    assert out.task == task and type(out.task) is str  # a plain string, as before


def test_schema_seed_bound_is_the_shared_one() -> None:
    PredictRequest.model_validate({"inputs": [[0.0]], "seed": MAX_SEED})
    with pytest.raises(ValueError):
        PredictRequest.model_validate({"inputs": [[0.0]], "seed": MAX_SEED + 1})
    assert check_seed(MAX_SEED) == MAX_SEED
    with pytest.raises(InvalidInputError, match=r"\[0, 2\*\*63 - 1\]"):
        check_seed(MAX_SEED + 1)


@pytest.mark.parametrize("bad", [True, 1.0, "3", None, -1])
def test_seed_check_refuses_non_integers_and_negatives(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="seed must be"):
        check_seed(bad)


def test_sample_count_check() -> None:
    assert check_samples(np.int64(5)) == 5 and type(check_samples(np.int64(5))) is int
    assert check_samples(7, maximum=7) == 7
    for bad, why in [(0, "at least 1"), (True, "positive integer"), (2.0, "positive integer")]:
        with pytest.raises(InvalidInputError, match=why):
            check_samples(bad)
    with pytest.raises(InvalidInputError, match="mc_samples must be at most 7, got 8"):
        check_samples(8, "mc_samples", maximum=7)
