"""Protobuf tensors to the data plane's requests, and answers back to protobuf.

A ``ModelInferRequest`` becomes the same JSON-like object that ``POST /v2/.../infer``
carries (typed ``contents`` as ``data``; ``raw_input_contents`` through the binary tensor
extension's reader), so :func:`service.codec_v2.decode` checks it exactly as it checks
HTTP bodies: the same limits, the same messages, the same numbers for the same seed.
Outputs go back as ``raw_output_contents`` (little-endian, row-major), as Triton answers
and as ``tritonclient.grpc``'s ``as_numpy`` reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service import codec_v2, codec_v2_binary
from service.codec_v2 import V2Request
from service.errors import BadRequest, shown
from service.grpc.schema import message_class
from service.runtime import Answer, ModelRuntime

__all__ = ["decode_infer", "encode_infer", "metadata", "parameters", "set_parameter"]

InferResponse = message_class("ModelInferResponse")
MetadataResponse = message_class("ModelMetadataResponse")

# Which typed-contents field holds each datatype (FP16 has none: it travels raw only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = sorted(set(_CONTENTS.values()))


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values (unset ones left out)."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def set_parameter(params: Any, key: str, value: Any) -> None:
    """Store ``value`` (bool, int, float or str) in a ``map<string, InferParameter>``."""
    if isinstance(value, bool):
        params[key].bool_param = value
    elif isinstance(value, int):
        params[key].int64_param = value
    elif isinstance(value, float):
        params[key].double_param = value
    else:
        params[key].string_param = str(value)


def _typed_data(tensor: Any) -> list[Any] | None:
    """A typed input's ``contents`` as a flat list (None when it has none at all)."""
    if not tensor.HasField("contents"):
        return None
    filled = [f for f in _ALL_CONTENTS if len(getattr(tensor.contents, f))]
    field = _CONTENTS.get(tensor.datatype)
    if not filled:
        return []
    if field is None or filled != [field]:
        where = f"{field}" if field else "raw_input_contents (no typed contents field)"
        raise BadRequest(
            f"input {shown(tensor.name)} of {shown(tensor.datatype, 16)} has its values in "
            f"{', '.join(filled)}; they go in {where}"
        )
    values = list(getattr(tensor.contents, field))
    if field != "bytes_contents":
        return values
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise BadRequest(f"input {shown(tensor.name)}: a BYTES element is not UTF-8 text") from None


def _body(request: Any) -> dict[str, Any]:
    """The v2 JSON body that ``request`` (a ``ModelInferRequest``) stands for."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "send every input raw, or none"
        )
    inputs: list[dict[str, Any]] = []
    for i, t in enumerate(request.inputs):
        tensor: dict[str, Any] = {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "parameters": parameters(t.parameters),
        }
        if raw:
            if t.HasField("contents"):
                raise BadRequest(
                    f"input {shown(t.name)} has both contents and raw_input_contents; send one"
                )
            tensor["parameters"]["binary_data_size"] = len(raw[i])
        else:
            data = _typed_data(t)
            if data is not None:
                tensor["data"] = data
        inputs.append(tensor)
    body: dict[str, Any] = {
        "inputs": inputs,
        "parameters": parameters(request.parameters),
        "outputs": [
            {"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs
        ],
    }
    if request.id:
        body["id"] = request.id
    if raw:
        # The binary extension's reader: sizes checked against shape x datatype, BYTES
        # elements length-prefixed, exactly as on HTTP.
        codec_v2_binary.inline_binary_inputs(body, b"".join(raw))
    return body


def decode_infer(model: ModelRuntime, request: Any) -> V2Request:
    """A ``ModelInferRequest`` for ``model`` -> the checked request.

    Raises
    ------
    BadRequest, Unprocessable
        As the JSON codec does for the same tensors (both are INVALID_ARGUMENT here).
    """
    return codec_v2.decode(model, _body(request))


def encode_infer(model: ModelRuntime, answer: Answer, req: V2Request) -> Any:
    """The ``ModelInferResponse`` of ``answer``: the JSON codec's outputs, raw."""
    out = codec_v2.encode(model, answer, req)
    resp = InferResponse(model_name=out["model_name"], model_version=out["model_version"])
    if req.id is not None:
        resp.id = req.id
    for key, value in out["parameters"].items():
        set_parameter(resp.parameters, key, value)
    for o in out["outputs"]:
        data = np.ascontiguousarray(o["data"])
        resp.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
        resp.raw_output_contents.append(
            data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        )
    return resp


def metadata(model: ModelRuntime) -> Any:
    """The ``ModelMetadataResponse`` of ``model`` (the v2 JSON metadata, less parameters,
    which the gRPC message does not carry)."""
    m = codec_v2.metadata(model)
    resp = MetadataResponse(name=m["name"], versions=m["versions"], platform=m["platform"])
    for src, dest in ((m["inputs"], resp.inputs), (m["outputs"], resp.outputs)):
        for t in src:
            dest.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return resp
