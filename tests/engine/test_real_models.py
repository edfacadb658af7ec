"""MC mode samples the dropout of real models (issue 15): Hugging Face attention (eager and
SDPA), timm-style fused attention, and multi-layer LSTM/GRU inter-layer dropout.

Reference: ``model.train()``. These models have no BatchNorm and only dropout switched on,
so train mode changes nothing but dropout and its spread is the one MC mode must match.

The variance-ratio check: for S draws, the log of a sample variance has standard error
about sqrt(2 / (S - 1) + kappa / S), kappa the excess kurtosis of the draws (the delta
method on Var[s^2] = sigma^4 (2 / (S - 1) + kappa / S)). The log ratio of two independent
estimates therefore has twice that variance; each output element is compared with a
two-sided normal bound at a family-wise false-alarm rate of 1e-4 (Bonferroni over the
elements). With S = 200 a ratio off by about 2x or more fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tolerance import assert_close_f32, value_scale
from scipy import stats
from torch import nn

from mcdrop import MCPredictor

S = 200
ALPHA = 1e-4
P_ATTN = 0.3


def assert_variance_matches(mc: torch.Tensor, ref: torch.Tensor, alpha: float = ALPHA) -> None:
    """``mc`` and ``ref`` are (S, ...) draws; their per-element variances agree."""
    a = mc.detach().double().flatten(1).numpy()  # (S, K)
    b = ref.detach().double().flatten(1).numpy()  # (S, K)
    va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
    assert (va > 0).all(), f"MC variance is zero somewhere: {va}"
    assert (vb > 0).all(), "the reference has zero variance: the test model is wrong"
    pooled = np.concatenate([a - a.mean(0), b - b.mean(0)])
    kappa = np.maximum(stats.kurtosis(pooled, axis=0, fisher=True), 0.0)  # (K,)
    n = a.shape[0]
    se = np.sqrt(2 * (2 / (n - 1) + kappa / n))  # sd of log(va / vb) under equality
    z = stats.norm.ppf(1 - alpha / (2 * a.shape[1]))
    log_ratio = np.log(va / vb)
    assert (np.abs(log_ratio) <= z * se).all(), (
        f"variance ratio MC/train {np.exp(log_ratio).round(3)} outside "
        f"[{np.exp(-z * se).round(3)}, {np.exp(z * se).round(3)}]"
    )


def train_draws(model: nn.Module, x: torch.Tensor, n: int = S) -> torch.Tensor:
    """(n, B, ...) outputs with ``model.train()``: torch's own dropout, the reference."""
    model.train()
    try:
        with torch.no_grad():
            return torch.stack([model(x) for _ in range(n)])
    finally:
        model.eval()


def check_engine(model: nn.Module, x: torch.Tensor, one: torch.Tensor) -> None:
    """Variance matches train mode; same seed same numbers; row independent of its batch."""
    pred = MCPredictor(model, samples=S, task="regression")
    out = pred.predict(x, seed=11, return_samples=True)
    assert out.draws is not None
    assert_variance_matches(out.draws, train_draws(model, x))
    again = pred.predict(x, seed=11)
    assert torch.equal(again.mean, out.mean) and torch.equal(again.variance, out.variance)
    alone = pred.predict(one, seed=11, samples=32)
    batched = pred.predict(torch.cat([one, x]), seed=11, samples=32)
    c = value_scale(alone.mean, alone.variance)
    assert_close_f32(batched.mean[:1], alone.mean, scale=c, what="mean")
    assert_close_f32(batched.variance[:1], alone.variance, scale=2 * c * c, what="variance")


# --------------------------------------------------------------------------------------
# Hugging Face transformers (tiny random-init models, no download)
# --------------------------------------------------------------------------------------

V = 64  # vocabulary
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64}  # fmt: skip
FAMILIES: dict[str, dict[str, object]] = {
    "bert": {**SMALL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": P_ATTN},
    "roberta": {**SMALL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": P_ATTN,
                "pad_token_id": 1, "max_position_embeddings": 40},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "dropout": 0.0,
                   "attention_dropout": P_ATTN, "seq_classif_dropout": 0.0},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
             "attn_pdrop": P_ATTN, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0},
    "llama": {**SMALL, "num_key_value_heads": 2, "attention_dropout": P_ATTN,
              "pad_token_id": 0},
    "bart": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4,
             "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "dropout": 0.0,
             "activation_dropout": 0.0, "classifier_dropout": 0.0,
             "attention_dropout": P_ATTN, "max_position_embeddings": 40},
    "vit": {**SMALL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": P_ATTN,
            "image_size": 8, "patch_size": 4, "num_channels": 3},
}  # fmt: skip


class Logits(nn.Module):
    """A transformers classifier as a tensor -> tensor model (what MCPredictor serves)."""

    def __init__(self, hf: nn.Module, key: str) -> None:
        super().__init__()
        self.hf, self.key = hf, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(**{self.key: x}).logits


