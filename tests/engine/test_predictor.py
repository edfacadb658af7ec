"""MCPredictor statistics, seeds, batching invariance and errors, on tiny models.

Tolerances come from the sample size: a sample mean is within 5 standard errors of its
expectation, a sample variance within 5 of its own standard deviations, computed from the
exact fourth moment where it is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tolerance import assert_close_f32, assert_stats_close_f32, value_scale
from torch import nn

from mcdrop import (
    InvalidInputError,
    MCDropout,
    MCPredictor,
    MCRequest,
    ModelOutputError,
    NoDropoutError,
    Prediction,
)


def dropout_linear(w: torch.Tensor, p: float) -> nn.Module:
    """y = w . (x * m) / (1 - p): one dropout before a bias-free linear map."""
    lin = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w.unsqueeze(0))
    return nn.Sequential(MCDropout(p), lin)


def exact_moments(w: torch.Tensor, x: torch.Tensor, p: float) -> tuple[float, float, float]:
    """E[y], Var[y] and the 4th central moment of y for the dropout-linear model."""
    a = (w * x).double()
    r = p / (1 - p)
    ez2 = a**2 * r  # E[Z_i^2], Z_i = a_i (m_i / (1 - p) - 1)
    ez4 = a**4 * ((1 - p) * r**4 + p)
    var = ez2.sum()
    mu4 = ez4.sum() + 3 * (var**2 - (ez2**2).sum())
    return float(a.sum()), float(var), float(mu4)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_linear_identity(p: float) -> None:
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, generator=g), torch.randn(16, generator=g)
    s = 20000
    out = MCPredictor(dropout_linear(w, p), samples=s, max_samples=s).predict(
        x.unsqueeze(0), seed=11
    )
    mean, var, mu4 = exact_moments(w, x, p)
    assert abs(out.mean.item() - mean) < 5 * math.sqrt(var / s)
    sd_var = math.sqrt((mu4 - var**2 * (s - 3) / (s - 1)) / s)
    assert abs(out.variance.item() - var) < 5 * sd_var
    assert out.stderr.item() == pytest.approx(math.sqrt(out.variance.item() / s))


def test_exact_ensemble_gives_the_identity_exactly() -> None:
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(6, generator=g), torch.randn(6, generator=g)
    p = 0.3
    out = MCPredictor(dropout_linear(w, p)).predict(x.unsqueeze(0), exact=True)
    mean, var, _ = exact_moments(w, x, p)
    assert out.exact and out.samples == 2**6
    # float32 forward passes, float64 sums: agreement to float32 rounding
    assert out.mean.item() == pytest.approx(mean, rel=1e-5, abs=1e-6)
    assert out.variance.item() == pytest.approx(var, rel=1e-5)


def test_sampling_agrees_with_exact_ensemble_on_a_nonlinear_net() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.Tanh(),
        MCDropout(0.4),
        nn.Linear(4, 4),
        nn.ReLU(),
        MCDropout(0.2),
        nn.Linear(4, 1),
    )
    x = torch.randn(2, 3)
    pred = MCPredictor(model, samples=40000, max_samples=40000)
    exact = pred.predict(x, exact=True)  # 2^8 subnetworks
    sampled = pred.predict(x, seed=5)
    se = torch.sqrt(exact.variance / 40000)
    assert ((sampled.mean - exact.mean).abs() <= 5 * se).all()
    # sample variance: relative sd about sqrt(2/S) for near-normal, allow a kurtosis margin
    assert torch.allclose(sampled.variance, exact.variance, rtol=10 * math.sqrt(2 / 40000) * 3)


def test_p_zero_gives_zero_variance() -> None:
    model = nn.Sequential(nn.Linear(3, 5), MCDropout(0.0), nn.Linear(5, 2))
    out = MCPredictor(model, samples=50).predict(torch.randn(4, 3), seed=1)
    assert torch.equal(out.variance, torch.zeros_like(out.variance))


def test_p_zero_mean_equals_deterministic_forward() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), MCDropout(0.0), nn.Linear(5, 2))
    model.train()
    model(torch.randn(8, 3))
    x = torch.randn(4, 3)
    out = MCPredictor(model, samples=10).predict(x, seed=1)
    assert torch.equal(out.variance, torch.zeros_like(out.variance))
    with torch.no_grad():
        ref = model.eval()(x)
    assert torch.allclose(out.mean.float(), ref, atol=1e-6)


def test_tau_adds_model_precision() -> None:
    model = nn.Sequential(nn.Linear(3, 5), MCDropout(0.2), nn.Linear(5, 1))
    x = torch.randn(2, 3)
    a = MCPredictor(model, samples=30).predict(x, seed=4)
    b = MCPredictor(model, samples=30, tau=4.0).predict(x, seed=4)
    assert torch.allclose(b.variance, a.variance + 0.25)
    assert torch.allclose(b.epistemic_variance, a.variance)


class HeteroNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), MCDropout(0.2))
        self.mu, self.logvar = nn.Linear(16, 1), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


def test_heteroscedastic_head_splits_aleatoric_and_epistemic() -> None:
    model = HeteroNet()
    x = torch.randn(3, 2)
    out = MCPredictor(model, samples=200).predict(x, seed=2, return_samples=True)
    assert out.draws is not None and out.draws.shape == (200, 3, 1)
    assert torch.allclose(out.epistemic_variance, out.draws.double().var(0), rtol=1e-6)
    assert (out.aleatoric_variance > 0).all()
    assert torch.allclose(out.variance, out.epistemic_variance + out.aleatoric_variance)


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 32), nn.ReLU(), MCDropout(0.5), nn.Linear(32, 4))


def test_classification_identities() -> None:
    x = torch.randn(6, 5) * 3
    out = MCPredictor(classifier(), samples=300, task="classification").predict(
        x, seed=9, return_samples=True
    )  # noqa: E501
    assert torch.allclose(out.probs.sum(-1), torch.ones(6, dtype=torch.float64))
    assert (out.mutual_information >= 0).all()
    assert torch.allclose(out.predictive_entropy, out.expected_entropy + out.mutual_information)
    # against a naive reference computed from the raw draws
    p = torch.softmax(out.draws.double(), -1)  # (S, B, C)
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
    assert torch.allclose(out.probs, p.mean(0))
    assert torch.allclose(out.expected_entropy, ent.mean(0))
    votes = F.one_hot(p.argmax(-1), 4).double().mean(0).max(-1).values
    assert torch.allclose(out.variation_ratio, 1 - votes)
    assert (out.mutual_information > 0).any()


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    pred = MCPredictor(classifier(), samples=50, task="classification")
    x = torch.randn(3, 5)
    a, b, c = pred.predict(x, seed=1), pred.predict(x, seed=1), pred.predict(x, seed=2)
    assert torch.equal(a.probs, b.probs)
    assert not torch.equal(a.probs, c.probs)
    d = pred.predict(x)
    assert isinstance(d.seed, int)
    assert torch.equal(pred.predict(x, seed=d.seed).probs, d.probs)


@pytest.mark.parametrize("max_rows", [1, 7, 64, None])
def test_result_does_not_depend_on_chunking(max_rows: int | None) -> None:
    model = classifier()
    x = torch.randn(5, 5)
    ref = MCPredictor(model, samples=40, task="classification").predict(x, seed=3)
    out = MCPredictor(model, samples=40, task="classification", max_rows=max_rows).predict(
        x, seed=3
    )  # noqa: E501
    # Other chunk shapes round the float32 passes differently: float32 bounds (probs <= 1).
    assert_close_f32(out.probs, ref.probs, scale=1.0, what="probs")
    assert_close_f32(out.variance, ref.variance, scale=2.0, what="variance")


def test_row_result_does_not_depend_on_other_rows() -> None:
    pred = MCPredictor(classifier(), samples=40, task="classification")
    x = torch.randn(6, 5)
    full = pred.predict(x, seed=8)
    for i in (0, 3, 5):
        alone = pred.predict(x[i : i + 1], seed=8)
        assert_close_f32(alone.probs[0], full.probs[i], scale=1.0, what=f"row {i}")
    shuffled = pred.predict(x.flip(0), seed=8)
    assert_close_f32(shuffled.probs.flip(0), full.probs, scale=1.0, what="shuffled")


def test_predict_many_equals_predict_alone() -> None:
    pred = MCPredictor(classifier(), samples=30, task="classification", max_rows=50)
    g = torch.Generator().manual_seed(0)
    reqs = [
        MCRequest(torch.randn(n, 5, generator=g), s, seed)
        for n, s, seed in [(1, 30, 1), (4, 17, 2), (2, 64, 3), (3, 30, 1)]
    ]
    many = pred.predict_many(reqs)
    for r, m in zip(reqs, many):
        alone = pred.predict(r.inputs, samples=r.samples, seed=r.seed)
        assert m.samples == r.samples and m.seed == r.seed
        assert_close_f32(m.probs, alone.probs, scale=1.0, what="probs")
        assert_close_f32(m.variance, alone.variance, scale=2.0, what="variance")


_FIELDS = ("mean", "variance", "std", "stderr", "epistemic_variance", "aleatoric_variance",
           "probs", "predictive_entropy", "expected_entropy", "mutual_information",
           "variation_ratio", "samples_per_row", "draws")  # fmt: skip


def _assert_same_fields(m: Prediction, alone: Prediction) -> None:
    """Every field of ``m`` equals the one of ``alone`` (None where it is None)."""
    for name in _FIELDS:
        a, b = getattr(m, name), getattr(alone, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape, name
            # float32 model outputs: rounding differs with the batch the rows ran in
            assert_close_f32(a, b, scale=max(1.0, value_scale(b)) ** (2 if "var" in name else 1),
                             what=name)  # fmt: skip


@pytest.mark.parametrize("case", ["classifier", "hetero+tau", "no-split"])
@pytest.mark.parametrize("widths", [(1,) * 12, (1, 3, 2, 1, 4)])
def test_predict_many_in_one_chunk_equals_each_alone(case: str, widths: tuple[int, ...]) -> None:
    # Many requests in one forward chunk take the batched paths (one prefix pass for all,
    # one index_select per input, grouped statistics, summaries laid end to end); equal
    # widths use the broadcast mask layout, mixed widths the per-row gather. Every field
    # must equal the request run alone, up to float rounding.
    torch.manual_seed(3)
    one_chunk = 10_000  # rows: this test is about the one-chunk path, whatever the budget
    if case == "classifier":
        pred = MCPredictor(classifier(), samples=30, task="classification", max_rows=one_chunk)
        feats = 5
    elif case == "hetero+tau":
        pred = MCPredictor(HeteroNet(), samples=30, tau=4.0, max_rows=one_chunk)
        feats = 2
    else:
        pred = MCPredictor(classifier(), samples=30, task="classification", split="off",
                           max_rows=one_chunk)  # fmt: skip
        feats = 5
    g = torch.Generator().manual_seed(1)
    reqs = [
        MCRequest(torch.randn(b, feats, generator=g), 20 + 3 * i, 100 + i, return_samples=i == 1)
        for i, b in enumerate(widths)
    ]
    many = pred.predict_many(reqs)
    assert len(pred.runner.stats.chunk_rows) == 1  # one forward chunk held them all
    for r, m in zip(reqs, many):
        alone = pred.predict(r.inputs, samples=r.samples, seed=r.seed,
                             return_samples=r.return_samples)  # fmt: skip
        assert (m.samples, m.seed) == (r.samples, r.seed)
        _assert_same_fields(m, alone)


@pytest.mark.parametrize("case", ["classifier", "hetero+tau"])
def test_predict_many_shares_draws_between_unseeded_requests(case: str) -> None:
    # share_unseeded: requests without a seed, of equal S, run as the rows of one request.
    # Each answer reports the shared seed, and that seed alone reproduces it; seeded
    # requests, other sample counts and requests asking for draws keep their own seeds.
    torch.manual_seed(4)
    if case == "classifier":
        pred, feats = MCPredictor(classifier(), samples=30, task="classification"), 5
    else:
        pred, feats = MCPredictor(HeteroNet(), samples=30, tau=4.0), 2
    g = torch.Generator().manual_seed(2)
    x = [torch.randn(b, feats, generator=g) for b in (1, 3, 2, 1, 2, 1)]
    reqs = [
        MCRequest(x[0], 30),
        MCRequest(x[1], 30),
        MCRequest(x[2], 30, seed=11),  # seeded: its own masks
        MCRequest(x[3], 17),  # another S: not merged with the first two
        MCRequest(x[4], 30, return_samples=True),  # asks for draws: alone
        MCRequest(x[5], 30),
    ]
    many = pred.predict_many(reqs, share_unseeded=True)
    shared = {many[i].seed for i in (0, 1, 5)}
    assert len(shared) == 1
    assert many[2].seed == 11
    assert many[3].seed not in shared and many[4].seed not in shared
    assert many[4].draws is not None and many[4].draws.shape[:2] == (30, 2)
    for r, m in zip(reqs, many):
        assert m.samples == (r.samples or 30) and m.mean.shape[0] == len(r.inputs)
        assert m.samples_per_row.tolist() == [m.samples] * len(r.inputs)
        alone = pred.predict(r.inputs, samples=r.samples, seed=m.seed,
                             return_samples=r.return_samples)  # fmt: skip
        _assert_same_fields(m, alone)
    # Without the option every unseeded request draws its own seed.
    own = pred.predict_many([MCRequest(x[0], 30), MCRequest(x[1], 30)])
    assert own[0].seed != own[1].seed


@pytest.mark.parametrize("share", [False, True])
def test_predict_many_names_the_request_with_non_finite_inputs(share: bool) -> None:
    # Alone or merged with other unseeded requests, the error names the request at fault.
    pred = MCPredictor(classifier(), samples=5, task="classification")
    ok, bad = torch.ones(2, 5), torch.ones(1, 5)
    bad[0, 3] = float("nan")
    reqs = [MCRequest(ok), MCRequest(bad), MCRequest(ok)]
    with pytest.raises(InvalidInputError, match=r"request 1: inputs contain NaN or Inf in rows 0"):
        pred.predict_many(reqs, share_unseeded=share)


class SqrtAfterDropout(nn.Module):
    """Negative inputs give NaN outputs, whatever the masks."""

    def __init__(self) -> None:
        super().__init__()
        self.d = MCDropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(x) + x.sqrt()


def test_predict_many_reports_the_non_finite_rows_of_a_batch() -> None:
    pred = MCPredictor(SqrtAfterDropout(), samples=8)
    ok = torch.ones(1, 3)
    bad = torch.full((1, 3), -1.0)
    with pytest.raises(ModelOutputError, match=r"NaN or Inf for rows \[0\]"):
        pred.predict_many([MCRequest(ok + 1, seed=1), MCRequest(bad, seed=2)])


def test_split_paths_match_replication() -> None:
    torch.manual_seed(2)
    seq = nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(inplace=True),
        MCDropout(0.3, inplace=True),
        nn.ReLU(inplace=True),
        nn.Linear(8, 2),
    )
    x = torch.randn(3, 4)
    split = MCPredictor(seq, samples=25)
    assert split.describe(x)["split"] == "sequential"
    plain = MCPredictor(seq, samples=25, split="off")
    a, b = split.predict(x, seed=6), plain.predict(x, seed=6)
    assert torch.allclose(a.mean, b.mean) and torch.allclose(a.variance, b.variance)
    # the cached prefix survives in-place ops downstream: a second call is identical
    assert torch.equal(split.predict(x, seed=6).mean, a.mean)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = h + F.dropout(self.block(h), 0.3, self.training)
        return self.out(h)


def test_fx_split_matches_replication_on_a_residual_model() -> None:
    model = Residual()
    x = torch.randn(4, 4)
    fast = MCPredictor(model, samples=30)
    assert fast.describe(x)["split"] == "fx"
    a = fast.predict(x, seed=1)
    b = MCPredictor(model, samples=30, split="off").predict(x, seed=1)
    assert torch.allclose(a.mean, b.mean, atol=1e-6)
    assert torch.allclose(a.variance, b.variance, atol=1e-6)


class SeqFirst(nn.Module):
    """Batch-first at its boundary, sequence-first inside: rows sit in dim 1 at dropout."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=False)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x.transpose(0, 1)).transpose(0, 1)


