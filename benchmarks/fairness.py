#!/usr/bin/env python3
"""Small requests during a maximal one (issue 18 item 4): latency while a model is busy.

    python benchmarks/fairness.py                    # toy1d, against a fresh mcdrop serve
    python benchmarks/fairness.py --model digits --small-samples 100
    python benchmarks/fairness.py --url http://127.0.0.1:8000 --model toy1d

The maximal request is the largest the model's budget admits: ``max_batch_rows`` rows
(its manifest) and as many samples as ``max_row_samples`` (the compute budget the server
states in ``GET /v2/models/{name}``) allows, at most ``max_samples``. First the one-row
requests run alone (closed loop, one at a time) for their own latency; then the maximal
request is sent and, while it runs, the same one-row requests one after the other (and
``/health/live`` between them) until it ends. The figures: p50/p95/max of the small
requests alone and during the maximal one, the maximal one's time, health p95. Before
fair scheduling a small request waited for the whole maximal one.

``benchmarks/load.py --fairness`` runs it against its own server and adds the figures
to its report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the one live-server harness: tests/helpers

from helpers.live_server import start_server  # noqa: E402

__all__ = ["small_during_maximal"]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def _ms(x: float) -> float:
    return round(x * 1000, 1)


async def small_during_maximal(
    url: str,
    model: str,
    small_samples: int = 50,
    alone: int = 20,
    max_seconds: float = 120.0,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The figures of the module doc, measured against the server at ``url``; ``size``
    (rows, samples) replaces the maximal request's (to compare servers that state no
    budget)."""
    async with httpx.AsyncClient(base_url=url, timeout=max_seconds + 30) as c:
        meta = (await c.get(f"/v2/models/{model}")).json()
        params = meta["parameters"]
        shape = meta["inputs"][0]["shape"][1:]
        zero: Any = 0 if meta["inputs"][0]["datatype"] == "INT64" else 0.0
        row: Any = zero
        for d in reversed(shape):
            row = [row] * d
        if size is not None:
            rows, samples = size
        else:
            rows = int(params["max_batch_rows"])
            samples = max(1, min(int(params["max_samples"]), params["max_row_samples"] // rows))
        path = f"/v1/models/{model}/predict"
        small_body = {"inputs": [row], "samples": small_samples, "seed": 1}

        async def small() -> float:
            t0 = time.perf_counter()
            r = await c.post(path, json=small_body)
            r.raise_for_status()
            return time.perf_counter() - t0

        await small()  # warm the connection
        by_itself = [await small() for _ in range(alone)]
        big = {"inputs": [row] * rows, "samples": samples, "seed": 2}
        t0 = time.perf_counter()
        task = asyncio.ensure_future(c.post(path, json=big))
        await asyncio.sleep(0.05)  # sent and parsed: the maximal request is in the engine
        during: list[float] = []
        health: list[float] = []
        while not task.done() and time.perf_counter() - t0 < max_seconds:
            during.append(await small())
            h0 = time.perf_counter()
            await c.get("/health/live")
            health.append(time.perf_counter() - h0)
        answer = await task
        maximal_s = time.perf_counter() - t0
    return {
        "model": model,
        "maximal": {"rows": rows, "samples": samples, "status": answer.status_code,
                    "seconds": round(maximal_s, 2)},
        "small_samples": small_samples,
        "small_alone_p50_ms": _ms(_pct(by_itself, 50)),
        "small_alone_p95_ms": _ms(_pct(by_itself, 95)),
        "small_during_n": len(during),
        "small_during_p50_ms": _ms(_pct(during, 50)),
        "small_during_p95_ms": _ms(_pct(during, 95)),
        "small_during_max_ms": _ms(max(during, default=float("nan"))),
        "health_during_p95_ms": _ms(_pct(health, 95)),
    }  # fmt: skip


def report(fig: dict[str, Any]) -> str:
    """One line of the figures."""
    m = fig["maximal"]
    return (
        f"  fairness {fig['model']}: maximal {m['rows']} rows x {m['samples']} samples "
        f"{m['seconds']} s ({m['status']}); 1-row S={fig['small_samples']} alone p50 "
        f"{fig['small_alone_p50_ms']} p95 {fig['small_alone_p95_ms']} ms; during it "
        f"({fig['small_during_n']} requests) p50 {fig['small_during_p50_ms']} p95 "
        f"{fig['small_during_p95_ms']} max {fig['small_during_max_ms']} ms; health p95 "
        f"{fig['health_during_p95_ms']} ms"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="toy1d")
    p.add_argument("--small-samples", type=int, default=50)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--size", type=int, nargs=2, metavar=("ROWS", "SAMPLES"), default=None,
                   help="the long request's size instead of the maximal admitted one")  # fmt: skip
    args = p.parse_args(argv)
    size = tuple(args.size) if args.size else None
    run = lambda url: asyncio.run(  # noqa: E731
        small_during_maximal(
            url, args.model, args.small_samples, max_seconds=args.max_seconds, size=size
        )  # fmt: skip
    )
    if args.url is not None:
        fig = run(args.url)
    else:
        env = {"MCDROP_LOG_LEVEL": "warning", "MCDROP_REQUEST_TIMEOUT_S": str(args.max_seconds)}
        with start_server(args.models_dir.resolve(), env, ready_timeout=120) as server:
            fig = run(server.url)
    print(report(fig))
    print(json.dumps({"bench": "fairness", **fig}, separators=(",", ":")))
    return 0 if fig["maximal"]["status"] == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
