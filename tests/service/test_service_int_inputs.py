"""A model with int64 inputs (token ids into an embedding) through v1 and v2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from helpers.live_server import app_client
from helpers.token_repo import token_source
from svc_helpers import make_settings

from mcdrop.repository import Manifest, save_model


@pytest.fixture(scope="module")
def token_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    source, module = token_source(root)
    torch.manual_seed(0)
    manifest = Manifest(
        name="tokens", version="1", task="regression", description="token ids -> 1",
        input_shape=(3,), input_dtype="int64", output_shape=(1,), default_samples=16,
        max_samples=100, max_batch_rows=8, factory="build",
    )  # fmt: skip
    save_model(root / "repo" / "tokens", module.build(), manifest, source)
    return root / "repo"


def test_int64_inputs_v1_and_v2(token_repo: Path) -> None:
    async def run() -> None:
        async with app_client(make_settings(token_repo)) as c:
            body = {"inputs": [[1, 2, 3], [4, 5, 6]], "samples": 20, "seed": 3}
            r = await c.post("/v1/models/tokens/predict", json=body)
            assert r.status_code == 200, r.text
            v1 = r.json()
            assert len(v1["mean"]) == 2 and all(v[0] >= 0 for v in v1["variance"])
            r = await c.post("/v1/models/tokens/predict", json={"inputs": [[1.5, 2, 3]]})
            assert r.status_code == 422 and "error" in r.json()
            # An id outside the vocabulary makes the embedding raise IndexError: a 422 that
            # says what to check, for that request only, and the model keeps serving.
            r = await c.post("/v1/models/tokens/predict", json={"inputs": [[1, 2, 99]]})
            assert r.status_code == 422 and "within the model's range" in r.json()["error"]
            r = await c.post("/v1/models/tokens/predict", json=body)
            assert r.status_code == 200 and r.json()["mean"] == v1["mean"]
            # Batched with good requests, the bad one fails alone.
            bad_body = {"inputs": [[0, 99, 1]], "samples": 20, "seed": 1}
            rs = await asyncio.gather(
                *[c.post("/v1/models/tokens/predict", json=b) for b in (body, bad_body, body)]
            )
            assert [x.status_code for x in rs] == [200, 422, 200]
            assert rs[0].json()["mean"] == v1["mean"] == rs[2].json()["mean"]
            v2 = {
                "inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64",
                            "data": [1, 2, 3, 4, 5, 6]}],
                "parameters": {"mc_samples": 20, "seed": 3},
            }  # fmt: skip
            r = await c.post("/v2/models/tokens/infer", json=v2)
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            assert out["mean"]["data"] == pytest.approx([m[0] for m in v1["mean"]], rel=1e-6)
            bad = dict(v2, inputs=[dict(v2["inputs"][0], datatype="FP32")])
            r = await c.post("/v2/models/tokens/infer", json=bad)
            assert 400 <= r.status_code < 500 and r.json()["error"]

    asyncio.run(run())
