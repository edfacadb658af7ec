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

What stays in eval mode
-----------------------
Everything that is not dropout: BatchNorm/InstanceNorm use their running statistics and
never update them, RReLU uses its fixed slope, and custom layers that check
``self.training`` for reasons other than calling a dropout function see ``False``. MC mode
samples dropout and nothing else. Dropout that is skipped by a custom ``if self.training:``
branch, or called through a name imported before mcdrop was (``from torch.nn.functional
import dropout``), cannot be seen; if no dropout at all runs, :class:`NoDropoutError` says
so instead of returning a silent zero variance. Inter-layer dropout of ``nn.LSTM``/``nn.GRU``
runs inside a fused kernel and is not sampled.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mcdrop._keyed import keep_mask
from mcdrop.errors import NoDropoutError, UnsupportedModelError

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
    "has_dropout_modules",
]

_SELU_ALPHA = -1.7580993408473766  # alpha' = -lambda * alpha of SELU, as torch uses it

# Modules whose eval mode skips dropout for reasons other than nn.Dropout children.
_FLAG_TRAINING: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
)


# --------------------------------------------------------------------------------------
# Sampling context (thread-local)
# --------------------------------------------------------------------------------------


@dataclass
class SiteRecord:
    """What one dropout call looked like during a recording pass."""

    kind: str  # "element" | "channel" | "alpha" | "feature_alpha"
    shape: tuple[int, ...]
    p: float


@dataclass
class SamplingContext:
    """Where dropout masks come from during one forward pass.

    ``mode``:
      - ``"free"``: torch's own dropout (global RNG); plain ``mc_mode`` uses this.
      - ``"keyed"``: masks from :mod:`mcdrop._keyed`; activations hold ``U * R`` rows
        (``R`` rows per unit, unit-major) or rows mapped by ``row_unit``.
      - ``"record"``: dropout is the identity; each call's shape is recorded.
      Keyed masks come from ``mask_fn(keys, site, numel, p)`` when set (exact ensemble).
    """

    mode: str = "free"
    keys: torch.Tensor | None = None  # (U,) int64 unit keys
    rows_per_unit: int | None = None
    row_unit: torch.Tensor | None = None  # (N,) int64, unit of each row
    layouts: dict[int, tuple[int, int]] = field(default_factory=dict)
    mask_fn: Callable[[torch.Tensor, int, int, float], torch.Tensor] | None = None
    site: int = 0
    records: list[SiteRecord] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Number of rows N the activations of this forward pass hold."""
        if self.row_unit is not None:
            return len(self.row_unit)
        assert self.rows_per_unit is not None and self.keys is not None
        return self.rows_per_unit * len(self.keys)


_TLS = threading.local()


def current_context() -> SamplingContext | None:
    """The calling thread's active sampling context, if any."""
    return getattr(_TLS, "ctx", None)


@contextmanager
def sampling(ctx: SamplingContext) -> Iterator[SamplingContext]:
    """Make ``ctx`` the calling thread's sampling context for the duration of the block."""
    _install_patches()
    prev = getattr(_TLS, "ctx", None)
    _TLS.ctx = ctx
    try:
        yield ctx
    finally:
        _TLS.ctx = prev


# --------------------------------------------------------------------------------------
# Keyed dropout
# --------------------------------------------------------------------------------------


def _row_layout(ctx: SamplingContext, x: torch.Tensor, site: int) -> tuple[int, int]:
    """(dim holding the rows, rows folded per row) of the activation at ``site``."""
    n = ctx.rows
    if site in ctx.layouts:
        d, m = ctx.layouts[site]
        if x.dim() > d and x.shape[d] == n * m:
            return d, m
    if x.dim() > 0 and x.shape[0] % n == 0 and x.shape[0] > 0:
        return 0, x.shape[0] // n
    raise UnsupportedModelError(
        f"dropout call #{site} got a tensor of shape {tuple(x.shape)} whose leading "
        f"dimension does not hold the {n} rows being sampled; mcdrop keys masks per row and "
        "needs the batch in one dimension (dropout applied to weights or to batch-free "
        "tensors is not supported)"
    )


def _keyed_dropout(
    ctx: SamplingContext, x: torch.Tensor, p: float, kind: str, site: int
) -> torch.Tensor:
    d, m = _row_layout(ctx, x, site)
    n = ctx.rows
    xt = x.movedim(d, 0) if d != 0 else x
    moved_shape = xt.shape
    channelwise = kind in ("channel", "feature_alpha")
    if channelwise:
        if d != 0 or m != 1 or x.dim() < 2:
            raise UnsupportedModelError(
                f"channel dropout call #{site} needs input shaped (batch, channels, ...); "
                f"got {tuple(x.shape)}"
            )
        numel = x.shape[1]
        xr = xt.reshape(n, numel, -1)  # (N, C, spatial)
    else:
        xr = xt.reshape(n, -1)  # (N, F)
        numel = xr.shape[1]
    assert ctx.keys is not None
    keep_u = (ctx.mask_fn or keep_mask)(ctx.keys, site, numel, p)  # (U, F)
    alpha = kind in ("alpha", "feature_alpha")
    # Scale the (U, F) masks once; rows then share them by broadcasting (regular layout)
    # or by one gather (mixed requests), so the (N, F) work is a single multiply.
    mask_u = keep_u.to(x.dtype)
    if not alpha:
        mask_u = mask_u * (1.0 / (1.0 - p))
    if channelwise:
        mask_u = mask_u.unsqueeze(-1)  # (U, C, 1)
    if ctx.row_unit is not None:
        mask = mask_u[ctx.row_unit]  # (N, F) or (N, C, 1)
        xv = xr
    else:
        u, r = len(ctx.keys), ctx.rows_per_unit
        assert r is not None
        mask = mask_u.unsqueeze(1)  # (U, 1, F) or (U, 1, C, 1)
        xv = xr.reshape(u, r, *xr.shape[1:])  # (U, R, F) or (U, R, C, spatial)
    if alpha:
        a = 1.0 / math.sqrt((_SELU_ALPHA * _SELU_ALPHA * p + 1.0) * (1.0 - p))
        out = a * (xv * mask + _SELU_ALPHA * (mask - 1.0 + p))
    else:
        out = xv * mask
    out = out.reshape(moved_shape)
    return out.movedim(0, d) if d != 0 else out


