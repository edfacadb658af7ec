"""Model folders that fail on purpose, for the fault tests.

``build_oom`` raises ``torch.OutOfMemoryError`` whenever one forward pass gets more than
``limit`` rows, like a GPU that cannot fit the chunk; ``build_sleepy`` sleeps in every
forward pass. This file is copied into each model folder as ``model.py``, so it imports only
torch and mcdrop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcdrop import MCDropout

FEATURES = 4


class OomRegressor(nn.Module):
    """Raises OutOfMemoryError above ``limit`` rows per forward pass."""

    def __init__(self, features: int, limit: int, p: float) -> None:
        super().__init__()
        self.limit = limit
        self.net = nn.Sequential(nn.Linear(features, 8), nn.ReLU(), MCDropout(p), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        if n > self.limit:  # a shape-dependent branch: torch.fx cannot trace it
            raise torch.OutOfMemoryError(f"simulated: {n} rows > {self.limit}")
        return self.net(x)


class SleepyRegressor(nn.Module):
    """Sleeps ``delay`` seconds in every forward pass (data-dependent: not traceable)."""

    def __init__(self, features: int, p: float, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Linear(features, 8), nn.ReLU(), MCDropout(p), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.isnan().any()):  # never true (inputs are finite); blocks tracing
            raise RuntimeError("unreachable")
        time.sleep(self.delay)
        return self.net(x)


def build_oom(features: int = FEATURES, limit: int = 64, p: float = 0.2) -> nn.Module:
    """Factory of the OOM-raising model."""
    return OomRegressor(features, limit, p)


def build_sleepy(features: int = FEATURES, p: float = 0.2, delay: float = 0.5) -> nn.Module:
    """Factory of the slow model."""
    return SleepyRegressor(features, p, delay)


def _manifest(name: str, factory: str, **kw: Any) -> Any:
    from mcdrop.repository import Manifest

    base: dict[str, Any] = {
        "name": name,
        "version": "1",
        "task": "regression",
        "description": f"fault test model {name}",
        "input_shape": (FEATURES,),
        "output_shape": (1,),
        "default_samples": 16,
        "max_samples": 500,
        "max_batch_rows": 8,
        "factory": factory,
    }
    base.update(kw)
    return Manifest(**base)


def write_fault_repo(root: Path, *, oom_limit: int = 64, sleepy_delay: float = 0.5) -> Path:
    """good + slow (tiny_models) + oom + sleepy, and three broken folders.

    - ``badweights``: weights file truncated to garbage bytes;
    - ``badmanifest``: a model.toml that is not valid TOML;
    - ``badshape``: weights of another architecture (state_dict keys do not match).
    """
    import svc_helpers

    from mcdrop.repository import save_model

    torch.manual_seed(0)
    src = Path(__file__)
    tiny = svc_helpers.tiny_models
    save_model(root / "good", tiny.build_regressor(), svc_helpers._manifest(
        "good", "regression", "build_regressor"), svc_helpers.SOURCE)  # fmt: skip
    save_model(root / "crashy", tiny.build_slow(delay=0.05), svc_helpers._manifest(
        "crashy", "regression", "build_slow", max_batch_rows=8,
        config={"delay": 0.05}), svc_helpers.SOURCE)  # fmt: skip
    save_model(
        root / "oom", build_oom(limit=oom_limit),
        _manifest("oom", "build_oom", config={"limit": oom_limit}), src,
    )  # fmt: skip
    save_model(
        root / "sleepy", build_sleepy(delay=sleepy_delay),
        _manifest("sleepy", "build_sleepy", max_batch_rows=1, config={"delay": sleepy_delay}),
        src,
    )  # fmt: skip
    save_model(root / "badweights", tiny.build_regressor(),
               svc_helpers._manifest("badweights", "regression", "build_regressor"),
               svc_helpers.SOURCE)  # fmt: skip
    (root / "badweights" / "weights.safetensors").write_bytes(b"\x00garbage" * 7)
    save_model(root / "badmanifest", tiny.build_regressor(),
               svc_helpers._manifest("badmanifest", "regression", "build_regressor"),
               svc_helpers.SOURCE)  # fmt: skip
    (root / "badmanifest" / "model.toml").write_text('name = "badmanifest"\n[input\nshape = [')
    save_model(root / "badshape", tiny.build_classifier(),
               svc_helpers._manifest("badshape", "regression", "build_regressor"),
               svc_helpers.SOURCE)  # fmt: skip
    return root
