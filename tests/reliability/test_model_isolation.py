"""Model isolation at load (issue 18 item 8), against the real ``mcdrop serve``.

One server loads a good model beside five whose ``model.py`` misbehaves: ``sys.exit(3)`` and
``KeyboardInterrupt`` at import, ``GeneratorExit`` from the factory, a hang at import and a
hang in warm-up. The port binds and ``/health/live`` answers while they load; each fails
alone (the hangs after ``MCDROP_LOAD_TIMEOUT_S``); the good one serves; ``/health/ready``
names every reason; SIGTERM still stops the process quickly despite the hung threads.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from helpers.lifecycle import HOSTILE, ROW, write_hostile, write_model
from helpers.live_server import settled, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOAD_TIMEOUT_S = 2.0
REASONS = {
    "exits": "SystemExit(3)",
    "interrupts": "KeyboardInterrupt(at import)",
    "genexit": "GeneratorExit(no)",
    "hangs_import": f"did not finish within {LOAD_TIMEOUT_S:g} s",
    "hangs_warmup": f"did not finish within {LOAD_TIMEOUT_S:g} s",
}


def test_hostile_models_fail_alone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo / "good", "good")
    for kind in HOSTILE:
        write_hostile(repo, kind)
    env = {"MCDROP_LOAD_TIMEOUT_S": str(LOAD_TIMEOUT_S), "MCDROP_LOG_LEVEL": "warning"}
    s = start_server(repo, env, log_path=tmp_path / "server.log", until="live")
    try:
        # two hangs of LOAD_TIMEOUT_S each: the port answers well before loading ends
        ready = httpx.get(s.url + "/health/ready", timeout=5)
        assert ready.status_code == 503 and not settled(ready), ready.text
        assert ready.json()["loading"], ready.text
        assert httpx.get(s.url + "/health/live", timeout=5).status_code == 200
        deadline = time.monotonic() + 60
        while not settled(ready := httpx.get(s.url + "/health/ready", timeout=5)):
            assert s.proc.poll() is None, s.log()[-3000:]
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        assert s.proc.poll() is None, s.log()[-3000:]  # sys.exit did not stop the server
        body = ready.json()
        assert ready.status_code == 503 and body["models"] == ["good"], body
        assert set(body["failures"]) == set(HOSTILE), body
        for kind, fragment in REASONS.items():
            assert fragment in body["failures"][kind], (kind, body["failures"][kind])
        r = httpx.post(f"{s.url}/v1/models/good/predict", json={"inputs": [ROW]}, timeout=10)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{s.url}/v1/models/exits/predict", json={"inputs": [ROW]}, timeout=10)
        assert r.status_code == 503 and "SystemExit" in r.json()["error"], r.text
    finally:
        t0 = time.monotonic()
        rc = s.stop(timeout=20)
        stop_s = time.monotonic() - t0
    # the hung loader threads are daemons: they do not keep the process alive (uvicorn
    # raises SIGTERM again after its graceful shutdown, hence -SIGTERM)
    assert rc in (0, -signal.SIGTERM) and stop_s < 15, (rc, stop_s, s.log()[-3000:])
