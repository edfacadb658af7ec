"""mcdrop.client: against scripted servers (httpx.MockTransport) for encoding, decoding,
the error tree and the retry policy; then against the real service (uvicorn on 127.0.0.1
and httpx.ASGITransport) for every method, authentication and the error mapping."""

from __future__ import annotations

import ast
import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from mcdrop.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientError,
    ConnectionFailedError,
    GatewayTimeoutError,
    HTTPStatusError,
    InputError,
    NotFoundError,
    ProtocolError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
)
from mcdrop.errors import InvalidInputError, McdropError

URL = "http://mcdrop.test"

REGRESSION = {
    "model": "toy1d",
    "samples": 50,
    "seed": 7,
    "mean": [[0.5], [1.5]],
    "variance": [[0.04], [0.09]],
    "std": [[0.2], [0.3]],
    "stderr": [[0.02], [0.03]],
    "epistemic_variance": [[0.04], [0.09]],
    "aleatoric_variance": [[0.0], [0.0]],
}
CLASSIFICATION = {
    "model": "digits",
    "samples": 20,
    "seed": 3,
    "mean": [[0.7, 0.3], [0.4, 0.6]],
    "variance": [[0.01, 0.01], [0.02, 0.02]],
    "std": [[0.1, 0.1], [0.14, 0.14]],
    "stderr": [[0.02, 0.02], [0.03, 0.03]],
    "probs": [[0.7, 0.3], [0.4, 0.6]],
    "predictive_entropy": [0.61, 0.67],
    "expected_entropy": [0.5, 0.6],
    "mutual_information": [0.11, 0.07],
    "variation_ratio": [0.1, 0.25],
    "extra_field": "kept in raw",
}
MODEL = {
    "name": "toy1d",
    "version": "1",
    "task": "regression",
    "input_shape": [1],
    "input_dtype": "float32",
    "output_shape": [1],
    "default_samples": 100,
    "max_samples": 1000,
    "max_batch_rows": 256,
    "ready": True,
}


class Recorder:
    """A MockTransport handler that answers from a script and records each request."""

    def __init__(self, *answers: httpx.Response | Exception | Callable) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


def client_for(rec: Recorder, **kw) -> Client:
    kw.setdefault("backoff", 0.001)
    return Client(URL, transport=httpx.MockTransport(rec), **kw)


def ok(payload: object, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=payload, headers=headers)


# ----------------------------------------------------------------------------- happy path


def test_predict_sends_json_and_decodes_numpy():
    rec = Recorder(ok(REGRESSION))
    with client_for(rec, api_key="s3cret") as c:
        res = c.predict("toy1d", np.array([[0.1], [0.2]], dtype=np.float32), samples=50, seed=7)
    req = rec.requests[0]
    assert req.method == "POST" and req.url.path == "/v1/models/toy1d/predict"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == "Bearer s3cret"
    assert rec.bodies[0] == {
        "inputs": [[pytest.approx(0.1)], [pytest.approx(0.2)]],
        "samples": 50,
        "seed": 7,
    }
    assert res.model == "toy1d" and res.samples == 50 and res.seed == 7
    assert res.task == "regression" and res.probs is None and res.predicted_class is None
    for name in ("mean", "variance", "std", "stderr", "epistemic_variance"):
        arr = getattr(res, name)
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.shape == (2, 1)
    np.testing.assert_allclose(res.std, [[0.2], [0.3]])
    assert res.raw == REGRESSION


def test_predict_omits_unset_options_and_sends_no_auth_by_default():
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("toy1d", [[1], [2]])
    assert rec.bodies[0] == {"inputs": [[1.0], [2.0]]}
    assert "authorization" not in rec.requests[0].headers


def test_predict_classification_fields():
    rec = Recorder(ok(CLASSIFICATION))
    with client_for(rec) as c:
        res = c.predict("digits", [[0.0, 1.0], [1.0, 0.0]], seed=3)
    assert res.task == "classification"
    assert res.probs.shape == (2, 2) and res.mutual_information.shape == (2,)
    np.testing.assert_array_equal(res.predicted_class, [0, 1])
    assert res.variation_ratio is not None and res.expected_entropy is not None
    assert res.raw["extra_field"] == "kept in raw"


