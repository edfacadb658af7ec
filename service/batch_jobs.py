"""The jobs the batcher steps (:mod:`service.batching`): a batch in the engine, a chunk at
a time.

A :class:`Job` is what the worker thread advances: ``step()`` runs one forward chunk and
says whether the job is done, ``results()`` then gives one result (or exception) per
request. :class:`EngineJob` wraps the engine's ``MCPredictor.start_many`` job with the
conversion of its predictions; :class:`OneShot` runs a plain ``run_batch`` callable as a
job of one step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mcdrop.prediction import MCRequest

__all__ = ["Job", "StartBatch", "EngineJob", "OneShot"]


class Job(Protocol):
    """One batch in the engine, run a chunk at a time (``mcdrop.engine.jobs.ManyJob``)."""

    def step(self) -> bool:
        """Run the next chunk; True once done."""

    def results(self) -> Sequence[Any]:
        """One result (or exception) per request, in order; called once done."""


StartBatch = Callable[[Sequence[MCRequest]], Job]


class EngineJob:
    """An engine job (``MCPredictor.start_many``) whose predictions ``convert`` turns into
    the batcher's results (in the worker thread, once the job is done)."""

    def __init__(self, job: Any, convert: Callable[[Sequence[Any]], Sequence[Any]]) -> None:
        self._job, self._convert = job, convert

    def step(self) -> bool:
        return bool(self._job.step())

    def results(self) -> Sequence[Any]:
        return self._convert(self._job.result())


class OneShot:
    """A plain ``run_batch(requests) -> results`` callable as a job of one step."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[MCRequest]], Sequence[Any]],
        requests: Sequence[MCRequest],
    ) -> None:
        self._run, self._requests = run_batch, requests
        self._out: Sequence[Any] = ()

    def step(self) -> bool:
        self._out = self._run(self._requests)
        return True

    def results(self) -> Sequence[Any]:
        return self._out
