"""The top-level ``mcdrop`` command: help, unknown commands, dispatch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcdrop.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("serve", "predict", "evaluate", "bench"):
        assert name in out and name in COMMANDS


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: mcdrop" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bogus"])
    assert info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_bench_help_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    assert info.value.code == 0
    assert "--precision" in capsys.readouterr().out


def test_version_and_python_dash_m(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import mcdrop

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mcdrop {mcdrop.__version__}\n"
    res = subprocess.run([sys.executable, "-m", "mcdrop", "--version"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0 and res.stdout == f"mcdrop {mcdrop.__version__}\n", res.stderr
    res = subprocess.run([sys.executable, "-m", "mcdrop", "bogus"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_default_models_dir_is_the_checkout_models_folder() -> None:
    from mcdrop.repository import default_models_dir

    assert default_models_dir() == ROOT / "models"
    assert {"concrete", "digits", "toy1d"} <= {
        p.parent.name for p in ROOT.glob("models/*/model.toml")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built as a wheel, once for the tests of this module."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True,
                   timeout=300)  # fmt: skip
    (built,) = out.glob("mcdrop-*.whl")
    return built


def test_the_wheel_carries_the_default_models(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for model in ROOT.glob("models/*/model.toml"):
        for f in model.parent.iterdir():
            if f.is_file() and f.suffix != ".pyc":
                assert f"mcdrop/default_models/{model.parent.name}/{f.name}" in names, f
    assert not [n for n in names if "__pycache__" in n]
    # every package of the source tree is in it (setup.py finds them)
    for init in [*ROOT.glob("mcdrop/**/__init__.py"), *ROOT.glob("service/**/__init__.py")]:
        assert init.relative_to(ROOT).as_posix() in names, init


@pytest.mark.slow
def test_pip_install_then_serve_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    """A user's `pip install` into a fresh venv: `mcdrop serve` serves the default models."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # --no-compile: bytecode for all of torch is most of the install time, and not under test
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel)], check=True,
                   timeout=600)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCDROP_", "PYTHON"))}
    mcdrop_cmd = str(venv / "bin" / "mcdrop")
    res = subprocess.run([mcdrop_cmd, "--version"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0 and res.stdout.startswith("mcdrop "), res.stderr
    # the installed copy, not this checkout
    probe = [str(py), "-c", "import mcdrop; print(mcdrop.__file__)"]
    where = subprocess.run(probe, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([mcdrop_cmd, "serve", "--port", str(port)], cwd=elsewhere,
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        body = _wait_ready(f"http://127.0.0.1:{port}/health/ready", proc, timeout=120)
        assert {"concrete", "digits", "toy1d"} <= set(body["models"]), body
        # a plain install has no optional extras: only models that need one may be missing,
        # and their reason says which to install
        for name, why in body["failures"].items():
            assert "pip install 'mcdrop[" in why, (name, why)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The readiness answer once loading has finished: 200, or the strict 503 whose only
    reasons are folders that failed (a plain install lacks the extras some models need)."""
    from helpers.live_server import settled

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mcdrop serve exited with {proc.returncode}"
        try:
            r = httpx.get(url, timeout=2)
        except httpx.TransportError:
            r = None
        if r is not None and settled(r):
            return dict(r.json())
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout} s")


def _dev_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """scripts/dev.py as a module, its .venv and lock moved into ``tmp_path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mcdrop_dev_script", ROOT / "scripts/dev.py")
    assert spec and spec.loader
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    monkeypatch.setattr(dev, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(dev, "LOCK", tmp_path / ".venv.lock")
    return dev


def test_dev_script_says_how_to_get_venv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = _dev_script(monkeypatch, tmp_path)
    real = dev.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "ensurepip" else real(name, *args)

    monkeypatch.setattr(dev.importlib.util, "find_spec", find_spec)
    assert dev.create_venv() is False
    err = capsys.readouterr().err
    assert "sudo apt install python3-venv" in err and "ensurepip is not available" in err
    assert not (tmp_path / ".venv").exists()


def test_dev_script_lock_makes_a_second_command_wait(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dev = _dev_script(monkeypatch, tmp_path)
    # another process tries the lock while this one holds it
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got it')\n"
             "except BlockingIOError:\n    print('busy')")  # fmt: skip
    lock = str(tmp_path / ".venv.lock")
    with dev.locked():
        held = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True)
    after = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True)
    assert (held.stdout.strip(), after.stdout.strip()) == ("busy", "got it")


def test_dev_script_spreads_the_suite_over_workers(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:  # fmt: skip
    dev = _dev_script(monkeypatch, tmp_path)
    monkeypatch.delenv("MCDROP_TEST_WORKERS", raising=False)
    by_file = ["--dist", "loadfile"]
    for cpus, want in ((1, []), (2, ["-n", "2", *by_file]), (16, ["-n", "4", *by_file])):
        monkeypatch.setattr(dev.os, "cpu_count", lambda cpus=cpus: cpus)
        assert dev.xdist_args(["-m", "not slow", "-q"]) == want, cpus
    # arguments that choose for themselves are left alone
    for args in (["-n", "0"], ["-n3"], ["--numprocesses=2"], ["-p", "no:xdist"]):
        assert dev.xdist_args(args) == [], args
    monkeypatch.setenv("MCDROP_TEST_WORKERS", "3")
    assert dev.xdist_args([]) == ["-n", "3", *by_file]
    monkeypatch.setenv("MCDROP_TEST_WORKERS", "1")
    assert dev.xdist_args([]) == []
    monkeypatch.setenv("MCDROP_TEST_WORKERS", "many")
    assert dev.xdist_args([]) == []
