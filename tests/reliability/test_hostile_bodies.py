"""Hostile request bodies against the real ``mcdrop serve`` on loopback (issue 18 items 1, 5).

Each class gets its answer checked once, then several senders repeat them for a few
seconds while ``/health/live`` and a one-row prediction are probed: the event loop must
stay responsive (health p99 under 100 ms) and nothing may answer 5xx. The server runs in a
subprocess, so the senders do not share its interpreter lock. Bounded in time and count.
"""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.live_server import ServerProcess, start_server
from svc_helpers import write_tiny_repo

from service import body as body_module
from service import body_limits
from service.body import parse_json
from service.body_limits import body_bounds

MIB = 1 << 20
V1 = "/v1/models/reg/predict"
V2 = "/v2/models/reg/infer"
ROW = {"inputs": [[0.1, 0.2, 0.3, 0.4]], "samples": 16}
ATTACK_SECONDS = 3.0
SENDERS = 3
HEALTH_P99_S = 0.100

# reg takes 8 rows of 4 numbers: its body limit is FIXED_BYTES plus a little.
REG = body_bounds("reg", (4,), 8, False, 16 * MIB, 100)
KEYS = b"{" + b",".join(b'"k%d": 0' % i for i in range(20_000)) + b"}"  # 200 KB
LISTS = b'{"inputs": [' + b"[0]," * 60_000 + b"[0]]}"  # 240 KB of containers
HUGE_INT = b'{"inputs": [[' + b"9" * 5000 + b", 0, 0, 0]]}"
SURROGATE = b'{"inputs": [[0, 0, 0, 0]], "\\ud800": 1}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = write_tiny_repo(tmp_path_factory.mktemp("hostile-repo"), broken=False)
    env = {"MCDROP_LOG_LEVEL": "warning", "MCDROP_MAX_BODY_BYTES": str(16 * MIB)}
    with start_server(repo, env, ready_timeout=60) as s:
        yield s


def _raw(port: int, path: str, body: bytes, *, declared: int | None, chunked: bool) -> int:
    """POST ``body`` over a raw socket (as an attacker would: no client library), declaring
    ``declared`` bytes or sending it chunked; the status, or 0 when the server closed the
    connection before an answer could be read (it stopped reading a body it refused)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {declared}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head.encode() + b"\r\n")
            step = 256 << 10
            for i in range(0, len(body), step):
                part = body[i : i + step]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                s.sendall(b"0\r\n\r\n")
            answer = s.recv(4096)
        except OSError:  # reset: the server answered early and closed
            return 0
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


BIG = b'{"inputs": [' + b"0.5, " * (16 * MIB // 5 - 10) + b"0.5]}"  # 16 MiB of numbers
ATTACKS: dict[str, Callable[[int], int]] = {
    "16 MiB, Content-Length": lambda p: _raw(p, V1, BIG, declared=len(BIG), chunked=False),
    "16 MiB, chunked": lambda p: _raw(p, V2, BIG, declared=None, chunked=True),
    "16 MiB, unknown model": lambda p: _raw(p, "/v1/models/nope/predict", BIG,
                                            declared=len(BIG), chunked=False),
    "20,000 keys": lambda p: _raw(p, V1, KEYS, declared=len(KEYS), chunked=False),
    "60,000 lists": lambda p: _raw(p, V1, LISTS, declared=len(LISTS), chunked=False),
    "5,000-digit integer": lambda p: _raw(p, V1, HUGE_INT, declared=len(HUGE_INT), chunked=False),
    "lone surrogate": lambda p: _raw(p, V1, SURROGATE, declared=len(SURROGATE), chunked=False),
}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
def test_each_hostile_body_gets_its_4xx(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(V1, content=BIG, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and f"{REG.max_bytes:,} bytes" in r.json()["error"], r.text
        assert "model 'reg'" in r.json()["error"]
        chunks = (BIG[i : i + MIB] for i in range(0, len(BIG), MIB))  # no Content-Length
        r = c.post(V2, content=chunks)
        assert r.status_code == 413, r.text[:200]
        for raw, status, needle in [(KEYS, 422, "20,000 object keys"),
                                    (LISTS, 422, "arrays and objects"),
                                    (b"[" * 5000 + b"]" * 5000, 400, "nested deeper"),
                                    (HUGE_INT, 400, "number too long"),
                                    (SURROGATE, 400, "lone UTF-16 surrogate")]:  # fmt: skip
            r = c.post(V1, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == status and needle in r.json()["error"], r.text[:300]
            assert len(r.text) < 300
        assert c.post("/v1/models/nope/predict", content=BIG).status_code == 404
        assert c.post(V1, json=ROW).status_code == 200  # an honest request still works
    # Every raw attacker sees the same answers (or a closed connection for a refused body).
    for name, attack in ATTACKS.items():
        assert attack(server.port) in (0, 400, 404, 413, 422), name


def _probe(
    url: str, stop: threading.Event, out: list[tuple[float, int]], send: Callable[..., int]
) -> None:
    """(latency, status) of ``send`` every 5 ms until ``stop``, over one connection."""
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            t = time.perf_counter()
            status = send(c)
            out.append((time.perf_counter() - t, status))
            time.sleep(0.005)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _measure(server: ServerProcess, seconds: float, attack: bool) -> dict[str, float]:
    stop = threading.Event()
    health: list[tuple[float, int]] = []
    small: list[tuple[float, int]] = []
    answers: list[int] = []
    rss: list[float] = [_rss_mib(server.proc.pid)]

    def sender(i: int) -> None:
        names = list(ATTACKS)
        k = i
        while not stop.is_set():
            answers.append(ATTACKS[names[k % len(names)]](server.port))
            k += 1

    threads = [
        threading.Thread(
            target=_probe,
            args=(server.url, stop, health, lambda c: c.get("/health/live").status_code),
        ),
        threading.Thread(
            target=_probe,
            args=(server.url, stop, small, lambda c: c.post(V1, json=ROW).status_code),
        ),
    ] + ([threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)] if attack else [])
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        rss.append(_rss_mib(server.proc.pid))
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert all(a < 500 for a in answers), sorted(set(answers))
    if attack:
        assert len(answers) >= 20, len(answers)
    assert {st for _, st in health + small} == {200}
    h, s = np.array([t for t, _ in health]), np.array([t for t, _ in small])
    pct = np.percentile
    return {"health_p50_ms": 1e3 * pct(h, 50), "health_p99_ms": 1e3 * pct(h, 99),
            "health_max_ms": 1e3 * h.max(), "small_p50_ms": 1e3 * pct(s, 50),
            "small_p99_ms": 1e3 * pct(s, 99), "rss_start_mib": rss[0],
            "rss_peak_mib": max(rss), "attacks": float(len(answers)),
            "health_probes": float(len(h))}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
def test_health_stays_responsive_while_hostile_bodies_arrive(server: ServerProcess) -> None:
    calm = _measure(server, 1.5, attack=False)
    hostile = _measure(server, ATTACK_SECONDS, attack=True)
    print("\ncalm:", json.dumps({k: round(v, 2) for k, v in calm.items()}))
    print("hostile:", json.dumps({k: round(v, 2) for k, v in hostile.items()}))
    assert hostile["health_probes"] >= 50
    assert hostile["health_p99_ms"] < 1e3 * HEALTH_P99_S, hostile
    assert hostile["rss_peak_mib"] < hostile["rss_start_mib"] + 200, hostile


def _collections_during_parse(raw: bytes) -> list[int]:
    """The generation of every collection that starts while ``raw`` is parsed (and the
    parsed object is alive)."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        assert gc.isenabled()
        parsed = parse_json(raw, 100)
        assert gc.isenabled()  # the pause is over
        assert len(parsed) == 100_001
    finally:
        gc.callbacks.remove(count)
    return seen


