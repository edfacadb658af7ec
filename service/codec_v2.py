"""The Open Inference Protocol (v2) JSON codec: tensors to arrays, answers to tensors.

``decode`` reads the one input tensor and the MC options in ``parameters`` (``mc_samples``,
``seed``); ``encode`` writes the requested outputs (default: every statistic) as flat data
of FP32 (float32 models) or FP64. The binary tensor extension is another codec over the
same :class:`~service.runtime.InferRequest` and :class:`~service.runtime.Answer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pydantic
from pydantic import ConfigDict, TypeAdapter
from pydantic.types import FailFast

from mcdrop.errors import ModelOutputError
from mcdrop.fields import MAX_SEED
from mcdrop.schemas import InferenceRequest
from service import codec_v2_binary
from service.body import json_type, validate_body
from service.budgets import PER_ROW_FIELDS, check_answer_size, v2_answer_bytes
from service.codec_v1 import ids_from_texts
from service.errors import BadRequest, Unprocessable, shown, shown_int, shown_shape
from service.runtime import NP_DTYPES, Answer, InferRequest, ModelRuntime

__all__ = ["V2Request", "decode", "encode", "metadata", "V2_INPUT_NAME", "PLATFORM"]

V2_INPUT_NAME = "input"
PLATFORM = "pytorch_mcdrop"
_INPUT_TYPES = {
    "float": ("FP16", "FP32", "FP64"),
    "int": ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32"),
}
_TYPE_NAME = {"float32": "FP32", "float64": "FP64", "int64": "INT64"}
# FailFast: validation stops at the first bad element (a million strings would otherwise
# build a million errors on the event loop).
_FLAT: dict[str, TypeAdapter[Any]] = {
    "int": TypeAdapter(Annotated[list[int], FailFast()], config=ConfigDict(strict=True)),
    "float": TypeAdapter(Annotated[list[float], FailFast()], config=ConfigDict(strict=True)),
}


@dataclass(frozen=True)
class V2Request:
    """A decoded v2 request: the protocol-neutral part and what the answer must echo."""

    infer: InferRequest
    outputs: tuple[str, ...]  # requested outputs; empty: all
    id: str | None


def output_type(model: ModelRuntime) -> str:
    """FP32 for float32 models, FP64 otherwise (statistics are computed in float64)."""
    return "FP32" if model.manifest.input_dtype == "float32" else "FP64"


def metadata(model: ModelRuntime) -> dict[str, Any]:
    """``GET /v2/models/{name}``."""
    m = model.manifest
    out_type = output_type(model)
    return {
        "name": m.name,
        "versions": [m.version],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": V2_INPUT_NAME,
                "datatype": _TYPE_NAME[m.input_dtype],
                "shape": [-1, *m.input_shape],
            },
        ],  # fmt: skip
        "outputs": [
            {
                "name": n,
                "datatype": out_type,
                "shape": [-1] if n in PER_ROW_FIELDS else [-1, *m.output_shape],
            }
            for n in model.output_fields()
        ],  # fmt: skip
        "parameters": {
            "task": m.task,
            "default_samples": m.default_samples,
            "max_samples": m.max_samples,
            "max_batch_rows": m.max_batch_rows,
            **(model.budget.describe() if model.budget is not None else {}),
            "max_response_bytes": model.settings.max_response_bytes,
        },
    }


def _options(model: ModelRuntime, req: InferenceRequest) -> tuple[int, int | None]:
    """(samples, seed) from the request's ``parameters`` (``mc_samples``, ``seed``)."""
    params = req.parameters or {}
    samples = params.get("mc_samples")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)):
        raise Unprocessable(f"parameters.mc_samples must be an integer, got {json_type(samples)}")
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise Unprocessable(f"parameters.seed must be an integer, got {json_type(seed)}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise Unprocessable(f"parameters.seed must be in [0, 2**63 - 1], got {shown_int(seed)}")
    known = model.output_fields()
    seen: set[str] = set()
    # Each output at most once: a repeated name would multiply the answer's size (and the
    # known names bound the count, so the response size is known before computing).
    for out in req.outputs or []:
        if out.name not in known:
            raise Unprocessable(
                f"unknown output {shown(out.name)}; model '{model.name}' has {', '.join(known)}"
            )
        if out.name in seen:
            raise Unprocessable(f"output {shown(out.name)} is requested more than once")
        seen.add(out.name)
    return model.check_samples(samples), seed


def _bitwise(req: InferenceRequest) -> bool:
    """The ``bitwise`` parameter (default false): run alone, for byte-identical answers."""
    value = (req.parameters or {}).get("bitwise", False)
    if not isinstance(value, bool):
        raise Unprocessable(f"parameters.bitwise must be true or false, got {json_type(value)}")
    return value


def _input_array(model: ModelRuntime, req: InferenceRequest) -> np.ndarray:
    """The single v2 input tensor -> array (B, *input_shape)."""
    m = model.manifest
    if len(req.inputs) != 1:
        raise Unprocessable(
            f"model '{model.name}' takes exactly one input ('{V2_INPUT_NAME}'), "
            f"got {len(req.inputs)}"
        )
    t = req.inputs[0]
    where, shape = f"input {shown(t.name)}", shown_shape(t.shape)  # never unbounded
    params = t.parameters or {}
    if "binary_data_size" in params:
        raise BadRequest(
            "binary_data_size needs the Inference-Header-Content-Length header "
            "(the binary tensor extension); or send the input as JSON data"
        )
    if "shared_memory_region" in params:
        raise BadRequest("shared memory is not supported: send the input as JSON data")
    if t.datatype == "BYTES":  # raw text, one string per row
        return _text_input(model, t)
    kind = "int" if m.input_dtype == "int64" else "float"
    if t.datatype not in _INPUT_TYPES[kind]:
        raise Unprocessable(
            f"{where} has datatype {shown(t.datatype)}; model '{model.name}' takes "
            f"{_TYPE_NAME[m.input_dtype]} (or one of {', '.join(_INPUT_TYPES[kind])})"
        )
    want = [-1, *m.input_shape]
    if len(t.shape) != len(want) or list(t.shape[1:]) != list(m.input_shape):
        raise Unprocessable(f"{where} has shape {shape}; model '{model.name}' expects {want}")
    if t.shape[0] < 1:
        raise Unprocessable(f"{where} is empty (shape {shape}); send at least one row")
    model.check_rows(t.shape[0])
    if t.data is None:
        raise Unprocessable(f"{where} has no data; send it as a JSON list")
    flat = _flatten(t.data)
    expected = math.prod(t.shape)
    if len(flat) != expected:
        raise Unprocessable(f"{where} has {len(flat)} values but shape {shape} needs {expected}")
    try:
        values = _FLAT[kind].validate_python(flat)
    except pydantic.ValidationError as exc:
        i = int(exc.errors(include_url=False, include_input=False)[0]["loc"][0])
        what = "an integer" if kind == "int" else "a number"
        raise Unprocessable(f"{where} data[{i}] must be {what}, got {json_type(flat[i])}") from None
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(values, dtype=NP_DTYPES[m.input_dtype]).reshape(t.shape)
    except OverflowError:
        raise Unprocessable(f"{where} holds integers that do not fit int64") from None
    return model.finish_array(arr, where)


def _text_input(model: ModelRuntime, t: Any) -> np.ndarray:
    """A BYTES input of texts -> token ids (B, L), for a model whose folder has a tokenizer."""
    where, shape = f"input {shown(t.name)}", shown_shape(t.shape)
    if not model.loaded.takes_text:
        raise Unprocessable(
            f"{where} has datatype 'BYTES'; model '{model.name}' takes no text "
            f"(send {_TYPE_NAME[model.manifest.input_dtype]})"
        )
    if t.shape[1:] not in ([], [1]) or not t.shape or t.data is None:
        raise Unprocessable(
            f"{where} of BYTES (texts) must have shape [B] or [B, 1] and data, got shape {shape}"
        )
    texts = _flatten(t.data)
    if len(texts) != t.shape[0]:
        raise Unprocessable(f"{where} has {len(texts)} texts but shape {shape}")
    return ids_from_texts(model, texts, f"{where} data")


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major flattening of nested lists (tensor data may be flat or nested)."""
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _refuse_classification(req: InferenceRequest) -> None:
    """422 for Triton's ``classification`` output parameter (top-k class labels, what
    tritonclient's ``InferRequestedOutput(name, class_count=k)`` sends): every output here
    is the whole tensor, so answering would silently ignore what was asked."""
    for o in req.outputs or ():
        if o.parameters and "classification" in o.parameters:
            raise Unprocessable(
                f"output '{shown(o.name)}': the 'classification' parameter (Triton's top-k "
                "class labels) is not supported; outputs are whole tensors: ask for 'probs' "
                "and rank the classes on your side"
            )


def decode(model: ModelRuntime, body: Any) -> V2Request:
    """A parsed ``POST /v2/models/{name}/infer`` body -> the checked request."""
    req = validate_body(InferenceRequest, body)
    _refuse_classification(req)
    samples, seed = _options(model, req)
    x = _input_array(model, req)
    outputs = tuple(o.name for o in req.outputs or ())
    every, binary = codec_v2_binary.binary_outputs(body)
    size = v2_answer_bytes(model, len(x), outputs or model.output_fields(),
                           lambda name: every or name in binary, output_type(model),
                           len(req.id or ""))  # fmt: skip
    check_answer_size(model, size)  # before queueing: the bound is known now
    return V2Request(InferRequest(x, samples, seed, bitwise=_bitwise(req)), outputs, req.id)


def encode(model: ModelRuntime, ans: Answer, req: V2Request) -> dict[str, Any]:
    """The Open Inference Protocol answer with the requested (default: all) outputs."""
    names = list(req.outputs) or list(ans.arrays)
    out_type = output_type(model)
    np_type = np.float32 if out_type == "FP32" else np.float64
    outputs = []
    for name in names:
        arr = ans.arrays[name].astype(np_type)
        if not np.isfinite(arr).all():
            raise ModelOutputError(f"its '{name}' is not finite as {out_type}")
        outputs.append({"name": name, "shape": list(arr.shape), "datatype": out_type,
                        "data": arr.ravel()})  # fmt: skip
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.manifest.version,
        "parameters": {"mc_samples": ans.samples, "seed": ans.seed},
        "outputs": outputs,
    }
    if req.id is not None:
        body["id"] = req.id
    return body
