"""Hugging Face transformers folders in the model repository (``format = "transformers"``).

A model folder may hold a transformers ``save_pretrained`` folder instead of ``model.py`` +
``weights.safetensors``::

    models/textcat/
        model.toml            format = "transformers" (see below)
        config.json           \\
        model.safetensors      | save_pretrained output (the folder itself, or [model] path)
        tokenizer.json ...    /  optional: the folder then also takes raw text
        train.py, README.md

``model.toml``::

    name = "textcat"
    version = "1.0.0"
    task = "classification"            # mcdrop's task: the statistics computed
    format = "transformers"

    [input]
    shape = [32]                       # token ids per row (sequence length)
    dtype = "int64"                    # required: inputs are input_ids

    [output]
    shape = [5]
    names = ["english", ...]

    [model]
    path = "."                         # the save_pretrained folder, relative to this one
    task = "sequence-classification"   # which Auto class loads it (HF_TASKS)
    output = "logits"                  # which field of the model's output is served
    attn_implementation = "sdpa"       # optional: "eager" or "sdpa" (transformers' default)

Loading goes through ``from_pretrained(local_path, local_files_only=True)`` with
``HF_HUB_OFFLINE=1``: never the hub, never remote code. transformers is the optional extra
``mcdrop[hf]``; without it a folder of this format fails with a :class:`ManifestError` that
names the extra, and the other models still load.

The served module (:class:`TransformersModule`) takes one tensor, ``input_ids`` (B, L)
int64, and derives the attention mask from the padding id (``attention_mask = input_ids !=
pad_token_id``), because the service passes one input tensor per row; a row of padding
only attends to its first position (never a fully masked row). Its
:meth:`~TransformersModule.tokenize` turns raw text into those ids when the folder has a
tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mcdrop.errors import InvalidInputError, ManifestError, WeightsError

__all__ = [
    "FORMAT",
    "HF_TASKS",
    "TransformersModule",
    "check_model_table",
    "load_transformers",
]

FORMAT = "transformers"
HF_TASKS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "feature-extraction": "AutoModel",
}
"""``[model] task`` -> the transformers Auto class that loads the folder."""
_DEFAULT_OUTPUT = {"sequence-classification": "logits", "feature-extraction": "pooler_output"}
_MODEL_KEYS = {"path", "task", "output", "attn_implementation"}
_ATTN = ("eager", "sdpa")
_EXTRA_HINT = "pip install 'mcdrop[hf]'"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def check_model_table(table: Any, src: str) -> dict[str, str]:
    """Validate the ``[model]`` table of a transformers manifest; the table with defaults.

    Raises
    ------
    ManifestError
        Unknown keys, a missing or unknown ``task``, a ``path`` leaving the model folder.
    """
    if not isinstance(table, dict):
        raise ManifestError(f"{src}: [model] must be a table")
    unknown = sorted(set(table) - _MODEL_KEYS)
    if unknown:
        known = ", ".join(sorted(_MODEL_KEYS))
        raise ManifestError(
            f"{src}: unknown key '{unknown[0]}' in [model] for format = \"transformers\" "
            f"(known keys: {known})"
        )
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(f"{src}: [model] {key} must be a non-empty string, got {value!r}")
    task = table.get("task")
    if task not in HF_TASKS:
        raise ManifestError(
            f"{src}: [model] task must be one of {', '.join(HF_TASKS)} "
            f"(the transformers head to load), got {task!r}"
        )
    path = table.get("path", ".")
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise ManifestError(f"{src}: [model] path must stay inside the model folder, got {path!r}")
    attn = table.get("attn_implementation")
    if attn is not None and attn not in _ATTN:
        raise ManifestError(
            f"{src}: [model] attn_implementation must be 'eager' or 'sdpa', got {attn!r}"
        )
    out = {"path": path, "task": task, "output": table.get("output", _DEFAULT_OUTPUT[task])}
    if attn is not None:
        out["attn_implementation"] = attn
    return out


class TransformersModule(nn.Module):
    """A transformers model served as ``input_ids (B, L) int64 -> output (B, *O)``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The loaded model; its dropout modules and attention dropout are what MC mode samples.
    output : str
        The field of the model's output that is returned (``"logits"``).
    pad_token_id : int or None
        Positions holding this id are masked out of attention; None masks nothing.
    tokenizer : transformers tokenizer, optional
        Enables :meth:`tokenize`.
    max_length : int
        Sequence length L of one row (the manifest's input shape).
    """

    def __init__(
        self,
        model: nn.Module,
        output: str,
        pad_token_id: int | None,
        tokenizer: Any = None,
        max_length: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.pad_token_id = pad_token_id
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the model on token ids (B, L); returns ``output`` (B, *O)."""
        if self.pad_token_id is None:
            mask = torch.ones_like(input_ids)
        else:
            mask = (input_ids != self.pad_token_id).long()  # (B, L)
            # A row of padding only attends to its first position: transformers treats a
            # fully masked row differently in train and eval mode, so one such row would
            # make MC mode's gate probe leave attention dropout off (and its output is
            # undefined anyway). Rows holding any token are unchanged.
            mask[:, 0] |= (mask.sum(dim=1) == 0).long()
        out = self.model(input_ids=input_ids, attention_mask=mask, return_dict=True)
        return out[self.output]

    @property
    def has_tokenizer(self) -> bool:
        """Whether the folder came with tokenizer files (raw text accepted)."""
        return self.tokenizer is not None

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw texts as model inputs, padded and truncated to the row length L.

        Parameters
        ----------
        texts : sequence of str (B,)

        Returns
        -------
        dict
            ``input_ids`` and ``attention_mask``, each an int64 array (B, L).

        Raises
        ------
        InvalidInputError
            The folder has no tokenizer, or ``texts`` is not a non-empty list of strings.
        """
        if self.tokenizer is None:
            raise InvalidInputError(
                "this model takes token ids only: its folder has no tokenizer files"
            )
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise InvalidInputError("texts must be a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("texts must be a list of strings (one per row)")
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {
            "input_ids": np.asarray(enc["input_ids"], dtype=np.int64),
            "attention_mask": np.asarray(enc["attention_mask"], dtype=np.int64),
        }


def _import_transformers(src: Path) -> Any:
    # Set before the first import: huggingface_hub reads it once. Never the hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError as exc:
        raise ManifestError(
            f'{src}: format = "transformers" needs the optional extra mcdrop[hf] '
            f"(transformers is not installed: {_EXTRA_HINT})"
        ) from exc
    transformers.logging.set_verbosity_error()  # no warnings or progress bars in the log
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _check_loading(model: nn.Module, info: dict[str, Any], folder: Path) -> None:
    """Weights must match the architecture exactly and be finite (as for model.py folders)."""
    for key, what in (
        ("missing_keys", "missing tensor"),
        ("unexpected_keys", "unexpected tensor"),
        ("mismatched_keys", "tensor of the wrong shape"),
    ):
        names = sorted(str(n) for n in info.get(key) or ())
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise WeightsError(f"{folder}: {what} '{names[0]}'{more} for config.json")
    if info.get("error_msgs"):
        raise WeightsError(f"{folder}: {info['error_msgs'][0]}")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsError(f"{folder}: tensor '{name}' contains NaN or Inf")


def load_transformers(
    folder: Path, table: dict[str, str], input_shape: Sequence[int], input_dtype: str
) -> TransformersModule:
    """Load the ``save_pretrained`` folder named by a checked ``[model]`` table.

    Raises
    ------
    ManifestError
        transformers missing (names the extra), a missing folder or config.json, an input
        that is not int64 token ids, a model the Auto class cannot build.
    WeightsError
        Missing, unexpected, mis-shaped or non-finite tensors.
    """
    src = folder / "model.toml"
    if input_dtype != "int64" or len(input_shape) != 1:
        raise ManifestError(
            f"{src}: a transformers model takes token ids: [input] dtype must be 'int64' "
            f"and shape [sequence_length], got {input_dtype!r} {list(input_shape)}"
        )
    hf_dir = (folder / table["path"]).resolve()
    if not (hf_dir / "config.json").is_file():
        raise ManifestError(
            f"{hf_dir}: no config.json ([model] path names the save_pretrained folder)"
        )
    transformers = _import_transformers(src)
    auto = getattr(transformers, HF_TASKS[table["task"]])
    kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
    if "attn_implementation" in table:
        kwargs["attn_implementation"] = table["attn_implementation"]
    try:
        model, info = auto.from_pretrained(str(hf_dir), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ManifestError(f"{hf_dir}: transformers cannot load it: {exc}") from exc
    _check_loading(model, info, hf_dir)
    tokenizer = None
    if any((hf_dir / f).is_file() for f in _TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(hf_dir), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ManifestError(f"{hf_dir}: the tokenizer files cannot be loaded: {exc}") from exc
    pad = getattr(model.config, "pad_token_id", None)
    model.eval()
    return TransformersModule(
        model, table["output"], pad, tokenizer=tokenizer, max_length=int(input_shape[0])
    )
