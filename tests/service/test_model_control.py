"""Model control (issue 16 item 4): Triton's repository extension over HTTP.

Against the real ``mcdrop serve`` with ``MCDROP_MODEL_CONTROL=explicit``, one server for the
module, the tests in order: a new folder loaded into the running server and queried; its
weights replaced and loaded again under a bounded concurrent load (every answer counted:
none lost, each is the old model's or the new one's, the old before the new); a second
version served beside the first; unload (404 afterwards); bad requests. In-process apps
cover the other modes (none, poll) and that an unloaded model is freed.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.lifecycle import ROW, write_model
from helpers.live_server import ServerProcess, app_client, start_server
from helpers.tolerance import EPS32, ULPS
from svc_helpers import make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anyio]  # mcdrop serve subprocesses

SEED = 7
SAMPLES = 8
CONCURRENCY = 8
MAX_REQUESTS = 4000  # the load below stops itself well before this


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control-repo")
    write_model(root / "alpha", "alpha")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"MCDROP_MODEL_CONTROL": "explicit", "MCDROP_LOG_LEVEL": "warning"}
    s = start_server(repo, env, log_path=tmp_path_factory.mktemp("control") / "server.log")
    yield s
    s.stop()


def _mean(body: dict[str, Any]) -> float:
    return float(np.asarray(body["mean"], dtype=np.float64).ravel()[0])


def _same(a: float, b: float) -> bool:
    """Equal to float32 rounding (batch composition changes the rounding, never more)."""
    return abs(a - b) <= ULPS * EPS32 * max(abs(a), abs(b), 1e-30)


def _predict(url: str, model: str) -> float:
    body = {"inputs": [ROW], "samples": SAMPLES, "seed": SEED}
    r = httpx.post(f"{url}/v1/models/{model}/predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return _mean(r.json())


def _post(url: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60, **kw)


def _index(url: str) -> dict[tuple[str, str], dict[str, str]]:
    r = _post(url, "/v2/repository/index")
    assert r.status_code == 200, r.text
    return {(m["name"], m["version"]): m for m in r.json()}


# ------------------------------------------------------------------ explicit, real server


def test_index_lists_the_served_models(server: ServerProcess) -> None:
    index = _index(server.url)
    assert index == {("alpha", "1"): {"name": "alpha", "version": "1", "state": "READY",
                                      "reason": ""}}  # fmt: skip
    r = httpx.post(server.url + "/v2/repository/index", content=b"", timeout=10)  # no body
    assert r.status_code == 200 and len(r.json()) == 1
    assert _post(server.url, "/v2/repository/index", {"ready": True}).json() == r.json()


def test_load_a_new_folder_into_the_running_server(server: ServerProcess, repo: Path) -> None:
    r = httpx.post(f"{server.url}/v1/models/beta/predict", json={"inputs": [ROW]}, timeout=10)
    assert r.status_code == 404
    write_model(repo / "beta", "beta", seed=1)
    r = _post(server.url, "/v2/repository/models/beta/load", {})
    assert r.status_code == 200, r.text
    assert _index(server.url)[("beta", "1")]["state"] == "READY"
    assert np.isfinite(_predict(server.url, "beta"))


async def _hammer(url: str, stop: asyncio.Event) -> list[float | str]:
    """CONCURRENCY clients posting the same seeded request until ``stop`` (bounded)."""
    answers: list[float | str] = []
    body = {"inputs": [ROW], "samples": SAMPLES, "seed": SEED}

    async def client(c: httpx.AsyncClient) -> None:
        while not stop.is_set() and len(answers) < MAX_REQUESTS:
            r = await c.post("/v1/models/beta/predict", json=body)
            answers.append(_mean(r.json()) if r.status_code == 200 else f"{r.status_code} {r.text}")

    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        await asyncio.gather(*(client(c) for _ in range(CONCURRENCY)))
    return answers


async def test_reload_with_new_weights_under_load(server: ServerProcess, repo: Path) -> None:
    old = _predict(server.url, "beta")
    stop = asyncio.Event()
    load = asyncio.create_task(_hammer(server.url, stop))
    await asyncio.sleep(0.5)  # the load is running
    write_model(repo / "beta", "beta", seed=2, overwrite=True)  # new weights, same version
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        r = await c.post("/v2/repository/models/beta/load", json={})
    assert r.status_code == 200, r.text
    await asyncio.sleep(0.5)  # and goes on after the swap
    stop.set()
    answers = await asyncio.wait_for(load, 60)
    new = _predict(server.url, "beta")
    assert not _same(old, new)  # the answers changed
    failed = [a for a in answers if isinstance(a, str)]
    assert not failed, failed[:5]  # no request lost during the swap
    kinds = ["old" if _same(a, old) else "new" if _same(a, new) else repr(a)
             for a in answers if isinstance(a, float)]  # fmt: skip
    assert set(kinds) == {"old", "new"}, set(kinds)
    # after the first new answer, only requests already queued on the old model (one per
    # client at most) may still come back from it
    late_old = kinds[kinds.index("new") :].count("old")
    assert late_old < CONCURRENCY, late_old
    assert len(answers) >= 4 * CONCURRENCY, len(answers)


def test_two_versions_are_served(server: ServerProcess, repo: Path) -> None:
    write_model(repo / "beta-v2", "beta", version="2", seed=3)
    r = _post(server.url, "/v2/repository/models/beta/load")
    assert r.status_code == 200, r.text
    index = _index(server.url)
    assert index[("beta", "1")]["state"] == index[("beta", "2")]["state"] == "READY"
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}
    body = {"inputs": [tensor], "parameters": {"mc_samples": SAMPLES, "seed": SEED}}
    means = {}
    for path in ("", "/versions/1", "/versions/2"):
        r = _post(server.url, f"/v2/models/beta{path}/infer", body)
        assert r.status_code == 200, r.text
        out = r.json()
        means[path] = (out["model_version"], out["outputs"][0]["data"][0])
    assert means[""][0] == "2" and means["/versions/1"][0] == "1"  # the highest is the default
    assert means[""] == means["/versions/2"] and means["/versions/1"] != means["/versions/2"]
    r = httpx.get(server.url + "/v2/models/beta/versions/3", timeout=10)
    assert r.status_code == 404 and "served: 1, 2" in r.json()["error"]


def test_unload_then_404(server: ServerProcess) -> None:
    r = _post(server.url, "/v2/repository/models/beta/unload",
              {"parameters": {"unload_dependents": False}})  # fmt: skip
    assert r.status_code == 200, r.text
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}
    for path in ("/v2/models/beta", "/v2/models/beta/versions/1", "/v2/models/beta/ready"):
        assert httpx.get(server.url + path, timeout=10).status_code == 404, path
    r = _post(server.url, "/v2/models/beta/infer", {"inputs": [tensor]})
    assert r.status_code == 404 and "unloaded" in r.json()["error"]
    index = _index(server.url)
    assert index[("beta", "2")] == {"name": "beta", "version": "2", "state": "UNAVAILABLE",
                                    "reason": "unloaded"}  # fmt: skip
    assert _post(server.url, "/v2/repository/models/beta/unload").status_code == 404
    assert httpx.get(server.url + "/health/ready", timeout=10).status_code == 200  # not a failure
    assert np.isfinite(_predict(server.url, "alpha"))  # the others go on


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("models/nope/load", {}, 404, "declares model 'nope'"),
        ("models/alpha/load", {"parameters": {"config": "{}"}}, 422, "'config' is not supported"),
        ("models/alpha/load", {"parameters": {"file:1/model.py": "eA=="}}, 422, "not supported"),
        ("models/alpha/load", [1], 422, "must be a JSON object"),
        ("models/alpha/load", {"parameters": 3}, 422, "parameters must be an object"),
        ("models/alpha/load", {"what": 1}, 422, "unknown field 'what'"),
        ("models/alpha/unload", {"parameters": {"unload_dependents": "no"}}, 422, "true or false"),
        ("index", {"ready": 1}, 422, "ready must be true or false"),
    ],
)
def test_bad_requests(server: ServerProcess, path: str, body: Any, status: int,
                      fragment: str) -> None:  # fmt: skip
    r = _post(server.url, f"/v2/repository/{path}", body)
    assert r.status_code == status and fragment in r.json()["error"], r.text


def test_a_broken_folder_fails_its_load(server: ServerProcess, repo: Path) -> None:
    """Last: it leaves a failed folder behind, so readiness (strict) turns 503."""
    write_model(repo / "gamma", "gamma")
    (repo / "gamma" / "weights.safetensors").write_bytes(b"not safetensors")
    r = _post(server.url, "/v2/repository/models/gamma/load")
    assert r.status_code == 400 and "not a readable safetensors file" in r.json()["error"]
    assert _index(server.url)[("gamma", "1")]["state"] == "UNAVAILABLE"
    ready = httpx.get(server.url + "/health/ready", timeout=10)
    assert ready.status_code == 503 and "gamma" in ready.json()["failures"]
    shutil.rmtree(repo / "gamma")


# ------------------------------------------------------------------ other modes, in-process


async def test_control_none_refuses_load_and_unload(repo: Path) -> None:
    async with app_client(make_settings(repo)) as c:  # the default: none
        for action in ("load", "unload"):
            r = await c.post(f"/v2/repository/models/alpha/{action}")
            assert r.status_code == 400, r.text
            assert "MCDROP_MODEL_CONTROL=none" in r.json()["error"]
        assert (await c.post("/v2/repository/index")).status_code == 200


async def test_unload_frees_the_model(tmp_path: Path) -> None:
    write_model(tmp_path / "solo", "solo")
    async with app_client(make_settings(tmp_path, model_control="explicit")) as c:
        plane = c.app.state.plane  # type: ignore[attr-defined]
        module = weakref.ref(plane.models["solo"].loaded.module)
        assert (await c.post("/v2/repository/models/solo/unload")).status_code == 200
        gc.collect()
        assert module() is None  # nothing holds the model any more
        assert (await c.post("/v1/models/solo/predict", json={"inputs": [ROW]})).status_code == 404
        assert (await c.post("/v2/repository/models/solo/load")).status_code == 200
        assert (await c.post("/v1/models/solo/predict", json={"inputs": [ROW]})).status_code == 200


async def test_poll_follows_the_folder(tmp_path: Path) -> None:
    write_model(tmp_path / "first", "first")
    settings = make_settings(tmp_path, model_control="poll", poll_interval_s=0.1)
    body = {"inputs": [ROW], "samples": SAMPLES, "seed": SEED}

    async def until(check: Any, what: str) -> Any:
        deadline = time.monotonic() + 30
        while not (got := await check()):
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)
        return got

    async with app_client(settings) as c:
        r = await c.post("/v2/repository/models/first/load")
        assert r.status_code == 400 and "MCDROP_MODEL_CONTROL=poll" in r.json()["error"]

        async def answer() -> float | None:
            r = await c.post("/v1/models/second/predict", json=body)
            return _mean(r.json()) if r.status_code == 200 else None

        write_model(tmp_path / "second", "second", seed=1)
        old = await until(answer, "the new folder is served")
        write_model(tmp_path / "second", "second", seed=2, overwrite=True)

        async def changed() -> bool:
            got = await answer()
            return got is not None and not _same(got, old)

        await until(changed, "the new weights are served")

        async def gone() -> bool:
            r = await c.post("/v1/models/second/predict", json=body)
            return r.status_code == 404

        shutil.rmtree(tmp_path / "second")
        await until(gone, "the removed folder is unloaded")
        assert (await c.post("/v1/models/first/predict", json=body)).status_code == 200
