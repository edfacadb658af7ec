"""Copies of the toy1d model under other names and limits, and this process's resident
memory, for the budget and fairness tests (which serve them with
:func:`helpers.live_server.live_app`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from helpers.live_server import MODELS_DIR

__all__ = ["toy_copy", "rss_bytes"]


def toy_copy(root: Path, name: str, max_compute_seconds: float | None = None) -> Path:
    """models/toy1d copied to ``root/name`` under that name (and, if given, with
    ``[sampling] max_compute_seconds``)."""
    dst = root / name
    shutil.copytree(MODELS_DIR / "toy1d", dst)
    toml = (dst / "model.toml").read_text()
    toml = re.sub(r'^name = "toy1d"', f'name = "{name}"', toml, flags=re.M)
    if max_compute_seconds is not None:
        toml = toml.replace(
            "[sampling]\n", f"[sampling]\nmax_compute_seconds = {max_compute_seconds}\n"
        )
    (dst / "model.toml").write_text(toml)
    return dst


def rss_bytes() -> int:
    """Resident memory of this process (the in-thread server's too), from /proc."""
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
