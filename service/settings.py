"""Service settings, read from ``MCDROP_*`` environment variables with pydantic-settings.

One :class:`Settings` class holds everything the service can be told, the Ray Serve engine's
options included (its nested :class:`RaySettings`, read from ``MCDROP_RAY_*``). A bad value
stops the server with a message naming the variable and the value.

Constructing ``Settings(...)`` directly reads no environment (tests and embedders get
exactly what they pass); :meth:`Settings.from_env` reads ``os.environ`` or a given mapping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from mcdrop.repository import default_models_dir
from service.connections import ConnectionSettings

__all__ = ["Settings", "RaySettings", "DEFAULT_MODELS_DIR", "ENV_PREFIX", "RAY_PREFIX"]

ENV_PREFIX = "MCDROP_"
RAY_PREFIX = ENV_PREFIX + "RAY_"
DEFAULT_MODELS_DIR = default_models_dir()
APP_NAME = "mcdrop"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MODEL_CONTROL_MODES = ("none", "explicit", "poll")

# The environment from_env reads; None (the default) when Settings(...) is built directly.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("mcdrop_environ", default=None)


# ------------------------------------------------------------------------------ wording


def _check(value: Any, ok: bool, var: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"{var} {msg}, got {value!r}")


def _wording(exc: ValidationError, prefix: str, env: Mapping[str, str] | None) -> str:
    """The first error as a sentence naming the ``MCDROP_*`` variable (and its value)."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err.get("loc", ()))
    msg = str(err["ctx"]["error"]) if err.get("type") == "value_error" else err["msg"]
    if msg.startswith(ENV_PREFIX):  # our own range checks name the variable already
        return msg
    var = prefix + "_".join(str(p) for p in loc).upper()
    raw = None
    if env is not None:
        raw = next((v for k, v in env.items() if k.upper() == var), None)
    shown = raw if raw is not None else err.get("input")
    return f"{var}={shown!r} is not valid: {msg}"


class _Clean:
    """Validation errors as one ValueError sentence (``mcdrop serve`` prints it as is)."""

    _env_prefix: ClassVar[str] = ENV_PREFIX  # how the variables of this class's fields begin

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ValueError(_wording(exc, type(self)._env_prefix, _ENVIRON.get())) from None


# ------------------------------------------------------------------------------ parsing


