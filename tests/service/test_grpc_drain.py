"""SIGTERM drains gRPC calls as well as HTTP ones: the real ``mcdrop serve`` with calls of
both kinds in flight on the slow model (every forward pass sleeps 0.6 s); every one is
answered, then the process exits and new gRPC calls are refused."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from helpers.live_server import free_port, start_server
from svc_helpers import FEATURES, write_tiny_repo

pytestmark = pytest.mark.e2e


def test_sigterm_drains_grpc_and_http_calls(tmp_path: Path) -> None:
    repo = write_tiny_repo(tmp_path / "repo", slow_delay=0.6, broken=False)
    port = free_port()
    env = {"MCDROP_GRPC_PORT": str(port), "MCDROP_MAX_QUEUE_DELAY_MS": "0",
           "MCDROP_DRAIN_SECONDS": "10", "MCDROP_LOG_LEVEL": "info"}  # fmt: skip
    s = start_server(repo, env, log_path=tmp_path / "server.log")
    x = np.full((1, FEATURES), 0.5, np.float32)
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")

    def grpc_call(seed: int) -> np.ndarray:
        i = tg.InferInput("input", [1, FEATURES], "FP32")
        i.set_data_from_numpy(x)
        r = client.infer("slow", [i], parameters={"mc_samples": 2, "seed": seed},
                         client_timeout=20)  # fmt: skip
        return r.as_numpy("mean")  # type: ignore[no-any-return]

    def http_call() -> int:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                  "data": x.ravel().tolist()}  # fmt: skip
        body = {"inputs": [tensor], "parameters": {"mc_samples": 2}}
        return httpx.post(s.url + "/v2/models/slow/infer", json=body, timeout=20).status_code

    pool = ThreadPoolExecutor(4)
    try:  # the server is stopped (SIGKILL if it hangs) whatever happens
        # HTTP first: it is answered first (the slow model runs one request per engine
        # call), so uvicorn's own HTTP drain ends while the gRPC calls still run and only
        # the gRPC server's drain can save them.
        http = pool.submit(http_call)
        time.sleep(0.1)
        grpc_calls = [pool.submit(grpc_call, seed) for seed in (1, 2, 3)]
        # Loopback calls reach the server well within 0.3 s; none can be answered in less
        # than one forward pass (0.6 s). A call that had not arrived would be refused
        # after the signal and fail this test: it cannot pass without the drain.
        time.sleep(0.3)
        assert not any(f.done() for f in (*grpc_calls, http)), "answered before SIGTERM"
        s.proc.send_signal(signal.SIGTERM)
        means = [f.result(timeout=30) for f in grpc_calls]
        assert http.result(timeout=30) == 200
        assert all(m.shape == (1, 1) and np.isfinite(m).all() for m in means)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -15.
        assert s.proc.wait(30) in (0, -signal.SIGTERM), s.log()[-3000:]
        assert "Application shutdown complete" in s.log()
        with pytest.raises(tg.InferenceServerException) as info:
            client.is_server_live(client_timeout=2)
        assert str(info.value.status()) == str(grpc.StatusCode.UNAVAILABLE)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        client.close()
        s.stop()
