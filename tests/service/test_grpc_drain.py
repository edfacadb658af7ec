"""gRPC auth and SIGTERM on the real ``mcdrop serve`` with an API key: the key is enforced
on the model methods; then SIGTERM drains gRPC calls as well as HTTP ones. The drain test
comes last in this module: it ends the module's server."""

from __future__ import annotations

import contextlib
import queue
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from helpers.live_server import ServerProcess, free_port, start_server
from svc_helpers import FEATURES, write_tiny_repo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # mcdrop serve subprocesses, SIGTERM

KEY = "grpc-drain-key"
AUTH = {"authorization": f"Bearer {KEY}"}
X = np.full((1, FEATURES), 0.5, np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("grpc-drain")
    repo = write_tiny_repo(root / "repo", slow_delay=0.6, broken=False)
    port = free_port()
    env = {"MCDROP_GRPC_PORT": str(port), "MCDROP_API_KEY": KEY,
           "MCDROP_MAX_QUEUE_DELAY_MS": "0", "MCDROP_DRAIN_SECONDS": "10",
           "MCDROP_LOG_LEVEL": "info"}  # fmt: skip
    s = start_server(repo, env, log_path=root / "server.log")
    try:
        yield s, f"127.0.0.1:{port}"
    finally:
        s.stop()


def _input() -> tg.InferInput:
    i = tg.InferInput("input", [1, FEATURES], "FP32")
    i.set_data_from_numpy(X)
    return i


def _status(fn: Any) -> grpc.StatusCode:
    with pytest.raises(tg.InferenceServerException) as info:
        fn()
    return grpc.StatusCode[str(info.value.status()).removeprefix("StatusCode.")]


def test_api_key_is_enforced(server: tuple[ServerProcess, str]) -> None:
    c = tg.InferenceServerClient(server[1])
    assert c.is_server_live() and c.get_server_metadata().name == "mcdrop"  # no key needed
    for h in (None, {"authorization": "Bearer wrong"}, {"authorization": KEY},
              {"authorization": f"Basic {KEY}"}):  # fmt: skip
        for call in (
            lambda h=h: c.infer("reg", [_input()], headers=h),
            lambda h=h: c.get_model_metadata("reg", headers=h),
            lambda h=h: c.is_model_ready("reg", headers=h),
            lambda h=h: c.get_model_repository_index(headers=h),
        ):
            assert _status(call) == grpc.StatusCode.UNAUTHENTICATED
    assert c.infer("reg", [_input()], headers=AUTH).as_numpy("mean").shape == (1, 1)
    errors: queue.Queue[Any] = queue.Queue()
    c.start_stream(callback=lambda result, error: errors.put(error))  # no key
    # The server refuses the stream as it opens: the callback may hear of it before the
    # first request is sent, and tritonclient then refuses to send it.
    with contextlib.suppress(tg.InferenceServerException):
        c.async_stream_infer("reg", [_input()])
    error = errors.get(timeout=10)
    c.stop_stream()
    assert error is not None and str(error.status()) == str(grpc.StatusCode.UNAUTHENTICATED)
    c.close()


def test_sigterm_drains_grpc_and_http_calls(server: tuple[ServerProcess, str]) -> None:
    s, address = server
    client = tg.InferenceServerClient(address)

    def grpc_call(seed: int) -> np.ndarray:
        r = client.infer("slow", [_input()], parameters={"mc_samples": 2, "seed": seed},
                         headers=AUTH, client_timeout=20)  # fmt: skip
        return r.as_numpy("mean")  # type: ignore[no-any-return]

    def http_call() -> int:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                  "data": X.ravel().tolist()}  # fmt: skip
        body = {"inputs": [tensor], "parameters": {"mc_samples": 2}}
        url = s.url + "/v2/models/slow/infer"
        return httpx.post(url, json=body, headers=AUTH, timeout=20).status_code

    pool = ThreadPoolExecutor(4)
    try:
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
        assert not http.done() and not any(f.done() for f in grpc_calls), "answered already"
        s.proc.send_signal(signal.SIGTERM)
        means = [f.result(timeout=30) for f in grpc_calls]
        assert http.result(timeout=30) == 200
        assert all(m.shape == (1, 1) and np.isfinite(m).all() for m in means)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -15.
        assert s.proc.wait(30) in (0, -signal.SIGTERM), s.log()[-3000:]
        assert "Application shutdown complete" in s.log()
        assert _status(lambda: client.is_server_live(client_timeout=2)) == (
            grpc.StatusCode.UNAVAILABLE
        )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        client.close()
