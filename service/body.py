"""Request bodies: reading, JSON parsing with limits, and the wording of validation errors.

Protocol-neutral apart from :func:`read_json`, which takes a Starlette request: every codec
(v1 and v2 JSON today, the binary tensor extension next) starts from :func:`parse_json`'s
object and reports schema errors through :func:`validate_body` / :func:`describe_error`,
so all of them word an error the same way and never echo the value that was sent.

Hostile bodies are stopped before they cost much (issue 18): :func:`body_bounds` derives a
model's limits from its input shape and row limit, :func:`read_body` refuses a body over
them by its Content-Length or as it streams in, and a pre-scan of the raw bytes refuses too
many arrays, objects or keys before any parsing. Large parses run with the garbage
collector paused, so a parse that allocates many containers triggers no collections.
"""

from __future__ import annotations

import gc
import json
import math
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import orjson
import pydantic
from starlette.requests import Request

from service.errors import (
    BadRequest,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
    shown,
)

__all__ = [
    "BodyBounds",
    "body_bounds",
    "read_body",
    "prescan",
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


# ------------------------------------------------------------------------------ limits

# A model's body limits (body_bounds) are generous for any honest encoding of the largest
# request it takes, indented JSON included; a hostile body is refused before it is parsed.
NUMBER_BYTES = 32  # "-1.2345678901234567e-308, " is 26 bytes; the rest for indentation
ROW_BYTES = 64  # a row's brackets, line break and indentation
TEXT_ROW_BYTES = 4096  # one raw text (a model whose folder has a tokenizer), JSON-escaped
FIXED_BYTES = 256 << 10  # everything but the rows: outputs, parameters, id, names
FIXED_CONTAINERS = 256  # arrays and objects besides the rows (outputs, parameters, shape)
MAX_KEYS = 256  # object keys in a whole request; an honest one has a few dozen
_BINARY_HEADER = "inference-header-content-length"  # service.codec_v2_binary.HEADER


@dataclass(frozen=True)
class BodyBounds:
    """What a request body to one model may hold (see :func:`body_bounds`)."""

    max_bytes: int
    max_containers: int  # arrays and objects
    max_keys: int
    max_depth: int
    model: str
    rows: int
    shape: tuple[int, ...]


def body_bounds(
    model: str,
    input_shape: Sequence[int],
    max_rows: int,
    takes_text: bool,
    cap: int,
    max_depth: int,
) -> BodyBounds:
    """The limits of a request body to ``model``, from its input shape and row limit.

    Bytes: ``max_rows`` rows of ``NUMBER_BYTES`` per number and ``ROW_BYTES`` per row
    (plus ``TEXT_ROW_BYTES`` per row for a model that takes raw text), plus
    ``FIXED_BYTES``, at most ``cap`` (``MCDROP_MAX_BODY_BYTES``). Arrays and objects: the
    nested lists of ``max_rows`` rows plus ``FIXED_CONTAINERS``. Keys: ``MAX_KEYS``.
    Nesting: ``max_depth`` (``MCDROP_MAX_JSON_DEPTH``).
    """
    shape = tuple(int(d) for d in input_shape)
    per_row = ROW_BYTES + (TEXT_ROW_BYTES if takes_text else 0)
    size = FIXED_BYTES + max_rows * (per_row + math.prod(shape) * NUMBER_BYTES)
    # A row of shape (3, 32, 32) as nested lists: 1 + 3 + 3 * 32 of them.
    row_lists = sum(math.prod(shape[:k]) for k in range(len(shape)))
    containers = FIXED_CONTAINERS + max_rows * (1 + row_lists)
    return BodyBounds(min(cap, size), containers, MAX_KEYS, max_depth, model, max_rows, shape)


def _too_large(bounds: BodyBounds) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {bounds.max_bytes:,} bytes, the most a request to "
        f"model '{bounds.model}' needs ({bounds.rows:,} rows of shape {list(bounds.shape)}); "
        "send fewer rows per request"
    )


