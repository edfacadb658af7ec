"""The engine on a CUDA device (issue 19): run by ``scripts/gpu-check`` on a lent GPU.

Every test here is marked ``gpu`` and skips on a machine without CUDA: CPU stays the ground
truth, and these tests compare the device against it. Only the public API is used, so the
tests hold whatever the engine's internals look like.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tolerance import assert_close_f32, assert_stats_close_f32, value_scale
from torch import nn

from mcdrop import MCDropout, MCPredictor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def mlp(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, width), nn.ReLU(), MCDropout(0.2),
        nn.Linear(width, width), nn.ReLU(), MCDropout(0.2),
        nn.Linear(width, 3),
    )  # fmt: skip


def test_keyed_masks_on_the_device_equal_the_cpu_ones() -> None:
    # Masks are keyed by (seed, sample, site, element), not drawn from a device generator:
    # the same seed gives the same subnetworks on CUDA as on the CPU.
    ones = torch.ones(5, 32)
    masks = nn.Sequential(MCDropout(0.5))  # output = mask / (1 - p): 0 or 2, exactly
    a = MCPredictor(masks, samples=64).predict(ones, seed=3, return_samples=True)
    b = MCPredictor(masks, samples=64, device="cuda").predict(ones, seed=3, return_samples=True)
    assert torch.equal(a.draws, b.draws.cpu())
    x = torch.randn(5, 8)
    cpu = MCPredictor(mlp(), samples=64).predict(x, seed=3)
    gpu = MCPredictor(mlp(), samples=64, device="cuda").predict(x, seed=3)
    assert_stats_close_f32(gpu, cpu)


def test_batch_independence_on_the_device() -> None:
    pred = MCPredictor(mlp(), samples=32, device="cuda")
    x = torch.randn(6, 8)
    full = pred.predict(x, seed=5)
    alone = pred.predict(x[2:3], seed=5)
    c = value_scale(full.mean, full.variance)
    assert_close_f32(alone.mean[0], full.mean[2], scale=c, what="mean")


class OOMOverRows(nn.Module):
    """Raises CUDA's out-of-memory error when a chunk holds more rows than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} rows")
        return self.net(x)


def test_out_of_memory_on_the_device_halves_the_chunk() -> None:
    x = torch.randn(4, 8)
    model = OOMOverRows(limit=10**9)
    ref = MCPredictor(model, samples=64, device="cuda", max_rows=512).predict(x, seed=2)
    model.limit = 40
    out = MCPredictor(model, samples=64, device="cuda", max_rows=512).predict(x, seed=2)
    assert_stats_close_f32(out, ref)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_agree_with_fp32(precision: str) -> None:
    # Half precision rounds each output to 8 (bf16) or 11 (fp16) significant bits; the
    # statistics stay float64. Bound: a few half-precision ulps of the value scale.
    x = torch.randn(8, 8)
    ref = MCPredictor(mlp(), samples=200, device="cuda").predict(x, seed=1)
    out = MCPredictor(mlp(), samples=200, device="cuda", precision=precision).predict(x, seed=1)
    eps = {"bf16": 2.0**-8, "fp16": 2.0**-11}[precision]
    c = value_scale(ref.mean, ref.variance)
    assert out.mean.dtype == torch.float64
    assert float((out.mean - ref.mean).abs().max()) <= 16 * eps * c
    assert float((out.variance - ref.variance).abs().max()) <= 16 * eps * 2 * c * c


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_samples_sharded_over_two_gpus_equal_one() -> None:
    x = torch.randn(4, 8)
    one = MCPredictor(mlp(), samples=37, device="cuda:0").predict(x, seed=5)
    two = MCPredictor(mlp(), samples=37, devices=["cuda:0", "cuda:1"]).predict(x, seed=5)
    assert_stats_close_f32(two, one)


def test_memory_does_not_grow_with_samples() -> None:
    # Chunked streaming moments: peak device memory at S = 10,000 stays under twice S = 100.
    x = torch.randn(64, 8, device="cuda")
    pred = MCPredictor(mlp(512), samples=100, device="cuda", max_rows=8192)
    peaks = []
    for s in (100, 10_000):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        pred.predict(x, samples=s, seed=0)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] < 2 * peaks[0], peaks
