"""The Docker image, really built and served: ``scripts/container-test`` under pytest.

The script builds the unchanged Dockerfile with podman (installing it with apt when it is
missing, so it needs root), serves the image on loopback and checks its answers through
``mcdrop.client``; it exits non-zero on any failure and never passes without having run
the image. It takes minutes and changes the machine, so it runs only when selected:
``python3 scripts/dev.py test -m container`` (CI does; tests/conftest.py skips it in
other runs, saying how to select it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2400  # a fresh machine installs podman and debootstraps a base image first


def test_the_image_builds_serves_and_answers() -> None:
    env = {**os.environ, "MCDROP_PYTHON": sys.executable}
    # Its own process group: on time-out SIGTERM reaches podman too (the script's exit trap
    # removes what it created), and the pipe then closes.
    proc = subprocess.Popen([str(ROOT / "scripts" / "container-test")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    watchdog = threading.Timer(TIMEOUT_S, os.killpg, (proc.pid, signal.SIGTERM))
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:  # progress as it comes (shown live with -s)
            line = raw.decode(errors="replace")
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        rc = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # the test itself was interrupted
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    tail = "".join(lines[-80:])
    killed = " (killed: over the time limit)" if rc < 0 else ""
    assert rc == 0, f"scripts/container-test failed, exit {rc}{killed}:\n{tail}"
    # The script's own verdict, printed only after the image answered its checks.
    assert any(line.rstrip().endswith("] PASSED") for line in lines), tail
