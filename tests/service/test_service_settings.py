"""Settings from the environment, and ``mcdrop serve`` refusing to start without models."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.tolerance import assert_stats_close_f32

from mcdrop.cli import main as cli_main
from service.settings import DEFAULT_MODELS_DIR, Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.api_key, s.cors_origins) == ("127.0.0.1", 8000, None, ())
    assert s.models_dir == DEFAULT_MODELS_DIR and DEFAULT_MODELS_DIR.name == "models"
    assert s.batching_enabled and s.share_unseeded and s.switch_interval_ms == 1.0


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "MCDROP_MODELS_DIR": str(tmp_path),
        "MCDROP_HOST": "0.0.0.0",
        "MCDROP_PORT": "9000",
        "MCDROP_API_KEY": "k",
        "MCDROP_MAX_BODY_BYTES": "1000",
        "MCDROP_MAX_JSON_DEPTH": "10",
        "MCDROP_MAX_BATCH_ROWS": "1",
        "MCDROP_BATCHING": "off",
        "MCDROP_MAX_QUEUE_DELAY_MS": "0.5",
        "MCDROP_MAX_QUEUE_SIZE": "3",
        "MCDROP_REQUEST_TIMEOUT_S": "2.5",
        "MCDROP_CORS_ORIGINS": "https://a.example, https://b.example",
        "MCDROP_DRAIN_SECONDS": "4",
        "MCDROP_LOG_LEVEL": "WARNING",
        "MCDROP_WORKERS": "2",
        "MCDROP_SHARE_UNSEEDED": "false",
        "MCDROP_SWITCH_INTERVAL_MS": "2.5",
    }
    s = Settings.from_env(env)
    assert s.models_dir == tmp_path and s.port == 9000 and s.api_key == "k"
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert (s.max_queue_delay_ms, s.request_timeout_s, s.log_level) == (0.5, 2.5, "warning")
    assert not s.batching and not s.batching_enabled and s.workers == 2
    assert not s.share_unseeded and s.switch_interval_ms == 2.5


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("MCDROP_PORT", "eighty", "MCDROP_PORT='eighty' is not valid"),
        ("MCDROP_PORT", "70000", "MCDROP_PORT must be in [0, 65535]"),
        ("MCDROP_MAX_QUEUE_SIZE", "0", "MCDROP_MAX_QUEUE_SIZE must be at least 1"),
        ("MCDROP_BATCHING", "maybe", "expected true/false"),
        ("MCDROP_COMPILE", "sometimes", "expected true/false"),
        ("MCDROP_REQUEST_TIMEOUT_S", "0", "MCDROP_REQUEST_TIMEOUT_S must be > 0"),
        ("MCDROP_LOG_LEVEL", "loud", "MCDROP_LOG_LEVEL must be one of"),
        ("MCDROP_API_KEY", "  ", "must not be blank"),
        ("MCDROP_SWITCH_INTERVAL_MS", "0", "MCDROP_SWITCH_INTERVAL_MS must be in (0, 1000]"),
        ("MCDROP_SHARE_UNSEEDED", "sometimes", "expected true/false"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        Settings.from_env({var: value})
    assert fragment in str(info.value)


def test_serve_without_models_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["serve", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no models in" in err and str(tmp_path) in err and "--models-dir" in err
    assert cli_main(["serve", "--models-dir", str(tmp_path / "missing")]) == 2


def test_serve_reports_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCDROP_MAX_BODY_BYTES", "lots")
    assert cli_main(["serve"]) == 2
    assert "MCDROP_MAX_BODY_BYTES" in capsys.readouterr().err


def test_device_and_precision_settings_parse_and_validate() -> None:
    s = Settings.from_env({"MCDROP_DEVICE": "CPU", "MCDROP_PRECISION": "bf16"})
    assert s.device == "cpu" and s.precision == "bf16"
    with pytest.raises(ValueError, match="MCDROP_PRECISION"):
        Settings.from_env({"MCDROP_PRECISION": "int8"})
    with pytest.raises(ValueError, match="MCDROP_DEVICE"):
        Settings.from_env({"MCDROP_DEVICE": "tpu"})


@pytest.mark.parametrize("flag", [["--engine", "ray"], ["--engine=ray"]])
def test_serve_engine_ray_dispatches_to_the_ray_engine(
    monkeypatch: pytest.MonkeyPatch, flag: list[str]
) -> None:
    import service.ray_app as ray_app

    seen: list[list[str]] = []
    monkeypatch.setattr(ray_app, "main", lambda argv: seen.append(list(argv)) or 0)
    argv = ["serve", *flag, "--port", "0", "--replicas", "2"]
    assert cli_main(argv) == 0
    assert seen == [argv[1:]]


def test_devices_setting_shards_samples_and_keeps_answers(tmp_path: Path) -> None:
    from mcdrop.repository import load_model
    from service.metrics import ServiceMetrics
    from service.runtime import ModelRuntime

    s = Settings.from_env({"MCDROP_DEVICES": "cpu, cpu"})
    assert s.devices == ("cpu", "cpu")
    loaded = load_model(DEFAULT_MODELS_DIR / "toy1d")
    rt = ModelRuntime(loaded, s, ServiceMetrics())
    pred = rt._predictor()
    assert len(pred._replicas) == 2
    import numpy as np

    x = np.array([[0.5], [4.0]], dtype=np.float32)
    single = load_model(DEFAULT_MODELS_DIR / "toy1d").predictor().predict(x, samples=30, seed=3)
    sharded = pred.predict(x, samples=30, seed=3)
    assert_stats_close_f32(sharded, single)  # samples split over devices: float32 rounding


@pytest.mark.parametrize(
    ("level", "access_on"), [("debug", True), ("info", True), ("warning", False), ("error", False)]
)
def test_log_level_switches_the_access_lines(level: str, access_on: bool) -> None:
    import logging

    from service.launch import configure_logging

    access = logging.getLogger("mcdrop.access")
    saved = access.level, logging.getLogger("mcdrop").level
    try:
        configure_logging(level)
        assert access.isEnabledFor(logging.INFO) is access_on
        assert logging.getLogger("mcdrop").level == logging.getLevelName(level.upper())
    finally:
        access.setLevel(saved[0])
        logging.getLogger("mcdrop").setLevel(saved[1])


@pytest.mark.slow  # inductor compiles the toy1d suffix twice (static, then dynamic shapes)
def test_compile_setting_compiles_at_warm_up_and_no_request_compiles() -> None:
    import numpy as np
    from torch._dynamo.utils import counters

    from mcdrop.repository import load_model
    from service.metrics import ServiceMetrics
    from service.runtime import ModelRuntime

    s = Settings.from_env({"MCDROP_COMPILE": "true"})
    assert s.compile is True
    rt = ModelRuntime(load_model(DEFAULT_MODELS_DIR / "toy1d"), s, ServiceMetrics())
    rt.warm_up()
    pred = rt._predictor()
    assert pred.describe(np.zeros((1, 1), np.float32))["compile"] == "compiled"
    graphs = counters["stats"]["unique_graphs"]
    eager = load_model(DEFAULT_MODELS_DIR / "toy1d").predictor()
    for rows, samples in ((3, 37), (7, 100), (50, 5)):
        x = np.linspace(-4, 4, rows, dtype=np.float32).reshape(rows, 1)
        got = pred.predict(x, samples=samples, seed=rows)
        assert_stats_close_f32(got, eager.predict(x, samples=samples, seed=rows))
    assert counters["stats"]["unique_graphs"] == graphs  # warm-up paid for every compile
