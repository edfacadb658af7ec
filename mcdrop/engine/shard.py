"""Sharding: the samples of every group spread over several devices.

Each device has its own runner (a model copy) and runs a contiguous share of every
group's samples, in parallel threads. Masks depend on (seed, sample) only, so the merged
moments equal the single-device result up to float rounding.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from mcdrop.engine.plan import Group
from mcdrop.engine.runner import Runner

__all__ = ["run_sharded"]


def run_sharded(runners: list[Runner], groups: list[Group], keep: bool) -> None:
    """Run ``groups`` over ``runners`` and merge each group's parts into it."""
    n = len(runners)
    shards: list[list[Group]] = [[] for _ in range(n)]
    owned: list[list[Group]] = [[] for _ in groups]  # each group's parts, in sample order
    for gi, g in enumerate(groups):
        bounds = [g.samples * i // n for i in range(n + 1)]
        for i, runner in enumerate(runners):
            if bounds[i + 1] > bounds[i]:
                part = replace(
                    g,
                    x=g.x.to(runner.device),
                    samples=bounds[i + 1] - bounds[i],
                    start=bounds[i],
                    frontier=None,
                    acc=None,
                    hetero_acc=None,
                    draws=[],
                )
                shards[i].append(part)
                owned[gi].append(part)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(r.run, part, keep) for r, part in zip(runners, shards) if part]
        for f in futures:
            f.result()
    for g, parts in zip(groups, owned):
        g.acc, g.hetero_acc = parts[0].acc, parts[0].hetero_acc
        for p in parts[1:]:
            g.acc.merge(p.acc)
            if g.hetero_acc is not None and p.hetero_acc is not None:
                g.hetero_acc.merge(p.hetero_acc)
        g.draws = [d for p in parts for d in p.draws]
