"""Engine benchmark: mcdrop against the naive loop and input replication, same process.

Each model is timed with
  - ``deterministic``: one eval-mode forward pass (the cost of a plain prediction);
  - ``loop``: S forward passes under ``mc_mode`` (what a hand-written MC loop does);
  - ``replicate``: the input repeated S times through the whole model in one pass, under
    ``mc_mode`` (what torch-uncertainty's ``on_batch`` mode and baal do);
  - ``torch_uncertainty``: its own ``mc_dropout(on_batch=True)`` when it is installed;
  - ``gemm_floor``: the same S x B rows through the model in eval mode (no dropout), in
    chunks of 4,096 rows: the arithmetic of MC dropout without the masks, its floor;
  - ``mcdrop``: :class:`~mcdrop.MCPredictor` (split prefix, chunked, keyed masks),
    ``mcdrop_nosplit`` with the prefix split turned off, and ``mcdrop_compile`` with
    ``compile=True`` (its compilation is paid in the untimed warm-up call).
A strategy that does not apply to a case (``mcdrop_compile`` where the model cannot be
compiled, a peer that fails on the model) is reported as n/a with the reason. The models
and inputs are in :mod:`mcdrop.bench_cases` (float rows, and int64 token ids for the
Hugging Face case). Times are medians over repeats with the spread (min, max); peak
memory is measured in a fresh subprocess per configuration (peak RSS growth on CPU,
``max_memory_allocated`` on CUDA). ``python benchmarks/engine.py --help`` or
``mcdrop bench --help``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mcdrop import MCPredictor, mc_mode
from mcdrop.bench_cases import Case, cases


# ----------------------------------------------------------------------------- strategies
class NotApplicable(Exception):
    """A strategy that does not apply to a case (reported as n/a with this reason)."""


def _summ(draws: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over samples, of softmax probabilities for classifiers (as mcdrop)."""
    if task == "classification":
        draws = torch.softmax(draws, dim=-1)
    return draws.mean(0), draws.var(0)


