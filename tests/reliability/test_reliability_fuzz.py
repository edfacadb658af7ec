"""Fuzzing in-process: schemathesis over every route of the app's own OpenAPI schema, and
hypothesis-generated bodies (random JSON trees, wrong types, extreme numbers, deep nesting,
unicode, wrong shapes) for v1 predict and v2 infer.

The contract checked everywhere: never a 5xx, and every error is JSON with a non-empty
``error`` message. Every run is derandomized and bounded in examples.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.live_server import app_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svc_helpers import make_settings

from service.app import create_app

MODEL_NAMES = ["reg", "clf", "slow", "broken", "nope", "", "é", "../etc", "a" * 300]
VERSIONS = ["1", "2", "latest", "", "%00"]
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def check_answer(status: int, text: str) -> None:
    """The service's error contract for one response.

    The one 5xx allowed is the documented 503 of the folder that failed to load: from its
    routes, and from the readiness routes (strict readiness: a failed model means not
    ready).
    """
    if status == 503:
        body = json.loads(text)
        if "error" in body:
            assert "model 'broken' failed to load" in body["error"], text[:500]
        else:
            assert "broken" in body.get("failures", {}) or body == {"ready": False}, text[:500]
        return
    assert status < 500, (status, text[:500])
    if status >= 400:
        body = json.loads(text)
        assert isinstance(body, dict) and isinstance(body.get("error"), str), text[:500]
        assert body["error"].strip(), text[:500]


# ------------------------------------------------------------------ schemathesis, all routes


@pytest.fixture(scope="module")
def asgi_schema(tiny_repo: Path) -> Iterator[Any]:
    """The app's OpenAPI schema, served in-process (lifespan started once by schemathesis)."""
    import schemathesis
    from schemathesis.python import asgi

    # Short timeout so the slow model cannot stall the run; a small queue is fine: the
    # fuzzer sends one request at a time. schemathesis starts the lifespan itself and sends
    # at once: the models load before the lifespan returns (no "still loading" 503s).
    app = create_app(make_settings(tiny_repo, request_timeout_s=2.0, log_level="warning"),
                     background_load=False)  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    asgi.shutdown_lifespans()


def _operations(schema: Any) -> list[Any]:
    return [r.ok() for r in schema.get_all_operations()]


def _fuzz_operation(op: Any, seen: dict[str, set[int]]) -> None:
    """Run one operation's bounded, derandomized schemathesis strategy."""
    label = f"{op.method.upper()} {op.path}"
    heavy = op.method.upper() == "POST"

    @settings(FUZZ, max_examples=200 if heavy else 30)
    @given(case=op.as_strategy(), name=st.sampled_from(MODEL_NAMES + [None]),
           version=st.sampled_from(VERSIONS + [None]))  # fmt: skip
    def fuzz(case: Any, name: str | None, version: str | None) -> None:
        # Mostly real model names, so the bodies reach validation, not just the 404.
        if "name" in (case.path_parameters or {}) and name is not None:
            case.path_parameters["name"] = name
        if "version" in (case.path_parameters or {}) and version is not None:
            case.path_parameters["version"] = version
        response = case.call(timeout=10)
        seen.setdefault(label, set()).add(response.status_code)
        check_answer(response.status_code, response.text)

    fuzz()


@pytest.mark.slow
def test_schemathesis_every_route_never_5xx(asgi_schema: Any) -> None:
    ops = _operations(asgi_schema)
    labels = {f"{op.method.upper()} {op.path}" for op in ops}
    assert "POST /v2/models/{name}/infer" in labels and "GET /metrics" in labels, labels
    seen: dict[str, set[int]] = {}
    for op in ops:
        _fuzz_operation(op, seen)
    # The fuzzer got past validation on the model routes, not only 404s.
    assert 200 in seen["POST /v1/models/{name}/predict"] | seen["GET /v1/models/{name}"]
    assert 422 in seen["POST /v2/models/{name}/infer"], seen["POST /v2/models/{name}/infer"]


