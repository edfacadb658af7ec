"""MCPredictor: S stochastic forward passes, batched, chunked, seeded and summarised.

Shapes in comments: S samples, B rows, N = rows of one forward chunk, ``*O`` one row's
output shape, C classes.

How a call runs
---------------
1. The input is validated (non-empty, finite) and moved to the device.
2. On the first call for an input signature, a recording pass finds every dropout call
   ("site"), the dimension holding the rows at each site, and whether the model splits
   into a deterministic prefix and a stochastic suffix (see :mod:`mcdrop._split`).
3. The S x B rows run in chunks of at most ``max_rows`` rows. Masks come from a
   counter-based generator keyed by (seed, sample, site, element), so a row's draws do not
   depend on chunking, on other rows, or on other requests batched with it.
4. Each chunk's outputs fold into float64 streaming moments; nothing of size S is kept
   unless ``return_samples=True``.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mcdrop import _planning, _sampling, layers
from mcdrop._keyed import unit_keys_many
from mcdrop._planning import _Plan
from mcdrop.errors import InvalidInputError, ModelOutputError
from mcdrop.fields import check_samples, check_seed, draw_seed
from mcdrop.prediction import MCRequest, Prediction
from mcdrop.stats import (
    ClassStats,
    Moments,
    grouped_class_stats,
    grouped_moments,
    mc_standard_error,
)

__all__ = ["MCPredictor", "Prediction", "MCRequest"]

log = logging.getLogger("mcdrop")

Task = Literal["regression", "classification"]
_CPU_BUDGET = 64 * 2**20  # bytes of activations per chunk on CPU


@dataclass
class _Group:
    x: torch.Tensor  # (B, ...)
    seed: int
    samples: int
    frontier: tuple[Any, ...] | None = None
    acc: Any = None
    hetero_acc: Moments | None = None
    draws: list[torch.Tensor] = field(default_factory=list)
    start: int = 0  # first sample index (a device's share of a sharded request)
    keep: bool = False  # keep the raw draws of this request


def _validate_samples(samples: Any, name: str = "samples") -> int:
    return check_samples(samples, name)


def _validate_seed(seed: Any) -> int:
    return draw_seed() if seed is None else check_seed(seed)


@contextmanager
def _model_rejects_inputs() -> Iterator[None]:
    """An IndexError from the model's forward is a problem of the inputs (token ids outside
    an embedding's vocabulary, class indices out of range): say so as InvalidInputError."""
    try:
        yield
    except IndexError as exc:
        raise InvalidInputError(
            f"the model could not index with these inputs ({exc}); if they are ids or "
            "indices, check that every value is within the model's range"
        ) from exc


def _row_slots(units: Sequence[int], widths: Sequence[int]) -> torch.Tensor:
    """For each row of a chunk of segments (segment k: ``units[k]`` units of ``widths[k]``
    rows, unit-major), its slot among the segments' rows laid end to end: row i of
    segment k's block is slot ``sum(widths[:k]) + i % widths[k]``. Shape (N,), int64."""
    n_seg = torch.tensor([u * b for u, b in zip(units, widths)], dtype=torch.int64)
    b_seg = torch.tensor(widths, dtype=torch.int64)
    seg_of = torch.repeat_interleave(torch.arange(len(widths)), n_seg)  # (N,)
    pos = torch.arange(int(n_seg.sum())) - (torch.cumsum(n_seg, 0) - n_seg)[seg_of]
    return (torch.cumsum(b_seg, 0) - b_seg)[seg_of] + pos % b_seg[seg_of]


def _check_logits(per_row: tuple[int, ...] | torch.Size) -> None:
    """A classifier's output row must be one vector of logits."""
    if len(per_row) != 1:
        raise ModelOutputError(
            f"a classifier must return logits shaped (batch, classes); got per-row shape "
            f"{tuple(per_row)}"
        )


def _holds_rows(v: Any, n: int) -> bool:
    """Whether a forward value is a tensor with ``n`` rows along dim 0 (a per-row input or
    activation, as opposed to a constant passed alongside)."""
    return isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n


