"""1-D toy regressor with MC dropout: y = f(x) for a scalar x, trained on data with a gap."""

from __future__ import annotations

from torch import nn

from mcdrop import MCDropout


def build(hidden: int = 64, p: float = 0.1) -> nn.Sequential:
    """Linear(1, H) -> ReLU -> Dropout(p) -> Linear(H, H) -> ReLU -> Dropout(p) -> Linear(H, 1).

    Shapes: input (B, 1) -> output (B, 1).
    """
    return nn.Sequential(
        nn.Linear(1, hidden),
        nn.ReLU(),
        MCDropout(p),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        MCDropout(p),
        nn.Linear(hidden, 1),
    )