@pytest.mark.slow  # schemathesis' import and schema load take seconds
def test_v2_infer_has_a_documented_request_body(asgi_schema: Any) -> None:
    """Generated v2 bodies need the schema to describe them (also for users of /docs)."""
    raw = asgi_schema.raw_schema
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        body = raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert "inputs" in body["schema"]["properties"]
        assert "$defs" not in json.dumps(body)  # every $ref resolves inside the document


# ------------------------------------------------------------------ hypothesis bodies

_weird_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 3.5e38, -3.5e38, 1e39, 0.0, -0.0]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
_weird_strings = st.one_of(
    st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "0x10", "1.5",
                     "", " ", "null", "true", "\u202e", "\x00", "😀" * 10]),
    st.text(max_size=20),
)  # fmt: skip
_leaf = st.one_of(st.none(), st.booleans(), _weird_floats, _weird_strings)
json_tree = st.recursive(
    _leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6), st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=40,
)


def _deep(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


_fine_floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@st.composite
def v1_bodies(draw: st.DrawFn) -> Any:
    """Predict bodies: about 3 in 8 valid, the others wrong in one (or several) ways."""
    kind = draw(st.integers(0, 7))
    width = 4 if kind < 3 else draw(st.sampled_from([4, 4, 3, 5, 0]))
    values = _fine_floats if kind < 3 else st.one_of(_weird_floats, _leaf)
    row = st.lists(values, min_size=width, max_size=width)
    rows: Any = draw(st.lists(row, min_size=1 if kind < 3 else 0, max_size=9))
    if kind == 4:
        rows = draw(json_tree)
    elif kind == 5:
        rows = _deep(draw(st.sampled_from([3, 50, 99, 101, 500, 3000])), 1.0)
    elif kind == 6 and rows:
        rows = rows[0]  # a single row not wrapped in a list
    body: dict[str, Any] = {"inputs": rows}
    if draw(st.booleans()):
        good = st.integers(1, 50)
        body["samples"] = draw(good if kind < 3 else st.one_of(st.integers(-5, 300), _leaf))
    if draw(st.booleans()):
        good = st.integers(0, 2**63 - 1)
        body["seed"] = draw(good if kind < 3 else st.one_of(st.integers(-(2**64), 2**64), _leaf))
    if kind >= 3 and draw(st.integers(0, 4)) == 0:
        body[draw(st.text(max_size=5))] = draw(_leaf)
    return draw(json_tree) if kind == 7 else body


@st.composite
def v2_bodies(draw: st.DrawFn) -> Any:
    """Open Inference Protocol requests: about 3 in 8 valid, the others with wrong
    datatypes, shapes, element counts, parameters or outputs."""
    kind = draw(st.integers(0, 7))
    valid = kind < 3
    b = draw(st.integers(1, 8) if valid else st.integers(-1, 10))
    shape: Any = [b, 4]
    if not valid and draw(st.booleans()):
        shape = draw(st.one_of(st.lists(st.integers(-2, 9), max_size=4), json_tree))
    n = 4 * b if valid or draw(st.booleans()) else draw(st.integers(0, 45))
    values = _fine_floats if valid else st.one_of(_weird_floats, _leaf)
    data: Any = draw(st.lists(values, min_size=max(n, 0), max_size=max(n, 0)))
    if draw(st.booleans()) and shape == [b, 4] and b > 0:
        data = [data[i : i + 4] for i in range(0, len(data), 4)]  # nested data
    types = ["FP32", "FP64", "FP16"]
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "x", "", "😀"])),
        "shape": shape,
        "datatype": draw(st.sampled_from(
            types if valid else types + ["INT64", "UINT8", "BYTES", "BOOL", "fp32", ""])),
        "data": data,
    }  # fmt: skip
    if not valid and draw(st.integers(0, 3)) == 0:
        tensor["parameters"] = draw(st.one_of(json_tree, st.just({"binary_data_size": 16})))
    body: dict[str, Any] = {"inputs": [tensor]}
    if not valid:
        body["inputs"] = draw(st.sampled_from([[tensor], [tensor, tensor], []]))
    if draw(st.booleans()):
        good = st.fixed_dictionaries(
            {}, optional={"mc_samples": st.integers(1, 50), "seed": st.integers(0, 2**63 - 1)}
        )
        bad = st.one_of(
            st.fixed_dictionaries({}, optional={
                "mc_samples": st.one_of(st.integers(-3, 300), _leaf),
                "seed": st.one_of(st.integers(-(2**64), 2**64), _leaf)}),
            json_tree)  # fmt: skip
        body["parameters"] = draw(good if valid else bad)
    if draw(st.booleans()):
        names = ["mean", "variance", "std"] + ([] if valid else ["probs", "nope", ""])
        outs = st.lists(st.fixed_dictionaries({"name": st.sampled_from(names)}), max_size=3)
        body["outputs"] = draw(outs if valid else st.one_of(outs, json_tree))
    if draw(st.booleans()):
        body["id"] = draw(st.text(max_size=10) if valid else _leaf)
    return draw(json_tree) if kind == 7 else body


