"""gRPC (inference.GRPCInferenceService) end to end: the real server (uvicorn with the
gRPC server in its event loop) on 127.0.0.1 and the real ``tritonclient.grpc`` clients
(sync and aio) in their default modes.

One server for the module (a small body limit, strict readiness off so that the broken
model can be asked for, explicit model control); the API key is tested in
test_grpc_drain.py, whose server has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import queue
import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from docs.doctools import examples, output_problems
from helpers.live_server import ROOT, free_port, live_server, metric
from helpers.token_repo import make_token_repo
from svc_helpers import FEATURES, write_tiny_repo
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.settings import Settings

pytestmark = pytest.mark.e2e

BODY_LIMIT = 64 * 1024
X = (np.arange(3 * FEATURES, dtype=np.float32).reshape(3, FEATURES) - 5) / 7  # (B, F)


class Server:
    """The module's server: its HTTP URL, its gRPC address and a sync client."""

    def __init__(self, url: str, grpc_port: int) -> None:
        self.url = url
        self.address = f"127.0.0.1:{grpc_port}"
        self.client = tg.InferenceServerClient(self.address)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """uvicorn with gRPC in its loop, in a thread of this process (the subprocess form,
    ``mcdrop serve``, is test_grpc_drain.py's)."""
    root = tmp_path_factory.mktemp("grpc")
    repo = write_tiny_repo(root / "repo")  # reg, clf, slow, broken
    (root / "tok").mkdir()
    shutil.copytree(make_token_repo(root / "tok") / "tokens", repo / "tokens")  # int64 ids
    shutil.copytree(ROOT / "models" / "toy1d", repo / "toy1d")  # docs/grpc.md's model
    port = free_port()
    settings = Settings(models_dir=repo, grpc_port=port, max_body_bytes=BODY_LIMIT,
                        strict_readiness=False, model_control="explicit",
                        log_level="warning")  # fmt: skip
    with live_server(settings=settings) as url:
        s = Server(url, port)
        try:
            yield s
        finally:
            s.client.close()


def _input(x: np.ndarray, datatype: str = "FP32") -> tg.InferInput:
    i = tg.InferInput("input", list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return i


def _http_outputs(s: Server, model: str, x: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}], "parameters": params}  # fmt: skip
    r = httpx.post(f"{s.url}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


def _status(fn: Any) -> tuple[grpc.StatusCode, str]:
    """The status and message of the tritonclient error ``fn()`` raises."""
    with pytest.raises(tg.InferenceServerException) as info:
        fn()
    name = str(info.value.status()).removeprefix("StatusCode.")  # tritonclient gives text
    return grpc.StatusCode[name], str(info.value.message())


# ---------------------------------------------------------------------------- metadata


def test_health_and_metadata(server: Server) -> None:
    c = server.client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("reg")
    assert not c.is_model_ready("broken")  # failed to load: not ready
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "mcdrop" and "model_repository" in meta["extensions"]
    http = httpx.get(f"{server.url}/v2/models/clf").json()
    model = c.get_model_metadata("clf", as_json=True)
    assert model["name"] == "clf" and model["platform"] == http["platform"]
    assert model["versions"] == http["versions"] == ["1"]
    for key in ("inputs", "outputs"):
        got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in model[key]]
        assert got == [(t["name"], t["datatype"], t["shape"]) for t in http[key]]


