"""Fair scheduling (issue 18 item 4): a long request's chunks interleave with the others.

Engine level: jobs stepped in turn give the numbers each gives alone, bit for bit (the
chunks are the same). Server level (uvicorn on loopback, from a thread): one-row requests
sent while a long request of the same model runs are answered in a small fraction of the
long one's time, not after it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from helpers.live_server import LiveApp, live_app
from torch import nn
from toy_models import toy_copy

from mcdrop import MCPredictor
from mcdrop.prediction import MCRequest
from service.settings import Settings


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def test_interleaved_jobs_give_the_numbers_of_uninterrupted_calls() -> None:
    rng = np.random.default_rng(0)
    long = MCRequest(rng.standard_normal((40, 3)).astype(np.float32), 120, 11)
    short = [MCRequest(rng.standard_normal((2, 3)).astype(np.float32), 30, 20 + i)
             for i in range(3)]  # fmt: skip
    alone = MCPredictor(_mlp(), max_rows=256)  # 6 samples of 40 rows per chunk
    want = alone.predict_many([long])[0]
    chunks = alone.runner.stats.chunk_rows
    assert len(chunks) == 20 and set(chunks) == {240}
    want_short = [alone.predict_many([r])[0] for r in short]
    p = MCPredictor(_mlp(), max_rows=256)
    job = p.start_many([long])
    assert not job.step() and job.chunks == 1
    got_short = []
    for r in short:  # each short job runs between two chunks of the long one
        one = p.start_many([r])
        while not one.step():
            pass
        got_short.append(one.result()[0])
        assert not job.step()
    while not job.step():
        pass
    assert job.chunks == 20
    got = job.result()[0]
    for name in ("mean", "variance", "epistemic_variance"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
        for g, w in zip(got_short, want_short):
            assert torch.equal(getattr(g, name), getattr(w, name)), name


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    root = tmp_path_factory.mktemp("fair-repo")
    toy_copy(root, "roomy", max_compute_seconds=1000)  # the long request passes the budget
    with live_app(
        Settings(models_dir=root, log_level="warning", request_timeout_s=60), timeout=90
    ) as s:
        yield s


def _post(url: str, rows: int, samples: int) -> httpx.Response:
    body = {"inputs": [[0.25]] * rows, "samples": samples, "seed": 5}
    return httpx.post(f"{url}/v1/models/roomy/predict", json=body, timeout=60)


def test_small_requests_are_answered_while_a_long_one_runs(served: LiveApp) -> None:
    """A request sized to run about 4 s (timed here first) and, while it runs, up to five
    one-row requests one after the other: at least three are answered while it runs, each
    in a small fraction of its time (before, the first waited for all of it)."""
    start = time.monotonic()
    assert _post(served.url, 4096, 20).status_code == 200
    per_unit = (time.monotonic() - start) / (4096 * 20)
    samples = min(5000, max(60, int(4.0 / per_unit / 4096)))
    out: dict[str, float] = {}

    def long() -> None:
        t0 = time.monotonic()
        r = _post(served.url, 4096, samples)
        out["status"], out["long_s"], out["end"] = (
            r.status_code,
            time.monotonic() - t0,
            time.monotonic(),
        )

    thread = threading.Thread(target=long)
    chunks = served.runtime("roomy").batcher.chunks
    thread.start()
    deadline = time.monotonic() + 10
    while served.runtime("roomy").batcher.chunks < chunks + 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # the long request is in the engine
    small = []
    while thread.is_alive() and len(small) < 5:
        t0 = time.monotonic()
        assert _post(served.url, 1, 50).status_code == 200
        if thread.is_alive():  # answered while the long one still ran
            small.append(time.monotonic() - t0)
    thread.join(90)
    assert out["status"] == 200
    assert len(small) >= 3, (small, out)  # before, the first one waited for all of it
    assert statistics.median(small) < 0.2 * out["long_s"], (small, out)
    assert max(small) < 0.4 * out["long_s"], (small, out)
