"""Readiness (issue 16 item 6): strict by default, lenient on request, and 503 while models
load in the background (liveness is not readiness). In-process apps (ASGI + lifespan)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from helpers.lifecycle import GOOD_SOURCE, ROW, write_model
from helpers.live_server import app_client, settled
from svc_helpers import make_settings

from service.settings import Settings

pytestmark = pytest.mark.anyio

LOAD_DELAY_S = 1.5  # the slow model's import takes this long


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``good`` next to ``noweights`` (a folder whose weights file is missing)."""
    root = tmp_path_factory.mktemp("ready-repo")
    write_model(root / "good", "good")
    write_model(root / "noweights", "noweights", version="3")
    (root / "noweights" / "weights.safetensors").unlink()
    return root


def _gauge(text: str, model: str, version: str) -> float | None:
    """The mcdrop_model_ready sample of (model, version), None when there is none."""
    prefix = f'mcdrop_model_ready{{model="{model}",version="{version}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


async def test_strict_readiness_names_the_failed_folder(broken_repo: Path) -> None:
    async with app_client(make_settings(broken_repo)) as c:
        r = await c.get("/health/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not ready" and body["models"] == ["good"]
        assert body["loading"] == []
        assert "weights.safetensors: no such file" in body["failures"]["noweights"]
        v2 = await c.get("/v2/health/ready")
        assert v2.status_code == 503 and v2.json() == {"ready": False}
        # the good model serves all the same, and liveness is unaffected
        assert (await c.post("/v1/models/good/predict", json={"inputs": [ROW]})).status_code == 200
        assert (await c.get("/health/live")).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert _gauge(metrics, "good", "1") == 1.0
        assert _gauge(metrics, "noweights", "3") == 0.0  # the failed model has its series


async def test_lenient_readiness_needs_one_model(broken_repo: Path) -> None:
    settings = Settings.from_env(
        {"MCDROP_MODELS_DIR": str(broken_repo), "MCDROP_STRICT_READINESS": "false"}
    )
    assert settings.strict_readiness is False
    async with app_client(settings) as c:
        r = await c.get("/health/ready")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert "noweights" in r.json()["failures"]
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}


async def test_not_ready_while_loading_but_live(tmp_path: Path) -> None:
    write_model(tmp_path / "good", "good")
    slow = write_model(tmp_path / "slowload", "slowload")
    (slow / "model.py").write_text(f"import time\ntime.sleep({LOAD_DELAY_S})\n{GOOD_SOURCE}")
    started = time.monotonic()
    async with app_client(make_settings(tmp_path), wait=False) as c:
        live = await c.get("/health/live")
        ready = await c.get("/health/ready")
        seen_loading = ready.json()["loading"]
        assert time.monotonic() - started < LOAD_DELAY_S  # both answered while it loads
        assert live.status_code == 200
        assert ready.status_code == 503 and not settled(ready)
        assert "slowload" in seen_loading
        r = await c.get("/v2/models/slowload/ready")
        assert r.status_code == 503 and "loading" in r.json()["error"]
        deadline = time.monotonic() + 60
        while not settled(ready := await c.get("/health/ready")):
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.05)
        assert ready.status_code == 200, ready.text
        assert ready.json()["models"] == ["good", "slowload"]
        assert time.monotonic() - started >= LOAD_DELAY_S


async def test_empty_repository_is_never_ready(tmp_path: Path) -> None:
    async with app_client(make_settings(tmp_path)) as c:
        r = await c.get("/health/ready")
        assert r.status_code == 503 and settled(r)
        assert r.json() == {"status": "not ready", "models": [], "loading": [], "failures": {}}


async def test_settled_reads_only_finished_loads() -> None:
    def resp(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body)

    assert settled(resp(200, {"status": "ready"}))
    assert settled(resp(503, {"status": "not ready", "loading": [], "failures": {"x": "y"}}))
    assert not settled(resp(503, {"status": "not ready", "loading": ["x"], "failures": {}}))
    assert not settled(resp(503, {"error": "shutting down"}))
    assert not settled(resp(500, {"status": "ready"}))
