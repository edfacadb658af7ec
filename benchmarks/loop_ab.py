#!/usr/bin/env python3
"""The service's per-request CPU, split by thread, for two or more source trees: an A/B
that does not need the machine quiet.

Throughput on this shared 2-core CPU moves by 2x between neighbouring runs of the same code
(``benchmarks/load_ab.py`` interleaves servers to cope); CPU time per request moves less,
because a thread's CPU clock does not run while another process has the core (on a host
whose hypervisor steals time it still moves by tens of per cent: use many rounds). Each
tree's app (``service.app.create_app`` over a one-model repository) runs in a worker
process of its own, with no server and no sockets: the worker drives the ASGI app with
``POST /v1/models/{model}/predict`` requests on one event loop, from ``--concurrency``
closed-loop clients (one by default: one request after another). Per
request it reports the event loop's thread CPU (``time.thread_time``: routing, middleware,
parsing, codecs, the submit and the wake-up), the batcher threads' (the engine's Python and
the torch calls it makes), the other threads' (torch's OpenMP workers, spinning included),
the whole process's and the wall time. Rounds visit the trees in ABBA order; reported are
each tree's medians and the ratio to the first tree.

    git worktree add /tmp/before ca4e879
    python benchmarks/loop_ab.py --tree before=/tmp/before --tree head=.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import sample_row  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the worker (the tree's own code on sys.path): reads "N" lines from stdin and
# answers each with one JSON line of per-request figures over N requests.
WORKER = r"""
import asyncio, json, sys, threading, time

from service.app import create_app

PATH, BODY = sys.argv[1], sys.argv[2].encode()


async def call(app, method, path, body=b""):
    sent = False
    never = asyncio.Event()
    status = []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client stays: no disconnect while the answer is computed
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return status[0]


async def main():
    app = create_app()
    started = asyncio.Event()
    stopping = asyncio.Event()
    messages = [{"type": "lifespan.startup"}]

    async def l_receive():
        if messages:
            return messages.pop()
        await stopping.wait()
        return {"type": "lifespan.shutdown"}

    async def l_send(message):
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"].endswith("failed"):
            raise SystemExit(message)

    life = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                     l_receive, l_send))
    await started.wait()
    for _ in range(3000):  # models load in the background in newer trees
        if await call(app, "GET", "/health/ready") == 200:
            break
        await asyncio.sleep(0.02)
    else:
        raise SystemExit("the app never became ready")
    print(json.dumps({"ready": True}), flush=True)
    engine = [time.pthread_getcpuclockid(t.ident) for t in threading.enumerate()
              if t.name.startswith("mcdrop-batcher")]

    def engine_time():
        return sum(time.clock_gettime(c) for c in engine)

    codes = set()

    async def client(count):  # one closed-loop client: a request, its answer, the next
        for _ in range(count):
            codes.add(await call(app, "POST", PATH, BODY))

    for line in sys.stdin:
        n, c = map(int, line.split())
        codes.clear()
        t0, p0, w0, e0 = time.thread_time(), time.process_time(), time.perf_counter(), engine_time()
        await asyncio.gather(*(client(n // c + (i < n % c)) for i in range(c)))
        t1, p1, w1, e1 = time.thread_time(), time.process_time(), time.perf_counter(), engine_time()
        loop, batcher = (t1 - t0) / n * 1e3, (e1 - e0) / n * 1e3
        print(json.dumps({"loop_ms": loop, "batcher_ms": batcher,
                          "other_ms": (p1 - p0) / n * 1e3 - loop - batcher,
                          "process_ms": (p1 - p0) / n * 1e3, "wall_ms": (w1 - w0) / n * 1e3,
                          "codes": sorted(codes)}), flush=True)
    stopping.set()
    await life


asyncio.run(main())
"""


class Worker:
    """One tree's app in a worker process."""

    def __init__(self, name: str, tree: Path, repo: Path, path: str, body: str) -> None:
        self.name = name
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "MCDROP_MODELS_DIR": str(repo),
            "MCDROP_LOG_LEVEL": "warning",
        }  # no gRPC server: create_app starts none
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, path, body], cwd=tree, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        first = self._read()
        if not first.get("ready"):
            raise SystemExit(f"{name}: worker did not start: {first}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: worker exited (code {self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def run(self, n: int, concurrency: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n} {concurrency}\n")
        self.proc.stdin.flush()
        out = self._read()
        if out["codes"] != [200]:
            raise SystemExit(f"{self.name}: answers other than 200: {out['codes']}")
        return out

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tree",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a source tree to measure (give two or more; the first is the base)",
    )
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--requests", type=int, default=1000, help="requests per tree per round")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=1,
                    help="closed-loop clients on the worker's event loop (the batcher then "
                    "groups their requests)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    trees = []
    for spec in args.tree:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise SystemExit(f"--tree {spec!r}: expected NAME=PATH to a source tree")
        trees.append((name, Path(path).resolve()))
    if args.rounds < 1 or args.requests < 1 or not 1 <= args.concurrency <= args.requests:
        raise SystemExit(
            "--rounds, --requests and --concurrency must be at least 1 "
            "(and --concurrency at most --requests)"
        )
    with tempfile.TemporaryDirectory(prefix="mcdrop-loop-ab-") as tmp:
        repo = Path(tmp)
        shutil.copytree(args.models_dir / args.model, repo / args.model)
        shape = _input_shape(repo / args.model)
        body = json.dumps({"inputs": [sample_row(repo, args.model, shape)],
                           "samples": args.samples})  # fmt: skip
        path = f"/v1/models/{args.model}/predict"
        workers = [Worker(n, t, repo, path, body) for n, t in trees]
        try:
            for w in workers:
                w.run(args.warmup, args.concurrency)
            rows: dict[str, list[dict[str, Any]]] = {w.name: [] for w in workers}
            for r in range(args.rounds):
                order = workers if r % 2 == 0 else workers[::-1]
                for w in order:
                    rows[w.name].append(w.run(args.requests, args.concurrency))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{w.name} {rows[w.name][-1]['loop_ms']:.3f}" for w in workers) +
                    " ms loop CPU per request", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            for w in workers:
                w.close()
    print(table(rows, trees[0][0]))
    return 0


def _input_shape(folder: Path) -> list[int]:
    """The manifest's input shape (model.toml's ``[input] shape``)."""
    from mcdrop.manifest import load_manifest

    return list(load_manifest(folder).input_shape)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base > 1e-3 else "-"


def table(rows: dict[str, list[dict[str, Any]]], first: str) -> str:
    """Markdown: each tree's median per-request figures and ratios to ``first``."""
    keys = ("loop_ms", "batcher_ms", "other_ms", "process_ms", "wall_ms")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in rows.items()}
    lines = ["| tree | event loop CPU ms (ratio; range) | batcher thread CPU ms (ratio) | "
             "other threads CPU ms (ratio) | process CPU ms (ratio) | wall ms (ratio) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for n, rs in rows.items():
        lo = min(r["loop_ms"] for r in rs)
        hi = max(r["loop_ms"] for r in rs)
        cells = [f"{med[n][k]:.3f} ({_ratio(med[n][k], med[first][k])})" for k in keys]
        cells[0] = cells[0][:-1] + f"; {lo:.3f}-{hi:.3f})"
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
