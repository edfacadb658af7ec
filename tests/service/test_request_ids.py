"""Request ids and W3C trace context: accepted, replaced when hostile, echoed, logged."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from helpers.live_server import app_client
from svc_helpers import make_settings

from service import launch, tracing

pytestmark = pytest.mark.anyio

ROW = [0.5, -1.0, 2.0, 0.25]
HEX32 = re.compile(r"[0-9a-f]{32}")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
async def client(tiny_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(tiny_repo)) as c:
        yield c


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("f81d4fae-7dec-11d0-a765-00a0c91e6bf6", True),
        ("req.42:a/b+c=d@e~f_g", True),
        ("a" * tracing.MAX_REQUEST_ID, True),
        ("a" * (tracing.MAX_REQUEST_ID + 1), False),
        ("", False),
        ("-leading-dash", False),
        ("has space", False),
        ('quote"', False),
        ("line\nbreak", False),
        ("<script>", False),
        ("é", False),
    ],
)
def test_request_id_charset_and_length(value: str, ok: bool) -> None:
    assert (tracing.clean_request_id(value) == value) is ok


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (f"00-{TRACE}-{PARENT}-01", (TRACE, PARENT, "01")),
        (f" 00-{TRACE}-{PARENT}-00 ", (TRACE, PARENT, "00")),  # optional whitespace
        (f"01-{TRACE}-{PARENT}-01-future-fields", (TRACE, PARENT, "01")),  # later version
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{PARENT}-01", None),  # forbidden version
        (f"00-{TRACE.upper()}-{PARENT}-01", None),  # lowercase only
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        (f"00-{TRACE}-{PARENT}-1", None),
        ("garbage", None),
        ("0" * 10_000, None),
    ],
)
def test_traceparent_validation(value: str, parsed: tuple[str, str, str] | None) -> None:
    assert tracing.parse_traceparent(value) == parsed


async def test_request_id_echoed_generated_or_replaced(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = [(await client.get("/v2/health/live")).headers["x-request-id"] for _ in range(2)]
    assert all(HEX32.fullmatch(g) for g in generated) and generated[0] != generated[1]
    for hostile in ("x" * 5000, "bad id", "<img src=x>", "a\tb"):
        got = await client.get("/v2/health/live", headers={"X-Request-ID": hostile})
        assert HEX32.fullmatch(got.headers["x-request-id"]), hostile  # replaced, not echoed
    # Errors carry it too (a 404 of the app, a 413 of the body limit).
    r = await client.get("/nope", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"
    big = {"inputs": [ROW] * 10_000}
    r = await client.post("/v1/models/reg/predict", json=big, headers={"X-Request-ID": "big-1"})
    assert r.status_code == 413 and r.headers["x-request-id"] == "big-1"


async def test_traceparent_kept_or_started(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/live", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    version, trace, span, flags = r.headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert re.fullmatch(r"[0-9a-f]{16}", span) and span not in (PARENT, "0" * 16)
    for bad in (None, f"00-{'0' * 32}-{PARENT}-01", "nonsense"):
        headers = {"traceparent": bad} if bad else {}
        got = (await client.get("/health/live", headers=headers)).headers["traceparent"]
        parsed = tracing.parse_traceparent(got)
        assert parsed is not None and parsed[0] != TRACE and parsed[2] == "00", bad


async def test_v2_body_id_is_the_request_id_unless_a_header_names_one(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "id": "v2-req-7",
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
    }
    r = await client.post("/v2/models/reg/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "v2-req-7" and r.headers["x-request-id"] == "v2-req-7"
    r = await client.post("/v2/models/reg/infer", json=body, headers={"X-Request-ID": "hdr-1"})
    assert r.json()["id"] == "v2-req-7" and r.headers["x-request-id"] == "hdr-1"
    # A body id that is no acceptable request id is echoed in the body (the protocol) only.
    r = await client.post("/v2/models/reg/infer", json={**body, "id": "two words"})
    assert r.json()["id"] == "two words" and HEX32.fullmatch(r.headers["x-request-id"])
    # A request refused by validation is still named by its body id.
    r = await client.post("/v2/models/reg/infer", json={**body, "inputs": []})
    assert r.status_code == 422 and r.headers["x-request-id"] == "v2-req-7"


async def test_every_log_line_of_a_request_names_it(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the service's logging (launch.configure_logging), the error line the request
    causes and its access line both carry its id; lines outside a request carry "-"."""
    names = ("mcdrop", "mcdrop.access")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names}  # fmt: skip
    try:
        for n in names:  # a handler an earlier test attached writes to that test's stderr
            logging.getLogger(n).handlers[:] = []
        launch.configure_logging("info")
        capsys.readouterr()
        crash = {"inputs": [[13.0] * 4]}  # the slow model raises on it: a logged 500
        headers = {"X-Request-ID": "crash-1", "traceparent": f"00-{TRACE}-{PARENT}-01"}
        r = await client.post("/v1/models/slow/predict", json=crash, headers=headers)
        assert r.status_code == 500
        logging.getLogger("mcdrop.service").info("outside any request")
        lines = capsys.readouterr().err.splitlines()
    finally:
        for n, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(n)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    errors = [ln for ln in lines if "unhandled error" in ln]
    assert errors and all("[crash-1]" in ln for ln in errors), lines
    access = [json.loads(ln) for ln in lines if ln.startswith("{")]
    assert [(a["request_id"], a["trace_id"]) for a in access] == [("crash-1", TRACE)]
    assert any("[-]: outside any request" in ln for ln in lines), lines


async def test_opentelemetry_spans_when_turned_on(tiny_repo: Path) -> None:
    """MCDROP_OPENTELEMETRY=true: a server span in the caller's trace, the response's
    traceparent naming it, and the queue-wait and batch-compute spans as its children."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service import otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the process's provider, as an embedding program sets
    assert otel.active() is None  # off by default
    try:
        async with app_client(make_settings(tiny_repo, opentelemetry=True)) as c:
            assert otel.active() is not None
            headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
            r = await c.post("/v1/models/reg/predict", json={"inputs": [ROW]}, headers=headers)
            assert r.status_code == 200, r.text
    finally:
        otel.disable()
    finished = exporter.get_finished_spans()
    spans = {s.name: s for s in finished}
    # One span each: the framework's own instrumentation (FastAPI >= 0.165 has one) would
    # add a second server span per request, a duplicate in every trace.
    assert sorted(s.name for s in finished) == sorted(
        ["HTTP POST /v1/models/{name}/predict", "mcdrop.queue_wait", "mcdrop.batch_compute"]
    ), [(s.name, s.kind) for s in finished]
    server = spans["HTTP POST /v1/models/{name}/predict"]
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE and f"{server.parent.span_id:016x}" == PARENT
    assert r.headers["traceparent"] == f"00-{TRACE}-{server.context.span_id:016x}-01"
    wait, compute = spans["mcdrop.queue_wait"], spans["mcdrop.batch_compute"]
    for child in (wait, compute):
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.attributes is not None and child.attributes["mcdrop.model"] == "reg"
    assert wait.start_time is not None and wait.end_time is not None
    assert compute.start_time is not None and compute.end_time is not None
    assert server.start_time is not None and server.end_time is not None
    # In time order: the request arrives, waits, is computed, is answered.
    assert server.start_time <= wait.start_time <= wait.end_time == compute.start_time
    assert compute.start_time < compute.end_time <= server.end_time
