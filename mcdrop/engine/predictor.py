"""MCPredictor: S stochastic forward passes, batched, chunked, seeded and summarised.

A facade over the engine's parts (see :mod:`mcdrop.engine`): options in an
:class:`~mcdrop.engine.config.EngineConfig`, inputs checked by :mod:`~mcdrop.engine.inputs`,
samples run by a :class:`~mcdrop.engine.runner.Runner` (one per device when sharded) and
summarised by the task's summary object. Shapes: S samples, B rows, ``*O`` one row's output.

1. Keyed masks: dropout masks come from a counter-based generator keyed by (seed, sample,
   site, element), so a row's draws do not depend on the other rows it is batched with,
   nor on chunking.
2. Prefix: the layers before the first dropout run once per call, not S times.
3. Chunks: samples x rows are packed into chunks sized from a memory budget; statistics
   are folded chunk by chunk (Welford/Chan), so memory does not grow with S unless
   ``return_samples=True``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mcdrop import layers
from mcdrop.engine.adaptive import predict_adaptive
from mcdrop.engine.config import EngineConfig, Precision, SplitMode, Task
from mcdrop.engine.exact import predict_exact
from mcdrop.engine.inputs import as_tensor, checked, model_rejects_inputs, seed_of
from mcdrop.engine.jobs import ManyJob
from mcdrop.engine.plan import Group, unpack_output
from mcdrop.engine.requests import group_requests
from mcdrop.engine.runner import Runner, mc_flags
from mcdrop.engine.shard import run_sharded
from mcdrop.engine.summaries import summary_for
from mcdrop.fields import check_samples
from mcdrop.prediction import MCRequest, Prediction

__all__ = ["MCPredictor", "Prediction", "MCRequest"]


class MCPredictor:
    """Monte Carlo dropout predictions for any PyTorch model with dropout.

    Parameters
    ----------
    model : nn.Module
        Any model with dropout (modules, functional, attention). It is not modified:
        module modes are switched only during a call and restored afterwards.
    samples : int
        Default number of MC samples S (default 100).
    task : {"regression", "classification"}
        Classification models return logits (B, C); regression models return (B, *O) or a
        (mean, log_variance) pair for a heteroscedastic head.
    device : str or torch.device, optional
        Where to run; default: the device of the model's parameters (CPU if none).
    tau : float, optional
        Model precision; 1/tau is added to the regression variance (Gal, eq. 8).
    max_rows : int, optional
        Largest number of rows (samples x batch) per forward chunk. Default: sized from a
        memory budget (64 MiB of activations on CPU, 40% of free memory on CUDA).
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the forward passes; statistics are always float64.
    split : {"auto", "off"}
        "auto" runs the layers before the first dropout once per call when the model is an
        ``nn.Sequential`` or traceable by torch.fx (checked against replication first).
    max_samples : int
        Upper bound for ``samples`` and for adaptive sampling (default 10,000).
    devices : sequence of devices, optional
        Shard the S samples of every call across these devices (a model copy on each, run
        in parallel threads); results equal the single-device ones up to float rounding.
        Applies to fixed-S :meth:`predict` and :meth:`predict_many`.
    compile : bool
        Run the stochastic part (after the prefix) as one ``torch.compile`` graph whose
        dropout masks are computed from explicit unit keys, so inductor fuses them into
        the surrounding kernels (:mod:`mcdrop.engine.compiled`). The same masks as the
        eager passes; numbers equal to float32 rounding. Each new input signature compiles
        once (logged, seconds); models it cannot compile run eagerly with a logged reason
        (``describe(x)["compile"]``).
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = 100,
        task: Literal["regression", "classification"] | Task = "regression",
        device: str | torch.device | None = None,
        tau: float | None = None,
        *,
        max_rows: int | None = None,
        precision: Literal["fp32", "bf16", "fp16"] | Precision = "fp32",
        split: Literal["auto", "off"] | SplitMode = "auto",
        max_samples: int = 10_000,
        devices: Sequence[str | torch.device] | None = None,
        compile: bool = False,
    ) -> None:
        self.config = EngineConfig(
            samples=samples,
            task=task,  # type: ignore[arg-type]
            tau=tau,
            max_rows=max_rows,
            precision=precision,  # type: ignore[arg-type]
            split=split,  # type: ignore[arg-type]
            max_samples=max_samples,
            compile=compile,
        )
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        p0 = next(model.parameters(), None)
        self.param_dtype = p0.dtype if p0 is not None else torch.float32
        self._lock = threading.RLock()
        summary = summary_for(self.config.task, self.config.tau)
        self.runner = Runner(self.model, self.device, self.config, summary)
        # One model copy per device; each runs a contiguous share of every call's samples.
        self._replicas: list[Runner] = []
        if devices is not None and len(devices) > 1:
            self._replicas = [
                Runner(copy.deepcopy(model).to(torch.device(d)), torch.device(d), self.config,
                       summary)
                for d in devices
            ]  # fmt: skip

    # ------------------------------------------------------------------ options

    @property
    def samples(self) -> int:
        """Default S."""
        return self.config.samples

    @property
    def max_samples(self) -> int:
        """Upper bound for S."""
        return self.config.max_samples

    @property
    def task(self) -> Task:
        """The task (a string enum: compares equal to "regression" / "classification")."""
        return self.config.task

    @property
    def tau(self) -> float | None:
        """Model precision, or None."""
        return self.config.tau

    @property
    def precision(self) -> Precision:
        """Autocast precision of the forward passes."""
        return self.config.precision

    @property
    def split_mode(self) -> SplitMode:
        """Whether the deterministic prefix runs once ("auto") or never ("off")."""
        return self.config.split

    @property
    def max_rows(self) -> int | None:
        """The ``max_rows`` option as given (an out-of-memory retry does not change it)."""
        return self.config.max_rows

    # ------------------------------------------------------------------ public API

    def predict(
        self,
        x: Any,
        samples: int | Literal["auto"] | None = None,
        seed: int | None = None,
        *,
        return_samples: bool = False,
        rtol: float = 0.02,
        atol: float = 0.0,
        min_samples: int = 32,
        max_samples: int | None = None,
        exact: bool = False,
    ) -> Prediction:
        """Predict with S stochastic passes.

        Parameters
        ----------
        x : Tensor or ndarray (B, ...)
            Input rows of any rank and dtype the model accepts.
        samples : int, "auto" or None
            S; None uses the predictor's default. "auto" draws in rounds (``min_samples``,
            then doubling) until every output of a row has MC standard error
            <= ``rtol * |mean| + atol``, or ``max_samples`` is reached, per row.
        seed : int, optional
            Same seed and input give the same numbers, however the rows are batched. A
            random seed is drawn (and reported in ``Prediction.seed``) when omitted.
        return_samples : bool
            Keep the raw (S, B, *O) draws in ``Prediction.draws``.
        exact : bool
            Enumerate all 2^n dropout subnetworks (n dropout units per row, n <= 16) with
            their probabilities instead of sampling; ``variance`` is then the exact
            population variance. For tiny models and tests.

        Returns
        -------
        Prediction
            Statistics shaped (B, *O); see :class:`~mcdrop.Prediction`.
        """
        with self._lock, model_rejects_inputs():
            xt = self._checked(as_tensor(x))
            if exact:
                return predict_exact(self.runner, xt)
            if samples == "auto":
                cap = check_samples(
                    max_samples if max_samples is not None else self.max_samples, "max_samples"
                )
                first = check_samples(min_samples, "min_samples")
                return predict_adaptive(
                    self.runner, xt, seed_of(seed), return_samples, rtol, atol, first, cap
                )
            group = Group(xt, seed_of(seed), self.config.sample_count(samples))
            self._execute([group], return_samples)
            return self.runner.summary.finish([group])[0]

    def predict_many(
        self, requests: Sequence[MCRequest], *, share_unseeded: bool = False
    ) -> list[Prediction]:
        """Run several requests (own inputs, sample count, seed) through shared forward passes.

        Each request gets exactly the masks it would get alone, so each result equals
        ``predict(r.inputs, r.samples, r.seed)`` up to float rounding. Input validation
        errors name the request index.

        With ``share_unseeded=True``, the requests without a seed (and without
        ``return_samples``) that have the same sample count and row shape run as the rows
        of one request: one drawn seed, the same S sampled subnetworks for all of them, as
        the rows of a single request always share them. Each answer is distributed exactly
        as alone and reports the shared seed, which reproduces it; answers of different
        requests are then no longer independent of each other (their Monte Carlo errors
        correlate). It saves the per-request masks: for one-row requests most of the work.
        """
        job = self.start_many(requests, share_unseeded=share_unseeded)
        while not job.step():
            pass
        return job.result()

    def start_many(self, requests: Sequence[MCRequest], *, share_unseeded: bool = False) -> ManyJob:
        """:meth:`predict_many` as a job run one forward chunk per ``job.step()``, so that a
        caller can interleave other work between chunks or abandon it; ``job.result()``
        gives the same predictions :meth:`predict_many` would. Input errors are raised here
        (naming the request), errors of the model by the step that meets them."""
        with self._lock, model_rejects_inputs():
            plan = group_requests(requests, self._checked, self.config.sample_count, share_unseeded)
        return ManyJob(self.runner, self._replicas, self._lock, plan)

    def deterministic(self, x: Any) -> torch.Tensor:
        """One plain eval-mode forward pass (no dropout): the cost baseline, (B, *O)."""
        with self._lock:
            xt = self._checked(as_tensor(x))
            saved = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                with torch.inference_mode(), self.runner.autocast():
                    y, _ = unpack_output(self.model(xt))
                return y
            finally:
                layers.restore_flags(saved)

    def describe(self, x: Any) -> dict[str, Any]:
        """How the engine runs inputs shaped like ``x``: sites, split strategy, chunk rows."""
        with self._lock:
            xt = self._checked(as_tensor(x))
            with mc_flags(self.model):
                plan = self.runner.plan(xt)
            return {
                "dropout_sites": len(plan.sites),
                "split": plan.prefix.strategy if plan.prefix else None,
                "split_reason": plan.prefix_reason,
                "max_rows": self.runner.chunk_rows(plan),
                "compile": "compiled" if plan.compiled is not None else plan.compile_reason,
            }

    # ------------------------------------------------------------------ internals

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        return checked(x, self.param_dtype, self.device)

    def _execute(self, groups: list[Group], keep: bool) -> None:
        """Run ``groups`` here, or sharded over the device replicas and merged."""
        if self._replicas:
            run_sharded(self._replicas, groups, keep)
        else:
            self.runner.run(groups, keep)
