"""The models and inputs of the engine benchmark (:mod:`mcdrop.bench`).

Each :class:`Case` builds a model with dropout and the input rows it is timed on. Float
cases draw ``torch.randn`` inputs; the token-id case (a small random-init Hugging Face
BERT, no download) draws int64 ids with padded tails, so its attention mask is not all
ones. Shapes: B rows, T tokens, C classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Case", "cases", "ConvNet", "Encoder", "dropout_mlp", "mlp", "bert_classifier"]


class ConvNet(nn.Module):
    """A small ResNet-style CNN with dropout only before the classifier."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        w = width
        self.features = nn.Sequential(
            block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 4 * w, 2), block(4 * w, 8 * w, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)  # (B, 8w)
        return self.fc(self.drop(h))


def dropout_mlp(sizes: list[int], p: float = 0.1) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU and dropout after every hidden one."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(p)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def mlp(width: int, depth: int, n_in: int = 128) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` with dropout 0.1 after each, one output."""
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(0.1)]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` (dropout 0.1 everywhere) with a mean-pooled linear head."""

    def __init__(self, d: int, layers: int, heads: int = 8) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).mean(1))


VOCAB = 1000
"""Token ids of the BERT case are drawn from [1, VOCAB); 0 is the padding id."""


def bert_classifier(hidden: int, layers: int, seq_len: int, classes: int = 3) -> nn.Module:
    """A random-init BERT sequence classifier (transformers, no download), served as mcdrop
    serves a transformers folder: one int64 tensor of token ids (B, T) -> logits (B, C).

    Hidden and attention dropout 0.1 (the BERT defaults), SDPA attention: the attention
    dropout is gated by the attention module's own training flag (``mcdrop._gated``).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from mcdrop.hf_format import TransformersModule

    cfg = AutoConfig.for_model(
        "bert",
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=4 * hidden,
        max_position_embeddings=seq_len,
        num_labels=classes,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        pad_token_id=0,
    )
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa")
    return TransformersModule(model, "logits", pad_token_id=0, max_length=seq_len)


def token_ids(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Int64 ids (B, T) from [1, VOCAB); row i keeps its first T - i*T/(2B) tokens and the
    rest is padding (0), so the derived attention masks differ per row."""
    b, t = shape
    ids = torch.randint(1, VOCAB, (b, t), device=device)
    for i in range(b):
        ids[i, t - (i * t) // (2 * b) :] = 0
    return ids


@dataclass
class Case:
    """One benchmark configuration: a model builder, the input shape, S and the task."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    samples: int
    task: str
    tokens: bool = False
    """Inputs are int64 token ids (:func:`token_ids`) rather than ``torch.randn`` floats."""
    needs: str | None = None
    """A module the case imports (an optional extra); the case is skipped without it."""

    def make_input(self, device: torch.device) -> torch.Tensor:
        """The input rows, drawn from torch's global generator (seed it first)."""
        if self.tokens:
            return token_ids(self.input_shape, device)
        return torch.randn(*self.input_shape, device=device)

    def available(self) -> str | None:
        """None when the case can run; otherwise why not."""
        if self.needs is None:
            return None
        import importlib.util

        if importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed (pip install 'mcdrop[hf]')"
        return None


def cases(size: str) -> list[Case]:
    """The benchmark cases at ``size`` ("cpu" or "gpu")."""
    if size == "gpu":
        return [
            Case("cnn", lambda: ConvNet(64, 1000), (64, 3, 224, 224), 100, "classification"),
            Case("mlp", lambda: mlp(2048, 4), (512, 128), 100, "regression"),
            Case("transformer", lambda: Encoder(512, 6), (32, 128, 512), 50, "regression"),
            Case("bert", lambda: bert_classifier(512, 6, 128), (32, 128), 50, "classification",
                 tokens=True, needs="transformers"),
        ]  # fmt: skip
    return [
        Case("cnn", lambda: ConvNet(16, 10), (16, 3, 32, 32), 100, "classification"),
        Case("mlp", lambda: mlp(512, 4), (64, 128), 100, "regression"),
        Case("transformer", lambda: Encoder(64, 2, 4), (4, 32, 64), 50, "regression"),
        # issue 19's CPU target: dropout after every layer, the GEMMs dominate
        Case("mlp_wide", lambda: dropout_mlp([64, 512, 512, 512, 10]), (256, 64), 100,
             "classification"),
        # issue 15: a Hugging Face encoder on int64 token ids (2 layers, hidden 128, T = 64)
        Case("bert", lambda: bert_classifier(128, 2, 64), (4, 64), 50, "classification",
             tokens=True, needs="transformers"),
    ]  # fmt: skip
