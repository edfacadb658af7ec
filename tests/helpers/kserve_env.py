"""A separate virtual environment with KServe's Python SDK, for the client tests.

KServe pins ``protobuf<7`` and ``pandas<3`` and registers the protobuf package
``inference.*`` that ``tritonclient.grpc`` registers too, so it cannot share the test
environment (nor one process with tritonclient.grpc). Its clients run in this venv, in
subprocesses, against the real server on loopback.

``python tests/helpers/kserve_env.py`` creates it ahead of the suite (``scripts/dev.py test``
does); :func:`kserve_python` creates it on first use otherwise. A stamp holds the pinned
requirement, so a changed pin rebuilds it.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-kserve"
REQUIREMENT = "kserve==0.21.0"
STAMP = VENV / ".mcdrop-kserve"


def _python() -> Path:
    return VENV / "bin" / "python"


def kserve_python(timeout: float = 600.0) -> Path:
    """The interpreter of the KServe venv, created (under a lock) if it is missing."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".venv-kserve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if STAMP.is_file() and STAMP.read_text() == REQUIREMENT and _python().is_file():
            return _python()
        print(f"[kserve-env] creating {VENV} with {REQUIREMENT} (about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True,
                       timeout=timeout)  # fmt: skip
        subprocess.run(
            [str(_python()), "-m", "pip", "install", "--disable-pip-version-check",
             "--no-compile", "-q", REQUIREMENT],
            check=True, timeout=timeout,
        )  # fmt: skip
        STAMP.write_text(REQUIREMENT)
    return _python()


if __name__ == "__main__":
    print(kserve_python())