def test_transformer_variance_is_nonzero_and_rows_keyed_in_any_dim() -> None:
    model = SeqFirst().eval()
    x = torch.randn(3, 5, 8)  # (B, T, d)
    pred = MCPredictor(model, samples=20)
    a = pred.predict(x, seed=1)
    assert (a.variance > 0).all()
    # a row alone gets the answer it gets in the batch: masks were keyed on the row dim
    alone = pred.predict(x[1:2], seed=1)
    c = value_scale(a.mean, a.variance)
    assert_close_f32(alone.mean[0], a.mean[1], scale=c, what="mean")
    assert_close_f32(alone.variance[0], a.variance[1], scale=2 * c * c, what="variance")


def test_batchnorm_model_batch_of_one_and_stats_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), MCDropout(0.3), nn.Linear(8, 1))
    model.train()
    model(torch.randn(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    out = MCPredictor(model, samples=20).predict(torch.randn(1, 4), seed=0)
    assert out.mean.shape == (1, 1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags


def test_adaptive_samples_stop_per_row() -> None:
    model = nn.Sequential(MCDropout(0.5), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [5.0, -4.0]])  # zero var, low rel var, high
    out = MCPredictor(model).predict(
        x, samples="auto", seed=3, rtol=0.05, min_samples=16, max_samples=4096
    )
    used = out.samples_per_row.tolist()
    assert used[0] == 16  # a row without variance converges at once
    assert used[2] > used[1] >= 16
    ok = out.stderr.flatten() <= 0.05 * out.mean.abs().flatten()
    assert ok[:2].all() and (ok[2] or used[2] == 4096)


def test_numpy_and_int_inputs() -> None:
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), MCDropout(0.2), nn.Linear(12, 1))
    out = MCPredictor(emb, samples=10).predict(np.array([[1, 2, 3], [4, 5, 6]]), seed=0)
    assert out.mean.shape == (2, 1)
    reg = nn.Sequential(nn.Linear(3, 4), MCDropout(0.2), nn.Linear(4, 2))
    out = MCPredictor(reg, samples=10).predict(np.random.default_rng(0).normal(size=(2, 3)), seed=0)
    assert out.mean.shape == (2, 2)


