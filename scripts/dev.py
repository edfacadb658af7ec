#!/usr/bin/env python3
"""Set up mcdrop on a fresh machine and run it: ``python3 scripts/dev.py serve|test|setup``.

Needs only python3 (3.10 or newer, with the venv module). Creates ``.venv`` beside the
repository on first use and installs mcdrop into it (editable; torch pinned by
``constraints.txt``), then:

- ``serve``: installs only what serving needs (mcdrop, its runtime dependencies and the
  ``hf`` extra that the default text model ``models/langid`` loads with) and
  becomes ``mcdrop serve`` (the default models of ``models/`` on 127.0.0.1:8000; extra
  arguments go to ``mcdrop serve``);
- ``test``: installs the ``dev`` extra as well and becomes ``pytest`` (extra arguments go
  to pytest), spread over worker processes by pytest-xdist, one test file per worker at a
  time (module-scoped servers and Ray instances are set up once); first it creates the
  KServe SDK's own venv (``.venv-kserve``, see ``tests/helpers/kserve_env.py``) if missing;
- ``setup``: installs the ``dev`` extra and exits.

Both run commands replace this process (``exec``): the PID you started is the server's or
pytest's, so signals reach it and killing it frees the port. A lock on ``.venv.lock`` lets
several commands start at once: the first installs, the others wait for it.

Environment:

- ``MCDROP_TORCH_INDEX``: a PyTorch wheel index that pip may take torch from (passed as
  ``--extra-index-url``), e.g. ``https://download.pytorch.org/whl/cpu`` for the CPU build or
  ``https://download.pytorch.org/whl/cu128`` for CUDA 12.8. Unset: pip's own configuration
  (on PyPI, Linux x86-64 gets the CUDA build). Changing it recreates ``.venv``.
- ``MCDROP_TEST_WORKERS``: how many pytest-xdist workers ``test`` starts (default: the CPU
  count, at most 4; ``1`` runs in this process, serially). Ignored when the arguments
  choose themselves (``-n``, ``--numprocesses``, ``-p no:xdist``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / ".venv.lock"  # beside .venv, so recreating .venv never removes a held lock
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
TORCH_INDEX_ENV = "MCDROP_TORCH_INDEX"
WORKERS_ENV = "MCDROP_TEST_WORKERS"
# What each command installs: serving needs the `hf` extra for the default text model
# (models/langid); `dev` holds everything `serve` needs.
EXTRAS = {"serve": "[hf]", "test": "[dev]", "setup": "[dev]"}
NO_VENV = """\
[dev] cannot create {venv}: {why}
[dev] python3's venv module (with ensurepip) is needed. On Debian or Ubuntu:
[dev]     sudo apt install python3-venv      (or python3.X-venv for your python3.X)
[dev] then run this command again."""


def say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


@contextmanager
def locked() -> Iterator[None]:
    """Hold an exclusive lock on ``.venv.lock`` (a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another dev.py command is setting up .venv; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fingerprint(extra: str) -> str:
    """What an install depends on: the package metadata, the pins, the extra, the index."""
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    h.update(extra.encode())
    return h.hexdigest()


def stamp(extra: str) -> Path:
    return VENV / f".mcdrop-installed{extra or '[serve]'}"


def torch_index() -> str:
    return os.environ.get(TORCH_INDEX_ENV, "").strip()


def venv_usable() -> bool:
    """The interpreter exists and has pip (a half-made .venv has neither or only the first)."""
    if not PY.exists():
        return False
    probe = [str(PY), "-c", "import pip"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def create_venv() -> bool:
    """Create ``.venv`` with pip; False (after saying how to fix it) when python3 cannot."""
    try:
        import venv
    except ImportError as exc:
        print(NO_VENV.format(venv=VENV, why=exc), file=sys.stderr)
        return False
    if importlib.util.find_spec("ensurepip") is None:
        print(NO_VENV.format(venv=VENV, why="ensurepip is not available"), file=sys.stderr)
        return False
    say(f"creating virtual environment in {VENV}")
    try:
        venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(VENV, ignore_errors=True)  # never leave a .venv without pip
        print(NO_VENV.format(venv=VENV, why=exc), file=sys.stderr)
        return False
    (VENV / ".mcdrop-torch-index").write_text(torch_index())
    return True


def install(extra: str) -> bool:
    """pip-install mcdrop (editable) with ``extra``, showing pip's own progress."""
    what = "mcdrop and the development tools (dev extra)" if extra else "mcdrop for serving"
    say(f"installing {what}; torch pinned by constraints.txt")
    # --no-compile: byte-compiling all of torch took most of the install; Python compiles
    # what it imports on first use instead.
    cmd = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "--no-compile"]
    cmd += ["-c", str(ROOT / "constraints.txt")]
    if torch_index():
        say(f"torch may come from {torch_index()} ({TORCH_INDEX_ENV})")
        cmd += ["--extra-index-url", torch_index()]
    cmd += ["-e", f"{ROOT}{extra}"]
    if subprocess.run(cmd).returncode != 0:
        say("pip failed (its message is above); fix that and run this command again")
        return False
    stamp(extra).write_text(fingerprint(extra))
    say("installed")
    return True


def compile_packages() -> None:
    """Byte-compile the venv's packages once, on every CPU (``install`` skips it so that
    ``serve`` is ready sooner): otherwise the suite's first imports of torch and
    transformers compile them, in every xdist worker and server subprocess at once."""
    done = VENV / ".mcdrop-compiled"
    if done.is_file() and done.read_text() == fingerprint("[dev]"):
        return
    where = subprocess.run(
        [str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    say(f"byte-compiling the installed packages once ({where})")
    # -qq: a few packages ship files for other Python versions that do not compile; the
    # interpreter never imports those, so their errors are not ours to show.
    subprocess.run([str(PY), "-m", "compileall", "-qq", "-j", "0", where])
    done.write_text(fingerprint("[dev]"))


def ensure_env(command: str) -> bool:
    """Make ``.venv`` ready for ``command``; False when it cannot be (the reason is printed)."""
    extra = EXTRAS[command]
    # Anything that satisfies this command: the dev extra also covers serving.
    enough = sorted({extra, "[dev]"})

    def ready() -> bool:
        return any(stamp(e).is_file() and stamp(e).read_text() == fingerprint(e) for e in enough)

    with locked():
        index_file = VENV / ".mcdrop-torch-index"
        recorded = index_file.read_text() if index_file.is_file() else ""
        if VENV.exists() and recorded != torch_index():
            say(f"{TORCH_INDEX_ENV} changed: recreating {VENV} so torch comes from the new index")
            shutil.rmtree(VENV)
        if not (ready() and PY.exists()):
            if not venv_usable() and not create_venv():
                return False
            if not (ready() or install(extra)):
                return False
        if extra == "[dev]":
            compile_packages()
        return True


def prepare_kserve() -> None:
    """Create the KServe SDK's own venv before the suite (``tests/helpers/kserve_env.py``
    says why it has one), so no test spends its time on it; a failure is left to the tests
    that need it to report."""
    script = ROOT / "tests" / "helpers" / "kserve_env.py"
    if script.is_file() and subprocess.run([str(PY), str(script)]).returncode != 0:
        say("could not create the KServe venv (above); the KServe client tests will fail")


def xdist_args(args: list[str]) -> list[str]:
    """The pytest-xdist options that ``test`` adds to ``args`` ([] to run serially).

    ``--dist loadfile`` hands out whole test files: a module's fixtures (a live server, a
    Ray instance) are set up once, in one worker, and its tests keep their order.
    """
    chosen = {"-n", "--numprocesses", "no:xdist", "-pno:xdist"}
    if any(a in chosen or a.startswith(("-n", "--numprocesses=")) for a in args):
        return []
    raw = os.environ.get(WORKERS_ENV, "").strip()
    try:
        n = int(raw) if raw else min(os.cpu_count() or 1, 4)
    except ValueError:
        say(f"{WORKERS_ENV}={raw!r} is not a number of workers; running serially")
        n = 1
    return ["-n", str(n), "--dist", "loadfile"] if n > 1 else []


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    if sys.version_info < (3, 10):  # noqa: UP036 - this file runs on any python3
        print(f"[dev] mcdrop needs Python 3.10 or newer; this is {sys.version.split()[0]}")
        return 1
    cmd, rest = argv[0], argv[1:]
    if not ensure_env(cmd):
        return 1
    if cmd == "setup":
        return 0
    os.chdir(ROOT)
    if cmd == "serve":
        args = [str(PY), "-m", "mcdrop", "serve", *rest]
    else:
        prepare_kserve()
        args = [str(PY), "-m", "pytest", *xdist_args(rest), *rest]
    sys.stdout.flush()
    # exec, not a child process: the PID the user (or a process manager) holds is the
    # server's, so SIGTERM reaches uvicorn and nothing is left listening on the port.
    os.execv(args[0], args)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
