"""Connection limits against the real server on loopback, under both HTTP parsers (issue 18
item 6): sockets that never send a byte, slowloris heads and bodies, too many connections,
an oversized head.

The server is uvicorn with exactly the options of ``mcdrop serve``
(:func:`service.launch.uvicorn_options`) in a thread of the test process, one per parser,
with limits of a second or two so that each attack is over in seconds. Raw sockets play
the attacker; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from helpers.live_server import live_app
from svc_helpers import SOURCE, _manifest, tiny_models

from mcdrop.repository import save_model
from service.connections import ConnectionSettings, HttpToolsGuarded, configure
from service.launch import uvicorn_options
from service.settings import Settings

pytestmark = pytest.mark.e2e

IDLE_S, HEAD_S, BODY_S = 1.0, 1.5, 1.0
MIN_RATE = 200  # bytes/s
MAX_CONN = 12
MAX_HEAD = 8 * 1024
SLACK_S = 1.5  # scheduling on a loaded 2-core machine
# h11 (the fallback parser) runs in the full suite; the default httptools in -m "not slow" too
_H11 = pytest.param("h11", marks=pytest.mark.slow)
PARSERS = ["httptools", _H11] if HttpToolsGuarded is not None else ["h11"]
OPEN: list[uvicorn.Server] = []
ROW = {"inputs": [[0.1, 0.2, 0.3, 0.4]], "samples": 8, "seed": 1}


@pytest.fixture(scope="module")
def reg_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("conn-repo")
    torch.manual_seed(0)
    manifest = _manifest("reg", "regression", "build_regressor", tau=4.0)
    save_model(root / "reg", tiny_models.build_regressor(), manifest, SOURCE)
    return root


@pytest.fixture(scope="module", params=PARSERS)
def server(request: pytest.FixtureRequest, reg_repo: Path) -> Iterator[tuple[str, int]]:
    """(base URL, port) of a server with short limits, parser ``request.param``; the
    uvicorn server is in ``OPEN[0]`` (the tests read its count of open connections)."""
    conn = ConnectionSettings(
        idle_timeout_s=IDLE_S, header_timeout_s=HEAD_S, body_timeout_s=BODY_S,
        min_body_rate=MIN_RATE, max_connections=MAX_CONN, max_header_bytes=MAX_HEAD,
        http_parser=request.param,
    )  # fmt: skip
    settings = Settings(models_dir=reg_repo, log_level="warning", drain_seconds=2.0, conn=conn)
    options = uvicorn_options(settings)
    for key in ("host", "port"):
        options.pop(key)
    assert options["http"].endswith(
        "HttpToolsGuarded" if request.param == "httptools" else "H11Guarded"
    )
    try:
        with live_app(settings, options=options) as served:
            OPEN[:] = [served.server]
            yield served.url, served.port
    finally:
        OPEN.clear()
        configure(ConnectionSettings())  # this process's defaults again


def _wait_open(count: int) -> None:
    """Until the server holds ``count`` connections (it accepts them asynchronously)."""
    deadline = time.monotonic() + 5
    while len(OPEN[0].server_state.connections) < count:
        assert time.monotonic() < deadline, len(OPEN[0].server_state.connections)
        time.sleep(0.01)


def _connect(port: int, timeout: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(timeout)
    return s


def _drip(
    s: socket.socket, first: bytes, piece: bytes, every: float, count: int
) -> tuple[bytes, float, int]:
    """Send ``first``, then ``piece`` every ``every`` seconds (``count`` at most) until the
    server answers or closes; returns (what it sent back, seconds, pieces sent)."""
    start = time.monotonic()
    s.settimeout(every)
    s.sendall(first)
    got, sent = b"", 0
    while sent < count:
        try:
            data = s.recv(65536)
            if not data:
                break
            got += data
        except TimeoutError:
            try:
                s.sendall(piece)
                sent += 1
            except OSError:
                break
        except OSError:  # reset: the server closed with our bytes unread
            break
    return got, time.monotonic() - start, sent


def _answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


def test_idle_socket_is_closed(server: tuple[str, int]) -> None:
    """A socket that never sends a byte is closed after the idle timeout, silently."""
    _, port = server
    with closing(_connect(port, IDLE_S + SLACK_S + 2)) as s:
        start = time.monotonic()
        data = s.recv(100)
        took = time.monotonic() - start
    assert data == b""
    assert IDLE_S * 0.8 <= took <= IDLE_S + SLACK_S, took


def test_slow_headers_get_408(server: tuple[str, int]) -> None:
    """A head sent one line every 0.4 s (it never ends) is cut at the header timeout."""
    _, port = server
    with closing(_connect(port, 1)) as s:
        got, took, sent = _drip(
            s, b"GET /health/live HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n", 0.4, 30
        )
    assert HEAD_S * 0.8 <= took <= HEAD_S + SLACK_S, took
    assert sent < 30
    status, body = _answer(got)
    assert status == 408 and "HEADER_TIMEOUT_S" in body["error"]


def test_slow_body_gets_408(server: tuple[str, int]) -> None:
    """A body at about 3 bytes/s (under the minimum rate) is cut after one window."""
    url, port = server
    head = (
        b"POST /v1/models/reg/predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{"
    )
    with closing(_connect(port, 1)) as s:
        got, took, sent = _drip(s, head, b" ", 0.3, 40)
    assert took <= BODY_S + SLACK_S, took
    assert sent < 40
    if got:  # the answer can be lost to a reset (the rest of our body is unread)
        status, body = _answer(got)
        assert status == 408 and "MIN_BODY_RATE" in body["error"]
    # A body sent at once on the same server is served.
    assert httpx.post(url + "/v1/models/reg/predict", json=ROW, timeout=10).status_code == 200


def test_slow_heads_at_the_cap_make_room_for_clients(server: tuple[str, int]) -> None:
    """MAX_CONN sockets sending their heads slowly hold every slot: a new client is served
    all the same, and one slow socket (the oldest) gets the 503."""
    url, port = server
    held = [_connect(port, 2) for _ in range(MAX_CONN)]
    try:
        for s in held:
            s.sendall(b"GET /health/live HTTP/1.1\r\n")
        _wait_open(MAX_CONN)
        time.sleep(0.05)  # the heads are in
        start = time.monotonic()
        assert httpx.get(url + "/health/live", timeout=5).status_code == 200
        assert time.monotonic() - start < 0.5
        # Well within the header timeout, only the evicted socket has anything to read.
        readable, _, _ = select.select(held, [], [], 0.3)
        assert len(readable) == 1, len(readable)
        status, body = _answer(readable[0].recv(65536))
        assert status == 503 and "MAX_CONNECTIONS" in body["error"]
    finally:
        for s in held:
            s.close()


def test_over_the_cap_with_requests_under_way_a_fast_503(server: tuple[str, int]) -> None:
    """With MAX_CONN requests under way (their bodies pending), a new client gets a JSON
    503 at once; once they are gone, clients are served again."""
    url, port = server
    head = b"POST /v1/models/reg/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
    held = [_connect(port, 5) for _ in range(MAX_CONN)]
    try:
        for s in held:
            s.sendall(head)
        _wait_open(MAX_CONN)
        time.sleep(0.05)  # the heads are in: each has a request under way
        start = time.monotonic()
        r = httpx.get(url + "/health/live", timeout=5)
        took = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert "MAX_CONNECTIONS" in r.json()["error"]
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert took < 0.5, took
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 3
    while (status := httpx.get(url + "/health/live", timeout=5).status_code) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_oversized_head_gets_431_without_stalling(server: tuple[str, int]) -> None:
    """A 32 MiB header is refused after MAX_HEAD bytes; /health/live stays fast meanwhile."""
    url, port = server
    result: dict[str, Any] = {}

    def attack() -> None:
        with closing(_connect(port, 5)) as s:
            try:
                s.sendall(b"GET /health/live HTTP/1.1\r\nX-Big: " + b"a" * (32 << 20))
            except OSError as exc:  # the server closed: the rest is refused
                result["send_error"] = type(exc).__name__
            try:
                result["got"] = s.recv(65536)
            except OSError:
                result["got"] = b""

    sender = threading.Thread(target=attack)
    latencies = []
    with httpx.Client(base_url=url, timeout=5) as client:
        sender.start()
        end = time.monotonic() + 5
        while sender.is_alive() and time.monotonic() < end:
            t = time.monotonic()
            assert client.get("/health/live").status_code == 200
            latencies.append(time.monotonic() - t)
        sender.join(5)
    assert not sender.is_alive()
    assert "send_error" in result  # the server stopped reading long before 32 MiB
    if result["got"]:
        status, body = _answer(result["got"])
        assert status == 431 and "MAX_HEADER_BYTES" in body["error"]
    assert latencies and max(latencies) < 0.5, latencies


def test_head_over_the_limit_in_one_piece_gets_431(server: tuple[str, int]) -> None:
    """The limit is exact: a head one header over it, sent at once, is refused; a head
    just under it, followed by a body four times the limit, is served."""
    url, _ = server
    r = httpx.get(url + "/health/live", headers={"x-pad": "a" * MAX_HEAD}, timeout=5)
    assert r.status_code == 431 and "MAX_HEADER_BYTES" in r.json()["error"]
    r = httpx.post(
        url + "/v1/models/reg/predict",
        content=json.dumps(ROW).encode() + b" " * (4 * MAX_HEAD),  # JSON allows the spaces
        headers={"x-pad": "a" * (MAX_HEAD - 400), "content-type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 200, r.text


def test_keep_alive_and_normal_bodies_are_served(server: tuple[str, int]) -> None:
    """Ordinary clients never meet the limits: requests on one keep-alive connection with
    pauses under the idle timeout, a body in pieces faster than the minimum rate."""
    url, port = server
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            assert client.post("/v1/models/reg/predict", json=ROW).status_code == 200
            time.sleep(IDLE_S / 3)
    body = json.dumps(ROW).encode()
    head = b"POST /v1/models/reg/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with closing(_connect(port, 10)) as s:
        s.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 16):  # 16 bytes every 20 ms: 800 bytes/s
            s.sendall(body[i : i + 16])
            time.sleep(0.02)
        got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]


def test_bad_connection_settings_name_the_variable() -> None:
    for env, var in [
        ({"MCDROP_CONN_IDLE_TIMEOUT_S": "0"}, "MCDROP_CONN_IDLE_TIMEOUT_S"),
        ({"MCDROP_CONN_MAX_CONNECTIONS": "many"}, "MCDROP_CONN_MAX_CONNECTIONS"),
        ({"MCDROP_CONN_HTTP_PARSER": "llhttp"}, "MCDROP_CONN_HTTP_PARSER"),
        ({"MCDROP_CONN_MAX_HEADER_BYTES": "10"}, "MCDROP_CONN_MAX_HEADER_BYTES"),
    ]:
        with pytest.raises(ValueError, match=var):
            Settings.from_env(env)
    assert Settings.from_env({}).conn == ConnectionSettings()
    env = {
        "MCDROP_CONN_IDLE_TIMEOUT_S": "2", "MCDROP_CONN_HEADER_TIMEOUT_S": "3",
        "MCDROP_CONN_BODY_TIMEOUT_S": "4", "MCDROP_CONN_MIN_BODY_RATE": "50",
        "MCDROP_CONN_MAX_CONNECTIONS": "60", "MCDROP_CONN_MAX_HEADER_BYTES": "2048",
        "MCDROP_CONN_HTTP_PARSER": "h11",
    }  # fmt: skip
    conn = Settings.from_env(env).conn
    assert (conn.idle_timeout_s, conn.header_timeout_s, conn.body_timeout_s) == (2, 3, 4)
    assert (conn.min_body_rate, conn.max_connections, conn.max_header_bytes) == (50, 60, 2048)
    assert conn.http_parser == "h11"
