"""The data plane: the only place where JSON becomes arrays and predictions become JSON.

:class:`DataPlane` owns the loaded models (one :class:`ModelRuntime` each, with its
:class:`~service.batching.Batcher`), validates every request against the model's manifest
before it is queued (so the engine sees only well-formed, finite arrays), and shapes the v1
and v2 answers. Routes stay thin: they read the body and call one method here.

Everything here runs on the event loop except :meth:`DataPlane.load` (a worker thread at
startup) and the engine calls (the batcher threads).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pydantic
import torch
from pydantic import ConfigDict, TypeAdapter

import mcdrop
from mcdrop.errors import ModelOutputError
from mcdrop.predictor import MCPredictor, MCRequest, Prediction
from mcdrop.repository import LoadedModel, Manifest, load_repository
from mcdrop.schemas import MAX_SEED, InferenceRequest, PredictRequest
from service.batching import Batcher
from service.errors import BadRequest, ModelNotReady, NotFound, Unprocessable
from service.metrics import ServiceMetrics
from service.settings import Settings

MAX_RETURNED_DRAWS = 1_000_000  # numbers one v1 answer may carry as raw draws

__all__ = ["DataPlane", "ModelRuntime", "parse_json", "validate_body", "describe_error"]

log = logging.getLogger("mcdrop.service")

_NP_DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
_V2_INPUT_TYPES = {
    "float": ("FP16", "FP32", "FP64"),
    "int": ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32"),
}
_V2_NAME = {"float32": "FP32", "float64": "FP64", "int64": "INT64"}
REGRESSION_FIELDS = ("epistemic_variance", "aleatoric_variance")
CLASSIFICATION_FIELDS = (
    "probs",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
)
COMMON_FIELDS = ("mean", "variance", "std", "stderr")
V2_INPUT_NAME = "input"
PLATFORM = "pytorch_mcdrop"


@dataclass
class Answer:
    """A prediction as the wire needs it: finite numpy arrays, made in the batcher thread.

    The conversion from tensors happens there (once per batch, see
    :meth:`ModelRuntime.answers`), so that the event loop never calls torch: every torch
    call lets go of the GIL, and getting it back from a busy engine thread cost the event
    loop more than the conversion itself.
    """

    samples: int
    seed: int
    arrays: dict[str, np.ndarray]  # statistic name -> (B, *O) or (B,), C-contiguous
    draws: np.ndarray | None = None  # (S, B, *O) when asked for


# ------------------------------------------------------------------------------ JSON bodies


def _reject_constant(token: str) -> Any:
    raise BadRequest(
        f"{token} is not valid JSON (NaN and Infinity are not numbers in JSON); "
        "send finite numbers only"
    )


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a request body, refusing NaN/Infinity literals and nesting deeper than
    ``max_depth``.

    Raises
    ------
    BadRequest
        Empty, not UTF-8, malformed, non-finite literal, or too deep.
    """
    if not body.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    # orjson parses UTF-8 JSON several times faster; whatever it refuses (NaN literals,
    # malformed or non-UTF-8 bodies, very deep nesting) goes to the standard parser, whose
    # errors carry our messages. So do bodies with a run of 19 or more digits: orjson
    # reads integers beyond 64 bits as floats, where the standard parser keeps them exact.
    if _LONG_DIGITS.search(body) is not None:
        obj = _parse_slow(body, max_depth)
    else:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = _parse_slow(body, max_depth)
    # Nesting cannot exceed the number of opening brackets (those inside strings only
    # raise the count): most bodies skip the walk, which costs a visit per number.
    if body.count(b"[") + body.count(b"{") > max_depth:
        _check_depth(obj, max_depth)
    return obj


