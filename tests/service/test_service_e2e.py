"""End-to-end: the real ``mcdrop serve`` on 127.0.0.1, driven over real sockets."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.live_server import ServerProcess as Server
from helpers.live_server import metric, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # real servers start in seconds

KEY = "e2e-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "MCDROP_API_KEY": KEY,
        "MCDROP_MAX_QUEUE_SIZE": "8",
        "MCDROP_MAX_QUEUE_DELAY_MS": "20",
        "MCDROP_MAX_BODY_BYTES": "65536",
    }
    s = start_server(tiny_repo, env, log_path=tmp_path_factory.mktemp("e2e") / "server.log")
    yield s
    s.stop()


def _raw_http(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes (for bodies httpx would not send) and read status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) before reading everything: read the answer
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_every_route_over_http(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for path in ("/health/live", "/v2/health/live", "/v2"):
            assert c.get(path).status_code == 200, path
        for path in ("/health/ready", "/v2/health/ready"):  # strict: the broken folder
            assert c.get(path).status_code == 503, path
        assert "mcdrop_http_requests_total" in c.get("/metrics").text
        for path in ("/v1/models", "/v1/models/reg", "/v2/models/reg", "/v2/models/reg/ready"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=AUTH).status_code == 200, path
        r = c.post("/v1/models/clf/predict", json={"inputs": [ROW], "seed": 3}, headers=AUTH)
        assert r.status_code == 200 and r.json()["seed"] == 3
        tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}
        r = c.post("/v2/models/reg/infer", json={"inputs": [tensor]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["outputs"][0]["name"] == "mean"
        r = c.post(
            "/v1/models/reg/predict", content=b"{", headers={**AUTH, "Content-Type": "text/plain"}
        )
        assert r.status_code == 415


@pytest.mark.parametrize(
    ("body", "chunked", "status", "fragment"),
    [
        (b'{"inputs": [[1, 2, 3, 4]', False, 400, b"malformed JSON"),
        (b"[" * 40_000 + b"]" * 40_000, True, 413, b"larger than 65536"),
        (b'{"inputs": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", False, 400, b"nested deeper"),
        (b'{"inputs": [[NaN, 1, 2, 3]]}', False, 400, b"NaN is not valid JSON"),
        (b'{"inputs": [[1, 2, 3]]}', False, 422, b"expected rows of shape [4], got [3]"),
    ],
)
def test_bad_bodies_over_a_raw_socket(
    server: Server, body: bytes, chunked: bool, status: int, fragment: bytes
) -> None:
    head = (
        b"POST /v1/models/reg/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
    )
    if chunked:
        parts = [body[i : i + 16384] for i in range(0, len(body), 16384)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        request = head + b"Transfer-Encoding: chunked\r\n\r\n" + payload
    else:
        request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    got, resp = _raw_http(server.port, request)
    assert got == status, resp[:300]
    if b"\r\n" in resp and chunked:  # chunked response framing around the JSON
        resp = resp.split(b"\r\n")[1]
    assert fragment in resp and json.loads(resp)["error"]


def test_tritonclient_json_mode(server: Server) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def auth() -> dict[str, str]:  # tritonclient adds its own headers to the dict it is given
        return dict(AUTH)

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        # strict readiness: the repository's broken folder keeps the server not ready
        assert client.is_server_live() and not client.is_server_ready()
        assert client.is_model_ready("clf", headers=auth())
        assert not client.is_model_ready("broken", headers=auth())
        assert client.get_server_metadata()["name"] == "mcdrop"
        meta = client.get_model_metadata("clf", headers=auth())
        assert meta["inputs"][0]["shape"] == [-1, 4]
        x = np.array([ROW, [0, 0, 0, 0]], dtype=np.float32)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        outputs = [
            httpclient.InferRequestedOutput(n, binary_data=False)
            for n in ("probs", "mutual_information")
        ]
        res = client.infer(
            "clf", [inp], outputs=outputs, headers=auth(),
            parameters={"mc_samples": 20, "seed": 3},
        )  # fmt: skip
        probs = res.as_numpy("probs")
        assert probs.shape == (2, 3) and probs.dtype == np.float32
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert res.get_response()["parameters"] == {"mc_samples": 20, "seed": 3}
        v1 = httpx.post(
            server.url + "/v1/models/clf/predict", headers=auth(),
            json={"inputs": x.tolist(), "samples": 20, "seed": 3},
        ).json()  # fmt: skip
        assert np.allclose(probs, v1["probs"], atol=1e-6)
        assert np.allclose(res.as_numpy("mutual_information"), v1["mutual_information"], atol=1e-6)
        # Versioned route and default outputs.
        res = client.infer("reg", [inp], model_version="1", headers=auth(), outputs=None)
        assert res.as_numpy("mean").shape == (2, 1)
        # The binary extension (tritonclient's default) gives the JSON answer's numbers.
        binp = httpclient.InferInput("input", list(x.shape), "FP32")
        binp.set_data_from_numpy(x, binary_data=True)
        bres = client.infer(
            "clf", [binp], outputs=[httpclient.InferRequestedOutput("probs")], headers=auth(),
            parameters={"mc_samples": 20, "seed": 3},
        )  # fmt: skip
        assert np.array_equal(bres.as_numpy("probs"), probs)
        with pytest.raises(InferenceServerException, match="invalid API key"):
            client.infer("clf", [inp], headers={"Authorization": "Bearer wrong"})
    finally:
        client.close()


def test_seeded_answers_under_concurrent_load(server: Server) -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(32, 4)).round(4).tolist()

    def call(i: int) -> dict[str, Any]:
        payload = {"inputs": [rows[i]], "samples": 50, "seed": 10 + i}
        r = httpx.post(
            server.url + "/v1/models/clf/predict", json=payload, headers=AUTH, timeout=20
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def batch_stats() -> tuple[float, float]:
        text = httpx.get(server.url + "/metrics").text

        def get(stat: str) -> float:
            key = f'mcdrop_batch_requests_{stat}{{model="clf",version="1"}} '
            return float(text.split(key)[1].split()[0])

        return get("sum"), get("count")

    alone = [call(i) for i in range(32)]
    before = batch_stats()
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(call, range(32)))
    after = batch_stats()
    for a, b in zip(alone, loaded, strict=True):
        for key in ("probs", "variance", "predictive_entropy", "mutual_information"):
            assert np.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    requests, calls = after[0] - before[0], after[1] - before[1]
    assert requests == 32 and calls < 32  # some requests shared an engine call


def test_full_queue_gives_503_with_retry_after(server: Server) -> None:
    def call(_: int) -> httpx.Response:
        return httpx.post(
            server.url + "/v1/models/slow/predict", headers=AUTH, timeout=20,
            json={"inputs": [ROW], "samples": 2},
        )  # fmt: skip

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(call, range(20)))
    codes = [r.status_code for r in responses]
    assert 503 in codes and codes.count(200) >= 5, codes
    assert set(codes) <= {200, 503}
    full = next(r for r in responses if r.status_code == 503)
    assert full.headers["retry-after"] == "1" and "requests waiting" in full.json()["error"]


def test_sigterm_drains_in_flight_requests(server_factory: Any, tiny_repo: Path) -> None:
    s: Server = server_factory(tiny_repo, {"MCDROP_MAX_QUEUE_DELAY_MS": "0"})

    def call(_: int) -> httpx.Response:
        return httpx.post(
            s.url + "/v1/models/slow/predict", json={"inputs": [ROW], "samples": 2}, timeout=20
        )

    pool = ThreadPoolExecutor(4)
    try:
        futures = [pool.submit(call, i) for i in range(4)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until every request reached the server
            text = httpx.get(s.url + "/metrics").text
            if 'mcdrop_queue_depth{model="slow",version="1"} 3' in text:
                break
            time.sleep(0.02)
        s.proc.terminate()
        codes = [f.result(timeout=20).status_code for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert codes == [200, 200, 200, 200]
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -15.
    assert s.proc.wait(20) in (0, -signal.SIGTERM), s.log()
    assert "Application shutdown complete" in s.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health/live", timeout=2)


def test_smoke_default_models(server_factory: Any, default_or_tiny_repo: Path) -> None:
    """The repository's default models when they exist (else the tiny ones) serve answers."""
    s: Server = server_factory(default_or_tiny_repo)
    with httpx.Client(base_url=s.url, timeout=30) as c:
        models = c.get("/v1/models").json()["models"]
        assert models
        for m in models:
            dtype = np.int64 if m["input_dtype"] == "int64" else np.float64  # token ids
            x = np.zeros((2, *m["input_shape"]), dtype=dtype).tolist()
            r = c.post(f"/v1/models/{m['name']}/predict", json={"inputs": x, "samples": 4})
            assert r.status_code == 200, r.text
            assert np.isfinite(np.asarray(r.json()["mean"], dtype=float)).all()


