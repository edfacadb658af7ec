"""KServe's Python SDK in its default modes against the real server on loopback.

``InferenceRESTClient`` (protocol v2) and ``InferenceGRPCClient`` send binary tensors by
default; their answers must be the numbers of JSON ``/v2`` for the same seed, to float32
rounding, and bad input must come back as the SDK's own errors with a 4xx status or
INVALID_ARGUMENT / NOT_FOUND, never a 5xx or UNKNOWN. The SDK lives in its
own venv and runs in a subprocess (``tests/helpers/kserve_env.py`` says why).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.kserve_env import kserve_python
from helpers.live_server import free_port, live_server
from helpers.tolerance import assert_close_f32
from svc_helpers import make_settings

PROBE = Path(__file__).with_name("kserve_probe.py")
X = np.array([[0.5, -1.0, 2.0, 0.25], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.5]],
             dtype=np.float32)  # fmt: skip
PARAMS = {"mc_samples": 16, "seed": 11}


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC address) of one server on loopback. The tiny repository has a
    broken folder on purpose, so readiness is lenient here (strict has its own tests)."""
    port = free_port()
    settings = make_settings(tiny_repo, grpc_port=port, strict_readiness=False)
    with live_server(settings=settings) as base:
        yield base, f"127.0.0.1:{port}"


def _tensor() -> dict[str, Any]:
    return {"name": "input", "shape": list(X.shape), "datatype": "FP32",
            "data": X.ravel().tolist()}  # fmt: skip


def _json_v2(base: str, model: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
    r = httpx.post(f"{base}/v2/models/{model}/infer",
                   json={"inputs": [_tensor()], "parameters": params}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
            for o in r.json()["outputs"]}  # fmt: skip


def run_probe(job: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Run the KServe clients on ``job`` (see kserve_probe.py); their JSON answer."""
    proc = subprocess.run([str(kserve_python()), str(PROBE)], input=json.dumps(job),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _check_answers(url: str, answers: list[Any], models: tuple[str, ...], what: str) -> None:
    for model, answer in zip(models, answers, strict=True):
        want = _json_v2(url, model, PARAMS)
        assert "error" not in answer, answer
        assert set(answer) == set(want), f"{what} {model}: {sorted(answer)}"
        for name, expected in want.items():
            o = answer[name]
            assert o["datatype"] == "FP32" and o["shape"] == list(expected.shape)
            arr = np.asarray(o["data"], np.float32).reshape(o["shape"])
            assert_close_f32(arr, expected, what=f"{what} {model}.{name}")
        if model == "clf":  # MC sampling really happened: the dropout spread is not zero
            assert float(want["mutual_information"].max()) > 0.0


@pytest.mark.slow  # the SDK alone takes seconds to import
def test_kserve_rest_and_grpc_clients_default_modes(server: tuple[str, str]) -> None:
    url, grpc_addr = server
    models = ("clf", "reg")
    good = [{"model": m, "inputs": [_tensor()], "parameters": PARAMS} for m in models]
    bad = [{"model": "clf", "inputs": [_tensor()], "parameters": {**PARAMS, "mc_samples": 0}},
           {"model": "nope", "inputs": [_tensor()], "parameters": PARAMS}]  # fmt: skip
    got = run_probe({"rest": url, "grpc": grpc_addr, "requests": good + bad})
    assert got["rest_ready"] is True and got["grpc_ready"] is True
    _check_answers(url, got["rest"][:2], models, "rest")
    _check_answers(url, got["grpc"][:2], models, "grpc")
    # Bad input through the same clients: the SDK raises with the server's status.
    bad_samples, unknown = got["rest"][2:]
    assert "HTTPStatusError" in bad_samples["error"], bad_samples
    assert any(code in bad_samples["error"] for code in ("400", "422")), bad_samples
    assert "404" in unknown["error"] and "nope" in unknown["error"], unknown
    bad_samples, unknown = got["grpc"][2:]
    assert bad_samples.get("code") == "INVALID_ARGUMENT", bad_samples
    assert unknown.get("code") == "NOT_FOUND", unknown
