"""``mcdrop predict``: send the rows of a file to a running mcdrop server and show the answer.

::

    mcdrop predict --model digits --input rows.npy --samples 200 --seed 7
    mcdrop predict --url http://host:8000 --model concrete --input rows.csv --json
    mcdrop predict --model toy1d --input rows.json --output answer.json

Input files: ``.json`` (a list of rows, or a request body ``{"inputs": [...]}``), ``.npy``
(any numeric dtype) or ``.csv`` (comma-separated numbers, one row per line; a first line that
is not numeric is taken as a header). JSON integers and integer ``.npy`` arrays are sent as
integers (token ids for an ``int64`` model), floats as floats. A CSV row holds one input
flattened, ``prod(input_shape)`` values, as ``mcdrop evaluate`` reads it: it is reshaped to
the model's input shape, and for an ``int64`` model its values must be whole numbers.
A ``.json`` list of strings (``["hello there", "hola"]``, or ``{"inputs": [...]}``) holds raw
texts, one per row, for a model whose folder has a tokenizer (``langid``): they are sent
as strings and the server turns them into token ids.

The table shows ``mean ± std`` per output for regression and the predicted class, its
probability, the predictive entropy and the mutual information for classifiers; ``--json``
prints the server's JSON answer instead, ``--output`` writes it to a file.

Exit status: 0 on success, 2 for a bad command line or an unusable input file, 1 when the
request fails (server unreachable, error answer). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from mcdrop._client_encode import as_array
from mcdrop.client import Client, ClientError, InputError, ModelInfo, PredictResult

__all__ = ["main", "load_inputs", "format_table"]

DEFAULT_URL = "http://127.0.0.1:8000"
# Significant digits in the table; --json has the full precision.
_DIGITS = 4


class InputFileError(Exception):
    """An input file that is missing or cannot be read as rows of numbers."""


def load_inputs(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
) -> np.ndarray:
    """Rows of numbers from a ``.json``, ``.npy`` or ``.csv`` file, as an array (B, *F).

    Parameters
    ----------
    path : path
        The file.
    input_shape, input_dtype : optional
        The model's (``GET /v1/models/{name}``). They shape CSV rows only, whose text has
        neither: each row, ``prod(input_shape)`` values, becomes (*input_shape), int64 for
        an ``int64`` model (whole numbers required) and float64 otherwise. Without them a
        CSV row stays flat, int64 when every cell is an integer. ``.npy`` and ``.json``
        keep their own shape and dtype (JSON integers as int64).

    Raises
    ------
    InputFileError
        Missing or unreadable file, unknown extension, non-numeric content, CSV rows that
        do not fit the model's input.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"input file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".json":
            arr = _load_json(path)
        elif suffix == ".csv":
            arr = _fit_model(_load_csv(path), path, input_shape, input_dtype)
        else:
            raise InputFileError(
                f"cannot read {path.name!r}: the input must be a .json, .npy or .csv file"
            )
    except InputFileError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read {path.name!r} as {suffix[1:]}: {exc}") from exc
    if arr.dtype.kind not in "iuf" and not (suffix == ".json" and arr.dtype.kind == "U"):
        raise InputFileError(f"{path.name!r} does not hold numbers (dtype {arr.dtype})")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise InputFileError(f"{path.name!r} holds no rows")
    return arr


def _load_json(path: Path) -> np.ndarray:
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        if "inputs" not in data:
            raise InputFileError(f"{path.name!r}: a JSON object must have an 'inputs' key")
        data = data["inputs"]
    if isinstance(data, list) and data and all(isinstance(t, str) for t in data):
        return np.asarray(data, dtype=str)  # raw texts, one per row
    try:
        floats = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputFileError(
            f"{path.name!r}: expected a list of rows of numbers, all of the same length"
        ) from exc
    if floats.ndim == 0 or floats.size == 0 or not np.isfinite(floats).all():
        return floats  # load_inputs names the missing rows, the client the non-finite ones
    # The client's own encoding: integers stay int64, bools and ints beyond int64 are
    # refused (as floats they would pass, rounded).
    try:
        return as_array(data)
    except InputError as exc:
        raise InputFileError(f"{path.name!r}: {exc}") from exc


def _load_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        lines = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]  # a header
    rows: list[list[float]] = []
    integers = True
    for lineno, r in enumerate(lines, start=1):
        cells = [c.strip() for c in r]
        integers = integers and all(_INT_RE.match(c) for c in cells)
        try:
            rows.append([float(c) if c else float("nan") for c in cells])
        except ValueError as exc:
            raise InputFileError(f"{path.name!r}: data row {lineno}: {exc}") from exc
    if not rows:
        raise InputFileError(f"{path.name!r} holds no rows")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InputFileError(
            f"{path.name!r}: rows have different numbers of columns {sorted(widths)}"
        )
    if integers:  # every cell an integer literal: token ids, exactly (no float rounding)
        try:
            return np.asarray([[int(c) for c in r] for r in lines], dtype=np.int64)
        except OverflowError as exc:
            raise InputFileError(f"{path.name!r}: an integer is outside the int64 range") from exc
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


_INT_RE = re.compile(r"^[+-]?\d+$")