@pytest.mark.parametrize(
    "inputs",
    [
        [[1, 2, 3], [4, 5, 6]],
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    ],
    ids=["list", "int16", "uint8", "float16", "fortran"],
)
def test_inputs_of_any_numeric_kind(inputs):
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", inputs)
    sent = np.asarray(rec.bodies[0]["inputs"])
    np.testing.assert_array_equal(sent, np.asarray(inputs, dtype=np.float64))


def test_torch_tensor_inputs_by_duck_typing():
    torch = pytest.importorskip("torch")
    x = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", x * 2)
    assert rec.bodies[0]["inputs"] == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]


def _sent_types(rec: Recorder) -> set[type]:
    """The Python types of the numbers in the first request's inputs, as JSON decoded them."""
    return {type(v) for v in np.asarray(rec.bodies[0]["inputs"], dtype=object).ravel()}


def _torch_int(dtype_name: str):
    torch = pytest.importorskip("torch")
    return torch.arange(6, dtype=getattr(torch, dtype_name)).reshape(2, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: [[1, 2, 3], [4, 5, 6]],
        lambda: ((1, 2, 3), (4, 5, 6)),
        lambda: np.arange(6, dtype=np.int64).reshape(2, 3),
        lambda: np.arange(6, dtype=np.int32).reshape(2, 3),
        lambda: np.arange(6, dtype=np.uint64).reshape(2, 3),
        lambda: np.arange(6, dtype=np.int64).reshape(3, 2).T,  # not C-contiguous
        lambda: _torch_int("int64"),
        lambda: _torch_int("int32"),
    ],
    ids=["list", "tuple", "int64", "int32", "uint64", "transposed", "torch-int64", "torch-int32"],
)
def test_integer_inputs_are_sent_as_json_integers(make):
    inputs = make()
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", inputs)
    assert _sent_types(rec) == {int}
    expected = np.asarray(inputs.numpy() if hasattr(inputs, "numpy") else inputs)
    np.testing.assert_array_equal(np.asarray(rec.bodies[0]["inputs"]), expected)
    assert b"." not in rec.requests[0].content.split(b"]")[0]  # no "1.0" anywhere in inputs


def test_int64_extremes_are_sent_exactly():
    big = np.array([[2**63 - 1, -(2**63), 2**53 + 1]], dtype=np.int64)  # not exact as floats
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", big)
        c.predict("m", big.tolist())
    assert rec.bodies[0]["inputs"] == rec.bodies[1]["inputs"] == big.tolist()


@pytest.mark.parametrize(
    "inputs",
    [[[1.5, 2.0]], [[1, 2.5]], np.ones((1, 2), dtype=np.float32), np.ones((1, 2))],
    ids=["floats", "mixed", "float32", "float64"],
)
def test_float_inputs_stay_floats(inputs):
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", inputs)
    assert _sent_types(rec) == {float}


@pytest.mark.parametrize(
    "inputs, match",
    [
        ([[1, True]], "booleans"),
        ([[0.5, False]], "booleans"),
        (np.array([[True, False]]), "booleans"),
        ([[1, 2**63]], "int64 range"),
        ([[-(2**63) - 1, 0]], "int64 range"),
        (np.array([[2**64 - 1]], dtype=np.uint64), "int64 maximum"),
    ],
    ids=["bool-among-ints", "bool-among-floats", "bool-array", "above", "below", "uint64"],
)
def test_integer_inputs_refused_with_a_reason(inputs, match):
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c, pytest.raises(InputError, match=match):
        c.predict("m", inputs)
    assert not rec.requests


def test_texts_are_sent_as_strings_and_never_mixed_with_numbers():
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", ["hello world", "hola mundo"], seed=1)
        with pytest.raises(InputError, match="mix texts and numbers"):
            c.predict("m", ["hello", 3])
    assert len(rec.requests) == 1
    assert rec.bodies[0] == {"inputs": ["hello world", "hola mundo"], "seed": 1}


