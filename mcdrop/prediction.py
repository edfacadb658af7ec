"""Result and request types of the MC engine."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["Prediction", "MCRequest"]


@dataclass
class Prediction:
    """Summary of S Monte Carlo dropout draws for B rows.

    Attributes
    ----------
    mean, variance, std : Tensor (B, *O)
        Predictive mean and variance. Regression: sample mean and unbiased sample variance
        of the outputs, plus 1/tau when tau is set, plus the mean predicted aleatoric
        variance for (mean, log-variance) heads. Classification: mean and variance of the
        softmax probabilities (``mean`` equals ``probs``).
    stderr : Tensor (B, *O)
        Monte Carlo standard error of ``mean``: sd / sqrt(S).
    samples : int
        Samples drawn per row (the largest, for adaptive sampling).
    samples_per_row : Tensor (B,)
        Samples each row used (equal to ``samples`` unless ``samples="auto"``).
    seed : int
        The seed that reproduces this result.
    epistemic_variance, aleatoric_variance : Tensor (B, *O) or None
        For regression: the model-uncertainty part (sample variance) and the noise part
        (1/tau and/or mean predicted variance).
    probs, predictive_entropy, expected_entropy, mutual_information, variation_ratio
        Classification only: (B, C), (B,), (B,), (B,), (B,); entropies in nats.
    draws : Tensor (S, B, *O) or None
        Raw outputs (logits for classifiers) when ``return_samples=True``.
    """

    task: str
    mean: torch.Tensor
    variance: torch.Tensor
    std: torch.Tensor
    stderr: torch.Tensor
    samples: int
    samples_per_row: torch.Tensor
    seed: int
    epistemic_variance: torch.Tensor | None = None
    aleatoric_variance: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    predictive_entropy: torch.Tensor | None = None
    expected_entropy: torch.Tensor | None = None
    mutual_information: torch.Tensor | None = None
    variation_ratio: torch.Tensor | None = None
    draws: torch.Tensor | None = None
    exact: bool = False

    def to_numpy(self) -> dict[str, Any]:
        """Every tensor field as a numpy array (float64 where floating), others as is."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return out


@dataclass
class MCRequest:
    """One request of :meth:`MCPredictor.predict_many`."""

    inputs: Any
    samples: int | None = None
    seed: int | None = None
    return_samples: bool = False
