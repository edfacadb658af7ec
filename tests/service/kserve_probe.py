"""KServe's Python SDK clients, run in the KServe venv (``tests/helpers/kserve_env.py``).

Reads one JSON job on stdin::

    {"rest": "http://127.0.0.1:PORT" | null, "grpc": "127.0.0.1:PORT" | null,
     "api_key": "..." | null,
     "requests": [{"model": "...", "inputs": [{"name", "shape", "datatype", "data"}],
                   "parameters": {...}}]}

and sends each request with ``InferenceRESTClient`` (protocol v2) and
``InferenceGRPCClient``, each in its default mode (binary tensors:
``InferInput.set_data_from_numpy`` defaults to ``binary_data=True``). Prints one JSON object:
``{"rest": [...], "grpc": [...], "rest_ready": bool, "grpc_ready": bool}``, each answer a
map output name -> ``{"shape", "datatype", "data"}``, or ``{"error": "..."}``.
It imports nothing of mcdrop: it is what a KServe user would write.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def _request(spec: dict[str, Any]) -> InferRequest:
    inputs = []
    for t in spec["inputs"]:
        arr = np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
        inp = InferInput(t["name"], list(arr.shape), t["datatype"])
        inp.set_data_from_numpy(arr)  # the default: binary_data=True
        inputs.append(inp)
    return InferRequest(model_name=spec["model"], infer_inputs=inputs,
                        parameters=spec.get("parameters"))  # fmt: skip


def _outputs(res: Any) -> dict[str, Any]:
    out = {}
    for o in res.outputs:
        arr = o.as_numpy()
        out[o.name] = {"shape": list(arr.shape), "datatype": o.datatype,
                       "data": arr.ravel().tolist()}  # fmt: skip
    return out


async def _rest(job: dict[str, Any]) -> tuple[bool, list[Any]]:
    headers = {"Authorization": f"Bearer {job['api_key']}"} if job.get("api_key") else None
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    answers: list[Any] = []
    try:
        ready = bool(await client.is_server_ready(job["rest"], headers=headers))
        for spec in job["requests"]:
            try:
                res = await client.infer(job["rest"], _request(spec), model_name=spec["model"],
                                         headers=headers)  # fmt: skip
                answers.append(_outputs(res))
            except Exception as exc:  # the test reads the error
                answers.append({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await client.close()
    return ready, answers


async def _grpc(job: dict[str, Any]) -> tuple[bool, list[Any]]:
    meta = (("authorization", f"Bearer {job['api_key']}"),) if job.get("api_key") else None
    client = InferenceGRPCClient(job["grpc"], timeout=60)  # default retries (3)
    answers: list[Any] = []
    try:
        ready = bool(await client.is_server_ready(headers=meta))
        for spec in job["requests"]:
            try:
                answers.append(_outputs(await client.infer(_request(spec), headers=meta)))
            except Exception as exc:  # grpc.aio.AioRpcError: the test reads its code
                code = getattr(exc, "code", lambda: None)()
                answers.append({"error": f"{type(exc).__name__}: {exc}",
                                "code": getattr(code, "name", None)})  # fmt: skip
    finally:
        await client.close()
    return ready, answers


async def main() -> None:
    job = json.load(sys.stdin)
    result: dict[str, Any] = {}
    if job.get("rest"):
        result["rest_ready"], result["rest"] = await _rest(job)
    if job.get("grpc"):
        result["grpc_ready"], result["grpc"] = await _grpc(job)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
