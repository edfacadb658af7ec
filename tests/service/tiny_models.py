"""Architectures of the tiny test models (copied into each model folder as model.py).

Only torch and mcdrop: this file is imported from a temporary model folder by the
repository loader.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from mcdrop import MCDropout


class TinyRegressor(nn.Module):
    """features -> 1 with one MC dropout layer.

    The output adds ``0 * exp(x[:, :1])``: zero for ordinary inputs, NaN once an input
    exceeds ~88 (float32 exp overflows). The service tests use it for non-finite output.
    """

    def __init__(self, features: int, hidden: int, p: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), MCDropout(p))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) + 0.0 * torch.exp(x[:, :1])


class TinyClassifier(nn.Module):
    """features -> classes logits with one MC dropout layer."""

    def __init__(self, features: int, hidden: int, classes: int, p: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), MCDropout(p), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SlowRegressor(nn.Module):
    """A regressor whose forward pass sleeps ``delay`` seconds, unless every input is 0.

    A row whose values are all 13 makes it raise, to test unexpected model failures. Inputs
    of zeros only (the service's warm-up and compute-budget measurement) do not sleep, so a
    server holding this model starts in milliseconds, not seconds. The data-dependent
    branches also keep torch.fx from tracing it, so each call runs forward.
    """

    def __init__(self, features: int, p: float, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Linear(features, 8), nn.ReLU(), MCDropout(p), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 13.0).all(dim=-1).any()):
            raise RuntimeError("secret internal detail 0xdeadbeef")
        if bool((x != 0).any()):
            time.sleep(self.delay)
        return self.net(x)


def build_regressor(features: int = 4, hidden: int = 16, p: float = 0.2) -> nn.Module:
    """Factory of the regression test model."""
    return TinyRegressor(features, hidden, p)


def build_classifier(
    features: int = 4, hidden: int = 16, classes: int = 3, p: float = 0.3
) -> nn.Module:
    """Factory of the classification test model."""
    return TinyClassifier(features, hidden, classes, p)


def build_slow(features: int = 4, p: float = 0.2, delay: float = 0.2) -> nn.Module:
    """Factory of the slow (and sometimes failing) test model."""
    return SlowRegressor(features, p, delay)
