"""``mcdrop serve`` past its drain, and its idle timeout with the default settings (issue 18
items 6 and 7), against the real command in a subprocess on loopback.

One server serves a model whose forward pass sleeps ``CHUNK_S`` (one chunk of the engine)
for a marked input (``marker_sleep_model.py``).
A socket that never sends a byte is closed within 15 s with the default limits. Then a
request still computing when ``MCDROP_DRAIN_SECONDS`` ends gets the service's JSON 503
(not uvicorn's plain-text 500), and the process exits within the drain plus one chunk.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import marker_sleep_model
import pytest
import torch
from helpers.live_server import ServerProcess, start_server
from marker_sleep_model import MARKER, build
from svc_helpers import _manifest

from mcdrop.repository import save_model
from service.connections import ConnectionSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # mcdrop serve subprocesses, a 5 s idle wait

CHUNK_S = 2.0  # the marked forward pass sleeps this long (one chunk)
DRAIN_S = 0.3
SLACK_S = 2.0  # process start-up of the signal handling and scheduling on 2 shared cores


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("shutdown-repo")
    torch.manual_seed(0)
    manifest = _manifest("slow", "regression", "build", max_batch_rows=1, config={"delay": CHUNK_S})
    save_model(root / "slow", build(delay=CHUNK_S), manifest, Path(marker_sleep_model.__file__))
    env = {"MCDROP_DRAIN_SECONDS": str(DRAIN_S), "MCDROP_GRPC_PORT": "0"}
    log = tmp_path_factory.mktemp("shutdown-log") / "server.log"
    with start_server(root, env, log_path=log, ready_timeout=90) as s:
        yield s


def test_idle_socket_closed_within_15_s_by_default(server: ServerProcess) -> None:
    default = ConnectionSettings().idle_timeout_s
    assert default <= 15
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.settimeout(default + SLACK_S)
        start = time.monotonic()
        assert s.recv(100) == b""
        took = time.monotonic() - start
    assert default * 0.8 <= took <= default + SLACK_S, took


def test_request_past_the_drain_gets_json_503_and_the_process_exits(
    server: ServerProcess,
) -> None:
    answer: dict[str, Any] = {}

    def call() -> None:
        body = {"inputs": [[MARKER, 0.2, 0.3, 0.4]], "samples": 4}
        r = httpx.post(server.url + "/v1/models/slow/predict", json=body, timeout=30)
        answer.update(status=r.status_code, type=r.headers["content-type"], body=r.json())
        answer["at"] = time.monotonic()

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the request is in the engine (its forward pass takes CHUNK_S)
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    caller.join(DRAIN_S + CHUNK_S + SLACK_S + 5)
    rc = server.proc.wait(DRAIN_S + CHUNK_S + SLACK_S + 5)
    exited = time.monotonic() - sent
    assert answer["status"] == 503 and answer["type"] == "application/json", answer
    assert "shutting down" in answer["body"]["error"]
    assert answer["at"] - sent <= DRAIN_S + SLACK_S
    assert rc == -signal.SIGTERM
    assert exited <= DRAIN_S + CHUNK_S + SLACK_S, exited
    log = server.log()
    assert "Internal Server Error" not in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith('{"ts"')]
    assert [a["status"] for a in access if a["route"] == "/v1/models/{name}/predict"] == [503]
