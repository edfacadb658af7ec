"""MC dropout layers and the MC mode switch.

How MC mode reaches *every* dropout of an unmodified model
----------------------------------------------------------
Flipping ``nn.Dropout`` modules to train mode (what most libraries do) misses three kinds of
dropout: functional ``F.dropout(x, p, self.training)`` in custom modules, the attention
dropout of ``nn.MultiheadAttention`` (gated by its own ``training`` flag, and skipped
entirely by the eval-mode fused fast path of ``nn.TransformerEncoderLayer``), and
``F.scaled_dot_product_attention(dropout_p=...)``. ``model.train()`` catches more, but also
puts BatchNorm on batch statistics.

mcdrop instead routes the dropout *functions* of ``torch.nn.functional`` through thin
wrappers (installed once, on first use). A wrapper does nothing different unless the
calling thread has an active sampling context; inside one, the dropout is applied whatever
``training`` flag the caller passed. MC mode then is: the model in eval mode, attention
and transformer modules flagged as training (only so that they leave their fused fast
path and pass their dropout probability down; they have no other training behaviour), and
a sampling context around each forward call.

Dropout gated by another module's flag
--------------------------------------
Hugging Face attention (``dropout = 0.0 if not self.training else p``), timm's fused
attention and similar modules compute p from their own ``training`` flag. Modules whose
``forward`` reads ``self.training`` are probed once, on their first call in MC mode
(:mod:`mcdrop._gated`): their flag is set only if turning it on changes nothing but the
dropout probability reaching the patched functions (no other random op, no buffer write,
the same output with dropout as identity). Multi-layer ``nn.LSTM``/``nn.GRU``/``nn.RNN``
with ``dropout > 0`` run layer by layer with keyed dropout between (:mod:`mcdrop._rnn`).

What stays in eval mode
-----------------------
Everything that is not dropout: BatchNorm/InstanceNorm use their running statistics and
never update them, RReLU uses its fixed slope, and modules whose flag does more than
switch on dropout (stochastic depth / drop path, router jitter, layer drop, gradient
checkpointing) see ``False``. Drop path is a different approximation: replace such modules
by :class:`MCDropPath` to sample it (opt-in). Not reachable: a flag read outside
``forward``, dropout called through a name imported before mcdrop was (``from
torch.nn.functional import dropout``), and ``PackedSequence`` inputs to recurrent modules
(warned). :func:`mcdrop.inspect` lists every dropout site and what is left unsampled; if
no dropout at all runs, :class:`NoDropoutError` says so instead of returning a silent zero
variance.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mcdrop import _gated, _rnn
from mcdrop._sampling import _FLAG_TRAINING, _TLS, SamplingContext, _install_patches
from mcdrop.errors import NoDropoutError

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
    "MCDropPath",
    "convert_drop_path",
]


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class MCDropout(nn.Dropout):
    """Drop-in ``nn.Dropout`` that can stay stochastic at inference.

    Parameters
    ----------
    p : float
        Drop probability, exactly as ``nn.Dropout``: each unit is zeroed with probability
        ``p`` and kept units are scaled by ``1 / (1 - p)``.
    inplace : bool
        As ``nn.Dropout``. Ignored inside MC sampling, which never writes into its input.
    always : bool
        If True the layer samples masks in eval mode too (``model.eval()`` then still gives
        MC draws). Default False: deterministic in eval mode, stochastic under
        :func:`mc_mode` and :class:`~mcdrop.MCPredictor`.

    Shapes: input (*), output (*), same shape.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, always: bool = False) -> None:
        super().__init__(p, inplace)
        self.always = always

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training or self.always, self.inplace)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, always={self.always}"


class MCDropout1d(nn.Dropout1d):
    """Channel dropout for (N, C, L) inputs, usable for MC sampling; see :class:`MCDropout`."""

    def __init__(self, p: float = 0.5, inplace: bool = False, always: bool = False) -> None:
        super().__init__(p, inplace)
        self.always = always

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout1d(input, self.p, self.training or self.always, self.inplace)


