#!/usr/bin/env python3
"""What dynamic batching can gain inside the engine, without HTTP (issue #7's ceiling).

For B = 1, 8, 32, 128 one-row requests of a served model at S samples, in one process:

- ``loop``: B ``predict`` calls, one per request (what the server does with batching off);
- ``predict_many``: the B requests, each with its own seed, in one call (batching on with
  ``MCDROP_SHARE_UNSEEDED=false``, or seeded requests);
- ``shared``: the B requests without seeds, ``predict_many(share_unseeded=True)``: one seed
  and one set of masks for all (batching on, the service's default for unseeded requests);
- ``one request``: one request of B rows (masks shared by its rows: no batching can beat
  the compute this leaves, since the other two must draw B times as many masks).

    python benchmarks/batching.py                       # digits, S = 100
    python benchmarks/batching.py --model concrete --threads 1

Prints medians over ``--repeats`` runs (ms) and the ratios loop / predict_many and
loop / shared: the most batching can give the service at that B, before any HTTP cost
(which both modes pay).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcdrop import MCRequest  # noqa: E402
from mcdrop.repository import load_model  # noqa: E402


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: plans, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.models_dir / args.model)
    pred = loaded.predictor()
    shape = loaded.manifest.input_shape
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))
    s = args.samples
    print(f"{args.model}, S = {s}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| B | loop of B calls (ms) | predict_many (ms) | shared (ms) "
          "| one request of B rows (ms) | loop / many | loop / shared |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    rows = []
    for b in args.batches:
        reqs = [MCRequest(x, s, 1000 + i) for i in range(b)]
        xb = x.expand(b, *shape).contiguous()
        loop = _median_ms(
            lambda reqs=reqs: [pred.predict(r.inputs, s, r.seed) for r in reqs], args.repeats
        )
        many = _median_ms(lambda reqs=reqs: pred.predict_many(reqs), args.repeats)
        unseeded = [MCRequest(x, s) for _ in range(b)]
        shared = _median_ms(
            lambda u=unseeded: pred.predict_many(u, share_unseeded=True), args.repeats
        )
        one = _median_ms(lambda xb=xb: pred.predict(xb, s, 1), args.repeats)
        rows.append({"B": b, "loop_ms": loop, "many_ms": many, "shared_ms": shared, "one_ms": one})
        print(f"| {b} | {loop:.2f} | {many:.2f} | {shared:.2f} | {one:.2f} "
              f"| {loop / many:.2f}x | {loop / shared:.2f}x |", flush=True)  # fmt: skip
    print(json.dumps({"bench": "batching", "model": args.model, "samples": s, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
