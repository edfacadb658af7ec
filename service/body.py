"""Request bodies: reading, JSON parsing with limits, and the wording of validation errors.

Protocol-neutral apart from :func:`read_json`, which takes a Starlette request: every codec
(v1 and v2 JSON today, the binary tensor extension next) starts from :func:`parse_json`'s
object and reports schema errors through :func:`validate_body` / :func:`describe_error`,
so all of them word an error the same way and never echo the value that was sent.

Hostile bodies meet :mod:`service.body_limits` first (per-model size, a pre-scan of the
bytes). Large parses here run with the garbage collector paused, so a parse that allocates
many containers triggers no collections while it runs.
"""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import orjson
import pydantic
from starlette.requests import Request

from service.errors import (
    BadRequest,
    Unprocessable,
    UnsupportedMediaType,
    shown,
)

__all__ = [
    "parse_json",
    "read_json",
    "validate_body",
    "describe_error",
    "json_type",
    "json_path",
    "lookup",
]

_THREAD_PARSE_BYTES = 1 << 20  # bigger bodies are parsed off the event loop
_GC_PAUSE_BYTES = 256 << 10  # bigger bodies are parsed with the collector paused
# A run of 19 digits, found as 19 zeros once every digit is a zero: two C passes, where
# the regular expression [0-9]{19} took 75-130 ms on a 1.3 MiB body of 17-digit floats.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
# A \uD800-\uDFFF escape: the standard parser accepts a lone one, which no response can
# encode (orjson refuses it), so such bodies are checked after parsing.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


# The collector stays off while any large body is parsed (a count, as parses overlap):
# a parse that allocates many containers would otherwise trigger collections, full ones
# included, that walk every live object while the interpreter lock is held. The objects
# a parse makes are freed by reference counting.
_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _reject_constant(token: str) -> Any:
    raise BadRequest(
        f"{token} is not valid JSON (NaN and Infinity are not numbers in JSON); "
        "send finite numbers only"
    )


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a request body, refusing NaN/Infinity literals and nesting deeper than
    ``max_depth``.

    Raises
    ------
    BadRequest
        Empty, not UTF-8, malformed, non-finite literal, or too deep.
    """
    if not body.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    if len(body) > _GC_PAUSE_BYTES:
        with _gc_paused():
            return _parse(body, max_depth)
    return _parse(body, max_depth)


def _parse(body: bytes, max_depth: int) -> Any:
    # orjson parses UTF-8 JSON several times faster; whatever it refuses (NaN literals,
    # malformed or non-UTF-8 bodies, very deep nesting) goes to the standard parser, whose
    # errors carry our messages. So do bodies with a run of 19 or more digits: orjson
    # reads integers beyond 64 bits as floats, where the standard parser keeps them exact.
    if body.translate(_DIGITS_TO_ZERO).find(_LONG_DIGITS) >= 0:
        obj = _parse_slow(body, max_depth)
    else:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = _parse_slow(body, max_depth)
    # Nesting cannot exceed the number of opening brackets (those inside strings only
    # raise the count): most bodies skip the walk, which costs a visit per number.
    if body.count(b"[") + body.count(b"{") > max_depth:
        _check_depth(obj, max_depth)
    return obj


def _parse_slow(body: bytes, max_depth: int) -> Any:
    """:func:`parse_json`'s standard-library path (and its error messages)."""
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"JSON is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 encoded JSON") from None
    except ValueError:  # an integer literal longer than Python converts (4,300 digits)
        raise BadRequest("the request body holds a number too long to read") from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        _check_surrogates(obj)
    return obj


def _check_surrogates(obj: Any) -> None:
    """400 when a string (key or value) holds a lone UTF-16 surrogate; pairs are fine."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the request body holds a lone UTF-16 surrogate escape") from None


def _check_depth(obj: Any, max_depth: int) -> None:
    if not isinstance(obj, (list, dict)):
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(f"JSON is nested deeper than {max_depth} levels")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (list, dict)):
                stack.append((child, depth + 1))


def _check_content_type(request: Request) -> None:
    """A declared Content-Type must be JSON; a missing one is read as JSON."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        shown = media[:60]
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got '{shown}' "
            "(with curl: -H 'Content-Type: application/json')"
        )


async def read_json(request: Request, max_depth: int, *, v2: bool = False) -> Any:
    """Read and parse the JSON body (size limits are enforced by the middleware).

    v1 needs a JSON (or no) Content-Type; v2 reads JSON whatever the Content-Type says
    (tritonclient sends none, its aiohttp client application/octet-stream). The binary
    tensor extension's bodies are read by ``service.codec_v2_binary``.
    """
    if not v2:
        _check_content_type(request)
    body = await request.body()
    if len(body) > _THREAD_PARSE_BYTES:
        return await anyio.to_thread.run_sync(parse_json, body, max_depth)
    return parse_json(body, max_depth)


# ------------------------------------------------------------------------------ wording


def json_type(value: Any) -> str:
    """How an error message names the JSON type of ``value`` ("a number", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def json_path(loc: Sequence[Any]) -> str:
    """A pydantic location as a path: ``("inputs", 0, 2)`` -> ``inputs[0][2]``; a client's
    key is cut to ``SHOWN_CHARS`` and escaped (a message never grows with the request)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = shown(str(part))[1:]  # "'key'" or "'key'…": drop the quotes
        key = key[:-2] + "…" if key.endswith("…") else key[:-1]
        out += f".{key}" if out else key
    return out


def lookup(obj: Any, loc: Sequence[Any]) -> Any:
    """The value at ``loc`` inside parsed JSON, or None where there is none."""
    for part in loc:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return None
    return obj


def describe_error(err: Any, root: Any = None) -> str:
    """One pydantic error as 'where: what, got <json type>' (never echoing the value).

    ``root`` is the validated object (to name the JSON type found); None omits it.
    """
    loc = tuple(err.get("loc", ()))
    where = json_path(loc) if loc else "body"
    kind = err.get("type", "")
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field"
    msg = f"{where}: {err.get('msg', 'invalid value')}"
    return msg if root is None else f"{msg}, got {json_type(lookup(root, loc))}"


def validate_body(model: type[pydantic.BaseModel], obj: Any) -> Any:
    """Validate parsed JSON against a strict request schema (422 with a precise message)."""
    if not isinstance(obj, dict):
        raise Unprocessable(f"the request body must be a JSON object, got {json_type(obj)}")
    try:
        return model.model_validate(obj)
    except pydantic.ValidationError as exc:
        errs = exc.errors(include_url=False, include_input=False)
        more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
        raise Unprocessable(describe_error(errs[0], obj) + more) from None