def test_torch_bool_tensor_refused():
    torch = pytest.importorskip("torch")
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c, pytest.raises(InputError, match="booleans"):
        c.predict("m", torch.ones(2, 3, dtype=torch.bool))
    assert not rec.requests


def test_answer_statistics_decode_as_float64_even_when_written_as_integers():
    # A proxy re-encoding the JSON may write 1.0 as 1: statistics are real numbers still.
    answer = dict(REGRESSION, mean=[[1], [2]], variance=[[0], [0]])
    with client_for(Recorder(ok(answer))) as c:
        res = c.predict("m", [[1], [2]])
    assert res.mean.dtype == res.variance.dtype == np.float64
    assert isinstance(res.seed, int) and isinstance(res.samples, int)


def test_model_names_are_quoted_in_the_path():
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("a/b c", [[1.0]])
    assert rec.requests[0].url.raw_path == b"/v1/models/a%2Fb%20c/predict"


def test_models_and_model():
    rec = Recorder(ok({"models": [MODEL], "failures": {"broken": "no weights"}}), ok(MODEL))
    with client_for(rec) as c:
        models = c.models()
        one = c.model("toy1d")
    assert [m.name for m in models] == ["toy1d"] and models[0].input_shape == [1]
    assert one.task == "regression" and one.max_samples == 1000
    assert [r.url.path for r in rec.requests] == ["/v1/models", "/v1/models/toy1d"]


def test_url_without_scheme_and_trailing_slash():
    rec = Recorder(ok({"status": "live"}))
    with Client("mcdrop.test/", transport=httpx.MockTransport(rec)) as c:
        assert c.live()
    assert str(rec.requests[0].url) == "http://mcdrop.test/health/live"


# ----------------------------------------------------------------------------- local checks


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_named_and_nothing_is_sent(bad):
    rec = Recorder(ok(REGRESSION))
    x = np.zeros((30, 2))
    x[[3, 17], 1] = bad
    with client_for(rec) as c, pytest.raises(InputError, match=r"row\(s\) 3, 17$") as info:
        c.predict("m", x)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InvalidInputError)
    assert not rec.requests


def test_many_non_finite_rows_are_summarised():
    x = np.full((25, 1), np.nan)
    with client_for(Recorder(ok(REGRESSION))) as c, pytest.raises(InputError, match="and 15 more"):
        c.predict("m", x)


@pytest.mark.parametrize(
    "inputs, match",
    [
        ([[1.0, 2.0], [3.0]], "rectangular|equal length"),
        ([["a", "b"]], "numbers"),
        ([[True, False]], "numbers"),
        ([], "empty"),
        (3.0, "single number"),
        ([[1 + 2j]], "numbers"),
    ],
)
def test_malformed_inputs(inputs, match):
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c, pytest.raises(InputError, match=match):
        c.predict("m", inputs)
    assert not rec.requests


@pytest.mark.parametrize(
    "kw", [{"seed": -1}, {"seed": 2**63}, {"seed": 1.5}, {"seed": True}, {"samples": 0}]
)
def test_bad_seed_or_samples_rejected_locally(kw):
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c, pytest.raises(InputError):
        c.predict("m", [[1.0]], **kw)
    assert not rec.requests


def test_numpy_integer_seed_is_accepted():
    rec = Recorder(ok(REGRESSION))
    with client_for(rec) as c:
        c.predict("m", [[1.0]], seed=np.int64(5), samples=np.int32(10))
    assert rec.bodies[0]["seed"] == 5 and rec.bodies[0]["samples"] == 10


def test_return_samples_is_sent_and_draws_parsed():
    answer = dict(REGRESSION, draws=[[[1.0]], [[3.0]]])
    rec = Recorder(ok(answer))
    with client_for(rec) as c:
        res = c.predict("m", [[1.0]], samples=2, return_samples=True)
    assert rec.bodies[0]["return_samples"] is True
    assert res.draws is not None and res.draws.shape == (2, 1, 1)


