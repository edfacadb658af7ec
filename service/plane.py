"""The data plane: protocol-neutral operations over the served models.

:class:`DataPlane` loads the repository's models (one :class:`~service.runtime.ModelRuntime`
per model folder, each a version of a model), finds the model a request names, answers
health and readiness, submits checked requests, and changes what is served (the repository
extension: index, load, unload). Every front end calls the same methods: the v1 and v2
routes, the repository routes and the gRPC servicer. It never sees a body: the codecs turn
bodies into :class:`~service.runtime.InferRequest` and :class:`~service.runtime.Answer` back.

State lives in one entry per model folder (:class:`~service.control.FolderEntry`),
changed only on the event loop; the served view (``models`` and the versions of each name)
is rebuilt from the entries after each change and swapped in whole, so a request sees
either the old runtime or the new one. Model code runs in loader threads
(:mod:`service.control`) and the engine in the batcher threads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from pathlib import Path
from typing import Any

from mcdrop.errors import McdropError
from mcdrop.manifest import load_manifest, version_key
from mcdrop.repository import forget_model, model_folders
from service.control import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADED,
    UNLOADING,
    FolderEntry,
    LoadFailed,
    RepositoryPoller,
    collect_retired,
    folder_model_name,
    load_isolated,
)
from service.errors import BadRequest, ModelNotReady, NotFound, shown
from service.metrics import ServiceMetrics
from service.runtime import Answer, InferRequest, ModelRuntime
from service.settings import Settings

__all__ = ["DataPlane", "FolderEntry", "LOADING", "READY", "UNAVAILABLE", "UNLOADING"]

log = logging.getLogger("mcdrop.service")


class DataPlane:
    """Every model of the repository folder, loaded, warmed up and batched.

    Parameters
    ----------
    settings : Settings
    metrics : ServiceMetrics
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = Path(settings.models_dir)
        self.entries: dict[str, FolderEntry] = {}  # by folder name
        self.models: dict[str, ModelRuntime] = {}  # name -> its default (highest) version
        self.versions: dict[str, dict[str, ModelRuntime]] = {}  # name -> version -> runtime
        self.loaded = False  # the start-up load has finished
        self._repo_error: str | None = None
        self._folders: list[Path] | None = None  # the folders of the start-up load
        self._lock = asyncio.Lock()  # one change of what is served at a time
        self._poller: RepositoryPoller | None = None
        self._closing = False
        self._gauged: set[tuple[str, str]] = set()  # (model, version) labels of the gauge

    # -------------------------------------------------------------- state

    @property
    def failures(self) -> dict[str, str]:
        """Model folder -> why it is not served (unloaded ones are not failures)."""
        out = {e.folder: e.reason for e in self.entries.values()
               if e.state == UNAVAILABLE and e.reason != UNLOADED}  # fmt: skip
        if self._repo_error is not None:
            out[str(self.root)] = self._repo_error
        return out

    @property
    def loading(self) -> list[str]:
        """The model folders loading now."""
        return sorted(e.folder for e in self.entries.values() if e.state == LOADING)

    @property
    def ready(self) -> bool:
        """Whether the server is ready: loading finished, at least one model serves and,
        under strict readiness (the default), no folder is loading or failed."""
        if not self.loaded or not self.models:
            return False
        if self.settings.strict_readiness:
            return not self.loading and not self.failures
        return True

    def _publish(self) -> None:
        """Rebuild the served view from the entries, and the ready gauge of every model."""
        versions: dict[str, dict[str, ModelRuntime]] = {}
        for e in self.entries.values():
            if e.runtime is not None and e.state in (READY, LOADING):
                versions.setdefault(e.name, {})[e.version] = e.runtime
        self.versions = versions
        self.models = {name: vs[max(vs, key=version_key)] for name, vs in sorted(versions.items())}
        labels = {(e.name, e.version) for e in self.entries.values()}
        for name, version in labels | self._gauged:  # a reload may rename a version
            up = name in versions and version in versions[name]
            self.metrics.model_ready.labels(name, version).set(1 if up else 0)
        self._gauged |= labels

    # -------------------------------------------------------------- loading

    def prepare(self) -> None:
        """List the model folders, each LOADING, so that readiness names every one from
        the start (the lifespan calls it before the server takes connections)."""
        if self._folders is not None:
            return
        try:
            self._folders = model_folders(self.root)
        except McdropError as exc:
            self._repo_error = str(exc)
            log.error("model repository %s: %s", self.root, exc)
            self._folders = []
        for f in self._folders:
            self.entries[f.name] = FolderEntry(f.name, f.name)

    async def load_all(self) -> None:
        """Load and warm up every model folder (one at a time), then start watching the
        folder under ``model_control=poll``. Call it once, on the event loop."""
        self.prepare()
        async with self._lock:
            for f in self._folders or []:
                await self._load_folder(f)
        for e in self.entries.values():
            if e.state == UNAVAILABLE:
                log.error("model folder %s not served: %s", e.folder, e.reason)
        log.info("mcdrop ready: %d model(s) from %s, %d failed",
                 len(self.models), self.root, len(self.failures))  # fmt: skip
        # Everything alive now (torch, the models, the app) lives as long as the process:
        # move it out of the collector's view. Otherwise every full collection walks those
        # millions of objects while requests wait (p99 at concurrency 32 went from 130 ms
        # to 36 ms with this; benchmarks/RESULTS.md). Before ``loaded``: nothing may
        # unload a model between the two (_collect thaws what it frees).
        gc.collect()
        gc.freeze()
        self.loaded = True
        if self.settings.model_control == "poll" and not self._closing:
            self._poller = RepositoryPoller(self.root, self.settings.poll_interval_s, self._sync)
            self._poller.start()

    def _claim(self, folder: Path) -> FolderEntry | None:
        """Read ``folder``'s manifest into its entry (LOADING unless it serves already);
        None, with the entry UNAVAILABLE, when the manifest is bad or its name and version
        belong to another folder."""
        entry = self.entries.setdefault(folder.name, FolderEntry(folder.name, folder.name))
        if entry.runtime is None:
            entry.state, entry.reason = LOADING, ""
        try:
            m = load_manifest(folder)
        except McdropError as exc:
            self._fail(entry, str(exc))
            return None
        for other in self.entries.values():
            if (
                other is not entry
                and (other.name, other.version) == (m.name, m.version)
                and (other.state in (READY, LOADING))
            ):
                self._fail(entry, f"{folder}: model '{m.name}' version '{m.version}' is "
                           f"already served from folder '{other.folder}'")  # fmt: skip
                return None
        if entry.runtime is None:
            entry.name, entry.version = m.name, m.version
        return entry

    def _fail(self, entry: FolderEntry, reason: str) -> None:
        if entry.runtime is not None:  # a reload failed: the loaded version goes on
            entry.state, entry.reason = READY, f"reload failed: {reason}"
        else:
            entry.state, entry.reason = UNAVAILABLE, reason

    async def _load_folder(self, folder: Path) -> str | None:
        """Load (or reload) one folder and swap it in; the reason when it failed."""
        entry = self._claim(folder)
        if entry is None:
            self._publish()
            return self.entries[folder.name].reason
        try:
            rt = await load_isolated(folder, self.settings, self.metrics)
        except LoadFailed as exc:
            self._fail(entry, exc.reason)
            self._publish()
            return exc.reason
        if self._closing:  # the server stops: serve nothing new
            return None
        rt.start()
        old = entry.runtime
        entry.name, entry.version = rt.name, rt.manifest.version
        entry.state, entry.reason, entry.runtime = READY, "", rt
        self._publish()  # new requests go to rt from here on
        log.info("model %s %s ready (%s)", rt.name, rt.manifest.version, rt.manifest.task)
        if old is not None:
            await self._retire(old, forget=False)  # the reload replaced its module
            gone: list[weakref.ref[Any]] = [weakref.ref(old), weakref.ref(old.loaded.module)]
            del old
            self._publish()
            await collect_retired(gone)
        return None

    async def _retire(self, rt: ModelRuntime, *, forget: bool) -> None:
        """Let ``rt``'s queued requests finish, stop its batcher and free it."""
        rt.ready = False
        if rt.batcher is not None:
            if not await asyncio.to_thread(rt.batcher.stop, self.settings.drain_seconds):
                log.warning("model %s: batcher did not drain within %.1f s", rt.name,
                            self.settings.drain_seconds)  # fmt: skip
        if forget:
            forget_model(rt.loaded)
        rt.batcher = None

    # -------------------------------------------------------------- model control

    def _check_control(self, action: str) -> None:
        mode = self.settings.model_control
        if mode != "explicit":
            raise BadRequest(
                f"model {action} is not allowed: MCDROP_MODEL_CONTROL={mode} "
                + ("(the repository folder is watched instead)" if mode == "poll" else
                   "(set MCDROP_MODEL_CONTROL=explicit to allow load and unload)")
            )  # fmt: skip

    def repository_index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model folder as ``{"name", "version", "state", "reason"}`` (Triton's
        repository index), sorted by name and version; ``ready_only``: READY ones only."""
        rows = [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in self.entries.values()
            if not ready_only or e.state == READY
        ]
        return sorted(rows, key=lambda r: (r["name"], version_key(r["version"])))

    async def load_model(self, name: str) -> None:
        """Load model ``name`` from its folders again (new manifest, new weights) and
        swap each version in once warmed up; requests in flight finish on the old one.

        Raises
        ------
        BadRequest
            Model control is not ``explicit``, or a folder failed to load (the versions
            already served go on).
        NotFound
            No folder of the repository declares ``name``.
        """
        self._check_control("load")
        async with self._lock:
            reasons = await self._sync(name, locked=True)
        if reasons:
            raise BadRequest(f"model {shown(name)} failed to load: " + "; ".join(reasons))

    async def unload_model(self, name: str) -> None:
        """Stop serving model ``name`` (every version): new requests get 404 at once,
        queued ones finish, then its memory is freed.

        Raises
        ------
        BadRequest
            Model control is not ``explicit``.
        NotFound
            No such model is loaded.
        """
        self._check_control("unload")
        async with self._lock:
            mine = [e for e in self.entries.values() if e.name == name and e.reason != UNLOADED]
            if not mine:
                raise NotFound(f"no model named {shown(name)} is loaded")
            await self._unload(mine)

    async def _unload(self, entries: list[FolderEntry]) -> None:
        for e in entries:
            e.state = UNLOADING
        self._publish()  # nobody finds them from here on
        gone: list[weakref.ref[Any]] = []
        for e in entries:
            rt, e.runtime = e.runtime, None
            if rt is not None:
                await self._retire(rt, forget=True)
                gone += [weakref.ref(rt), weakref.ref(rt.loaded.module)]
            del rt
            e.state, e.reason = UNAVAILABLE, UNLOADED
        self._publish()
        await collect_retired(gone)
        log.info("unloaded %s", ", ".join(f"{e.name} {e.version}" for e in entries))

    async def _sync(self, name: str, *, locked: bool = False) -> list[str]:
        """Make what is served of ``name`` match its folders now: load every folder that
        declares it, unload the versions whose folder is gone. The failures' reasons."""
        if not locked:
            async with self._lock:
                return await self._sync(name, locked=True)
        folders = await asyncio.to_thread(self._folders_of, name)
        gone = [e for e in self.entries.values() if e.name == name and
                e.folder not in {f.name for f in folders} and e.reason != UNLOADED]  # fmt: skip
        if not folders and not gone:
            raise NotFound(f"no folder in the model repository declares model {shown(name)}")
        if gone:
            await self._unload(gone)
        reasons = []
        for f in folders:
            reason = await self._load_folder(f)
            if reason is not None:
                reasons.append(reason)
        return reasons

    def _folders_of(self, name: str) -> list[Path]:
        try:
            folders = model_folders(self.root)
        except McdropError as exc:
            raise NotFound(str(exc)) from None
        return [f for f in folders if folder_model_name(f) == name]

    def stop(self, timeout: float) -> None:
        """Stop every batcher after its queued requests finish (blocking)."""
        self._closing = True
        for e in self.entries.values():
            if e.runtime is not None:
                e.runtime.stop(timeout)

    async def close(self) -> None:
        """Stop watching the repository folder; loads still running serve nothing."""
        self._closing = True
        if self._poller is not None:
            await self._poller.stop()

    # -------------------------------------------------------------- lookups

    def get(self, name: str, version: str | None = None) -> ModelRuntime:
        """The runtime of model ``name`` (its highest version by default): 404 if unknown
        or unloaded, 503 if it is loading or failed to load."""
        served = self.versions.get(name)
        if served is None:
            raise self._why_not(name)
        if version is None:
            return self.models[name]
        rt = served.get(version)
        if rt is None:
            raise NotFound(f"model {shown(name)} has no version {shown(version)} "
                           f"(served: {', '.join(sorted(served, key=version_key))})")  # fmt: skip
        return rt

    def _why_not(self, name: str) -> Exception:
        mine = [e for e in self.entries.values() if name in (e.name, e.folder)]
        if any(e.state == LOADING for e in mine):
            return ModelNotReady(f"model {shown(name)} is loading; retry shortly")
        failed = [e for e in mine if e.state == UNAVAILABLE and e.reason != UNLOADED]
        if failed:
            return ModelNotReady(f"model {shown(name)} failed to load: {failed[0].reason}")
        known = ", ".join(sorted(self.models)) or "none"
        if mine:
            return NotFound(f"model {shown(name)} is not loaded (unloaded; served: {known})")
        return NotFound(f"no model named {shown(name)} (served models: {known})")

    # -------------------------------------------------------------- operations

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``{"name", "ready": true}`` for a serving model; 503 / 404 otherwise."""
        rt = self.get(name, version)
        if not rt.ready:
            raise ModelNotReady(f"model {shown(name)} is not ready; retry shortly")
        return {"name": rt.name, "ready": True}

    def health(self) -> dict[str, Any]:
        """The readiness report (see :class:`mcdrop.schemas.ReadyResponse`): the served
        models, the folders loading and those that failed, with the reason."""
        return {
            "status": "ready" if self.ready else "not ready",
            "models": sorted(n for n, rt in self.models.items() if rt.ready),
            "loading": self.loading,
            "failures": self.failures,
        }

    def served(self) -> list[ModelRuntime]:
        """The served models (each one's default version), sorted by name."""
        return [self.models[n] for n in sorted(self.models)]

    def refuse_if_busy(self, name: str) -> None:
        """503 (QueueFull) at once when model ``name`` has a full queue; nothing otherwise
        (unknown names are reported after the body is read, as before)."""
        rt = self.models.get(name)
        if rt is not None and rt.batcher is not None:
            rt.batcher.refuse_if_full()

    async def infer(self, model: ModelRuntime, req: InferRequest) -> Answer:
        """Submit a checked request to ``model``'s batcher and wait for the answer.

        A request that found ``model`` just before a reload swapped it out goes to its
        successor (same name and version) instead of failing."""
        try:
            return await model.submit(req)
        except ModelNotReady:
            successor = self.versions.get(model.name, {}).get(model.manifest.version)
            if successor is None or successor is model or self._closing:
                raise
            return await successor.submit(req)
