#!/usr/bin/env python3
"""Throughput of the HTTP service: uvicorn (1 and 2 workers) and Ray Serve (1 and 2 replicas).

Every configuration serves the same model folder with the same app and is driven by the same
closed-loop load: ``--concurrency`` clients (one httpx.AsyncClient, keep-alive), each sending
its next request as soon as the previous one is answered, ``--requests`` requests per round.
All four servers are started first and stay up (an idle server costs no CPU); the rounds are
then interleaved (round 1 of each configuration, round 2 of each, ...), so that load from
other users of the machine falls on every configuration alike. Printed per configuration:
median requests/s over the rounds with min-max spread, p50/p95 latency over all measured
requests, and the median over rounds of the paired ratios 2 workers / 1 worker and
2 replicas / 1 replica.

    python benchmarks/ray_scaling.py                     # digits, S=100, 1 row, c=16
    python benchmarks/ray_scaling.py --model toy1d --rows 8 --only ray

The load generator runs on the same machine as the servers and takes CPU from them: on a
small machine the absolute numbers understate what a dedicated server does; the ratios
between configurations measured in one run are the result. Every wait is bounded; Ray runs
privately (own temp dir, ``num_cpus`` = the machine's cores) and is shut down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the one live-server harness: tests/helpers

from helpers.live_server import free_port  # noqa: E402
from helpers.local_ray import local_ray_serve  # noqa: E402


@dataclass
class Result:
    name: str
    rps: list[float]
    latencies_ms: list[float]
    errors: int
    note: str = ""

    def row(self) -> str:
        lat = sorted(self.latencies_ms)
        p50 = lat[len(lat) // 2]
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        med = statistics.median(self.rps)
        return (
            f"{self.name:<22} {med:8.1f} req/s  ({min(self.rps):.1f}-{max(self.rps):.1f})"
            f"   p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   errors {self.errors}   {self.note}"
        )


def _wait_ready(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for {url} exited before it was ready")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout} s")


def _rows(model: str, n: int) -> list[list[float]]:
    """The first ``n`` rows of the model's test.csv (the leading input columns)."""
    from mcdrop.repository import load_manifest

    width = math.prod(load_manifest(ROOT / "models" / model).input_shape)
    with open(ROOT / "models" / model / "test.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [[float(v) for v in row[:width]] for _, row in zip(range(n), reader)]


async def _round(
    url: str, body: dict[str, Any], n: int, concurrency: int, max_seconds: float
) -> tuple[float, list[float], int]:
    """n requests by ``concurrency`` closed-loop clients -> (req/s, latencies ms, errors)."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            nonlocal sent, errors
            while sent < n and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1e3)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, errors


def run_rounds(targets: dict[str, str], args: argparse.Namespace) -> dict[str, Result]:
    """Warm every target up, then ``args.rounds`` interleaved rounds over all targets."""
    body = {"inputs": _rows(args.model, args.rows), "samples": args.samples}
    path = f"/v1/models/{args.model}/predict"
    results = {name: Result(name, [], [], 0) for name in targets}
    for base in targets.values():
        asyncio.run(_round(base + path, body, args.warmup, args.concurrency, args.max_seconds))
    for _ in range(args.rounds):
        for name, base in targets.items():
            rps, latencies, errors = asyncio.run(
                _round(base + path, body, args.requests, args.concurrency, args.max_seconds)
            )
            results[name].rps.append(rps)
            results[name].latencies_ms.extend(latencies)
            results[name].errors += errors
    return results


@contextmanager
def uvicorn_server(models_dir: Path, workers: int) -> Iterator[str]:
    """``mcdrop serve --workers N`` in a subprocess."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "mcdrop.cli", "serve", "--port", str(port),
           "--models-dir", str(models_dir), "--workers", str(workers),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, 90, lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def ray_serve(num_cpus: int) -> Iterator[str]:
    """A private local Ray with Serve listening on a free loopback port (its URL)."""
    with local_ray_serve(num_cpus) as local:
        yield local.url


def deploy(models_dir: Path, replicas: int, args: argparse.Namespace) -> str:
    """Deploy the mcdrop app with ``replicas`` at ``/r<replicas>``; returns a note."""
    from ray import serve

    from service.ray_app import DEPLOYMENT_NAME, RaySettings, build_app
    from service.settings import Settings

    settings = Settings(models_dir=models_dir, log_level="warning")
    rs = RaySettings(replicas=replicas, num_cpus=args.replica_cpus, max_ongoing=64, max_queued=1024)
    name = f"r{replicas}"
    serve.run(build_app(settings, rs), name=name, route_prefix=f"/{name}")
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)
    infos = [handle.diagnostics.remote().result(timeout_s=30) for _ in range(4 * replicas)]
    return f"torch threads/replica {sorted({i['torch_threads'] for i in infos})}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits", help="a model folder under models/")
    p.add_argument("--samples", type=int, default=100, help="MC samples per request (S)")
    p.add_argument("--rows", type=int, default=1, help="input rows per request")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=400, help="requests per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-seconds", type=float, default=30.0, help="cap on one round")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="Ray num_cpus per replica")
    p.add_argument("--only", choices=["uvicorn", "ray"], help="run one engine only")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    import ray
    import torch

    cores = os.cpu_count() or 1
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores; "
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}"
    )
    print(
        f"load: model {args.model}, S={args.samples}, {args.rows} row(s)/request, "
        f"concurrency {args.concurrency}, {args.rounds} rounds x {args.requests} requests "
        f"(+{args.warmup} warm-up); load generator on the same machine"
    )
    # Serve only the benchmarked model, so that every server loads the same thing.
    work = Path(tempfile.mkdtemp(prefix="mcdrop-bench-"))
    models_dir = work / "models"
    shutil.copytree(ROOT / "models" / args.model, models_dir / args.model)
    targets: dict[str, str] = {}
    notes: dict[str, str] = {}
    try:
        with ExitStack() as stack:
            if args.only in (None, "uvicorn"):
                for workers in (1, 2):
                    url = stack.enter_context(uvicorn_server(models_dir, workers))
                    targets[f"uvicorn {workers} worker(s)"] = url
            if args.only in (None, "ray"):
                # Both apps stay deployed (1 + 2 replicas): Ray gets one logical CPU per
                # replica; only one app is under load at a time.
                url = stack.enter_context(ray_serve(num_cpus=math.ceil(3 * args.replica_cpus)))
                for replicas in (1, 2):
                    name = f"ray {replicas} replica(s)"
                    notes[name] = deploy(models_dir, replicas, args)
                    targets[name] = f"{url}/r{replicas}"
                    _wait_ready(targets[name], 60)
            by_name = run_rounds(targets, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = list(by_name.values())
    for r in results:
        r.note = notes.get(r.name, "")
        print(r.row())
    for a, b in (("uvicorn 2", "uvicorn 1"), ("ray 2", "ray 1")):
        top = next((r for r in results if r.name.startswith(a)), None)
        base = next((r for r in results if r.name.startswith(b)), None)
        if top and base:
            ratios = [t / u for t, u in zip(top.rps, base.rps)]
            print(
                f"{top.name} / {base.name}: {statistics.median(ratios):.2f}x requests/s "
                f"(per round {', '.join(f'{x:.2f}' for x in ratios)})"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "cores": cores,
                    "results": [
                        {
                            "name": r.name,
                            "rps": r.rps,
                            "errors": r.errors,
                            "note": r.note,
                            "p50_ms": sorted(r.latencies_ms)[len(r.latencies_ms) // 2],
                            "p95_ms": sorted(r.latencies_ms)[int(0.95 * len(r.latencies_ms))],
                        }
                        for r in results
                    ],
                },  # fmt: skip
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
