"""Triton's model configuration and statistics extensions, against a live server.

The configuration is checked field by field and as tritonclient reads it; the statistics
by identities that hold whatever the batching did: rows answered, requests, engine calls
and their rows, queue + compute within the success time, and the Prometheus series of
Triton's names carrying the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.live_server import live_server, metric

ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def url(tiny_repo: Path) -> Iterator[str]:
    with live_server(models_dir=tiny_repo) as u:
        yield u


def _stats(url: str, path: str) -> dict[str, Any]:
    r = httpx.get(url + path, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_model_config_has_what_triton_tools_read(url: str) -> None:
    import tritonclient.http as httpclient

    r = httpx.get(url + "/v2/models/clf/config", timeout=10)
    assert r.status_code == 200, r.text
    cfg = r.json()
    assert cfg["name"] == "clf" and cfg["platform"] == "pytorch_mcdrop"
    assert cfg["backend"] == "mcdrop" and cfg["max_batch_size"] == 8  # the manifest's rows
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    out = {o["name"]: o for o in cfg["output"]}
    meta = httpx.get(url + "/v2/models/clf", timeout=10).json()
    assert list(out) == [o["name"] for o in meta["outputs"]]  # same outputs, same order
    assert out["probs"] == {"name": "probs", "data_type": "TYPE_FP32", "dims": [3]}
    # One number per row: Triton's dims [1] reshaped to a scalar.
    assert out["mutual_information"]["dims"] == [1]
    assert out["mutual_information"]["reshape"] == {"shape": []}
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] > 0
    assert cfg["parameters"]["task"] == {"string_value": "classification"}
    assert cfg["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    assert httpx.get(url + "/v2/models/clf/versions/1/config", timeout=10).json() == cfg
    extensions = set(httpx.get(url + "/v2", timeout=10).json()["extensions"])
    assert {"model_configuration", "statistics", "model_repository"} <= extensions
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert client.get_model_config("clf") == cfg
    finally:
        client.close()
    for path, status in (
        ("/v2/models/nope/config", 404),
        ("/v2/models/clf/versions/9/config", 404),
        ("/v2/models/broken/config", 503),
        ("/v2/models/nope/stats", 404),
        ("/v2/models/clf/versions/9/stats", 404),
    ):
        got = httpx.get(url + path, timeout=10)
        assert got.status_code == status and "error" in got.json(), (path, got.text)


def test_statistics_add_up(url: str) -> None:
    """12 concurrent requests of 1-3 rows to reg: every count agrees with what was sent."""
    import tritonclient.http as httpclient

    before = _stats(url, "/v2/models/reg/stats")["model_stats"][0]
    assert before["inference_count"] == 0 and before["last_inference"] == 0
    rows = [1, 2, 3] * 4
    t0 = time.time_ns() // 1_000_000

    def send(n: int) -> int:
        body = {"inputs": [ROW] * n, "samples": 4, "seed": n}
        return httpx.post(url + "/v1/models/reg/predict", json=body, timeout=30).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(send, rows)) == [200] * len(rows)
    t1 = time.time_ns() // 1_000_000
    s = _stats(url, "/v2/models/reg/stats")["model_stats"]
    assert len(s) == 1 and s[0]["name"] == "reg" and s[0]["version"] == "1"
    st, inf = s[0], s[0]["inference_stats"]
    assert st["inference_count"] == sum(rows)  # rows answered
    assert inf["success"]["count"] == len(rows) and inf["fail"]["count"] == 0
    for key in ("queue", "compute_infer", "compute_input", "compute_output"):
        assert inf[key]["count"] == len(rows), key
    assert inf["success"]["ns"] > 0 and inf["compute_infer"]["ns"] > 0 and inf["queue"]["ns"] > 0
    # A request's queue wait and its batch's compute both lie within its success time.
    assert inf["success"]["ns"] >= inf["queue"]["ns"] + inf["compute_infer"]["ns"]
    # Per engine call: the calls add up to the executions, their rows to the rows answered.
    batches = st["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == st["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == sum(rows)
    assert 1 <= st["execution_count"] <= len(rows)
    # Each request counts its whole batch's time: at least each call once, at most all.
    per_call = sum(b["compute_infer"]["ns"] for b in batches)
    assert per_call <= inf["compute_infer"]["ns"] <= len(rows) * per_call
    assert t0 <= st["last_inference"] <= t1
    # The Prometheus series of Triton's names carry the same numbers.
    lab = '{model="reg",version="1"}'
    assert metric(url, "nv_inference_count" + lab) == st["inference_count"]
    assert metric(url, "nv_inference_request_success" + lab) == len(rows)
    assert metric(url, "nv_inference_exec_count" + lab) == st["execution_count"]
    assert metric(url, "nv_inference_request_failure" + lab) == 0
    for name, key in (("queue", "queue"), ("compute_infer", "compute_infer")):
        us = metric(url, f"nv_inference_{name}_duration_us" + lab)
        assert us == pytest.approx(inf[key]["ns"] / 1000, rel=1e-9, abs=len(rows)), name
    every = _stats(url, "/v2/models/stats")["model_stats"]
    assert [m["name"] for m in every] == ["clf", "reg", "slow"]
    assert _stats(url, "/v2/models/reg/versions/1/stats")["model_stats"][0]["name"] == "reg"
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        got = client.get_inference_statistics("reg")["model_stats"][0]
        assert got["inference_count"] == st["inference_count"]
    finally:
        client.close()


def test_failures_count_as_fail_and_bad_input_never_reaches_the_model(url: str) -> None:
    path = "/v2/models/slow/stats"
    before = _stats(url, path)["model_stats"][0]["inference_stats"]
    bad = httpx.post(url + "/v1/models/slow/predict", json={"inputs": [[1, 2]]}, timeout=10)
    assert bad.status_code == 422  # refused before the queue: no statistic moves
    assert _stats(url, path)["model_stats"][0]["inference_stats"] == before
    crash = httpx.post(url + "/v1/models/slow/predict", json={"inputs": [[13.0] * 4]}, timeout=10)
    assert crash.status_code >= 400
    ok = httpx.post(url + "/v1/models/slow/predict", json={"inputs": [ROW]}, timeout=10)
    assert ok.status_code == 200
    after = _stats(url, path)["model_stats"][0]
    inf = after["inference_stats"]
    assert inf["fail"]["count"] == before["fail"]["count"] + 1 and inf["fail"]["ns"] > 0
    assert inf["success"]["count"] == before["success"]["count"] + 1
    assert after["inference_count"] == 1 and after["execution_count"] == 1  # the good one
    assert metric(url, 'nv_inference_request_failure{model="slow",version="1"}') == 1


def test_statistics_per_version(tmp_path: Path) -> None:
    """Two versions of one model: each has its own statistics; without a version, both."""
    import torch
    from svc_helpers import SOURCE, tiny_models
    from svc_helpers import _manifest as manifest

    from mcdrop.repository import save_model

    torch.manual_seed(0)
    for v in ("1", "2"):
        save_model(
            tmp_path / f"twin{v}",
            tiny_models.build_regressor(),
            manifest("twin", "regression", "build_regressor", version=v),
            SOURCE,
        )
    with live_server(models_dir=tmp_path) as u:
        for version, n in (("1", 2), ("2", 1)):
            for _ in range(n):
                body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                    "data": ROW}]}  # fmt: skip
                r = httpx.post(f"{u}/v2/models/twin/versions/{version}/infer", json=body)
                assert r.status_code == 200, r.text
        both = _stats(u, "/v2/models/twin/stats")["model_stats"]
        assert [(s["version"], s["inference_count"]) for s in both] == [("1", 2), ("2", 1)]
        one = _stats(u, "/v2/models/twin/versions/2/stats")["model_stats"]
        assert [(s["version"], s["inference_count"]) for s in one] == [("2", 1)]
        assert [s["version"] for s in _stats(u, "/v2/models/stats")["model_stats"]] == ["1", "2"]
        assert httpx.get(u + "/v2/models/twin/config").json()["parameters"]["version"] == {
            "string_value": "2"  # the default is the highest version
        }
        lab = 'nv_inference_count{model="twin",version="1"}'
        assert metric(u, lab) == 2


def test_config_and_statistics_need_the_api_key(tmp_path: Path) -> None:
    """Under MCDROP_API_KEY the new routes are guarded like the other model routes."""
    with live_server(api_key="k3y", models_dir=tmp_path) as u:  # no models: a fast start
        for path in ("/v2/models/stats", "/v2/models/m/stats", "/v2/models/m/config"):
            assert httpx.get(u + path, timeout=10).status_code == 401, path
        auth = {"Authorization": "Bearer k3y"}
        every = httpx.get(u + "/v2/models/stats", headers=auth, timeout=10)
        assert every.status_code == 200 and every.json() == {"model_stats": []}
        assert httpx.get(u + "/v2/models/m/config", headers=auth).status_code == 404
