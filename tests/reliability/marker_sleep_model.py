"""A model that sleeps in its forward pass only for inputs holding the marker value
(copied into a model folder as model.py): warm-up on zeros is instant, a marked request
keeps the engine busy for ``delay`` seconds per forward pass (one chunk)."""

from __future__ import annotations

import time

import torch
from torch import nn

from mcdrop import MCDropout

MARKER = 7.0


class MarkerSleeper(nn.Module):
    """4 features -> 1, one MC dropout layer; sleeps when any input equals MARKER."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), MCDropout(0.2), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == MARKER).any()):  # data-dependent: not traceable, as intended
            time.sleep(self.delay)
        return self.net(x)


def build(delay: float = 1.0) -> nn.Module:
    """Factory named in the manifest."""
    return MarkerSleeper(delay)
