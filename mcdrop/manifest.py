"""``model.toml``: the manifest of a model folder, parsed strictly and written back.

The layout of the file is drawn in :mod:`mcdrop.repository`. Parsing goes table by table
(top level, ``[input]``, ``[output]``, ``[sampling]``, ``[model]``); every error is a
:class:`~mcdrop.errors.ManifestError` naming the file, the table and the key. This module
needs no torch: the service's settings and tools read manifests without the engine.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from mcdrop.errors import ManifestError
from mcdrop.hf_format import check_model_table

__all__ = [
    "Manifest",
    "MANIFEST_FILE",
    "TASKS",
    "INPUT_DTYPES",
    "load_manifest",
    "manifest_from_dict",
    "manifest_to_toml",
    "version_key",
]

MANIFEST_FILE = "model.toml"
TASKS = ("regression", "classification")
INPUT_DTYPES = ("float32", "float64", "int64")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A validated ``model.toml``.

    Attributes
    ----------
    name, version, task, description : str
        ``task`` is "regression" or "classification". ``name`` is URL-safe
        (letters, digits, ``_ . -``).
    input_shape : tuple of int
        Shape of ONE input row, e.g. ``(64,)``; a request sends (B, *input_shape).
    input_dtype : str
        "float32" (default), "float64" or "int64".
    output_shape : tuple of int
        Shape of one row's output, e.g. ``(10,)`` for 10 classes or ``(1,)``.
    output_names : tuple of str
        One label per output element (class names for classifiers); may be empty.
    default_samples, max_samples : int
        MC samples used when a request names none, and the most it may ask for.
    max_batch_rows : int
        Most input rows one request may send.
    tau : float or None
        Model precision (regression): 1/tau is added to the predictive variance. In the
        units of the output.
    max_compute_seconds : float or None
        ``[sampling] max_compute_seconds``: the service's compute budget for one request of
        this model (rows x samples x the cost per row-sample measured at warm-up); None:
        the service's default (``MCDROP_MAX_COMPUTE_S``).
    factory : str
        Name of the function in ``model.py`` that builds the module.
    config : dict
        Keyword arguments of the factory; for ``format = "transformers"`` the checked
        ``[model]`` table (:func:`mcdrop.hf_format.check_model_table`).
    format : str
        "pytorch" (``model.py`` + ``weights.safetensors``) or "transformers" (a
        ``save_pretrained`` folder, see :mod:`mcdrop.hf_format`).
    """

    name: str
    version: str
    task: str
    description: str = ""
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    output_shape: tuple[int, ...]
    output_names: tuple[str, ...] = ()
    default_samples: int = 100
    max_samples: int = 1000
    max_batch_rows: int = 1024
    tau: float | None = None
    max_compute_seconds: float | None = None
    factory: str = "build"
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    format: str = "pytorch"

    def to_dict(self) -> dict[str, Any]:
        """The manifest as nested plain data, in the layout of ``model.toml``."""
        sampling: dict[str, Any] = {
            "default_samples": self.default_samples,
            "max_samples": self.max_samples,
            "max_batch_rows": self.max_batch_rows,
        }
        if self.tau is not None:
            sampling["tau"] = self.tau
        if self.max_compute_seconds is not None:
            sampling["max_compute_seconds"] = self.max_compute_seconds
        model: dict[str, Any] = {"factory": self.factory, "config": dict(self.config)}
        head = {"name": self.name, "version": self.version, "task": self.task}
        if self.format != "pytorch":
            head["format"] = self.format
            model = dict(self.config)
        return {
            **head,
            "description": self.description,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype},
            "output": {"shape": list(self.output_shape), "names": list(self.output_names)},
            "sampling": sampling,
            "model": model,
        }


