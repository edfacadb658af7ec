"""Wire types of the mcdrop HTTP API, shared by the service and the client.

A leaf module: it imports pydantic only, never torch or the service, so the client can
use it without pulling the engine in.

Two protocols:

- v1, mcdrop's own JSON API: :class:`PredictRequest` -> :class:`PredictResponse`,
  :class:`ModelInfo`, :class:`ModelList`;
- v2, the Open Inference Protocol (KServe / Triton): :class:`InferenceRequest` ->
  :class:`InferenceResponse`, :class:`ServerMetadata`, :class:`ModelMetadata`.

Every error body is :class:`ErrorResponse`: ``{"error": "a message a person can act on"}``.

Request models are strict: ``false`` is not a number and ``"1.5"`` is not a float. Array
payloads (``inputs``, ``data``) are typed ``list[Any]`` here; their element types and shape
depend on the model and are checked by the service against the model's manifest.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mcdrop.fields import MAX_SEED

__all__ = [
    "MAX_SEED",
    "ErrorResponse",
    "LiveResponse",
    "ReadyResponse",
    "PredictRequest",
    "PredictResponse",
    "ModelInfo",
    "ModelList",
    "InferInputTensor",
    "InferRequestedOutput",
    "InferenceRequest",
    "InferOutputTensor",
    "InferenceResponse",
    "TensorMetadata",
    "ModelMetadata",
    "ServerMetadata",
]


class _Strict(BaseModel):
    """Request base: strict types, unknown fields rejected."""

    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(BaseModel):
    """Response base: lenient on unknown fields so older clients read newer servers."""

    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------------------ common


class ErrorResponse(_Open):
    """Every error: ``{"error": "..."}``."""

    error: str


class LiveResponse(_Open):
    """``GET /health/live``: the process is up."""

    status: Literal["live"] = "live"


class ReadyResponse(_Open):
    """``GET /health/ready``: 200 once every model folder is served (strict readiness, the
    default), or once one is (``MCDROP_STRICT_READINESS=false``); 503 otherwise."""

    status: Literal["ready", "not ready"]
    models: list[str] = Field(description="names of the models being served")
    loading: list[str] = Field(
        default_factory=list, description="model folders still loading or warming up"
    )
    failures: dict[str, str] = Field(
        default_factory=dict, description="model folder -> why it could not be served"
    )


# ------------------------------------------------------------------------------ v1


class PredictRequest(_Strict):
    """``POST /v1/models/{name}/predict``.

    ``inputs`` holds B rows, each shaped like the model's ``input_shape``.
    """

    inputs: list[Any] = Field(description="B rows, each of the model's input_shape")
    samples: int | None = Field(
        default=None, description="MC samples S (default: the model's default_samples)"
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description=(
            "same seed + same input -> same numbers; random when omitted (unseeded "
            "requests batched together share one, as the rows of one request do)"
        ),
    )
    return_samples: bool = Field(
        default=False,
        description="also return the raw draws (S, B, *output_shape); logits for classifiers",
    )
    bitwise: bool = Field(
        default=False,
        description=(
            "run alone, so that a seeded answer is byte-identical to the same request sent "
            "alone; batched with others the numbers agree to float32 rounding only"
        ),
    )


class PredictResponse(_Open):
    """The MC summary of B rows; arrays are nested lists shaped (B, *output_shape).

    Classification adds ``probs`` (B, C), ``predictive_entropy``, ``expected_entropy``,
    ``mutual_information`` and ``variation_ratio`` (B,) (entropies in nats); regression
    adds ``epistemic_variance`` and ``aleatoric_variance``. ``draws`` (S, B, *output_shape)
    is there when the request asked for ``return_samples``.
    """

    model: str
    samples: int
    seed: int
    mean: list[Any]
    variance: list[Any]
    std: list[Any]
    stderr: list[Any]
    epistemic_variance: list[Any] | None = None
    aleatoric_variance: list[Any] | None = None
    probs: list[Any] | None = None
    predictive_entropy: list[Any] | None = None
    expected_entropy: list[Any] | None = None
    mutual_information: list[Any] | None = None
    variation_ratio: list[Any] | None = None
    draws: list[Any] | None = None


class ModelInfo(_Open):
    """``GET /v1/models/{name}``: a served model's manifest and state."""

    name: str
    version: str
    task: Literal["regression", "classification"]
    description: str = ""
    input_shape: list[int]
    input_dtype: str
    output_shape: list[int]
    output_names: list[str] = Field(default_factory=list)
    default_samples: int
    max_samples: int
    max_batch_rows: int
    tau: float | None = None
    ready: bool
    takes_text: bool = Field(False, description="raw text is accepted (the folder has a tokenizer)")
    audit: dict[str, Any] | None = Field(
        None, description="the dropout audit at load (mcdrop.inspect): sampled sites, and why not"
    )


class ModelList(_Open):
    """``GET /v1/models``: the served models, and the folders that failed to load."""

    models: list[ModelInfo]
    failures: dict[str, str] = Field(default_factory=dict)


# ------------------------------------------------------------------------------ v2


class InferInputTensor(_Strict):
    """One input tensor of an Open Inference Protocol request (JSON data only)."""

    model_config = ConfigDict(strict=True, extra="allow")

    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferRequestedOutput(_Strict):
    """An output the client asks for (tritonclient adds ``{"binary_data": false}``)."""

    model_config = ConfigDict(strict=True, extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Strict):
    """``POST /v2/models/{name}/infer``. MC options go in ``parameters``:
    ``mc_samples`` (int) and ``seed`` (int)."""

    model_config = ConfigDict(strict=True, extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(_Open):
    """One output tensor: row-major flattened ``data`` of ``shape``."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferenceResponse(_Open):
    """The answer of ``/v2/models/{name}/infer``; ``parameters`` echo ``mc_samples`` and
    the ``seed`` that reproduces it."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutputTensor]


class TensorMetadata(_Open):
    """Name, datatype and shape (-1: any size) of a model input or output."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Open):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class ServerMetadata(_Open):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)
