"""Dropout gated by the ``training`` flag of a module that is not a dropout module.

Hugging Face attention (``dropout = 0.0 if not self.training else p``, eager and SDPA),
timm-style fused attention (``self.attn_drop.p if self.training else 0.``) and similar
custom modules compute the dropout probability from their *own* flag and hand it to
``F.dropout`` or ``F.scaled_dot_product_attention``. In eval mode that p is 0, so neither a
dropout-module switch nor the patched functions ever see a dropout to sample.

The mechanism, with no list of class names:

1. **Candidates**: modules whose class ``forward`` reads ``self.training`` (found in its
   source with :mod:`ast`, cached per class). Dropout modules, ``nn.RNNBase`` (see
   :mod:`mcdrop._rnn`) and the torch transformer modules flagged in ``_sampling`` are
   handled elsewhere.
2. **Probe** (once per module instance, on its first call inside a sampling context): the
   module's ``forward`` runs twice on copies of its real inputs inside a *recording*
   context (where dropout is the identity), once with its flag off and once on. The flag
   is accepted only if turning it on (a) makes more dropout probability reach the patched
   dropout/attention functions, (b) runs no other random op (torch's CPU/CUDA generator
   states are unchanged), (c) writes no buffer, and (d) changes no output beyond float
   rounding (dropout is the identity while recording, so anything else the flag does
   shows up as a difference). Accepted modules keep ``training = True`` for the rest of
   the MC session, so their dropout is sampled by the same keyed masks as every other
   site; all others stay in eval mode.

What it cannot reach: a ``self.training`` read in a method other than ``forward`` (a
helper called from it, or ``__call__``); dropout applied by an op that is not one of the
patched functions (a fused kernel, ``torch.bernoulli`` by hand: these consume random
numbers, so the probe rejects them); a flag whose effect depends on inputs the first call
did not exercise. ``mcdrop.inspect`` compares MC mode with train mode on an example input
and reports (and warns about) any dropout these leave unsampled.
"""

from __future__ import annotations

import ast
import copy
import inspect as _pyinspect
import textwrap
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mcdrop import _sampling

__all__ = ["GateDecision", "reads_training", "is_candidate", "decision", "probe", "forget"]


@dataclass(frozen=True)
class GateDecision:
    """What the probe concluded about one module's ``training`` flag.

    ``sampled``: MC mode sets the flag (its dropout is sampled). ``missed_p``: dropout
    probability the flag would switch on but MC mode leaves off (> 0 means unsampled
    dropout). ``reason``: why, in words.
    """

    sampled: bool
    reason: str
    missed_p: float = 0.0


_READS: dict[type, bool] = {}
_CANDIDATE: dict[type, bool] = {}  # is_candidate per class: MC mode asks on every call
_DECISIONS: weakref.WeakKeyDictionary[nn.Module, GateDecision] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _forward_reads_training(fn: Any) -> bool:
    try:
        src = textwrap.dedent(_pyinspect.getsource(_pyinspect.unwrap(fn)))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return False  # no source (C extension, REPL): nothing to probe
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == "training"
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
        for n in ast.walk(tree)
    )


def reads_training(cls: type[nn.Module]) -> bool:
    """Whether ``cls.forward`` reads ``self.training`` (cached per class)."""
    with _LOCK:
        hit = _READS.get(cls)
    if hit is None:
        fwd = getattr(cls, "forward", None)
        hit = fwd is not None and fwd is not nn.Module.forward and _forward_reads_training(fwd)
        with _LOCK:
            _READS[cls] = hit
    return hit


def is_candidate(m: nn.Module) -> bool:
    """A module whose own flag may gate dropout and that no other mechanism handles.

    It depends on the class only, so it is cached per class (a dict read needs no lock).
    """
    cls = type(m)
    hit = _CANDIDATE.get(cls)
    if hit is None:
        skip = (nn.modules.dropout._DropoutNd, nn.RNNBase, *_sampling._FLAG_TRAINING)
        hit = not issubclass(cls, skip) and reads_training(cls)
        _CANDIDATE[cls] = hit
    return hit


def decision(m: nn.Module) -> GateDecision | None:
    """The cached probe result for ``m``, or None if it has not run inside MC mode yet."""
    with _LOCK:
        return _DECISIONS.get(m)


def forget(model: nn.Module) -> None:
    """Drop the cached decisions for ``model``'s modules (after changing their dropout p)."""
    with _LOCK:
        for m in model.modules():
            _DECISIONS.pop(m, None)


