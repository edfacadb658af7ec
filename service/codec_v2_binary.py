"""Triton's binary tensor data extension over the v2 JSON codec.

A binary request body is a JSON header of ``Inference-Header-Content-Length`` bytes,
followed by the raw bytes of every input whose ``parameters`` carry ``binary_data_size``,
in the order the inputs are listed. Numeric tensors are little-endian, row-major; a BYTES
tensor is a run of elements, each a 4-byte little-endian length and that many bytes.

:func:`decode` turns such a body into the same JSON object the JSON codec reads (the raw
bytes become ``data``), so every check of :func:`service.codec_v2.decode` applies as it is.
:func:`encode` writes the outputs asked for in binary (``binary_data`` on an output, or
``binary_data_output`` on the request) after the JSON header of the answer.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from service.body import json_type
from service.errors import BadRequest, shown, shown_int, shown_shape

__all__ = ["split_body", "inline_binary_inputs", "binary_outputs", "encode", "HEADER"]

HEADER = "Inference-Header-Content-Length"
# Little-endian element types of the extension's numeric datatypes.
_NP_TYPES: dict[str, str] = {
    "BOOL": "|b1",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def split_body(body: bytes, declared: str) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a body whose header length is ``declared``.

    Raises
    ------
    BadRequest
        The length is not a non-negative integer or runs past the body.
    """
    text = declared.strip()
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{HEADER} must be a non-negative integer")
    size = int(text)
    if size > len(body):
        raise BadRequest(f"{HEADER} is {size} but the body has only {len(body)} bytes")
    return body[:size], body[size:]


def _name(tensor: dict[str, Any]) -> str:
    """An input's name as messages quote it (cut and escaped: never unbounded)."""
    name = tensor.get("name", "?")
    return shown(name) if isinstance(name, str) else "'?'"


def _shape_count(name: str, shape: Any) -> int:
    """The element count of a binary input's shape (checked: a list of integers >= 0)."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {name} with binary data needs a shape of integers >= 0")
    count = 1
    for d in shape:
        count *= d
        if count > 1 << 40:
            raise BadRequest(f"input {name} has a shape too large for its binary data")
    return count


def _bytes_elements(name: str, raw: bytes, count: int) -> list[str]:
    """A BYTES tensor's elements (4-byte little-endian length, then the bytes) as text."""
    out: list[str] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(f"input {name}: a BYTES element's length prefix is truncated")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(f"input {name}: a BYTES element runs past its binary_data_size")
        try:
            out.append(raw[pos : pos + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"input {name}: a BYTES element is not UTF-8 text") from None
        pos += n
    if len(out) != count:
        raise BadRequest(f"input {name} has {len(out)} BYTES elements but its shape needs {count}")
    return out


def _tensor_data(tensor: dict[str, Any], raw: bytes) -> list[Any]:
    """One input's raw bytes -> flat JSON-like data, sizes checked against shape x type."""
    name = _name(tensor)
    dtype = tensor.get("datatype")
    count = _shape_count(name, tensor.get("shape"))
    if dtype == "BYTES":
        return _bytes_elements(name, raw, count)
    if not isinstance(dtype, str) or dtype not in _NP_TYPES:
        got = shown(dtype, 40) if isinstance(dtype, str) else json_type(dtype)
        raise BadRequest(
            f"input {name} has datatype {got}, which the binary extension does not "
            f"define (one of {', '.join([*_NP_TYPES, 'BYTES'])})"
        )
    np_type = np.dtype(_NP_TYPES[dtype])
    if len(raw) != count * np_type.itemsize:
        raise BadRequest(
            f"input {name} has {len(raw)} bytes of binary data but shape "
            f"{shown_shape(tensor['shape'])} of {dtype} needs {count * np_type.itemsize}"
        )
    arr = np.frombuffer(raw, dtype=np_type)
    if np_type.kind == "b":
        return [bool(v) for v in arr]
    return arr.tolist()  # type: ignore[no-any-return]


def inline_binary_inputs(obj: Any, tail: bytes) -> Any:
    """Replace each binary input's ``binary_data_size`` with its data, read from ``tail``.

    ``obj`` is the parsed JSON header (returned unchanged when it is not an object of
    inputs: the JSON codec then words the schema error). Every byte of ``tail`` must
    belong to an input.

    Raises
    ------
    BadRequest
        A size that is not an integer, runs past the body, disagrees with shape x
        datatype, a bad datatype, truncated BYTES, or bytes left over.
    """
    inputs = obj.get("inputs") if isinstance(obj, dict) else None
    pos = 0
    for tensor in inputs if isinstance(inputs, list) else ():
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        name = _name(tensor)
        size = params.pop("binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"input {name} binary_data_size must be an integer >= 0")
        if "data" in tensor:
            raise BadRequest(f"input {name} has both data and binary_data_size; send one")
        if pos + size > len(tail):
            raise BadRequest(
                f"input {name} binary_data_size {shown_int(size)} runs past the body "
                f"({len(tail) - pos} bytes left after the JSON header)"
            )
        tensor["data"] = _tensor_data(tensor, tail[pos : pos + size])
        pos += size
    if pos != len(tail):
        raise BadRequest(
            f"the body has {len(tail) - pos} bytes after the JSON header and the inputs' "
            "binary_data_size; they must add up"
        )
    return obj


def binary_outputs(obj: Any) -> tuple[bool, frozenset[str]]:
    """(all outputs binary, names of the outputs asked for in binary) from a request."""
    if not isinstance(obj, dict):
        return False, frozenset()
    params = obj.get("parameters")
    every = isinstance(params, dict) and params.get("binary_data_output") is True
    names = set()
    for out in obj.get("outputs") or () if isinstance(obj.get("outputs"), list) else ():
        p = out.get("parameters") if isinstance(out, dict) else None
        if isinstance(p, dict) and p.get("binary_data") is True:
            names.add(str(out.get("name")))
    return every, frozenset(names)


def encode(answer: dict[str, Any], every: bool, names: frozenset[str]) -> tuple[bytes, int]:
    """The JSON codec's answer with the chosen outputs moved to binary.

    Returns
    -------
    (body, header_length)
        The bytes to send and the value of the ``Inference-Header-Content-Length``
        response header (the JSON part's length).
    """
    import orjson

    tails: list[bytes] = []
    for out in answer["outputs"]:
        if every or out["name"] in names:
            data = np.ascontiguousarray(out.pop("data"))
            raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return head + b"".join(tails), len(head)
