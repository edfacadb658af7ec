"""Sampling contexts and the dropout functions routed through them.

mcdrop routes the dropout *functions* of ``torch.nn.functional`` (``dropout``,
``dropout1d/2d/3d``, ``alpha_dropout``, ``feature_alpha_dropout``), plus
``scaled_dot_product_attention`` and ``multi_head_attention_forward``, through thin wrappers
installed once, on first use. A wrapper behaves exactly like the original unless the
calling thread has an active :class:`SamplingContext`; inside one, dropout is applied
whatever ``training`` flag the caller passed, with masks from the context:

- ``free``: torch's own dropout (global generator), used by plain ``mc_mode``;
- ``keyed``: masks from :mod:`mcdrop.engine.masks`, one per (seed, sample) unit, shared by the
  rows of that unit, so a row's draws do not depend on batching or chunking;
- ``record``: dropout is the identity and each call's shape is recorded (planning).

The context is thread-local, so requests in other threads are never affected.
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

from mcdrop.engine.masks import keep_mask
from mcdrop.errors import UnsupportedModelError

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
    where: str = ""  # module path of the call, when the context has ``locate`` (audit)


@dataclass
class SamplingContext:
    """Where dropout masks come from during one forward pass.

    ``mode``:
      - ``"free"``: torch's own dropout (global RNG); plain ``mc_mode`` uses this.
      - ``"keyed"``: masks from :mod:`mcdrop.engine.masks`; activations hold ``U * R`` rows
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
    locate: Callable[[], str] | None = None  # names the calling module (audit only)

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
        mask = mask_u.index_select(0, ctx.row_unit)  # (N, F) or (N, C, 1)
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
        where = ctx.locate() if ctx.locate is not None else ""
        ctx.records.append(SiteRecord(kind, tuple(x.shape), float(p), where))
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
