"""Hardening against hostile input, against the real server on loopback (issue 18).

Each attack is sent a bounded number of times to uvicorn serving the tiny models from a
thread (``live_server``); the contract: a 4xx naming the problem, never a 5xx, and error
messages that stay short whatever the request holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.live_server import live_server

from service.errors import SHOWN_CHARS, shown

V2 = "/v2/models/reg/infer"
V1 = "/v1/models/reg/predict"
TENSOR = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def client(tiny_repo: Path) -> Iterator[httpx.Client]:
    with live_server(models_dir=tiny_repo) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _post(client: httpx.Client, path: str, raw: str) -> httpx.Response:
    return client.post(path, content=raw.encode("ascii"), headers=HEADERS)


def _error(r: httpx.Response, status: int, needle: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    message = r.json()["error"]
    assert needle in message, message
    return str(message)


# ------------------------------------------------------------------ lone surrogates, item 1

LONE = r"\ud800"  # the JSON escape, as the attacker sends it
# S: where the surrogate goes; T: a valid input tensor.
SURROGATE_BODIES = {
    "v2 id": ('{"id": "S", "inputs": [T]}', V2),
    "v2 output name": ('{"inputs": [T], "outputs": [{"name": "S"}]}', V2),
    "v2 input name": ('{"inputs": [{"name": "S", "shape": [1, 4], "datatype": "FP32",'
                      ' "data": [0, 0, 0, 0]}]}', V2),
    "v2 unknown key": ('{"S": 1, "inputs": [T]}', V2),
    "v1 field": ('{"inputs": [[0, 0, 0, 0]], "mc_samples": "S"}', V1),
    "v1 unknown key": ('{"inputs": [[0, 0, 0, 0]], "S": 1}', V1),
}  # fmt: skip


@pytest.mark.parametrize("where", sorted(SURROGATE_BODIES))
def test_lone_surrogate_anywhere_is_a_400(client: httpx.Client, where: str) -> None:
    template, path = SURROGATE_BODIES[where]
    raw = template.replace('"S"', f'"{LONE}"').replace("[T]", f"[{json.dumps(TENSOR)}]")
    _error(_post(client, path, raw), 400, "lone UTF-16 surrogate")


def test_surrogate_pairs_are_still_fine(client: httpx.Client) -> None:
    raw = '{"id": "\\ud83d\\ude00", "inputs": [T]}'.replace("T", json.dumps(TENSOR))
    r = _post(client, V2, raw)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["id"] == "\U0001f600"


def test_error_messages_do_not_echo_unbounded_text(client: httpx.Client) -> None:
    name = "x" * 100_000
    body = {"inputs": [TENSOR], "outputs": [{"name": name}]}
    message = _error(client.post(V2, json=body), 422, "unknown output")
    assert len(message) < SHOWN_CHARS + 200, len(message)


def test_shown_cuts_and_escapes() -> None:
    assert shown("mean") == "'mean'"
    assert shown("a" * 100, limit=8) == "'aaaaaaaa'…"
    assert shown("\ud800") == "'\\ud800'"
    shown("\ud800é").encode("utf-8")  # encodable: it can go in a JSON answer


# ------------------------------------------------------------------ amplification, item 2


def test_duplicate_outputs_are_a_422_naming_the_duplicate(client: httpx.Client) -> None:
    body = {"inputs": [TENSOR], "outputs": [{"name": "mean"}] * 100}
    _error(client.post(V2, json=body), 422, "output 'mean' is requested more than once")
    # 10,000 of them are refused before parsing, by the body's key count (service.body_limits).
    body = {"inputs": [TENSOR], "outputs": [{"name": "mean"}] * 10_000}
    _error(client.post(V2, json=body), 422, "object keys")
    body = {"inputs": [TENSOR], "outputs": [{"name": "std"}, {"name": "mean"}, {"name": "std"}]}
    _error(client.post(V2, json=body), 422, "output 'std' is requested more than once")


def test_distinct_outputs_still_answer_each_once(client: httpx.Client) -> None:
    body = {"inputs": [TENSOR], "outputs": [{"name": "std"}, {"name": "mean"}]}
    r = client.post(V2, json=body)
    assert r.status_code == 200, r.text[:300]
    assert [o["name"] for o in r.json()["outputs"]] == ["std", "mean"]


# ------------------------------------------------------------------ huge integers (all places)

HUGE = "9" * 5000  # past Python's 4,300-digit int conversion limit
# N: where the integer literal goes.
HUGE_BODIES = {
    "v1 inputs": ('{"inputs": [[N, 0, 0, 0]]}', V1),
    "v1 samples": ('{"inputs": [[0, 0, 0, 0]], "mc_samples": N}', V1),
    "v1 unknown field": ('{"inputs": [[0, 0, 0, 0]], "zzz": N}', V1),
    "v2 data": ('{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",'
                ' "data": [N, 0, 0, 0]}]}', V2),
}  # fmt: skip


@pytest.mark.parametrize("where", sorted(HUGE_BODIES))
def test_huge_integer_literals_are_a_400(client: httpx.Client, where: str) -> None:
    template, path = HUGE_BODIES[where]
    _error(_post(client, path, template.replace("N", HUGE)), 400, "number too long")