def test_model_config_and_statistics_as_http(server: Server) -> None:
    c = server.client
    config = c.get_model_config("clf", as_json=True)["config"]
    http = httpx.get(f"{server.url}/v2/models/clf/config").json()
    assert config["name"] == http["name"] == "clf" and config["platform"] == http["platform"]
    assert config["max_batch_size"] == http["max_batch_size"] > 0
    for key in ("input", "output"):
        got = [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config[key]]
        assert got == [(t["name"], t["data_type"], t["dims"]) for t in http[key]]
    c.infer("clf", [_input(X)])  # at least one request counted
    http = httpx.get(f"{server.url}/v2/models/clf/stats").json()["model_stats"]
    stats = c.get_inference_statistics("clf", as_json=True)["model_stats"]
    assert [s["name"] for s in stats] == [s["name"] for s in http] == ["clf"]
    want, got = http[0], stats[0]
    assert int(got["inference_count"]) == want["inference_count"] >= 3
    assert int(got["execution_count"]) == want["execution_count"] >= 1
    for part in ("success", "queue", "compute_infer"):
        assert int(got["inference_stats"][part]["count"]) == want["inference_stats"][part]["count"]
    every = c.get_inference_statistics("", as_json=True)["model_stats"]
    assert {"reg", "clf", "tokens"} <= {s["name"] for s in every}
    status, _ = _status(lambda: c.get_model_config("nope"))
    assert status == grpc.StatusCode.NOT_FOUND


def test_repository_index_unload_and_load(server: Server) -> None:
    c = server.client
    index = c.get_model_repository_index(as_json=True)["models"]
    http = httpx.post(f"{server.url}/v2/repository/index", json={}).json()
    assert [(m["name"], m.get("state", "")) for m in index] == [
        (m["name"], m["state"]) for m in http
    ]
    assert {m["name"] for m in index if m.get("state") == "READY"} >= {"reg", "clf", "tokens"}
    assert "broken" in {m["name"] for m in index}
    c.unload_model("clf")
    status, _ = _status(lambda: c.infer("clf", [_input(X)]))
    assert status == grpc.StatusCode.NOT_FOUND
    ready = c.get_model_repository_index(as_json=True)["models"]
    assert "clf" not in {m["name"] for m in ready if m.get("state") == "READY"}
    c.load_model("clf")
    assert c.infer("clf", [_input(X)]).as_numpy("probs").shape == (3, 3)
    status, _ = _status(lambda: c.load_model("clf", config="{}"))
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    status, _ = _status(lambda: c.unload_model("nope"))
    assert status == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------- inference


@pytest.mark.parametrize("model", ["reg", "clf"])
def test_raw_infer_equals_json_v2_for_the_same_seed(server: Server, model: str) -> None:
    params = {"mc_samples": 24, "seed": 11}
    r = server.client.infer(model, [_input(X)], parameters=params)
    want = _http_outputs(server, model, X, params)
    resp = r.get_response()
    assert resp.model_name == model and resp.parameters["seed"].int64_param == 11
    assert resp.parameters["mc_samples"].int64_param == 24
    assert {o.name for o in resp.outputs} == set(want)
    for name, arr in want.items():
        got = r.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == arr.shape
        np.testing.assert_allclose(got, arr, rtol=1e-6, atol=1e-6)


def test_typed_contents_and_other_float_types(server: Server) -> None:
    """Typed contents (tritonclient's own stub and messages) and FP64 / FP16 raw inputs
    give the FP32 raw answer: the same values reach the model."""
    params = {"mc_samples": 16, "seed": 5}
    base = server.client.infer("reg", [_input(X)], parameters=params)
    req = service_pb2.ModelInferRequest(model_name="reg", id="typed-1")
    req.parameters["mc_samples"].int64_param = 16
    req.parameters["seed"].uint64_param = 5
    t = req.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    t.contents.fp32_contents.extend(X.ravel().tolist())
    req.outputs.add(name="mean")
    with grpc.insecure_channel(server.address) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
    assert resp.id == "typed-1" and [o.name for o in resp.outputs] == ["mean"]
    mean = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(3, 1)
    np.testing.assert_array_equal(mean, base.as_numpy("mean"))
    x64 = server.client.infer("reg", [_input(X.astype(np.float64), "FP64")], parameters=params)
    np.testing.assert_array_equal(x64.as_numpy("mean"), base.as_numpy("mean"))
    halves = X.astype(np.float16)
    x16 = server.client.infer("reg", [_input(halves, "FP16")], parameters=params)
    want16 = _http_outputs(server, "reg", halves.astype(np.float32), params)["mean"]
    np.testing.assert_allclose(x16.as_numpy("mean"), want16, rtol=1e-6, atol=1e-6)