def _fit_model(
    table: np.ndarray, path: Path, shape: Sequence[int] | None, dtype: str | None
) -> np.ndarray:
    """CSV rows (B, F) as the model's inputs (B, *shape) and dtype, as `mcdrop evaluate`."""
    if shape is not None:
        n_in = math.prod(shape)
        if table.shape[1] != n_in:
            raise InputFileError(
                f"{path.name!r}: rows have {table.shape[1]} values but the model takes "
                f"{n_in} per row (input shape {list(shape)}, flattened)"
            )
        table = table.reshape(-1, *shape)
    if dtype is None:
        return table
    if dtype.startswith("int"):
        if table.dtype.kind == "f":
            if not np.all(np.isfinite(table) & (table == np.round(table))):
                raise InputFileError(
                    f"{path.name!r}: the model takes integer inputs ({dtype}); the file "
                    "holds values that are not whole numbers"
                )
            # CSV text has no dtype: "3.0" read for an int64 model is the integer 3
            table = table.astype(np.int64)
        return table
    return table.astype(np.float64, copy=False)


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row if c.strip()]
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- table


def _fmt(x: float) -> str:
    return f"{x:.{_DIGITS}g}"


def format_table(res: PredictResult, info: ModelInfo | None = None) -> str:
    """The answer as an aligned text table, one line per input row."""
    lines = [f"model {res.model}   samples {res.samples}   seed {res.seed}"]
    b = res.mean.shape[0]
    if res.probs is not None:
        probs = res.probs  # (B, C)
        cls = np.argmax(probs, axis=1)  # (B,)
        entropy = np.asarray(res.predictive_entropy)  # (B,)
        mi = np.asarray(res.mutual_information)  # (B,)
        names = info.output_names if info else []
        labels = names if len(names) == probs.shape[1] else [str(k) for k in range(probs.shape[1])]
        head = ["row", "class", "prob", "entropy", "MI"]
        body = [
            [
                str(i),
                labels[int(cls[i])],
                f"{probs[i, cls[i]]:.3f}",
                f"{entropy[i]:.3f}",
                f"{mi[i]:.3f}",
            ]
            for i in range(b)
        ]
    else:
        mean = res.mean.reshape(b, -1)  # (B, O)
        std = res.std.reshape(b, -1)  # (B, O)
        n_out = mean.shape[1]
        outs = info.output_names if info and len(info.output_names) == n_out else None
        if outs is None:
            outs = [""] if n_out == 1 else [f"y{j}" for j in range(n_out)]
        head = ["row", *(f"{n} mean ± std".lstrip() for n in outs)]
        body = [
            [str(i), *(f"{_fmt(mean[i, j])} ± {_fmt(std[i, j])}" for j in range(n_out))]
            for i in range(b)
        ]
    widths = [max(len(r[k]) for r in [head, *body]) for k in range(len(head))]
    for r in [head, *body]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcdrop predict",
        description="Send the rows of a file to a running mcdrop server and print the "
        "Monte Carlo dropout prediction with its uncertainty.",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("MCDROP_URL", DEFAULT_URL),
        help="server URL (default: $MCDROP_URL or %(default)s)",
    )
    p.add_argument("--model", required=True, help="name of a served model")
    p.add_argument(
        "--input", required=True, metavar="FILE", help="rows to predict: .json, .npy or .csv"
    )
    p.add_argument("--samples", type=int, help="Monte Carlo samples (default: the model's)")
    p.add_argument("--seed", type=int, help="seed for reproducible numbers")
    p.add_argument("--output", metavar="FILE", help="also write the JSON answer to FILE")
    p.add_argument("--json", action="store_true", help="print the JSON answer, not a table")
    p.add_argument(
        "--api-key",
        default=os.environ.get("MCDROP_API_KEY") or None,
        help="API key sent as a Bearer token (default: $MCDROP_API_KEY)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the server (%(default)s)"
    )
    return p


def _fail(message: str, code: int) -> int:
    print(f"mcdrop predict: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run ``mcdrop predict``; returns the exit status (``transport`` is for tests)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    csv_input = Path(args.input).suffix.lower() == ".csv"
    try:  # read and checked before connecting: a bad file fails without a request
        x = load_inputs(args.input)
        texts = x.dtype.kind == "U"  # a JSON list of strings
        if not texts:
            as_array(x)
    except InputFileError as exc:
        return _fail(str(exc), 2)
    except InputError as exc:
        return _fail(f"{args.input}: {exc}", 2)
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout, transport=transport) as c:
            # The model's description shapes CSV rows (first), and labels the table.
            info = _model_info(c, args.model) if csv_input else None
            if info is not None:
                x = _fit_model(x, Path(args.input), info.input_shape, info.input_dtype)
            rows = x.tolist() if texts else x
            res = c.predict(args.model, rows, samples=args.samples, seed=args.seed)
            if info is None and not args.json:
                info = _model_info(c, args.model)
    except InputFileError as exc:
        return _fail(str(exc), 2)
    except InputError as exc:  # the file's content, checked before sending
        return _fail(f"{args.input}: {exc}", 2)
    except ClientError as exc:
        return _fail(str(exc), 1)
    answer = json.dumps(res.raw)
    if args.output:
        try:
            Path(args.output).write_text(answer + "\n")
        except OSError as exc:
            return _fail(f"cannot write {args.output!r}: {exc.strerror or exc}", 1)
    print(answer if args.json else format_table(res, info))
    return 0


def _model_info(c: Client, name: str) -> ModelInfo | None:
    """The model's description for column labels; the table does without it."""
    try:
        return c.model(name)
    except ClientError:
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
