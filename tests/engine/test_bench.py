"""The engine benchmark's strategies on integer inputs, and n/a instead of a crash."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from mcdrop.bench import run_case
from mcdrop.bench_cases import VOCAB, Case, bert_classifier, cases, token_ids

STRATEGIES = "loop,replicate,gemm_floor,mcdrop,mcdrop_nosplit"


def _ns(strategies: str = STRATEGIES, interleave: bool = False) -> argparse.Namespace:
    return argparse.Namespace(
        device="cpu", precision="fp32", repeats=1, strategies=strategies,
        interleave=interleave, no_memory=True,
    )  # fmt: skip


class TokenNet(nn.Module):
    """Embedding -> dropout -> mean over tokens -> linear; refuses more than ``max_rows``."""

    def __init__(self, max_rows: int = 1_000_000) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 3)
        self.max_rows = max_rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert not ids.is_floating_point(), "token ids must stay integers"
        if ids.shape[0] > self.max_rows:
            raise RuntimeError(f"at most {self.max_rows} rows")
        return self.fc(self.drop(self.emb(ids)).mean(1))


def test_token_ids_are_int64_with_padded_tails() -> None:
    torch.manual_seed(0)
    ids = token_ids((4, 16), torch.device("cpu"))
    assert ids.dtype == torch.int64
    lengths = (ids != 0).sum(1).tolist()
    assert lengths == [16, 14, 12, 10]  # row i keeps 16 - i*16/8 tokens
    assert bool((ids[:, 0] != 0).all())


def test_every_strategy_runs_integer_inputs() -> None:
    case = Case("tok", TokenNet, (4, 16), 8, "classification", tokens=True)
    entry = run_case(case, _ns(interleave=True))
    assert entry["input_dtype"] == "int64"
    for name in STRATEGIES.split(","):
        row = entry["times"][name]
        assert "na" not in row, (name, row)
        assert row["median_ms"] > 0
    for name in ("loop", "replicate", "mcdrop", "mcdrop_nosplit"):
        assert entry["times"][name]["mean_variance"] > 0, name  # dropout sampled


# torch warns that mc_mode's always-call hook saw the model's own error: expected here.
@pytest.mark.filterwarnings("ignore:module forward hook with")
def test_a_strategy_that_fails_is_reported_not_raised() -> None:
    # The model refuses the S x B rows of replication: those strategies are n/a.
    case = Case("tok", lambda: TokenNet(max_rows=4), (4, 16), 8, "classification", tokens=True)
    entry = run_case(case, _ns("loop,replicate"))
    rep = entry["times"]["replicate"]
    assert rep["median_ms"] is None and "at most 4 rows" in rep["na"]
    assert entry["times"]["loop"]["median_ms"] > 0


@pytest.mark.slow  # imports transformers and builds a BERT: seconds on this CPU
def test_bert_case_takes_token_ids() -> None:
    pytest.importorskip("transformers")
    (bert,) = [c for c in cases("cpu") if c.name == "bert"]
    assert bert.tokens and bert.available() is None
    small = Case(
        "bert", lambda: bert_classifier(32, 1, 16), (2, 16), 4, "classification", tokens=True
    )
    entry = run_case(small, _ns("replicate,mcdrop"))
    assert entry["input_dtype"] == "int64"
    assert entry["times"]["mcdrop"]["mean_variance"] > 0
    assert entry["times"]["replicate"]["mean_variance"] > 0