def _parse_slow(body: bytes, max_depth: int) -> Any:
    """:func:`parse_json`'s standard-library path (and its error messages)."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"JSON is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 encoded JSON") from None


def _check_depth(obj: Any, max_depth: int) -> None:
    if not isinstance(obj, (list, dict)):
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(f"JSON is nested deeper than {max_depth} levels")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (list, dict)):
                stack.append((child, depth + 1))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(obj: Any, loc: Sequence[Any]) -> Any:
    for part in loc:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def describe_error(err: Any, root: Any = None) -> str:
    """One pydantic error as 'where: what, got <json type>' (never echoing the value).

    ``root`` is the validated object (to name the JSON type found); None omits it.
    """
    loc = tuple(err.get("loc", ()))
    where = _loc(loc) if loc else "body"
    kind = err.get("type", "")
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field"
    msg = f"{where}: {err.get('msg', 'invalid value')}"
    return msg if root is None else f"{msg}, got {_json_type(_lookup(root, loc))}"


def validate_body(model: type[pydantic.BaseModel], obj: Any) -> Any:
    """Validate parsed JSON against a strict request schema (422 with a precise message)."""
    if not isinstance(obj, dict):
        raise Unprocessable(f"the request body must be a JSON object, got {_json_type(obj)}")
    try:
        return model.model_validate(obj)
    except pydantic.ValidationError as exc:
        errs = exc.errors(include_url=False, include_input=False)
        more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
        raise Unprocessable(describe_error(errs[0], obj) + more) from None


# ------------------------------------------------------------------------------ per model


def _nested_type(leaf: type, depth: int) -> Any:
    t: Any = leaf
    for _ in range(depth):
        t = list[t]
    return t


def _shape_of(data: Any) -> list[int]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return shape


@dataclass
class ModelRuntime:
    """One served model: manifest, engine, batcher, and its input/output conversions."""

    loaded: LoadedModel
    settings: Settings
    metrics: ServiceMetrics
    batcher: Batcher | None = None
    ready: bool = False
    _rows_adapter: TypeAdapter[Any] | None = field(default=None, repr=False)
    _flat_adapter: TypeAdapter[Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        m = self.manifest
        leaf: type = int if m.input_dtype == "int64" else float
        strict = ConfigDict(strict=True)
        self._rows_adapter = TypeAdapter(_nested_type(leaf, len(m.input_shape) + 1), config=strict)
        self._flat_adapter = TypeAdapter(list[leaf], config=strict)  # type: ignore[valid-type]

    @property
    def manifest(self) -> Manifest:
        """The model's validated manifest."""
        return self.loaded.manifest

    @property
    def name(self) -> str:
        """The model's name."""
        return self.manifest.name

    @property
    def batch_rows(self) -> int:
        """Most rows one engine call takes."""
        return min(self.settings.max_batch_rows, self.manifest.max_batch_rows)

    def _predictor(self) -> MCPredictor:
        s = self.settings
        device = s.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        options: dict[str, Any] = {"device": device, "precision": s.precision}
        if len(s.devices) > 1:
            options["devices"] = list(s.devices)
        return self.loaded.predictor(**options)

    def warm_up(self) -> None:
        """One small prediction: builds the engine's plan before the first request."""
        m = self.manifest
        x = np.zeros((1, *m.input_shape), dtype=_NP_DTYPES[m.input_dtype])
        pred = self._predictor().predict(x, samples=min(2, m.max_samples), seed=0)
        self.answer(pred)

    def start(self) -> None:
        """Create and start the model's batcher."""
        s = self.settings
        predictor = self._predictor()
        share = s.share_unseeded

        def run_batch(requests: Sequence[MCRequest]) -> list[Answer | Exception]:
            return self.answers(predictor.predict_many(requests, share_unseeded=share))

        self.batcher = Batcher(
            self.name,
            run_batch,
            max_batch_rows=self.batch_rows,
            max_delay_s=s.max_queue_delay_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            batching=s.batching_enabled,
            metrics=self.metrics,
        )
        self.batcher.start()
        self.ready = True
        self.metrics.model_ready.set(1, model=self.name)

    def stop(self, timeout: float) -> None:
        """Refuse new requests and finish the queued ones."""
        self.ready = False
        self.metrics.model_ready.set(0, model=self.name)
        if self.batcher is not None and not self.batcher.stop(timeout):
            log.warning("model %s: batcher did not finish within %.1f s", self.name, timeout)

    # -------------------------------------------------------------- inputs

    def _rows_error(self, rows: int) -> None:
        limit = self.manifest.max_batch_rows
        if rows > limit:
            raise Unprocessable(
                f"too many rows: {rows} (model '{self.name}' takes at most {limit} per "
                "request); split the request"
            )

    def _finish_array(self, arr: np.ndarray, where: str) -> np.ndarray:
        """Cast to the model dtype and require finite values."""
        m = self.manifest
        if m.input_dtype != "int64":
            if arr.dtype != _NP_DTYPES[m.input_dtype]:
                with np.errstate(over="ignore"):  # overflow to inf is reported just below
                    arr = arr.astype(_NP_DTYPES[m.input_dtype])
            finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)[:10].tolist()
                raise Unprocessable(
                    f"{where} holds numbers that are not finite as {m.input_dtype} "
                    f"(too large in magnitude) in rows {bad}"
                )
        return arr

    def rows_from_json(self, inputs: list[Any]) -> np.ndarray:
        """v1 ``inputs`` (nested rows) -> array (B, *input_shape) of the model dtype."""
        m = self.manifest
        shape = list(m.input_shape)
        if not inputs:
            raise Unprocessable(f"inputs is empty; send at least one row of shape {shape}")
        self._rows_error(len(inputs))
        assert self._rows_adapter is not None
        try:
            data = self._rows_adapter.validate_python(inputs)
        except pydantic.ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            loc = tuple(err["loc"])
            got = _lookup(inputs, loc)
            where = "inputs" + _loc(loc)
            if err["type"] == "list_type":
                hint = ""
                if len(loc) == 1 and not isinstance(got, list):
                    hint = "; inputs is a list of rows: wrap a single row in another list"
                raise Unprocessable(
                    f"{where} must be a list (rows of shape {shape}), got {_json_type(got)}{hint}"
                ) from None
            kind = "an integer" if m.input_dtype == "int64" else "a number"
            raise Unprocessable(
                f"{where} must be {kind} (model '{self.name}' takes {m.input_dtype}), "
                f"got {_json_type(got)}"
            ) from None
        try:
            with np.errstate(over="ignore"):  # overflow to inf is reported just below
                arr = np.asarray(data, dtype=_NP_DTYPES[m.input_dtype])
        except OverflowError:
            raise Unprocessable("inputs holds integers that do not fit in int64") from None
        except ValueError:
            for i, row in enumerate(data):
                got_shape = _shape_of(row)
                if got_shape != shape:
                    raise Unprocessable(
                        f"expected rows of shape {shape}, got {got_shape} at inputs[{i}]"
                    ) from None
            raise Unprocessable(
                f"inputs is not a rectangular array of rows of shape {shape}"
            ) from None
        if list(arr.shape[1:]) != shape:
            raise Unprocessable(f"expected rows of shape {shape}, got {list(arr.shape[1:])}")
        return self._finish_array(arr, "inputs")

    def check_samples(self, samples: int | None) -> int:
        """The sample count to use: the default, or ``samples`` within [1, max_samples]."""
        m = self.manifest
        if samples is None:
            return m.default_samples
        if isinstance(samples, bool) or not isinstance(samples, int):
            raise Unprocessable(f"samples must be an integer, got {_json_type(samples)}")
        if not 1 <= samples <= m.max_samples:
            raise Unprocessable(
                f"samples must be between 1 and {m.max_samples} for model '{self.name}', "
                f"got {samples}"
            )
        return samples

    # -------------------------------------------------------------- predictions

    async def predict(
        self, x: np.ndarray, samples: int, seed: int | None, return_samples: bool = False
    ) -> Answer:
        """Queue the validated rows and wait for the engine's answer."""
        if not self.ready or self.batcher is None:
            raise ModelNotReady(f"model '{self.name}' is not ready; retry shortly")
        if return_samples:
            n = samples * len(x) * math.prod(self.manifest.output_shape)
            if n > MAX_RETURNED_DRAWS:
                raise Unprocessable(
                    f"return_samples would send {n:,} numbers (samples x rows x outputs); "
                    f"at most {MAX_RETURNED_DRAWS:,}: ask for fewer samples or rows"
                )
        request = MCRequest(x, samples, seed, return_samples)
        return await self.batcher.submit(request, len(x), self.settings.request_timeout_s)

    def output_fields(self) -> tuple[str, ...]:
        """Names of the statistics this model reports."""
        extra = (
            CLASSIFICATION_FIELDS if self.manifest.task == "classification" else REGRESSION_FIELDS
        )
        return COMMON_FIELDS + extra

    def answer(self, pred: Prediction) -> Answer:
        """The wire form of ``pred``.

        Raises
        ------
        ModelOutputError
            A statistic (or a raw draw) is not finite.
        """
        out = self.answers([pred])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def answers(self, preds: Sequence[Prediction]) -> list[Answer | Exception]:
        """The wire form of a batch's predictions, or for a request whose statistics are not
        finite its :class:`ModelOutputError` (the batch's others stand).

        Each statistic of the whole batch is converted and checked at once, then split into
        per-request views: a fixed number of array operations per batch instead of per
        request and statistic."""
        if not preds:
            return []
        sizes = [len(p.mean) for p in preds]
        cuts = np.cumsum(sizes)[:-1]
        starts = np.concatenate([[0], cuts]).astype(np.intp)
        errors: list[Exception | None] = [None] * len(preds)
        arrays: list[dict[str, np.ndarray]] = [{} for _ in preds]
        for name in self.output_fields():
            values = [getattr(p, name) for p in preds]
            if any(v is None for v in values):
                continue
            whole = values[0] if len(values) == 1 else torch.cat(values)
            arr = np.ascontiguousarray(whole.detach().cpu().numpy())  # (sum B, ...)
            finite_rows = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            finite = np.logical_and.reduceat(finite_rows, starts)  # per request
            for i, part in enumerate(np.split(arr, cuts)):
                arrays[i][name] = part
                if not finite[i] and errors[i] is None:
                    errors[i] = ModelOutputError(f"its '{name}' is not finite")
        out: list[Answer | Exception] = []
        for p, err, arrs in zip(preds, errors, arrays, strict=True):
            draws = None
            if err is None and p.draws is not None:
                draws = np.ascontiguousarray(p.draws.detach().cpu().numpy())
                if not np.isfinite(draws).all():
                    err = ModelOutputError("its raw draws are not finite")
            out.append(err if err is not None else Answer(p.samples, p.seed, arrs, draws))
        return out

    def v1_response(self, ans: Answer) -> dict[str, Any]:
        """The v1 answer: numpy arrays, written as nested lists by
        :class:`~service.responses.FastJSONResponse`."""
        body: dict[str, Any] = {"model": self.name, "samples": ans.samples, "seed": ans.seed}
        body.update(ans.arrays)
        if ans.draws is not None:
            body["draws"] = ans.draws
        return body

    def info(self) -> dict[str, Any]:
        """The v1 model description (see :class:`mcdrop.schemas.ModelInfo`)."""
        m = self.manifest
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
            "ready": self.ready,
        }

    # -------------------------------------------------------------- v2

    @property
    def v2_output_type(self) -> str:
        """FP32 for float32 models, FP64 otherwise (statistics are computed in float64)."""
        return "FP32" if self.manifest.input_dtype == "float32" else "FP64"

    def _v2_output_shape(self, name: str) -> list[int]:
        if name in (
            "predictive_entropy",
            "expected_entropy",
            "mutual_information",
            "variation_ratio",
        ):
            return [-1]
        return [-1, *self.manifest.output_shape]

    def v2_metadata(self) -> dict[str, Any]:
        """``GET /v2/models/{name}``."""
        m = self.manifest
        return {
            "name": m.name,
            "versions": [m.version],
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": V2_INPUT_NAME,
                    "datatype": _V2_NAME[m.input_dtype],
                    "shape": [-1, *m.input_shape],
                },
            ],  # fmt: skip
            "outputs": [
                {"name": n, "datatype": self.v2_output_type, "shape": self._v2_output_shape(n)}
                for n in self.output_fields()
            ],
            "parameters": {
                "task": m.task,
                "default_samples": m.default_samples,
                "max_samples": m.max_samples,
                "max_batch_rows": m.max_batch_rows,
            },
        }

    def v2_inputs(self, req: InferenceRequest) -> np.ndarray:
        """The single v2 input tensor -> array (B, *input_shape)."""
        m = self.manifest
        if len(req.inputs) != 1:
            raise Unprocessable(
                f"model '{self.name}' takes exactly one input ('{V2_INPUT_NAME}'), "
                f"got {len(req.inputs)}"
            )
        t = req.inputs[0]
        params = t.parameters or {}
        if "binary_data_size" in params:
            raise BadRequest("only JSON is supported: send the input with binary_data=False")
        if "shared_memory_region" in params:
            raise BadRequest("shared memory is not supported: send the input as JSON data")
        kind = "int" if m.input_dtype == "int64" else "float"
        if t.datatype not in _V2_INPUT_TYPES[kind]:
            raise Unprocessable(
                f"input '{t.name}' has datatype {t.datatype!r}; model '{self.name}' takes "
                f"{_V2_NAME[m.input_dtype]} (or one of {', '.join(_V2_INPUT_TYPES[kind])})"
            )
        want = [-1, *m.input_shape]
        if len(t.shape) != len(want) or list(t.shape[1:]) != list(m.input_shape):
            raise Unprocessable(
                f"input '{t.name}' has shape {t.shape}; model '{self.name}' expects {want}"
            )
        rows = t.shape[0]
        if rows < 1:
            raise Unprocessable(
                f"input '{t.name}' is empty (shape {t.shape}); send at least one row"
            )
        self._rows_error(rows)
        if t.data is None:
            raise Unprocessable(f"input '{t.name}' has no data; send it as a JSON list")
        flat = _flatten(t.data)
        expected = math.prod(t.shape)
        if len(flat) != expected:
            raise Unprocessable(
                f"input '{t.name}' has {len(flat)} values but shape {t.shape} needs {expected}"
            )
        assert self._flat_adapter is not None
        try:
            values = self._flat_adapter.validate_python(flat)
        except pydantic.ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            i = int(err["loc"][0])
            what = "an integer" if kind == "int" else "a number"
            raise Unprocessable(
                f"input '{t.name}' data[{i}] must be {what}, got {_json_type(flat[i])}"
            ) from None
        try:
            with np.errstate(over="ignore"):
                arr = np.asarray(values, dtype=_NP_DTYPES[m.input_dtype]).reshape(t.shape)
        except OverflowError:
            raise Unprocessable(f"input '{t.name}' holds integers that do not fit int64") from None
        return self._finish_array(arr, f"input '{t.name}'")

    def v2_response(self, ans: Answer, req: InferenceRequest) -> dict[str, Any]:
        """The Open Inference Protocol answer with the requested (default: all) outputs."""
        arrays = ans.arrays
        names = list(arrays)
        if req.outputs:
            names = [o.name for o in req.outputs]
        np_type = np.float32 if self.v2_output_type == "FP32" else np.float64
        outputs = []
        for name in names:
            arr = arrays[name].astype(np_type)
            if not np.isfinite(arr).all():
                raise ModelOutputError(f"its '{name}' is not finite as {self.v2_output_type}")
            outputs.append(
                {"name": name, "shape": list(arr.shape), "datatype": self.v2_output_type,
                 "data": arr.ravel()}
            )  # fmt: skip
        body: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.manifest.version,
            "parameters": {"mc_samples": ans.samples, "seed": ans.seed},
            "outputs": outputs,
        }
        if req.id is not None:
            body["id"] = req.id
        return body

    def v2_options(self, req: InferenceRequest) -> tuple[int, int | None]:
        """(samples, seed) from the request's ``parameters`` (``mc_samples``, ``seed``)."""
        params = req.parameters or {}
        samples = params.get("mc_samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)):
            raise Unprocessable(
                f"parameters.mc_samples must be an integer, got {_json_type(samples)}"
            )
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise Unprocessable(f"parameters.seed must be an integer, got {_json_type(seed)}")
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise Unprocessable(f"parameters.seed must be in [0, 2**63 - 1], got {seed}")
        known = set(self.output_fields())
        for out in req.outputs or []:
            if out.name not in known:
                raise Unprocessable(
                    f"unknown output '{out.name}'; model '{self.name}' has {', '.join(known)}"
                )
        return self.check_samples(samples), seed


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


# ------------------------------------------------------------------------------ all models


class DataPlane:
    """Every model of the repository folder, loaded, warmed up and batched.

    Parameters
    ----------
    settings : Settings
    metrics : ServiceMetrics
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ModelRuntime] = {}
        self.failures: dict[str, str] = {}
        self.loaded = False

    @property
    def ready(self) -> bool:
        """True once loading finished with at least one model serving."""
        return self.loaded and any(rt.ready for rt in self.models.values())

    def load(self) -> None:
        """Load and warm up every model (blocking: run it in a thread); start batchers."""
        root = Path(self.settings.models_dir)
        try:
            repo = load_repository(root)
        except mcdrop.McdropError as exc:
            self.failures[str(root)] = str(exc)
            log.error("model repository %s: %s", root, exc)
            self.loaded = True
            return
        self.failures.update(repo.failures)
        for name, loaded in repo.models.items():
            rt = ModelRuntime(loaded, self.settings, self.metrics)
            try:
                rt.warm_up()
            except Exception as exc:  # a model's code may raise anything
                self.failures[loaded.path.name] = f"warm-up failed: {type(exc).__name__}: {exc}"
                self.metrics.model_ready.set(0, model=name)
                continue
            self.models[name] = rt
        for folder, reason in self.failures.items():
            log.error("model folder %s not served: %s", folder, reason)
        for rt in self.models.values():
            rt.start()
            log.info("model %s %s ready (%s)", rt.name, rt.manifest.version, rt.manifest.task)
        self.loaded = True

    def stop(self, timeout: float) -> None:
        """Stop every batcher after its queued requests finish (blocking)."""
        for rt in self.models.values():
            rt.stop(timeout)

    def get(self, name: str, version: str | None = None) -> ModelRuntime:
        """The runtime of model ``name`` (404 if unknown, 503 if it failed to load)."""
        rt = self.models.get(name)
        if rt is None:
            if name in self.failures:
                raise ModelNotReady(f"model '{name}' failed to load: {self.failures[name]}")
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"no model named '{name}' (served models: {known})")
        if version is not None and version != rt.manifest.version:
            raise NotFound(
                f"model '{name}' has no version '{version}' (served: {rt.manifest.version})"
            )
        return rt

    # -------------------------------------------------------------- protocol operations

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``{"name", "ready": true}`` for a serving model; 503 / 404 otherwise."""
        rt = self.get(name, version)
        if not rt.ready:
            raise ModelNotReady(f"model '{name}' is not ready; retry shortly")
        return {"name": rt.name, "ready": True}

    def health(self) -> dict[str, Any]:
        """The readiness report (see :class:`mcdrop.schemas.ReadyResponse`)."""
        return {
            "status": "ready" if self.ready else "not ready",
            "models": sorted(n for n, rt in self.models.items() if rt.ready),
            "failures": dict(self.failures),
        }

    def list_models(self) -> dict[str, Any]:
        """``GET /v1/models``."""
        return {
            "models": [self.models[n].info() for n in sorted(self.models)],
            "failures": dict(self.failures),
        }

    def refuse_if_busy(self, name: str) -> None:
        """503 (QueueFull) at once when model ``name`` has a full queue; nothing otherwise
        (unknown names are reported after the body is read, as before)."""
        rt = self.models.get(name)
        if rt is not None and rt.batcher is not None:
            rt.batcher.refuse_if_full()

    async def predict_v1(self, name: str, body: Any) -> dict[str, Any]:
        """``POST /v1/models/{name}/predict`` on an already parsed JSON body."""
        rt = self.get(name)
        req = validate_body(PredictRequest, body)
        x = rt.rows_from_json(req.inputs)
        samples = rt.check_samples(req.samples)
        pred = await rt.predict(x, samples, req.seed, req.return_samples)
        return rt.v1_response(pred)

    async def infer_v2(self, name: str, body: Any, version: str | None = None) -> dict[str, Any]:
        """``POST /v2/models/{name}[/versions/{v}]/infer`` on an already parsed JSON body."""
        rt = self.get(name, version)
        req = validate_body(InferenceRequest, body)
        samples, seed = rt.v2_options(req)
        x = rt.v2_inputs(req)
        pred = await rt.predict(x, samples, seed)
        return rt.v2_response(pred, req)