class MCDropout2d(nn.Dropout2d):
    """Channel dropout for (N, C, H, W) inputs, usable for MC sampling; see :class:`MCDropout`."""

    def __init__(self, p: float = 0.5, inplace: bool = False, always: bool = False) -> None:
        super().__init__(p, inplace)
        self.always = always

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(input, self.p, self.training or self.always, self.inplace)


class MCDropout3d(nn.Dropout3d):
    """Channel dropout for (N, C, D, H, W) inputs; see :class:`MCDropout`."""

    def __init__(self, p: float = 0.5, inplace: bool = False, always: bool = False) -> None:
        super().__init__(p, inplace)
        self.always = always

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout3d(input, self.p, self.training or self.always, self.inplace)


class MCAlphaDropout(nn.AlphaDropout):
    """Alpha dropout (for SELU networks) usable for MC sampling; see :class:`MCDropout`."""

    def __init__(self, p: float = 0.5, inplace: bool = False, always: bool = False) -> None:
        super().__init__(p, inplace)
        self.always = always

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.alpha_dropout(input, self.p, self.training or self.always, self.inplace)


class MCDropPath(nn.modules.dropout._DropoutNd):
    """Stochastic depth ("drop path") that MC mode samples: opt-in, see :func:`convert_drop_path`.

    Each row's residual branch is zeroed with probability ``p`` (kept rows are scaled by
    ``1 / (1 - p)`` when ``scale_by_keep``), as timm's ``DropPath``. Sampling it is a
    different approximation from unit dropout (whole branches of the network are dropped),
    so MC mode leaves other drop-path modules deterministic unless they are converted.

    Shapes: input (N, *), output (N, *); one Bernoulli per row (keyed like any dropout).
    """

    def __init__(self, p: float = 0.1, scale_by_keep: bool = True) -> None:
        super().__init__(p)
        self.scale_by_keep = scale_by_keep

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or input.dim() == 0:
            return input
        ones = input.new_ones(input.shape[0], *([1] * (input.dim() - 1)))  # (N, 1, ...)
        keep = F.dropout(ones, self.p, self.training)  # routed through MC contexts
        if not self.scale_by_keep:
            keep = keep * (1.0 - self.p)
        return input * keep


def convert_drop_path(model: nn.Module) -> nn.Module:
    """Opt in to sampling stochastic depth: replace drop-path modules by :class:`MCDropPath`.

    A drop-path module is recognised by its float ``drop_prob`` attribute and having no
    parameters or children (timm's ``DropPath`` and the ``*DropPath`` classes of
    transformers). Returns the model, changed in place.
    """
    for name, child in list(model.named_children()):
        p = getattr(child, "drop_prob", None)
        leaf = not list(child.children()) and not list(child.parameters(recurse=False))
        if isinstance(p, float) and leaf and not isinstance(child, MCDropPath):
            keep = bool(getattr(child, "scale_by_keep", True))
            setattr(model, name, MCDropPath(p, keep))
        else:
            convert_drop_path(child)
    return model


_CONVERT: dict[type[nn.Module], type[nn.Module]] = {
    nn.Dropout: MCDropout,
    nn.Dropout1d: MCDropout1d,
    nn.Dropout2d: MCDropout2d,
    nn.Dropout3d: MCDropout3d,
    nn.AlphaDropout: MCAlphaDropout,
}


def convert_dropout(model: nn.Module, always: bool = False) -> nn.Module:
    """Replace every ``nn.Dropout*`` module of ``model`` by its MC variant, in place.

    Returns the model. Useful when you want ``always=True`` layers; :func:`mc_mode` and
    :class:`~mcdrop.MCPredictor` do not need it.
    """
    for name, child in list(model.named_children()):
        target = _CONVERT.get(type(child))
        if target is not None:
            old: Any = child
            setattr(model, name, target(old.p, old.inplace, always))  # type: ignore[call-arg]
        else:
            convert_dropout(child, always)
    return model


# --------------------------------------------------------------------------------------
# MC mode
# --------------------------------------------------------------------------------------


@dataclass
class MCState:
    """What :func:`enable_mc` changed, so that :func:`disable_mc` can restore it exactly."""

    model: nn.Module
    modes: list[tuple[nn.Module, bool]]
    handles: list[Any]


