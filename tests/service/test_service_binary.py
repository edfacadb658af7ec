"""Triton's binary tensor extension, any Content-Type and compressed bodies on /v2.

Real clients in their default modes (tritonclient.http, tritonclient.http.aio) against a
live server on loopback, compared with JSON /v2 for the same seed; malformed binary bodies
and compression bombs by hand.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.live_server import app_client, live_server
from helpers.tolerance import assert_close_f32
from svc_helpers import make_settings

pytestmark = pytest.mark.anyio

X = np.array([[0.5, -1.0, 2.0, 0.25], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
PARAMS = {"mc_samples": 20, "seed": 3}
LIMIT = 64 * 1024  # make_settings' max_body_bytes


@pytest.fixture(scope="module")
async def client(tiny_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(tiny_repo)) as c:
        yield c


@pytest.fixture(scope="module")
def url(tiny_repo: Path) -> Iterator[str]:
    with live_server(models_dir=tiny_repo) as base:
        yield base


def _json_outputs(base: str, model: str) -> dict[str, np.ndarray]:
    tensor = {"name": "input", "shape": list(X.shape), "datatype": "FP32",
              "data": X.ravel().tolist()}  # fmt: skip
    r = httpx.post(f"{base}/v2/models/{model}/infer",
                   json={"inputs": [tensor], "parameters": PARAMS})  # fmt: skip
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
            for o in r.json()["outputs"]}  # fmt: skip


def _binary_body(header: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


def _error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.json()["error"]


# ------------------------------------------------------------------------------ real clients


def test_tritonclient_default_binary_mode(url: str) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        for model in ("clf", "reg"):
            want = _json_outputs(url, model)
            inp = httpclient.InferInput("input", list(X.shape), "FP32")
            inp.set_data_from_numpy(X)  # binary_data=True by default
            outs = [httpclient.InferRequestedOutput(n) for n in want]  # binary by default
            res = client.infer(model, [inp], outputs=outs, parameters=PARAMS)
            for name, expected in want.items():
                got = res.as_numpy(name)
                assert got is not None and got.dtype == np.float32
                assert_close_f32(got, expected, what=f"{model}.{name}")
            # No outputs named: every output, in JSON (tritonclient's default then).
            res = client.infer(model, [inp], parameters=PARAMS)
            for name, expected in want.items():
                assert_close_f32(res.as_numpy(name), expected, what=f"{model}.{name} (all)")
    finally:
        client.close()


def test_tritonclient_class_count_is_refused(url: str) -> None:
    """Triton's top-k ``classification`` output parameter is refused, not ignored."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        out = httpclient.InferRequestedOutput("probs", class_count=2)
        with pytest.raises(InferenceServerException) as err:
            client.infer("clf", [inp], outputs=[out], parameters=PARAMS)
        assert "422" in str(err.value.status()) and "classification" in str(err.value)
    finally:
        client.close()


async def test_tritonclient_aio_default_modes(url: str) -> None:
    import tritonclient.http.aio as aioclient

    want = _json_outputs(url, "clf")
    client = aioclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        for binary in (True, False):  # aiohttp sends application/octet-stream for JSON too
            inp = aioclient.InferInput("input", list(X.shape), "FP32")
            inp.set_data_from_numpy(X, binary_data=binary)
            outs = [aioclient.InferRequestedOutput(n, binary_data=binary) for n in want]
            res = await client.infer("clf", [inp], outputs=outs, parameters=PARAMS)
            for name, expected in want.items():
                assert_close_f32(res.as_numpy(name), expected, what=f"{name} ({binary=})")
    finally:
        await client.close()


# ------------------------------------------------------------------------------ by hand


