"""mcdrop: Monte Carlo dropout uncertainty, correct and fast.

Public API::

    from mcdrop import MCDropout, mc_mode, MCPredictor, Prediction

    pred = MCPredictor(model, samples=100, task="classification")
    out = pred.predict(x, seed=7)       # out.probs, out.mutual_information, ...

The core modules need only torch and numpy; the HTTP service lives in ``service`` and the
client in ``mcdrop.client``.
"""

from typing import TYPE_CHECKING, Any

from mcdrop.errors import (
    DataError,
    InvalidInputError,
    ManifestError,
    McdropError,
    ModelOutputError,
    NoDropoutError,
    UnsupportedModelError,
    WeightsError,
)

# The engine (torch) loads on first use, so that ``mcdrop.client`` and ``mcdrop.schemas``
# stay light for programs that only talk to a server.
_LAZY = {
    "MCAlphaDropout": "mcdrop.layers",
    "MCDropout": "mcdrop.layers",
    "MCDropout1d": "mcdrop.layers",
    "MCDropout2d": "mcdrop.layers",
    "MCDropout3d": "mcdrop.layers",
    "MCState": "mcdrop.layers",
    "convert_dropout": "mcdrop.layers",
    "disable_mc": "mcdrop.layers",
    "enable_mc": "mcdrop.layers",
    "mc_mode": "mcdrop.layers",
    "inspect": "mcdrop.audit",
    "MCPredictor": "mcdrop.engine.predictor",
    "MCRequest": "mcdrop.prediction",
    "Prediction": "mcdrop.prediction",
}

if TYPE_CHECKING:
    from mcdrop.audit import inspect
    from mcdrop.engine.predictor import MCPredictor
    from mcdrop.layers import (
        MCAlphaDropout,
        MCDropout,
        MCDropout1d,
        MCDropout2d,
        MCDropout3d,
        MCState,
        convert_dropout,
        disable_mc,
        enable_mc,
        mc_mode,
    )
    from mcdrop.prediction import MCRequest, Prediction


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "MCDropout",
    "MCDropout1d",
    "MCDropout2d",
    "MCDropout3d",
    "MCAlphaDropout",
    "mc_mode",
    "enable_mc",
    "disable_mc",
    "MCState",
    "convert_dropout",
    "inspect",
    "MCPredictor",
    "MCRequest",
    "Prediction",
    "McdropError",
    "InvalidInputError",
    "NoDropoutError",
    "UnsupportedModelError",
    "ModelOutputError",
    "ManifestError",
    "WeightsError",
    "DataError",
    "__version__",
]
