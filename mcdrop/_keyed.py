"""Counter-based dropout masks keyed by (seed, sample, site, element).

Why not ``torch.Generator``: a seeded answer must not depend on how the engine batches
rows, chunks samples, or which other requests share a forward pass. A stateful generator
hands out numbers in call order, so any change of order changes the masks. Here every
mask bit is a pure function of

    unit key  = f(seed, sample index)         one "unit" = one sampled subnetwork
    site      = index of the dropout call in the forward pass (0, 1, 2, ...)
    element   = position inside one row's activation at that site

so a row gets exactly the same masks whether it runs alone, next to other rows, in one
chunk or in ten. All rows of a request share the unit of a sample: sample s is one
subnetwork of the ensemble applied to every row, as in the ensemble reading of dropout.

The hash is a 32-bit integer finaliser computed with wrapping int32 arithmetic (identical
bits on every backend); ``tests/test_keyed.py`` checks it against a pure-Python reference,
bit for bit.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _s32(c: int) -> int:
    """The int32 value with the same 32 bits as the unsigned ``c``."""
    c &= _M32
    return c - (1 << 32) if c >= (1 << 31) else c


def _h32(x: torch.Tensor) -> torch.Tensor:
    """The mixer on int32 tensors: products wrap mod 2**32 and shifts are made logical by
    masking, so the bits equal the unsigned 32-bit computation. int32 rather than int64
    because CPUs multiply int32 lanes natively (about 3x faster here)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _s32(_C1)
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _s32(_C2)
    return x ^ ((x >> 16) & 0xFFFF)


def _to_i32(x: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> int32 with the same bits."""
    x = x.to(torch.int64) & _M32
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Mix an int64 tensor of values in [0, 2**32) into well-spread 32-bit values (int64)."""
    return _h32(_to_i32(x)).to(torch.int64) & _M32


def hash32_py(x: int) -> int:
    """Pure-Python reference of :func:`hash32` (used by tests)."""
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def unit_keys(seed: int, samples: torch.Tensor) -> torch.Tensor:
    """Key of each (seed, sample) pair. ``samples`` is an int64 tensor of sample indices."""
    lo, hi = seed & _M32, (seed >> 32) & _M32
    s = hash32_py(lo ^ hash32_py(hi ^ 0x5BD1E995))
    return hash32((samples.to(torch.int64) * _GOLDEN + s) & _M32)


def keep_mask(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
    """Boolean keep-mask of shape (U, numel) for ``U = len(keys)`` units at one site.

    P(keep) = 1 - p up to 2**-32 (the threshold is rounded to an integer).
    """
    k = _to_i32(keys)  # (U,)
    site_salt = _s32(hash32_py(site * 0x27D4EB2F + 0x165667B1))
    base = _h32(k ^ site_salt)  # (U,)
    # An odd stride per unit: units walk different arithmetic progressions through the
    # mixer, so no unit's mask is a shifted copy of another's.
    stride = _h32(base + _s32(_GOLDEN)) | 1  # (U,)
    j = torch.arange(numel, device=keys.device, dtype=torch.int32)  # (F,)
    h = _h32(j.unsqueeze(0) * stride.unsqueeze(1) + base.unsqueeze(1))  # (U, F)
    threshold = int(round(p * 2**32))
    # Flipping the sign bit maps unsigned order onto signed int32 order.
    return (h ^ _s32(0x80000000)) >= threshold - 2**31
