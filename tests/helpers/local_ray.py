"""A private local Ray instance with Serve on a free loopback port, for the Ray tests
(``tests/service/test_ray.py``) and ``benchmarks/ray_scaling.py``.

Its temp dir is short and new (Ray's socket paths must stay under 108 bytes, and other Ray
instances on the machine must not be found or disturbed); the workers get this checkout on
``PYTHONPATH`` so replicas import the same ``mcdrop`` and ``service``. Leaving the block
shuts Serve and Ray down and removes the temp dir, whatever happened inside.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers.live_server import ROOT, free_port

__all__ = ["LocalRay", "local_ray_serve"]


@dataclass(frozen=True)
class LocalRay:
    """Where the instance listens (``url``) and keeps its files (``temp_dir``)."""

    url: str
    temp_dir: Path


@contextmanager
def local_ray_serve(num_cpus: int, *, log_level: int = logging.WARNING) -> Iterator[LocalRay]:
    """Start Ray (``num_cpus`` CPUs, 80 MiB object store, no dashboard) and Serve's HTTP
    proxy on 127.0.0.1; yields once both are up."""
    import ray
    from ray import serve

    temp_dir = Path(tempfile.mkdtemp(prefix="mcdrop-ray-", dir="/tmp"))
    port = free_port()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        _temp_dir=str(temp_dir),
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        log_to_driver=False,
        logging_level=log_level,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield LocalRay(f"http://127.0.0.1:{port}", temp_dir)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
