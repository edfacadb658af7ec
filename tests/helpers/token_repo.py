"""Integer-input (token id) models served by a real uvicorn server on 127.0.0.1, for the
client and ``mcdrop predict`` tests: ``tokens`` takes rows of 3 ids, ``grid`` rows shaped
(2, 3), both int64 into an embedding with dropout; ``floaty`` is a float32 twin of
``tokens`` (the same weights reading the ids as floats through a one-hot product).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mcdrop.repository import Manifest, save_model

TOKEN_MODEL = """
import torch
from torch import nn

from mcdrop import MCDropout


class TokenRegressor(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.drop = MCDropout(0.3)
        self.head = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():  # floaty: the same model reading ids sent as floats
            ids = ids.round().long()
        feats = self.emb(ids).flatten(1, -2).mean(1)  # (B, D), any input shape
        return self.head(self.drop(feats))


def build(vocab: int = 10, dim: int = 8) -> nn.Module:
    return TokenRegressor(vocab, dim)
"""


def token_source(root: Path) -> tuple[Path, Any]:
    """Write :data:`TOKEN_MODEL` to ``root/token_model.py``: (its path, the imported module)."""
    source = root / "token_model.py"
    source.write_text(TOKEN_MODEL)
    spec = importlib.util.spec_from_file_location(f"_token_model_{id(root)}", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return source, module


def make_token_repo(root: Path) -> Path:
    """Write the three models under ``root/repo``; returns that folder."""
    source, module = token_source(root)
    torch.manual_seed(0)
    net = module.build()
    common = dict(version="1", task="regression", output_shape=(1,), default_samples=16,
                  max_samples=200, max_batch_rows=64, factory="build")  # fmt: skip
    for name, shape, dtype in (
        ("tokens", (3,), "int64"),
        ("grid", (2, 3), "int64"),
        ("floaty", (3,), "float32"),
    ):
        manifest = Manifest(name=name, input_shape=shape, input_dtype=dtype, **common)  # type: ignore[arg-type]
        save_model(root / "repo" / name, net, manifest, source)
    return root / "repo"


@contextmanager
def token_server(repo: Path) -> Iterator[str]:
    """A live server (tests/helpers/live_server.py) on ``repo`` instead of ``models/``."""
    from helpers.live_server import live_server

    with live_server(models_dir=repo) as url:
        yield url