class _Fields:
    """Typed access to one table of a manifest, with errors naming file, table and key."""

    def __init__(self, src: str, table: str, data: Any) -> None:
        self.src = src
        self.table = table
        where = f"[{table}]" if table else "top level"
        if not isinstance(data, dict):
            raise ManifestError(f"{src}: {where} must be a table, got {_show(data)}")
        self.data = data

    def fail(self, key: str, msg: str) -> ManifestError:
        prefix = f"[{self.table}] " if self.table else ""
        return ManifestError(f"{self.src}: {prefix}{key} {msg}")

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                where = f"[{self.table}]" if self.table else "the top level"
                known = ", ".join(sorted(allowed))
                raise ManifestError(
                    f"{self.src}: unknown key '{key}' in {where} (known keys: {known})"
                )

    def string(self, key: str, default: str | None = None, empty_ok: bool = False) -> str:
        v = self.data.get(key, default)
        if v is None:
            raise self.fail(key, "is required")
        if not isinstance(v, str) or (not empty_ok and not v.strip()):
            raise self.fail(key, f"must be a non-empty string, got {_show(v)}")
        return v

    def pos_int(self, key: str, default: int | None = None) -> int:
        v = self.data.get(key, default)
        if v is None:
            raise self.fail(key, "is required")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise self.fail(key, f"must be a positive integer, got {_show(v)}")
        return v

    def shape(self, key: str) -> tuple[int, ...]:
        v = self.data.get(key)
        if v is None:
            raise self.fail(key, "is required (a list of positive integers, e.g. [64])")
        ok = isinstance(v, list) and len(v) > 0
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
        if not ok:
            raise self.fail(key, f"must be a non-empty list of positive integers, got {_show(v)}")
        return tuple(v)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    return f"{v!r}"


def _head(top: _Fields) -> dict[str, Any]:
    """name, version, task and description of the top level."""
    name = top.string("name")
    if not _NAME_RE.match(name):
        raise top.fail(
            "name",
            f"must be 1-64 letters, digits, '_', '.' or '-' (used in URLs), got {name!r}",
        )
    task = top.string("task")
    if task not in TASKS:
        raise top.fail("task", f"must be 'regression' or 'classification', got {task!r}")
    return {
        "name": name,
        "version": top.string("version"),
        "task": task,
        "description": top.string("description", default="", empty_ok=True),
    }


def _input(inp: _Fields) -> dict[str, Any]:
    inp.check_keys({"shape", "dtype"})
    shape = inp.shape("shape")
    dtype = inp.string("dtype", default="float32")
    if dtype not in INPUT_DTYPES:
        raise inp.fail("dtype", f"must be one of {', '.join(INPUT_DTYPES)}, got {dtype!r}")
    return {"input_shape": shape, "input_dtype": dtype}


def _output(out: _Fields, task: str) -> dict[str, Any]:
    out.check_keys({"shape", "names"})
    shape = out.shape("shape")
    names = out.data.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise out.fail("names", f"must be a list of strings, got {_show(names)}")
    n_out = math.prod(shape)
    if names and len(names) != n_out:
        raise out.fail(
            "names",
            f"must have one label per output element ({n_out} for shape "
            f"{list(shape)}) or be empty, got {len(names)}",
        )
    if task == "classification" and len(shape) != 1:
        raise out.fail("shape", f"must be [classes] for a classifier, got {list(shape)}")
    if task == "classification" and shape[0] < 2:
        raise out.fail("shape", f"must have at least 2 classes, got {list(shape)}")
    return {"output_shape": shape, "output_names": tuple(names)}


def _tau(samp: _Fields, task: str) -> float | None:
    tau = samp.data.get("tau")
    if tau is None:
        return None
    if (
        isinstance(tau, bool)
        or not isinstance(tau, (int, float))
        or not (math.isfinite(tau) and tau > 0)
    ):
        raise samp.fail("tau", f"must be a positive finite number, got {_show(tau)}")
    if task != "regression":
        raise samp.fail("tau", "is only meaningful for task = 'regression'")
    return float(tau)


def _seconds(samp: _Fields, key: str) -> float | None:
    v = samp.data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise samp.fail(key, f"must be a positive number of seconds, got {_show(v)}")
    return float(v)


