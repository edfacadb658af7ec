"""mcdrop: Monte Carlo dropout uncertainty, correct and fast.

Public API::

    from mcdrop import MCDropout, mc_mode, MCPredictor, Prediction

    pred = MCPredictor(model, samples=100, task="classification")
    out = pred.predict(x, seed=7)       # out.probs, out.mutual_information, ...

The core modules need only torch and numpy; the HTTP service lives in ``service`` and the
client in ``mcdrop.client``.
"""

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
from mcdrop.predictor import MCPredictor, MCRequest, Prediction

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
