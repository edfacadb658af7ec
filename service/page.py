"""The page: ``GET /`` and its static files, plus the model card route the page reads.

The page is plain HTML, CSS and ES modules shipped in ``service/static`` (no build step, no
CDN). It talks only to the API any client uses; the one route added for it,
``GET /v1/models/{name}/card``, is read-only and behind the same API key as the other
``/v1/models`` routes. None of this touches the prediction routes: those are dispatched
before FastAPI's router (:mod:`service.direct`).

The static files are read once, at import, into a fixed table: a request can only name a
file that was in the folder then, so no path from the URL ever reaches the file system.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.deps import get_plane, require_api_key
from service.errors import NotFound

__all__ = ["router", "card", "STATIC_DIR"]

log = logging.getLogger("mcdrop.service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXAMPLE_ROWS = 256  # rows of test.csv in a card: enough to pick test inputs from
_MAX_FILE_BYTES = 4 << 20  # card files larger than this are left out, not read

# The page may load only its own files and talk only to this server.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


def _media_type(path: Path) -> str:
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    kind = kind or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


def _read_static(root: Path) -> dict[str, tuple[bytes, str]]:
    """Every file under ``root``, keyed by its POSIX path relative to it."""
    if not root.is_dir():
        log.error("page: static folder %s is missing; GET / will answer 404", root)
        return {}
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), _media_type(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


_FILES = _read_static(STATIC_DIR)

router = APIRouter(tags=["page"])


def _file(name: str) -> Response:
    found = _FILES.get(name)
    if found is None:
        raise NotFound(f"no page file '{name[:80]}'")
    body, media = found
    return Response(body, media_type=media, headers=_HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The page (no API key needed to load it; it asks for one when the API does)."""
    return _file("index.html")


@router.get("/static/{name:path}", include_in_schema=False)
async def static(name: str) -> Response:
    """One of the page's own files."""
    return _file(name)


@router.get("/v1/models/{name}/card", dependencies=[Depends(require_api_key)], tags=["v1"])
async def model_card(name: str, plane: Any = Depends(get_plane)) -> dict[str, Any]:
    """The model folder's card: README text, ``metrics.json`` and example rows of ``test.csv``.

    Any of ``readme``, ``metrics`` and ``examples`` is null when the folder lacks the file.
    """
    # (``plane`` is the DataPlane; typed loosely so this module does not pin where it lives.)
    return card(plane.get(name).loaded.path)


def card(folder: Path) -> dict[str, Any]:
    """Read a model folder's card files.

    Parameters
    ----------
    folder : Path
        The model folder.

    Returns
    -------
    dict
        ``{"readme": str | None, "metrics": object | None, "examples": {"columns": [C names],
        "rows": [R rows of C values]} | None}`` with R <= ``EXAMPLE_ROWS``; a value is a
        number when it parses as one, else the string.
    """
    readme = _text(folder / "README.md")
    metrics_text = _text(folder / "metrics.json")
    metrics: Any = None
    if metrics_text is not None:
        try:
            metrics = json.loads(metrics_text)
        except ValueError:
            log.warning("page: %s/metrics.json is not valid JSON; left out", folder)
    examples_text = _text(folder / "test.csv")
    examples = _examples(examples_text) if examples_text is not None else None
    return {"readme": readme, "metrics": metrics, "examples": examples}


def _text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > _MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _value(cell: str) -> float | str:
    try:
        number = float(cell)
    except ValueError:
        return cell
    # Non-finite numbers are not JSON: keep them as the text the file had.
    return number if number - number == 0.0 else cell


def _examples(text: str) -> dict[str, Any] | None:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return None
    rows: list[list[float | str]] = []
    for line in reader:
        if len(rows) >= EXAMPLE_ROWS:
            break
        if len(line) == len(header):
            rows.append([_value(c) for c in line])
    return {"columns": header, "rows": rows}
