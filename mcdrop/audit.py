"""The dropout audit: every dropout site of a model, sampled by MC mode or not, and why.

``mcdrop.inspect(model, example_input)`` runs the model twice on the example, recording
(dropout is the identity while recording, nothing is sampled and no state changes):

1. in MC mode, naming the module of every dropout call, and probing the modules whose
   ``forward`` reads ``self.training`` (see :mod:`mcdrop._gated`);
2. in train mode, as a cross-check: a dropout that train mode runs at some module and MC
   mode does not is reported as unsampled, whatever the reason.

An unsampled dropout with p > 0 means the reported variance misses part of the model's
uncertainty: :func:`inspect` warns (:class:`UnsampledDropoutWarning`), or raises
:class:`UnsampledDropoutError` with ``strict=True``. :meth:`Audit.summary` is the JSON-able
digest the service logs at load and shows in ``GET /v1/models/{name}``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mcdrop import _gated, _rnn, _sampling, layers
from mcdrop._rnn import UnsampledDropoutWarning
from mcdrop.errors import UnsupportedModelError

__all__ = [
    "Audit",
    "DropoutSite",
    "FlagModule",
    "UnsampledDropoutError",
    "UnsampledDropoutWarning",
    "inspect",
    "summary",
]


class UnsampledDropoutError(UnsupportedModelError):
    """``strict=True``: the model has dropout with p > 0 that MC mode does not sample."""


@dataclass(frozen=True)
class DropoutSite:
    """One dropout call (or gated dropout) of the example's forward pass.

    ``status``: "sampled", "unsampled" (p > 0 that MC mode leaves off: warned), "p=0"
    (nothing to sample) or "not run" (a dropout module the example did not reach).
    ``shape``: the activation's shape, () when unknown.
    """

    path: str
    kind: str
    p: float
    shape: tuple[int, ...]
    status: str
    why: str


@dataclass(frozen=True)
class FlagModule:
    """A module whose ``forward`` reads ``self.training``, and what MC mode did with it."""

    path: str
    type: str
    sampled: bool
    why: str


@dataclass
class Audit:
    """The result of :func:`inspect`: sites, training-flag modules and notes."""

    model: str
    sites: list[DropoutSite] = field(default_factory=list)
    flag_modules: list[FlagModule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def unsampled(self) -> list[DropoutSite]:
        """Dropout with p > 0 that training would apply and MC mode does not sample."""
        return [s for s in self.sites if s.status == "unsampled"]

    @property
    def sampled(self) -> list[DropoutSite]:
        return [s for s in self.sites if s.status == "sampled"]

    def to_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON-able data."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """A short JSON-able digest: counts, p values, every unsampled site, and the
        training-flag modules left in eval mode grouped by type."""
        kept = Counter((m.type, m.why) for m in self.flag_modules if not m.sampled)
        return {
            "ok": not self.unsampled,
            "sampled_sites": len(self.sampled),
            "sampled_p": sorted({round(s.p, 6) for s in self.sampled}),
            "unsampled": [{"path": s.path, "p": s.p, "why": s.why} for s in self.unsampled],
            "flag_modules_sampled": sorted({m.type for m in self.flag_modules if m.sampled}),
            "flag_modules_deterministic": [
                {"type": t, "count": n, "why": why} for (t, why), n in sorted(kept.items())
            ],
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """A table a person reads (what ``mcdrop inspect`` prints)."""
        n_un = len(self.unsampled)
        lines = [f"{self.model}: {len(self.sampled)} dropout sites sampled, {n_un} unsampled"]
        for s in self.sites:
            shape = "x".join(map(str, s.shape)) or "-"
            lines.append(
                f"  {s.status.upper() if s.status == 'unsampled' else s.status:<9} "
                f"p={s.p:<6.3g} {s.path or '(model)'}  [{s.kind}, {shape}]  {s.why}"
            )
        det = [m for m in self.flag_modules if not m.sampled]
        on = [m for m in self.flag_modules if m.sampled]
        if on:
            types = ", ".join(sorted({m.type for m in on}))
            lines.append(f"  training flag set in MC mode (only gates dropout): {types}")
        if det:
            lines.append("  modules reading self.training left in eval mode:")
            groups = Counter((m.type, m.why) for m in det)
            for (t, why), n in sorted(groups.items()):
                lines.append(f"    {t} x{n}: {why}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Recording passes
# --------------------------------------------------------------------------------------


@contextmanager
def _located(model: nn.Module, names: dict[nn.Module, str]) -> Iterator[Callable[[], str]]:
    """Hooks keeping a stack of the module paths being run; yields ``locate()``."""
    stack: list[str] = []

    def push(m: nn.Module, args: Any) -> None:
        stack.append(names.get(m, "?"))

    def pop(m: nn.Module, args: Any, out: Any) -> None:
        if stack:
            stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(push))
        handles.append(m.register_forward_hook(pop, always_call=True))
    try:
        yield lambda: stack[-1] if stack else ""
    finally:
        for h in handles:
            h.remove()


def _call(model: nn.Module, example: Any) -> Any:
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    return model(example)


def _record(model: nn.Module, example: Any, names: dict[nn.Module, str]) -> list[Any]:
    with _located(model, names) as locate:
        ctx = _sampling.SamplingContext(mode="record", locate=locate)
        with torch.inference_mode(), _sampling.sampling(ctx):
            _call(model, example)
    return ctx.records


def _record_mc(model: nn.Module, example: Any, names: dict[nn.Module, str]) -> list[Any]:
    saved = layers.set_mc_flags(model)
    try:
        return _record(model, example, names)
    finally:
        layers.restore_flags(saved)


def _record_train(model: nn.Module, example: Any, names: dict[nn.Module, str]) -> list[Any]:
    """Train-mode recording, with every buffer and the RNG state put back afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    model.train()
    try:
        return _record(model, example, names)
    finally:
        layers.restore_flags(saved)
        torch.set_rng_state(rng)
        with torch.no_grad():
            for b, v in buffers:
                b.copy_(v)


