"""The dropout audit at load: logged, and served in ``GET /v1/models/{name}``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers.live_server import app_client

from mcdrop.audit import UnsampledDropoutWarning
from mcdrop.repository import Manifest, save_model
from service.settings import Settings

HIDDEN = """
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.out = nn.Dropout(0.1)

    def _drop(self, x):  # the training flag is read outside forward: MC mode cannot see it
        return F.dropout(x, 0.5 if self.training else 0.0, True)

    def forward(self, x):
        return self.out(self._drop(self.lin(x)))


def build():
    return Net()
"""


@pytest.fixture(scope="module")
def audit_repo(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> Path:
    root = tmp_path_factory.mktemp("audit")
    src = root / "hidden_src.py"
    src.write_text(HIDDEN)
    ns: dict[str, object] = {}
    exec(compile(HIDDEN, str(src), "exec"), ns)  # noqa: S102 - the test's own source
    manifest = Manifest(name="hidden", version="1", task="regression", input_shape=(3,),
                        output_shape=(2,))  # fmt: skip
    save_model(root / "repo" / "hidden", ns["build"](), manifest, src)  # type: ignore[operator]
    save_model(root / "repo" / "reg", *_tiny(tiny_repo / "reg"))
    return root / "repo"


def _tiny(folder: Path) -> tuple[object, Manifest, Path]:
    from mcdrop.repository import load_model

    loaded = load_model(folder)
    return loaded.module, loaded.manifest, folder / "model.py"


@pytest.mark.anyio
async def test_audit_is_logged_and_served(
    audit_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcdrop.service")
    settings = Settings(models_dir=audit_repo, log_level="info")
    with pytest.warns(UnsampledDropoutWarning, match="not sampled by MC mode"):
        async with app_client(settings) as c:
            reg = (await c.get("/v1/models/reg")).json()
            hidden = (await c.get("/v1/models/hidden")).json()
    assert reg["audit"]["ok"] is True and reg["audit"]["sampled_sites"] >= 1
    assert reg["takes_text"] is False
    # The hidden gate is found by the train-mode cross-check and named, with its p.
    assert hidden["audit"]["ok"] is False
    assert [u["p"] for u in hidden["audit"]["unsampled"]] == [0.5]
    assert hidden["audit"]["sampled_sites"] == 1  # the nn.Dropout(0.1) still is
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "NOT" in r.message]
    assert len(warned) == 1 and "hidden" in warned[0].message