def hf_model(kind: str, impl: str) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    """A tiny classifier of family ``kind`` and a maker of its inputs (B rows)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(
        kind, initializer_range=0.3, num_labels=3, vocab_size=V, **FAMILIES[kind]
    )
    if kind == "vit":
        auto, key = transformers.AutoModelForImageClassification, "pixel_values"
    else:
        auto, key = transformers.AutoModelForSequenceClassification, "input_ids"
    hf = auto.from_config(cfg, attn_implementation=impl).eval()

    def inputs(b: int) -> torch.Tensor:
        if kind == "vit":
            return torch.randn(b, 3, 8, 8)
        ids = torch.randint(3, V, (b, 8))
        if kind == "bart":
            ids[:, -1] = cfg.eos_token_id  # the classification head reads the <eos> state
        return ids

    return Logits(hf, key).eval(), inputs


# eager attention (a dropout call of its own) runs in the full suite only; sdpa (the
# default) in the quick loop too
@pytest.mark.parametrize("impl", [pytest.param("eager", marks=pytest.mark.slow), "sdpa"])
@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_hf_attention_dropout_is_sampled(kind: str, impl: str) -> None:
    model, inputs = hf_model(kind, impl)
    check_engine(model, inputs(2), inputs(1))


def test_hf_gate_decisions_and_flags_restored() -> None:
    from mcdrop import _gated

    model, inputs = hf_model("gpt2", "sdpa")
    model.hf.transformer.h[0].train()  # a mixed prior state must come back exactly
    before = [m.training for m in model.modules()]
    MCPredictor(model, samples=4).predict(inputs(2), seed=0)
    decided = {m: _gated.decision(m) for m in model.modules()}
    sampled = {type(m).__name__ for m, d in decided.items() if d is not None and d.sampled}
    assert sampled == {"GPT2Attention"}
    # GPT2Model reads the flag for gradient checkpointing only: probed, left in eval mode.
    rejected = {type(m).__name__ for m, d in decided.items() if d is not None and not d.sampled}
    assert rejected == {"GPT2Model"}
    assert [m.training for m in model.modules()] == before


# --------------------------------------------------------------------------------------
# timm-style fused attention and recurrent nets
# --------------------------------------------------------------------------------------


class FusedAttention(nn.Module):
    """timm's ``Attention`` with ``fused_attn``: the dropout p is read from the flag."""

    def __init__(self, dim: int = 16, heads: int = 4, attn_drop: float = P_ATTN) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class DropPath(nn.Module):
    """timm's stochastic depth: one Bernoulli per row, drawn by hand when training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop_prob = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


class Block(nn.Module):
    def __init__(self, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(16), FusedAttention()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.head = nn.Linear(16, 2)
        with torch.no_grad():
            self.attn.qkv.weight.mul_(4.0)  # peaked attention, so its dropout shows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm(x)))
        return self.head(x.mean(1))


def test_timm_style_fused_attention_block() -> None:
    check_engine(Block(), torch.randn(2, 6, 16), torch.randn(1, 6, 16))


def test_drop_path_stays_off_by_default() -> None:
    with_dp = Block(drop_path=0.5)
    without = Block()
    without.load_state_dict(with_dp.state_dict())
    x = torch.randn(3, 6, 16)
    a = MCPredictor(with_dp, samples=16).predict(x, seed=5)
    b = MCPredictor(without, samples=16).predict(x, seed=5)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.variance, b.variance)


def test_drop_path_opt_in_matches_train_mode() -> None:
    from mcdrop.layers import MCDropPath, convert_drop_path

    model, x = Block(drop_path=0.5).eval(), torch.randn(2, 6, 16)
    ref = train_draws(model, x)  # timm-style DropPath and attention dropout, torch's RNG
    convert_drop_path(model)
    assert isinstance(model.drop_path, MCDropPath)
    out = MCPredictor(model, samples=S).predict(x, seed=3, return_samples=True)
    assert out.draws is not None
    assert_variance_matches(out.draws, ref)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(4, 12, num_layers=2, dropout=0.4, batch_first=batch_first)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))  # x: (B, T, 4)
        return self.head(out[:, -1] if self.batch_first else out[-1])


@pytest.mark.parametrize(("cell", "batch_first"), [(nn.LSTM, True), (nn.GRU, False)])
def test_rnn_inter_layer_dropout(cell: type[nn.RNNBase], batch_first: bool) -> None:
    model = Recurrent(cell, batch_first)
    x = torch.randn(2, 5, 4)
    check_engine(model, x, torch.randn(1, 5, 4))
    assert "forward" not in model.rnn.__dict__  # the layer-wise forward is removed after MC
    model.eval()
    with torch.no_grad():  # and eval mode is torch's own deterministic pass again
        assert torch.equal(model(x), model(x))


def test_rnn_layerwise_equals_torch_without_dropout() -> None:
    from mcdrop._rnn import layerwise_forward
    from mcdrop._sampling import SamplingContext, sampling

    for cell in (nn.LSTM, nn.GRU):
        rnn = cell(4, 6, num_layers=3, dropout=0.5, bidirectional=True).eval()
        x, h = torch.randn(7, 2, 4), None
        with torch.no_grad(), sampling(SamplingContext(mode="record")):  # dropout = identity
            mine = layerwise_forward(rnn, x, h)
        ref = rnn(x)
        assert_close_f32(mine[0], ref[0], what=f"{cell.__name__} output")
        assert math.isfinite(float(mine[0].sum()))