def test_input_errors_are_typed_and_say_what_is_wrong() -> None:
    pred = MCPredictor(nn.Sequential(nn.Linear(3, 4), MCDropout(0.2), nn.Linear(4, 1)))
    with pytest.raises(InvalidInputError, match="at least one row"):
        pred.predict(torch.empty(0, 3))
    x = torch.randn(4, 3)
    x[1, 0], x[3, 2] = float("nan"), float("inf")
    with pytest.raises(InvalidInputError, match="rows 1, 3"):
        pred.predict(x)
    with pytest.raises(InvalidInputError, match="at least 1"):
        pred.predict(torch.randn(2, 3), samples=0)
    with pytest.raises(InvalidInputError, match="positive integer"):
        pred.predict(torch.randn(2, 3), samples=2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="seed"):
        pred.predict(torch.randn(2, 3), seed=-1)
    with pytest.raises(ValueError):  # typed errors stay ValueError-compatible
        pred.predict([[1.0, 2.0], [3.0]])


def test_no_dropout_model_raises() -> None:
    with pytest.raises(NoDropoutError):
        MCPredictor(nn.Linear(3, 1)).predict(torch.randn(2, 3))


def test_non_finite_model_output_names_rows() -> None:
    with pytest.raises(ModelOutputError, match=r"\[1\]"):
        MCPredictor(SqrtAfterDropout(), samples=5).predict(torch.tensor([[1.0], [-1.0]]), seed=0)


