"""Model repository: manifests, weights, loading by path, save -> load round trips."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from mcdrop.errors import ManifestError, WeightsError
from mcdrop.repository import (
    Manifest,
    load_manifest,
    load_model,
    load_repository,
    manifest_to_toml,
    save_model,
)

ARCH = textwrap.dedent(
    """
    from torch import nn
    from mcdrop import MCDropout

    def build(inputs=3, hidden=8, outputs=2):
        return nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), MCDropout(0.2), nn.Linear(hidden, outputs)
        )
    """
)


def _manifest(**kw: object) -> Manifest:
    base: dict = dict(
        name="tiny",
        version="1.0",
        task="classification",
        description="a tiny classifier",
        input_shape=(3,),
        output_shape=(2,),
        output_names=("no", "yes"),
        default_samples=20,
        max_samples=200,
        config={"inputs": 3, "hidden": 8, "outputs": 2},
    )
    base.update(kw)
    return Manifest(**base)


@pytest.fixture
def arch_file(tmp_path: Path) -> Path:
    p = tmp_path / "src_model.py"
    p.write_text(ARCH)
    return p


@pytest.fixture
def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    from mcdrop import MCDropout

    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ReLU(), MCDropout(0.2), torch.nn.Linear(8, 2)
    )


@pytest.fixture
def model_dir(tmp_path: Path, arch_file: Path, tiny_module: torch.nn.Module) -> Path:
    return save_model(tmp_path / "repo" / "tiny", tiny_module, _manifest(), arch_file)


def _edit_toml(folder: Path, old: str, new: str) -> None:
    p = folder / "model.toml"
    text = p.read_text()
    assert old in text, f"{old!r} not in manifest"
    p.write_text(text.replace(old, new, 1))


def test_round_trip_equals(model_dir: Path, tiny_module: torch.nn.Module) -> None:
    loaded = load_model(model_dir)
    assert loaded.manifest == _manifest()
    for k, v in tiny_module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[k], v)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    a = loaded.predictor().predict(x, seed=3)
    p2 = type(loaded.predictor())(tiny_module, samples=20, task="classification")
    b = p2.predict(x, seed=3)
    assert torch.allclose(a.probs, b.probs)
    assert loaded.predictor() is loaded.predictor()  # cached
    assert loaded.predictor().samples == 20 and loaded.predictor().max_samples == 200


def test_manifest_text_round_trip() -> None:
    m = _manifest(
        task="regression",
        output_shape=(1,),
        output_names=("y",),
        tau=0.25,
        description='quotes " and \\ and unicode é',
        config={"a": [1, 2], "b": 0.5, "flag": True, "nested": {"k": "v"}},
    )
    from mcdrop.manifest import manifest_from_dict, tomllib

    assert manifest_from_dict(tomllib.loads(manifest_to_toml(m)), "x") == m


def test_save_refuses_overwrite(model_dir: Path, arch_file: Path, tiny_module) -> None:
    with pytest.raises(ManifestError, match="already exists"):
        save_model(model_dir, tiny_module, _manifest(), arch_file)
    save_model(model_dir, tiny_module, _manifest(version="2.0"), arch_file, overwrite=True)
    assert load_manifest(model_dir).version == "2.0"
    # re-saving in place from the folder's own model.py (what train.py does)
    save_model(model_dir, tiny_module, _manifest(), model_dir / "model.py", overwrite=True)
    assert load_model(model_dir).manifest.version == "1.0"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "max_samples = 200",
            'max_samples = "ten"',
            r"\[sampling\] max_samples must be a positive integer, got 'ten'",
        ),
        (
            "default_samples = 20",
            "default_samples = 500",
            r"default_samples \(500\) must not exceed max_samples \(200\)",
        ),
        (
            'task = "classification"',
            'task = "ranking"',
            r"task must be 'regression' or 'classification'",
        ),
        (
            "shape = [3]",
            "shape = [3, -1]",
            r"\[input\] shape must be a non-empty list of positive integers",
        ),
        ("shape = [3]", "shape = [3.5]", r"\[input\] shape must be"),
        ('dtype = "float32"', 'dtype = "complex64"', r"\[input\] dtype must be one of"),
        ('name = "tiny"', 'name = "has space"', r"name must be"),
        ('name = "tiny"', "", r"name is required"),
        (
            'names = ["no", "yes"]',
            'names = ["a"]',
            r"\[output\] names must have one label per output",
        ),
        (
            "max_samples = 200",
            "max_samples = 200\nmax_smaples = 3",
            r"unknown key 'max_smaples' in \[sampling\]",
        ),
        ('factory = "build"', 'factory = "nope"', r"has no function 'nope'"),
        ("hidden = 8", "hidden = 8\nbogus = 1", r"build\(\*\*\[model.config\]\) failed"),
        (
            'shape = [2]\nnames = ["no", "yes"]',
            "shape = [3]",
            r"\[output\] shape is \[3\] but the model returns \[2\]",
        ),
        ("max_samples = 200", "max_samples = 200\ntau = 1.0", r"tau is only meaningful"),
        ('version = "1.0"', "version = 1", r"version must be a non-empty string, got 1"),
    ],
)
def test_bad_manifest_names_file_and_field(model_dir: Path, old: str, new: str, message: str):
    _edit_toml(model_dir, old, new)
    with pytest.raises(ManifestError, match=message) as info:
        load_model(model_dir)
    assert "model" in str(info.value)  # names model.toml or model.py


def test_missing_and_invalid_files(model_dir: Path) -> None:
    (model_dir / "model.toml").write_text("name = [unclosed")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(model_dir)
    (model_dir / "model.toml").unlink()
    with pytest.raises(ManifestError, match="model.toml: no such file"):
        load_model(model_dir)
    with pytest.raises(ManifestError, match="no such directory"):
        load_model(model_dir / "absent")


def test_broken_model_py(model_dir: Path) -> None:
    (model_dir / "model.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ManifestError, match="importing failed: RuntimeError: boom"):
        load_model(model_dir)


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "weights.safetensors"))
    change(t)
    save_file(t, str(folder / "weights.safetensors"))


def test_weights_shape_mismatch_names_tensor_and_shapes(model_dir: Path) -> None:
    _rewrite_weights(model_dir, lambda t: t.__setitem__("0.weight", torch.zeros(9, 3)))
    with pytest.raises(WeightsError, match=r"'0.weight' has shape \[9, 3\] .* expects \[8, 3\]"):
        load_model(model_dir)


def test_weights_missing_and_unexpected(model_dir: Path) -> None:
    _rewrite_weights(model_dir, lambda t: t.pop("3.bias"))
    with pytest.raises(WeightsError, match=r"missing tensor '3.bias' .*shape \[2\]"):
        load_model(model_dir)
    _rewrite_weights(model_dir, lambda t: t.update({"3.bias": torch.zeros(2), "x": torch.ones(4)}))
    with pytest.raises(WeightsError, match=r"unexpected tensor 'x' of shape \[4\]"):
        load_model(model_dir)


def test_weights_nan_and_garbage(model_dir: Path) -> None:
    _rewrite_weights(model_dir, lambda t: t["3.bias"].fill_(float("nan")))
    with pytest.raises(WeightsError, match="'3.bias' contains NaN"):
        load_model(model_dir)
    (model_dir / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(model_dir)
    (model_dir / "weights.safetensors").unlink()
    with pytest.raises(WeightsError, match="no such file"):
        load_model(model_dir)


def test_repository_isolates_failures(model_dir: Path, arch_file: Path, tiny_module) -> None:
    root = model_dir.parent
    save_model(root / "tiny2", tiny_module, _manifest(name="tiny2"), arch_file)
    save_model(root / "zdup", tiny_module, _manifest(), arch_file)  # same name as tiny
    broken = save_model(root / "broken", tiny_module, _manifest(name="broken"), arch_file)
    _edit_toml(broken, "max_samples = 200", 'max_samples = "ten"')
    (root / "notes").mkdir()  # a folder without model.toml is not a model
    repo = load_repository(root)
    assert sorted(repo.models) == ["tiny", "tiny2"]
    assert sorted(repo.failures) == ["broken", "zdup"]
    assert "max_samples must be a positive integer" in repo.failures["broken"]
    assert "already used by folder 'tiny'" in repo.failures["zdup"]
    # distinct model.py files import as distinct modules
    assert repo.models["tiny"].module is not repo.models["tiny2"].module


def test_repository_root_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_repository(tmp_path / "nope")
