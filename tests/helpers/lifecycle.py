"""Model folders for the model-lifecycle tests: a small regressor whose weights come from
a seed (so a reload with new weights changes the answers), and ``model.py`` sources that
misbehave at load (exit, interrupt, hang at import or in warm-up).

Everything is written by :func:`mcdrop.repository.save_model` or as plain files; nothing
here imports the service.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from mcdrop.repository import Manifest, save_model

__all__ = ["FEATURES", "ROW", "GOOD_SOURCE", "write_model", "write_hostile", "HOSTILE"]

FEATURES = 4
ROW = [0.5, -1.0, 2.0, 0.25]

GOOD_SOURCE = """
import torch
from torch import nn
from mcdrop import MCDropout


def build(hidden: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, hidden), nn.ReLU(), MCDropout(0.2), nn.Linear(hidden, 1)
    )
"""

# Each misbehaves in its own way; {GOOD} is the good source, which they extend.
HOSTILE: dict[str, str] = {
    # sys.exit at import: SystemExit (uncaught, it used to stop the server with rc 3)
    "exits": "import sys\nsys.exit(3)\n{GOOD}",
    "interrupts": "raise KeyboardInterrupt('at import')\n{GOOD}",
    # the factory raises GeneratorExit, a BaseException that is not an Exception
    "genexit": "{GOOD}\n_build = build\n\ndef build(hidden=16):\n    raise GeneratorExit('no')\n",
    "hangs_import": "import time\ntime.sleep(3600)\n{GOOD}",
    # the first forward pass (the loader's dry pass) works; the warm-up's next one hangs
    # (a layer without parameters, so the weights file still fits)
    "hangs_warmup": textwrap.dedent(
        """
        {GOOD}
        import time
        _calls = [0]

        class _HangingReLU(nn.Module):
            def forward(self, x):
                _calls[0] += 1
                if _calls[0] > 1:
                    time.sleep(3600)
                return torch.relu(x)

        def build(hidden=16):
            return nn.Sequential(
                nn.Linear(4, hidden), _HangingReLU(), MCDropout(0.2), nn.Linear(hidden, 1)
            )
        """
    ),
}


def _manifest(name: str, version: str) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        task="regression",
        description=f"lifecycle test model {name} {version}",
        input_shape=(FEATURES,),
        output_shape=(1,),
        default_samples=8,
        max_samples=64,
        max_batch_rows=16,
        factory="build",
        tau=1.0,
    )


def _module(seed: int, source: str) -> torch.nn.Module:
    namespace: dict[str, object] = {}
    exec(compile(source, "<lifecycle model>", "exec"), namespace)  # our own source text
    torch.manual_seed(seed)
    build = namespace["build"]
    assert callable(build)
    module = build()
    assert isinstance(module, torch.nn.Module)
    return module


def write_model(
    folder: Path, name: str, *, version: str = "1", seed: int = 0, overwrite: bool = False
) -> Path:
    """A good model folder whose weights are drawn with ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder.parent / f".{folder.name}-model.py"
    src.write_text(GOOD_SOURCE)
    try:
        save_model(folder, _module(seed, GOOD_SOURCE), _manifest(name, version), src,
                   overwrite=overwrite)  # fmt: skip
    finally:
        src.unlink()
    return folder


def write_hostile(root: Path, kind: str) -> Path:
    """Folder ``root/kind``: the good model's weights, with the ``HOSTILE[kind]`` model.py."""
    folder = write_model(root / kind, kind)
    (folder / "model.py").write_text(HOSTILE[kind].replace("{GOOD}", GOOD_SOURCE))
    return folder
