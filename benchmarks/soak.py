#!/usr/bin/env python3
"""Service soak test (issue #7): steady load on the real ``mcdrop serve`` for a while, then
the server process's resident memory and open file descriptors at start and end.

    python benchmarks/soak.py                    # 300 s, digits, S = 100, concurrency 8
    python benchmarks/soak.py --seconds 60 --concurrency 16

"Start" is measured after a warm-up phase (the first requests grow caches and the
allocator's pools); "end" right after the steady phase, then again after a short idle
pause. The load is bounded by --seconds and by --max-requests. The steady phase mixes
valid v1 and v2 requests with a few invalid ones (4xx on purpose, so error paths are soaked
too); an error is any answer not expected for its request. Prints a table and one JSON line;
exit status 1 when memory grew more than --max-growth-pct or descriptors leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from load import (
    DEFAULT_MODELS,
    proc_figures,
    run_phase,
    sample_row,
    scrape,
    start_server,
    versions,
)


async def steady(
    url: str, model: str, row: list[Any], samples: int, concurrency: int,
    seconds: float, max_requests: int, sample_every: float, pid: int,
) -> tuple[Counter[str], int, list[dict[str, Any]]]:  # fmt: skip
    """Mixed load for ``seconds`` (or ``max_requests``); returns (outcomes, errors, trace)."""
    shape = [1, len(row)]
    kinds: list[tuple[str, str, Any, int]] = [
        ("v1", f"/v1/models/{model}/predict", {"inputs": [row], "samples": samples}, 200),
        ("v1x4", f"/v1/models/{model}/predict", {"inputs": [row] * 4, "samples": samples}, 200),
        ("v2", f"/v2/models/{model}/infer", {"inputs": [{"name": "input", "shape": shape,
         "datatype": "FP32", "data": row}], "parameters": {"mc_samples": samples}}, 200),
        ("bad_shape", f"/v1/models/{model}/predict", {"inputs": [row[:-1]]}, 422),
        ("unknown", "/v1/models/nope/predict", {"inputs": [row]}, 404),
    ]  # fmt: skip
    weights = [60, 15, 20, 3, 2]
    outcomes: Counter[str] = Counter()
    errors = 0
    sent = 0
    trace: list[dict[str, Any]] = []
    start = time.monotonic()
    stop_at = start + seconds
    rng = random.Random(7)

    async def worker() -> None:
        nonlocal sent, errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while sent < max_requests and time.monotonic() < stop_at:
                sent += 1
                name, path, body, want = rng.choices(kinds, weights)[0]
                try:
                    status = (await c.post(path, json=body)).status_code
                except httpx.HTTPError as exc:
                    outcomes[f"{name}:{type(exc).__name__}"] += 1
                    errors += 1
                    continue
                outcomes[f"{name}:{status}"] += 1
                errors += status != want

    async def sampler() -> None:
        while time.monotonic() < stop_at and sent < max_requests:
            await asyncio.sleep(min(sample_every, max(0.0, stop_at - time.monotonic())))
            trace.append({"t": round(time.monotonic() - start, 1), "requests": sent,
                          **proc_figures(pid)})  # fmt: skip

    await asyncio.gather(*(worker() for _ in range(concurrency)), sampler())
    return outcomes, errors, trace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="steady phase length")
    p.add_argument("--max-requests", type=int, default=2_000_000, help="bound on requests")
    p.add_argument("--warmup-seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--model", default="digits")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--sample-every", type=float, default=30.0, help="seconds between /proc reads")
    p.add_argument("--max-growth-pct", type=float, default=10.0)
    args = p.parse_args(argv)

    models_dir = args.models_dir.resolve()
    print(f"soak: {args.model}, S = {args.samples}, concurrency {args.concurrency}, "
          f"{args.seconds:g} s, {versions()}", flush=True)  # fmt: skip
    with start_server(models_dir, {}) as server:
        pid = server.proc.pid
        meta = httpx.get(f"{server.url}/v1/models/{args.model}", timeout=10).json()
        row = sample_row(models_dir, args.model, meta["input_shape"])
        payload = {"inputs": [row], "samples": args.samples}
        asyncio.run(run_phase(server.url, f"/v1/models/{args.model}/predict", payload,
                              args.concurrency, 100_000, args.warmup_seconds))  # fmt: skip
        time.sleep(1.0)
        before = proc_figures(pid)
        t0 = time.monotonic()
        outcomes, errors, trace = asyncio.run(steady(
            server.url, args.model, row, args.samples, args.concurrency, args.seconds,
            args.max_requests, args.sample_every, pid))  # fmt: skip
        elapsed = time.monotonic() - t0
        after = proc_figures(pid)
        time.sleep(2.0)
        idle = proc_figures(pid)
        metrics = scrape(server.url)
        head = f'mcdrop_queue_depth{{model="{args.model}",'  # any version
        depth = next((v for k, v in metrics.items() if k.startswith(head)), -1)
        code = server.stop()

    requests = sum(outcomes.values())
    growth = 100.0 * (after["rss_kb"] - before["rss_kb"]) / before["rss_kb"]
    idle_growth = 100.0 * (idle["rss_kb"] - before["rss_kb"]) / before["rss_kb"]
    fd_delta = idle["fds"] - before["fds"]
    ok = growth <= args.max_growth_pct and fd_delta <= 0 and errors == 0 and depth == 0
    print()
    print("| | RSS MiB | open fds | threads |\n|---|---|---|---|")
    for label, f in (("start (after warm-up)", before), ("end", after), ("end + 2 s idle", idle)):
        print(f"| {label} | {f['rss_kb'] / 1024:.1f} | {f['fds']} | {f['threads']} |")
    print(
        f"\n{requests} requests in {elapsed:.0f} s ({requests / elapsed:.0f}/s), errors {errors}, "
        f"RSS growth {growth:+.1f}% (idle {idle_growth:+.1f}%), fds {fd_delta:+d}, "
        f"queue depth at end {depth:g}, server exit {code}"
    )
    print(f"{'PASS' if ok else 'FAIL'}  soak")
    print(json.dumps({
        "bench": "soak", "model": args.model, "samples": args.samples,
        "concurrency": args.concurrency, "seconds": round(elapsed, 1), "requests": requests,
        "errors": errors, "outcomes": dict(outcomes), "start": before, "end": after,
        "idle": idle, "rss_growth_pct": round(growth, 2),
        "rss_growth_idle_pct": round(idle_growth, 2), "fd_delta": fd_delta,
        "queue_depth_end": depth, "trace": trace, "versions": versions(), "pass": ok,
    }, separators=(",", ":")))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
