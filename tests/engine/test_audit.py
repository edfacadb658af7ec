"""The dropout audit (issue 15): ``mcdrop.inspect`` and ``mcdrop inspect MODEL_DIR``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import mcdrop
from mcdrop.audit import UnsampledDropoutError, UnsampledDropoutWarning, inspect
from mcdrop.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


class HelperGate(nn.Module):
    """The flag is read in a helper method, not in ``forward``: out of the probe's reach."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.5 if self.training else 0.0, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._drop(self.lin(x))


class NoisyGate(nn.Module):
    """The flag switches on dropout *and* a noise draw: MC mode must leave it off."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.lin(x), 0.25 if self.training else 0.0, True)
        return h + torch.randn_like(h) if self.training else h


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, num_layers=2, dropout=0.3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        _, (h, _) = self.rnn(pack_padded_sequence(x, lengths, batch_first=True))
        return h[-1]


def _quiet_inspect(model: nn.Module, x: torch.Tensor) -> mcdrop.audit.Audit:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sampled model must not warn
        return inspect(model, x)


def test_public_name() -> None:
    assert mcdrop.inspect is inspect


def test_fully_sampled_model_is_ok_and_json_able() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2)
    ).eval()
    audit = _quiet_inspect(model, torch.randn(3, 4))
    assert [(s.path, s.p, s.status) for s in audit.sites] == [("3", 0.2, "sampled")]
    s = audit.summary()
    assert s["ok"] and s["sampled_sites"] == 1 and s["unsampled"] == []
    assert s["flag_modules_deterministic"][0]["type"] == "BatchNorm1d"
    assert json.loads(json.dumps(s)) == s
    assert "sampled" in audit.format()


@pytest.mark.parametrize(("module", "path", "p"), [(HelperGate, "0", 0.5), (NoisyGate, "0", 0.25)])
def test_unsampled_dropout_warns_and_strict_raises(module: type, path: str, p: float) -> None:
    model = nn.Sequential(module(), nn.Dropout(0.1)).eval()
    x = torch.randn(2, 4)
    with pytest.warns(UnsampledDropoutWarning, match="not sampled"):
        audit = inspect(model, x)
    assert [(s.path, s.p) for s in audit.unsampled] == [(path, p)]
    assert not audit.summary()["ok"]
    with pytest.raises(UnsampledDropoutError):
        inspect(model, x, strict=True)


def test_packed_sequence_rnn_is_reported() -> None:
    with pytest.warns(UnsampledDropoutWarning):
        audit = inspect(Packed().eval(), torch.randn(2, 5, 4))
    assert [(s.path, s.kind) for s in audit.unsampled] == [("rnn", "rnn")]


def test_audit_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), NoisyGate_8(), nn.Dropout(0.3))
    model[1].train()  # a mixed state, restored exactly
    flags = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    x = torch.randn(4, 4)
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsampledDropoutWarning)
        inspect(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model[1].running_mean, stats)
    assert [m.training for m in model.modules()] == flags


class NoisyGate_8(NoisyGate):  # noqa: N801 - a NoisyGate on 8 features
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)


def test_hf_attention_sites_are_sampled() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(
        "bert", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, vocab_size=50, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.2,
    )  # fmt: skip
    hf = transformers.AutoModel.from_config(cfg, attn_implementation="sdpa").eval()
    audit = _quiet_inspect(hf, torch.randint(0, 50, (2, 6)))
    attn = [s for s in audit.sampled if s.p == 0.2]
    assert len(attn) == 2 and all(s.path.endswith("attention.self") for s in attn)
    assert "BertSelfAttention" in audit.summary()["flag_modules_sampled"]


def test_cli_inspects_default_models(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["inspect", str(REPO / "models" / "digits")])
    out = capsys.readouterr().out
    assert rc == 0 and "2 dropout sites sampled, 0 unsampled" in out
    assert cli_main(["inspect", str(REPO / "models" / "toy1d"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["summary"]["ok"] is True


def test_cli_warns_on_unsampled_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcdrop.repository import Manifest, save_model

    src = tmp_path / "src.py"
    src.write_text(
        "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(3, 2)\n"
        "        self.out = nn.Dropout(0.1)\n"
        "    def _drop(self, x):  # flag read outside forward: not probed\n"
        "        return F.dropout(x, 0.5 if self.training else 0.0, True)\n"
        "    def forward(self, x):\n        return self.out(self._drop(self.lin(x)))\n\n"
        "def build():\n    return Net()\n"
    )  # fmt: skip
    ns: dict[str, object] = {}
    exec(compile(src.read_text(), str(src), "exec"), ns)  # noqa: S102 - our own test source
    manifest = Manifest(name="hidden", version="1", task="regression", input_shape=(3,),
                        output_shape=(2,))  # fmt: skip
    save_model(tmp_path / "repo" / "hidden", ns["build"](), manifest, src)  # type: ignore[operator]
    assert cli_main(["inspect", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert "UNSAMPLED" in out and "WARNING" in out
    assert cli_main(["inspect", str(tmp_path / "repo"), "--strict"]) == 1