class MCFlags(list[tuple[nn.Module, bool]]):
    """Prior ``training`` flags (a list of (module, flag)), plus what else MC mode changed:
    the probe hooks of training-gated modules and the layer-wise recurrent forwards."""

    handles: list[Any]
    rnns: list[nn.Module]


def set_mc_flags(model: nn.Module) -> MCFlags:
    """Put ``model`` in MC flags; return what :func:`restore_flags` needs to undo it.

    Eval mode, except: dropout modules, the torch attention/transformer modules, and
    modules whose own training flag gates only dropout (probed, see ``mcdrop._gated``)
    are flagged as training; multi-layer RNNs with dropout run layer by layer
    (``mcdrop._rnn``).
    """
    # One walk, and a flag is written only where it changes: the engine enters MC mode for
    # every forward chunk, and on small calls these walks were a visible part of the time.
    mods = list(model.modules())
    saved = MCFlags((m, m.training) for m in mods)
    if any(type(m).train is not nn.Module.train for m in mods):
        model.eval()  # a module's own train() may do more than set its flag: let it
    for m in mods:
        want = isinstance(m, (nn.modules.dropout._DropoutNd, *_FLAG_TRAINING))
        if m.training != want:
            m.training = want
    saved.handles = _gated.flag_gated(model, mods)
    saved.rnns = _rnn.patch_rnns(model, mods)
    return saved


def restore_flags(saved: list[tuple[nn.Module, bool]]) -> None:
    """Give every module back its prior flag (and undo the rest of :func:`set_mc_flags`)."""
    for h in getattr(saved, "handles", ()):
        h.remove()
    _rnn.unpatch_rnns(getattr(saved, "rnns", []))
    for m, mode in saved:
        if m.training != mode:
            m.training = mode


def enable_mc(model: nn.Module) -> MCState:
    """Switch ``model`` to MC mode until :func:`disable_mc`; see :func:`mc_mode`."""
    _install_patches()
    saved = set_mc_flags(model)
    depth = threading.local()

    def pre_hook(module: nn.Module, args: Any) -> None:
        if getattr(_TLS, "ctx", None) is not None:  # already inside a (keyed) context
            depth.stack = [*getattr(depth, "stack", []), None]
            return
        ctx = SamplingContext(mode="free")
        depth.stack = [*getattr(depth, "stack", []), (ctx, getattr(_TLS, "ctx", None))]
        _TLS.ctx = ctx

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        stack = getattr(depth, "stack", [])
        if not stack:
            return
        entry = stack.pop()
        if entry is None:
            return
        ctx, prev = entry
        _TLS.ctx = prev
        if ctx.site == 0:
            raise NoDropoutError(
                f"{type(module).__name__} ran no dropout in MC mode: its predictions would "
                "have zero variance. Add dropout (e.g. mcdrop.MCDropout) to the model"
            )

    handles = [
        model.register_forward_pre_hook(pre_hook),
        model.register_forward_hook(post_hook, always_call=True),
    ]
    return MCState(model, saved, handles)


def disable_mc(state: MCState) -> None:
    """Undo :func:`enable_mc`: every module gets back its exact prior ``training`` flag."""
    for h in state.handles:
        h.remove()
    restore_flags(state.modes)


@contextmanager
def mc_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Make every dropout of ``model`` stochastic while everything else stays in eval mode.

    Covers ``nn.Dropout*``, ``nn.AlphaDropout``, :class:`MCDropout`, functional dropout in
    custom modules, and the attention dropout of ``nn.MultiheadAttention`` and
    ``nn.Transformer*`` layers (their fused eval fast path is bypassed). BatchNorm keeps its
    running statistics and never updates them. Each module's prior ``training`` flag is
    restored on exit, also when the block raises. A forward pass that runs no dropout at
    all raises :class:`~mcdrop.errors.NoDropoutError`.

    Masks come from torch's global generator here; use :class:`~mcdrop.MCPredictor` for
    seeded, batched sampling.

    Examples
    --------
    >>> with mc_mode(model):
    ...     draws = torch.stack([model(x) for _ in range(10)])  # (10, B, ...)
    """
    state = enable_mc(model)
    try:
        yield model
    finally:
        disable_mc(state)
