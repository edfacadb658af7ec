"""Bounded metric labels and the process metrics (one process, and per worker)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from helpers.live_server import app_client
from starlette.types import Message, Receive, Scope, Send
from svc_helpers import make_settings

from service.metrics import ServiceMetrics, WorkerProcessCollector
from service.middleware import METHODS, AccessLogMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """An app with no models: these tests need only its middleware and /metrics."""
    async with app_client(make_settings(tmp_path_factory.mktemp("empty"))) as c:
        yield c


async def test_20000_invented_methods_make_one_series() -> None:
    metrics = ServiceMetrics()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Message) -> None:
        return None

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    mw = AccessLogMiddleware(app, metrics)
    methods = [f"M{i}" for i in range(20_000)] + ["GET", "POST"]
    for m in methods:
        await mw({"type": "http", "method": m, "path": "/", "headers": []}, receive, send)
    series = {
        s.labels["method"]
        for family in metrics.registry.collect()
        if family.name == "mcdrop_http_requests"
        for s in family.samples
        if s.name == "mcdrop_http_requests_total"
    }
    assert series == {"other", "GET", "POST"} and series <= METHODS | {"other"}
    labels = {"route": "unmatched", "method": "other", "status": "405"}
    assert metrics.value("mcdrop_http_requests_total", **labels) == 20_000


async def test_unknown_method_over_the_app_is_other(client: httpx.AsyncClient) -> None:
    for method in ("BREW", "PROPFIND", "X" * 300):
        r = await client.request(method, "/health/live")
        assert 400 <= r.status_code < 500, (method, r.status_code)
    text = (await client.get("/metrics")).text
    assert 'method="other"' in text and "BREW" not in text and "PROPFIND" not in text


async def test_process_metrics_of_a_single_process(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    rss = [ln for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes ")]
    assert len(rss) == 1 and float(rss[0].split()[1]) > 10e6  # torch alone is more
    assert "process_cpu_seconds_total " in text


def test_worker_process_collector_reports_live_workers_only(tmp_path: Path) -> None:
    """Files of this process and of one that exited: only the live one is reported."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (os.getpid(), dead.pid):
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    collector = WorkerProcessCollector(str(tmp_path))
    assert collector.pids() == [os.getpid()]
    families = {f.name: f for f in collector.collect()}
    rss = families["process_resident_memory_bytes"].samples
    assert [s.labels for s in rss] == [{"pid": str(os.getpid())}] and rss[0].value > 0
    cpu = families["process_cpu_seconds"].samples
    assert cpu and cpu[0].value > 0
    assert WorkerProcessCollector(str(tmp_path / "missing")).collect() == []
