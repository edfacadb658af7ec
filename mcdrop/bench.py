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
Times are medians over repeats with the spread (min, max); peak memory is measured in a
fresh subprocess per configuration (peak RSS growth on CPU, ``max_memory_allocated`` on
CUDA). Run ``python benchmarks/engine.py --help`` or ``mcdrop bench --help``.
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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mcdrop import MCPredictor, mc_mode


# ----------------------------------------------------------------------------- models
class ConvNet(nn.Module):
    """A small ResNet-style CNN with dropout only before the classifier."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        w = width
        self.features = nn.Sequential(
            block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 4 * w, 2), block(4 * w, 8 * w, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)  # (B, 8w)
        return self.fc(self.drop(h))


def dropout_mlp(sizes: list[int], p: float = 0.1) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU and dropout after every hidden one."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(p)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def mlp(width: int, depth: int, n_in: int = 128) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(0.1)]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, d: int, layers: int, heads: int = 8) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).mean(1))


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    samples: int
    task: str


def cases(size: str) -> list[Case]:
    if size == "gpu":
        return [
            Case("cnn", lambda: ConvNet(64, 1000), (64, 3, 224, 224), 100, "classification"),
            Case("mlp", lambda: mlp(2048, 4), (512, 128), 100, "regression"),
            Case("transformer", lambda: Encoder(512, 6), (32, 128, 512), 50, "regression"),
        ]
    return [
        Case("cnn", lambda: ConvNet(16, 10), (16, 3, 32, 32), 100, "classification"),
        Case("mlp", lambda: mlp(512, 4), (64, 128), 100, "regression"),
        Case("transformer", lambda: Encoder(64, 2, 4), (4, 32, 64), 50, "regression"),
        # issue 19's CPU target: dropout after every layer, the GEMMs dominate
        Case(
            "mlp_wide",
            lambda: dropout_mlp([64, 512, 512, 512, 10]),
            (256, 64),
            100,
            "classification",
        ),  # fmt: skip
    ]


# ----------------------------------------------------------------------------- strategies
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


def _ratio(rows: dict[str, dict[str, float | None]], a: str, b: str) -> float:
    """Median time of strategy ``a`` over that of ``b``."""
    ta, tb = rows[a]["median_ms"], rows[b]["median_ms"]
    assert ta is not None and tb is not None
    return round(ta / tb, 2)


def time_it(fn: Callable[[], Any], repeats: int, device: torch.device) -> dict[str, float]:
    fn()  # warm-up (plans, caches, allocator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


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
    x = torch.randn(*case.input_shape, device=device)
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
    ap.add_argument("--cases", default="cnn,mlp,transformer")
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
    device = torch.device(ns.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[ns.precision]
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": ns.precision,
    }
    results: dict[str, Any] = {"info": info, "cases": {}}
    wanted = ns.cases.split(",")
    for case in [c for c in cases(ns.size) if c.name in wanted]:
        torch.manual_seed(0)
        model = case.build().to(device).eval()
        x = torch.randn(*case.input_shape, device=device)
        rows: dict[str, dict[str, float | None]] = {}
        print(f"# {case.name}: input {case.input_shape}, S = {case.samples}", file=sys.stderr)
        for name in strategies():
            fn = run_strategy(name, model, x, case.samples, case.task, dtype)
            rows[name] = dict(time_it(fn, ns.repeats, device))
            rows[name]["mean_variance"] = _mean_variance(fn())
            print(f"  {name:18s} {rows[name]['median_ms']:9.2f} ms", file=sys.stderr, flush=True)
        det = rows["deterministic"]["median_ms"]
        assert det is not None
        for r in rows.values():
            r["x_deterministic"] = round(r["median_ms"] / det, 2)  # type: ignore[operator]
        # A peer whose answer has zero variance did not sample dropout: not a competitor.
        peers = [
            rows[n]["median_ms"]
            for n in ("loop", "replicate", "torch_uncertainty")
            if n in rows and (rows[n].get("mean_variance") or 0.0) > 0.0
        ]
        best_peer = min(p for p in peers if p is not None)
        entry: dict[str, Any] = {
            "input_shape": case.input_shape,
            "samples": case.samples,
            "times": rows,
            "mcdrop_speedup_vs_best_peer": round(best_peer / rows["mcdrop"]["median_ms"], 2),  # type: ignore[operator]
            "compile_x_floor": _ratio(rows, "mcdrop_compile", "gemm_floor"),
            "eager_x_floor": _ratio(rows, "mcdrop", "gemm_floor"),
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
        results["cases"][case.name] = entry
    if ns.json:
        print(json.dumps(results))
    else:
        print_tables(results)
    return 0


def print_tables(results: dict[str, Any]) -> None:
    info = results["info"]
    print(
        f"device {info['device']} ({info['machine']}, {info['cpus']} threads), "
        f"torch {info['torch']}, {info['precision']}, {info['date']}"
    )
    for name, e in results["cases"].items():
        print(f"\n{name}: input {tuple(e['input_shape'])}, S = {e['samples']}")
        print("| strategy | median ms | min-max ms | x deterministic | mean variance |")
        print("|---|---|---|---|---|")
        for s, r in e["times"].items():
            var = r.get("mean_variance")
            shown = "-" if var is None else (f"{var:.3g}" if var > 0 else "0 (no dropout ran!)")
            print(
                f"| {s} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | "
                f"{r['x_deterministic']:.2f} | {shown} |"
            )
        print(f"mcdrop speed-up over the best peer strategy: {e['mcdrop_speedup_vs_best_peer']}x")
        print(f"against the GEMM floor: eager {e['eager_x_floor']}x, compiled "
              f"{e['compile_x_floor']}x")  # fmt: skip
        if "peak_mib" in e:
            print("peak memory (MiB): " + ", ".join(f"{k} {v}" for k, v in e["peak_mib"].items()))


if __name__ == "__main__":
    sys.exit(main())
