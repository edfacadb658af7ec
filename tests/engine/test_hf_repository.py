"""Hugging Face transformers folders in the model repository (``format = "transformers"``).

The loader on tiny random-init BERT folders built from configs (no download): manifest
validation, strict weights, the missing-extra error, token ids and tokenize(), seeded and
row-independent MC answers with attention dropout alone. Then the shipped ``langid`` model
end to end: ``mcdrop serve`` in a subprocess, answered over raw HTTP with token ids,
tritonclient.http in JSON mode with an INT64 input, and the Python client with numpy int64.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mcdrop.errors import InvalidInputError, ManifestError, WeightsError
from mcdrop.repository import load_manifest, load_model, load_repository, manifest_to_toml

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
LANGID = ROOT / "models" / "langid"
SEQ = 8
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "el gato come pescado"] * 4
MANIFEST = """
name = "tiny-bert"
version = "1"
task = "classification"
format = "transformers"

[input]
shape = [8]
dtype = "int64"

[output]
shape = [3]
names = ["a", "b", "c"]

[sampling]
default_samples = 50

[model]
path = "{path}"
task = "sequence-classification"
attn_implementation = "{attn}"
"""


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=SEQ
    )


def make_folder(
    root: Path,
    *,
    attn: str = "eager",
    hidden_dropout: float = 0.0,
    tokenizer: bool = True,
    sub: str = ".",
) -> Path:
    """A tiny random-init BERT saved with save_pretrained, with only attention dropout on
    by default (initializer_range 0.3 makes attention non-uniform enough to see it)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=SEQ, num_labels=3,
        hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=0.3,
        classifier_dropout=0.0, initializer_range=0.3, pad_token_id=0,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg)
    hf_dir = root / sub
    model.save_pretrained(hf_dir)
    if tokenizer:
        _tokenizer().save_pretrained(hf_dir)
    (root / "model.toml").write_text(MANIFEST.format(path=sub, attn=attn))
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "tiny-bert")


IDS = torch.tensor([[3, 4, 5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14, 2]])  # (2, 8)


# ----------------------------------------------------------------------------- manifest


def test_manifest_round_trip(folder: Path) -> None:
    m = load_manifest(folder)
    assert m.format == "transformers" and m.input_dtype == "int64"
    assert m.config == {"path": ".", "task": "sequence-classification", "output": "logits",
                        "attn_implementation": "eager"}  # fmt: skip
    (folder / "model.toml").write_text(manifest_to_toml(m))
    assert load_manifest(folder) == m


@pytest.mark.parametrize(
    "old, new, match",
    [
        ('format = "transformers"', 'format = "onnx"', "must be 'pytorch' or 'transformers'"),
        ('task = "sequence-classification"', 'task = "translation"', "task must be one of"),
        ('path = "."', 'path = "../elsewhere"', "inside the model folder"),
        ('attn_implementation = "eager"', 'attn_implementation = "flash"', "'eager' or 'sdpa'"),
        ('path = "."', 'path = "."\nfactory = "build"', "unknown key 'factory'"),
    ],
    ids=["format", "hf-task", "path", "attn", "pytorch-key"],
)
def test_manifest_errors_name_the_field(folder: Path, old: str, new: str, match: str) -> None:
    text = (folder / "model.toml").read_text()
    (folder / "model.toml").write_text(text.replace(old, new))
    with pytest.raises(ManifestError, match=match):
        load_manifest(folder)


def test_inputs_must_be_int64_token_ids(folder: Path) -> None:
    text = (folder / "model.toml").read_text()
    (folder / "model.toml").write_text(text.replace('dtype = "int64"', 'dtype = "float32"'))
    with pytest.raises(ManifestError, match="token ids"):
        load_model(folder)


def test_missing_transformers_names_the_extra(folder: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ManifestError, match=r"mcdrop\[hf\]"):
        load_model(folder)
    repo = load_repository(folder.parent)  # the folder fails alone, with the same reason
    assert "mcdrop[hf]" in repo.failures["tiny-bert"] and not repo.models


# ----------------------------------------------------------------------------- weights


