"""8x8 handwritten digit classifier with MC dropout (scikit-learn's bundled digits).

Input: the 64 raw pixel intensities (0..16) of one image, row-major; output: 10 logits.
"""

from __future__ import annotations

import torch
from torch import nn

from mcdrop import MCDropout


class DigitsMLP(nn.Module):
    """Scale to [0, 1] -> [Linear -> ReLU -> Dropout(p)] x 2 -> Linear(H, 10).

    Shapes: input (B, 64) -> logits (B, 10).
    """

    def __init__(self, hidden: int, p: float, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            MCDropout(p),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            MCDropout(p),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / self.scale)  # (B, 10)


def build(hidden: int = 128, p: float = 0.5, scale: float = 16.0) -> DigitsMLP:
    return DigitsMLP(hidden, p, scale)
