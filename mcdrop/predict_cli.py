"""``mcdrop predict``: send the rows of a file to a running mcdrop server and show the answer.

::

    mcdrop predict --model digits --input rows.npy --samples 200 --seed 7
    mcdrop predict --url http://host:8000 --model concrete --input rows.csv --json
    mcdrop predict --model toy1d --input rows.json --output answer.json

Input files: ``.json`` (a list of rows, or a request body ``{"inputs": [...]}``), ``.npy``
(any numeric dtype) or ``.csv`` (comma-separated numbers, one row per line; a first line that
is not numeric is taken as a header). The table shows ``mean ± std`` per output for
regression and the predicted class, its probability, the predictive entropy and the mutual
information for classifiers; ``--json`` prints the server's JSON answer instead, ``--output``
writes it to a file.

Exit status: 0 on success, 2 for a bad command line or an unusable input file, 1 when the
request fails (server unreachable, error answer). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from mcdrop.client import Client, ClientError, InputError, ModelInfo, PredictResult

__all__ = ["main", "load_inputs", "format_table"]

DEFAULT_URL = "http://127.0.0.1:8000"
# Significant digits in the table; --json has the full precision.
_DIGITS = 4


class InputFileError(Exception):
    """An input file that is missing or cannot be read as rows of numbers."""


def load_inputs(path: str | Path) -> np.ndarray:
    """Rows of numbers from a ``.json``, ``.npy`` or ``.csv`` file, as an array (B, *F).

    Raises
    ------
    InputFileError
        Missing or unreadable file, unknown extension, non-numeric content.
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
            arr = _load_csv(path)
        else:
            raise InputFileError(
                f"cannot read {path.name!r}: the input must be a .json, .npy or .csv file"
            )
    except InputFileError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read {path.name!r} as {suffix[1:]}: {exc}") from exc
    if arr.dtype.kind not in "iuf":
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
    try:
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputFileError(
            f"{path.name!r}: expected a list of rows of numbers, all of the same length"
        ) from exc


def _load_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        lines = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]  # a header
    rows: list[list[float]] = []
    for lineno, r in enumerate(lines, start=1):
        try:
            rows.append([float(c) if c.strip() else float("nan") for c in r])
        except ValueError as exc:
            raise InputFileError(f"{path.name!r}: data row {lineno}: {exc}") from exc
    if not rows:
        raise InputFileError(f"{path.name!r} holds no rows")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InputFileError(
            f"{path.name!r}: rows have different numbers of columns {sorted(widths)}"
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


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
    try:
        x = load_inputs(args.input)
    except InputFileError as exc:
        return _fail(str(exc), 2)
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout, transport=transport) as c:
            res = c.predict(args.model, x, samples=args.samples, seed=args.seed)
            info = None if args.json else _model_info(c, args.model)
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
