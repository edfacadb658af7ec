"""``mcdrop inspect [MODEL_DIR]``: print the dropout audit of repository models.

MODEL_DIR is one model folder (it holds ``model.toml``) or a repository folder (each
subfolder with a ``model.toml``); without it, the default models. Each model is loaded as
the service loads it and audited on a two-row example of its declared input shape
(:func:`mcdrop.audit.inspect`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcdrop.audit import UnsampledDropoutError, UnsampledDropoutWarning, example_input, inspect
from mcdrop.errors import McdropError


def _folders(root: Path) -> list[Path]:
    if (root / "model.toml").is_file():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "model.toml").is_file())


def _audit_folder(folder: Path, strict: bool) -> dict[str, Any]:
    from mcdrop.repository import DTYPES, load_model

    loaded = load_model(folder)
    m = loaded.manifest
    x = example_input(m.input_shape, DTYPES[m.input_dtype])
    p0 = next(loaded.module.parameters(), None)
    if p0 is not None and x.is_floating_point():
        x = x.to(p0.dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsampledDropoutWarning)
        audit = inspect(loaded.module, x, strict=strict)
    audit.model = f"{m.name} [{audit.model}]"
    return {
        "model": m.name,
        "path": str(folder),
        "text": audit.format(),
        "summary": audit.summary(),
        "warnings": [str(w.message) for w in caught],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mcdrop inspect",
        description="List every dropout site of repository models: p, where it sits, "
        "whether MC mode samples it and why; and the modules reading self.training that "
        "MC mode leaves in eval mode.",
    )
    parser.add_argument("model_dir", nargs="?", help="model or repository folder "
                        "(default: the default models)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON summaries")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any dropout with p > 0 is not sampled")  # fmt: skip
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.model_dir is None:
        from mcdrop.repository import default_models_dir

        root = default_models_dir()
    else:
        root = Path(args.model_dir)
    if not root.is_dir():
        print(f"mcdrop inspect: {root}: no such folder", file=sys.stderr)
        return 2
    folders = _folders(root)
    if not folders:
        print(f"mcdrop inspect: {root}: no model.toml in it or its subfolders", file=sys.stderr)
        return 2
    results, failed = [], False
    for folder in folders:
        try:
            results.append(_audit_folder(folder, args.strict))
        except UnsampledDropoutError as exc:
            failed = True
            results.append({"model": folder.name, "path": str(folder), "error": str(exc)})
        except McdropError as exc:  # a folder that does not load
            failed = True
            results.append({"model": folder.name, "path": str(folder), "error": str(exc)})
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "text"} for r in results],
                         indent=2))  # fmt: skip
    else:
        for r in results:
            print(r.get("text") or f"{r['model']}: ERROR {r['error']}")
            for w in r.get("warnings", []):
                print(f"  WARNING: {w}")
            print()
    return 1 if failed else 0