def test_schemathesis_fuzzing_never_gets_a_5xx(server: Server) -> None:
    """Schema-driven fuzzing of v1 predict (bounded): every answer is JSON and below 500."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operation = schema["/v1/models/{name}/predict"]["POST"]

    @settings(
        max_examples=60, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        case.path_parameters = {"name": "reg"}
        response = case.call(base_url=server.url, headers=dict(AUTH), timeout=10)
        assert response.status_code < 500, response.text
        assert response.status_code == 200 or "error" in response.json()

    fuzz()


def test_workers_share_one_metrics_view_and_clean_up(
    server_factory: Any, tiny_repo: Path, tmp_path: Path
) -> None:
    """Under --workers every worker's /metrics shows the whole server (prometheus_client's
    multiprocess mode); the folder the launcher made for it is gone after exit."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    s: Server = server_factory(tiny_repo, {"MCDROP_WORKERS": "2", "TMPDIR": str(scratch)})
    assert [p.name for p in scratch.glob("mcdrop-metrics-*")], "no multiprocess folder"
    n = 12
    for i in range(n):  # new connections: uvicorn's workers share the socket
        # /health/ready answered from one worker: the other may still be loading (503).
        deadline = time.monotonic() + 60
        while True:
            r = httpx.post(s.url + "/v1/models/reg/predict",
                           json={"inputs": [ROW], "samples": 2, "seed": i}, timeout=20)  # fmt: skip
            if r.status_code != 503 or "loading" not in r.text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
    name = 'mcdrop_predictions_total{model="reg",outcome="ok",version="1"}'
    lab = '{model="reg",version="1"}'
    for _ in range(6):  # whichever worker answers, it reports both workers' requests
        assert metric(s.url, name) == n
        assert metric(s.url, 'mcdrop_model_ready{model="reg",version="1"}') == 1
        # Triton's names and the statistics extension add up the same way.
        assert metric(s.url, "nv_inference_request_success" + lab) == n
        assert metric(s.url, "nv_inference_count" + lab) == n  # one row each
        st = httpx.get(s.url + "/v2/models/reg/stats", timeout=10).json()["model_stats"][0]
        assert st["inference_count"] == n and st["inference_stats"]["success"]["count"] == n
    # Process metrics: one series per live worker, told apart by pid.
    text = httpx.get(s.url + "/metrics", timeout=10).text
    rss = [ln for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes{")]
    assert len({ln.split('pid="')[1].split('"')[0] for ln in rss}) == 2, rss
    assert all(float(ln.rsplit(" ", 1)[1]) > 0 for ln in rss)
    s.stop()
    assert not list(scratch.glob("mcdrop-metrics-*"))