async def test_binary_response_format(client: httpx.AsyncClient) -> None:
    tensor = {"name": "input", "shape": [2, 4], "datatype": "FP32",
              "parameters": {"binary_data_size": X.nbytes}}  # fmt: skip
    header = {"inputs": [tensor], "parameters": {**PARAMS, "binary_data_output": True}}
    body, headers = _binary_body(header, X.tobytes())
    r = await client.post("/v2/models/reg/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    pos, tail = 0, r.content[n:]
    for out in head["outputs"]:
        assert "data" not in out and out["datatype"] == "FP32"
        size = out["parameters"]["binary_data_size"]
        assert size == 4 * int(np.prod(out["shape"]))
        pos += size
    assert pos == len(tail)  # every byte belongs to an output


@pytest.mark.parametrize(
    ("tensor", "tail", "declared", "fragment"),
    [
        ({"datatype": "FP32", "parameters": {"binary_data_size": 31}}, 31, None, "needs 32"),
        ({"datatype": "FP32", "parameters": {"binary_data_size": 32}}, 31, None, "runs past"),
        (
            {"datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}},
            32,
            None,
            "add up",
        ),  # fmt: skip
        ({"datatype": "FP32", "parameters": {"binary_data_size": 32}}, 32, "99999", "only"),
        ({"datatype": "FP32", "parameters": {"binary_data_size": 32}}, 32, "-1", "integer"),
        ({"datatype": "FLOAT", "parameters": {"binary_data_size": 32}}, 32, None, "does not"),
        ({"datatype": "FP32", "parameters": {"binary_data_size": "32"}}, 32, None, "integer"),
        (
            {"datatype": "FP32", "shape": [2, "4"], "parameters": {"binary_data_size": 32}},
            32,
            None,
            "shape of integers",
        ),  # fmt: skip
        (
            {"datatype": "FP32", "data": [0] * 8, "parameters": {"binary_data_size": 32}},
            32,
            None,
            "both data",
        ),  # fmt: skip
    ],
)
async def test_malformed_binary_bodies(
    client: httpx.AsyncClient, tensor: dict[str, Any], tail: int, declared: str | None,
    fragment: str,
) -> None:  # fmt: skip
    t = {"name": "input", "shape": [2, 4], **tensor}
    body, headers = _binary_body({"inputs": [t]}, b"\0" * tail)
    if declared is not None:
        headers["Inference-Header-Content-Length"] = declared
    _error(await client.post("/v2/models/reg/infer", content=body, headers=headers), 400,
           fragment)  # fmt: skip


async def test_binary_bytes_and_types(client: httpx.AsyncClient) -> None:
    # A truncated BYTES element and a truncated length prefix are 400.
    raw = struct.pack("<I", 10) + b"abc"
    t = {"name": "input", "shape": [1], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    body, headers = _binary_body({"inputs": [t]}, raw)
    _error(await client.post("/v2/models/reg/infer", content=body, headers=headers), 400,
           "runs past")  # fmt: skip
    t["parameters"] = {"binary_data_size": 2}
    body, headers = _binary_body({"inputs": [t]}, b"\1\0")
    _error(await client.post("/v2/models/reg/infer", content=body, headers=headers), 400,
           "truncated")  # fmt: skip
    # Well-formed BYTES reach the JSON codec's checks (reg takes no text): 422, as for JSON.
    raw = struct.pack("<I", 2) + b"hi"
    t["parameters"] = {"binary_data_size": len(raw)}
    body, headers = _binary_body({"inputs": [t]}, raw)
    _error(await client.post("/v2/models/reg/infer", content=body, headers=headers), 422,
           "takes no text")  # fmt: skip
    # FP64 in binary equals FP32 in JSON for the same values and seed.
    x64 = X.astype(np.float64)
    t = {"name": "input", "shape": [2, 4], "datatype": "FP64",
         "parameters": {"binary_data_size": x64.nbytes}}  # fmt: skip
    body, headers = _binary_body({"inputs": [t], "parameters": PARAMS}, x64.tobytes())
    r = await client.post("/v2/models/reg/infer", content=body, headers=headers)
    j = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}
    ref = await client.post("/v2/models/reg/infer", json={"inputs": [j], "parameters": PARAMS})
    assert r.status_code == ref.status_code == 200, r.text
    for a, b in zip(r.json()["outputs"], ref.json()["outputs"], strict=True):
        assert_close_f32(a["data"], b["data"], what=a["name"])


# ------------------------------------------------------------------------------ item 2


def _v2_json() -> bytes:
    t = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}
    return json.dumps({"inputs": [t], "parameters": PARAMS}).encode()


async def test_v2_any_content_type_v1_strict(client: httpx.AsyncClient) -> None:
    url = "/v2/models/reg/infer"
    ref = await client.post(url, content=_v2_json(), headers={"content-type": "application/json"})
    for ctype in (None, "application/octet-stream", "text/plain"):
        headers = {} if ctype is None else {"content-type": ctype}
        r = await client.post(url, content=_v2_json(), headers=headers)
        assert r.status_code == 200, (ctype, r.text)
        assert r.json()["outputs"] == ref.json()["outputs"]
    v1 = json.dumps({"inputs": X.tolist()}).encode()
    r = await client.post("/v1/models/reg/predict", content=v1,
                          headers={"content-type": "text/plain"})  # fmt: skip
    assert r.status_code == 415


async def test_compressed_bodies(client: httpx.AsyncClient) -> None:
    ref = await client.post("/v2/models/reg/infer", content=_v2_json())
    v1 = json.dumps({"inputs": X.tolist(), "samples": 20, "seed": 3}).encode()
    v1_ref = await client.post("/v1/models/reg/predict", json=json.loads(v1))
    for enc, squash in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        headers = {"content-encoding": enc, "content-type": "application/json"}
        r = await client.post("/v2/models/reg/infer", content=squash(_v2_json()), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == ref.json()["outputs"]
        r = await client.post("/v1/models/reg/predict", content=squash(v1), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == v1_ref.json()
    bad = {"content-encoding": "gzip"}
    _error(await client.post("/v2/models/reg/infer", content=b"not gzip", headers=bad), 400,
           "Content-Encoding")  # fmt: skip
    cut = gzip.compress(_v2_json())[:-12]
    _error(await client.post("/v2/models/reg/infer", content=cut, headers=bad), 400,
           "truncated")  # fmt: skip
    r = await client.post("/v2/models/reg/infer", content=b"{}",
                          headers={"content-encoding": "br"})  # fmt: skip
    _error(r, 415, "Content-Encoding")


async def test_gzip_bomb_is_413_quickly(client: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024), compresslevel=9)  # 50 MiB
    assert len(bomb) < LIMIT  # the compressed body passes the size check
    start = time.monotonic()
    r = await client.post("/v2/models/reg/infer", content=bomb,
                          headers={"content-encoding": "gzip"})  # fmt: skip
    elapsed = time.monotonic() - start
    _error(r, 413, "larger than")
    assert elapsed < 2.0, elapsed  # inflating stops at the limit, not at 50 MiB