def _split_rows(pred: Prediction, sizes: Sequence[int]) -> list[Prediction]:
    """One prediction per consecutive block of ``sizes`` rows (views, no copies)."""
    per_field: dict[str, Sequence[Any]] = {}
    for f in fields(pred):
        v = getattr(pred, f.name)
        if f.name == "draws":
            per_field[f.name] = [None] * len(sizes) if v is None else v.split(sizes, dim=1)
        elif isinstance(v, torch.Tensor):
            per_field[f.name] = v.split(sizes)
        else:
            per_field[f.name] = [v] * len(sizes)
    return [Prediction(**{k: vs[i] for k, vs in per_field.items()}) for i in range(len(sizes))]


def _split_output(y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main output, log-variance or None) from what the model returned."""
    if isinstance(y, torch.Tensor):
        return y, None
    if isinstance(y, (tuple, list)) and len(y) == 2 and all(isinstance(t, torch.Tensor) for t in y):
        if y[0].shape != y[1].shape:
            raise ModelOutputError(
                f"a model returning two tensors must return (mean, log_variance) of equal "
                f"shape; got {tuple(y[0].shape)} and {tuple(y[1].shape)}"
            )
        return y[0], y[1]
    raise ModelOutputError(
        f"the model must return a tensor or a (mean, log_variance) pair, got {type(y).__name__}"
    )


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
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = 100,
        task: Task = "regression",
        device: str | torch.device | None = None,
        tau: float | None = None,
        *,
        max_rows: int | None = None,
        precision: Literal["fp32", "bf16", "fp16"] = "fp32",
        split: Literal["auto", "off"] = "auto",
        max_samples: int = 10_000,
        devices: Sequence[str | torch.device] | None = None,
    ) -> None:
        if task not in ("regression", "classification"):
            raise InvalidInputError(f"task must be 'regression' or 'classification', got {task!r}")
        if precision not in ("fp32", "bf16", "fp16"):
            raise InvalidInputError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if split not in ("auto", "off"):
            raise InvalidInputError(f"split must be 'auto' or 'off', got {split!r}")
        if tau is not None and not (
            isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)
        ):
            raise InvalidInputError(f"tau must be a positive finite number, got {tau!r}")
        if max_rows is not None:
            _validate_samples(max_rows, "max_rows")
        self.samples = _validate_samples(samples)
        self.max_samples = _validate_samples(max_samples, "max_samples")
        self.task: Task = task
        self.tau = float(tau) if tau is not None else None
        self.precision = precision
        self.split_mode = split
        self.max_rows = max_rows
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        p0 = next(model.parameters(), None)
        self.param_dtype = p0.dtype if p0 is not None else torch.float32
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._lock = threading.RLock()
        self._replicas: list[MCPredictor] = []
        if devices is not None and len(devices) > 1:
            # One model copy per device; each runs a contiguous share of every request's
            # samples. Masks depend on (seed, sample) only, so the merged moments equal the
            # single-device result up to float rounding.
            self._replicas = [
                MCPredictor(
                    copy.deepcopy(model),
                    samples,
                    task,
                    d,
                    tau,
                    max_rows=max_rows,
                    precision=precision,
                    split=split,
                    max_samples=max_samples,
                )
                for d in devices
            ]
        self.last_chunk_rows: list[int] = []  # rows of each forward chunk of the last call

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
        """
        with self._lock, _model_rejects_inputs():
            xt = self._prepare(x)
            if exact:
                return self._predict_exact(xt)
            if samples == "auto":
                cap = _validate_samples(
                    max_samples if max_samples is not None else self.max_samples, "max_samples"
                )
                return self._predict_adaptive(
                    xt,
                    _validate_seed(seed),
                    return_samples,
                    rtol,
                    atol,
                    _validate_samples(min_samples, "min_samples"),
                    cap,
                )
            group = _Group(xt, _validate_seed(seed), self._sample_count(samples))
            self._execute([group], return_samples)
            return self._finish(group)

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
        with self._lock, _model_rejects_inputs():
            raw: list[tuple[torch.Tensor, int, int]] = []  # (inputs, S, seed) per request
            shared: dict[tuple[Any, ...], list[int]] = {}  # key -> request indices
            for i, r in enumerate(requests):
                try:
                    raw.append(
                        (self._as_tensor(r.inputs), self._sample_count(r.samples),
                         _validate_seed(r.seed))
                    )  # fmt: skip
                except InvalidInputError as exc:
                    raise InvalidInputError(f"request {i}: {exc}") from exc
                if share_unseeded and r.seed is None and not r.return_samples:
                    xt, s, _ = raw[-1]
                    key = (s, tuple(xt.shape[1:]), xt.dtype, xt.device)
                    shared.setdefault(key, []).append(i)
            if not raw:
                return []

            def check_one(i: int) -> torch.Tensor:
                try:
                    return self._checked(raw[i][0])
                except InvalidInputError as exc:
                    raise InvalidInputError(f"request {i}: {exc}") from exc

            def checked(idx: list[int]) -> torch.Tensor:
                """The inputs of requests ``idx`` as one checked tensor (a request alone
                is not copied); an error names the request it comes from."""
                if len(idx) == 1:
                    return check_one(idx[0])
                try:
                    return self._checked(torch.cat([raw[i][0] for i in idx]))
                except InvalidInputError:
                    for i in idx:
                        check_one(i)
                    raise  # pragma: no cover - the concatenation failed, no part does

            # Requests that share draws become one group of all their rows (a merge of one
            # changes nothing and is skipped); one finite check covers all of them.
            merged = [idx for idx in shared.values() if len(idx) > 1]
            in_merge = {i for idx in merged for i in idx}
            alone = [i for i in range(len(raw)) if i not in in_merge]
            groups = [
                _Group(checked([i]), raw[i][2], raw[i][1], keep=bool(requests[i].return_samples))
                for i in alone
            ] + [_Group(checked(idx), raw[idx[0]][2], raw[idx[0]][1]) for idx in merged]
            self._execute(groups, False)
            finished = self._finish_many(groups)
            out: list[Prediction | None] = [None] * len(raw)
            for i, pred in zip(alone, finished):
                out[i] = pred
            for idx, pred in zip(merged, finished[len(alone) :]):
                for i, part in zip(idx, _split_rows(pred, [len(raw[i][0]) for i in idx])):
                    out[i] = part
            return out  # type: ignore[return-value]

    def deterministic(self, x: Any) -> torch.Tensor:
        """One plain eval-mode forward pass (no dropout): the cost baseline."""
        with self._lock:
            xt = self._prepare(x)
            saved = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                with torch.inference_mode(), self._autocast():
                    y, _ = _split_output(self.model(xt))
                return y
            finally:
                layers.restore_flags(saved)

    # ------------------------------------------------------------------ input handling

    def _sample_count(self, samples: Any) -> int:
        """S for a call: the default, or ``samples`` checked within [1, max_samples]."""
        if samples is None:
            return self.samples
        return check_samples(samples, maximum=self.max_samples)

    def _prepare(self, x: Any) -> torch.Tensor:
        return self._checked(self._as_tensor(x))

    def _as_tensor(self, x: Any) -> torch.Tensor:
        """``x`` as a tensor of at least one row (not yet checked for finite values)."""
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                raise InvalidInputError("inputs must be numeric, got an object array")
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif isinstance(x, (list, tuple)):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (ValueError, TypeError) as exc:
                raise InvalidInputError(
                    f"inputs must be a rectangular numeric array: {exc}"
                ) from exc
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"inputs must be a tensor or array, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise InvalidInputError(
                f"inputs must hold at least one row, got shape {tuple(x.shape)}"
            )
        if x.dtype == torch.bool:
            raise InvalidInputError("inputs must be numeric, got booleans")
        return x

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        """Finite rows, in the parameters' float dtype, on the predictor's device."""
        if x.is_floating_point():
            finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                bad = torch.nonzero(~finite).flatten().tolist()
                shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
                raise InvalidInputError(f"inputs contain NaN or Inf in rows {shown}")
            if x.dtype != self.param_dtype and self.param_dtype.is_floating_point:
                x = x.to(self.param_dtype)
        return x.to(self.device)

    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ planning

    def _plan(self, x: torch.Tensor) -> _Plan:
        return _planning.plan_for(self, x)

    def _chunk_rows(self, plan: _Plan) -> int:
        if self.max_rows is not None:
            return self.max_rows
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * 0.4)
        else:
            budget = _CPU_BUDGET
        return max(1, budget // max(1, plan.per_row_bytes))

    # ------------------------------------------------------------------ execution

    def _forward_units(
        self, plan: _Plan, g: _Group, s0: int, s1: int, rows: torch.Tensor | None
    ) -> Any:
        """Outputs for samples [s0, s1) of one group: (U * B, *O) or a pair of those."""
        return self._forward_segments(plan, [(g, s0, s1, rows)])

    def _ensure_frontiers(self, plan: _Plan, groups: Sequence[_Group]) -> None:
        """Run the deterministic prefix once for every group that has no cached output,
        all of them in one pass (they share the plan, so their inputs concatenate)."""
        assert plan.split is not None
        need = list({id(g): g for g in groups if g.frontier is None}.values())
        if not need:
            return
        with torch.inference_mode(), self._autocast():
            if len(need) == 1:
                need[0].frontier = tuple(plan.split.prefix(need[0].x))
                return
            sizes = [len(g.x) for g in need]
            outs = tuple(plan.split.prefix(torch.cat([g.x for g in need])))
        total = sum(sizes)
        per_value = [
            v.split(sizes) if _holds_rows(v, total) else [v] * len(need)
            for v in outs
        ]  # fmt: skip
        for i, g in enumerate(need):
            g.frontier = tuple(parts[i] for parts in per_value)

    def _forward_segments(
        self, plan: _Plan, segs: Sequence[tuple[_Group, int, int, torch.Tensor | None]]
    ) -> Any:
        """One forward pass over (group, first sample, end sample, active rows) segments.

        Output rows are segment-major, then unit-major: segment i contributes
        (s1 - s0) * b_i rows, unit by unit, each unit holding the segment's b_i rows.
        """
        dev = self.device
        keys = unit_keys_many([(g.seed, s0, s1) for g, s0, s1, _ in segs], dev)  # (U,)
        if plan.split is not None:
            self._ensure_frontiers(plan, [g for g, *_ in segs])

        def values(g: _Group, rows: torch.Tensor | None) -> list[Any]:
            vals = g.frontier if plan.split is not None else (g.x,)
            assert vals is not None
            b = len(g.x)
            return [
                (v if rows is None else v[rows]) if _holds_rows(v, b) else v
                for v in vals
            ]  # fmt: skip

        units = [s1 - s0 for _, s0, s1, _ in segs]
        widths = [len(g.x) if rows is None else len(rows) for g, _, _, rows in segs]
        per_seg = [values(g, rows) for g, _, _, rows in segs]
        args: list[Any] = []
        if len(segs) == 1:
            u = units[0]
            for v in per_seg[0]:
                if _holds_rows(v, widths[0]):
                    # reshape copies: the suffix may write in place without touching the cache
                    v = v.unsqueeze(0).expand(u, *v.shape).reshape(u * v.shape[0], *v.shape[1:])
                args.append(v)
        else:
            # Row i of segment k's block is row (i mod b_k) of that segment's inputs; one
            # index_select per input builds every block (and copies, protecting the cache).
            index = _row_slots(units, widths).to(dev)
            for j, first in enumerate(per_seg[0]):
                if _holds_rows(first, widths[0]):
                    args.append(torch.cat([vals[j] for vals in per_seg]).index_select(0, index))
                else:
                    args.append(first)
        if len(set(widths)) == 1:
            # Every unit holds the same number of rows: masks broadcast, no gather.
            ctx = _sampling.SamplingContext(
                mode="keyed", keys=keys, rows_per_unit=widths[0], layouts=plan.layouts
            )
        else:
            per_unit = torch.repeat_interleave(
                torch.tensor(widths, device=dev), torch.tensor(units, device=dev)
            )  # (U,) rows of each unit
            row_unit = torch.repeat_interleave(torch.arange(len(keys), device=dev), per_unit)
            ctx = _sampling.SamplingContext(
                mode="keyed", keys=keys, row_unit=row_unit, layouts=plan.layouts
            )
        fn = plan.split.suffix if plan.split is not None else self.model
        with torch.inference_mode(), _sampling.sampling(ctx), self._autocast():
            out = fn(*args)
        self.last_chunk_rows.append(sum(u * b for u, b in zip(units, widths)))
        return out

    def _new_acc(self, g: _Group, plan: _Plan) -> None:
        g.acc = ClassStats() if self.task == "classification" else Moments()
        g.hetero_acc = Moments() if plan.hetero else None

    def _fold(self, g: _Group, y: Any, u: int, rows: torch.Tensor | None, keep: bool) -> None:
        main, logvar = _split_output(y)
        b = len(g.x) if rows is None else len(rows)
        main = main.float().reshape(u, b, *main.shape[1:])  # (U, b, *O)
        if not bool(torch.isfinite(main).all()):
            bad = torch.nonzero(
                ~torch.isfinite(main.reshape(u, b, -1)).all(dim=2).all(dim=0)
            ).flatten()
            rows_bad = bad if rows is None else rows[bad]
            raise ModelOutputError(
                f"the model returned NaN or Inf for rows {rows_bad.tolist()[:10]}"
            )
        if keep:
            g.draws.append(main.cpu())
        if self.task == "classification":
            _check_logits(main.shape[2:])
            g.acc.update(torch.softmax(main.double(), dim=-1), rows)
        else:
            g.acc.update(main, rows)
            if logvar is not None:
                assert g.hetero_acc is not None
                g.hetero_acc.update(
                    torch.exp(logvar.double().reshape(u, b, *logvar.shape[1:])), rows
                )

    def _execute(self, groups: list[_Group], keep: bool) -> None:
        """Run ``groups`` here, or sharded over the device replicas and merged."""
        if not self._replicas:
            self._run(groups, keep)
            return
        n = len(self._replicas)
        shards: list[list[_Group]] = [[] for _ in range(n)]
        owned: list[list[_Group]] = [[] for _ in groups]  # each request's parts, in order
        for gi, g in enumerate(groups):
            bounds = [g.samples * i // n for i in range(n + 1)]
            for i, rep in enumerate(self._replicas):
                if bounds[i + 1] > bounds[i]:
                    part = _Group(
                        g.x.to(rep.device),
                        g.seed,
                        bounds[i + 1] - bounds[i],
                        start=bounds[i],
                        keep=g.keep,
                    )
                    shards[i].append(part)
                    owned[gi].append(part)
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [
                pool.submit(rep._run, part, keep)
                for rep, part in zip(self._replicas, shards)
                if part
            ]
            for f in futures:
                f.result()
        for g, parts in zip(groups, owned):
            g.acc, g.hetero_acc = parts[0].acc, parts[0].hetero_acc
            for p in parts[1:]:
                g.acc.merge(p.acc)
                if g.hetero_acc is not None and p.hetero_acc is not None:
                    g.hetero_acc.merge(p.hetero_acc)
            g.draws = [d for p in parts for d in p.draws]

    def _run(self, groups: list[_Group], keep: bool) -> None:
        saved = layers.set_mc_flags(self.model)
        try:
            plans = [self._plan(g.x) for g in groups]
            self.last_chunk_rows = []  # the passes of this call, not those of planning
            # One plan per call keeps the shared forward well-defined.
            if len({id(p) for p in plans}) > 1:
                for g, p in zip(groups, plans):
                    self._run_groups([g], p, keep)
            else:
                self._run_groups(groups, plans[0], keep)
        finally:
            layers.restore_flags(saved)

    def _run_groups(self, groups: list[_Group], plan: _Plan, keep: bool) -> None:
        for g in groups:
            self._new_acc(g, plan)
        budget = self._chunk_rows(plan)
        # Pack (group, sample range) segments into chunks of at most `budget` rows.
        pending = [(g, g.start, g.start + g.samples) for g in groups]
        while pending:
            segs: list[tuple[_Group, int, int]] = []
            room = budget
            while pending and (room > 0):
                g, s0, s1 = pending[0]
                b = len(g.x)
                take = min(s1 - s0, max(1, room // b)) if (room >= b or not segs) else 0
                if take == 0:
                    break
                segs.append((g, s0, s0 + take))
                room -= take * b
                if s0 + take == s1:
                    pending.pop(0)
                else:
                    pending[0] = (g, s0 + take, s1)
            self._run_chunk(plan, segs, keep)

    def _run_chunk(self, plan: _Plan, segs: list[tuple[_Group, int, int]], keep: bool) -> None:
        try:
            y = self._forward_segments(plan, [(g, s0, s1, None) for g, s0, s1 in segs])
        except torch.OutOfMemoryError:
            total = sum((s1 - s0) * len(g.x) for g, s0, s1 in segs)
            if total <= min(len(g.x) for g, _, _ in segs):
                raise
            budget = max(1, total // 2)
            self.max_rows = budget  # later calls start from the size that fits
            log.warning(
                "mcdrop: out of memory with %d rows per chunk; retrying with %d", total, budget
            )
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            pieces: list[tuple[_Group, int, int]] = []
            for g, s0, s1 in segs:
                step = max(1, budget // len(g.x))
                pieces += [(g, a, min(s1, a + step)) for a in range(s0, s1, step)]
            for piece in pieces:
                self._run_chunk(plan, [piece], keep)
            return
        if len(segs) == 1:
            g, s0, s1 = segs[0]
            self._fold(g, y, s1 - s0, None, keep or g.keep)
        else:
            self._fold_segments(segs, y, keep)

    def _fold_segments(self, segs: list[tuple[_Group, int, int]], y: Any, keep: bool) -> None:
        """Fold one chunk holding several groups' segments, in a fixed number of tensor
        operations: the statistics of every (group, row) at once, then per-group views."""
        main, logvar = _split_output(y)
        main = main.float()  # (N, *O)
        units = [s1 - s0 for _, s0, s1 in segs]
        widths = [len(g.x) for g, _, _ in segs]
        if not bool(torch.isfinite(main).all()):
            offset = 0
            for (g, _, _), u, b in zip(segs, units, widths):  # finds and names the rows
                part = main[offset : offset + u * b]
                lv = None if logvar is None else logvar[offset : offset + u * b]
                self._fold(g, part if lv is None else (part, lv), u, None, False)
                offset += u * b
            raise ModelOutputError("the model returned NaN or Inf")  # not reached: a _fold raised
        if self.task == "classification":
            _check_logits(main.shape[1:])
        slot = _row_slots(units, widths).to(main.device)
        n_slots = sum(widths)
        per_slot: tuple[torch.Tensor, ...]
        if self.task == "classification":
            per_slot = grouped_class_stats(torch.softmax(main.double(), dim=-1), slot, n_slots)
        else:
            per_slot = grouped_moments(main, slot, n_slots)
        hetero = logvar is not None and self.task != "classification"
        if logvar is not None and hetero:
            h_mean, h_m2 = grouped_moments(torch.exp(logvar.double()), slot, n_slots)
        t = offset = 0
        for (g, _, _), u, b in zip(segs, units, widths):
            sl = slice(t, t + b)
            g.acc.add(u, *(v[sl] for v in per_slot))
            if hetero:
                assert g.hetero_acc is not None
                g.hetero_acc.add(u, h_mean[sl], h_m2[sl])
            if keep or g.keep:
                g.draws.append(main[offset : offset + u * b].reshape(u, b, *main.shape[1:]).cpu())
            t += b
            offset += u * b

    # ------------------------------------------------------------------ adaptive / exact

    def _predict_adaptive(
        self, x: torch.Tensor, seed: int, keep: bool, rtol: float, atol: float, first: int, cap: int
    ) -> Prediction:
        if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
            raise InvalidInputError("rtol and atol must be >= 0 and not both 0")
        g = _Group(x, seed, min(first, cap))
        saved = layers.set_mc_flags(self.model)
        try:
            plan = self._plan(x)
            self.last_chunk_rows = []
            self._new_acc(g, plan)
            per_row = torch.full((len(x),), 0, dtype=torch.int64)
            active = torch.arange(len(x), device=self.device)
            done = 0
            target = min(first, cap)
            budget = self._chunk_rows(plan)
            while True:
                rows = None if len(active) == len(x) else active
                s0 = done
                while s0 < target:
                    s1 = min(target, s0 + max(1, budget // len(active)))
                    y = self._forward_units(plan, g, s0, s1, rows)
                    self._fold(g, y, s1 - s0, rows, keep and rows is None)
                    s0 = s1
                per_row[active.cpu()] = target
                done = target
                moments = g.acc.moments if self.task == "classification" else g.acc
                se = mc_standard_error(moments.variance(), moments.count)
                ok = (se <= rtol * moments.mean.abs() + atol).reshape(len(x), -1).all(dim=1)
                active = torch.nonzero(~ok).flatten()
                if len(active) == 0 or done >= cap:
                    break
                target = min(cap, done * 2)
                keep = False  # draws of later rounds cover only some rows
        finally:
            layers.restore_flags(saved)
        g.samples = done
        pred = self._finish(g)
        pred.samples_per_row = per_row
        if not keep:
            pred.draws = None
        return pred

    def _predict_exact(self, x: torch.Tensor) -> Prediction:
        from mcdrop._exact import predict_exact

        return predict_exact(self, x)

    # ------------------------------------------------------------------ summaries

    def _finish(self, g: _Group) -> Prediction:
        return self._finish_many([g])[0]

    def _finish_many(self, groups: Sequence[_Group]) -> list[Prediction]:
        """Predictions of finished groups. Summaries are row-wise, so groups whose rows have
        the same output shape are summarised together (their accumulators laid end to
        end) and each gets views of its rows: a fixed number of operations per call."""
        out: list[Prediction | None] = [None] * len(groups)
        buckets: dict[tuple[Any, ...], list[int]] = {}
        for i, g in enumerate(groups):
            m = g.acc.moments if self.task == "classification" else g.acc
            buckets.setdefault((tuple(m.mean.shape[1:]), g.hetero_acc is not None), []).append(i)
        for idx in buckets.values():
            part = [groups[i] for i in idx]
            for i, pred in zip(idx, self._finish_bucket(part)):
                out[i] = pred
        return out  # type: ignore[return-value]

    def _finish_bucket(self, groups: list[_Group]) -> list[Prediction]:
        one = len(groups) == 1
        fields: dict[str, torch.Tensor]
        count: torch.Tensor | None
        if self.task == "classification":
            acc = groups[0].acc if one else ClassStats.concat([g.acc for g in groups])
            fields = acc.summary()
            var = sampled = acc.moments.variance()
            fields["mean"] = fields["probs"]
            count = acc.moments.count
        else:
            m: Moments = groups[0].acc if one else Moments.concat([g.acc for g in groups])
            epi = m.variance()
            alea = torch.zeros_like(epi)
            h_parts = [g.hetero_acc for g in groups if g.hetero_acc is not None]
            if h_parts:
                hetero = h_parts[0] if one else Moments.concat(h_parts)
                assert hetero.mean is not None
                alea = alea + hetero.mean
            if self.tau is not None:
                alea = alea + 1.0 / self.tau
            var = epi + alea
            count, sampled = m.count, epi  # the MC standard error is of the sampled part
            fields = {"mean": m.mean, "epistemic_variance": epi, "aleatoric_variance": alea}  # type: ignore[dict-item]
        assert count is not None
        fields["variance"] = var
        fields["std"] = var.sqrt()
        fields["stderr"] = mc_standard_error(sampled, count)
        sizes = [len(g.x) for g in groups]
        parts = {k: (v,) if one else v.split(sizes) for k, v in fields.items()}
        return [
            Prediction(
                task=self.task,
                samples=g.samples,
                samples_per_row=torch.full((sizes[i],), g.samples, dtype=torch.int64),
                seed=g.seed,
                draws=torch.cat(g.draws) if g.draws else None,
                **{k: v[i] for k, v in parts.items()},  # type: ignore[arg-type]
            )
            for i, g in enumerate(groups)
        ]

    def describe(self, x: Any) -> dict[str, Any]:
        """How the engine runs inputs shaped like ``x``: sites, split strategy, chunk rows."""
        with self._lock:
            xt = self._prepare(x)
            saved = layers.set_mc_flags(self.model)
            try:
                plan = self._plan(xt)
            finally:
                layers.restore_flags(saved)
            return {
                "dropout_sites": len(plan.sites),
                "split": plan.split.strategy if plan.split else None,
                "split_reason": plan.split_reason,
                "max_rows": self._chunk_rows(plan),
            }