def test_keyed_alpha_dropout_moments() -> None:
    from mcdrop import MCAlphaDropout

    p, s = 0.2, 20000
    alpha = -1.7580993408473766
    a = ((1 - p) * (1 + p * alpha**2)) ** -0.5
    x = torch.tensor([[0.5, -1.0, 2.0]])
    out = MCPredictor(nn.Sequential(MCAlphaDropout(p)), samples=s, max_samples=s).predict(x, seed=1)
    # out = a ((x + alpha) m + alpha (p - 1)) with m ~ Bernoulli(1 - p)
    mean = a * (1 - p) * x.double()
    var = a**2 * (x.double() + alpha) ** 2 * p * (1 - p)
    assert ((out.mean - mean).abs() <= 5 * torch.sqrt(var / s)).all()
    assert torch.allclose(out.variance, var, rtol=0.05)


def test_keyed_channel_dropout_drops_whole_channels() -> None:
    from mcdrop import MCDropout2d

    x = torch.ones(2, 3, 2, 2)
    out = MCPredictor(nn.Sequential(MCDropout2d(0.5)), samples=50).predict(
        x, seed=2, return_samples=True
    )
    d = out.draws.flatten(3)  # (S, B, C, H*W)
    assert ((d == 0).all(-1) | (d == 2.0).all(-1)).all()
    assert 0.3 < (d[..., 0] == 0).double().mean().item() < 0.7


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_samples_sharded_over_devices_equal_single_device(task: str) -> None:
    model = classifier()
    x = torch.randn(4, 5)
    one = MCPredictor(model, samples=37, task=task)
    three = MCPredictor(model, samples=37, task=task, devices=["cpu", "cpu", "cpu"])
    a, b = (
        one.predict(x, seed=5, return_samples=True),
        three.predict(x, seed=5, return_samples=True),
    )
    # Each device runs its share of the samples in other chunk shapes: float32 bounds.
    assert_stats_close_f32(b, a)
    assert_close_f32(b.draws, a.draws, what="draws")  # same masks per sample, same order
    if task == "classification":
        assert_close_f32(b.mutual_information, a.mutual_information, scale=1.0, what="MI")
        assert torch.allclose(a.variation_ratio, b.variation_ratio)
    many = three.predict_many([MCRequest(x, 37, 5), MCRequest(x[:2], 3, 9)])
    assert_stats_close_f32(many[0], a)
    assert_stats_close_f32(many[1], one.predict(x[:2], samples=3, seed=9))


