"""Model lifecycle helpers: one folder loaded in isolation, and the repository watched.

:func:`load_isolated` runs everything a model's own code does at load (importing
``model.py``, the factory, the weights, the dry pass, the warm-up) in a daemon thread of its
own and waits for it with a timeout. Whatever that code does, it fails that model only:

- any exception, ``SystemExit`` (``sys.exit``), ``KeyboardInterrupt`` or other
  ``BaseException`` is caught in that thread and becomes the model's reason;
- a load that does not finish within ``load_timeout_s`` is reported as timed out. Python
  cannot stop a thread, so a hung import or warm-up keeps running (a daemon thread: it never
  keeps the process from exiting), and its result, if it ever comes, is thrown away.

A model that calls ``os._exit`` or crashes the interpreter (a segfault in native code) still
takes the process with it: only a subprocess could contain that, at the cost of loading
every model twice.

:class:`RepositoryPoller` looks at the repository folder every ``poll_interval_s`` seconds
(``MCDROP_MODEL_CONTROL=poll``) and tells the data plane which model names changed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mcdrop.errors import McdropError
from mcdrop.manifest import load_manifest
from mcdrop.repository import load_model, model_folders
from service.metrics import ServiceMetrics
from service.runtime import ModelRuntime
from service.settings import Settings

__all__ = [
    "claim_parallel_pool",
    "FolderEntry",
    "LoadFailed",
    "load_isolated",
    "collect_retired",
    "folder_model_name",
    "RepositoryPoller",
    "LOADING",
    "READY",
    "UNAVAILABLE",
    "UNLOADING",
    "UNLOADED",
]

log = logging.getLogger("mcdrop.service")

# Triton's model states (the repository extension's index), and the reason of an unload.
LOADING, READY, UNAVAILABLE, UNLOADING = "LOADING", "READY", "UNAVAILABLE", "UNLOADING"
UNLOADED = "unloaded"
_COLLECT_TRIES = 10


@dataclass
class FolderEntry:
    """One model folder: which model and version it holds, its state and why."""

    folder: str
    name: str
    version: str = ""
    state: str = LOADING
    reason: str = ""
    runtime: ModelRuntime | None = None


class LoadFailed(Exception):
    """A model folder could not be loaded; ``reason`` says why, naming the folder."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Outcome:
    runtime: ModelRuntime | None = None
    reason: str = ""


def claim_parallel_pool() -> None:
    """Run one multi-threaded torch operation on the calling thread (the server's main
    thread), before any loader thread touches torch.

    OpenMP (libgomp, which torch's CPU wheels use) gives each thread that opens a parallel
    region a team of its own. The loader threads' teams go when they exit, which leaves the
    batcher's the only one; libgomp then lets its idle workers spin, the fastest on an idle
    machine but ruinous when other processes want the cores: the service fell to 0.40-0.51x
    of its throughput then (to 50 requests/s from 283 on the machine of the fifth session,
    busy with test suites). With the main thread's team kept, as it was when models loaded
    on the main thread, the workers sleep between regions instead: 10-35 % slower on an
    idle machine, steady under contention (benchmarks/RESULTS.md, sixth session).
    """
    a = torch.ones(256, 256)
    torch.mm(a, a)  # a GEMM this size runs on every intra-op thread


def _load_and_warm(folder: Path, settings: Settings, metrics: ServiceMetrics) -> _Outcome:
    """Load ``folder`` and warm it up (in the loader thread); never raises."""
    try:
        rt = ModelRuntime(load_model(folder), settings, metrics)
        rt.warm_up()
        return _Outcome(rt)
    except McdropError as exc:  # names the file and field already
        return _Outcome(reason=str(exc))
    except Exception as exc:  # the model's own code may raise anything
        return _Outcome(reason=f"{folder}: loading failed: {type(exc).__name__}: {exc}")
    except BaseException as exc:  # sys.exit, KeyboardInterrupt, GeneratorExit, ...
        return _Outcome(
            reason=f"{folder}: the model's code raised {type(exc).__name__}({exc}) while "
            "loading or warming up; a model may not exit or interrupt the server"
        )


