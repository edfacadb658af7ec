"""The v1 JSON codec: ``{"inputs": rows, "samples", "seed"}`` to arrays, answers to JSON.

Protocol knowledge only: which fields the body has, how nested rows become an array and how
an :class:`~service.runtime.Answer` is written. The checks every protocol shares (row count,
finiteness, sample range) are the model runtime's.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pydantic
from pydantic import ConfigDict, TypeAdapter
from pydantic.types import FailFast

from mcdrop.errors import InvalidInputError
from mcdrop.schemas import PredictRequest
from service.body import json_path, json_type, lookup, validate_body
from service.budgets import check_answer_size, v1_answer_bytes
from service.errors import Unprocessable, shown_shape
from service.runtime import NP_DTYPES, Answer, InferRequest, ModelRuntime

__all__ = ["decode", "encode", "ids_from_texts", "model_info", "model_list"]

_ADAPTERS: dict[tuple[str, int], TypeAdapter[Any]] = {}


def _rows_adapter(dtype: str, depth: int) -> TypeAdapter[Any]:
    """A strict validator of ``depth``-deep nested lists of ints or floats (cached); it
    stops at the first wrong element (FailFast at every level), so a body of a million
    strings costs one error, not a million."""
    key = (dtype, depth)
    if key not in _ADAPTERS:
        t: Any = int if dtype == "int64" else float
        for _ in range(depth):
            t = Annotated[list[t], FailFast()]
        _ADAPTERS[key] = TypeAdapter(t, config=ConfigDict(strict=True))
    return _ADAPTERS[key]


def _shape_of(data: Any) -> list[int]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return shape


def ids_from_texts(model: ModelRuntime, texts: list[Any], where: str) -> np.ndarray:
    """Raw texts (a model whose folder has a tokenizer) -> token ids (B, L) int64.

    The tokenizer (Rust, numpy out) never calls torch, so the event loop may run it.
    """
    model.check_rows(len(texts))
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise Unprocessable(
                f"{where}[{i}] must be a string: send texts or token ids, not both "
                f"(got {json_type(t)})"
            )
    try:
        ids = model.loaded.tokenize(texts)["input_ids"]
    except InvalidInputError as exc:
        raise Unprocessable(f"{where}: {exc}") from None
    return model.finish_array(ids, where)


def rows_from_json(model: ModelRuntime, inputs: list[Any]) -> np.ndarray:
    """v1 ``inputs`` (nested rows, or texts for a model with a tokenizer) -> array
    (B, *input_shape) of the model dtype."""
    if inputs and isinstance(inputs[0], str) and model.loaded.takes_text:
        return ids_from_texts(model, inputs, "inputs")
    m = model.manifest
    shape = list(m.input_shape)
    if not inputs:
        raise Unprocessable(f"inputs is empty; send at least one row of shape {shape}")
    model.check_rows(len(inputs))
    try:
        data = _rows_adapter(m.input_dtype, len(shape) + 1).validate_python(inputs)
    except pydantic.ValidationError as exc:
        raise _element_error(model, inputs, exc) from None
    try:
        with np.errstate(over="ignore"):  # overflow to inf is reported by finish_array
            arr = np.asarray(data, dtype=NP_DTYPES[m.input_dtype])
    except OverflowError:
        raise Unprocessable("inputs holds integers that do not fit in int64") from None
    except ValueError:
        for i, row in enumerate(data):
            got_shape = _shape_of(row)
            if got_shape != shape:
                raise Unprocessable(
                    f"expected rows of shape {shape}, got {shown_shape(got_shape)} at inputs[{i}]"
                ) from None
        raise Unprocessable(f"inputs is not a rectangular array of rows of shape {shape}") from None
    if list(arr.shape[1:]) != shape:
        raise Unprocessable(f"expected rows of shape {shape}, got {list(arr.shape[1:])}")
    return model.finish_array(arr, "inputs")


def _element_error(
    model: ModelRuntime, inputs: list[Any], exc: pydantic.ValidationError
) -> Unprocessable:
    """The first wrong element of ``inputs``, named by its path and JSON type."""
    m = model.manifest
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = tuple(err["loc"])
    got = lookup(inputs, loc)
    where = "inputs" + json_path(loc)
    if err["type"] == "list_type":
        hint = ""
        if len(loc) == 1 and not isinstance(got, list):
            hint = "; inputs is a list of rows: wrap a single row in another list"
        return Unprocessable(
            f"{where} must be a list (rows of shape {list(m.input_shape)}), "
            f"got {json_type(got)}{hint}"
        )
    kind = "an integer" if m.input_dtype == "int64" else "a number"
    return Unprocessable(
        f"{where} must be {kind} (model '{model.name}' takes {m.input_dtype}), got {json_type(got)}"
    )


def decode(model: ModelRuntime, body: Any) -> InferRequest:
    """A parsed ``POST /v1/models/{name}/predict`` body -> the checked request."""
    req = validate_body(PredictRequest, body)
    x = rows_from_json(model, req.inputs)
    samples = model.check_samples(req.samples)
    size = v1_answer_bytes(model, len(x), samples, bool(req.return_samples))
    check_answer_size(model, size)  # before queueing: the bound is known now
    return InferRequest(x, samples, req.seed, req.return_samples, req.bitwise)


def encode(model: ModelRuntime, ans: Answer) -> dict[str, Any]:
    """The v1 answer: numpy arrays, written as nested lists by
    :class:`~service.responses.FastJSONResponse`."""
    body: dict[str, Any] = {"model": model.name, "samples": ans.samples, "seed": ans.seed}
    body.update(ans.arrays)
    if ans.draws is not None:
        body["draws"] = ans.draws
    return body


def model_info(model: ModelRuntime) -> dict[str, Any]:
    """The v1 model description (see :class:`mcdrop.schemas.ModelInfo`)."""
    m = model.manifest
    return {
        "name": m.name,
        "version": m.version,
        "task": m.task,
        "description": m.description,
        "input_shape": list(m.input_shape),
        "input_dtype": m.input_dtype,
        "output_shape": list(m.output_shape),
        "output_names": list(m.output_names),
        "default_samples": m.default_samples,
        "max_samples": m.max_samples,
        "max_batch_rows": m.max_batch_rows,
        "tau": m.tau,
        "ready": model.ready,
        "takes_text": model.loaded.takes_text,
        "audit": model.audit,
    }


def model_list(models: list[ModelRuntime], failures: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/models``: served models, and the folders that failed with the reason."""
    return {"models": [model_info(rt) for rt in models], "failures": dict(failures)}
