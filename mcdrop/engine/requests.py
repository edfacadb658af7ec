"""``predict_many``: requests into groups (merging those that may share draws) and back.

Shapes: B_i rows of request i, ``...`` one row's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from mcdrop.engine.inputs import as_tensor, seed_of
from mcdrop.engine.plan import Group
from mcdrop.errors import InvalidInputError
from mcdrop.prediction import MCRequest, Prediction

__all__ = ["RequestGroups", "group_requests", "rows_of"]

Check = Callable[[torch.Tensor], torch.Tensor]
SampleCount = Callable[[Any], int]


def _named(i: int, exc: InvalidInputError) -> InvalidInputError:
    return InvalidInputError(f"request {i}: {exc}")


@dataclass
class RequestGroups:
    """The groups of a ``predict_many`` call and which requests each one answers."""

    groups: list[Group]
    members: list[list[int]]  # request indices per group; a merged group has several
    rows: list[int]  # rows per request

    def answers(self, finished: Sequence[Prediction]) -> list[Prediction]:
        """One prediction per request, in request order, from the groups' predictions."""
        out: list[Prediction | None] = [None] * len(self.rows)
        for idx, pred in zip(self.members, finished):
            parts = [pred] if len(idx) == 1 else rows_of(pred, [self.rows[i] for i in idx])
            for i, part in zip(idx, parts):
                out[i] = part
        return out  # type: ignore[return-value]


def group_requests(
    requests: Sequence[MCRequest], check: Check, sample_count: SampleCount, share_unseeded: bool
) -> RequestGroups:
    """Groups of ``requests``; with ``share_unseeded`` the unseeded requests of the same
    sample count and row shape merge into one group (one drawn seed). Errors name the
    request at fault."""
    raw: list[tuple[torch.Tensor, int, int]] = []  # (inputs, S, seed) per request
    shared: dict[tuple[Any, ...], list[int]] = {}  # key -> request indices
    for i, r in enumerate(requests):
        try:
            raw.append((as_tensor(r.inputs), sample_count(r.samples), seed_of(r.seed)))
        except InvalidInputError as exc:
            raise _named(i, exc) from exc
        if share_unseeded and r.seed is None and not r.return_samples:
            xt, s, _ = raw[-1]
            shared.setdefault((s, tuple(xt.shape[1:]), xt.dtype, xt.device), []).append(i)

    def check_one(i: int) -> torch.Tensor:
        try:
            return check(raw[i][0])
        except InvalidInputError as exc:
            raise _named(i, exc) from exc

    def checked(idx: list[int]) -> torch.Tensor:
        """The inputs of requests ``idx`` as one checked tensor (a request alone is not
        copied); an error names the request it comes from."""
        if len(idx) == 1:
            return check_one(idx[0])
        try:
            return check(torch.cat([raw[i][0] for i in idx]))
        except InvalidInputError:
            for i in idx:
                check_one(i)
            raise  # pragma: no cover - the concatenation failed, no part does

    # Requests that share draws become one group of all their rows (a merge of one
    # changes nothing and is skipped); one finite check covers all of them.
    merged = [idx for idx in shared.values() if len(idx) > 1]
    in_merge = {i for idx in merged for i in idx}
    members = [[i] for i in range(len(raw)) if i not in in_merge] + merged
    groups = [
        Group(checked(idx), raw[idx[0]][2], raw[idx[0]][1],
              keep=len(idx) == 1 and bool(requests[idx[0]].return_samples))
        for idx in members
    ]  # fmt: skip
    return RequestGroups(groups, members, [len(x) for x, _, _ in raw])


def rows_of(pred: Prediction, sizes: Sequence[int]) -> list[Prediction]:
    """One prediction per consecutive block of ``sizes`` rows (views, no copies)."""
    per_field: dict[str, Sequence[Any]] = {}
    for f in fields(pred):
        v = getattr(pred, f.name)
        if f.name == "draws":
            per_field[f.name] = [None] * len(sizes) if v is None else v.split(sizes, dim=1)
        elif isinstance(v, torch.Tensor):
            per_field[f.name] = v.split(sizes)
        else:
            per_field[f.name] = [v] * len(sizes)
    return [Prediction(**{k: vs[i] for k, vs in per_field.items()}) for i in range(len(sizes))]
