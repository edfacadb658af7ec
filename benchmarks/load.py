#!/usr/bin/env python3
"""Service load benchmark (issue #7): the real ``mcdrop serve`` on 127.0.0.1 under a bounded
async httpx load, with dynamic batching on and off in the same run, then past saturation.

    python benchmarks/load.py                       # digits, S = 100, concurrency 1 8 32 128
    python benchmarks/load.py --quick               # a short smoke run
    python benchmarks/load.py --models-dir DIR --model NAME --samples 50
    python benchmarks/load.py --no-share            # every request draws its own masks
    python benchmarks/load.py --compare-page --concurrency 1 32   # with and without the page

The payload has no seed, so by default requests batched together share one seed and one
set of sampled subnetworks (MCDROP_SHARE_UNSEEDED); ``--no-share`` measures the server
where each request draws its own.

For each concurrency it reports throughput (answered requests/s), p50/p95/p99 latency,
errors by status and what the batcher did (engine calls, rows per call, from /metrics).
Then a server with a small queue (MCDROP_MAX_QUEUE_SIZE) is driven at concurrency 256:
the excess must get a fast 503, not an ever longer wait. Targets are printed PASS/FAIL;
the output ends with a markdown table and one JSON line.

Load generator (``--generator``): ``wrk`` when it is installed (``apt-get install wrk``; C,
one thread, about 2 % of a core here), else the Python httpx one, which on a 2-core machine
takes a large share of the CPU it measures. An httpx phase stops at a request count or a
time limit, whichever comes first; a wrk phase runs for the time limit (wrk cannot end
early without spoiling its rate) with a request cap as a safety net. With wrk the
saturation phase reports client latencies over all statuses and the per-status figures
from the server's access log.
The helpers here are also used by soak.py.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the one live-server harness: tests/helpers

from helpers.live_server import ServerProcess  # noqa: E402
from helpers.live_server import start_server as _start_server  # noqa: E402

DEFAULT_MODELS = ROOT / "models"


def start_server(
    models_dir: Path, env: dict[str, str], ready_timeout: float = 90.0
) -> ServerProcess:
    """``mcdrop serve`` with ``MCDROP_*`` settings ``env`` (no access line per request)."""
    return _start_server(models_dir, {"MCDROP_LOG_LEVEL": "warning", **env},
                         ready_timeout=ready_timeout)  # fmt: skip


def sample_row(models_dir: Path, model: str, shape: list[int]) -> list[Any]:
    """The first row of the model's test.csv when there is one, else zeros."""
    path = models_dir / model / "test.csv"
    n = 1
    for d in shape:
        n *= d
    if path.is_file() and len(shape) == 1:
        with open(path) as f:
            reader = csv.reader(f)
            next(reader)
            row = [float(v) for v in next(reader)][:n]
        if len(row) == n:
            return row
    return [0.0] * n


# ------------------------------------------------------------------ load


@dataclass
class PhaseResult:
    """What one load phase measured (latencies in seconds)."""

    concurrency: int
    elapsed: float
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    def ok(self) -> list[float]:
        return self.latencies.get("200", [])

    def throughput(self) -> float:
        """Answered-200 requests per second."""
        return len(self.ok()) / self.elapsed if self.elapsed > 0 else 0.0

    def pct(self, q: float, status: str = "200") -> float:
        xs = sorted(self.latencies.get(status, []))
        if not xs:
            return float("nan")
        i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
        return xs[i]


async def run_phase(
    url: str,
    path: str,
    payload: dict[str, Any],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    request_timeout: float = 60.0,
) -> PhaseResult:
    """``concurrency`` closed-loop clients until ``max_requests`` are sent or ``max_seconds``
    have passed (whichever first); each client keeps one request in flight."""
    res = PhaseResult(concurrency, 0.0)
    sent = 0
    stop_at = time.monotonic() + max_seconds

    async def client() -> None:
        # One client (one keep-alive connection) per simulated user: a single pool shared
        # by 128 tasks costs the load generator more CPU than the server spends.
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, timeout=request_timeout) as c:
            while sent < max_requests and time.monotonic() < stop_at:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await c.post(path, json=payload)
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                res.statuses[key] += 1
                res.latencies.setdefault(key, []).append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(client() for _ in range(concurrency))),
        max_seconds + request_timeout + 10,
    )
    res.elapsed = time.perf_counter() - start
    return res


_WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = io.open(BODY_PATH, "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) n = 0; ok = 0; s503 = 0; other = 0 end
function response(status, headers, body)
  n = n + 1
  if status == 200 then ok = ok + 1 elseif status == 503 then s503 = s503 + 1
  else other = other + 1 end
  if n >= MAX_REQUESTS then wrk.thread:stop() end  -- a safety net only: see run_phase_wrk
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("ok"); b = b + t:get("s503"); c = c + t:get("other")
  end
  local e = summary.errors
  io.write(string.format('WRK {"duration_us":%d,"ok":%d,"s503":%d,"other":%d,' ..
    '"p50":%d,"p95":%d,"p99":%d,"socket_errors":%d}\n', summary.duration, a, b, c,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class WrkResult:
    """A phase measured by wrk: counts by status and latency percentiles (seconds)."""

    concurrency: int
    elapsed: float
    statuses: Counter[str]
    percentiles: dict[float, float]

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    def throughput(self) -> float:
        return self.statuses.get("200", 0) / self.elapsed if self.elapsed > 0 else 0.0

    def pct(self, q: float, status: str = "200") -> float:
        return self.percentiles.get(q, float("nan"))


def run_phase_wrk(
    url: str, path: str, payload: dict[str, Any], concurrency: int, max_requests: int,
    max_seconds: float,
) -> WrkResult:  # fmt: skip
    """The same closed loop driven by ``wrk`` (C, one thread): ``concurrency`` connections
    for ``max_seconds``. It costs the shared CPU far less than the Python generator, so the
    figures are more the server's own. wrk's run always lasts its duration, so a count cap
    cannot end a phase early without spoiling the rate: ``max_requests`` is only a safety
    net (the connections go quiet once it is reached) and a phase that hits it is an error."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        body, script = Path(tmp) / "body.json", Path(tmp) / "post.lua"
        body.write_text(json.dumps(payload))
        script.write_text(
            f"BODY_PATH = {json.dumps(str(body))}\nMAX_REQUESTS = {max_requests}\n" + _WRK_SCRIPT
        )
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(max_seconds))}s",
               "--timeout", "30s", "-s", str(script), url + path]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=max_seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {out.returncode}): {out.stderr[-500:]}")
    r = json.loads(line[4:])
    if r["ok"] + r["s503"] + r["other"] >= max_requests:
        raise RuntimeError(f"wrk reached the safety cap of {max_requests} requests: raise it")
    statuses = Counter({"200": r["ok"], "503": r["s503"], "other": r["other"],
                        "socket_error": r["socket_errors"]})  # fmt: skip
    pcts: dict[float, float] = {q: r[f"p{q}"] / 1e6 for q in (50, 95, 99)}
    return WrkResult(concurrency, r["duration_us"] / 1e6, +statuses, pcts)


# ------------------------------------------------------------------ metrics and /proc


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (histogram buckets left out)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "_bucket{" in line:
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def batch_stats(before: dict[str, float], after: dict[str, float], model: str) -> dict[str, float]:
    """Engine calls, mean rows and requests per call between two scrapes."""

    def d(name: str) -> float:
        # every version of the model (the series carry model and version labels)
        head = f'{name}{{model="{model}",'
        return sum(v for k, v in after.items() if k.startswith(head)) - sum(
            v for k, v in before.items() if k.startswith(head)
        )

    calls = d("mcdrop_batch_rows_count")
    return {
        "engine_calls": calls,
        "rows_per_call": d("mcdrop_batch_rows_sum") / calls if calls else 0.0,
        "requests_per_call": d("mcdrop_batch_requests_sum") / calls if calls else 0.0,
        "compute_s_per_call": d("mcdrop_batch_compute_seconds_sum") / calls if calls else 0.0,
        "queue_wait_s_mean": (
            d("mcdrop_queue_wait_seconds_sum") / d("mcdrop_queue_wait_seconds_count")
            if d("mcdrop_queue_wait_seconds_count")
            else 0.0
        ),
    }


def proc_figures(pid: int) -> dict[str, int]:
    """Resident memory (kB, VmRSS), open file descriptors and threads of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_kb": rss, "fds": fds, "threads": threads}


def versions() -> dict[str, str]:
    """Versions of the stack under test (imported here only to read them)."""
    import fastapi
    import torch
    import uvicorn

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
        "cpus": str(os.cpu_count()),
    }


# ------------------------------------------------------------------ the benchmark


def _fmt_ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1000:.1f}"


def _phase_row(mode: str, r: PhaseResult | WrkResult, b: dict[str, float]) -> dict[str, Any]:
    errors = {k: v for k, v in r.statuses.items() if k != "200"}
    return {
        "mode": mode,
        "concurrency": r.concurrency,
        "requests": r.count,
        "seconds": round(r.elapsed, 2),
        "rps": round(r.throughput(), 1),
        "p50_ms": round(r.pct(50) * 1000, 1),
        "p95_ms": round(r.pct(95) * 1000, 1),
        "p99_ms": round(r.pct(99) * 1000, 1),
        "errors": errors,
        "rows_per_call": round(b["rows_per_call"], 1),
        "compute_ms_per_call": round(b["compute_s_per_call"] * 1000, 2),
        "queue_wait_ms": round(b["queue_wait_s_mean"] * 1000, 2),
    }


async def _load_phase(
    args: Any, url: str, path: str, payload: dict[str, Any], concurrency: int, n: int
) -> PhaseResult | WrkResult:
    """One closed-loop phase with the chosen generator: ``n`` requests at most (httpx), or
    the phase's duration with ``100 * n`` as wrk's safety net."""
    if args.generator == "wrk":
        return await asyncio.to_thread(
            run_phase_wrk, url, path, payload, concurrency, 100 * n, args.seconds
        )
    return await run_phase(url, path, payload, concurrency, n, args.seconds)


async def _drive(
    server: ServerProcess, model: str, payload: dict[str, Any], mode: str, args: Any
) -> list[dict[str, Any]]:
    path = f"/v1/models/{model}/predict"
    warm = await run_phase(server.url, path, payload, 4, 40, 10)  # JIT-free, but warms caches
    assert warm.statuses.get("200", 0) > 0, f"warm-up failed: {dict(warm.statuses)}"
    rows = []
    for c in args.concurrency:
        before = scrape(server.url)
        r = await _load_phase(args, server.url, path, payload, c, max(args.requests, 4 * c))
        b = batch_stats(before, scrape(server.url), model)
        row = _phase_row(mode, r, b)
        rows.append(row)
        print(
            f"  {mode:>12} c={c:<4} {row['requests']:>6} req  {row['rps']:>8} req/s  "
            f"p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} ms  "
            f"rows/call {row['rows_per_call']}  errors {row['errors'] or 0}",
            flush=True,
        )
    return rows


async def _saturate(server: ServerProcess, model: str, payload: dict[str, Any], args: Any) -> dict:
    path = f"/v1/models/{model}/predict"
    await run_phase(server.url, path, payload, 4, 20, 10)
    before = scrape(server.url)
    c = args.saturation_concurrency
    r = await _load_phase(args, server.url, path, payload, c, max(args.requests, 8 * c))
    # wrk gives client-side figures over all statuses together
    by_status = r.latencies if isinstance(r, PhaseResult) else {}
    b = batch_stats(before, scrape(server.url), model)
    srv = server_latencies(server.log_path, "/predict")

    def client_pct(q: float) -> float:
        return r.pct(q, "503") if by_status else r.pct(q)

    return {
        **_phase_row("saturation", r, b),
        "server_p50_503_ms": round(_pct(srv.get("503", []), 50) * 1000, 2),
        "server_p95_503_ms": round(_pct(srv.get("503", []), 95) * 1000, 2),
        "server_p95_200_ms": round(_pct(srv.get("200", []), 95) * 1000, 1),
        "server_max_200_ms": round(max(srv.get("200", [float("nan")])) * 1000, 1),
        "queue_size": args.saturation_queue,
        "n_503": r.statuses.get("503", 0),
        "p50_503_ms": round(client_pct(50) * 1000, 1),
        "p95_503_ms": round(client_pct(95) * 1000, 1),
        # None (JSON null) where wrk gives no per-status figures
        "max_503_ms": _max_ms(by_status.get("503")),
        "max_200_ms": _max_ms(by_status.get("200")),
    }


def _max_ms(xs: list[float] | None) -> float | None:
    return round(max(xs) * 1000, 1) if xs else None


def server_latencies(log_path: Path, route_suffix: str) -> dict[str, list[float]]:
    """Server-side durations (s) by status, from the JSON access lines of the log."""
    import json

    out: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith('{"ts"'):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if str(rec.get("route", "")).endswith(route_suffix):
            out.setdefault(str(rec["status"]), []).append(rec["duration_ms"] / 1000)
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| batching | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | rows/engine call "
        "| errors |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        body += (
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']} | {r['p50_ms']} "
            f"| {r['p95_ms']} | {r['p99_ms']} | {r['rows_per_call']} | {errs} |\n"
        )
    return head + body


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--model", default="digits")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--requests", type=int, default=1500, help="most requests per phase")
    p.add_argument("--seconds", type=float, default=15.0, help="most seconds per phase")
    p.add_argument("--saturation-concurrency", type=int, default=256)
    p.add_argument("--saturation-queue", type=int, default=16, help="MCDROP_MAX_QUEUE_SIZE")
    p.add_argument("--queue-delay-ms", type=float, default=None,
                   help="MCDROP_MAX_QUEUE_DELAY_MS (default: the service's)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="few requests per phase (smoke run)")
    p.add_argument("--no-share", action="store_true",
                   help="MCDROP_SHARE_UNSEEDED=false: own masks per request")  # fmt: skip
    p.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto",
                   help="load generator of the on/off phases: wrk (when installed: "
                        "apt-get install wrk) or the Python httpx one (default: auto)")  # fmt: skip
    p.add_argument("--device", default=None, help="MCDROP_DEVICE of the server (e.g. cuda)")
    p.add_argument("--compare-page", action="store_true",
                   help="only the same load with and without the page (MCDROP_PAGE), "
                        "interleaved, with their ratio (benchmarks/load_ab.py)")  # fmt: skip
    p.add_argument("--fairness", action="store_true",
                   help="also the p95 of one-row requests while a maximal request of the "
                        "model runs (benchmarks/fairness.py)")  # fmt: skip
    args = p.parse_args(argv)
    if args.generator == "auto":
        import shutil

        args.generator = "wrk" if shutil.which("wrk") else "httpx"
    if args.compare_page:  # issue 17: the page must add nothing to the prediction path
        from load_ab import main as ab_main

        return ab_main([f"--variant=page={ROOT},MCDROP_PAGE=true",
                        f"--variant=no-page={ROOT},MCDROP_PAGE=false",
                        "--models-dir", str(args.models_dir), "--model", args.model,
                        "--samples", str(args.samples), "--generator", args.generator,
                        "--concurrency", *map(str, args.concurrency),
                        *(["--rounds", "2", "--seconds", "2"] if args.quick else [])])  # fmt: skip
    if args.quick:
        args.requests, args.seconds = 120, 5.0
    models_dir = args.models_dir.resolve()
    base_env: dict[str, str] = {}
    if args.queue_delay_ms is not None:
        base_env["MCDROP_MAX_QUEUE_DELAY_MS"] = str(args.queue_delay_ms)
    if args.no_share:
        base_env["MCDROP_SHARE_UNSEEDED"] = "false"
    if args.device is not None:
        base_env["MCDROP_DEVICE"] = args.device

    print(f"load benchmark: {args.model}, S = {args.samples}, generator {args.generator}, "
          f"unseeded requests share masks: {not args.no_share}, {versions()}",
          flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    for mode, extra in (("on", {}), ("off", {"MCDROP_BATCHING": "false"})):
        with start_server(models_dir, {**base_env, **extra}) as server:
            meta = httpx.get(f"{server.url}/v1/models/{args.model}", timeout=10).json()
            row = sample_row(models_dir, args.model, meta["input_shape"])
            payload = {"inputs": [row], "samples": args.samples}
            rows += asyncio.run(_drive(server, args.model, payload, mode, args))
    # info: one access line per request, for the server-side latency of the 503s
    sat_env = {**base_env, "MCDROP_MAX_QUEUE_SIZE": str(args.saturation_queue),
               "MCDROP_LOG_LEVEL": "info"}  # fmt: skip
    with start_server(models_dir, sat_env) as server:
        sat = asyncio.run(_saturate(server, args.model, payload, args))
    print(
        f"  saturation c={args.saturation_concurrency} queue={args.saturation_queue}: "
        f"{sat['requests']} req, {sat['rps']} ok/s, 503: {sat['n_503']}; client side "
        + (
            f"(all statuses) p50 {sat['p50_503_ms']} p95 {sat['p95_503_ms']} ms"
            if args.generator == "wrk"  # wrk's latencies are not split by status
            else f"503 p50 {sat['p50_503_ms']} p95 {sat['p95_503_ms']} max "
            f"{sat['max_503_ms']} ms, 200 p95 {sat['p95_ms']} max {sat['max_200_ms']} ms"
        )
        + "; server side: 503 p50 "
        + f"{sat['server_p50_503_ms']} p95 {sat['server_p95_503_ms']} ms, 200 p95 "
        f"{sat['server_p95_200_ms']} max {sat['server_max_200_ms']} ms; other errors "
        f"{ {k: v for k, v in sat['errors'].items() if k != '503'} or 0 }",
        flush=True,
    )

    fair = None
    if args.fairness:
        from fairness import report, small_during_maximal

        with start_server(models_dir, base_env) as server:
            fair = asyncio.run(small_during_maximal(server.url, args.model, args.samples))
        print(report(fair), flush=True)

    by = {(r["mode"], r["concurrency"]): r for r in rows}
    targets: dict[str, bool] = {}
    if ("on", 32) in by and ("off", 32) in by:
        on, off = by[("on", 32)], by[("off", 32)]
        targets["c32_throughput_4x"] = on["rps"] >= 4 * off["rps"]
        targets["c32_p95_no_worse"] = on["p95_ms"] <= off["p95_ms"]
    # Past saturation: the excess is refused fast, and the accepted requests' latency stays
    # bounded by the queue (not by the number of clients). Judged on the server's own
    # durations (access log): on a small shared CPU the client-side figures also hold the
    # load generator's queueing for CPU and connections.
    targets["saturation_503_fast_server"] = sat["n_503"] > 0 and sat["server_p95_503_ms"] <= 50
    targets["saturation_200_bounded_server"] = sat["server_max_200_ms"] <= 5000
    other = sum(sum(r["errors"].values()) for r in rows)
    other += sum(v for k, v in sat["errors"].items() if k != "503")
    targets["no_other_errors"] = other == 0

    print()
    print(_table(rows + [sat]))
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if ("on", 32) in by and ("off", 32) in by:
        ratio = by[("on", 32)]["rps"] / max(by[("off", 32)]["rps"], 1e-9)
        print(f"c=32 throughput ratio on/off: {ratio:.2f}x")
    result = {
        "bench": "load", "model": args.model, "samples": args.samples,
        "generator": args.generator, "share_unseeded": not args.no_share,
        "versions": versions(), "phases": rows, "saturation": sat, "targets": targets,
        "fairness": fair,
    }  # fmt: skip
    print(json.dumps(result, separators=(",", ":")))
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
