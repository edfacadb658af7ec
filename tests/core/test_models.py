"""The default models load from the repository, predict, and behave as their cards say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mcdrop.repository import DTYPES, load_repository

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def repo():
    return load_repository(MODELS)


def _transformers_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is None


def test_all_default_models_load(repo) -> None:
    if _transformers_missing():  # the optional extra mcdrop[hf]: only langid needs it
        assert set(repo.failures) == {"langid"} and "mcdrop[hf]" in repo.failures["langid"]
    else:
        assert repo.failures == {}
        assert "langid" in repo.models
    assert {"concrete", "digits", "toy1d"} <= set(repo.models)
    for name, lm in repo.models.items():
        m = lm.manifest
        x = torch.zeros(3, *m.input_shape, dtype=DTYPES[m.input_dtype])
        out = lm.predictor().predict(x, samples=20, seed=0)
        assert out.mean.shape == (3, *m.output_shape), name
        assert torch.isfinite(out.variance).all() and (out.variance > 0).all(), name
        if m.format == "transformers":  # a save_pretrained folder: a few MB at most
            assert (MODELS / name / "model.safetensors").stat().st_size < 4_000_000
        else:
            assert (MODELS / name / "weights.safetensors").stat().st_size < 400_000
        assert (MODELS / name / "README.md").is_file()
        assert (MODELS / name / "train.py").is_file()


def test_concrete_takes_raw_units(repo) -> None:
    lm = repo.models["concrete"]
    data = np.loadtxt(MODELS / "concrete" / "test.csv", delimiter=",", skiprows=1)
    out = lm.predictor().predict(data[:, :-1], samples=200, seed=0)
    err = (out.mean[:, 0].numpy() - data[:, -1]) ** 2
    assert np.sqrt(err.mean()) < 8.0  # MPa; strengths range 2-83 MPa
    # the variance includes 1/tau in MPa^2
    assert (out.variance[:, 0] >= 1 / lm.manifest.tau).all()


def test_digits_mutual_information_rises_out_of_distribution(repo) -> None:
    data = np.loadtxt(MODELS / "digits" / "test.csv", delimiter=",", skiprows=1)
    x = data[:200, :-1]
    pred = repo.models["digits"].predictor()
    mi_test = pred.predict(x, samples=100, seed=0).mutual_information
    noise = np.random.default_rng(0).uniform(0, 16, size=x.shape)
    mi_noise = pred.predict(noise, samples=100, seed=0).mutual_information
    mi_inv = pred.predict(16.0 - x, samples=100, seed=0).mutual_information
    assert mi_noise.mean() > 3 * mi_test.mean()
    assert mi_inv.mean() > 3 * mi_test.mean()
    acc = (pred.predict(x, samples=100, seed=0).probs.argmax(1).numpy() == data[:200, -1]).mean()
    assert acc > 0.95


def test_toy1d_band_widens_away_from_data(repo) -> None:
    pred = repo.models["toy1d"].predictor()
    grid = torch.tensor([[-5.0], [-2.0], [0.0], [2.0], [5.0]])
    sd = pred.predict(grid, samples=1000, seed=0).std[:, 0]
    in_data = torch.maximum(sd[1], sd[3])
    assert sd[0] > 2 * in_data and sd[4] > 2 * in_data  # beyond the data
    assert sd[2] > 1.3 * in_data  # in the gap