# --------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------


def _tensors(obj: Any, out: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    """The tensors of a nested output (tuples, lists, dicts, dataclass-like objects)."""
    if depth > 6:
        return out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _tensors(v, out, depth + 1)
    elif isinstance(obj, dict):  # includes transformers' ModelOutput
        for v in obj.values():
            _tensors(v, out, depth + 1)
    return out


def _same_output(a: Any, b: Any) -> bool:
    ta, tb = _tensors(a, []), _tensors(b, [])
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        # Recording routes SDPA through explicit attention: equal up to float rounding.
        tol = max(1e-3, 8 * torch.finfo(x.dtype).eps)
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        diff = float((x.detach().float() - y.detach().float()).abs().max()) if x.numel() else 0.0
        if not diff <= tol * (scale + 1e-6):  # also False for NaN
            return False
    return True


def _rng_states(args: Any) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    devices = {t.device for t in _tensors(args, []) if t.device.type == "cuda"}
    for d in sorted(devices, key=str):
        states.append(torch.cuda.get_rng_state(d))
    return states


def _run_recorded(m: nn.Module, flag: bool, args: Any, kwargs: Any) -> tuple[Any, float]:
    """Output of ``m.forward`` with its flag set to ``flag``, and the dropout p it ran."""
    ctx = _sampling.SamplingContext(mode="record")
    prev_ctx, prev_flag = _sampling.current_context(), m.training
    _sampling._TLS.ctx = ctx
    m.training = flag
    try:
        out = m.forward(*args, **kwargs)
    finally:
        m.training = prev_flag
        _sampling._TLS.ctx = prev_ctx
    return out, sum(r.p for r in ctx.records)


def probe(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> GateDecision:
    """Decide whether MC mode may set ``m.training``: see the module docstring.

    ``args``/``kwargs`` are the module's real call arguments; the probe runs on deep
    copies so that caches and in-place updates in them are not touched.
    """
    try:
        in_a = copy.deepcopy((args, kwargs))
        in_b = copy.deepcopy((args, kwargs))
    except Exception as exc:
        return GateDecision(False, f"its inputs cannot be copied to probe it ({exc})")
    buffers = {n: b.detach().clone() for n, b in m.named_buffers()}
    cpu_rng = torch.get_rng_state()
    try:
        out_a, p_a = _run_recorded(m, False, *in_a)
        before = _rng_states(args)
        out_b, p_b = _run_recorded(m, True, *in_b)
        after = _rng_states(args)
    except Exception as exc:
        return GateDecision(False, f"its forward fails with the flag on ({type(exc).__name__})")
    finally:
        torch.set_rng_state(cpu_rng)
        written = [
            n for n, b in m.named_buffers() if n in buffers and not torch.equal(b, buffers[n])
        ]
        with torch.no_grad():
            for n, b in m.named_buffers():
                if n in written:
                    b.copy_(buffers[n])
    missed = max(0.0, p_b - p_a)
    random_op = any(not torch.equal(x, y) for x, y in zip(before, after))
    if missed == 0.0 and random_op:
        why = "its flag switches on a random op that is not dropout (stochastic depth?)"
        return GateDecision(False, why)
    if missed == 0.0:
        return GateDecision(False, "its training flag switches on no dropout")
    if random_op:
        why = "the flag also runs another random op (stochastic depth, noise, layer drop)"
        return GateDecision(False, why, missed)
    if written:
        return GateDecision(False, f"the flag also writes buffers ({', '.join(written)})", missed)
    if not _same_output(out_a, out_b):
        return GateDecision(False, "the flag changes more than dropout (outputs differ)", missed)
    return GateDecision(True, "its training flag only switches on dropout")


def _pre_hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if _sampling.current_context() is None:
        return
    d = decision(m)
    if d is None:
        d = probe(m, args, kwargs)
        with _LOCK:
            _DECISIONS[m] = d
    m.training = d.sampled


def flag_gated(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> list[Any]:
    """Set the flag of every accepted candidate in ``model``; hook the undecided ones.

    ``modules``: ``list(model.modules())`` when the caller has walked the model already (MC
    mode is entered once per forward chunk, so each walk counts). Returns the hook handles
    (removed when MC mode ends).
    """
    handles = []
    for m in model.modules() if modules is None else modules:
        if not is_candidate(m):
            continue
        d = decision(m)
        if d is not None:
            m.training = d.sampled
        else:
            handles.append(m.register_forward_pre_hook(_pre_hook, with_kwargs=True))
    return handles