def test_int64_ids_raw_and_typed(server: Server) -> None:
    ids = np.array([[1, 2, 3], [4, 0, 9]], dtype=np.int64)
    params = {"mc_samples": 8, "seed": 2}
    raw = server.client.infer("tokens", [_input(ids, "INT64")], parameters=params)
    body = {"inputs": [{"name": "input", "datatype": "INT64", "shape": [2, 3],
                        "data": ids.ravel().tolist()}], "parameters": params}  # fmt: skip
    http = httpx.post(f"{server.url}/v2/models/tokens/infer", json=body).json()
    want = np.asarray(http["outputs"][0]["data"]).reshape(2, 1)
    np.testing.assert_allclose(raw.as_numpy(http["outputs"][0]["name"]), want, rtol=1e-6)
    req = service_pb2.ModelInferRequest(model_name="tokens")
    req.parameters["mc_samples"].int64_param = 8
    req.parameters["seed"].int64_param = 2
    t = req.inputs.add(name="input", datatype="INT32", shape=[2, 3])
    t.contents.int_contents.extend(ids.ravel().tolist())
    with grpc.insecure_channel(server.address) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
    assert resp.outputs[0].datatype == "FP64"  # int64 models answer in float64
    got = np.frombuffer(resp.raw_output_contents[0], "<f8").reshape(2, 1)
    np.testing.assert_array_equal(got, raw.as_numpy(resp.outputs[0].name))


def test_request_id_and_trace_context_echoed(server: Server) -> None:
    """As on HTTP: the request id (x-request-id metadata, else the request's id, else a new
    one) and the caller's trace come back in the trailing metadata, errors included."""
    trace = "0af7651916cd43dd8448eb211c80319c"
    req = service_pb2.ModelInferRequest(model_name="reg", id="body-id-7")
    t = req.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    t.contents.fp32_contents.extend(X.ravel().tolist())
    with grpc.insecure_channel(server.address) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        _, call = stub.ModelInfer.with_call(
            req, metadata=(("traceparent", f"00-{trace}-b7ad6b7169203331-01"),), timeout=10
        )
        echoed = dict(call.trailing_metadata())
        assert echoed["x-request-id"] == "body-id-7"
        assert (
            echoed["traceparent"].startswith(f"00-{trace}-") and echoed["traceparent"][-2:] == "01"
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nope"),
                            metadata=(("x-request-id", "mine-1"),), timeout=10)  # fmt: skip
        assert dict(info.value.trailing_metadata())["x-request-id"] == "mine-1"  # type: ignore[attr-defined]
        _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), timeout=10)
        assert len(dict(call.trailing_metadata())["x-request-id"]) == 32  # made here


def test_stream_infer(server: Server) -> None:
    """tritonclient's stream: every request answered on the stream, an error answering its
    own request only; the answers are the unary ones for the same seed."""
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c = tg.InferenceServerClient(server.address)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        for rid, model in (("a", "reg"), ("b", "nope"), ("c", "clf")):
            c.async_stream_infer(model, [_input(X)], request_id=rid,
                                 parameters={"mc_samples": 24, "seed": 11})  # fmt: skip
        answers = [got.get(timeout=30) for _ in range(3)]
    finally:
        c.stop_stream()
        c.close()
    ok = {r.get_response().id: r for r, e in answers if e is None}
    errors = [e for r, e in answers if e is not None]
    assert sorted(ok) == ["a", "c"] and len(errors) == 1
    assert "no model named" in errors[0].message()
    for rid, model in (("a", "reg"), ("c", "clf")):
        want = _http_outputs(server, model, X, {"mc_samples": 24, "seed": 11})
        np.testing.assert_allclose(ok[rid].as_numpy("mean"), want["mean"], rtol=1e-6, atol=1e-6)


