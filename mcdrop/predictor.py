"""Old import path of :class:`~mcdrop.engine.predictor.MCPredictor` (``service`` and user
code import it from here); the engine lives in :mod:`mcdrop.engine`."""

from __future__ import annotations

from mcdrop.engine.predictor import MCPredictor
from mcdrop.prediction import MCRequest, Prediction

__all__ = ["MCPredictor", "Prediction", "MCRequest"]
