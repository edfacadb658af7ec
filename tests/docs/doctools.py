"""Find the examples in markdown files and check answers against the output they show.

A fenced block is an *example* when it is ``python``, ``bash``/``sh``/``console``, or any
block whose lines start with a ``$ `` prompt (a shell session: each ``$`` command followed
by the output it printed). Other blocks (toml, json, text) are prose, unless marked as the
output of the example above them. Markers are HTML comments on the line before a fence:

- ``<!-- doc-test: skip REASON -->``: not run; the runner reports the reason;
- ``<!-- doc-test: output -->``: this block is what the example above printed.

Shown output is matched, not compared as text: JSON as JSON (keys exactly, unless the
object holds ``...``; ``...`` in a list stands for the rest of it, as a value for anything),
other text line by line (a ``...`` line stands for any lines). Numbers are checked at the
precision they are shown with, and never tighter than float32 rounding allows.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.tolerance import EPS32, ULPS

MARKER = re.compile(r"^<!--\s*doc-test:\s*(skip|output)\b\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
SHELLS = {"bash", "sh", "shell", "console"}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


@dataclass
class Block:
    """One fenced block of a markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str = ""  # "", "skip" or "output"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def is_session(self) -> bool:
        return any(ln.startswith("$ ") for ln in self.text.splitlines())

    @property
    def kind(self) -> str:
        """python, shell, session (``$`` prompts) or prose."""
        if self.is_session:
            return "session"
        if self.lang == "python":
            return "python"
        return "shell" if self.lang in SHELLS else "prose"


@dataclass
class Example:
    """An example block and the output block shown for it, if any."""

    code: Block
    output: Block | None = None
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = self.code.where


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with the marker written just above it."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mark = MARKER.match(lines[k].strip()) if k >= 0 else None
        found.append(
            Block(
                path,
                i + 1,
                m.group(1),
                "\n".join(lines[i + 1 : j]) + "\n",
                mark.group(1) if mark else "",
                mark.group(2) if mark else "",
            )  # fmt: skip
        )
        i = j + 1
    return found


def examples(path: Path) -> list[Example]:
    """The runnable blocks of ``path`` (skipped ones included), each with its shown output."""
    found: list[Example] = []
    for b in blocks(path):
        if b.marker == "output":
            assert found, f"{b.where}: an output block with no example above it"
            found[-1].output = b
        elif b.kind != "prose":
            found.append(Example(b))
        elif b.marker == "skip":
            raise AssertionError(f"{b.where}: a skip marker on a block that is not an example")
    return found


def session(text: str) -> list[tuple[str, str]]:
    """Split a ``$``-prompt session into (command, expected output) pairs.

    A command goes on over the next lines while its quotes are open or it ends in ``\\``.
    """
    pairs: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise AssertionError(f"session line {i + 1} is neither a command nor its output")
        cmd = lines[i][2:]
        while not _complete(cmd) and i + 1 < len(lines):
            i += 1
            cmd += "\n" + lines[i]
        out: list[str] = []
        while i + 1 < len(lines) and not lines[i + 1].startswith("$ "):
            i += 1
            out.append(lines[i])
        pairs.append((cmd, "\n".join(out).strip("\n")))
        i += 1
    return pairs


def _complete(cmd: str) -> bool:
    if cmd.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(cmd, comments=True)
    except ValueError:  # an open quote
        return False
    return True


# --------------------------------------------------------------------------------------
# Matching shown output
# --------------------------------------------------------------------------------------


class _Any:
    """``...`` where a value stands."""


ANY = _Any()


@dataclass
class Num:
    """A number as shown: its value and how many decimals it was shown with."""

    text: str

    def matches(self, actual: Any) -> bool:
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        m = re.fullmatch(r"-?\d+(?:\.(\d*))?(?:[eE]([+-]?\d+))?", self.text)
        assert m, f"not a number: {self.text!r}"
        if m.group(1) is None and m.group(2) is None:  # integers (counts, seeds, shapes)
            return float(actual) == int(self.text)
        want = float(self.text)
        # half a unit in the last shown place, and float32 rounding on top (numbers from a
        # float32 model move by a few ulps with the CPU, the thread count, the chunking)
        half = 0.5 * 10.0 ** (int(m.group(2) or 0) - len(m.group(1) or ""))
        return abs(float(actual) - want) <= half + ULPS * EPS32 * abs(want)


@dataclass
class Obj:
    members: dict[str, Any]
    more: bool  # the shown object holds `...`: other keys may follow


@dataclass
class Arr:
    items: list[Any]
    more: bool  # the shown list ends in `...`


_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)'
    r"|(?P<dots>\.\.\.|…)|(?P<lit>true|false|null)|(?P<punct>[{}\[\]:,]))"
)


def parse_shown_json(text: str) -> Any:
    """Parse JSON that may hold ``...`` into a pattern for :func:`json_problems`."""
    toks: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"not shown JSON at {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        toks.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    value, end = _value(toks, 0)
    if end != len(toks):
        raise ValueError("text after the shown JSON value")
    return value


