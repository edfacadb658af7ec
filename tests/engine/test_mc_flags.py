"""MC flags set in one walk: the flags that result, an overridden ``train()`` honoured, and
every prior flag restored (the fast path writes only the flags that change)."""

from __future__ import annotations

import torch
from torch import nn

from mcdrop import layers


class FrozenNorm(nn.Module):
    """A module whose own ``train()`` keeps its norm in eval mode (a common override)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> FrozenNorm:
        self.calls.append(mode)
        super().train(mode)
        self.norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), FrozenNorm(), nn.ReLU())


def test_flags_in_mc_mode_and_restored_exactly() -> None:
    model = _model()
    # Mixed prior flags, as a user may leave them: each must come back as it was.
    prior = [True, False, True, False, True]
    for m, flag in zip(model.modules(), prior):
        m.training = flag
    saved = layers.set_mc_flags(model)
    try:
        flags = {type(m).__name__: m.training for m in model.modules()}
        assert flags == {
            "Sequential": False, "Linear": False, "Dropout": True, "FrozenNorm": False,
            "BatchNorm1d": False, "ReLU": False,
        }  # fmt: skip
    finally:
        layers.restore_flags(saved)
    assert [m.training for m in model.modules()][:5] == prior


def test_an_overridden_train_is_called() -> None:
    model = _model()
    frozen = model[2]
    assert isinstance(frozen, FrozenNorm)
    frozen.calls.clear()
    saved = layers.set_mc_flags(model)
    layers.restore_flags(saved)
    assert frozen.calls == [False]  # model.eval() ran, so the override saw it


def test_plain_models_skip_eval_but_match_it() -> None:
    plain = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.1)).train()
    saved = layers.set_mc_flags(plain)
    try:
        assert [m.training for m in plain.modules()] == [False, False, False, True]
    finally:
        layers.restore_flags(saved)
    assert all(m.training for m in plain.modules())
