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
bits on every backend); ``tests/engine/test_masks.py`` checks it against a pure-Python reference,
bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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


def _seed_salt(seed: int) -> int:
    lo, hi = seed & _M32, (seed >> 32) & _M32
    return hash32_py(lo ^ hash32_py(hi ^ 0x5BD1E995))


def unit_keys(seed: int, samples: torch.Tensor) -> torch.Tensor:
    """Key of each (seed, sample) pair. ``samples`` is an int64 tensor of sample indices."""
    return hash32((samples.to(torch.int64) * _GOLDEN + _seed_salt(seed)) & _M32)


def unit_keys_many(
    ranges: Sequence[tuple[int, int, int]], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Keys of several (seed, first sample, end sample) ranges, concatenated in order.

    Equal to ``torch.cat([unit_keys(seed, torch.arange(s0, s1)) for ...])`` in a fixed
    number of tensor operations, however many ranges there are (one per request of a
    batch)."""
    counts = torch.tensor([s1 - s0 for _, s0, s1 in ranges], dtype=torch.int64)
    salts = torch.tensor([_seed_salt(seed) for seed, _, _ in ranges], dtype=torch.int64)
    firsts = torch.tensor([s0 for _, s0, _ in ranges], dtype=torch.int64)
    starts = torch.cumsum(counts, 0) - counts  # position of each range's first unit
    total = int(counts.sum())
    # sample index of each unit: its position minus its range's start, plus the range's s0
    samples = torch.arange(total, dtype=torch.int64) + torch.repeat_interleave(
        firsts - starts, counts
    )
    salt = torch.repeat_interleave(salts, counts)
    return hash32((samples * _GOLDEN + salt) & _M32).to(device)


# The numpy path pays off most on large masks (many requests batched together: 0.55 vs
# 1.04 ms for 3,200 x 128). On small ones (one request: 100 x 128, 0.05 vs 0.17 ms) it
# changed how glibc's heap fragments: in the engine benchmark's MLP (157 chunks of 8 MiB
# activations at S = 10,000) the first call's peak memory varied between 44 and 93 MiB
# across runs, in steps of one chunk, against a steady 44 MiB for the torch path. With a
# fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072) both paths stay at 36.5 MiB, so it
# is the allocator's dynamic threshold, not a leak; below this many elements the torch
# path runs, which keeps the peak steady without tuning the allocator.
_NUMPY_MIN = 1 << 17


def _h32_np(x: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """The mixer in place on a uint32 array (numpy wraps unsigned products natively).
    ``tmp``, shaped like ``x``, holds the shifted copies (allocated when None)."""
    t = np.empty_like(x) if tmp is None else tmp
    np.right_shift(x, np.uint32(16), out=t)
    x ^= t
    x *= np.uint32(_C1)
    np.right_shift(x, np.uint32(15), out=t)
    x ^= t
    x *= np.uint32(_C2)
    np.right_shift(x, np.uint32(16), out=t)
    x ^= t
    return x


def _keep_mask_np(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
    """:func:`keep_mask` on the CPU with in-place numpy uint32 arithmetic: the same bits,
    2-3x faster than the int32 torch ops (no temporaries, no sign masking). The (U, F)
    buffers are torch tensors seen through numpy, allocated like the activations around
    them."""
    k = (keys.numpy() & _M32).astype(np.uint32)  # (U,)
    base = _h32_np(k ^ np.uint32(hash32_py(site * 0x27D4EB2F + 0x165667B1)))
    stride = _h32_np(base + np.uint32(_GOLDEN)) | np.uint32(1)
    shape = (len(k), numel)
    h = torch.empty(shape, dtype=torch.int32).numpy().view(np.uint32)  # (U, F)
    tmp = torch.empty(shape, dtype=torch.int32).numpy().view(np.uint32)
    np.multiply(np.arange(numel, dtype=np.uint32)[None, :], stride[:, None], out=h)
    h += base[:, None]
    _h32_np(h, tmp)
    threshold = int(round(p * 2**32))
    keep = torch.empty(shape, dtype=torch.bool)
    if threshold >= 2**32:
        return keep.fill_(False)
    np.greater_equal(h, np.uint32(threshold), out=keep.numpy())
    return keep


def keep_mask(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
    """Boolean keep-mask of shape (U, numel) for ``U = len(keys)`` units at one site.

    P(keep) = 1 - p up to 2**-32 (the threshold is rounded to an integer).
    """
    if keys.device.type == "cpu" and len(keys) * numel >= _NUMPY_MIN:
        return _keep_mask_np(keys, site, numel, p)
    return _keep_mask_torch(keys, site, numel, p)


def _keep_mask_torch(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
    """:func:`keep_mask` with torch int32 ops, on any device (the CUDA path)."""
    k = _to_i32(keys)  # (U,)
    site_salt = _s32(hash32_py(site * 0x27D4EB2F + 0x165667B1))
    base = _h32(k ^ site_salt)  # (U,)
    # An odd stride per unit: units walk different arithmetic progressions through the
    # mixer, so no unit's mask is a shifted copy of another's.
    stride = _h32(base + _s32(_GOLDEN)) | 1  # (U,)
    j = torch.arange(numel, device=keys.device, dtype=torch.int32)  # (F,)
    h = _h32(j.unsqueeze(0) * stride.unsqueeze(1) + base.unsqueeze(1))  # (U, F)
    threshold = int(round(p * 2**32))
    if threshold >= 2**32:  # p within 2**-33 of 1: nothing is kept (2**31 overflows int32)
        return torch.zeros(h.shape, dtype=torch.bool, device=h.device)
    # Flipping the sign bit maps unsigned order onto signed int32 order.
    return (h ^ _s32(0x80000000)) >= threshold - 2**31