def test_calls_are_counted_and_logged(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """Every call, and every request of a stream, counts once in mcdrop_grpc_requests_total
    by method and status code and writes one access line (HTTP's shape) with its ids."""

    def count(method: str, code: str) -> float:
        return metric(server.url, f'mcdrop_grpc_requests_total{{code="{code}",method="{method}"}}')

    pairs = [(m, c) for m in ("ModelInfer", "ModelStreamInfer") for c in ("OK", "NOT_FOUND")]
    before = {k: count(*k) for k in pairs}
    durations = metric(
        server.url, 'mcdrop_grpc_request_duration_seconds_count{method="ModelInfer"}'
    )
    with caplog.at_level(logging.INFO, logger="mcdrop.access"):
        server.client.infer("reg", [_input(X)], headers={"x-request-id": "grpc-ok-1"})
        _status(lambda: server.client.infer("nope", [_input(X)]))
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        c = tg.InferenceServerClient(server.address)
        c.start_stream(callback=lambda result, error: got.put((result, error)))
        try:
            for rid, model in (("s1", "reg"), ("s2", "nope"), ("s3", "clf")):
                c.async_stream_infer(model, [_input(X)], request_id=rid)
            answers = [got.get(timeout=30) for _ in range(3)]
        finally:
            c.stop_stream()
            c.close()
    assert sum(e is not None for _, e in answers) == 1
    assert count("ModelInfer", "OK") == before[("ModelInfer", "OK")] + 1
    assert count("ModelInfer", "NOT_FOUND") == before[("ModelInfer", "NOT_FOUND")] + 1
    assert count("ModelStreamInfer", "OK") == before[("ModelStreamInfer", "OK")] + 2
    assert count("ModelStreamInfer", "NOT_FOUND") == before[("ModelStreamInfer", "NOT_FOUND")] + 1
    assert (
        metric(server.url, 'mcdrop_grpc_request_duration_seconds_count{method="ModelInfer"}')
        == durations + 2
    )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mcdrop.access"]
    grpc_lines = [ln for ln in lines if ln["method"] == "gRPC"]
    unary = [ln for ln in grpc_lines if ln["route"].endswith("/ModelInfer")]
    assert [ln["status"] for ln in unary] == ["OK", "NOT_FOUND"]
    assert unary[0]["request_id"] == "grpc-ok-1"
    assert unary[0]["route"] == "/inference.GRPCInferenceService/ModelInfer"
    assert {"ts", "duration_ms", "client", "trace_id"} <= set(unary[0])
    streamed = {ln["request_id"]: ln["status"] for ln in grpc_lines
                if ln["route"].endswith("/ModelStreamInfer")}  # fmt: skip
    assert streamed == {"s1": "OK", "s2": "NOT_FOUND", "s3": "OK"}  # the v2 id is the request id


def test_aio_client(server: Server) -> None:
    async def run() -> tuple[bool, np.ndarray]:
        async with tga.InferenceServerClient(server.address) as c:
            ready = await c.is_model_ready("reg")
            r = await c.infer("reg", [_input(X)], parameters={"mc_samples": 24, "seed": 11})
            return ready, r.as_numpy("mean")

    ready, mean = asyncio.run(run())
    want = _http_outputs(server, "reg", X, {"mc_samples": 24, "seed": 11})["mean"]
    assert ready
    np.testing.assert_allclose(mean, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- errors


def _bad_requests() -> list[tuple[str, dict[str, Any], grpc.StatusCode]]:
    """(case, infer keywords, expected status): bad input is never UNKNOWN or INTERNAL."""
    inv, nf = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    wide = np.zeros((2, FEATURES + 1), np.float32)
    inf = X.copy()
    inf[1, 2] = np.inf
    return [
        ("shape", {"inputs": [_input(wide)]}, inv),
        ("datatype", {"inputs": [_input(X.astype(np.int32), "INT32")]}, inv),
        ("not finite", {"inputs": [_input(inf)]}, inv),
        ("too many rows", {"inputs": [_input(np.zeros((9, FEATURES), np.float32))]}, inv),
        ("samples 0", {"parameters": {"mc_samples": 0}}, inv),
        ("samples past max", {"parameters": {"mc_samples": 10_000}}, inv),
        ("samples text", {"parameters": {"mc_samples": "many"}}, inv),
        ("samples float", {"parameters": {"mc_samples": 8.0}}, inv),
        ("seed negative", {"parameters": {"seed": -1}}, inv),
        ("unknown output", {"outputs": [tg.InferRequestedOutput("nope")]}, inv),
        ("unknown model", {"model_name": "nope"}, nf),
        ("unknown version", {"model_version": "7"}, nf),
        ("failed model", {"model_name": "broken"}, grpc.StatusCode.UNAVAILABLE),
    ]


@pytest.mark.parametrize(
    "case,kw,code", _bad_requests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_bad_input_status_codes(server: Server, case: str, kw: dict[str, Any], code: Any) -> None:
    call = {"model_name": "reg", "inputs": [_input(X)], **kw}
    status, message = _status(lambda: server.client.infer(**call))
    assert status == code, (case, status, message)
    assert message and "Traceback" not in message


def _raw_call(server: Server, req: Any) -> grpc.StatusCode:
    with grpc.insecure_channel(server.address) as ch:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_malformed_tensors_are_invalid_argument(server: Server) -> None:
    def req(**kw: Any) -> Any:
        r = service_pb2.ModelInferRequest(model_name="reg")
        t = r.inputs.add(name="input", datatype=kw.pop("datatype", "FP32"), shape=[1, FEATURES])
        if "typed" in kw:
            getattr(t.contents, kw["typed"]).extend(kw["values"])
        for raw in kw.get("raw", ()):
            r.raw_input_contents.append(raw)
        return r

    four = np.zeros(FEATURES, "<f4").tobytes()
    cases = {
        "raw bytes short": req(raw=[four[:-1]]),
        "raw bytes long": req(raw=[four + b"\0" * 4]),
        "raw for no input": req(raw=[four, four]),
        "typed in the wrong field": req(typed="fp64_contents", values=[0.0] * FEATURES),
        "typed too few": req(typed="fp32_contents", values=[0.0] * (FEATURES - 1)),
        "no data": req(),
        "FP16 typed": req(datatype="FP16", typed="fp32_contents", values=[0.0] * FEATURES),
    }
    both = req(typed="fp32_contents", values=[0.0] * FEATURES, raw=[four])
    cases["typed and raw"] = both
    got = {name: _raw_call(server, r) for name, r in cases.items()}
    assert got == dict.fromkeys(cases, grpc.StatusCode.INVALID_ARGUMENT)


def test_messages_that_do_not_parse_are_invalid_argument(server: Server) -> None:
    method = "/inference.GRPCInferenceService/ModelInfer"
    bodies = [b"\xff\xff\xff", b"\x0a\x05reg", b"\x0a\x02\xff\xfe"]  # bad varint, short, not UTF-8
    codes = []
    with grpc.insecure_channel(server.address) as ch:
        call = ch.unary_unary(method)  # bytes in, bytes out
        for body in bodies:
            with pytest.raises(grpc.RpcError) as info:
                call(body, timeout=10)
            codes.append(info.value.code())  # type: ignore[attr-defined]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * len(bodies)


def test_message_over_the_body_limit(server: Server) -> None:
    rows = BODY_LIMIT // (4 * FEATURES) + 1  # raw bytes alone past the limit
    status, _ = _status(
        lambda: server.client.infer("reg", [_input(np.zeros((rows, FEATURES), np.float32))])
    )
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_exceeded(server: Server) -> None:
    x = np.ones((1, FEATURES), np.float32)  # zeros would not sleep (tiny_models.SlowRegressor)
    status, _ = _status(lambda: server.client.infer("slow", [_input(x)], client_timeout=0.05))
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED


def test_fuzzed_requests_never_internal(server: Server) -> None:
    """200 random ModelInferRequests (datatypes, shapes, raw sizes, parameters): every one
    answers OK or a client-error status, never UNKNOWN or INTERNAL; the server stays up."""
    rng = np.random.default_rng(16)
    types = ["FP32", "FP64", "FP16", "INT64", "INT32", "BOOL", "BYTES", "UINT8", "fp32", ""]
    seen: dict[grpc.StatusCode, int] = {}
    for _ in range(200):
        r = service_pb2.ModelInferRequest(model_name=str(rng.choice(["reg", "clf", "tokens"])))
        shape = [int(d) for d in rng.integers(-1, 6, size=int(rng.integers(0, 4)))]
        t = r.inputs.add(name="input", datatype=str(rng.choice(types)), shape=shape)
        if rng.random() < 0.5:
            r.raw_input_contents.append(rng.bytes(int(rng.integers(0, 80))))
        else:
            t.contents.fp32_contents.extend(rng.normal(size=int(rng.integers(0, 20))).tolist())
        key = str(rng.choice(["mc_samples", "seed", "other"]))
        r.parameters[key].int64_param = int(rng.integers(-5, 300))
        code = _raw_call(server, r)
        seen[code] = seen.get(code, 0) + 1
    assert not set(seen) & {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}, seen
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100, seen
    assert server.client.is_server_live()


# ---------------------------------------------------------------------------- batching


def _batch_rows(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the engine calls' rows of ``model`` from /metrics."""
    total = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        for part in total:
            if line.startswith(f"mcdrop_batch_rows_{part}{{") and f'model="{model}"' in line:
                total[part] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def test_concurrency_32_batches_over_grpc(server: Server) -> None:
    """32 aio callers, 8 one-row calls each: the batcher merges them (rows per engine
    call > 1), and every seeded answer is its row's answer alone."""
    rows, seeds = X[:1], 32 * 8
    alone = {
        s: server.client.infer(
            "reg", [_input(rows)], parameters={"mc_samples": 16, "seed": s}
        ).as_numpy("mean")
        for s in (0, 1, 2)
    }
    before = _batch_rows(server.url, "reg")
    latencies: list[float] = []

    async def caller(c: Any, k: int) -> list[tuple[int, np.ndarray]]:
        out = []
        for j in range(8):
            seed = (k * 8 + j) % 3
            t0 = time.perf_counter()
            r = await c.infer("reg", [_input(rows)], parameters={"mc_samples": 16, "seed": seed})
            latencies.append(time.perf_counter() - t0)
            out.append((seed, r.as_numpy("mean")))
        return out

    async def run() -> tuple[list[list[tuple[int, np.ndarray]]], float]:
        async with tga.InferenceServerClient(server.address) as c:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(caller(c, k) for k in range(32)))
            return list(results), time.perf_counter() - t0

    results, wall = asyncio.run(run())
    after = _batch_rows(server.url, "reg")
    calls, total = after[1] - before[1], after[0] - before[0]
    assert total == seeds  # every row went through the engine once
    per_call = total / calls
    lat = np.sort(latencies) * 1000
    print(f"\ngRPC concurrency 32: {seeds} calls in {wall:.2f} s ({seeds / wall:.0f}/s), "
          f"{per_call:.1f} rows per engine call ({calls:.0f} calls), latency p50 "
          f"{np.percentile(lat, 50):.1f} ms p99 {np.percentile(lat, 99):.1f} ms")  # fmt: skip
    assert per_call > 1.0
    for seed, mean in (pair for res in results for pair in res):
        np.testing.assert_allclose(mean, alone[seed], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- docs


DOC_RUNS_HERE = "tests/service/test_grpc.py"  # the skip reason of the snippets run here


@pytest.mark.parametrize(
    "example",
    [e for e in examples(ROOT / "docs" / "grpc.md") if DOC_RUNS_HERE in e.code.reason],
    ids=lambda e: e.id,
)
def test_docs_grpc_snippets(server: Server, example: Any) -> None:
    """docs/grpc.md's Python snippets against this server: each prints what the page shows."""
    code = example.code.text.replace("localhost:8001", server.address)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, example.id, "exec"), {"__name__": "__doc_example__"})  # noqa: S102
    assert example.output is not None, f"{example.id} shows no output"
    problems = output_problems(example.output.text, out.getvalue().strip())
    assert not problems, problems