def test_missing_weights_and_wrong_shapes_are_refused(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48  # the file's tensors are 32 wide
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((WeightsError, ManifestError), match="intermediate|shape|size"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises((WeightsError, ManifestError)):
        load_model(folder)


def test_no_config_json(folder: Path) -> None:
    (folder / "config.json").unlink()
    with pytest.raises(ManifestError, match="no config.json"):
        load_model(folder)


def test_loading_never_reaches_the_hub(folder: Path) -> None:
    load_model(folder)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


# ----------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_dropout_alone_is_sampled_seeded_and_row_independent(
    tmp_path: Path, attn: str
) -> None:
    lm = load_model(make_folder(tmp_path / "m", attn=attn, sub="hf"))
    assert lm.module.model.config._attn_implementation == attn
    pred = lm.predictor()
    out = pred.predict(IDS, samples=64, seed=5)
    assert out.probs.shape == (2, 3)
    assert (out.variance > 0).all() and (out.mutual_information > 0).all()
    again = pred.predict(IDS, samples=64, seed=5)
    assert torch.equal(out.probs, again.probs)
    alone = pred.predict(IDS[1:], samples=64, seed=5)  # a seeded row ignores its batch
    torch.testing.assert_close(alone.probs[0], out.probs[1], rtol=1e-5, atol=1e-6)


def test_padding_is_masked_out(folder: Path) -> None:
    lm = load_model(folder)
    ids = IDS[:1]  # 5 tokens, then 3 [PAD] = 0
    hf = lm.module.model
    with torch.no_grad():
        served = lm.module(ids)
        masked = hf(input_ids=ids, attention_mask=(ids != 0).long()).logits
        unmasked = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(served, masked)
    assert not torch.allclose(served, unmasked)  # the mask changes the answer: it is applied


def test_tokenize_gives_int64_ids_of_the_row_length(folder: Path) -> None:
    lm = load_model(folder)
    assert lm.takes_text
    enc = lm.tokenize(["the cat sat", "el gato come pescado en el parque con la gata"])
    assert set(enc) == {"input_ids", "attention_mask"}
    assert enc["input_ids"].dtype == np.int64 and enc["input_ids"].shape == (2, SEQ)
    assert enc["attention_mask"].dtype == np.int64
    assert enc["input_ids"][0, 3:].tolist() == [0] * (SEQ - 3)  # padded with [PAD] = 0
    assert enc["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (SEQ - 3)
    out = lm.predictor().predict(torch.from_numpy(enc["input_ids"]), samples=8, seed=0)
    assert out.probs.shape == (2, 3)
    with pytest.raises(InvalidInputError, match="list of strings"):
        lm.tokenize("one string, not a list")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="list of strings"):
        lm.tokenize([1, 2])  # type: ignore[list-item]


def test_without_tokenizer_files_text_is_refused(tmp_path: Path) -> None:
    lm = load_model(make_folder(tmp_path / "m", tokenizer=False))
    assert not lm.takes_text
    with pytest.raises(InvalidInputError, match="takes no text"):
        lm.tokenize(["hello"])


# ----------------------------------------------------------------------------- langid, served


def test_langid_loads_and_tells_languages_apart() -> None:
    lm = load_model(LANGID)
    texts = ["where is the train station please", "¿dónde está la estación de tren?"]
    out = lm.predictor().predict(torch.from_numpy(lm.tokenize(texts)["input_ids"]), seed=0)
    names = lm.manifest.output_names
    assert [names[int(k)] for k in out.probs.argmax(1)] == ["english", "spanish"]
    assert (out.mutual_information > 0).all()


@pytest.fixture(scope="module")
def langid_server(tmp_path_factory):
    pytest.importorskip("service.app")
    from helpers.live_server import start_server

    repo = tmp_path_factory.mktemp("hfrepo")
    shutil.copytree(LANGID, repo / "langid")
    server = start_server(repo, {"MCDROP_LOG_LEVEL": "warning"}, ready_timeout=120.0)
    try:
        yield server
    finally:
        server.stop()


def _ids() -> np.ndarray:
    return np.asarray(json.loads((LANGID / "examples.json").read_text())["input_ids"])


@pytest.mark.slow  # the langid_server fixture: mcdrop serve in a subprocess
def test_served_over_http_with_token_ids(langid_server) -> None:
    import httpx

    body = {"inputs": _ids().tolist(), "samples": 50, "seed": 1}
    r = httpx.post(f"{langid_server.url}/v1/models/langid/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert len(ans["mutual_information"]) == 3 and min(ans["mutual_information"]) > 0
    assert np.asarray(ans["probs"]).shape == (3, 5)
    info = httpx.get(f"{langid_server.url}/v1/models/langid", timeout=10).json()
    assert info["input_dtype"] == "int64" and info["input_shape"] == [32]


@pytest.mark.slow  # the langid_server fixture: mcdrop serve in a subprocess
def test_served_to_tritonclient_json_mode_int64(langid_server) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    ids = _ids()
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{langid_server.port}")
    try:
        assert client.is_model_ready("langid")
        inp = httpclient.InferInput("input", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids.astype(np.int64), binary_data=False)
        outs = [httpclient.InferRequestedOutput(n, binary_data=False)
                for n in ("probs", "mutual_information")]  # fmt: skip
        res = client.infer("langid", [inp], outputs=outs,
                           parameters={"mc_samples": 50, "seed": 1})  # fmt: skip
        mi = res.as_numpy("mutual_information")
        assert res.as_numpy("probs").shape == (3, 5) and mi.shape == (3,) and (mi > 0).all()
    finally:
        client.close()


@pytest.mark.slow  # the langid_server fixture: mcdrop serve in a subprocess
def test_served_to_the_python_client_with_numpy_int64(langid_server) -> None:
    import httpx

    from mcdrop.client import Client

    ids = _ids().astype(np.int64)
    with Client(langid_server.url) as c:
        res = c.predict("langid", ids, samples=50, seed=1)
        texts = json.loads((LANGID / "examples.json").read_text())["texts"]
        by_text = c.predict("langid", texts, samples=50, seed=1)  # the server tokenizes
    assert res.probs.shape == (3, 5) and (res.mutual_information > 0).all()
    body = {"inputs": ids.tolist(), "samples": 50, "seed": 1}
    raw = httpx.post(f"{langid_server.url}/v1/models/langid/predict", json=body, timeout=60)
    np.testing.assert_array_equal(res.probs, np.asarray(raw.json()["probs"]))
    np.testing.assert_array_equal(by_text.probs, res.probs)


@pytest.mark.slow  # the langid_server fixture: mcdrop serve in a subprocess
def test_served_with_raw_text_v1_and_v2_bytes(langid_server) -> None:
    import httpx

    texts = json.loads((LANGID / "examples.json").read_text())["texts"]
    url = langid_server.url
    by_text = httpx.post(f"{url}/v1/models/langid/predict", timeout=60,
                         json={"inputs": texts, "samples": 50, "seed": 1})  # fmt: skip
    assert by_text.status_code == 200, by_text.text
    by_ids = httpx.post(f"{url}/v1/models/langid/predict", timeout=60,
                        json={"inputs": _ids().tolist(), "samples": 50, "seed": 1})  # fmt: skip
    # The server's tokenizer gives the ids examples.json holds: the same seeded answer.
    assert by_text.json()["probs"] == by_ids.json()["probs"]
    assert min(by_text.json()["mutual_information"]) > 0
    tensor = {"name": "input", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    v2_body = {"inputs": [tensor], "parameters": {"mc_samples": 50, "seed": 1}}
    v2 = httpx.post(f"{url}/v2/models/langid/infer", json=v2_body, timeout=60)
    assert v2.status_code == 200, v2.text
    outs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outs["mutual_information"]["shape"] == [3]
    probs_v2 = np.reshape(outs["probs"]["data"], (3, 5))  # FP32 out: float32 rounding
    np.testing.assert_allclose(probs_v2, by_text.json()["probs"], rtol=1e-6)
    # Texts and ids mixed, or a BYTES tensor of the wrong shape: 422 saying what to send.
    mixed = httpx.post(f"{url}/v1/models/langid/predict", json={"inputs": ["hello", [2, 3]]})
    assert mixed.status_code == 422 and "inputs[1] must be a string" in mixed.json()["error"]
    bad = dict(tensor, shape=[1, 3])
    r = httpx.post(f"{url}/v2/models/langid/infer", json={"inputs": [bad]})
    assert r.status_code == 422 and "shape [B] or [B, 1]" in r.json()["error"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_row_of_padding_first_does_not_switch_attention_dropout_off(
    tmp_path: Path, attn: str
) -> None:
    """All-[PAD] rows are never fully masked, so the gate probe on a first batch holding
    one still finds the attention module's flag to switch on dropout only (with SDPA, a
    fully masked row takes another path in eval mode than in train mode)."""
    from mcdrop import _gated

    first = load_model(make_folder(tmp_path / "a", attn=attn))
    fresh = first.predictor().predict(IDS, samples=64, seed=5)
    lm = load_model(make_folder(tmp_path / "b", attn=attn))
    batch = torch.cat([torch.zeros_like(IDS[:1]), IDS])  # (3, 8), row 0 all padding
    out = lm.predictor().predict(batch, samples=64, seed=5)
    att = lm.module.model.bert.encoder.layer[0].attention.self
    decision = _gated.decision(att)
    assert decision is not None and decision.sampled, decision
    torch.testing.assert_close(out.probs[1:], fresh.probs, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out.probs[0]).all()


@pytest.mark.slow  # the langid_server fixture: mcdrop serve in a subprocess
def test_served_to_mcdrop_predict_with_a_json_list_of_texts(langid_server, tmp_path, capsys):
    from mcdrop.predict_cli import main

    texts = json.loads((LANGID / "examples.json").read_text())["texts"]
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(texts))
    argv = ["--url", langid_server.url, "--model", "langid", "--input", str(path), "--seed", "1"]
    assert main([*argv, "--samples", "50", "--json"]) == 0
    by_text = json.loads(capsys.readouterr().out)
    ids = tmp_path / "ids.npy"
    np.save(ids, _ids())
    assert main(["--url", langid_server.url, "--model", "langid", "--input", str(ids),
                 "--seed", "1", "--samples", "50", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["probs"] == by_text["probs"]
    assert main(argv) == 0  # the table names the languages
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["row", "class", "prob", "entropy", "MI"]
    assert table[2].split()[1] == "english" and table[3].split()[1] == "spanish"
