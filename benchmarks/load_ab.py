#!/usr/bin/env python3
"""The same load against two or more servers, interleaved in one run: an A/B of the service
that holds on a loaded machine (the figures of ``benchmarks/load.py`` moved by 2x between
neighbouring runs of the same code on the shared 2-core CPU).

A variant is a source tree and ``MCDROP_*`` settings: ``--variant NAME=TREE[,KEY=VALUE...]``.
Every variant's ``mcdrop serve`` runs at once (its own port, ``PYTHONPATH`` = its tree, the
same model folder), idle while another is measured. Each round drives every variant in
turn with the same closed-loop phase (wrk when installed, else httpx; ``--seconds`` long),
in ABBA order, so a change in the machine's load hits all alike. Reported: each variant's
median throughput and p50/p95 over the rounds, its ratio to the first variant, the
spread of the per-round ratios, the mean requests per engine call (the batch size, from
/metrics) and the server's CPU time per answered request (all its threads, from /proc: a
cost that moves far less than throughput when other processes take the cores).

    # the page on and off (issue 17: the page adds nothing to the prediction hot path)
    python benchmarks/load_ab.py --variant page=.,MCDROP_PAGE=true \\
        --variant no-page=.,MCDROP_PAGE=false
    # gRPC on (the default) and off
    python benchmarks/load_ab.py --variant grpc=. --variant no-grpc=.,--no-grpc
    # a base commit against this tree
    git worktree add /tmp/before ca4e879
    python benchmarks/load_ab.py --variant before=/tmp/before --variant after=.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import _load_phase, batch_stats, sample_row, scrape  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers.live_server import ServerProcess, start_server  # noqa: E402

Variant = tuple[str, Path, dict[str, str], list[str]]


def parse_variant(spec: str) -> Variant:
    """``NAME=TREE[,MCDROP_KEY=VALUE...][,--flag...]`` -> (name, tree, env, serve flags)."""
    name, _, rest = spec.partition("=")
    tree, *pairs = rest.split(",")
    env, flags = {}, []
    for pair in pairs:
        if pair.startswith("--"):
            flags.append(pair)
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("MCDROP_"):
            raise SystemExit(
                f"--variant {spec!r}: settings are MCDROP_KEY=VALUE or a --flag, got {pair!r}"
            )
        env[key] = value
    if not name or not tree:
        raise SystemExit(f"--variant {spec!r}: expected NAME=TREE[,MCDROP_KEY=VALUE...]")
    return name, Path(tree).resolve(), env, flags


def serve(
    tree: Path, models_dir: Path, env: dict[str, str], flags: list[str], timeout: float
) -> ServerProcess:
    """``mcdrop serve`` from ``tree`` (its own code) on a free port, once its models loaded."""
    log_path = Path(tempfile.mkstemp(prefix="mcdrop-ab-", suffix=".log")[1])
    return start_server(models_dir, {"MCDROP_LOG_LEVEL": "warning", **env}, log_path=log_path,
                        ready_timeout=timeout, tree=tree, args=flags)  # fmt: skip


def one_model_repo(models_dir: Path, model: str, into: Path) -> Path:
    """A repository holding only ``model`` (copied), so every tree loads the same folder and
    no other model's format matters."""
    shutil.copytree(models_dir / model, into / model)
    return into


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (/proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime (fields 14 and 15)


def _phase(
    args: Any, server: ServerProcess, path: str, payload: dict[str, Any], c: int
) -> dict[str, float]:
    metrics0 = scrape(server.url)
    cpu0 = cpu_seconds(server.proc.pid)
    r = asyncio.run(_load_phase(args, server.url, path, payload, c, max(args.requests, 4 * c)))
    cpu = cpu_seconds(server.proc.pid) - cpu0
    batches = batch_stats(metrics0, scrape(server.url), args.model)
    errors = sum(v for k, v in r.statuses.items() if k != "200")
    answered = max(1, r.statuses.get("200", 0))
    per_call = batches["requests_per_call"] if batches["engine_calls"] else float("nan")
    return {"rps": r.throughput(), "p50_ms": r.pct(50) * 1e3, "p95_ms": r.pct(95) * 1e3,
            "errors": errors, "cpu_ms": cpu / answered * 1e3, "per_batch": per_call}  # fmt: skip


def measure(
    servers: dict[str, ServerProcess], payload: dict[str, Any], path: str, args: Any
) -> dict[int, dict[str, list[dict[str, float]]]]:
    """Per concurrency, per variant: one phase result per round (ABBA order)."""
    out: dict[int, dict[str, list[dict[str, float]]]] = {}
    names = list(servers)
    for c in args.concurrency:
        out[c] = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                out[c][n].append(_phase(args, servers[n], path, payload, c))
        first = out[c][names[0]]
        print(f"# c={c}: " + ", ".join(
            f"{n} {statistics.median(x['rps'] for x in out[c][n]):.0f} req/s" for n in names
        ) + f" (first {statistics.median(x['rps'] for x in first):.0f})", file=sys.stderr,
            flush=True)  # fmt: skip
    return out


def summary(results: dict[int, dict[str, list[dict[str, float]]]]) -> list[dict[str, Any]]:
    """Rows: concurrency, variant, median req/s (min-max), p50/p95, ratio to the first."""
    rows = []
    for c, by in results.items():
        names = list(by)
        base = [x["rps"] for x in by[names[0]]]
        base_cpu = statistics.median(x["cpu_ms"] for x in by[names[0]])
        for n in names:
            cpu = statistics.median(x["cpu_ms"] for x in by[n])
            rps = [x["rps"] for x in by[n]]
            per_round = [a / b if b else float("nan") for a, b in zip(rps, base)]
            rows.append({
                "concurrency": c, "variant": n,
                "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "p50_ms": statistics.median(x["p50_ms"] for x in by[n]),
                "p95_ms": statistics.median(x["p95_ms"] for x in by[n]),
                "errors": sum(int(x["errors"]) for x in by[n]),
                "ratio": statistics.median(rps) / statistics.median(base),
                "round_ratio": statistics.median(per_round),
                "round_min": min(per_round), "round_max": max(per_round),
                "cpu_ms": cpu, "cpu_ratio": cpu / base_cpu if base_cpu else float("nan"),
                "per_batch": statistics.median(x["per_batch"] for x in by[n]),
            })  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]], first: str) -> str:
    out = (
        f"| concurrency | variant | req/s, median (min-max) | p50 ms | p95 ms | / {first} "
        "| per-round ratio, median (min-max) | server CPU ms per answer (ratio) "
        "| requests per engine call | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        out += (f"| {r['concurrency']} | {r['variant']} | {r['rps']:.0f} ({r['rps_min']:.0f}-"
                f"{r['rps_max']:.0f}) | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['ratio']:.3f}"
                f" | {r['round_ratio']:.3f} ({r['round_min']:.3f}-{r['round_max']:.3f}) | "
                f"{r['cpu_ms']:.2f} ({r['cpu_ratio']:.2f}) | {r['per_batch']:.2f} | "
                f"{r['errors']} |\n")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=TREE[,MCDROP_KEY=VALUE...][,--flag...] (two or more)")  # fmt: skip
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per phase")
    ap.add_argument("--requests", type=int, default=100_000, help="most requests per phase")
    ap.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args(argv)
    if args.generator == "auto":
        args.generator = "wrk" if shutil.which("wrk") else "httpx"
    variants = [parse_variant(v) for v in args.variant]
    if len(variants) < 2:
        ap.error("give two or more --variant NAME=TREE[,MCDROP_KEY=VALUE...]")
    path = f"/v1/models/{args.model}/predict"
    with tempfile.TemporaryDirectory(prefix="mcdrop-ab-repo-") as tmp:
        repo = one_model_repo(args.models_dir.resolve(), args.model, Path(tmp))
        servers: dict[str, ServerProcess] = {}
        try:
            for name, tree, env, flags in variants:
                servers[name] = serve(tree, repo, env, flags, timeout=120)
            first = next(iter(servers.values()))
            meta = httpx.get(f"{first.url}/v1/models/{args.model}", timeout=10).json()
            payload = {"inputs": [sample_row(repo, args.model, meta["input_shape"])],
                       "samples": args.samples}  # fmt: skip
            # What each variant serves at GET / (the page, or a 404 where it is off).
            root = {n: httpx.get(s.url + "/", timeout=10).status_code for n, s in servers.items()}
            for s in servers.values():  # warm every server alike
                _phase(args, s, path, payload, 4)
            results = measure(servers, payload, path, args)
        finally:
            for s in servers.values():
                s.stop()
    rows = summary(results)
    load = os.getloadavg()[0]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load "
          f"average {load:.1f} at the end; model {args.model}, S = {args.samples}, one row per "
          f"request, generator {args.generator}, {args.rounds} rounds x {args.seconds:g} s per "
          "variant and concurrency, ABBA order; GET / answered "
          + ", ".join(f"{n} {code}" for n, code in root.items()))  # fmt: skip
    print(table(rows, variants[0][0]))
    if args.json:
        print(json.dumps({"variants": [v[0] for v in variants], "get_root": root, "rows": rows}))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
