"""MCDropout semantics and mc_mode coverage of every kind of dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcdrop import (
    MCAlphaDropout,
    MCDropout,
    MCDropout2d,
    NoDropoutError,
    convert_dropout,
    disable_mc,
    enable_mc,
    mc_mode,
)


def test_mcdropout_is_nn_dropout_drop_in() -> None:
    layer = MCDropout(0.3)
    assert isinstance(layer, nn.Dropout)
    x = torch.randn(4, 8)
    layer.eval()
    assert torch.equal(layer(x), x)  # deterministic in eval unless always=True
    layer.train()
    y = layer(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)


def test_always_on_layer_samples_in_eval() -> None:
    layer = MCDropout(0.5, always=True).eval()
    x = torch.ones(1000)
    y = layer(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert 0 < (y == 0).sum() < 1000


def test_expectation_of_mcdropout_is_identity() -> None:
    p, s = 0.25, 20000
    x = torch.linspace(-2, 2, 9)
    layer = MCDropout(p).train()
    draws = layer(x.expand(s, -1))  # (S, 9)
    se = x.abs() * math.sqrt(p / (1 - p) / s)
    assert ((draws.mean(0) - x).abs() <= 5 * se + 1e-12).all()


def test_gradient_flows_only_through_kept_units() -> None:
    p = 0.4
    layer = MCDropout(p).train()
    x = torch.randn(64, 32, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    keep = (y != 0).to(x.dtype)
    assert torch.allclose(x.grad, keep / (1 - p))


def test_channel_dropout_zeroes_whole_channels() -> None:
    layer = MCDropout2d(0.5).train()
    y = layer(torch.ones(8, 16, 4, 4))
    per_channel = y.flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1)).all()


def test_convert_dropout_swaps_modules_in_place() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.2), nn.Sequential(nn.AlphaDropout(0.1)))
    convert_dropout(m)
    assert isinstance(m[1], MCDropout) and m[1].p == 0.2
    assert isinstance(m[2][0], MCAlphaDropout)


class FunctionalDropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.fc1(x)), 0.3, self.training)
        return self.fc2(h)


def _spread(model: nn.Module, x: torch.Tensor, n: int = 20) -> float:
    with torch.no_grad(), mc_mode(model):
        draws = torch.stack([model(x) for _ in range(n)])
    return draws.var(0).mean().item()


def test_functional_dropout_is_sampled() -> None:
    model = FunctionalDropoutNet().eval()
    assert _spread(model, torch.randn(3, 4)) > 0


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_in_eval_gets_variance(batch_first: bool) -> None:
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():  # eval + inference mode is where the fused fast path runs
        assert _spread(model, x) > 0


@pytest.mark.parametrize("need_weights", [True, False])
def test_attention_dropout_of_mha_is_sampled(need_weights: bool) -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=need_weights)[0]

    model = Attn().eval()
    assert _spread(model, torch.randn(2, 6, 8)) > 0


def test_batchnorm_keeps_running_stats_and_batch_of_one_works() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.2), nn.Linear(8, 1))
    model.train()
    model(torch.randn(32, 4))  # give the running stats non-trivial values
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), mc_mode(model):
        model(torch.randn(1, 4))  # batch statistics would raise on a batch of one
        model(torch.randn(16, 4))
        assert not model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_modes_restored_exactly_also_on_exception() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.BatchNorm1d(2), nn.Dropout(0.1))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with mc_mode(model):
            assert model[1].training and not model[2].training
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
    state = enable_mc(model)
    disable_mc(state)
    assert [m.training for m in model.modules()] == before
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_model_without_dropout_raises_typed_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(NoDropoutError, match="no dropout"):
        with mc_mode(model):
            model(torch.randn(1, 2))
    assert isinstance(NoDropoutError("x"), ValueError)


def test_outside_mc_mode_dropout_is_untouched() -> None:
    model = FunctionalDropoutNet().eval()
    x = torch.randn(3, 4)
    with mc_mode(model):
        pass
    assert torch.equal(model(x), model(x))  # eval mode: deterministic again
    y = F.dropout(torch.ones(10), 0.5, training=False)
    assert torch.equal(y, torch.ones(10))


# --------------------------------------------------------------------------------------
# Dropout gated by a non-dropout module's own training flag (issue 15)
# --------------------------------------------------------------------------------------


class Gated(nn.Module):
    """Attention-like: the dropout p is computed from the module's own flag."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.extra = extra
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = 0.4 if self.training else 0.0
        h = F.dropout(self.lin(x), p, True)
        if self.training and self.extra == "noise":  # a random op that is not dropout
            h = h + 0.1 * torch.randn_like(h)
        if self.training and self.extra == "buffer":  # a training-only state update
            self.count += 1
        if self.training and self.extra == "shift":  # a deterministic behaviour change
            h = h + 1.0
        return h


def _spread(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), mc_mode(model):
        return float(torch.stack([model(x) for _ in range(20)]).var(0).max())


def test_gated_dropout_is_sampled_and_decided_once() -> None:
    from mcdrop import _gated

    model = nn.Sequential(Gated(), nn.Linear(8, 2)).eval()
    x = torch.randn(3, 8)
    assert _spread(model, x) > 0
    d = _gated.decision(model[0])
    assert d is not None and d.sampled
    assert not model[0].training  # eval flags back after mc_mode


@pytest.mark.parametrize(
    ("extra", "why"),
    [("noise", "random op"), ("buffer", "writes buffers"), ("shift", "changes more")],
)
def test_gated_flag_with_other_effects_stays_eval(extra: str, why: str) -> None:
    from mcdrop import _gated

    gated = Gated(extra)
    model = nn.Sequential(gated, MCDropout(0.2), nn.Linear(8, 2))
    x = torch.randn(3, 8)
    with torch.no_grad(), mc_mode(model):
        model(x)
    d = _gated.decision(gated)
    assert d is not None and not d.sampled and why in d.reason
    assert d.missed_p == pytest.approx(0.4)  # the unsampled dropout is known (audit warns)
    assert float(gated.count) == 0.0  # the probe undid its buffer write
    with torch.no_grad():
        model.eval()
        ref = model(x)
        with mc_mode(model):
            pass
        assert torch.equal(model(x), ref)


def test_probe_leaves_global_rng_and_batchnorm_alone() -> None:
    model = nn.Sequential(nn.BatchNorm1d(8), Gated(), nn.Linear(8, 2)).eval()
    stats = model[0].running_mean.clone()
    from mcdrop import MCPredictor

    MCPredictor(model, samples=8).predict(torch.randn(1, 8), seed=1)  # a batch of one works
    assert torch.equal(model[0].running_mean, stats)
    from mcdrop import _gated

    x, noisy = torch.randn(2, 8), Gated("noise")
    state = torch.get_rng_state()
    assert not _gated.probe(noisy, (x,), {}).sampled
    assert torch.equal(torch.get_rng_state(), state)  # the probe's random draws are undone
