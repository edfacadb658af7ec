"""Smoke test of benchmarks/uci.py: one split, a few epochs (full runs live outside tests)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED_BOSTON = ROOT.parent / "shared" / "data" / "uci" / "bostonHousing"


@pytest.fixture(scope="module")
def uci():
    spec = importlib.util.spec_from_file_location("_bench_uci", ROOT / "benchmarks" / "uci.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """bostonHousing from the shared data when present, else a synthetic folder alike."""
    if (SHARED_BOSTON / "data.txt").is_file():
        return SHARED_BOSTON
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.3 * rng.normal(size=300)
    folder = tmp_path / "synthetic"
    folder.mkdir()
    np.savetxt(folder / "data.txt", np.column_stack([x, y]))
    (folder / "index_features.txt").write_text("\n".join(map(str, range(5))) + "\n")
    (folder / "index_target.txt").write_text("5\n")
    return folder


def test_one_split_runs(uci, dataset: Path, capsys) -> None:
    args = [str(dataset), "--splits", "1", "--epochs", "3", "--samples", "50"]
    if dataset.name not in uci.PAPER_SETTINGS:
        args += ["--p", "0.05", "--tau", "10"]
    assert uci.main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"dataset", "splits", "rmse", "rmse_se", "ll", "ll_se", "seconds"} <= set(res)
    assert res["splits"] == 1 and res["rmse_se"] == 0.0
    _, y = uci.load_dataset(dataset)
    assert 0 < res["rmse"] < 1.5 * y.std()  # trained for 3 epochs: better than the mean
    assert math.isfinite(res["ll"])


def test_splits_follow_the_published_recipe(uci) -> None:
    parts = uci.make_splits(506, 2)
    assert [len(tr) for tr, _ in parts] == [455, 455]  # floor(0.9 * 506 + 0.5)
    tr, te = parts[0]
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(506))
    ref = np.random.RandomState(1).choice(range(506), 506, replace=False)
    np.testing.assert_array_equal(tr, ref[:455])


def test_batched_splits_do_not_share_gradients(uci) -> None:
    gen = torch.Generator().manual_seed(0)
    model = uci.SplitEnsemble(3, 4, 6, 0.0, gen)
    x = torch.randn(3, 5, 4, generator=gen)
    per_split = (model(x) ** 2).sum(dim=(1, 2))  # (K,)
    per_split.sum().backward()
    g_all = model.w1.grad[1].clone()
    model.zero_grad()
    per_split2 = (model(x) ** 2).sum(dim=(1, 2))
    per_split2[1].backward()
    torch.testing.assert_close(model.w1.grad[1], g_all)
    assert model.w1.grad[0].abs().sum() == 0
    # a split's Sequential copy computes the same function (dropout off)
    net = model.split_model(1).eval()
    torch.testing.assert_close(net(x[1]), model(x)[1])
