"""Concrete compressive strength regressor: the MC dropout network of Gal & Ghahramani (2016).

Raw features in, MPa out: the training split's means and standard deviations are buffers of
the module, so the service needs no preprocessing and reports original units.
"""

from __future__ import annotations

import torch
from torch import nn

from mcdrop import MCDropout


class UCIRegressor(nn.Module):
    """Dropout(p) -> Linear(Q, H) -> ReLU -> Dropout(p) -> Linear(H, 1), on normalised data.

    Shapes: input (B, Q) raw features -> output (B, 1) in the target's units.
    """

    def __init__(self, inputs: int, hidden: int, p: float) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(inputs))
        self.register_buffer("x_std", torch.ones(inputs))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))
        self.net = nn.Sequential(
            MCDropout(p), nn.Linear(inputs, hidden), nn.ReLU(), MCDropout(p), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.x_mean) / self.x_std  # (B, Q)
        return self.net(z) * self.y_std + self.y_mean  # (B, 1)


def build(inputs: int = 8, hidden: int = 50, p: float = 0.01) -> UCIRegressor:
    return UCIRegressor(inputs, hidden, p)
