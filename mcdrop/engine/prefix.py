"""The deterministic prefix: run the layers before the first dropout once per call.

For S samples of B rows, everything upstream of the first stochastic op computes the same
values S times. A split model runs that prefix on the B rows once and expands to S x B
rows only at the frontier. The public option keeps its name, ``split="auto" | "off"``;
inside the engine the cut model is a :class:`Prefix`. Two strategies:

- ``nn.Sequential``: cut before the first child whose forward runs a dropout (found by a
  recording pass, so functional dropout inside custom children counts too);
- ``torch.fx``: trace the model, mark dropout/attention nodes stochastic, and cut the graph
  so that every node not downstream of a stochastic one runs in the prefix.

Either way the engine checks the split against plain input replication on the first call
for each input signature and falls back to replication if they differ (a model that mixes
its batch dimension with others, say). The frontier activation is copied before the
suffix runs, so in-place ops downstream can never corrupt the cached prefix output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mcdrop import _sampling

__all__ = ["Prefix", "sequential_prefix", "fx_prefix"]


@dataclass
class Prefix:
    """``prefix(x) -> tuple of frontier values``; ``suffix(*expanded) -> output``."""

    prefix: Callable[..., tuple[Any, ...]]
    suffix: Callable[..., Any]
    strategy: str


def sequential_prefix(model: nn.Sequential, x_probe: torch.Tensor) -> Prefix | str:
    """Cut a Sequential before the child running the first dropout, or say why not."""
    children = list(model)
    entry_site: list[int] = []
    hooks = []
    ctx = _sampling.SamplingContext(mode="record")

    def make_hook() -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            entry_site.append(ctx.site)

        return hook

    for child in children:
        hooks.append(child.register_forward_pre_hook(make_hook()))
    try:
        with torch.inference_mode(), _sampling.sampling(ctx):
            model(x_probe)
    finally:
        for h in hooks:
            h.remove()
    if len(entry_site) != len(children):
        return "a child of the Sequential ran more than once or not at all"
    ends = entry_site[1:] + [ctx.site]
    first = next((i for i, (a, b) in enumerate(zip(entry_site, ends)) if b > a), None)
    if first is None:
        return "no dropout ran"
    if first == 0:
        return "the first layer already holds dropout (nothing to run once)"
    prefix = nn.Sequential(*children[:first])
    suffix = nn.Sequential(*children[first:])
    return Prefix(lambda x: (prefix(x),), suffix, "sequential")


def _is_stochastic(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[str(node.target)]
        return isinstance(m, (nn.modules.dropout._DropoutNd, *_sampling._FLAG_TRAINING))
    if node.op == "call_function":
        target = node.target
        if getattr(target, "__mcdrop_wrapper__", False):
            return True
        if target in _sampling.ORIGINALS.values():
            return True
        return target is torch.dropout or target is torch.nn.functional.scaled_dot_product_attention
    return False


def _stochastic_and_input_nodes(
    nodes: list[fx.Node], modules: dict[str, nn.Module], placeholders: list[fx.Node]
) -> tuple[set[fx.Node], set[fx.Node]]:
    """(nodes at or downstream of a dropout, nodes that depend on the input)."""
    stoch: set[fx.Node] = set()
    input_dep: set[fx.Node] = set(placeholders)
    for n in nodes:
        if n.op in ("placeholder", "output"):
            continue
        ins = n.all_input_nodes
        if any(i in input_dep for i in ins):
            input_dep.add(n)
        if _is_stochastic(n, modules) or any(i in stoch for i in ins):
            stoch.add(n)
    return stoch, input_dep


def _frontier(nodes: list[fx.Node], stoch: set[fx.Node], input_dep: set[fx.Node]) -> list[fx.Node]:
    """The deterministic, input-dependent values that stochastic nodes (or the output) read."""
    output = next(n for n in nodes if n.op == "output")
    frontier: list[fx.Node] = []
    for c in [n for n in nodes if n in stoch] + [output]:
        for i in c.all_input_nodes:
            if i in input_dep and i not in stoch and i not in frontier:
                frontier.append(i)
    return frontier


def _cut(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    stoch: set[fx.Node],
    input_dep: set[fx.Node],
    frontier: list[fx.Node],
) -> Prefix:
    """The prefix graph (everything not stochastic, returning the frontier) and the suffix
    graph (frontier placeholders, then the stochastic and input-free nodes)."""
    pre = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n.op == "output" or n in stoch:
            continue
        env[n] = pre.node_copy(n, lambda a: env[a])
    pre.output(tuple(env[f] for f in frontier))
    post = fx.Graph()
    env2: dict[fx.Node, fx.Node] = {}
    for i, f in enumerate(frontier):
        env2[f] = post.placeholder(f"frontier_{i}")
    for n in nodes:
        if n in env2 or n.op == "placeholder":
            continue
        if n.op == "output" or n in stoch or n not in input_dep:
            env2[n] = post.node_copy(n, lambda a: env2[a])
    prefix_gm = fx.GraphModule(gm, pre)
    suffix_gm = fx.GraphModule(gm, post)
    for part in (prefix_gm, suffix_gm):
        part.graph.eliminate_dead_code()
        part.recompile()
    return Prefix(prefix_gm, suffix_gm, "fx")


def fx_prefix(model: nn.Module) -> Prefix | str:
    """Cut a model torch.fx can trace at its stochastic frontier, or say why not."""
    _sampling._install_patches()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # tracing fails on data-dependent control flow and more
        return f"torch.fx could not trace the model ({type(exc).__name__}: {exc})"
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return "the model's forward takes more than one input"
    stoch, input_dep = _stochastic_and_input_nodes(nodes, modules, placeholders)
    if not stoch:
        return "no dropout node in the traced graph"
    frontier = _frontier(nodes, stoch, input_dep)
    first = next(n for n in nodes if n in stoch)
    if frontier == placeholders and all(i in placeholders for i in first.all_input_nodes):
        return "the first dropout acts on the input (nothing to run once)"
    return _cut(gm, nodes, stoch, input_dep, frontier)
