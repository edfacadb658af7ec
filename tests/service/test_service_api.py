"""Routes, validation and limits of the app, in-process (httpx.ASGITransport + lifespan)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.live_server import app_client
from hypothesis import given, settings
from hypothesis import strategies as st
from svc_helpers import make_settings, write_tiny_repo

pytestmark = pytest.mark.anyio

ROW = [0.5, -1.0, 2.0, 0.25]


@pytest.fixture(scope="module")
async def client(tiny_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(tiny_repo)) as c:
        yield c


def _error(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    for frag in fragments:
        assert frag in body["error"], body["error"]
    return str(body["error"])


# ------------------------------------------------------------------------------ routes


async def test_health_and_server_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "live"}
    # strict readiness (the default): the broken folder keeps the server not ready
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not ready" and body["models"] == ["clf", "reg", "slow"]
    assert "weights.safetensors" in body["failures"]["broken"] and body["loading"] == []
    assert (await client.get("/v2/health/live")).status_code == 200
    v2_ready = await client.get("/v2/health/ready")
    assert v2_ready.status_code == 503 and v2_ready.json() == {"ready": False}
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "mcdrop" and "binary_tensor_data" in meta["extensions"]


async def test_model_listing_and_info(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    assert [m["name"] for m in listing["models"]] == ["clf", "reg", "slow"]
    assert "broken" in listing["failures"]
    info = (await client.get("/v1/models/clf")).json()
    assert info["task"] == "classification" and info["input_shape"] == [4]
    assert info["output_names"] == ["a", "b", "c"] and info["ready"] is True
    _error(await client.get("/v1/models/nope"), 404, "no model named 'nope'", "clf, reg, slow")
    _error(await client.get("/v1/models/broken"), 503, "failed to load")
    v2 = (await client.get("/v2/models/clf")).json()
    assert v2["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    names = [o["name"] for o in v2["outputs"]]
    assert names[:4] == ["mean", "variance", "std", "stderr"] and "mutual_information" in names
    assert (await client.get("/v2/models/clf/versions/1")).status_code == 200
    _error(await client.get("/v2/models/clf/versions/9"), 404, "no version '9'")
    assert (await client.get("/v2/models/reg/ready")).json() == {"name": "reg", "ready": True}
    assert (await client.get("/v2/models/reg/versions/1/ready")).status_code == 200
    _error(await client.get("/v2/models/broken/ready"), 503, "failed to load")
    _error(await client.get("/v2/models/nope/ready"), 404)


async def test_v1_regression_prediction(client: httpx.AsyncClient) -> None:
    payload = {"inputs": [ROW, [0, 0, 0, 0]], "samples": 50, "seed": 7}
    a = await client.post("/v1/models/reg/predict", json=payload)
    assert a.status_code == 200, a.text
    body = a.json()
    assert body["model"] == "reg" and body["samples"] == 50 and body["seed"] == 7
    for key in ("mean", "variance", "std", "stderr", "epistemic_variance", "aleatoric_variance"):
        assert np.asarray(body[key]).shape == (2, 1), key
    assert "probs" not in body
    var = np.asarray(body["variance"])
    assert np.all(var >= 0.25)  # 1/tau with tau = 4 is added to the sample variance
    assert np.allclose(np.asarray(body["std"]) ** 2, var)
    again = await client.post("/v1/models/reg/predict", json=payload)
    assert again.json() == body  # same seed, same numbers


async def test_v1_seed_is_reported_when_random(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/reg/predict", json={"inputs": [ROW]})
    body = r.json()
    assert isinstance(body["seed"], int) and body["samples"] == 16  # the model's default
    replay = await client.post(
        "/v1/models/reg/predict", json={"inputs": [ROW], "seed": body["seed"]}
    )
    assert replay.json()["mean"] == body["mean"]


async def test_v1_classification_prediction(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/clf/predict", json={"inputs": [ROW, ROW], "seed": 1})
    body = r.json()
    probs = np.asarray(body["probs"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1)
    assert body["mean"] == body["probs"]
    for key in ("predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio"):
        assert np.asarray(body[key]).shape == (2,), key
    assert np.all(np.asarray(body["mutual_information"]) >= 0)


async def test_v2_infer(client: httpx.AsyncClient) -> None:
    req = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": ROW + [0, 0, 0, 0]}],
        "parameters": {"mc_samples": 30, "seed": 5},
    }
    r = await client.post("/v2/models/clf/infer", content=json.dumps(req))  # no Content-Type
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "r1" and body["parameters"] == {"mc_samples": 30, "seed": 5}
    out = {o["name"]: o for o in body["outputs"]}
    assert out["probs"]["shape"] == [2, 3] and out["probs"]["datatype"] == "FP32"
    assert out["mutual_information"]["shape"] == [2]
    v1 = (
        await client.post(
            "/v1/models/clf/predict", json={"inputs": [ROW, [0, 0, 0, 0]], "samples": 30, "seed": 5}
        )
    ).json()
    assert np.allclose(np.asarray(out["probs"]["data"]).reshape(2, 3), v1["probs"], atol=1e-6)
    # Nested data, a chosen output, binary_data=false parameters (what tritonclient sends).
    req2 = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [ROW]}],
        "outputs": [{"name": "variance", "parameters": {"binary_data": False}}],
        "parameters": {"seed": 5},
    }
    body2 = (await client.post("/v2/models/reg/versions/1/infer", json=req2)).json()
    assert [o["name"] for o in body2["outputs"]] == ["variance"]
    assert body2["parameters"]["mc_samples"] == 16


# ------------------------------------------------------------------------------ bad input

BIG = 1e39  # finite as float64, overflows float32


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b'{"inputs": [[1, 2, 3, 4]', 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b'{"inputs": [[NaN, 1, 2, 3]]}', 400, "NaN is not valid JSON"),
        (b'{"inputs": [[Infinity, 1, 2, 3]]}', 400, "Infinity is not valid JSON"),
        (b'{"inputs": [[-Infinity, 1, 2, 3]]}', 400, "-Infinity is not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, 400, "nested deeper than 100"),
        (b'{"inputs": ' + b"[" * 150 + b"]" * 150 + b"}", 400, "nested deeper than 100"),
        (b'{"inputs": [[1e999, 1, 2, 3]]}', 422, "not finite as float32"),
        (json.dumps({"inputs": [[BIG, 1, 2, 3]]}).encode(), 422, "not finite as float32"),
        (b'{"inputs": [[false, 1, 2, 3]]}', 422, "inputs[0][0] must be a number"),
        (b'{"inputs": [["1.5", 1, 2, 3]]}', 422, "got a string"),
        (b'{"inputs": [[null, 1, 2, 3]]}', 422, "got null"),
        (b'{"inputs": [[1, 2, 3]]}', 422, "expected rows of shape [4], got [3]"),
        (b'{"inputs": [[1, 2, 3, 4], [1, 2]]}', 422, "got [2] at inputs[1]"),
        (b'{"inputs": [[[1, 2, 3, 4]]]}', 422, "got a list"),
        (b'{"inputs": [1, 2, 3, 4]}', 422, "wrap a single row"),
        (b'{"inputs": []}', 422, "inputs is empty"),
        (json.dumps({"inputs": [ROW] * 9}).encode(), 422, "too many rows: 9"),
        (b'{"samples": 5}', 422, "inputs is required"),
        (b'{"inputs": [[1, 2, 3, 4]], "sample": 5}', 422, "sample is not a known field"),
        (b"[[1, 2, 3, 4]]", 422, "must be a JSON object"),
        (b'{"inputs": [[1, 2, 3, 4]], "samples": false}', 422, "samples"),
        (b'{"inputs": [[1, 2, 3, 4]], "samples": "5"}', 422, "samples"),
        (b'{"inputs": [[1, 2, 3, 4]], "samples": 2.5}', 422, "samples"),
        (b'{"inputs": [[1, 2, 3, 4]], "samples": 0}', 422, "between 1 and 200"),
        (b'{"inputs": [[1, 2, 3, 4]], "samples": 201}', 422, "between 1 and 200"),
        (b'{"inputs": [[1, 2, 3, 4]], "seed": -1}', 422, "seed"),
        (b'{"inputs": [[1, 2, 3, 4]], "seed": 9223372036854775808}', 422, "seed"),
        (b'{"inputs": [[1, 2, 3, 4]], "seed": true}', 422, "seed"),
        (b'{"inputs": [[100, 1, 2, 3]]}', 422, "unusable output"),
        (b"\xff\xfe\xfd", 400, ""),
    ],
)
async def test_v1_bad_input_is_a_4xx_with_a_message(
    client: httpx.AsyncClient, raw: bytes, status: int, fragment: str
) -> None:
    r = await client.post(
        "/v1/models/reg/predict", content=raw, headers={"Content-Type": "application/json"}
    )
    msg = _error(r, status, fragment)
    assert "Traceback" not in msg and 'File "' not in msg


async def test_v1_content_type_and_size_limits(client: httpx.AsyncClient) -> None:
    ok = json.dumps({"inputs": [ROW]})
    _error(
        await client.post(
            "/v1/models/reg/predict", content=ok, headers={"Content-Type": "text/plain"}
        ),
        415,
        "application/json",
    )
    r = await client.post(
        "/v1/models/reg/predict",
        content=ok,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200
    big = json.dumps({"inputs": [ROW] * 5000}).encode()  # > 64 KiB
    _error(await client.post("/v1/models/reg/predict", content=big), 413, "larger than 65536")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    _error(
        await client.post("/v1/models/reg/predict", content=chunks()), 413, "MCDROP_MAX_BODY_BYTES"
    )


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    _error(await client.get("/nope"), 404, "no route GET /nope")
    _error(await client.post("/health/live"), 405, "not allowed")
    _error(await client.post("/v1/models/nope/predict", json={"inputs": [ROW]}), 404)
    _error(await client.post("/v1/models/broken/predict", json={"inputs": [ROW]}), 503, "failed")


async def test_model_exception_is_a_generic_500_and_the_worker_survives(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/v1/models/slow/predict", json={"inputs": [[13, 13, 13, 13]], "samples": 2}
    )
    msg = _error(r, 500, "internal server error")
    assert "secret" not in msg and "deadbeef" not in r.text
    ok = await client.post("/v1/models/slow/predict", json={"inputs": [ROW], "samples": 2})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"datatype": "BYTES"}, 422, "datatype 'BYTES'"),
        ({"datatype": "INT64"}, 422, "takes FP32"),
        ({"shape": [1, 3]}, 422, "expects [-1, 4]"),
        ({"shape": [0, 4], "data": []}, 422, "is empty"),
        ({"data": [1, 2, 3]}, 422, "has 3 values but shape [1, 4] needs 4"),
        ({"data": [1, 2, True, 4]}, 422, "data[2] must be a number, got a boolean"),
        ({"data": None}, 422, "has no data"),
        ({"parameters": {"binary_data_size": 16}}, 400, "Inference-Header-Content-Length"),
        ({"shape": [9, 4], "data": ROW * 9}, 422, "too many rows"),
    ],
)
async def test_v2_bad_input(
    client: httpx.AsyncClient, change: dict[str, Any], status: int, fragment: str
) -> None:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}
    tensor.update(change)
    _error(await client.post("/v2/models/reg/infer", json={"inputs": [tensor]}), status, fragment)


async def test_v2_bad_requests(client: httpx.AsyncClient) -> None:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}
    url = "/v2/models/reg/infer"
    _error(await client.post(url, json={"inputs": [tensor, tensor]}), 422, "exactly one input")
    _error(
        await client.post(url, json={"inputs": [tensor], "parameters": {"mc_samples": "5"}}),
        422,
        "mc_samples must be an integer",
    )
    _error(
        await client.post(url, json={"inputs": [tensor], "parameters": {"mc_samples": 0}}),
        422,
        "between 1 and 200",
    )
    _error(
        await client.post(url, json={"inputs": [tensor], "parameters": {"seed": 1.5}}),
        422,
        "seed must be an integer",
    )
    _error(
        await client.post(url, json={"inputs": [tensor], "outputs": [{"name": "probs"}]}),
        422,
        "unknown output 'probs'",
    )
    _error(await client.post(url, json={"inputs": "x"}), 422, "inputs")
    _error(await client.post(url, json={}), 422, "inputs is required")
    _error(await client.post(url, content=b"{", headers={}), 400, "malformed JSON")
    binary = {"Inference-Header-Content-Length": "2", "Content-Type": "application/octet-stream"}
    _error(await client.post(url, content=b"{}" + b"\0" * 16, headers=binary), 400, "add up")
    # v2 reads JSON whatever the Content-Type says (v1 stays strict: 415).
    csv = {"Content-Type": "text/csv"}
    _error(await client.post(url, content=b"{}", headers=csv), 422, "inputs is required")
    _error(await client.post("/v1/models/reg/predict", content=b"{}", headers=csv), 415)
    _error(await client.post("/v2/models/reg/versions/2/infer", json={"inputs": [tensor]}), 404)


# ------------------------------------------------------------------------------ observability


async def test_metrics_and_access_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mcdrop.access"):
        await client.post("/v1/models/reg/predict", json={"inputs": [ROW], "samples": 10})
        await client.get("/v1/models/nope")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcdrop.access"]
    assert lines[-2]["route"] == "/v1/models/{name}/predict" and lines[-2]["status"] == 200
    assert lines[-1]["path"] == "/v1/models/nope" and lines[-1]["status"] == 404
    assert {"ts", "method", "duration_ms", "bytes", "client"} <= set(lines[-1])
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for name in (
        # prometheus_client writes labels sorted by name
        'mcdrop_http_requests_total{method="POST",route="/v1/models/{name}/predict",status="200"}',
        "mcdrop_http_request_duration_seconds_bucket",
        'mcdrop_queue_wait_seconds_count{model="reg",version="1"}',
        'mcdrop_batch_compute_seconds_sum{model="reg",version="1"}',
        'mcdrop_batch_rows_bucket{le="1.0",model="reg",version="1"}',  # sorted labels, float bounds
        'mcdrop_queue_depth{model="reg",version="1"} 0.0',
        'mcdrop_mc_samples_total{model="reg",version="1"}',
        'mcdrop_model_ready{model="clf",version="1"} 1.0',
        'mcdrop_predictions_total{model="reg",outcome="ok",version="1"}',
    ):
        assert name in text, name
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            assert not math.isnan(float(line.rsplit(" ", 1)[1])), line


async def test_prediction_routes_are_dispatched_directly_and_others_fall_through(
    client: httpx.AsyncClient,
) -> None:
    # service/direct.py takes POST predict/infer before the router; its table must be the
    # served (OpenAPI) paths of those routes, and whatever it does not take reaches the app.
    from fastapi.routing import APIRoute

    from service.direct import DirectRoutes

    app = client.app  # type: ignore[attr-defined]
    layer = next(m for m in app.user_middleware if m.cls is DirectRoutes)
    direct = {r.path for r in layer.kwargs["routes"] if isinstance(r, APIRoute)}
    served = {p for p in app.openapi()["paths"] if p.endswith(("/predict", "/infer"))}
    assert direct == served and len(direct) == 3
    # Taken directly: the handler runs, with the same answers and errors as through FastAPI.
    ok = await client.post("/v2/models/reg/versions/1/infer", json={"inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert {o["name"] for o in ok.json()["outputs"]} >= {"mean", "variance"}
    _error(await client.post("/v1/models/nope/predict", json={"inputs": [ROW]}), 404, "nope")
    _error(await client.post("/v1/models/reg/predict", content=b"{"), 400, "malformed JSON")
    # Not taken: other methods on the same path, and paths it does not know.
    _error(await client.get("/v1/models/reg/predict"), 405, "not allowed")
    _error(await client.post("/v1/models/reg/predict/extra", json={}), 404, "no route")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text() | st.integers(2**63, 10**30) | st.integers(-(10**30), -(2**63)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=_JSON)
def test_parse_json_reads_bodies_as_the_standard_parser_does(value: Any) -> None:
    # parse_json takes orjson's fast path when it can; the result must be what json.loads
    # gives (integers beyond 64 bits kept exact, not turned into floats).
    from service.body import parse_json

    body = json.dumps(value).encode()
    assert parse_json(body, 1000) == json.loads(body)


async def test_an_integer_too_long_to_convert_is_a_400(client: httpx.AsyncClient) -> None:
    # Python refuses integer literals over 4,300 digits (ValueError from json.loads).
    body = b'{"inputs": [[' + b"9" * 5000 + b", 1, 2, 3]]}"
    r = await client.post("/v1/models/reg/predict", content=body,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "too long" in r.json()["error"], r.text


# ------------------------------------------------------------------------------ batching


async def test_seeded_answers_do_not_depend_on_concurrent_load(tiny_repo: Path) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(24, 4)).round(3).tolist()
    settings = make_settings(tiny_repo, max_queue_delay_ms=30.0, max_queue_size=64)
    async with app_client(settings) as c:

        def payload(i: int) -> dict[str, Any]:
            return {"inputs": [rows[i]], "samples": 40, "seed": 1000 + i}

        alone = [
            (await c.post("/v1/models/clf/predict", json=payload(i))).json() for i in range(24)
        ]
        loaded = await asyncio.gather(
            *(c.post("/v1/models/clf/predict", json=payload(i)) for i in range(24))
        )
        for a, b in zip(alone, loaded, strict=True):
            assert b.status_code == 200
            for key in ("probs", "variance", "mutual_information"):
                assert np.allclose(a[key], b.json()[key], rtol=0, atol=1e-6), key
        m = c.app.state.metrics  # type: ignore[attr-defined]
        # 48 requests in fewer engine calls: the concurrent ones were batched together.
        calls = m.value("mcdrop_batch_requests_count", model="clf", version="1")
        assert m.value("mcdrop_batch_requests_sum", model="clf", version="1") == 48
        assert calls < 48 - 5


@pytest.mark.parametrize("share", [True, False])
async def test_unseeded_batched_requests_share_draws_unless_told_not_to(
    tiny_repo: Path, share: bool
) -> None:
    # MCDROP_SHARE_UNSEEDED (default on): unseeded requests batched together run as the
    # rows of one request, so they report one seed, and that seed alone reproduces each
    # answer. Off: every request draws its own seed.
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(12, 4)).round(3).tolist()
    settings = make_settings(tiny_repo, max_queue_delay_ms=50.0, max_queue_size=64,
                             share_unseeded=share)  # fmt: skip
    async with app_client(settings) as c:
        answers = await asyncio.gather(
            *(c.post("/v1/models/clf/predict", json={"inputs": [r], "samples": 40}) for r in rows)
        )
        bodies = [a.json() for a in answers]
        assert all(a.status_code == 200 for a in answers)
        m = c.app.state.metrics  # type: ignore[attr-defined]
        # some were batched
        assert m.value("mcdrop_batch_requests_count", model="clf", version="1") < 12
        seeds = [b["seed"] for b in bodies]
        if share:
            assert len(set(seeds)) < 12
        else:
            assert len(set(seeds)) == 12
        for r, b in zip(rows, bodies, strict=True):
            again = await c.post(
                "/v1/models/clf/predict", json={"inputs": [r], "samples": 40, "seed": b["seed"]}
            )
            assert np.allclose(again.json()["probs"], b["probs"], rtol=0, atol=1e-6)


def test_batch_answers_fail_only_the_request_whose_statistics_are_not_finite(
    tiny_repo: Path,
) -> None:
    # ModelRuntime.answers converts a whole batch at once and splits it per request; a
    # statistic that is not finite (finite outputs whose variance overflowed, say) fails
    # that request alone, and every other request gets exactly its own rows.
    import torch

    from mcdrop.errors import ModelOutputError
    from mcdrop.repository import load_model
    from service.metrics import ServiceMetrics
    from service.runtime import Answer, ModelRuntime

    rt = ModelRuntime(load_model(tiny_repo / "reg"), make_settings(tiny_repo), ServiceMetrics())
    pred = rt.loaded.predictor()
    g = torch.Generator().manual_seed(5)
    preds = [pred.predict(torch.randn(b, 4, generator=g), samples=8) for b in (2, 1, 3)]
    preds[1].variance = preds[1].variance.clone()
    preds[1].variance[0, 0] = float("inf")
    out = rt.answers(preds)
    assert isinstance(out[1], ModelOutputError) and "'variance' is not finite" in str(out[1])
    for p, a in ((preds[0], out[0]), (preds[2], out[2])):
        assert isinstance(a, Answer) and (a.samples, a.seed) == (p.samples, p.seed)
        assert set(a.arrays) == {name for name in rt.output_fields()}
        for name, arr in a.arrays.items():
            assert arr.flags.c_contiguous
            assert np.array_equal(arr, getattr(p, name).numpy()), name
    with pytest.raises(ModelOutputError):
        rt.answer(preds[1])


async def test_full_queue_answers_503_with_retry_after(client: httpx.AsyncClient) -> None:
    payload = {"inputs": [ROW], "samples": 2}
    rs = await asyncio.gather(
        *(client.post("/v1/models/slow/predict", json=payload) for _ in range(10))
    )
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 4 and 503 in codes, codes
    full = next(r for r in rs if r.status_code == 503)
    assert full.headers["retry-after"] == "1"
    _error(full, 503, "requests waiting")


@pytest.mark.slow  # about 10 s here: the queue is filled and drained for real
async def test_full_queue_refuses_before_reading_the_body(tmp_path: Path) -> None:
    # While the queue is full, a request is refused before its body is parsed: even a
    # malformed body gets the 503 (parsing it would be wasted work past saturation).
    repo = write_tiny_repo(tmp_path / "repo", slow_delay=1.0, broken=False)
    async with app_client(make_settings(repo, request_timeout_s=30.0)) as client:
        payload = {"inputs": [ROW], "samples": 2}

        def post() -> asyncio.Future[httpx.Response]:
            return asyncio.ensure_future(client.post("/v1/models/slow/predict", json=payload))

        batcher = client.app.state.plane.models["slow"].batcher  # type: ignore[attr-defined]
        busy = [post()]
        await asyncio.sleep(0.3)  # the worker takes it and sleeps 1 s in the model
        busy += [post() for _ in range(4)]
        for _ in range(100):  # until the 4 wait in the queue (its limit); <= 1 s
            if batcher.depth >= batcher.max_queue_size:
                break
            await asyncio.sleep(0.01)
        assert batcher.depth == batcher.max_queue_size == 4
        bad = {"content": b"{not json", "headers": {"content-type": "application/json"}}
        for path in ("/v1/models/slow/predict", "/v2/models/slow/infer"):
            _error(await client.post(path, **bad), 503, "requests waiting")  # type: ignore[arg-type]
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * 5
        r = await client.post("/v1/models/slow/predict", **bad)  # type: ignore[arg-type]
        assert r.status_code == 400  # with room again, the body is read and judged


async def test_request_timeout_is_504(tiny_repo: Path) -> None:
    async with app_client(make_settings(tiny_repo, request_timeout_s=0.1)) as c:
        payload = {"inputs": [ROW], "samples": 2}
        rs = await asyncio.gather(
            *(c.post("/v1/models/slow/predict", json=payload) for _ in range(3))
        )
        assert 504 in [r.status_code for r in rs]
        _error(next(r for r in rs if r.status_code == 504), 504, "did not answer within 0.1 s")
        await asyncio.sleep(0.5)
        assert c.app.state.plane.models["slow"].batcher.depth == 0  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ security


async def test_api_key_guards_model_routes_only(tiny_repo: Path) -> None:
    # lenient readiness, so that /health/ready is 200 despite the broken folder
    settings = make_settings(tiny_repo, api_key="s3cret", strict_readiness=False)
    async with app_client(settings) as c:
        for path in ("/v1/models", "/v1/models/reg", "/v2/models/reg", "/v2/models/reg/ready"):
            r = await c.get(path)
            _error(r, 401, "Authorization: Bearer")
            assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer nope"}
        _error(await c.post("/v1/models/reg/predict", json={"inputs": [ROW]}, headers=wrong), 401)
        _error(await c.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert (
            await c.post("/v1/models/reg/predict", json={"inputs": [ROW]}, headers=good)
        ).status_code == 200
        tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}
        assert (
            await c.post("/v2/models/reg/infer", json={"inputs": [tensor]}, headers=good)
        ).status_code == 200
        for path in ("/health/live", "/health/ready", "/metrics", "/v2/health/ready", "/v2"):
            assert (await c.get(path)).status_code == 200, path


async def test_cors_is_off_by_default_and_on_when_configured(
    client: httpx.AsyncClient, tiny_repo: Path
) -> None:
    pre = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    r = await client.options("/v1/models/reg/predict", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    async with app_client(make_settings(tiny_repo, cors_origins=("https://ui.example",))) as c:
        r = await c.options("/v1/models/reg/predict", headers=pre)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await c.get("/health/live", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