def run_strategy(
    name: str, model: nn.Module, x: torch.Tensor, s: int, task: str, dtype: torch.dtype | None
) -> Callable[[], Any]:
    """A zero-argument callable doing one full prediction with strategy ``name``."""
    ac = (
        torch.autocast(x.device.type, dtype=dtype)
        if dtype is not None
        else torch.autocast(x.device.type, enabled=False)
    )
    if name == "deterministic":

        def det() -> Any:
            model.eval()
            with torch.inference_mode(), ac:
                return model(x)

        return det
    if name == "loop":

        def loop() -> Any:
            with torch.inference_mode(), mc_mode(model), ac:
                return _summ(torch.stack([model(x).float() for _ in range(s)]), task)

        return loop
    if name == "replicate":

        def rep() -> Any:
            with torch.inference_mode(), mc_mode(model), ac:
                xr = x.repeat(s, *([1] * (x.dim() - 1)))
                return _summ(model(xr).float().view(s, x.shape[0], -1), task)

        return rep
    if name == "gemm_floor":

        def floor() -> Any:
            model.eval()
            with torch.inference_mode(), ac:
                xr = x.repeat(s, *([1] * (x.dim() - 1)))
                ys = [model(c).float() for c in xr.split(max(1, 4096 // len(x) * len(x)))]
                return torch.cat(ys).view(s, x.shape[0], -1).mean(0)

        return floor
    if name == "torch_uncertainty":
        tu_mc_dropout = _torch_uncertainty_mc_dropout()
        assert tu_mc_dropout is not None
        tu_task = "classification" if task == "classification" else "regression"
        extra = {} if tu_task == "classification" else {"probabilistic": False}
        wrapped = tu_mc_dropout(
            model, num_estimators=s, on_batch=True, task=tu_task, **extra
        ).eval()

        def tu() -> Any:
            with torch.inference_mode(), ac:
                return _summ(wrapped(x).float().view(s, x.shape[0], -1), task)

        return tu
    return _mcdrop_strategy(name, model, x, s, task, dtype)


def _mcdrop_strategy(
    name: str, model: nn.Module, x: torch.Tensor, s: int, task: str, dtype: torch.dtype | None
) -> Callable[[], Any]:
    """``mcdrop``, ``mcdrop_nosplit`` or ``mcdrop_compile`` (n/a where it would run eagerly)."""
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    pred = MCPredictor(
        model,
        samples=s,
        task=task,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        split="off" if name == "mcdrop_nosplit" else "auto",
        max_samples=max(s, 10_000),
        compile=name == "mcdrop_compile",
    )
    if name == "mcdrop_compile":
        how = pred.describe(x)["compile"]
        if how != "compiled":
            raise NotApplicable(f"runs eagerly: {how}")

    def mc() -> Any:
        return pred.predict(x, seed=0)

    return mc


def _torch_uncertainty_mc_dropout() -> Callable[..., nn.Module] | None:
    """torch-uncertainty's own ``mc_dropout`` when installed (the ``bench`` extra).

    Its package ``__init__`` pulls in Lightning; the wrapper itself needs only torch and
    einops, so its module file is loaded directly.
    """
    import importlib.util

    spec = importlib.util.find_spec("torch_uncertainty")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = f"{list(spec.submodule_search_locations)[0]}/methods/mc_dropout.py"
    mspec = importlib.util.spec_from_file_location("_tu_mc_dropout", path)
    if mspec is None or mspec.loader is None:
        return None
    module = importlib.util.module_from_spec(mspec)
    try:
        mspec.loader.exec_module(module)
    except (ImportError, FileNotFoundError):
        return None
    return getattr(module, "mc_dropout", None)


def strategies() -> list[str]:
    names = ["deterministic", "gemm_floor", "loop", "replicate", "mcdrop", "mcdrop_nosplit",
             "mcdrop_compile"]  # fmt: skip
    if _torch_uncertainty_mc_dropout() is not None:
        names.insert(3, "torch_uncertainty")
    return names


def _mean_variance(result: Any) -> float | None:
    """Mean predictive variance of a strategy's answer: 0 exposes dropout that never ran."""
    if isinstance(result, tuple):
        return float(result[1].double().mean())
    var = getattr(result, "variance", None)
    return None if var is None else float(var.double().mean())


Row = dict[str, Any]
"""One strategy's figures: median_ms, min_ms, max_ms, mean_variance (None when n/a, with
the reason under "na")."""


def _ratio(ta: float | None, tb: float | None) -> float | None:
    """``ta / tb`` rounded; None if either is n/a."""
    return None if ta is None or tb is None else round(ta / tb, 2)


def prepare(
    name: str, case: Case, model: nn.Module, x: torch.Tensor, ns: argparse.Namespace
) -> tuple[Callable[[], Any] | None, Row]:
    """Strategy ``name`` on ``case``, called once (the untimed warm-up, which also gives the
    answer's mean variance); a strategy that cannot run the case is n/a, not a crash."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[ns.precision]
    try:
        fn = run_strategy(name, model, x, case.samples, case.task, dtype)
        return fn, {"mean_variance": _mean_variance(fn())}
    except NotApplicable as exc:
        return None, {"na": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a peer that fails on this model is a result
        return None, {"na": f"fails: {type(exc).__name__}: {str(exc)[:200]}"}


def _timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def time_all(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, interleave: bool
) -> dict[str, dict[str, float]]:
    """Median, min and max ms of ``repeats`` calls of each function (already warmed up).

    ``interleave`` times them round-robin (one call of each per round), so that a change in
    the machine's load hits every strategy alike and their ratios stay comparable.
    """
    times: dict[str, list[float]] = {n: [] for n in fns}
    if interleave:
        for _ in range(repeats):
            for n, fn in fns.items():
                times[n].append(_timed_ms(fn, device))
    else:
        for n, fn in fns.items():
            times[n] = [_timed_ms(fn, device) for _ in range(repeats)]
    return {
        n: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)}
        for n, t in times.items()
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(args: argparse.Namespace) -> None:
    """Subprocess entry: run one configuration once and print its peak memory growth (MiB)."""
    torch.manual_seed(0)
    case = next(c for c in cases(args.size) if c.name == args.case)
    device = torch.device(args.device)
    model = case.build().to(device).eval()
    x = case.make_input(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    fn = run_strategy(args.strategy, model, x, args.samples, case.task, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        # Reset the kernel's high-water mark (VmHWM) so that the import and set-up peaks
        # do not count, then read the peak of this run alone.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        fn()
        peak = (_status_kib("VmHWM") - base) / 1024
    print(json.dumps({"peak_mib": round(max(peak, 0.0), 1)}))


def peak_memory(case: str, strategy: str, samples: int, ns: argparse.Namespace) -> float | None:
    cmd = [
        sys.executable,
        "-m",
        "mcdrop.bench",
        "--child",
        "--case",
        case,
        "--strategy",
        strategy,
        "--samples",
        str(samples),
        "--size",
        ns.size,
        "--device",
        ns.device,
        "--precision",
        ns.precision,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        print(
            f"  memory run {case}/{strategy}/S={samples} failed: {res.stderr[-300:]}",
            file=sys.stderr,
        )
        return None
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mcdrop bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--size", choices=["cpu", "gpu"], default=None, help="model sizes (default: by device)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--cases", default="cnn,mlp,transformer,bert", help="comma-separated (also: mlp_wide)"
    )
    ap.add_argument("--strategies", default=None, help="comma-separated subset (default: all)")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="time the strategies round-robin (one call each per round): ratios that hold "
        "on a loaded machine",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's); 1 on a machine shared with other work, where "
        "a parallel region waits for its descheduled threads",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--big-samples", type=int, default=10_000, help="S for the memory-scaling row")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.size is None:
        ns.size = "gpu" if ns.device.startswith("cuda") else "cpu"
    if ns.child:
        peak_memory_child(ns)
        return 0
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": ns.precision,
    }
    results: dict[str, Any] = {"info": info, "cases": {}, "skipped": {}}
    wanted = ns.cases.split(",")
    for case in [c for c in cases(ns.size) if c.name in wanted]:
        why = case.available()
        if why is not None:
            print(f"# {case.name}: skipped, {why}", file=sys.stderr)
            results["skipped"][case.name] = why
            continue
        results["cases"][case.name] = run_case(case, ns)
    if ns.json:
        print(json.dumps(results))
    else:
        print_tables(results)
    return 0


def run_case(case: Case, ns: argparse.Namespace) -> dict[str, Any]:
    """Every strategy on ``case`` in this process (and peak memory in subprocesses)."""
    device = torch.device(ns.device)
    torch.manual_seed(0)
    model = case.build().to(device).eval()
    x = case.make_input(device)
    rows: dict[str, Row] = {}
    print(f"# {case.name}: input {case.input_shape} {x.dtype}, S = {case.samples}",
          file=sys.stderr)  # fmt: skip
    names = strategies() if ns.strategies is None else ns.strategies.split(",")
    fns: dict[str, Callable[[], Any]] = {}
    for name in ["deterministic", *(n for n in names if n != "deterministic")]:
        fn, rows[name] = prepare(name, case, model, x, ns)
        if fn is None:
            print(f"  {name:18s} n/a: {rows[name]['na']}", file=sys.stderr, flush=True)
            continue
        fns[name] = fn
        if not ns.interleave:
            rows[name].update(time_all({name: fn}, ns.repeats, device, False)[name])
            print(f"  {name:18s} {rows[name]['median_ms']:9.2f} ms", file=sys.stderr, flush=True)
    if ns.interleave:
        for name, timed in time_all(fns, ns.repeats, device, True).items():
            rows[name].update(timed)
    for r in rows.values():
        for key in ("median_ms", "min_ms", "max_ms", "mean_variance"):
            r.setdefault(key, None)
        r["x_deterministic"] = _ratio(r["median_ms"], rows["deterministic"]["median_ms"])
    # A peer whose answer has zero variance did not sample dropout: not a competitor.
    peers = [
        rows[n]["median_ms"]
        for n in ("loop", "replicate", "torch_uncertainty")
        if n in rows and (rows[n]["mean_variance"] or 0.0) > 0.0
    ]
    med = {n: r["median_ms"] for n, r in rows.items()}
    entry: dict[str, Any] = {
        "input_shape": case.input_shape,
        "input_dtype": str(x.dtype).removeprefix("torch."),
        "samples": case.samples,
        "times": rows,
        "mcdrop_speedup_vs_best_peer": _ratio(min(peers) if peers else None, med.get("mcdrop")),
        "compile_x_floor": _ratio(med.get("mcdrop_compile"), med.get("gemm_floor")),
        "eager_x_floor": _ratio(med.get("mcdrop"), med.get("gemm_floor")),
    }
    if not ns.no_memory:
        mem = {
            f"{n}@S={case.samples}": peak_memory(case.name, n, case.samples, ns)
            for n in ("deterministic", "replicate", "mcdrop")
        }
        t0 = time.perf_counter()
        mem[f"mcdrop@S={ns.big_samples}"] = peak_memory(case.name, "mcdrop", ns.big_samples, ns)
        entry["big_samples_wall_s"] = round(time.perf_counter() - t0, 1)
        entry["peak_mib"] = mem
    return entry


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio}x"


def print_tables(results: dict[str, Any]) -> None:
    info = results["info"]
    print(
        f"device {info['device']} ({info['machine']}, {info['cpus']} threads), "
        f"torch {info['torch']}, {info['precision']}, {info['date']}"
    )
    for name, e in results["cases"].items():
        print(f"\n{name}: input {tuple(e['input_shape'])} {e['input_dtype']}, S = {e['samples']}")
        print("| strategy | median ms | min-max ms | x deterministic | mean variance |")
        print("|---|---|---|---|---|")
        for s, r in e["times"].items():
            if r["median_ms"] is None:
                print(f"| {s} | n/a: {r['na']} | | | |")
                continue
            var = r["mean_variance"]
            shown = "-" if var is None else (f"{var:.3g}" if var > 0 else "0 (no dropout ran!)")
            print(
                f"| {s} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | "
                f"{r['x_deterministic']:.2f} | {shown} |"
            )
        print(
            f"mcdrop speed-up over the best peer strategy: {_x(e['mcdrop_speedup_vs_best_peer'])}"
        )
        print(f"against the GEMM floor: eager {_x(e['eager_x_floor'])}, compiled "
              f"{_x(e['compile_x_floor'])}")  # fmt: skip
        if "peak_mib" in e:
            print("peak memory (MiB): " + ", ".join(f"{k} {v}" for k, v in e["peak_mib"].items()))
    for name, why in results.get("skipped", {}).items():
        print(f"\n{name}: skipped, {why}")


if __name__ == "__main__":
    sys.exit(main())