def _encode(body: Any) -> bytes:
    # allow_nan: a NaN/Infinity literal in the body must be a 400, not a 500. The nesting
    # cases go 3,000 deep, past the default recursion limit of json's encoder.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10_000))
    try:
        return json.dumps(body, allow_nan=True).encode()
    finally:
        sys.setrecursionlimit(old)


@pytest.fixture(scope="module")
def loop_client(tiny_repo: Path) -> Iterator[Any]:
    """A synchronous ``post(path, content)`` over an in-process app on one event loop."""
    loop = asyncio.new_event_loop()
    cm = app_client(make_settings(tiny_repo, request_timeout_s=2.0, log_level="warning"))
    client = loop.run_until_complete(cm.__aenter__())

    def post(path: str, content: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        sent = {"Content-Type": "application/json"} if headers is None else headers
        r = loop.run_until_complete(client.post(path, content=content, headers=sent))
        return r.status_code, r.text

    yield post
    loop.run_until_complete(cm.__aexit__(None, None, None))
    loop.close()


@pytest.mark.slow
@settings(FUZZ, max_examples=600)
@given(body=v1_bodies(), model=st.sampled_from(["reg", "clf"]), nan=st.booleans())
def test_v1_predict_random_bodies(loop_client: Any, body: Any, model: str, nan: bool) -> None:
    if nan and isinstance(body, dict) and isinstance(body.get("inputs"), list) and body["inputs"]:
        first = body["inputs"][0]
        if isinstance(first, list) and first:
            first[0] = math.nan  # a NaN literal (not JSON) inside an otherwise fine body
    status, text = loop_client(f"/v1/models/{model}/predict", _encode(body))
    check_answer(status, text)
    if status == 200:
        out = json.loads(text)
        assert len(out["mean"]) == len(body["inputs"])


@pytest.mark.slow
@settings(FUZZ, max_examples=600)
@given(body=v2_bodies(), model=st.sampled_from(["reg", "clf"]))
def test_v2_infer_random_bodies(loop_client: Any, body: Any, model: str) -> None:
    status, text = loop_client(f"/v2/models/{model}/infer", _encode(body))
    check_answer(status, text)
    if status == 200:
        assert {o["name"] for o in json.loads(text)["outputs"]}


@settings(FUZZ, max_examples=150)
@given(raw=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"", b"{", b"[]", b"null", b"1e999999", b'{"inputs": [[1,2,3,4]]}garbage',
                     b'\xef\xbb\xbf{"inputs": [[1,2,3,4]]}', b'{"inputs": [[1e400,0,0,0]]}',
                     b'{"inputs": [[-Infinity, 0, 0, 0]]}', b"[" * 100_000]),
), path=st.sampled_from(["/v1/models/reg/predict", "/v2/models/clf/infer"]))  # fmt: skip
def test_raw_bytes_never_5xx(loop_client: Any, raw: bytes, path: str) -> None:
    status, text = loop_client(path, raw)
    check_answer(status, text)


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Binary-extension bodies: a v2 header whose inputs carry ``binary_data_size``, raw
    bytes of right or wrong sizes, a declared header length that may lie, maybe gzipped."""
    rows = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(["FP32", "FP64", "FP16", "INT64", "BYTES", "BOOL", "X"]))
    item = {"FP32": 4, "FP64": 8, "FP16": 2, "INT64": 8, "BOOL": 1}.get(dtype, 4)
    right = rows * 4 * item
    size: Any = draw(st.one_of(st.just(right), st.integers(-2, 80), _leaf))
    shape: Any = draw(st.one_of(st.just([rows, 4]), st.lists(st.integers(-1, 5), max_size=3)))
    tensor = {"name": "input", "shape": shape, "datatype": dtype,
              "parameters": {"binary_data_size": size}}  # fmt: skip
    header: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        header["parameters"] = {"binary_data_output": draw(st.booleans()), "seed": 1}
    head = json.dumps(header).encode()
    n_tail = size if isinstance(size, int) and size >= 0 and draw(st.booleans()) else None
    tail = draw(st.binary(min_size=n_tail or 0, max_size=n_tail if n_tail is not None else 96))
    declared = draw(st.one_of(st.just(str(len(head))), st.integers(-1, 400).map(str),
                              st.sampled_from(["", "x", "1e3", " 7"])))  # fmt: skip
    headers = {"Inference-Header-Content-Length": declared}
    body = head + tail
    if draw(st.integers(0, 3)) == 0:
        body = gzip.compress(body)[: draw(st.integers(0, 400))]
        headers["Content-Encoding"] = "gzip"
    return body, headers


@settings(FUZZ, max_examples=150)
@given(case=binary_bodies(), model=st.sampled_from(["reg", "clf"]))
def test_v2_binary_random_bodies(loop_client: Any, case: tuple[bytes, dict[str, str]],
                                 model: str) -> None:  # fmt: skip
    body, headers = case
    status, text = loop_client(f"/v2/models/{model}/infer", body, headers)
    check_answer(status, text)  # a 200 may be binary: only its status is checked


# ------------------------------------------------------------------ hostile classes (issue 18)

HUGE_INT = "9" * 5000  # past Python's 4,300-digit conversion limit: json.dumps cannot write it
_HUGE = "__mcdrop_huge_int__"  # placeholder, replaced by HUGE_INT in the encoded bytes
_SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\ud83d", "\ude00x"]  # lone halves
_hostile_leaf = st.one_of(
    st.sampled_from(_SURROGATES),
    st.just(_HUGE),
    st.sampled_from([2**64, -(2**63) - 1, 10**30, 10**300]),
    _leaf,
)
_hostile_shape = st.one_of(
    st.sampled_from([[10**30, 4], [2**63, 4], [2**64, 4], [1, 2**40], [1, -4], [0, 4]]),
    st.lists(st.sampled_from([0, 1, 4, 10**6]), min_size=5, max_size=2000),
    st.just([_HUGE, 4]),
)


def _many_keys(n: int, leaf: Any) -> dict[str, Any]:
    return {f"k{i}": leaf for i in range(n)}


def _leaf_somewhere(draw: st.DrawFn, body: dict[str, Any], t: dict[str, Any], v2: bool,
                    leaf: Any) -> None:  # fmt: skip
    """A hostile leaf in a field, a key, the data, the id or a parameter."""
    where = draw(st.sampled_from(["value", "key", "data", "id", "param"]))
    if where == "key":
        body[draw(st.sampled_from(_SURROGATES))] = 1
    elif where == "data":
        (t["data"] if v2 else body["inputs"][0])[0] = leaf
    elif where == "id":
        body["id" if v2 else "seed"] = leaf
    elif where == "param":
        body["parameters" if v2 else "samples"] = {"seed": leaf} if v2 else leaf
    else:
        t["name" if v2 else "x"] = leaf


def _duplicated_outputs(draw: st.DrawFn, body: dict[str, Any], t: dict[str, Any], v2: bool,
                        leaf: Any) -> None:  # fmt: skip
    n = draw(st.sampled_from([2, 3, 50, 2000]))
    body["outputs"] = [{"name": draw(st.sampled_from(["mean", "std", leaf]))}] * n


def _huge_shape(draw: st.DrawFn, body: dict[str, Any], t: dict[str, Any], v2: bool,
                leaf: Any) -> None:  # fmt: skip
    shape = draw(_hostile_shape)
    if v2:
        t["shape"] = shape
    else:
        body["inputs"] = _deep(2, [0.0]) * min(len(shape), 3000)


def _many_keys_somewhere(draw: st.DrawFn, body: dict[str, Any], t: dict[str, Any], v2: bool,
                         leaf: Any) -> None:  # fmt: skip
    keys = _many_keys(draw(st.sampled_from([200, 300, 3000])), 0)
    if draw(st.booleans()):  # nested
        (t if v2 else body).setdefault("parameters", {}).update(keys)
    else:
        body.update(keys)


def _many_tensors(draw: st.DrawFn, body: dict[str, Any], t: dict[str, Any], v2: bool,
                  leaf: Any) -> None:  # fmt: skip
    n = draw(st.sampled_from([2, 500, 3000]))
    body["inputs"] = [t] * n if v2 else [[0.0] * 4] * n


def _options_of_any_type(draw: st.DrawFn, body: dict[str, Any], t: dict[str, Any], v2: bool,
                         leaf: Any) -> None:  # fmt: skip
    any_value = st.one_of(st.booleans(), st.integers(1, 50), _hostile_leaf)
    options = {"bitwise": draw(any_value), ("mc_samples" if v2 else "samples"): draw(any_value)}
    if v2:
        body["parameters"] = options
    else:
        body.update(options)


_HOSTILE_CLASSES = [_leaf_somewhere, _duplicated_outputs, _huge_shape, _many_keys_somewhere,
                    _many_tensors, _options_of_any_type]  # fmt: skip


@st.composite
def hostile_bodies(draw: st.DrawFn) -> tuple[str, Any, bool]:
    """(route, body, binary?): an otherwise plausible v1 or v2 request carrying one to three
    of the hostile classes: lone surrogates and huge integers anywhere, duplicated
    outputs, huge shapes, hostile key counts, many tensors, options of any type."""
    v2 = draw(st.booleans())
    leaf = draw(_hostile_leaf)
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 4], "datatype": "FP32",
                              "data": [0.1, 0.2, 0.3, 0.4]}  # fmt: skip
    body: dict[str, Any] = {"inputs": [tensor]} if v2 else {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
    for apply in draw(st.lists(st.sampled_from(_HOSTILE_CLASSES), min_size=1, max_size=3)):
        apply(draw, body, tensor, v2, leaf)
    binary = v2 and draw(st.integers(0, 2)) == 0
    return ("/v2/models/{m}/infer" if v2 else "/v1/models/{m}/predict"), body, binary


def _encode_hostile(body: Any) -> bytes:
    """JSON as an attacker writes it: lone surrogates as \\uXXXX escapes (ensure_ascii),
    the huge-integer placeholder as 5,000 digits."""
    return json.dumps(body).encode().replace(f'"{_HUGE}"'.encode(), HUGE_INT.encode())


def _as_binary(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The binary tensor extension's form of a v2 body: the first input's data as raw
    float32 bytes after the JSON header (when it is four plain numbers)."""
    tensor = body["inputs"][0]
    data = tensor.get("data")
    tail = b""
    if isinstance(data, list) and all(type(v) is float for v in data):
        tail = np.asarray(data, dtype="<f4").tobytes()
        tensor = {k: v for k, v in tensor.items() if k != "data"}
        params = dict(tensor.get("parameters") or {})
        params["binary_data_size"] = len(tail)
        tensor["parameters"] = params
        body = {**body, "inputs": [tensor, *body["inputs"][1:]]}
    head = _encode_hostile(body)
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


@settings(FUZZ, max_examples=100)
@given(case=hostile_bodies(), model=st.sampled_from(["reg", "clf"]))
def test_hostile_classes_never_5xx(loop_client: Any, case: tuple[str, Any, bool],
                                   model: str) -> None:  # fmt: skip
    route, body, binary = case
    if binary:
        raw, headers = _as_binary(body)
    else:
        raw, headers = _encode_hostile(body), {"Content-Type": "application/json"}
    status, text = loop_client(route.format(m=model), raw, headers)
    check_answer(status, text)
    if status >= 400:
        assert len(json.loads(text)["error"]) < 400, text[:500]  # never echoes the body
