"""The model repository: one folder per served model, loaded by path.

Layout of a model folder::

    models/digits/
        model.toml           manifest (validated strictly, see below)
        model.py             architecture: a factory function returning an nn.Module
        weights.safetensors  the module's state dict (never pickle)
        train.py, README.md  how the weights were made, and the model card (not read here)

``model.toml``::

    name = "digits"
    version = "1.0.0"
    task = "classification"          # or "regression"
    description = "..."

    [input]
    shape = [64]                     # one row, without the batch dimension
    dtype = "float32"                # float32 | float64 | int64

    [output]
    shape = [10]
    names = ["0", "1", ...]          # optional; one per output element

    [sampling]
    default_samples = 100
    max_samples = 1000
    max_batch_rows = 1024
    tau = 0.5                        # optional, regression only; in output units

    [model]
    factory = "build"

    [model.config]                   # keyword arguments of the factory
    hidden = 128

Loading never returns anything half-built: a folder either gives a :class:`LoadedModel`
whose weights matched the architecture exactly and whose dry forward pass gave the declared
output shape, or an error (:class:`~mcdrop.errors.ManifestError` for the folder, manifest
and architecture code, :class:`~mcdrop.errors.WeightsError` for the tensors) whose message
names the file and the field or tensor at fault.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mcdrop.errors import InvalidInputError, ManifestError, McdropError, WeightsError
from mcdrop.manifest import (
    MANIFEST_FILE,
    TASKS,
    Manifest,
    load_manifest,
    manifest_from_dict,
    manifest_to_toml,
)
from mcdrop.predictor import MCPredictor

__all__ = [
    "Manifest",
    "LoadedModel",
    "Repository",
    "load_manifest",
    "load_model",
    "load_repository",
    "model_folders",
    "forget_model",
    "arch_module_name",
    "default_models_dir",
    "save_model",
    "manifest_to_toml",
    "MANIFEST_FILE",
    "TASKS",
    "ARCH_FILE",
    "WEIGHTS_FILE",
]

ARCH_FILE = "model.py"
WEIGHTS_FILE = "weights.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
}


@dataclass
class LoadedModel:
    """A model folder loaded and checked: manifest, folder path and the built module."""

    manifest: Manifest
    path: Path
    module: nn.Module
    _predictor: MCPredictor | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def predictor(self, **options: Any) -> MCPredictor:
        """The model's :class:`~mcdrop.MCPredictor` (built once, then cached).

        Uses the manifest's ``default_samples``, ``task``, ``tau`` and ``max_samples``;
        ``options`` (``device``, ``precision``, ``max_rows``, ``devices``) are passed to
        the constructor on the first call only.
        """
        with self._lock:
            if self._predictor is None:
                m = self.manifest
                self._predictor = MCPredictor(
                    self.module,
                    samples=m.default_samples,
                    task=m.task,  # type: ignore[arg-type]
                    tau=m.tau,
                    max_samples=m.max_samples,
                    **options,
                )
            return self._predictor

    @property
    def takes_text(self) -> bool:
        """Whether raw text is accepted (a transformers folder with tokenizer files)."""
        return bool(getattr(self.module, "has_tokenizer", False))

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw texts as int64 model inputs (``input_ids``, ``attention_mask``), (B, L) each.

        Raises
        ------
        InvalidInputError
            The model takes no text (see :attr:`takes_text`) or ``texts`` are not strings.
        """
        if not self.takes_text:
            raise InvalidInputError(
                f"model '{self.manifest.name}' takes no text: send token ids or numbers"
            )
        return self.module.tokenize(texts)  # type: ignore[operator,no-any-return]


@dataclass
class Repository:
    """Every loadable model under ``root`` by name, and why the others failed.

    ``failures`` maps a folder name to an actionable reason.
    """

    root: Path
    models: dict[str, LoadedModel] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Architecture and weights
# --------------------------------------------------------------------------------------


def arch_module_name(folder: Path, manifest: Manifest) -> str:
    """The ``sys.modules`` name under which ``folder/model.py`` is imported: unique per
    folder path, so that two folders never share a module and a reload replaces it."""
    src = folder / ARCH_FILE
    digest = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12]
    return f"_mcdrop_model_{re.sub(r'[^A-Za-z0-9_]', '_', manifest.name)}_{digest}"


def forget_model(loaded: LoadedModel) -> None:
    """Drop the imported ``model.py`` of ``loaded`` from ``sys.modules`` (after an unload,
    so that the module and what it holds can be freed)."""
    sys.modules.pop(arch_module_name(loaded.path, loaded.manifest), None)


