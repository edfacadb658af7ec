"""The counter-based mask generator: exact against a pure-Python reference, right rates."""

from __future__ import annotations

import math

import torch

from mcdrop.engine.masks import (
    _keep_mask_np,
    _keep_mask_torch,
    hash32,
    hash32_py,
    keep_mask,
    unit_keys,
    unit_keys_many,
)


def test_hash_matches_python_reference() -> None:
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF, 987654321]
    got = hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [hash32_py(v) for v in values]
    assert all(0 <= g < 2**32 for g in got)


def test_keep_rate_matches_p_within_binomial_tolerance() -> None:
    keys = unit_keys(7, torch.arange(200))
    for p in (0.05, 0.3, 0.5, 0.9):
        m = keep_mask(keys, site=3, numel=500, p=p)
        n = m.numel()
        rate = m.double().mean().item()
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(rate - (1 - p)) < 5 * sd, (p, rate)


def test_masks_differ_across_units_sites_and_are_pure() -> None:
    keys = unit_keys(1, torch.arange(4))
    a = keep_mask(keys, 0, 256, 0.5)
    assert torch.equal(a, keep_mask(keys, 0, 256, 0.5))  # pure function of its inputs
    assert not torch.equal(a, keep_mask(keys, 1, 256, 0.5))  # site matters
    assert not torch.equal(a[0], a[1])  # sample matters
    other = keep_mask(unit_keys(2, torch.arange(4)), 0, 256, 0.5)
    assert not torch.equal(a, other)  # seed matters
    # a unit's mask does not depend on which other units are generated with it
    assert torch.equal(keep_mask(keys[2:3], 0, 256, 0.5)[0], a[2])


def test_bits_are_pairwise_uncorrelated() -> None:
    keys = unit_keys(3, torch.arange(4000))
    m = keep_mask(keys, 0, 8, 0.5).double()  # (4000, 8)
    c = torch.corrcoef(m.T)
    off = c[~torch.eye(8, dtype=torch.bool)]
    # correlation of independent bits has sd ~ 1/sqrt(n)
    assert off.abs().max().item() < 5 / math.sqrt(4000)


def test_keep_mask_matches_python_reference_bit_for_bit() -> None:
    keys = unit_keys(123456789012, torch.arange(5))
    site, numel, p = 4, 37, 0.35
    got = keep_mask(keys, site, numel, p)
    threshold = round(p * 2**32)
    salt = hash32_py(site * 0x27D4EB2F + 0x165667B1)
    for u, key in enumerate(keys.tolist()):
        base = hash32_py(key ^ salt)
        stride = hash32_py((base + 0x9E3779B9) & 0xFFFFFFFF) | 1
        ref = [hash32_py((j * stride + base) & 0xFFFFFFFF) >= threshold for j in range(numel)]
        assert got[u].tolist() == ref


def test_numpy_and_torch_mask_paths_give_the_same_bits() -> None:
    # The CPU path (numpy uint32) and the device path (torch int32) must agree bit for bit,
    # including thresholds near both ends of the range.
    keys = unit_keys(2**40 + 17, torch.arange(64))
    for site, numel, p in [(0, 1, 0.5), (3, 129, 0.1), (7, 300, 0.99), (1, 50, 1e-9),
                           (2, 40, 1.0 - 1e-12)]:  # fmt: skip
        assert torch.equal(
            _keep_mask_np(keys, site, numel, p), _keep_mask_torch(keys, site, numel, p)
        ), (site, numel, p)


def test_large_masks_take_the_numpy_path_with_the_same_bits() -> None:
    from mcdrop.engine.masks import _NUMPY_MIN

    keys = unit_keys(5, torch.arange(300))
    assert 300 * 500 >= _NUMPY_MIN  # keep_mask dispatches this one to numpy on the CPU
    assert torch.equal(keep_mask(keys, 2, 500, 0.3), _keep_mask_torch(keys, 2, 500, 0.3))


def test_unit_keys_many_equals_one_range_at_a_time() -> None:
    ranges = [(7, 0, 5), (2**63 - 1, 10, 11), (0, 3, 40), (7, 5, 9)]
    want = torch.cat([unit_keys(s, torch.arange(a, b)) for s, a, b in ranges])
    assert torch.equal(unit_keys_many(ranges), want)
