"""Helpers of the service tests: tiny model repositories and test settings.

The apps and servers they run on come from :mod:`helpers.live_server`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from mcdrop.repository import Manifest, save_model
from service.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "mcdrop_service_test_models", Path(__file__).with_name("tiny_models.py")
)
assert _spec is not None and _spec.loader is not None
tiny_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_models)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(tiny_models.__file__)
FEATURES = 4


def _manifest(name: str, task: str, factory: str, **kw: Any) -> Manifest:
    base: dict[str, Any] = {
        "name": name,
        "version": "1",
        "task": task,
        "description": f"tiny {task} test model",
        "input_shape": (FEATURES,),
        "output_shape": (1,),
        "default_samples": 16,
        "max_samples": 200,
        "max_batch_rows": 8,
        "factory": factory,
    }
    base.update(kw)
    return Manifest(**base)


def write_tiny_repo(root: Path, *, slow_delay: float = 0.2, broken: bool = True) -> Path:
    """reg (regression), clf (3 classes), slow (sleeps, raises on a row of 13s), broken."""
    torch.manual_seed(0)
    save_model(
        root / "reg",
        tiny_models.build_regressor(),
        _manifest("reg", "regression", "build_regressor", tau=4.0),
        SOURCE,
    )
    save_model(
        root / "clf",
        tiny_models.build_classifier(),
        _manifest(
            "clf",
            "classification",
            "build_classifier",
            output_shape=(3,),
            output_names=("a", "b", "c"),
        ),
        SOURCE,
    )
    slow = _manifest(
        "slow", "regression", "build_slow", max_batch_rows=1, config={"delay": slow_delay}
    )
    save_model(root / "slow", tiny_models.build_slow(delay=slow_delay), slow, SOURCE)
    if broken:
        save_model(
            root / "broken",
            tiny_models.build_regressor(),
            _manifest("broken", "regression", "build_regressor"),
            SOURCE,
        )
        (root / "broken" / "weights.safetensors").unlink()
    return root


def make_settings(repo: Path, **kw: Any) -> Settings:
    """Test settings: small limits so that each limit is cheap to reach."""
    base: dict[str, Any] = {
        "models_dir": repo,
        "max_body_bytes": 64 * 1024,
        "max_queue_size": 4,
        "max_queue_delay_ms": 5.0,
        "request_timeout_s": 5.0,
        "drain_seconds": 5.0,
    }
    base.update(kw)
    return Settings(**base)