async def load_isolated(folder: Path, settings: Settings, metrics: ServiceMetrics) -> ModelRuntime:
    """Load and warm up one model folder in a daemon thread, within ``load_timeout_s``.

    Returns the warmed-up runtime, not started (no batcher yet).

    Raises
    ------
    LoadFailed
        The folder, its code or its warm-up failed in any way, or took too long.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_Outcome] = loop.create_future()

    def settle(outcome: _Outcome) -> None:
        if not done.done():  # a load that timed out is nobody's concern any more
            done.set_result(outcome)

    def work() -> None:
        outcome = _load_and_warm(folder, settings, metrics)
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop closed while a hung load was still running
            pass

    # Not asyncio.to_thread: the default executor's threads are joined when the loop
    # shuts down, so one hung import would keep the server from ever exiting.
    thread = threading.Thread(target=work, name=f"mcdrop-load-{folder.name}", daemon=True)
    thread.start()
    timeout = settings.load_timeout_s
    try:
        outcome = await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        raise LoadFailed(
            f"{folder}: loading and warm-up did not finish within {timeout:g} s "
            "(MCDROP_LOAD_TIMEOUT_S); its thread is abandoned, still running"
        ) from None
    if outcome.runtime is None:
        raise LoadFailed(outcome.reason)
    return outcome.runtime


async def collect_retired(gone: list[weakref.ref[Any]]) -> None:
    """Free the retired runtimes (and modules) ``gone`` refers to.

    A runtime and its batcher refer to each other, so only the collector frees them, and
    the start-up froze everything then alive out of its reach: thaw, collect, freeze
    again. A worker thread that just ran the drain may hold the last reference a moment
    longer: a few tries. Once they are gone, one more pass: what a runtime freed by its
    reference count alone held may be cyclic garbage only now.
    """
    gc.unfreeze()
    try:
        for _ in range(_COLLECT_TRIES):
            gc.collect()
            if all(ref() is None for ref in gone):
                gc.collect()
                return
            await asyncio.sleep(0.05)
        log.warning("a retired model is still referenced; its memory is not freed yet")
    finally:
        gc.freeze()


def folder_model_name(folder: Path) -> str:
    """The model name ``folder/model.toml`` declares, or the folder's name when the
    manifest cannot be read (so that a broken folder can still be named and reported)."""
    try:
        return load_manifest(folder).name
    except McdropError:
        return folder.name


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path) -> Fingerprint:
    """Name, size and modification time of every file in ``folder`` and its sub-folders
    (a transformers folder keeps its tokenizer in files beside the weights)."""
    out: list[tuple[str, int, int]] = []
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                st = os.stat(p)
            except OSError:  # removed while we looked: the next poll sees it gone
                continue
            out.append((os.path.relpath(p, folder), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class RepositoryPoller:
    """Watch the repository folder; call ``sync(name)`` for each model name whose folders
    were added, changed or removed.

    A change is acted on once the folder has stayed the same for one whole interval, so
    that a folder still being copied or a weights file still being written is not loaded
    half-done. ``sync`` errors are logged, never raised: the watch goes on.

    Parameters
    ----------
    root : Path
        The repository folder.
    interval_s : float
        Seconds between two looks.
    sync : callable
        ``async sync(name)``: load the folders of ``name`` again, unload what is gone.
    """

    def __init__(
        self, root: Path, interval_s: float, sync: Callable[[str], Awaitable[object]]
    ) -> None:
        self.root = root
        self.interval_s = interval_s
        self._sync = sync
        self._seen: dict[str, tuple[str, Fingerprint]] = {}  # folder -> (model name, print)
        self._pending: dict[str, tuple[str, Fingerprint]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (on the running loop). The folders as they are now are the
        baseline: the start-up load has just read them."""
        self._seen = self._scan()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop watching (waits for a sync in progress to be cancelled)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _scan(self) -> dict[str, tuple[str, Fingerprint]]:
        try:
            folders = model_folders(self.root)
        except McdropError:  # the folder itself went away: every model is gone
            return {}
        return {f.name: (folder_model_name(f), fingerprint(f)) for f in folders}

    def changed_names(self) -> set[str]:
        """One look: the model names to sync now (each change seen twice, unchanged)."""
        now = self._scan()
        names: set[str] = set()
        for folder in set(now) | set(self._seen):
            cur, old = now.get(folder), self._seen.get(folder)
            if cur == old:
                self._pending.pop(folder, None)
                continue
            if cur is not None and self._pending.get(folder) != cur:
                self._pending[folder] = cur  # changed since the last look: wait one more
                continue
            self._pending.pop(folder, None)
            if old is not None:
                names.add(old[0])
            if cur is not None:
                names.add(cur[0])
                self._seen[folder] = cur
            else:
                del self._seen[folder]
        return names

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                names = await asyncio.to_thread(self.changed_names)
            except Exception as exc:  # a file system error must not end the watch
                log.error("polling %s failed: %s", self.root, exc)
                continue
            for name in sorted(names):
                try:
                    await self._sync(name)
                except Exception as exc:  # reported in the index; the watch goes on
                    log.error("poll: model %s: %s", name, exc)
