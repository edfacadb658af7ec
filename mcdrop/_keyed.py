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

The hash is a 32-bit integer finaliser computed in int64 (values stay below 2**32, so
results are identical on every backend); ``tests/test_keyed.py`` checks it against a
pure-Python reference.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Mix an int64 tensor of values in [0, 2**32) into well-spread 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


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
    s = torch.as_tensor(hash32_py(lo ^ hash32_py(hi ^ 0x5BD1E995)), dtype=torch.int64)
    return hash32((samples.to(torch.int64) * _GOLDEN + s) & _M32)


def keep_mask(keys: torch.Tensor, site: int, numel: int, p: float) -> torch.Tensor:
    """Boolean keep-mask of shape (U, numel) for ``U = len(keys)`` units at one site.

    P(keep) = 1 - p up to 2**-32 (the threshold is rounded to an integer).
    """
    device = keys.device
    site_salt = hash32_py(site * 0x27D4EB2F + 0x165667B1)
    base1 = hash32((keys ^ site_salt) & _M32)  # (U,)
    base2 = hash32((base1 + _GOLDEN) & _M32)  # (U,)
    j = torch.arange(numel, device=device, dtype=torch.int64)  # (F,)
    h = hash32((j.unsqueeze(0) + base1.unsqueeze(1)) & _M32)  # (U, F)
    h = hash32(h ^ base2.unsqueeze(1))
    threshold = int(round(p * 2**32))
    return h >= threshold
