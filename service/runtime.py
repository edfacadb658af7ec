"""One served model at run time: lifecycle, batcher, array checks and answers.

A :class:`ModelRuntime` owns the model's engine and its :class:`~service.batching.Batcher`.
It knows the model's manifest, so it holds the checks every protocol shares (rows per
request, dtype and finiteness, the sample count) and turns the engine's tensors into
:class:`Answer` arrays in the batcher thread. It knows nothing about a wire format: the
codecs (:mod:`service.codec_v1`, :mod:`service.codec_v2`) turn bodies into arrays and
answers into bodies, and the data plane (:mod:`service.plane`) submits them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mcdrop import audit
from mcdrop.errors import ModelOutputError
from mcdrop.fields import CLASSIFICATION_FIELDS, COMMON_FIELDS, REGRESSION_FIELDS
from mcdrop.prediction import MCRequest, Prediction
from mcdrop.predictor import MCPredictor
from mcdrop.repository import DTYPES, LoadedModel, Manifest
from service.batching import Batcher, EngineJob
from service.body import json_type
from service.budgets import ComputeBudget, measure_budget
from service.errors import ModelNotReady, Unprocessable, shown_int
from service.metrics import ServiceMetrics
from service.settings import Settings

__all__ = ["Answer", "InferRequest", "ModelRuntime", "NP_DTYPES", "MAX_RETURNED_DRAWS"]

log = logging.getLogger("mcdrop.service")

MAX_RETURNED_DRAWS = 1_000_000  # numbers one answer may carry as raw draws
NP_DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}


@dataclass(frozen=True)
class InferRequest:
    """A decoded request, the same for every protocol.

    Attributes
    ----------
    x : ndarray
        (B, *input_shape) of the model's dtype, finite (see :meth:`ModelRuntime.finish_array`).
    samples : int
        Checked MC sample count (:meth:`ModelRuntime.check_samples`).
    seed : int or None
        Checked seed, or None for a fresh one.
    return_samples : bool
        Also return the raw draws (S, B, *O).
    bitwise : bool
        Run in a batch of its own, so that a seeded answer is byte-identical to the same
        request sent alone (batched, the numbers agree to float32 rounding only).
    """

    x: np.ndarray
    samples: int
    seed: int | None
    return_samples: bool = False
    bitwise: bool = False


@dataclass
class Answer:
    """A prediction as the wire needs it: finite numpy arrays, made in the batcher thread.

    The conversion from tensors happens there (once per batch, see
    :meth:`ModelRuntime.answers`), so that the event loop never calls torch: every torch
    call lets go of the GIL, and getting it back from a busy engine thread cost the event
    loop more than the conversion itself.
    """

    samples: int
    seed: int
    arrays: dict[str, np.ndarray]  # statistic name -> (B, *O) or (B,), C-contiguous
    draws: np.ndarray | None = None  # (S, B, *O) when asked for


def audit_model(loaded: LoadedModel) -> dict[str, Any]:
    """The dropout audit of a loaded model (:func:`mcdrop.audit.summary`) on two rows of
    zeros, the input the warm-up also runs: every dropout site, sampled or not, and why.
    An audit that fails is reported as ``{"error": ...}``; it never stops the model."""
    m = loaded.manifest
    x = torch.zeros((2, *m.input_shape), dtype=DTYPES[m.input_dtype])
    try:
        return audit.summary(loaded.module, x)
    except Exception as exc:  # a model's code may raise anything on an example
        return {"error": f"the audit could not run: {type(exc).__name__}: {exc}"}


def _log_audit(name: str, summary: dict[str, Any]) -> None:
    if "error" in summary:
        log.warning("model %s: %s", name, summary["error"])
    elif summary["ok"]:
        log.info("model %s: %d dropout sites sampled (p %s)", name, summary["sampled_sites"],
                 summary["sampled_p"])  # fmt: skip
    else:
        log.warning("model %s: dropout NOT sampled under MC mode: %s", name, summary["unsampled"])


@dataclass
class ModelRuntime:
    """One served model: manifest, engine, batcher, and the checks its inputs need."""

    loaded: LoadedModel
    settings: Settings
    metrics: ServiceMetrics
    batcher: Batcher[Any] | None = None
    ready: bool = False
    audit: dict[str, Any] | None = None  # the dropout audit's summary, made at warm-up
    budget: ComputeBudget | None = None  # the compute budget per request, measured at warm-up
    manifest: Manifest = field(init=False, repr=False)  # the loaded model's, validated
    name: str = field(init=False)  # the manifest's name
    _fields: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # Plain attributes, not properties over ``loaded``: read a dozen times per request,
        # and a runtime's model never changes (a reload makes a new runtime).
        self.manifest = self.loaded.manifest
        self.name = self.manifest.name
        task_fields = (
            CLASSIFICATION_FIELDS if self.manifest.task == "classification" else REGRESSION_FIELDS
        )
        self._fields = COMMON_FIELDS + task_fields

    @property
    def batch_rows(self) -> int:
        """Most rows one engine call takes."""
        return min(self.settings.max_batch_rows, self.manifest.max_batch_rows)

    def output_fields(self) -> tuple[str, ...]:
        """Names of the statistics this model reports."""
        return self._fields

    # -------------------------------------------------------------- lifecycle

    def _predictor(self) -> MCPredictor:
        s = self.settings
        device = s.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        options: dict[str, Any] = {"device": device, "precision": s.precision, "compile": s.compile}
        if len(s.devices) > 1:
            options["devices"] = list(s.devices)
        return self.loaded.predictor(**options)

    def warm_up(self) -> None:
        """Small predictions: build the engine's plan before the first request. With
        ``compile`` a second call changes both the rows and the samples, so that dynamo
        recompiles once with those dimensions dynamic and no request compiles."""
        m = self.manifest
        self.audit = audit_model(self.loaded)
        _log_audit(self.name, self.audit)
        sizes = ((1, 2), (2, 3)) if self.settings.compile else ((1, 2),)
        for rows, samples in sizes:
            x = np.zeros((rows, *m.input_shape), dtype=NP_DTYPES[m.input_dtype])
            pred = self._predictor().predict(x, samples=min(samples, m.max_samples), seed=0)
            self.answer(pred)
        self.budget = measure_budget(self, self._predictor())

    def start(self) -> None:
        """Create and start the model's batcher."""
        s = self.settings
        predictor = self._predictor()
        share = s.share_unseeded

        def start_batch(requests: Sequence[MCRequest]) -> EngineJob:
            # Stepped a chunk at a time by the batcher: a long request interleaves with the
            # others and stops at its next chunk once nobody waits for it.
            return EngineJob(predictor.start_many(requests, share_unseeded=share), self.answers)

        self.batcher = Batcher(
            self.name,
            start_batch=start_batch,
            max_batch_rows=self.batch_rows,
            max_delay_s=s.max_queue_delay_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            batching=s.batching_enabled,
            metrics=self.metrics,
            version=self.manifest.version,
        )
        self.batcher.start()
        self.ready = True
        self.metrics.model_ready.labels(self.name, self.manifest.version).set(1)

    def stop(self, timeout: float) -> None:
        """Refuse new requests and finish the queued ones."""
        self.ready = False
        self.metrics.model_ready.labels(self.name, self.manifest.version).set(0)
        if self.batcher is not None and not self.batcher.stop(timeout):
            log.warning("model %s: batcher did not finish within %.1f s", self.name, timeout)

    # -------------------------------------------------------------- checks

    def check_rows(self, rows: int) -> None:
        """422 when one request has more rows than the manifest allows."""
        limit = self.manifest.max_batch_rows
        if rows > limit:
            raise Unprocessable(
                f"too many rows: {shown_int(rows)} (model '{self.name}' takes at most {limit} per "
                "request); split the request"
            )

    def finish_array(self, arr: np.ndarray, where: str) -> np.ndarray:
        """Cast to the model dtype and require finite values (``where`` names the input)."""
        m = self.manifest
        if m.input_dtype != "int64":
            if arr.dtype != NP_DTYPES[m.input_dtype]:
                with np.errstate(over="ignore"):  # overflow to inf is reported just below
                    arr = arr.astype(NP_DTYPES[m.input_dtype])
            finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)[:10].tolist()
                raise Unprocessable(
                    f"{where} holds numbers that are not finite as {m.input_dtype} "
                    f"(too large in magnitude) in rows {bad}"
                )
        return arr

    def check_samples(self, samples: Any) -> int:
        """The sample count to use: the default, or ``samples`` within [1, max_samples]."""
        m = self.manifest
        if samples is None:
            return m.default_samples
        if isinstance(samples, bool) or not isinstance(samples, int):
            raise Unprocessable(f"samples must be an integer, got {json_type(samples)}")
        if not 1 <= samples <= m.max_samples:
            raise Unprocessable(
                f"samples must be between 1 and {m.max_samples} for model '{self.name}', "
                f"got {shown_int(samples)}"
            )
        return samples

    def check_draws(self, samples: int, rows: int) -> None:
        """422 when the raw draws of an answer would be too many numbers to send."""
        n = samples * rows * math.prod(self.manifest.output_shape)
        if n > MAX_RETURNED_DRAWS:
            raise Unprocessable(
                f"return_samples would send {n:,} numbers (samples x rows x outputs); "
                f"at most {MAX_RETURNED_DRAWS:,}: ask for fewer samples or rows"
            )

    # -------------------------------------------------------------- predictions

    async def submit(self, req: InferRequest) -> Answer:
        """Queue a checked request and wait for the engine's answer."""
        if not self.ready or self.batcher is None:
            raise ModelNotReady(f"model '{self.name}' is not ready; retry shortly")
        if req.return_samples:
            self.check_draws(req.samples, len(req.x))
        if self.budget is not None:  # before queueing: an over-budget request costs nothing
            self.budget.check(self.name, len(req.x), req.samples)
        request = MCRequest(req.x, req.samples, req.seed, req.return_samples)
        answer: Answer = await self.batcher.submit(
            request, len(req.x), self.settings.request_timeout_s, alone=req.bitwise
        )
        return answer

    def answer(self, pred: Prediction) -> Answer:
        """The wire form of ``pred``.

        Raises
        ------
        ModelOutputError
            A statistic (or a raw draw) is not finite.
        """
        out = self.answers([pred])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def answers(self, preds: Sequence[Prediction]) -> list[Answer | Exception]:
        """The wire form of a batch's predictions, or for a request whose statistics are not
        finite its :class:`ModelOutputError` (the batch's others stand).

        Each statistic of the whole batch is converted and checked at once, then split into
        per-request views: a fixed number of array operations per batch instead of per
        request and statistic."""
        if not preds:
            return []
        sizes = [len(p.mean) for p in preds]
        cuts = np.cumsum(sizes)[:-1]
        starts = np.concatenate([[0], cuts]).astype(np.intp)
        errors: list[Exception | None] = [None] * len(preds)
        arrays: list[dict[str, np.ndarray]] = [{} for _ in preds]
        for name in self._fields:
            values = [getattr(p, name) for p in preds]
            if any(v is None for v in values):
                continue
            whole = values[0] if len(values) == 1 else torch.cat(values)
            arr = np.ascontiguousarray(whole.detach().cpu().numpy())  # (sum B, ...)
            finite_rows = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            finite = np.logical_and.reduceat(finite_rows, starts)  # per request
            for i, part in enumerate(np.split(arr, cuts)):
                arrays[i][name] = part
                if not finite[i] and errors[i] is None:
                    errors[i] = ModelOutputError(f"its '{name}' is not finite")
        out: list[Answer | Exception] = []
        for p, err, arrs in zip(preds, errors, arrays, strict=True):
            draws = None
            if err is None and p.draws is not None:
                draws = np.ascontiguousarray(p.draws.detach().cpu().numpy())
                if not np.isfinite(draws).all():
                    err = ModelOutputError("its raw draws are not finite")
            out.append(err if err is not None else Answer(p.samples, p.seed, arrs, draws))
        return out