def model_folders(root: str | Path) -> list[Path]:
    """The sub-folders of ``root`` that hold a ``model.toml``, in sorted order (names
    starting with ``.`` or ``_`` are skipped).

    Raises
    ------
    ManifestError
        ``root`` does not exist or is not a directory.
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise ManifestError(f"{rootp}: model repository folder does not exist")
    return [
        p
        for p in sorted(rootp.iterdir())
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / MANIFEST_FILE).is_file()
    ]


def _import_arch(folder: Path, manifest: Manifest) -> Any:
    """Import ``folder/model.py`` under a unique module name; return the factory."""
    src = folder / ARCH_FILE
    if not src.is_file():
        raise ManifestError(f"{src}: no such file (a model folder needs a {ARCH_FILE})")
    mod_name = arch_module_name(folder, manifest)
    spec = importlib.util.spec_from_file_location(mod_name, src)
    if spec is None or spec.loader is None:  # pragma: no cover - only for odd file systems
        raise ManifestError(f"{src}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    # Registered while executing so dataclasses/pickling inside model.py can find it.
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise ManifestError(f"{src}: importing failed: {type(exc).__name__}: {exc}") from exc
    except BaseException:  # SystemExit, KeyboardInterrupt: not ours to swallow, but no
        sys.modules.pop(mod_name, None)  # half-imported module stays behind
        raise
    fn = getattr(module, manifest.factory, None)
    if not callable(fn):
        raise ManifestError(
            f"{src}: has no function '{manifest.factory}' ([model] factory in {MANIFEST_FILE})"
        )
    return fn


def _build(folder: Path, manifest: Manifest) -> nn.Module:
    fn = _import_arch(folder, manifest)
    src = folder / ARCH_FILE
    try:
        module = fn(**manifest.config)
    except Exception as exc:
        raise ManifestError(
            f"{src}: {manifest.factory}(**[model.config]) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ManifestError(
            f"{src}: {manifest.factory}() must return a torch.nn.Module, "
            f"got {type(module).__name__}"
        )
    return module


def _load_weights(folder: Path, module: nn.Module) -> None:
    """Load ``weights.safetensors`` into ``module`` strictly (names, shapes, finiteness)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (a model folder needs {WEIGHTS_FILE})")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file: {exc}") from exc
    expected = module.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise WeightsError(
                f"{path}: missing tensor '{name}' (the architecture expects shape "
                f"{list(t.shape)}); {len(tensors)} tensors in the file"
            )
    for name, t in tensors.items():
        if name not in expected:
            raise WeightsError(
                f"{path}: unexpected tensor '{name}' of shape {list(t.shape)} "
                "(the architecture has no such parameter or buffer)"
            )
        want = expected[name]
        if tuple(t.shape) != tuple(want.shape):
            raise WeightsError(
                f"{path}: tensor '{name}' has shape {list(t.shape)} but the architecture "
                f"expects {list(want.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsError(f"{path}: tensor '{name}' contains NaN or Inf")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above catch the usual cases
        raise WeightsError(f"{path}: {exc}") from exc


def _dry_forward(folder: Path, manifest: Manifest, module: nn.Module) -> None:
    """One deterministic pass on a zero row: the output must have the declared shape."""
    src = folder / MANIFEST_FILE
    x = torch.zeros((1, *manifest.input_shape), dtype=DTYPES[manifest.input_dtype])
    p0 = next(module.parameters(), None)
    if p0 is not None and x.is_floating_point():
        x = x.to(p0.dtype)
    module.eval()
    try:
        with torch.no_grad():
            y = module(x)
    except Exception as exc:
        raise ManifestError(
            f"{src}: the model fails on an input of shape {[1, *manifest.input_shape]} "
            f"([input] shape): {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(y, (tuple, list)) and len(y) == 2:  # (mean, log_variance) head
        y = y[0]
    if not isinstance(y, torch.Tensor):
        raise ManifestError(f"{src}: the model must return a tensor, got {type(y).__name__}")
    if tuple(y.shape) != (1, *manifest.output_shape):
        raise ManifestError(
            f"{src}: [output] shape is {list(manifest.output_shape)} but the model returns "
            f"{list(y.shape[1:])} per row"
        )


def load_model(folder: str | Path) -> LoadedModel:
    """Load one model folder: manifest, architecture, weights, and a dry forward check.

    Raises
    ------
    ManifestError
        Bad or missing ``model.toml`` / ``model.py``, a factory that fails, or an output
        shape different from the manifest's.
    WeightsError
        Missing or unreadable weights, or the first missing / unexpected / mismatched
        tensor (with its name and both shapes).
    """
    path = Path(folder)
    if not path.is_dir():
        raise ManifestError(f"{path}: not a model folder (no such directory)")
    manifest = load_manifest(path)
    if manifest.format == "transformers":
        from mcdrop.hf_format import load_transformers

        module: nn.Module = load_transformers(
            path, manifest.config, manifest.input_shape, manifest.input_dtype
        )
    else:
        module = _build(path, manifest)
        _load_weights(path, module)
    _dry_forward(path, manifest, module)
    module.eval()
    return LoadedModel(manifest=manifest, path=path, module=module)


def load_repository(root: str | Path) -> Repository:
    """Load every sub-folder of ``root`` holding a ``model.toml``.

    A broken model never stops the others: its folder name and the reason go to
    ``Repository.failures``. Two folders declaring the same name: the first in sorted
    folder order is served, the second is a failure.

    Raises
    ------
    ManifestError
        ``root`` does not exist or is not a directory.
    """
    rootp = Path(root)
    repo = Repository(root=rootp)
    owners: dict[str, str] = {}
    for folder in model_folders(rootp):
        try:
            loaded = load_model(folder)
        except McdropError as exc:
            repo.failures[folder.name] = str(exc)
            continue
        except Exception as exc:  # a model's own code may raise anything
            repo.failures[folder.name] = f"{folder}: {type(exc).__name__}: {exc}"
            continue
        name = loaded.manifest.name
        if name in repo.models:
            repo.failures[folder.name] = (
                f"{folder / MANIFEST_FILE}: name '{name}' is already used by folder "
                f"'{owners[name]}'; model names must be unique"
            )
            continue
        repo.models[name] = loaded
        owners[name] = folder.name
    return repo


DEFAULT_MODELS_PACKAGE = "mcdrop.default_models"


def default_models_dir() -> Path:
    """The folder of the default models that ship with mcdrop.

    A source checkout (or an editable install) serves the repository's own ``models/``
    folder, so that retrained weights are picked up without reinstalling; an installed
    wheel carries the same folders as the data package ``mcdrop.default_models``
    (``pyproject.toml`` maps ``models/`` onto it).

    Returns
    -------
    Path
        The first of ``<checkout>/models`` and ``<site-packages>/mcdrop/default_models``
        that holds a model folder; the installed location when neither does (the caller
        reports that it holds no model).
    """
    here = Path(__file__).resolve().parent  # .../mcdrop
    installed = here / DEFAULT_MODELS_PACKAGE.rpartition(".")[2]
    candidates = [installed]
    if (here.parent / "pyproject.toml").is_file():  # a checkout, not site-packages/models
        candidates.insert(0, here.parent / "models")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob(f"*/{MANIFEST_FILE}")):
            return candidate
    return installed


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def save_model(
    folder: str | Path,
    module: nn.Module,
    manifest: Manifest,
    model_source: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a model folder: ``model.toml``, ``model.py`` and ``weights.safetensors``.

    Parameters
    ----------
    folder : path
        Created if missing.
    module : nn.Module
        Its ``state_dict()`` is saved with safetensors (never pickle).
    manifest : Manifest
        Validated again before anything is written.
    model_source : path
        The ``model.py`` defining ``manifest.factory``; copied into the folder (nothing
        is copied when it already is the folder's ``model.py``).
    overwrite : bool
        Existing files are refused unless True.

    Returns
    -------
    Path
        The folder.
    """
    from safetensors.torch import save_file

    dest = Path(folder)
    src = Path(model_source)
    manifest = manifest_from_dict(manifest.to_dict(), f"manifest for {dest / MANIFEST_FILE}")
    if not src.is_file():
        raise ManifestError(f"{src}: model source file does not exist")
    targets = [dest / MANIFEST_FILE, dest / ARCH_FILE, dest / WEIGHTS_FILE]
    same_source = (dest / ARCH_FILE).exists() and (dest / ARCH_FILE).resolve() == src.resolve()
    if not overwrite:
        existing = [t for t in targets if t.exists() and not (t.name == ARCH_FILE and same_source)]
        if existing:
            raise ManifestError(
                f"{existing[0]}: already exists; pass overwrite=True to replace the model"
            )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    dest.mkdir(parents=True, exist_ok=True)
    text = manifest_to_toml(manifest)
    (dest / MANIFEST_FILE).write_text(text, encoding="utf-8")
    if not same_source:
        shutil.copyfile(src, dest / ARCH_FILE)
    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"name": manifest.name})
    return dest