# ----------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequestError),
        (413, BadRequestError),
        (415, BadRequestError),
        (422, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, HTTPStatusError),
        (500, ServerError),
        (502, ServerError),
        (504, GatewayTimeoutError),
    ],
)
def test_status_codes_map_to_the_error_tree(status, cls):
    rec = Recorder(ok({"error": "something specific", "field": "inputs"}, status))
    with client_for(rec) as c, pytest.raises(cls) as info:
        c.predict("m", [[1.0]])
    err = info.value
    assert type(err) is cls
    assert isinstance(err, HTTPStatusError) and isinstance(err, ClientError)
    assert isinstance(err, McdropError)
    assert err.status_code == status and err.message == "something specific"
    assert err.body == {"error": "something specific", "field": "inputs"}
    assert str(err) == f"HTTP {status}: something specific"
    assert len(rec.requests) == 1  # none of these is retried


def test_504_is_also_a_timeout_and_bad_request_a_value_error():
    assert issubclass(GatewayTimeoutError, RequestTimeoutError)
    assert issubclass(GatewayTimeoutError, TimeoutError)
    assert issubclass(BadRequestError, ValueError)


def test_error_without_json_body_uses_text():
    rec = Recorder(httpx.Response(502, text="bad gateway from the proxy"))
    with client_for(rec) as c, pytest.raises(ServerError, match="bad gateway from the proxy"):
        c.models()


def test_fastapi_style_detail_is_used_when_there_is_no_error_key():
    rec = Recorder(ok({"detail": "Not Found"}, 404))
    with client_for(rec) as c, pytest.raises(NotFoundError, match="Not Found"):
        c.model("x")


def test_success_that_is_not_json_is_a_protocol_error():
    rec = Recorder(httpx.Response(200, text="<html>hello</html>"))
    with client_for(rec) as c, pytest.raises(ProtocolError, match="expected JSON"):
        c.predict("m", [[1.0]])


def test_answer_missing_fields_is_a_protocol_error():
    rec = Recorder(ok({"model": "m", "mean": [1.0]}))
    with client_for(rec) as c, pytest.raises(ProtocolError, match="v1 schema"):
        c.predict("m", [[1.0]])


# ----------------------------------------------------------------------------- retries


def test_503_is_retried_then_succeeds():
    rec = Recorder(
        ok({"error": "queue full"}, 503, **{"Retry-After": "0"}),
        ok({"error": "queue full"}, 503),
        ok(REGRESSION),
    )
    with client_for(rec, retries=3) as c:
        res = c.predict("m", [[1.0]], seed=7)
    assert res.seed == 7 and len(rec.requests) == 3
    assert rec.bodies[0] == rec.bodies[2]


def test_503_after_all_retries_raises_server_busy_with_retry_after():
    rec = Recorder(ok({"error": "queue full"}, 503, **{"Retry-After": "0"}))
    with client_for(rec, retries=2) as c, pytest.raises(ServerBusyError) as info:
        c.predict("m", [[1.0]])
    assert len(rec.requests) == 3
    assert info.value.status_code == 503 and info.value.retry_after == 0.0
    assert info.value.message == "queue full"


def test_429_is_retried_like_503():
    rec = Recorder(ok({"error": "slow down"}, 429), ok(MODEL))
    with client_for(rec) as c:
        assert c.model("toy1d").name == "toy1d"
    assert len(rec.requests) == 2


def test_retry_after_is_capped_by_max_backoff():
    rec = Recorder(ok({"error": "busy"}, 503, **{"Retry-After": "3600"}), ok(MODEL))
    t0 = time.monotonic()
    with client_for(rec, max_backoff=0.05) as c:
        c.model("toy1d")
    assert time.monotonic() - t0 < 2.0 and len(rec.requests) == 2


