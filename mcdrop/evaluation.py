"""``mcdrop evaluate``: score a repository model on a data file and write a report.

::

    mcdrop evaluate MODEL_DIR DATA_FILE [--samples S] [--seed N] [--out DIR]
                    [--levels 0.5 0.9 0.95] [--bins 15]

``DATA_FILE`` is a CSV (``.csv``, comma-separated) or a whitespace-separated text file, one
row per line, an optional header line; the leading columns are the flattened input row
(``prod(input_shape)`` values), the last column the target (regression) or the class index
(classification). Writes ``DIR/report.json`` and PNG plots: a reliability diagram for
classifiers, a coverage curve for regression, and the predictive band for 1-D inputs. The
plots need matplotlib (``pip install 'mcdrop[plots]'``); without it the report is written
alone and says so (``figures_skipped``). Nothing is left in ``DIR`` when the run fails.

Exit codes: 0 success, 2 bad model folder or data file (the message says what to fix).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from mcdrop.errors import DataError, McdropError

if TYPE_CHECKING:
    from mcdrop.manifest import Manifest

__all__ = ["main", "read_table", "evaluate", "Progress"]


class Progress:
    """A one-line progress indicator on stderr (shown only for runs of several steps)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.t0 = time.perf_counter()
        self.enabled = total > 1

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = self.done / self.total
        bar = "#" * int(24 * frac)
        elapsed = time.perf_counter() - self.t0
        self.stream.write(f"\r{self.label} [{bar:<24}] {self.done}/{self.total} {elapsed:5.1f}s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def read_table(path: str | Path, columns: int) -> np.ndarray:
    """Read a numeric table with exactly ``columns`` columns.

    Parameters
    ----------
    path : path
        ``.csv`` files are comma-separated, anything else whitespace-separated. A first line
        that is not all numbers is taken as a header and skipped; blank lines are skipped.
    columns : int
        Required number of columns in every row.

    Returns
    -------
    ndarray (N, columns) float64

    Raises
    ------
    DataError
        Missing file, a row with the wrong number of columns, a non-numeric or empty cell,
        NaN/Inf, or no rows; the message names the line and column.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    sep = "," if p.suffix.lower() == ".csv" else None
    rows: list[list[float]] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a text file ({exc})") from exc
    first = True
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        toks = [t.strip() for t in (line.split(sep) if sep else line.split())]
        if first:
            first = False
            if not any(_is_number(t) for t in toks if t):
                continue  # header
        if len(toks) != columns:
            raise DataError(
                f"{p} line {lineno}: expected {columns} columns (the model's "
                f"{columns - 1} input values + 1 target), got {len(toks)}"
            )
        vals = []
        for col, t in enumerate(toks, start=1):
            if not _is_number(t):
                what = "an empty cell" if not t else f"{t!r}, not a number"
                raise DataError(f"{p} line {lineno}, column {col}: {what}")
            v = float(t)
            if not math.isfinite(v):
                raise DataError(
                    f"{p} line {lineno}, column {col}: {t} (NaN/Inf values cannot be scored; "
                    "drop or impute the row)"
                )
            vals.append(v)
        rows.append(vals)
    if not rows:
        raise DataError(f"{p}: no data rows")
    return np.asarray(rows, dtype=np.float64)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def evaluate(
    model_dir: str | Path,
    data_file: str | Path,
    out_dir: str | Path,
    *,
    samples: int | None = None,
    seed: int = 0,
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95),
    bins: int = 15,
    plots: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Score the model in ``model_dir`` on ``data_file``; write report.json and plots.

    Returns
    -------
    dict
        The report (also written to ``out_dir/report.json``).
    """
    from mcdrop.repository import load_model

    loaded = load_model(model_dir)
    m = loaded.manifest
    x, target = _read_data(m, data_file)
    s = samples if samples is not None else m.default_samples
    res = _predict_all(loaded.predictor(), m, x, s, seed, stream)
    if m.task == "regression":
        metrics, figures = _regression_scores(m, x, target, res, levels)
    else:
        metrics, figures = _classification_scores(m, target, res, bins)
    report = {
        "model": m.name,
        "version": m.version,
        "task": m.task,
        "data_file": str(data_file),
        "rows": len(x),
        "samples": s,
        "seed": seed,
        "tau": m.tau,
        "metrics": metrics,
        "figures": [],
    }
    if plots and not has_matplotlib():
        report["figures_skipped"] = PLOTS_HINT
        print(f"mcdrop evaluate: no plots: {PLOTS_HINT}", file=stream or sys.stderr)
        plots = False
    _write(Path(out_dir), report, figures if plots else [])
    return report


# A figure is drawn into the output folder once every score is computed; returns its name.
Figure = Callable[[Path], str]
Levels = tuple[float, ...]


def _read_data(m: Manifest, data_file: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The input rows (shaped for the model) and targets of ``data_file``, checked."""
    from mcdrop.repository import DTYPES

    n_in = math.prod(m.input_shape)
    if m.task == "regression" and math.prod(m.output_shape) != 1:
        raise DataError(
            f"mcdrop evaluate scores single-output regression models; '{m.name}' has output "
            f"shape {list(m.output_shape)}"
        )
    table = read_table(data_file, n_in + 1)
    x = table[:, :n_in].reshape(-1, *m.input_shape)
    target = table[:, n_in]
    if not DTYPES[m.input_dtype].is_floating_point and not np.all(x == np.round(x)):
        raise DataError(f"{data_file}: model '{m.name}' takes integer inputs ({m.input_dtype})")
    if m.task == "classification":
        c = m.output_shape[0]
        bad = np.nonzero((target != np.round(target)) | (target < 0) | (target >= c))[0]
        if len(bad):
            raise DataError(
                f"{data_file}: the last column must hold class indices 0..{c - 1}; row "
                f"{int(bad[0]) + 1} has {target[bad[0]]:g}"
            )
    return x, target


def _predict_all(
    pred: Any, m: Manifest, x: np.ndarray, samples: int, seed: int, stream: TextIO | None
) -> dict[str, np.ndarray]:
    """Every row's predictions, ``max_batch_rows`` at a time, as float64 arrays (and the
    draws of regression models with a ``tau``, for the mixture likelihood)."""
    import torch

    from mcdrop.repository import DTYPES

    keep_draws = m.task == "regression" and m.tau is not None
    step = m.max_batch_rows
    prog = Progress(math.ceil(len(x) / step), f"evaluate {m.name}", stream)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), step):
        xb = torch.as_tensor(x[start : start + step], dtype=DTYPES[m.input_dtype])
        # Keyed masks: a row's draws depend on the seed, not on the batch it runs in.
        out = pred.predict(xb, samples=samples, seed=seed, return_samples=keep_draws)
        got: dict[str, torch.Tensor | None] = {"mean": out.mean, "std": out.std}
        if m.task == "classification":
            got.update(probs=out.probs, mi=out.mutual_information, ent=out.predictive_entropy)
        if keep_draws:
            got["draws"] = out.draws
        for k, v in got.items():
            assert v is not None
            parts.setdefault(k, []).append(v.detach().cpu().double().numpy())
        prog.update()
    return {k: np.concatenate(v, axis=1 if k == "draws" else 0) for k, v in parts.items()}


def _regression_scores(
    m: Manifest, x: np.ndarray, target: np.ndarray, res: dict[str, np.ndarray], levels: Levels
) -> tuple[dict[str, Any], list[Figure]]:
    from mcdrop import calibration as cal

    metrics: dict[str, Any] = {}
    mean, std = res["mean"][:, 0], res["std"][:, 0]
    metrics["rmse"] = cal.rmse(target, mean)
    metrics["gaussian_nll"] = cal.gaussian_nll(target, mean, std)
    metrics["crps"] = float(cal.crps_gaussian(target, mean, std).mean())
    metrics["mean_predictive_std"] = float(std.mean())
    if "draws" in res:
        draws = res["draws"][..., 0]  # (S, N)
        assert m.tau is not None
        metrics["mixture_log_likelihood"] = float(
            cal.mixture_log_likelihood(target, draws, m.tau).mean()
        )
    metrics["coverage"] = {
        str(k): v for k, v in cal.interval_coverage(target, mean, std, levels).items()
    }
    figures: list[Figure] = [lambda d: _plot_coverage(d, target, mean, std, m.name)]
    if math.prod(m.input_shape) == 1:
        figures.append(lambda d: _plot_band(d, x.reshape(-1), target, mean, std, m.name))
    return metrics, figures


def _classification_scores(
    m: Manifest, target: np.ndarray, res: dict[str, np.ndarray], bins: int
) -> tuple[dict[str, Any], list[Figure]]:
    from mcdrop import calibration as cal

    metrics: dict[str, Any] = {}
    probs, labels = res["probs"], target.astype(np.int64)
    metrics["accuracy"] = float((probs.argmax(1) == labels).mean())
    metrics["nll"] = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    metrics["ece"] = cal.expected_calibration_error(probs, labels, bins)
    metrics["brier"] = cal.brier_score(probs, labels)
    metrics["mean_mutual_information"] = float(res["mi"].mean())
    metrics["mean_predictive_entropy"] = float(res["ent"].mean())
    rc = cal.reliability_curve(probs, labels, bins)
    return metrics, [lambda d: _plot_reliability(d, rc, metrics["ece"], m.name)]


PLOTS_HINT = "matplotlib is not installed; pip install 'mcdrop[plots]' to get the PNG figures"


def has_matplotlib() -> bool:
    """True when matplotlib can be imported (the ``plots`` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def _write(out: Path, report: dict[str, Any], figures: list[Figure]) -> None:
    """Draw ``figures`` into ``out`` and write report.json last.

    A folder this call created is removed again if anything fails, so an error never
    leaves an empty or half-written report folder behind.
    """
    top = out.absolute()  # the outermost folder this call creates, if any
    while not top.parent.exists():
        top = top.parent
    created = not top.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        report["figures"] = [draw(out) for draw in figures]
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        if created:
            shutil.rmtree(top, ignore_errors=True)
        raise


def _plot_coverage(out: Path, y: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str) -> str:
    from mcdrop.calibration import coverage_curve

    plt = _plt()
    nominal, observed = coverage_curve(y, mean, std)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    ax.plot(nominal, observed, "o-", ms=3, label=name)
    ax.set_xlabel("nominal coverage of central interval")
    ax.set_ylabel("observed coverage")
    ax.set_title("coverage curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "coverage.png")
    plt.close(fig)
    return "coverage.png"


def _plot_band(
    out: Path, x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str
) -> str:
    plt = _plt()
    o = np.argsort(x)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    ax.fill_between(x[o], mean[o] - 2 * std[o], mean[o] + 2 * std[o], alpha=0.3, label="+- 2 sd")
    ax.plot(x[o], mean[o], lw=1.2, label="predictive mean")
    ax.scatter(x, y, s=4, c="k", label="data")
    ax.set_title(f"{name}: predictive band")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "band.png")
    plt.close(fig)
    return "band.png"


def _plot_reliability(out: Path, rc: dict[str, np.ndarray], ece: float, name: str) -> str:
    plt = _plt()
    edges = rc["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    full = rc["counts"] > 0
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    ax.bar(centers[full], rc["accuracy"][full], width=np.diff(edges)[full], alpha=0.6,
           edgecolor="k", label="accuracy")  # fmt: skip
    ax.plot(rc["confidence"][full], rc["accuracy"][full], "o", ms=3, label="(confidence, acc)")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name}: reliability, ECE = {ece:.3f}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reliability.png")
    plt.close(fig)
    return "reliability.png"


def main(argv: list[str]) -> int:
    """Entry point of ``mcdrop evaluate``; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="mcdrop evaluate",
        description="Score a repository model on a data file (last column = target or class "
        "index) and write report.json plus PNG plots.",
    )
    ap.add_argument("model_dir", type=Path, help="a model folder (with model.toml)")
    ap.add_argument("data_file", type=Path, help="CSV or whitespace-separated text file")
    ap.add_argument("--samples", type=int, default=None, help="MC samples (model default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (0)")
    ap.add_argument("--out", type=Path, default=Path("mcdrop-report"), help="output folder")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95],
                    help="interval levels for coverage (regression)")  # fmt: skip
    ap.add_argument("--bins", type=int, default=15, help="confidence bins for ECE")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    args = ap.parse_args(argv)
    try:
        report = evaluate(
            args.model_dir,
            args.data_file,
            args.out,
            samples=args.samples,
            seed=args.seed,
            levels=tuple(args.levels),
            bins=args.bins,
            plots=not args.no_plots,
        )
    except McdropError as exc:
        print(f"mcdrop evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": report["model"], "rows": report["rows"], **report["metrics"]}))
    print(f"report written to {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0