def test_a_large_parse_triggers_no_collection_while_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body of many small lists is parsed with the collector paused: at most the one
    young collection that was due runs once the parse is over, never a full one. Without
    the pause, the same parse starts well over a hundred collections."""
    raw = b"[" + b"[0]," * 100_000 + b"[0]]"  # 400 KB, over the pause threshold
    assert len(raw) > body_module._GC_PAUSE_BYTES
    paused = _collections_during_parse(raw)
    assert len(paused) <= 1 and 2 not in paused, paused
    monkeypatch.setattr(body_module, "_GC_PAUSE_BYTES", len(raw))
    unpaused = _collections_during_parse(raw)
    assert len(unpaused) > 100, len(unpaused)


def _counted(obj: object, depth: int = 1) -> tuple[int, int, int]:
    """(keys, arrays and objects, deepest nesting) of a parsed JSON value: the reference."""
    if not isinstance(obj, (list, dict)):
        return 0, 0, 0
    keys, containers, deepest = (len(obj) if isinstance(obj, dict) else 0), 1, depth
    for child in obj.values() if isinstance(obj, dict) else obj:
        k, c, d = _counted(child, depth + 1)
        keys, containers, deepest = keys + k, containers + c, max(deepest, d)
    return keys, containers, deepest


def test_the_prescan_counts_outside_strings_exactly() -> None:
    """The vectorised count of the pre-scan against a walk of the parsed value, on random
    JSON whose strings are full of quotes, backslashes, brackets and colons."""
    rng = np.random.default_rng(0)
    pieces = ['"', "\\", "[", "]", "{", "}", ":", "a", " ", "\\\\", '\\"', "é", "\u2028"]

    def text() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.integers(0, 8)))

    def value(depth: int) -> object:
        r = rng.random()
        if depth > 5 or r < 0.3:
            return text() if rng.random() < 0.6 else float(rng.random())
        if r < 0.65:
            return [value(depth + 1) for _ in range(rng.integers(0, 4))]
        return {text(): value(depth + 1) for _ in range(rng.integers(0, 4))}

    for i in range(400):
        obj = value(0)
        raw = json.dumps(obj, ensure_ascii=bool(i % 2), indent=1 if i % 3 == 0 else None)
        assert body_limits._structure(raw.encode()) == _counted(obj), raw