async def read_body(request: Request, bounds: BodyBounds) -> bytes:
    """The body of a request to one model, read no further than ``bounds`` allow.

    A declared Content-Length over ``bounds.max_bytes`` is refused before a byte is read;
    a body without one (or that lies) when it passes the limit. The bytes are then
    pre-scanned (:func:`prescan`) and kept where ``request.body()`` finds them, so the
    routes read them as before.

    Raises
    ------
    PayloadTooLarge
        Over ``bounds.max_bytes``.
    Unprocessable
        Too many arrays, objects or keys.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > bounds.max_bytes:
        raise _too_large(bounds)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bounds.max_bytes:
            raise _too_large(bounds)
        chunks.append(chunk)
    body = b"".join(chunks)
    head = _json_part(request, body)
    if _over(head, bounds):  # rare (hostile, or strings full of brackets): off the loop
        await anyio.to_thread.run_sync(prescan, head, bounds)
    request._body = body  # Starlette's own cache, which request.body() returns
    return body


def _json_part(request: Request, body: bytes) -> bytes:
    """The JSON of a body: all of it, or a binary-extension body's header."""
    declared = request.headers.get(_BINARY_HEADER)
    if declared is not None and declared.strip().isdigit():
        return body[: int(declared)]
    return body


def _over(raw: bytes, bounds: BodyBounds) -> bool:
    """Whether the raw counts of brackets and colons (those inside strings too: an upper
    bound) pass a bound; a few ``bytes.count`` passes, a millisecond per MiB."""
    containers = raw.count(b"[") + raw.count(b"{")
    return containers > bounds.max_containers or raw.count(b":") > bounds.max_keys


def prescan(raw: bytes, bounds: BodyBounds) -> None:
    """Refuse a JSON body with more arrays, objects or keys than ``bounds`` allow, or nested
    deeper, from its bytes, before it is parsed: a parse of a million containers holds the
    interpreter for seconds and a million keys build as many errors.

    Brackets and colons are counted first in the raw bytes (an upper bound, see
    :func:`_over`); only past a bound are they counted again outside strings
    (:func:`_structure`: vectorised, and numpy lets go of the interpreter lock meanwhile).

    Raises
    ------
    BadRequest
        Nested deeper than ``bounds.max_depth`` (the answer a parse would give).
    Unprocessable
        Too many keys, or arrays and objects.
    """
    if not _over(raw, bounds):
        return
    keys, containers, depth = _structure(raw)
    if depth > bounds.max_depth:
        raise BadRequest(f"JSON is nested deeper than {bounds.max_depth} levels")
    if keys > bounds.max_keys:
        raise Unprocessable(
            f"the request body holds {keys:,} object keys; a request holds at most "
            f"{bounds.max_keys}"
        )
    if containers > bounds.max_containers:
        raise Unprocessable(
            f"the request body holds {containers:,} arrays and objects; a request to model "
            f"'{bounds.model}' needs at most {bounds.max_containers:,} "
            f"({bounds.rows:,} rows of shape {list(bounds.shape)})"
        )


def _structure(raw: bytes) -> tuple[int, int, int]:
    """(keys, arrays and objects, deepest nesting) of JSON bytes, outside strings only.

    Escapes go first: ``\\\\`` pairs, then ``\\"``, replaced left to right as a JSON
    reader pairs them, so every quote left opens or closes a string, and the parity of
    the quotes so far tells whether a byte is inside one.
    """
    clean = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    a = np.frombuffer(clean, dtype=np.uint8)
    inside = np.bitwise_xor.accumulate((a == ord('"')).view(np.uint8))  # 1 within strings
    outside = inside == 0
    opens = ((a == ord("[")) | (a == ord("{"))) & outside
    closes = ((a == ord("]")) | (a == ord("}"))) & outside
    keys = int(np.count_nonzero((a == ord(":")) & outside))
    depth = np.cumsum(opens.view(np.int8) - closes.view(np.int8), dtype=np.int32)
    return keys, int(np.count_nonzero(opens)), int(depth.max(initial=0))


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
