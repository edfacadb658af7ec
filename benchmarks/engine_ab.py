#!/usr/bin/env python3
"""MCPredictor.predict under two (or more) source trees, interleaved: an A/B that holds on a
loaded machine.

Each tree gets one long-lived child process per case (``PYTHONPATH`` = the tree, so it
imports that tree's ``mcdrop``); every child builds the same model from *this* tree's
``mcdrop/bench_cases.py`` (same seed, same weights, same input) and warms up. Then the
rounds alternate: each child in turn runs ``--calls`` timed predictions while the others
wait, in ABBA order so that a drift of the machine's load hits both alike. The result is
each tree's median (min-max) over all timed calls and the ratio of medians, with the
spread of the per-round ratios.

    git worktree add /tmp/before ca4e879
    python benchmarks/engine_ab.py --tree before=/tmp/before --tree after=. \\
        --cases cnn,mlp,transformer --rounds 8 --calls 3
    git worktree remove /tmp/before
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CASES_FILE = HERE.parent.parent / "mcdrop" / "bench_cases.py"


def child(case_name: str, threads: int, clock: str) -> None:
    """Build the case, warm up, then time ``n`` predictions per line ``n`` read on stdin."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    now = time.process_time if clock == "cpu" else time.perf_counter

    spec = importlib.util.spec_from_file_location("_ab_cases", CASES_FILE)
    assert spec is not None and spec.loader is not None
    cases = importlib.util.module_from_spec(spec)
    sys.modules["_ab_cases"] = cases  # dataclasses look the module up by name
    spec.loader.exec_module(cases)
    import mcdrop
    from mcdrop import MCPredictor

    torch.manual_seed(0)
    case = next(c for c in cases.cases("cpu") if c.name == case_name)
    model = case.build().eval()
    x = case.make_input(torch.device("cpu"))
    pred = MCPredictor(model, samples=case.samples, task=case.task, max_samples=10_000)
    variance = float(pred.predict(x, seed=0).variance.double().mean())
    pred.predict(x, seed=0)
    ready = {"ready": mcdrop.__file__, "mean_variance": variance,
             "python_calls": _python_calls(lambda: pred.predict(x, seed=0))}  # fmt: skip
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        n = int(line)
        if n <= 0:
            return
        times = []
        for _ in range(n):
            t0 = now()
            pred.predict(x, seed=0)
            times.append((now() - t0) * 1e3)
        print(json.dumps(times), flush=True)


def _python_calls(fn: Any) -> int:
    """Python and C function calls made by ``fn()``: the per-call overhead in a number that
    does not depend on the machine's load (the tensor work is a fixed number of calls)."""
    count = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def _start(tree: Path, case: str, ns: argparse.Namespace) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE),
            "--child",
            case,
            "--threads",
            str(ns.threads),
            "--clock",
            ns.clock,
        ],  # fmt: skip
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tree),
    )


def _ask(proc: subprocess.Popen[str], n: int) -> list[float]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    return [float(t) for t in json.loads(proc.stdout.readline())]


def run_case(case: str, trees: dict[str, Path], ns: argparse.Namespace) -> dict[str, object]:
    """Interleaved timings of ``case`` under each tree."""
    rounds, calls = ns.rounds, ns.calls
    procs = {name: _start(path, case, ns) for name, path in trees.items()}
    info = {}
    try:
        for name, proc in procs.items():
            assert proc.stdout is not None
            info[name] = json.loads(proc.stdout.readline())
        times: dict[str, list[float]] = {n: [] for n in procs}
        order = list(procs)
        ratios: dict[str, list[float]] = {n: [] for n in order[1:]}  # per round, to the first
        for r in range(rounds):
            this = {}
            for name in order if r % 2 == 0 else order[::-1]:
                this[name] = _ask(procs[name], calls)
                times[name] += this[name]
            for name in order[1:]:
                ratios[name].append(
                    statistics.median(this[name]) / statistics.median(this[order[0]])
                )
    finally:
        for proc in procs.values():
            if proc.stdin is not None and proc.poll() is None:
                proc.stdin.write("0\n")
                proc.stdin.close()
            proc.wait(timeout=60)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "trees": {
            n: {
                "median_ms": round(med[n], 2),
                "min_ms": round(min(t), 2),
                "max_ms": round(max(t), 2),
                "mean_variance": info[n]["mean_variance"],
                "python_calls": info[n]["python_calls"],
                "mcdrop": info[n]["ready"],
                "ratio": round(med[n] / med[order[0]], 3),
                "round_ratios": [round(x, 3) for x in ratios.get(n, [1.0])],
            }
            for n, t in times.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH (give two or more)")
    ap.add_argument("--cases", default="cnn,mlp,transformer")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per tree per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or the process's CPU time (less sensitive to other load; use "
        "with --threads 1, where no worker thread spins)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.child:
        child(ns.child, ns.threads, ns.clock)
        return 0
    trees = {}
    for spec in ns.tree:
        name, _, path = spec.partition("=")
        trees[name] = Path(path).resolve()
    if len(trees) < 2:
        ap.error("give at least two --tree NAME=PATH")
    first = list(trees)[0]
    results: dict[str, Any] = {}
    for case in ns.cases.split(","):
        results[case] = run_case(case, trees, ns)
        print(f"# {case} done", file=sys.stderr, flush=True)
    if ns.json:
        print(json.dumps(results))
        return 0
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end, {ns.rounds} rounds x {ns.calls} "
          f"calls per tree, ABBA order, {ns.clock} clock, torch threads "
          f"{ns.threads or 'default'}")  # fmt: skip
    print(f"| case | tree | ms, median (min-max) | / {first} | per-round ratio, median "
          "(min-max) | Python calls per predict | mean variance |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for case, res in results.items():
        for name, t in res["trees"].items():
            rr = t["round_ratios"]
            print(f"| {case} | {name} | {t['median_ms']:.2f} ({t['min_ms']:.2f}-{t['max_ms']:.2f})"
                  f" | {t['ratio']:.3f} | {statistics.median(rr):.3f} ({min(rr):.3f}-"
                  f"{max(rr):.3f}) | {t['python_calls']} | {t['mean_variance']:.4g} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