def _sampling(samp: _Fields, task: str) -> dict[str, Any]:
    samp.check_keys(
        {"default_samples", "max_samples", "max_batch_rows", "tau", "max_compute_seconds"}
    )
    default_samples = samp.pos_int("default_samples", 100)
    max_samples = samp.pos_int("max_samples", 1000)
    if default_samples > max_samples:
        raise samp.fail(
            "default_samples",
            f"({default_samples}) must not exceed max_samples ({max_samples})",
        )
    return {
        "default_samples": default_samples,
        "max_samples": max_samples,
        "max_batch_rows": samp.pos_int("max_batch_rows", 1024),
        "tau": _tau(samp, task),
        "max_compute_seconds": _seconds(samp, "max_compute_seconds"),
    }


def _model(top: _Fields, table: Any, src: str) -> dict[str, Any]:
    """format, factory and config: a ``[model]`` table per format."""
    fmt = top.string("format", default="pytorch")
    if fmt == "transformers":  # a save_pretrained folder: its own [model] table
        return {"format": fmt, "factory": "build", "config": check_model_table(table, src)}
    if fmt != "pytorch":
        raise top.fail("format", f"must be 'pytorch' or 'transformers', got {fmt!r}")
    mod = _Fields(src, "model", table)
    mod.check_keys({"factory", "config"})
    factory = mod.string("factory", default="build")
    if not factory.isidentifier():
        raise mod.fail("factory", f"must be a Python function name, got {factory!r}")
    config = mod.data.get("config", {})
    if not isinstance(config, dict):
        raise mod.fail("config", f"must be a table of keyword arguments, got {_show(config)}")
    return {"format": fmt, "factory": factory, "config": dict(config)}


def manifest_from_dict(data: Any, src: str) -> Manifest:
    """Validate parsed ``model.toml`` content (``src`` names it in errors): a Manifest."""
    top = _Fields(src, "", data)
    top.check_keys(
        {"name", "version", "task", "format", "description", "input", "output", "sampling"}
        | {"model"}
    )
    head = _head(top)
    for required in ("input", "output"):
        if required not in data:
            raise ManifestError(f"{src}: the [{required}] table is required")
    return Manifest(
        **head,
        **_input(_Fields(src, "input", data["input"])),
        **_output(_Fields(src, "output", data["output"]), head["task"]),
        **_sampling(_Fields(src, "sampling", data.get("sampling", {})), head["task"]),
        **_model(top, data.get("model", {}), src),
    )


def load_manifest(folder: str | Path) -> Manifest:
    """Parse and validate ``folder/model.toml``.

    Raises
    ------
    ManifestError
        The file is missing, is not valid TOML, or a field is missing or of the wrong type;
        the message names the file, the table and the field.
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path}: no such file (a model folder needs a {MANIFEST_FILE})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from exc
    return manifest_from_dict(data, str(path))


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _toml_value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, where) for x in v) + "]"
    raise ManifestError(f"{where}: cannot write a value of type {type(v).__name__} to TOML")


def _toml_table(header: str, table: Mapping[str, Any]) -> list[str]:
    lines = [f"[{header}]"] if header else []
    subs = []
    for k, v in table.items():
        key = k if re.match(r"^[A-Za-z0-9_-]+$", k) else json.dumps(k)
        if isinstance(v, Mapping):
            subs.append((f"{header}.{key}" if header else key, v))
        else:
            lines.append(f"{key} = {_toml_value(v, header or 'top level')}")
    for h, sub in subs:
        lines.append("")
        lines.extend(_toml_table(h, sub))
    return lines


def manifest_to_toml(manifest: Manifest) -> str:
    """``model.toml`` text for ``manifest`` (read back by :func:`load_manifest` unchanged).

    Written here rather than with tomli-w, which puts every array element on a line of
    its own (``shape = [64]`` would take three lines, ten output names twelve)."""
    return "\n".join(_toml_table("", manifest.to_dict())) + "\n"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key under which the highest version is the last: dotted parts compare as
    numbers when they are digits (``1.10`` after ``1.9``), as text otherwise, and a number
    after a text part (``1.0`` after ``1.0rc``)."""
    parts = re.split(r"[.\-+]", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)
