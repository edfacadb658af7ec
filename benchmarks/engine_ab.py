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
    print(json.dumps({"ready": mcdrop.__file__, "mean_variance": variance}), flush=True)
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
        ratios = []  # per round: median of the last tree / median of the first
        order = list(procs)
        for r in range(rounds):
            this = {}
            for name in order if r % 2 == 0 else order[::-1]:
                this[name] = _ask(procs[name], calls)
                times[name] += this[name]
            ratios.append(statistics.median(this[order[-1]]) / statistics.median(this[order[0]]))
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
                "mcdrop": info[n]["ready"],
            }
            for n, t in times.items()
        },
        "ratio": round(med[order[-1]] / med[order[0]], 3),
        "round_ratios": [round(x, 3) for x in ratios],
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
    first, last = list(trees)[0], list(trees)[-1]
    results = {}
    for case in ns.cases.split(","):
        results[case] = res = run_case(case, trees, ns)
        print(f"# {case}: {last}/{first} = {res['ratio']}", file=sys.stderr, flush=True)
    if ns.json:
        print(json.dumps(results))
        return 0
    names = list(trees)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{ns.rounds} rounds x {ns.calls} calls per tree, ABBA order, {ns.clock} clock, "
          f"torch threads {ns.threads or 'default'}")  # fmt: skip
    print("| case | " + " | ".join(f"{n} ms, median (min-max)" for n in names)
          + f" | {last} / {first} | per-round ratios, median (min-max) |")  # fmt: skip
    print("|---" * (len(names) + 3) + "|")
    for case, res in results.items():
        cells = [
            f"{t['median_ms']:.2f} ({t['min_ms']:.2f}-{t['max_ms']:.2f})"
            for t in res["trees"].values()  # type: ignore[attr-defined]
        ]
        rr = res["round_ratios"]
        spread = f"{statistics.median(rr):.3f} ({min(rr):.3f}-{max(rr):.3f})"  # type: ignore[arg-type]
        print(f"| {case} | " + " | ".join(cells) + f" | {res['ratio']:.3f} | {spread} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