class OOMOverRows(nn.Module):
    """Raises torch's out-of-memory error whenever a forward pass holds too many rows."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.net = nn.Sequential(MCDropout(0.3), nn.Linear(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} rows")
        return self.net(x)


def test_out_of_memory_halves_the_chunk_and_still_answers() -> None:
    model = OOMOverRows(limit=10_000)
    x = torch.randn(4, 3)
    ref = MCPredictor(model, samples=64, max_rows=512).predict(x, seed=2)
    model.limit = 40
    shrinking = MCPredictor(model, samples=64, max_rows=512)
    out = shrinking.predict(x, seed=2)
    assert max(shrinking.runner.stats.chunk_rows) <= 40 < 512
    fitted = shrinking.runner.fitted_rows
    assert fitted is not None and fitted < 512  # remembered, by the runner
    assert shrinking.max_rows == 512  # the user's option is not rewritten
    assert_stats_close_f32(out, ref)  # halved chunks: other GEMM shapes, float32 rounding
    model.limit = 3  # not even one sample of 4 rows fits: the error surfaces
    with pytest.raises(torch.OutOfMemoryError):
        MCPredictor(model, samples=8).predict(x, seed=2)


def test_conv_input_and_trailing_output_shape() -> None:
    class ConvHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.drop = nn.Dropout2d(0.25)
            self.out = nn.Conv2d(4, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.drop(torch.relu(self.conv(x)))).mean(-1)  # (B, 3, H)

    model = ConvHead()
    x = torch.randn(2, 2, 5, 6)
    out = MCPredictor(model, samples=16).predict(x, seed=4, return_samples=True)
    assert out.mean.shape == (2, 3, 5) and out.draws.shape == (16, 2, 3, 5)
    assert torch.allclose(out.mean, out.draws.double().mean(0), atol=1e-6)
    assert torch.allclose(out.variance, out.draws.double().var(0), atol=1e-6)
    alone = MCPredictor(model, samples=16).predict(x[1:], seed=4)
    assert_close_f32(alone.mean[0], out.mean[1], scale=value_scale(out.mean, out.variance))


def test_predict_many_returns_draws_only_for_requests_that_ask() -> None:
    pred = MCPredictor(classifier(), samples=12, task="classification", max_rows=20)
    x = torch.randn(3, 5)
    a, b = pred.predict_many([MCRequest(x, 12, 1, return_samples=True), MCRequest(x[:1], 5, 2)])
    alone = pred.predict(x, samples=12, seed=1, return_samples=True)
    assert a.draws is not None and a.draws.shape == (12, 3, 4)
    assert_close_f32(a.draws, alone.draws, what="draws")
    assert b.draws is None