def _value(toks: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    """The shown value that starts at token ``i`` and the index of the token after it."""
    kind, tok = toks[i]
    if kind in ("str", "lit"):
        return json.loads(tok), i + 1
    if kind == "num":
        return Num(tok), i + 1
    if kind == "dots":
        return ANY, i + 1
    if tok == "[":
        return _array(toks, i + 1)
    if tok == "{":
        return _object(toks, i + 1)
    raise ValueError(f"unexpected {tok!r} in shown JSON")


def _array(toks: list[tuple[str, str]], i: int) -> tuple[Arr, int]:
    """The shown list whose first item is token ``i`` (just after its ``[``)."""
    items: list[Any] = []
    more = False
    while toks[i][1] != "]":
        if toks[i][0] == "dots" and toks[i + 1][1] == "]" and items:
            more, i = True, i + 1
            break
        item, i = _value(toks, i)
        items.append(item)
        if toks[i][1] == ",":
            i += 1
    if items == [ANY]:  # `[...]`: any list
        return Arr([], True), i + 1
    return Arr(items, more), i + 1


def _object(toks: list[tuple[str, str]], i: int) -> tuple[Obj, int]:
    """The shown object whose first member is token ``i`` (just after its ``{``)."""
    members: dict[str, Any] = {}
    more = False
    while toks[i][1] != "}":
        if toks[i][0] == "dots":
            more, i = True, i + 1
        else:
            key = json.loads(toks[i][1])
            assert toks[i + 1][1] == ":", f"expected ':' after {key!r}"
            members[key], i = _value(toks, i + 2)
        if toks[i][1] == ",":
            i += 1
    return Obj(members, more), i + 1


def json_problems(shown: Any, actual: Any, where: str = "$") -> list[str]:
    """How ``actual`` (decoded JSON) differs from the ``shown`` pattern; [] when it matches."""
    if shown is ANY:
        return []
    if isinstance(shown, Num):
        return [] if shown.matches(actual) else [f"{where}: shown {shown.text}, got {actual!r}"]
    if isinstance(shown, Obj):
        if not isinstance(actual, dict):
            return [f"{where}: shown an object, got {type(actual).__name__}"]
        out = []
        missing = set(shown.members) - set(actual)
        extra = set() if shown.more else set(actual) - set(shown.members)
        if missing or extra:
            out.append(f"{where}: keys shown but missing {sorted(missing)}, "
                       f"answered but not shown {sorted(extra)}")  # fmt: skip
        for k, v in shown.members.items():
            if k in actual:
                out += json_problems(v, actual[k], f"{where}.{k}")
        return out
    if isinstance(shown, Arr):
        if not isinstance(actual, list):
            return [f"{where}: shown a list, got {type(actual).__name__}"]
        n = len(shown.items)
        if len(actual) < n or (not shown.more and len(actual) != n):
            return [f"{where}: shown {n}{'+' if shown.more else ''} items, got {len(actual)}"]
        out = []
        for i in range(n):
            out += json_problems(shown.items[i], actual[i], f"{where}[{i}]")
        return out
    return [] if shown == actual else [f"{where}: shown {shown!r}, got {actual!r}"]


def text_problems(shown: str, actual: str) -> list[str]:
    """Line-by-line match: words exactly, numbers at their shown precision."""
    want = [ln.rstrip() for ln in shown.strip("\n").splitlines()]
    got = [ln.rstrip() for ln in actual.strip("\n").splitlines()]
    i = 0
    for w_i, w in enumerate(want):
        if w.strip() in ("...", "…"):
            nxt = want[w_i + 1] if w_i + 1 < len(want) else None
            while i < len(got) and (nxt is None or line_problems(nxt, got[i])):
                i += 1
            continue
        if i >= len(got):
            return [f"shown line {w!r} is missing from the output"]
        if problems := line_problems(w, got[i]):
            return problems
        i += 1
    if i < len(got):
        return [f"output goes on past what is shown: {got[i]!r}"]
    return []


def line_problems(shown: str, actual: str) -> list[str]:
    words_s, words_a = NUMBER.split(shown), NUMBER.split(actual)
    nums_s, nums_a = NUMBER.findall(shown), NUMBER.findall(actual)
    same_words = [" ".join(w.split()) for w in words_s] == [" ".join(w.split()) for w in words_a]
    if not same_words or len(nums_s) != len(nums_a):
        return [f"shown {shown!r}, got {actual!r}"]
    for s, a in zip(nums_s, nums_a):
        if not Num(s).matches(float(a) if re.search(r"[.eE]", a) else int(a)):
            return [f"shown {shown!r}, got {actual!r} ({s} vs {a})"]
    return []


def output_problems(shown: str, actual: str) -> list[str]:
    """JSON shown is matched as JSON, anything else as text."""
    if shown.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(actual)
        except ValueError:
            return [f"shown JSON, got {actual[:200]!r}"]
        return json_problems(parse_shown_json(shown), value)
    return text_problems(shown, actual)


def shows_error(shown: str) -> bool:
    """The shown answer is an error body (then the status must be a 4xx)."""
    return bool(re.match(r'\s*\{\s*"error"\s*:', shown))