def test_retry_after_http_date_is_understood():
    from mcdrop._client_core import parse_retry_after

    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_doubles_and_is_capped():
    c = Client(URL, backoff=0.5, max_backoff=3.0)
    assert [c._delay(n, None) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert c._delay(0, 10.0) == 3.0 and c._delay(0, 0.2) == 0.2
    c.close()


def test_connection_errors_are_retried_for_predict_and_gets():
    rec = Recorder(httpx.ConnectError("refused"), httpx.ReadError("reset"), ok(REGRESSION))
    with client_for(rec) as c:
        assert c.predict("m", [[1.0]]).model == "toy1d"
    assert len(rec.requests) == 3


def test_connection_failure_after_retries():
    rec = Recorder(httpx.ConnectError("refused"))
    with (
        client_for(rec, retries=2) as c,
        pytest.raises(ConnectionFailedError, match="cannot reach"),
    ):
        c.models()
    assert len(rec.requests) == 3


def test_read_timeout_is_not_retried():
    rec = Recorder(httpx.ReadTimeout("slow"), ok(REGRESSION))
    with client_for(rec) as c, pytest.raises(RequestTimeoutError) as info:
        c.predict("m", [[1.0]])
    assert len(rec.requests) == 1 and isinstance(info.value, TimeoutError)


def test_connect_timeout_is_retried_and_reported_as_connection_failure():
    rec = Recorder(httpx.ConnectTimeout("no route"))
    with client_for(rec, retries=1) as c, pytest.raises(ConnectionFailedError, match="timed out"):
        c.models()
    assert len(rec.requests) == 2


def test_retries_zero_means_one_attempt():
    rec = Recorder(ok({"error": "busy"}, 503))
    with client_for(rec, retries=0) as c, pytest.raises(ServerBusyError):
        c.models()
    assert len(rec.requests) == 1


def test_real_client_timeout_on_loopback():
    # A socket that accepts but never answers: the client's own read timeout fires.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        with Client(f"http://127.0.0.1:{port}", timeout=0.2, retries=0) as c:
            t0 = time.monotonic()
            with pytest.raises(RequestTimeoutError):
                c.models()
            assert time.monotonic() - t0 < 3.0


# ----------------------------------------------------------------------------- probes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probes_are_false_when_the_server_is_down():
    with Client(f"http://127.0.0.1:{_closed_port()}", timeout=1.0, backoff=0.001) as c:
        t0 = time.monotonic()
        assert c.ready() is False and c.live() is False
        assert time.monotonic() - t0 < 2.0  # probes do not retry
        with pytest.raises(ConnectionFailedError):
            c.models()


def test_ready_reads_the_status_code():
    rec = Recorder(
        ok({"status": "not ready", "models": []}, 503, **{"Retry-After": "1"}),
        ok({"status": "ready", "models": ["m"]}),
    )
    with client_for(rec) as c:
        assert c.ready() is False
        assert c.ready() is True
    assert len(rec.requests) == 2


def test_ready_raises_on_misconfiguration():
    rec = Recorder(ok({"detail": "Not Found"}, 404))
    with client_for(rec) as c, pytest.raises(NotFoundError):
        c.ready()


def test_wait_ready_gives_up_after_its_timeout():
    rec = Recorder(ok({"status": "not ready", "models": []}, 503))
    with client_for(rec) as c, pytest.raises(RequestTimeoutError, match="not ready within"):
        c.wait_ready(timeout=0.1, interval=0.02)
    assert 2 <= len(rec.requests) <= 20


# ----------------------------------------------------------------------------- async


def test_async_client_same_behaviour():
    rec = Recorder(
        ok({"error": "busy"}, 503, **{"Retry-After": "0"}),
        ok(CLASSIFICATION),
        ok({"models": [MODEL]}),
        ok({"status": "ready", "models": ["m"]}),
        ok({"error": "no model 'x'"}, 404),
    )

    async def main() -> None:
        async with AsyncClient(
            URL, api_key="k", transport=httpx.MockTransport(rec), backoff=0.001
        ) as c:
            res = await c.predict("digits", np.ones((2, 2)), samples=20, seed=3)
            assert res.task == "classification" and res.probs.shape == (2, 2)
            assert [m.name for m in await c.models()] == ["toy1d"]
            assert await c.ready() is True
            with pytest.raises(NotFoundError, match="no model 'x'"):
                await c.model("x")
            with pytest.raises(InputError):
                await c.predict("digits", [[np.nan, 1.0]])

    asyncio.run(main())
    assert len(rec.requests) == 5
    assert all(r.headers["authorization"] == "Bearer k" for r in rec.requests)


def test_async_connection_refused():
    async def main() -> None:
        async with AsyncClient(f"http://127.0.0.1:{_closed_port()}", retries=1, backoff=0.001) as c:
            assert await c.live() is False
            with pytest.raises(ConnectionFailedError):
                await c.predict("m", [[1.0]])

    asyncio.run(main())


# ----------------------------------------------------------------------------- hygiene


def test_client_modules_import_no_torch_and_no_service():
    """The client may import httpx, numpy, pydantic, the stdlib, mcdrop.{schemas,errors,fields}."""
    allowed_mcdrop = {"mcdrop.schemas", "mcdrop.errors", "mcdrop.fields", "mcdrop._client_core",
                      "mcdrop._client_encode"}  # fmt: skip
    root = Path(__file__).resolve().parents[2] / "mcdrop"
    for name in ("client.py", "_client_core.py", "_client_encode.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top not in ("torch", "service", "fastapi", "starlette"), (name, mod)
                if top == "mcdrop":
                    assert mod in allowed_mcdrop, (name, mod)


# ----------------------------------------------------------------------------- real service

service_app = pytest.importorskip  # the service is optional for the client


@pytest.fixture(scope="module")
def server_url():
    service_app("service.app")
    from helpers.live_server import live_server

    with live_server() as url:
        yield url


@pytest.fixture(scope="module")
def secured_url(default_models_subset):
    service_app("service.app")
    from helpers.live_server import live_server

    # the authentication test asks toy1d only
    with live_server(api_key="letmein", models_dir=default_models_subset("toy1d")) as url:
        yield url


def test_service_every_method(server_url):
    with Client(server_url) as c:
        assert c.live() and c.ready()
        models = {m.name: m for m in c.models()}
        assert {"concrete", "digits", "toy1d"} <= set(models)
        rng = np.random.default_rng(0)
        for name, info in models.items():
            assert c.model(name) == info
            if info.input_dtype == "int64":  # token ids (langid): int64 and int32 alike
                x = rng.integers(0, 10, size=(4, *info.input_shape))
                same = x.astype(np.int32)
            else:
                x = rng.normal(size=(4, *info.input_shape))
                same = x.astype(np.float32)
            a = c.predict(name, x, samples=16, seed=11)
            b = c.predict(name, same, samples=16, seed=11)
            assert a.model == name and a.samples == 16 and a.seed == 11
            assert a.mean.shape == a.std.shape == a.stderr.shape == (4, *info.output_shape)
            assert (a.variance >= 0).all()
            if info.task == "classification":
                np.testing.assert_allclose(a.probs.sum(axis=1), 1.0, atol=1e-6)
                assert (a.mutual_information >= -1e-9).all()
            else:
                assert a.probs is None and a.epistemic_variance is not None
            # float32/float64 (int32/int64) inputs of the same values: the same seeded answer
            np.testing.assert_array_equal(a.mean, b.mean)
        unseeded = c.predict("toy1d", [[0.0]], samples=8)
        again = c.predict("toy1d", [[0.0]], samples=8, seed=unseeded.seed)
        np.testing.assert_array_equal(unseeded.mean, again.mean)


def test_service_returns_raw_draws_on_request(server_url):
    with Client(server_url) as c:
        x = np.array([[0.0], [2.0], [5.0]])
        res = c.predict("toy1d", x, samples=40, seed=3, return_samples=True)
        assert res.draws is not None and res.draws.shape == (40, 3, 1)
        np.testing.assert_allclose(res.draws.mean(axis=0), res.mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(res.draws.var(axis=0, ddof=1), res.epistemic_variance,
                                   rtol=1e-4, atol=1e-7)  # fmt: skip
        plain = c.predict("toy1d", x, samples=40, seed=3)
        assert plain.draws is None
        np.testing.assert_array_equal(plain.mean, res.mean)
        with pytest.raises(BadRequestError, match="return_samples"):
            c.predict("toy1d", np.zeros((1001, 1)), samples=1000, return_samples=True)


def test_service_error_mapping(server_url):
    with Client(server_url) as c:
        with pytest.raises(NotFoundError, match="no model named 'nope'"):
            c.predict("nope", [[1.0]])
        with pytest.raises(NotFoundError):
            c.model("nope")
        with pytest.raises(BadRequestError) as info:
            c.predict("toy1d", [[1.0, 2.0]])
        assert info.value.status_code in (400, 422) and "shape" in info.value.message
        with pytest.raises(BadRequestError):
            c.predict("toy1d", [[1.0]], samples=10**7)


def test_service_large_input(server_url):
    x = np.random.default_rng(1).normal(size=(1000, 8))
    with Client(server_url) as c:
        res = c.predict("concrete", x, samples=4, seed=1)
    assert res.mean.shape == (1000, 1)


def test_service_authentication(secured_url):
    with Client(secured_url) as c:
        assert c.ready()  # health stays open
        with pytest.raises(AuthenticationError) as info:
            c.predict("toy1d", [[0.0]])
        assert info.value.status_code == 401
    with Client(secured_url, api_key="wrong") as c, pytest.raises(AuthenticationError):
        c.models()
    with Client(secured_url, api_key="letmein") as c:
        assert c.predict("toy1d", [[0.0]], seed=1).mean.shape == (1, 1)


def test_async_client_through_asgi_transport(default_models_subset):
    service_app("service.app")
    from service.app import create_app
    from service.settings import Settings

    # digits is the model asked for; loaded before the lifespan's startup returns, so
    # ready() is true at once
    settings = Settings(models_dir=default_models_subset("digits"))
    app = create_app(settings, background_load=False)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://asgi", transport=transport) as c:
                assert await c.ready() and await c.live()
                info = await c.model("digits")
                x = np.zeros((3, *info.input_shape))
                res = await c.predict("digits", x, samples=10, seed=2)
                assert res.task == "classification" and res.probs.shape == (3, 10)
                with pytest.raises(NotFoundError):
                    await c.predict("nope", x)

    asyncio.run(main())


# ----------------------------------------------------------------------------- int64 model


@pytest.fixture(scope="module")
def token_url(tmp_path_factory):
    service_app("service.app")
    from helpers.token_repo import make_token_repo, token_server

    with token_server(make_token_repo(tmp_path_factory.mktemp("tokens"))) as url:
        yield url


def test_service_int64_model_from_python(token_url):
    torch = pytest.importorskip("torch")
    ids = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.int64)
    with Client(token_url) as c:
        assert c.model("tokens").input_dtype == "int64"
        ref = c.predict("tokens", ids, samples=30, seed=4)
        assert ref.mean.shape == (3, 1) and ref.mean.dtype == np.float64
        assert (ref.variance > 0).all()  # dropout on: a model with dropout is never exact
        # Every integer form of the same ids gives the same seeded numbers.
        for same in (ids.tolist(), ids.astype(np.int32), ids.astype(np.uint8),
                     torch.from_numpy(ids)):  # fmt: skip
            res = c.predict("tokens", same, samples=30, seed=4)
            np.testing.assert_array_equal(res.mean, ref.mean)
            np.testing.assert_array_equal(res.variance, ref.variance)
        # Multi-dimensional int64 input (B, 2, 3).
        grid = c.predict("grid", ids[:2].repeat(2, axis=0).reshape(2, 2, 3), samples=8, seed=1)
        assert grid.mean.shape == (2, 1)
        # Floats to an int64 model: the server's 422, not a silent cast by the client.
        with pytest.raises(BadRequestError, match="integer"):
            c.predict("tokens", ids.astype(np.float64))
        # Integers to a float model are numbers too: the same answer as their float form.
        a = c.predict("floaty", ids, samples=30, seed=4)
        b = c.predict("floaty", ids.astype(np.float32), samples=30, seed=4)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.mean, ref.mean)


def test_service_int64_model_from_async_client(token_url):
    ids = np.array([[1, 2, 3], [0, 0, 9]], dtype=np.int64)

    async def main() -> None:
        async with AsyncClient(token_url) as c:
            res = await c.predict("tokens", ids, samples=20, seed=2)
            again = await c.predict("tokens", ids.tolist(), samples=20, seed=2)
            assert res.mean.shape == (2, 1) and (res.variance > 0).all()
            np.testing.assert_array_equal(res.mean, again.mean)

    asyncio.run(main())
