"""Request body limits per model: the size, checked before and while the body is read, and
a pre-scan of its bytes before any parsing (issue 18).

:func:`body_bounds` derives a model's limits from its input shape and row limit;
:func:`read_body` refuses a body over them by its Content-Length or as it streams in, then
refuses too many arrays, objects or keys, or too deep a nesting, from the raw bytes
(:func:`prescan`), so that a hostile body costs little before :mod:`service.body` parses it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import numpy as np
from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, PayloadTooLarge, Unprocessable

__all__ = ["BodyBounds", "body_bounds", "read_body", "prescan"]

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


# Cached: the same few arguments on every request of a model (a frozen result); a new
# model or setting is a new key.
@functools.lru_cache(maxsize=1024)
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
    headers = request.headers
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > bounds.max_bytes:
        raise _too_large(bounds)
    # The ASGI messages read here rather than through request.stream(), an async generator
    # (a third of this function's time on a one-row request): the same messages, the same
    # ClientDisconnect.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > bounds.max_bytes:
            raise _too_large(bounds)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    head = _json_part(headers.get(_BINARY_HEADER), body)
    if _over(head, bounds):  # rare (hostile, or strings full of brackets): off the loop
        await anyio.to_thread.run_sync(prescan, head, bounds)
    request._body = body  # Starlette's own cache, which request.body() returns
    return body


def _json_part(declared: str | None, body: bytes) -> bytes:
    """The JSON of a body: all of it, or a binary-extension body's header (``declared``:
    the binary extension's header-length header, if sent)."""
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