def _parse_bool(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _parse_list(v: Any) -> Any:
    if isinstance(v, str):
        return tuple(p.strip() for p in v.split(",") if p.strip())
    return v


def _parse_json_object(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        value = json.loads(v)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object such as {"min_replicas": 1}')
    return value


# ------------------------------------------------------------------------------ Ray


class RaySettings(_Clean, BaseModel):
    """How the service is spread over Ray Serve replicas; each field is
    ``MCDROP_RAY_<FIELD NAME UPPERCASE>`` (:attr:`Settings.ray`).

    Attributes
    ----------
    replicas : int or None
        Fixed number of replicas (default 1). Mutually exclusive with ``autoscaling``.
    max_ongoing : int
        Requests one replica works on at once (Ray's ``max_ongoing_requests``). The
        replica's own batcher merges them, so this should be at least the batch size you
        want; it also bounds how long a request can wait inside the replica.
    max_queued : int
        Requests each proxy holds waiting for a free replica slot (Ray's
        ``max_queued_requests``); beyond it the proxy answers 503 at once. -1: unbounded.
    autoscaling : dict or None
        Ray's ``autoscaling_config`` (JSON in the environment), e.g.
        ``{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}``.
    num_cpus : float
        CPUs Ray reserves per replica (``ray_actor_options``); torch inside the replica
        uses that many threads (Ray sets ``OMP_NUM_THREADS``).
    address : str
        Ray cluster for ``mcdrop serve --engine ray``: ``local`` (default) starts a
        private one; anything else is passed to ``ray.init(address=...)``.
    app_name : str
        Serve application name.
    route_prefix : str
        Where the app is mounted on the proxy.
    """

    # Unknown MCDROP_RAY_* variables are ignored, as unknown MCDROP_* ones are.
    model_config = ConfigDict(frozen=True, extra="ignore")
    _env_prefix: ClassVar[str] = RAY_PREFIX

    replicas: int | None = None
    max_ongoing: int = 32
    max_queued: int = 256
    autoscaling: dict[str, Any] | None = None
    num_cpus: float = 1.0
    address: str = "local"
    app_name: str = APP_NAME
    route_prefix: str = "/"

    _json = field_validator("autoscaling", mode="before")(_parse_json_object)

    @model_validator(mode="after")
    def _ranges(self) -> RaySettings:
        p = RAY_PREFIX
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(
                f"{p}REPLICAS and {p}AUTOSCALING are mutually exclusive: "
                "autoscaling chooses the number of replicas; unset one of them"
            )
        if self.replicas is not None:
            _check(self.replicas, self.replicas >= 1, f"{p}REPLICAS", "must be at least 1")
        _check(self.max_ongoing, self.max_ongoing >= 1, f"{p}MAX_ONGOING", "must be at least 1")
        _check(
            self.max_queued,
            self.max_queued >= 1 or self.max_queued == -1,
            f"{p}MAX_QUEUED",
            "must be at least 1 (or -1 for unbounded)",
        )
        _check(self.num_cpus, self.num_cpus >= 0, f"{p}NUM_CPUS", "must be >= 0")
        _check(
            self.route_prefix,
            self.route_prefix.startswith("/"),
            f"{p}ROUTE_PREFIX",
            "must start with '/'",
        )
        return self

    @property
    def num_replicas(self) -> int | str:
        """Ray's ``num_replicas``: the fixed count, or ``"auto"`` under autoscaling."""
        if self.autoscaling is not None:
            return "auto"
        return 1 if self.replicas is None else self.replicas

    def with_overrides(self, **changes: Any) -> RaySettings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return type(self)(**{**dict(self), **{k: v for k, v in changes.items() if v is not None}})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RaySettings:
        """The ``MCDROP_RAY_*`` part of :meth:`Settings.from_env`."""
        return Settings.from_env(environ).ray


# ------------------------------------------------------------------------------ service


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class Settings(_Clean, BaseSettings):
    """Everything the service can be told; each field is ``MCDROP_<FIELD NAME UPPERCASE>``.

    Attributes
    ----------
    models_dir : Path
        Model repository folder (one sub-folder per model). Default: the default models
        (:func:`mcdrop.repository.default_models_dir`).
    host, port : str, int
        Where ``mcdrop serve`` listens (default 127.0.0.1:8000).
    grpc_port : int or None
        The Open Inference Protocol over gRPC on ``host`` at this port, served by the same
        process; None (the default here): no gRPC. ``mcdrop serve`` uses 8001 unless told
        otherwise (``--grpc-port``, ``--no-grpc``), as Triton does. 0: any free port.
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
        A request not answered in this time gets 504 (dropped if it has not started,
        stopped at its next chunk if it has).
    max_compute_s : float
        Compute budget of one request, in seconds of engine time estimated before it is
        queued: rows x samples x the model's cost per row-sample measured at warm-up. Over
        it: 422 naming the limit. A model's ``max_compute_seconds`` (model.toml) overrides it.
    max_response_bytes : int
        Largest answer, bounded before computing from the rows, the output shape, the
        statistics asked for and the encoding; over it: 422 naming the limit.
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
    compile : bool
        Run each model's stochastic part as a ``torch.compile`` graph
        (``MCPredictor(compile=True)``); compiled during warm-up, before ready.
    load_timeout_s : float
        Longest a model folder may take to import, build, load its weights and warm up;
        past it the model is marked failed and the others are served (a hung import keeps
        running in a daemon thread: Python cannot stop a thread).
    strict_readiness : bool
        True: ``/health/ready`` is 200 only when every model folder is loaded and none
        is loading or failed (the Open Inference Protocol's meaning). False: 200 as soon
        as loading finished with at least one model serving.
    model_control : str
        ``none`` (load every folder at start; no load/unload routes), ``explicit`` (the
        repository load/unload routes may change what is served) or ``poll`` (the
        repository folder is watched and changes are loaded).
    poll_interval_s : float
        How often ``poll`` looks at the repository folder.
    opentelemetry : bool
        Record OpenTelemetry spans (a server span per request, its queue wait and batch
        compute; :mod:`service.otel`). Needs ``pip install 'mcdrop[otel]'``. Off by default.
    page : bool
        Serve the browser page (``GET /``, ``/static/...`` and the model card route it
        reads, :mod:`service.page`). On by default.
    ray : RaySettings
        The Ray Serve engine's options (``MCDROP_RAY_*``).
    conn : ConnectionSettings
        Connection limits of ``mcdrop serve`` (``MCDROP_CONN_*``): timeouts, maximum
        connections and header size (:mod:`service.connections`).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",  # MCDROP_RAY_MAX_ONGOING -> ray.max_ongoing
        env_nested_max_split=1,
        env_ignore_empty=True,
        enable_decoding=False,  # lists are comma-separated, not JSON (validators below)
        frozen=True,
        extra="forbid",
    )

    models_dir: Path = DEFAULT_MODELS_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
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
    max_compute_s: float = 10.0
    max_response_bytes: int = 64 * 2**20
    cors_origins: tuple[str, ...] = ()
    drain_seconds: float = 10.0
    log_level: str = "info"
    workers: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    devices: tuple[str, ...] = ()
    compile: bool = False
    load_timeout_s: float = 60.0
    strict_readiness: bool = True
    model_control: str = "none"
    poll_interval_s: float = 5.0
    opentelemetry: bool = False
    page: bool = True
    ray: RaySettings = RaySettings()
    conn: ConnectionSettings = ConnectionSettings()

    _bools = field_validator(
        "batching", "share_unseeded", "compile", "strict_readiness", "opentelemetry", "page",
        mode="before",
    )(_parse_bool)  # fmt: skip
    _lists = field_validator("cors_origins", "devices", mode="before")(_parse_list)

    @field_validator("log_level", "device", "precision", "model_control", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("models_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _ranges(self) -> Settings:
        p = ENV_PREFIX
        _check(self.precision, self.precision in ("fp32", "bf16", "fp16"), f"{p}PRECISION",
               "must be fp32, bf16 or fp16")  # fmt: skip
        _check(
            self.device,
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps", "xpu"),
            f"{p}DEVICE",
            "must be auto, cpu, cuda or cuda:N",
        )
        _check(self.port, 0 <= self.port <= 65535, f"{p}PORT", "must be in [0, 65535]")
        if self.grpc_port is not None:
            _check(self.grpc_port, 0 <= self.grpc_port <= 65535, f"{p}GRPC_PORT",
                   "must be in [0, 65535]")  # fmt: skip
        for name in ("max_body_bytes", "max_json_depth", "max_batch_rows", "max_queue_size",
                     "workers", "max_response_bytes"):  # fmt: skip
            value = getattr(self, name)
            _check(value, value >= 1, p + name.upper(), "must be at least 1")
        _check(self.switch_interval_ms, 0 < self.switch_interval_ms <= 1000,
               f"{p}SWITCH_INTERVAL_MS", "must be in (0, 1000]")  # fmt: skip
        for name in ("max_queue_delay_ms", "drain_seconds"):
            value = getattr(self, name)
            _check(value, value >= 0, p + name.upper(), "must be >= 0")
        _check(self.request_timeout_s, self.request_timeout_s > 0, f"{p}REQUEST_TIMEOUT_S",
               "must be > 0")  # fmt: skip
        _check(self.max_compute_s, self.max_compute_s > 0, f"{p}MAX_COMPUTE_S", "must be > 0")
        _check(self.log_level, self.log_level in _LOG_LEVELS, f"{p}LOG_LEVEL",
               f"must be one of {', '.join(_LOG_LEVELS)}")  # fmt: skip
        _check(self.load_timeout_s, 0 < self.load_timeout_s <= 86400, f"{p}LOAD_TIMEOUT_S",
               "must be in (0, 86400]")  # fmt: skip
        _check(self.model_control, self.model_control in MODEL_CONTROL_MODES,
               f"{p}MODEL_CONTROL", "must be none, explicit or poll")  # fmt: skip
        _check(self.poll_interval_s, 0.1 <= self.poll_interval_s <= 3600,
               f"{p}POLL_INTERVAL_S", "must be in [0.1, 3600]")  # fmt: skip
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError(f"{p}API_KEY must not be blank (unset it to disable auth)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments first, then the environment, and that only inside from_env.
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _MappingSource(settings_cls, environ))

    @property
    def batching_enabled(self) -> bool:
        """Whether requests may share an engine call."""
        return self.batching and self.max_batch_rows > 1

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced (``None`` values are ignored), checked."""
        return type(self)(**{**dict(self), **{k: v for k, v in changes.items() if v is not None}})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``MCDROP_*`` variables; unset variables keep their defaults.

        Raises
        ------
        ValueError
            A variable that does not parse or is out of range, naming it and the value.
        """
        with _reading(os.environ if environ is None else environ):
            return cls()


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRON.set(dict(environ))
    try:
        yield
    finally:
        _ENVIRON.reset(token)
