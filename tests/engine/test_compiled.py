"""The compiled stochastic suffix (issue 19): same masks as the eager keyed engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tolerance import assert_close_f32, assert_stats_close_f32
from torch import nn

from mcdrop import InvalidInputError, MCDropout, MCPredictor, MCRequest
from mcdrop._sampling import SamplingContext, sampling
from mcdrop.engine.compiled import CompiledSuffix, explicit_dropout, rewrite
from mcdrop.engine.masks import unit_keys


class Functional(nn.Module):
    """Dropout as F.dropout inside a custom module, gated on training as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.a(x)), 0.3, self.training)
        return self.b(h)


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), MCDropout(0.2),
        nn.Linear(32, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 3),
    )  # fmt: skip


def eager_keyed(model: nn.Module, x: torch.Tensor, keys: torch.Tensor, row_unit: torch.Tensor):
    ctx = SamplingContext(mode="keyed", keys=keys, row_unit=row_unit)
    with torch.no_grad(), sampling(ctx):
        return model(x)


@pytest.mark.parametrize("build", [mlp, Functional])
def test_explicit_graph_equals_the_eager_keyed_pass(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    units, rows = 5, 4
    x = torch.randn(units * rows, 6)
    keys = unit_keys(11, torch.arange(units))
    row_unit = torch.arange(units).repeat_interleave(rows)
    graph = rewrite(model)
    assert not isinstance(graph, str), graph
    with torch.no_grad():
        got = graph(x, keys, row_unit)
    want = eager_keyed(model, x, keys, row_unit)
    assert torch.equal(got, want)  # the same ops in the same order: bitwise
    with torch.no_grad():
        assert not torch.equal(graph(x, unit_keys(12, torch.arange(units)), row_unit), want)


@pytest.mark.slow
def test_compiled_suffix_equals_eager_and_compiles_once_per_signature() -> None:
    torch.manual_seed(0)
    model = mlp().eval()
    graph = rewrite(model)
    assert not isinstance(graph, str)
    compiled = CompiledSuffix(graph)
    row_unit = torch.arange(4).repeat_interleave(3)
    for seed in (1, 2):
        keys = unit_keys(seed, torch.arange(4))
        x = torch.randn(12, 6)
        with torch.no_grad():
            got = compiled(x, keys, row_unit)
        # inductor fuses the mask into other kernels: same masks, float32 rounding
        assert_close_f32(got, eager_keyed(model, x, keys, row_unit), scale=10.0)
    assert len(compiled.compilations) == 1


def test_masks_are_the_engine_masks() -> None:
    # explicit_dropout on ones shows the masks: 0 or 1/(1-p), the eager path's exactly
    keys = unit_keys(3, torch.arange(6))
    row_unit = torch.arange(6)
    ones = torch.ones(6, 40)
    got = explicit_dropout(ones, keys, row_unit, 2, 0.25)
    ctx = SamplingContext(mode="keyed", keys=keys, row_unit=row_unit, site=2)
    with sampling(ctx):
        want = F.dropout(ones, 0.25, False)
    assert torch.equal(got, want)
    assert got.unique().tolist() == [0.0, torch.tensor(1 / 0.75).item()]  # float32 1/(1-p)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x)[0]


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout2d(0.2)), "Dropout2d"),
        (nn.Sequential(nn.Linear(3, 3)), "no dropout node"),
        (SelfAttention(), "MultiheadAttention at 'mha'"),
        (nn.TransformerEncoderLayer(8, 2, 16), "torch.fx could not trace"),
    ],
)
def test_what_cannot_compile_says_why(model: nn.Module, why: str) -> None:
    reason = rewrite(model)
    assert isinstance(reason, str) and why in reason


# ------------------------------------------------------------------ MCPredictor(compile=True)


def wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), MCDropout(0.2),
        nn.Linear(32, 32), nn.ReLU(), MCDropout(0.2), nn.Linear(32, 4),
    )  # fmt: skip


@pytest.mark.slow  # inductor compiles a few signatures: seconds each on a cold cache
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_predictor_compile_equals_eager(task: str) -> None:
    x = torch.randn(5, 6)
    eager = MCPredictor(wide_mlp(), samples=40, task=task, max_rows=64)
    comp = MCPredictor(wide_mlp(), samples=40, task=task, max_rows=64, compile=True)
    assert comp.describe(x)["compile"] == "compiled"
    a, b = eager.predict(x, seed=7), comp.predict(x, seed=7)
    assert_stats_close_f32(b, a)
    if task == "classification":
        assert_close_f32(b.mutual_information, a.mutual_information, scale=1.0, what="MI")
    # several requests of other widths in shared chunks: the row-to-unit gather path
    reqs = [MCRequest(x[:2], 40, 1), MCRequest(x, 17, 2), MCRequest(x[4:], 40, 3)]
    for m, r in zip(comp.predict_many(reqs), reqs):
        assert_stats_close_f32(m, eager.predict(r.inputs, samples=r.samples, seed=r.seed))


def test_predictor_compile_falls_back_with_a_reason() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout2d(0.3), nn.Flatten())
    pred = MCPredictor(model, samples=8, compile=True)
    x = torch.randn(2, 1, 5, 5)
    assert "Dropout2d" in pred.describe(x)["compile"]
    out = pred.predict(x, seed=1)
    assert_stats_close_f32(out, MCPredictor(model, samples=8).predict(x, seed=1))


def test_compile_option_is_checked() -> None:
    with pytest.raises(InvalidInputError, match="compile must be True or False"):
        MCPredictor(wide_mlp(), compile="yes")  # type: ignore[arg-type]
