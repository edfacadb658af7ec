"""``predict_many`` one forward chunk at a time: a :class:`ManyJob`.

A job is planned when it is made (the requests checked, grouped and given accumulators)
and then advanced by :meth:`ManyJob.step`, one forward chunk per call, until it is done;
:meth:`ManyJob.result` then summarises it. Between two steps the caller may run other
jobs of the same predictor (the service interleaves a long request's chunks with short
requests) or drop the job (a request that timed out). The chunks are those of one
uninterrupted call, so the numbers are too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mcdrop.engine.inputs import model_rejects_inputs
from mcdrop.engine.requests import RequestGroups
from mcdrop.engine.runner import Runner, RunWork
from mcdrop.engine.shard import run_sharded
from mcdrop.prediction import Prediction

__all__ = ["ManyJob"]


class ManyJob:
    """The groups of one ``predict_many`` call, run chunk by chunk.

    Parameters
    ----------
    runner : Runner
        The predictor's runner (its summary finishes the groups).
    replicas : sequence of Runner
        The device replicas of a sharded predictor (then a job is one step), or empty.
    lock : lock
        The predictor's lock, held during each step (not between steps).
    groups : RequestGroups
        The checked, grouped requests (:func:`mcdrop.engine.requests.group_requests`).
    """

    def __init__(
        self,
        runner: Runner,
        replicas: Sequence[Runner],
        lock: threading.RLock,
        groups: RequestGroups,
    ) -> None:
        self._runner = runner
        self._replicas = list(replicas)
        self._lock = lock
        self._groups = groups
        self.chunks = 0  # steps run so far
        self._work: RunWork | None = None
        self._done = not groups.groups
        if not self._done and not self._replicas:
            with self._lock, model_rejects_inputs():
                self._work = runner.begin(groups.groups, False)

    @property
    def done(self) -> bool:
        """True once every sample has run."""
        return self._done

    def step(self) -> bool:
        """Run the next forward chunk (a sharded predictor runs everything at once).

        Returns
        -------
        bool
            True once the job is done.
        """
        if self._done:
            return True
        with self._lock, model_rejects_inputs():
            if self._work is None:
                run_sharded(self._replicas, self._groups.groups, False)
                self._done = True
            else:
                self._done = self._runner.step(self._work)
        self.chunks += 1
        return self._done

    def result(self) -> list[Prediction]:
        """One prediction per request, in request order (call once :attr:`done`)."""
        if not self._done:
            raise RuntimeError("the job has samples left to run: step() it until done")
        with self._lock:
            return self._groups.answers(self._runner.summary.finish(self._groups.groups))