def _dispatch(
    original: Callable[..., torch.Tensor],
    kind: str,
    x: torch.Tensor,
    p: float,
    inplace: bool,
) -> torch.Tensor:
    """Apply dropout of ``kind`` under the active context (which exists when called)."""
    ctx = current_context()
    assert ctx is not None
    site = ctx.site
    ctx.site += 1
    if ctx.mode == "record":
        ctx.records.append(SiteRecord(kind, tuple(x.shape), float(p)))
        return x
    if ctx.mode == "free":
        return original(x, p, True, inplace)
    if p == 0.0:
        return x
    if p >= 1.0 and kind in ("element", "channel"):
        return torch.zeros_like(x)
    # Always out of place: the input may be a cached activation shared by many samples.
    return _keyed_dropout(ctx, x, float(p), kind, site)


# --------------------------------------------------------------------------------------
# Patching torch.nn.functional (once, process-wide, inert outside a context)
# --------------------------------------------------------------------------------------

_PATCH_LOCK = threading.Lock()
_PATCHED = False
ORIGINALS: dict[str, Callable[..., Any]] = {}


def _make_dropout_wrapper(name: str, kind: str) -> Callable[..., torch.Tensor]:
    original = getattr(F, name)
    ORIGINALS[name] = original

    @functools.wraps(original)
    def wrapper(
        input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> torch.Tensor:
        if getattr(_TLS, "ctx", None) is None or not isinstance(input, torch.Tensor):
            return original(input, p, training, inplace)
        if p < 0.0 or p > 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        return _dispatch(original, kind, input, p, inplace)

    wrapper.__mcdrop_wrapper__ = True  # type: ignore[attr-defined]
    return wrapper


def _manual_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """Scaled dot-product attention with the dropout on the weights made explicit."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(rep, dim=-3)
        v = v.repeat_interleave(rep, dim=-3)
    s = (1.0 / math.sqrt(q.shape[-1])) if scale is None else scale
    w = (q @ k.transpose(-2, -1)) * s  # (..., L, S)
    if is_causal:
        lq, lk = q.shape[-2], k.shape[-2]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        w = w.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            w = w.masked_fill(~attn_mask, float("-inf"))
        else:
            w = w + attn_mask
    w = torch.softmax(w, dim=-1)
    w = F.dropout(w, dropout_p, True)  # routed through the context
    return w @ v


def _install_patches() -> None:
    global _PATCHED
    if _PATCHED:
        return
    with _PATCH_LOCK:
        if _PATCHED:
            return
        for name, kind in (
            ("dropout", "element"),
            ("dropout1d", "channel"),
            ("dropout2d", "channel"),
            ("dropout3d", "channel"),
            ("alpha_dropout", "alpha"),
            ("feature_alpha_dropout", "feature_alpha"),
        ):
            setattr(F, name, _make_dropout_wrapper(name, kind))

        sdpa = F.scaled_dot_product_attention
        ORIGINALS["scaled_dot_product_attention"] = sdpa

        @functools.wraps(sdpa)
        def sdpa_wrapper(
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attn_mask: torch.Tensor | None = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
            scale: float | None = None,
            enable_gqa: bool = False,
        ) -> torch.Tensor:
            ctx = getattr(_TLS, "ctx", None)
            if ctx is not None and ctx.mode == "free" and dropout_p > 0.0:
                ctx.site += 1  # torch's fused kernel samples the mask; count the site
            if ctx is None or ctx.mode == "free" or dropout_p == 0.0:
                return sdpa(
                    query,
                    key,
                    value,
                    attn_mask=attn_mask,
                    dropout_p=dropout_p,
                    is_causal=is_causal,
                    scale=scale,
                    enable_gqa=enable_gqa,
                )
            return _manual_attention(
                query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )

        F.scaled_dot_product_attention = sdpa_wrapper  # type: ignore[assignment]

        mha = F.multi_head_attention_forward
        ORIGINALS["multi_head_attention_forward"] = mha

        @functools.wraps(mha)
        def mha_wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(_TLS, "ctx", None) is not None:
                if len(args) > 13:  # training passed positionally (index 13)
                    args = args[:13] + (True,) + args[14:]
                else:
                    kwargs["training"] = True
            return mha(*args, **kwargs)

        F.multi_head_attention_forward = mha_wrapper  # type: ignore[assignment]
        _PATCHED = True


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


def has_dropout_modules(model: nn.Module) -> bool:
    """True if ``model`` contains a dropout module or attention with dropout > 0."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            return True
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            return True
    return False


# --------------------------------------------------------------------------------------
# MC mode
# --------------------------------------------------------------------------------------


@dataclass
class MCState:
    """What :func:`enable_mc` changed, so that :func:`disable_mc` can restore it exactly."""

    model: nn.Module
    modes: list[tuple[nn.Module, bool]]
    handles: list[Any]


def set_mc_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put ``model`` in MC flags (eval, dropout/attention flagged); return prior flags."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or isinstance(m, _FLAG_TRAINING):
            m.training = True
    return saved


def restore_flags(saved: list[tuple[nn.Module, bool]]) -> None:
    for m, mode in saved:
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
