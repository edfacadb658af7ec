"""Service settings, read from ``MCDROP_*`` environment variables.

Plain ``os.environ`` parsing (no pydantic-settings dependency): each variable is parsed and
range-checked here, and a bad value stops the server with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Settings", "DEFAULT_MODELS_DIR", "ENV_PREFIX"]

ENV_PREFIX = "MCDROP_"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told; each field is ``MCDROP_<FIELD NAME UPPERCASE>``.

    Attributes
    ----------
    models_dir : Path
        Model repository folder (one sub-folder per model). Default: the repository's
        ``models/``.
    host, port : str, int
        Where ``mcdrop serve`` listens (default 127.0.0.1:8000).
    api_key : str or None
        When set, model routes need ``Authorization: Bearer <key>``.
    max_body_bytes : int
        Largest request body; larger ones get 413.
    max_json_depth : int
        Deepest nesting of arrays/objects accepted in a JSON body (400 beyond).
    max_batch_rows : int
        Most rows the batcher puts in one engine call (also capped by each model's
        ``max_batch_rows``). 1 switches batching off.
    batching : bool
        False runs every request alone (for benchmarks).
    share_unseeded : bool
        Requests without a seed that are batched together (same sample count) share their
        S sampled subnetworks, as the rows of one request do: each answer is distributed
        as alone and reports the seed that reproduces it, but answers of different
        requests are not independent. False: every request draws its own masks (or send
        a seed per request).
    switch_interval_ms : float
        The interpreter's thread switch interval (``sys.setswitchinterval``) while the app
        runs. The event loop and the batcher threads share one GIL; with Python's default
        of 5 ms a thread that wants it back (the engine between two torch calls, the loop
        with a request to answer) can wait that long. 1 ms served 2,260 against 1,780-1,870
        requests/s at concurrency 32 (benchmarks/RESULTS.md).
    max_queue_delay_ms : float
        How long the batcher waits for more requests after the first one arrives (only
        while requests come together: not after a batch of one).
    max_queue_size : int
        Requests waiting per model; beyond it requests get 503 with Retry-After.
    request_timeout_s : float
        A request not answered in this time gets 504 (dropped if it has not started).
    cors_origins : tuple of str
        Allowed CORS origins (comma-separated in the environment); empty: CORS off.
    drain_seconds : float
        On SIGTERM, how long in-flight requests may take to finish.
    log_level : str
        critical, error, warning, info or debug.
    workers : int
        uvicorn worker processes (each loads every model).
    device : str
        Where models run: "cpu", "cuda", "cuda:1", ... or "auto" (CUDA when available).
    precision : str
        Forward-pass precision of the engine: fp32, bf16 or fp16 (statistics stay float64).
    devices : tuple of str
        Shard each request's MC samples over these devices (comma-separated in the
        environment, e.g. ``cuda:0,cuda:1``); empty: everything on ``device``.
    """

    models_dir: Path = DEFAULT_MODELS_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    max_json_depth: int = 100
    max_batch_rows: int = 256
    batching: bool = True
    share_unseeded: bool = True
    switch_interval_ms: float = 1.0
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    request_timeout_s: float = 30.0
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    drain_seconds: float = 10.0
    log_level: str = "info"
    workers: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    devices: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check(
            self.precision,
            self.precision in ("fp32", "bf16", "fp16"),
            "precision",
            "must be fp32, bf16 or fp16",
        )
        _check(
            self.device,
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps", "xpu"),
            "device",
            "must be auto, cpu, cuda or cuda:N",
        )
        _check(self.port, 0 <= self.port <= 65535, "port", "must be in [0, 65535]")
        for name in ("max_body_bytes", "max_json_depth", "max_batch_rows", "max_queue_size"):
            _check(getattr(self, name), getattr(self, name) >= 1, name, "must be at least 1")
        _check(self.workers, self.workers >= 1, "workers", "must be at least 1")
        _check(
            self.switch_interval_ms,
            0 < self.switch_interval_ms <= 1000,
            "switch_interval_ms",
            "must be in (0, 1000]",
        )
        for name in ("max_queue_delay_ms", "drain_seconds"):
            _check(getattr(self, name), getattr(self, name) >= 0, name, "must be >= 0")
        _check(
            self.request_timeout_s, self.request_timeout_s > 0, "request_timeout_s", "must be > 0"
        )
        _check(
            self.log_level,
            self.log_level in _LOG_LEVELS,
            "log_level",
            f"must be one of {', '.join(_LOG_LEVELS)}",
        )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError(f"{ENV_PREFIX}API_KEY must not be blank (unset it to disable auth)")

    @property
    def batching_enabled(self) -> bool:
        """Whether requests may share an engine call."""
        return self.batching and self.max_batch_rows > 1

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``MCDROP_*`` variables; unset variables keep their defaults.

        Raises
        ------
        ValueError
            A variable that does not parse, naming it and the value.
        """
        env = os.environ if environ is None else environ
        parsers: dict[str, Callable[[str], Any]] = {
            "models_dir": lambda s: Path(s).expanduser(),
            "host": str,
            "port": int,
            "api_key": lambda s: s if s else None,
            "max_body_bytes": int,
            "max_json_depth": int,
            "max_batch_rows": int,
            "batching": _parse_bool,
            "share_unseeded": _parse_bool,
            "switch_interval_ms": float,
            "max_queue_delay_ms": float,
            "max_queue_size": int,
            "request_timeout_s": float,
            "cors_origins": _parse_list,
            "drain_seconds": float,
            "log_level": lambda s: s.strip().lower(),
            "workers": int,
            "device": lambda s: s.strip().lower(),
            "precision": lambda s: s.strip().lower(),
            "devices": _parse_list,
        }
        return cls(**env_values(cls, ENV_PREFIX, parsers, env))


def env_values(
    cls: type,
    prefix: str,
    parsers: Mapping[str, Callable[[str], Any]],
    env: Mapping[str, str],
    skip_blank: bool = False,
) -> dict[str, Any]:
    """Parsed values of the dataclass fields of ``cls`` that ``PREFIX + NAME`` sets in ``env``.

    A value that does not parse raises ValueError naming the variable and the value.
    """
    values: dict[str, Any] = {}
    for f in fields(cls):
        var = prefix + f.name.upper()
        raw = env.get(var)
        if raw is None or (skip_blank and raw.strip() == ""):
            continue
        try:
            values[f.name] = parsers[f.name](raw.strip() if skip_blank else raw)
        except ValueError as exc:
            raise ValueError(f"{var}={raw!r} is not valid: {exc}") from exc
    return values


def _check(value: Any, ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"{ENV_PREFIX}{name.upper()} {msg}, got {value!r}")


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _parse_list(s: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in s.split(",") if p.strip())
