"""Per-request budgets against the real server on loopback (issue 18 items 2 and 3).

One uvicorn (from a thread, so the test can read the batchers) serves three copies of
toy1d: ``toy1d`` with the default compute budget, ``tight`` with ``max_compute_seconds =
0.2`` in its model.toml and ``roomy`` with 1,000 s (for the timeout test, whose request
must pass the budget). The server's answer limit is 1 MiB and its deadline 1.5 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers.live_server import LiveApp, live_app, metric
from toy_models import rss_bytes, toy_copy

from service import budgets
from service.settings import Settings

TIMEOUT_S = 1.5
MAX_RESPONSE = 2**20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    root = tmp_path_factory.mktemp("budget-repo")
    toy_copy(root, "toy1d")
    toy_copy(root, "tight", max_compute_seconds=0.2)
    toy_copy(root, "roomy", max_compute_seconds=1000)
    settings = Settings(models_dir=root, log_level="warning", request_timeout_s=TIMEOUT_S,
                        max_response_bytes=MAX_RESPONSE)  # fmt: skip
    with live_app(settings, timeout=90) as s:
        yield s


def _v1(s: LiveApp, model: str, rows: int, samples: int, **extra: Any) -> httpx.Response:
    body = {"inputs": [[0.5]] * rows, "samples": samples, "seed": 3, **extra}
    return httpx.post(f"{s.url}/v1/models/{model}/predict", json=body, timeout=60)


def _params(s: LiveApp, model: str) -> dict[str, Any]:
    r = httpx.get(f"{s.url}/v2/models/{model}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json()["parameters"])


def _counter(s: LiveApp, model: str, outcome: str) -> float:
    series = f'mcdrop_predictions_total{{model="{model}",outcome="{outcome}",version="1.0.0"}}'
    return metric(s.url, series)


# ------------------------------------------------------------------ compute budget, item 3


def test_metadata_states_each_models_budget(served: LiveApp) -> None:
    default, tight = _params(served, "toy1d"), _params(served, "tight")
    assert default["max_compute_seconds"] == Settings().max_compute_s
    assert tight["max_compute_seconds"] == 0.2
    for p in (default, tight):
        assert 0 < p["seconds_per_row_sample"] < 0.01  # toy1d: a 64-wide MLP
        assert p["max_row_samples"] == int(p["max_compute_seconds"] / p["seconds_per_row_sample"])
    assert default["max_response_bytes"] == MAX_RESPONSE


def test_toy1d_4096_rows_by_5000_samples_is_refused_before_queueing(served: LiveApp) -> None:
    """The issue's 5-25 s request: over the default budget wherever a row-sample costs
    more than 0.5 us (this CPU measures 1-100 us), and then refused in milliseconds
    without reaching the engine; on a faster machine it is within budget and bounded."""
    p = _params(served, "toy1d")
    batcher = served.runtime("toy1d").batcher
    chunks = batcher.chunks
    start = time.monotonic()
    r = _v1(served, "toy1d", 4096, 5000)
    took = time.monotonic() - start
    if 4096 * 5000 > p["max_row_samples"]:
        assert r.status_code == 422, r.text[:300]
        msg = r.json()["error"]
        assert "MCDROP_MAX_COMPUTE_S" in msg and f"{p['max_row_samples']:,} row-samples" in msg
        assert took < 2.0 and batcher.chunks == chunks  # never queued
    else:  # pragma: no cover - a machine where the whole request fits the budget
        assert r.status_code in (200, 504) and took < TIMEOUT_S + 2.0


def test_model_toml_budget_overrides_the_default(served: LiveApp) -> None:
    limit = _params(served, "tight")["max_row_samples"]
    over = _v1(served, "tight", 4096, limit // 4096 + 1)
    assert over.status_code == 422
    assert "max_compute_seconds in model.toml" in over.json()["error"]
    assert "0.2 s per request" in over.json()["error"]
    under = _v1(served, "tight", 1, max(1, min(limit, 200)))
    assert under.status_code == 200, under.text[:300]


def test_a_timed_out_request_stops_computing_and_is_counted_once(served: LiveApp) -> None:
    """A request of 4,096 rows x 5,000 samples (the model's maximum: about 20 s of compute
    on an idle machine, more on a busy one) gets its 504 at 1.5 s; its job is dropped at
    the next chunk boundary, so the engine stops long before the whole request would be
    done; the metrics count one timeout and no ok. (Sizing it from a timed run, as before,
    gave a request that finished under 1.5 s when the timing ran on a busier moment.)"""
    rt = served.runtime("roomy")
    batcher = rt.batcher
    assert _v1(served, "roomy", 4096, 50).status_code == 200
    samples = 5000
    ok0, timeout0 = _counter(served, "roomy", "ok"), _counter(served, "roomy", "timeout")
    dropped0, busy0 = batcher.dropped, batcher.busy_s
    start = time.monotonic()
    r = _v1(served, "roomy", 4096, samples)
    assert r.status_code == 504, r.text[:300]
    deadline = time.monotonic() + 5.0
    while batcher.dropped == dropped0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stopped = time.monotonic() - start
    assert batcher.dropped == dropped0 + 1
    chunks = batcher.chunks
    time.sleep(0.3)
    assert batcher.chunks == chunks  # nothing more computed for it
    # Stopped within one chunk of the 504 (a 32,768-row chunk takes 40-300 ms here),
    # far from the ~6 s the whole request needs.
    assert stopped < TIMEOUT_S + 1.5
    assert batcher.busy_s - busy0 < TIMEOUT_S + 1.5
    assert _counter(served, "roomy", "timeout") - timeout0 == 1
    assert _counter(served, "roomy", "ok") - ok0 == 0
    assert _v1(served, "roomy", 1, 10).status_code == 200


# ------------------------------------------------------------------ answer size, item 2


def test_an_answer_over_the_size_limit_is_refused_before_computing(served: LiveApp) -> None:
    batcher = served.runtime("roomy").batcher
    chunks = batcher.chunks
    r = _v1(served, "roomy", 4096, 10, return_samples=True)  # draws: 40,960 numbers
    assert r.status_code == 422
    msg = r.json()["error"]
    assert "MCDROP_MAX_RESPONSE_BYTES" in msg and f"{MAX_RESPONSE:,} bytes" in msg
    assert batcher.chunks == chunks


def test_real_answers_stay_under_their_bounds(served: LiveApp) -> None:
    rt = served.runtime("roomy")
    rows = 300
    r = _v1(served, "roomy", rows, 3, return_samples=True)
    assert r.status_code == 200
    assert len(r.content) <= budgets.v1_answer_bytes(rt, rows, 3, True)
    tensor = {"name": "input", "shape": [rows, 1], "datatype": "FP32",
              "data": [-1.234567e-30 + i for i in range(rows)]}  # fmt: skip
    for binary in (False, True):
        body = {"id": "x" * 50, "inputs": [tensor], "parameters": {"mc_samples": 3}}
        if binary:
            body["parameters"]["binary_data_output"] = True
        r = httpx.post(f"{served.url}/v2/models/roomy/infer", json=body, timeout=30)
        assert r.status_code == 200
        every = binary
        bound = budgets.v2_answer_bytes(rt, rows, rt.output_fields(), lambda _, b=every: b,
                                        "FP32", 50)  # fmt: skip
        assert len(r.content) <= bound


def test_the_issues_410_mb_request_gets_a_fast_4xx_and_no_memory(served: LiveApp) -> None:
    """``mean`` listed 10,000 times on 4,096 rows (a 200 KB body that answered 410 MB and
    grew RSS from 270 to 845 MB): a 422 in well under a second, three times over, with
    the resident memory of the process (server included) growing by less than 32 MB."""
    tensor = {"name": "input", "shape": [4096, 1], "datatype": "FP32", "data": [0.5] * 4096}
    body = {"inputs": [tensor], "outputs": [{"name": "mean"}] * 10_000}
    before = rss_bytes()
    for _ in range(3):
        start = time.monotonic()
        r = httpx.post(f"{served.url}/v2/models/toy1d/infer", json=body, timeout=30)
        assert r.status_code == 422 and time.monotonic() - start < 1.0, r.text[:200]
        # Refused by the body's key count (the pre-scan) or by the duplicate check.
        msg = r.json()["error"]
        assert "more than once" in msg or "object keys" in msg, msg
    assert rss_bytes() - before < 32 * 2**20
    few = {"inputs": [tensor], "outputs": [{"name": "mean"}] * 50}  # under any key limit
    r = httpx.post(f"{served.url}/v2/models/toy1d/infer", json=few, timeout=30)
    assert r.status_code == 422 and "more than once" in r.json()["error"]