# --------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------


def _sites(model: nn.Module, mc: list[Any], names: dict[nn.Module, str]) -> list[DropoutSite]:
    sites = []
    for r in mc:
        status, why = ("sampled", "masks drawn in MC mode") if r.p > 0 else ("p=0", "p = 0")
        sites.append(DropoutSite(r.where, r.kind, r.p, r.shape, status, why))
    ran = {r.where for r in mc}
    for m in model.modules():
        path = names[m]
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and path not in ran:
            parent = path.rpartition(".")[0]
            if any(r.where == parent and r.p > 0 for r in mc):
                why = f"not called; its p is applied by {parent or '(model)'} (sampled)"
            else:
                why = "the example's forward pass does not call it (nor would train mode)"
            sites.append(DropoutSite(path, type(m).__name__, m.p, (), "not run", why))
        if _rnn.samples_between_layers(m) and path not in ran:
            why = "inter-layer dropout not run layer by layer (PackedSequence input?)"
            p = float(getattr(m, "dropout", 0.0))
            sites.append(DropoutSite(path, "rnn", p, (), "unsampled", why))
        d = _gated.decision(m) if _gated.is_candidate(m) else None
        if d is not None and not d.sampled and d.missed_p > 0:
            sites.append(DropoutSite(path, "gated", d.missed_p, (), "unsampled", d.reason))
    return sites


def _cross_check(sites: list[DropoutSite], mc: list[Any], train: list[Any]) -> None:
    """Add the p > 0 dropout train mode runs at a module more often than MC mode does."""
    n_mc = Counter(r.where for r in mc if r.p > 0)
    n_train = Counter(r.where for r in train if r.p > 0)
    known = {s.path for s in sites if s.status == "unsampled"}
    for path, n in sorted(n_train.items()):
        if n > n_mc.get(path, 0) and path not in known:
            p = max(r.p for r in train if r.where == path and r.p > 0)
            why = f"train mode runs {n} dropout calls here, MC mode {n_mc.get(path, 0)}"
            sites.append(DropoutSite(path, "train-only", p, (), "unsampled", why))


def _flag_modules(model: nn.Module, names: dict[nn.Module, str]) -> list[FlagModule]:
    out = []
    for m in model.modules():
        if not _gated.is_candidate(m):
            continue
        d = _gated.decision(m)
        if d is None:
            d = _gated.GateDecision(False, "not called by the example (left in eval mode)")
        out.append(FlagModule(names[m], type(m).__name__, d.sampled, d.reason))
    return out


def inspect(model: nn.Module, example_input: Any, strict: bool = False) -> Audit:
    """Audit the dropout of ``model`` on ``example_input`` (nothing is sampled or changed).

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor, tuple of positional inputs, or dict of keyword inputs
        One small batch, e.g. (2, *input_shape); two rows or more if the model has
        BatchNorm (the train-mode cross-check runs it in train mode).
    strict : bool
        Raise :class:`UnsampledDropoutError` instead of warning when a dropout with
        p > 0 is not sampled.

    Returns
    -------
    Audit
        ``sites`` (every dropout call: path, kind, p, shape, status, why),
        ``flag_modules`` (every module whose forward reads ``self.training``), ``notes``;
        :meth:`Audit.summary` gives the JSON-able digest.
    """
    names = {m: n for n, m in model.named_modules()}
    audit = Audit(type(model).__name__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsampledDropoutWarning)  # reported as sites below
        mc = _record_mc(model, example_input, names)
    audit.sites = _sites(model, mc, names)
    try:
        _cross_check(audit.sites, mc, _record_train(model, example_input, names))
    except Exception as exc:  # e.g. BatchNorm on a batch of one in train mode
        audit.notes.append(f"train-mode cross-check not run ({type(exc).__name__}: {exc})")
    audit.flag_modules = _flag_modules(model, names)
    if not audit.sampled:
        audit.notes.append("no dropout with p > 0 runs in MC mode: MC sampling would fail")
    if audit.unsampled:
        where = ", ".join(f"{s.path or '(model)'} (p={s.p:g}: {s.why})" for s in audit.unsampled)
        msg = (
            f"{audit.model}: {len(audit.unsampled)} dropout site(s) with p > 0 are not "
            f"sampled by MC mode, so the reported variance misses them: {where}"
        )
        if strict:
            raise UnsampledDropoutError(msg)
        warnings.warn(msg, UnsampledDropoutWarning, stacklevel=2)
    return audit


def example_input(shape: tuple[int, ...], dtype: torch.dtype, rows: int = 2) -> torch.Tensor:
    """A fixed example batch (rows, *shape): token id 0 for integer inputs (always a valid
    id), seeded standard normal values otherwise."""
    if not dtype.is_floating_point:
        return torch.zeros((rows, *shape), dtype=dtype)
    g = torch.Generator().manual_seed(0)
    return torch.randn((rows, *shape), generator=g).to(dtype)


def summary(model: nn.Module, example_input: Any) -> dict[str, Any]:
    """``inspect(model, example_input).summary()``: the digest the service logs and serves.

    Warns like :func:`inspect` when a dropout is unsampled; never raises for that.
    """
    return inspect(model, example_input).summary()
