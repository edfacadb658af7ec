"""Invariants of the MC summaries under hypothesis-generated models and inputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.tolerance import assert_close_f32, value_scale
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mcdrop import MCDropout, MCPredictor

dims = st.integers(min_value=1, max_value=6)


@settings(max_examples=25, deadline=None)
@given(
    n_in=dims,
    hidden=dims,
    n_out=dims,
    batch=st.integers(1, 5),
    p=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**40),
    samples=st.integers(1, 40),
    classify=st.booleans(),
)
def test_summaries_are_well_formed(
    n_in: int,
    hidden: int,
    n_out: int,
    batch: int,
    p: float,
    seed: int,
    samples: int,
    classify: bool,
) -> None:
    g = torch.Generator().manual_seed(seed % 2**31)
    model = nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), MCDropout(p), nn.Linear(hidden, n_out)
    )
    x = torch.randn(batch, n_in, generator=g) * 2
    task = "classification" if classify else "regression"
    out = MCPredictor(model, samples=samples, task=task).predict(x, seed=seed)
    assert (out.variance >= 0).all()
    assert out.mean.shape == (batch, n_out)
    if samples == 1:
        assert torch.equal(
            out.variance - (out.aleatoric_variance if not classify else 0),
            torch.zeros_like(out.variance),
        )
    if classify:
        assert torch.allclose(out.probs.sum(-1), torch.ones(batch, dtype=torch.float64))
        assert (out.mutual_information >= 0).all()
        assert torch.allclose(
            out.predictive_entropy, out.expected_entropy + out.mutual_information, atol=1e-9
        )
        assert ((out.variation_ratio >= 0) & (out.variation_ratio <= 1)).all()


@pytest.mark.slow  # 15 examples of two predictors each
@settings(max_examples=15, deadline=None)
@given(batch=st.integers(2, 6), seed=st.integers(0, 2**62), chunk=st.integers(1, 30))
def test_batched_equals_looped(batch: int, seed: int, chunk: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), MCDropout(0.3), nn.Linear(8, 2))
    x = torch.randn(batch, 3)
    batched = MCPredictor(model, samples=12, max_rows=chunk).predict(x, seed=seed)
    looped = torch.cat(
        [MCPredictor(model, samples=12).predict(x[i : i + 1], seed=seed).mean for i in range(batch)]
    )
    # one row alone vs in a chunk of others: other GEMM shapes, float32 rounding
    assert_close_f32(batched.mean, looped, scale=value_scale(batched.mean, batched.variance))


@pytest.mark.slow  # a fresh interpreter importing torch
def test_core_imports_no_http_stack() -> None:
    code = (
        "import sys, mcdrop, mcdrop.layers, mcdrop.predictor, mcdrop.engine.predictor,"
        " mcdrop.fields, mcdrop.stats;"
        "bad = [m for m in ('fastapi', 'pydantic', 'httpx', 'starlette', 'uvicorn', 'service')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow  # a fresh interpreter
def test_client_and_schemas_import_without_torch() -> None:
    code = (
        "import sys, mcdrop, mcdrop.client, mcdrop.schemas;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, "importing mcdrop.client pulled in torch"
