"""Every python and shell example of README.md and docs/*.md, run against a live server.

Each example runs in a scratch folder holding a link to the repository's ``models/``, with
``localhost:8000`` (and the docs' ``127.0.0.1:8765``) pointing at a server the test starts
on a free loopback port. What an example shows is checked: the output block shown under it
(JSON keys, numbers at the precision shown), the HTTP status of every curl call (2xx, or 4xx
where the shown answer is an error), and ``# (B, C)`` shape comments on Python lines.
Blocks marked ``<!-- doc-test: skip REASON -->`` are reported as skipped with the reason.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from doctools import Example, examples, output_problems, session, shows_error

try:
    from helpers.live_server import live_server
except ImportError:  # before the harness moved to tests/helpers
    from _live_server import live_server  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL = [ex for path in DOCS for ex in examples(path)]
DOC_URL = re.compile(r"\b(?:localhost|127\.0\.0\.1):(?:8000|8765)\b")
STATUS = re.compile(r"^@@http_status=(\d{3})@@$", re.M)
# curl as the docs call it, plus the status code on a line of its own for the checks
PRELUDE = 'curl() { command curl -w "\\n@@http_status=%{http_code}@@\\n" "$@"; }\n'
SHAPE = re.compile(r"#\s*\((\d+(?:\s*,\s*\d+)*\s*,?)\)")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server() as url:
        yield url


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCDROP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MCDROP_URL"] = url
    return env


def _shell(script: str, url: str, cwd: Path) -> str:
    res = subprocess.run(
        ["bash", "-c", PRELUDE + DOC_URL.sub(url.removeprefix("http://"), script)],
        cwd=cwd, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=180,
    )  # fmt: skip
    return res.stdout + f"\n@@exit={res.returncode}@@\n"


def _statuses(out: str) -> tuple[list[int], str]:
    codes = [int(c) for c in STATUS.findall(out)]
    return codes, STATUS.sub("", out)


def _check_statuses(codes: list[int], error_shown: bool, where: str) -> None:
    for code in codes:
        if error_shown:
            assert 400 <= code < 500, f"{where}: shows an error answer, got HTTP {code}"
        else:
            assert 200 <= code < 300, f"{where}: got HTTP {code}"


def run_session(ex: Example, url: str, cwd: Path) -> None:
    pairs = session(ex.code.text)
    script = "".join(f"printf '\\n@@cmd {n}@@\\n'\n{cmd}\n" for n, (cmd, _) in enumerate(pairs))
    out = re.sub(r"\n@@exit=\d+@@\n$", "", _shell(script, url, cwd))
    chunks = re.split(r"\n?@@cmd \d+@@\n", out)[1:]
    assert len(chunks) == len(pairs), f"{ex.id}: the session stopped early:\n{out}"
    for (cmd, shown), chunk in zip(pairs, chunks):
        codes, text = _statuses(chunk)
        _check_statuses(codes, shows_error(shown), f"{ex.id} `{cmd}`")
        problems = output_problems(shown, text.strip("\n")) if shown else []
        if not shown:
            problems = [f"prints {text.strip()!r}, shows nothing"] if text.strip() else []
        assert not problems, f"{ex.id} `{cmd}`:\n" + "\n".join(problems)


def run_shell(ex: Example, url: str, cwd: Path) -> None:
    out = _shell("set -e\n" + ex.code.text, url, cwd)
    rc = int(re.search(r"@@exit=(\d+)@@", out).group(1))  # type: ignore[union-attr]
    codes, text = _statuses(re.sub(r"\n@@exit=\d+@@\n$", "", out))
    assert rc == 0, f"{ex.id}: exit status {rc}:\n{text}"
    shown = ex.output.text if ex.output else ""
    _check_statuses(codes, shows_error(shown), ex.id)
    if ex.output:
        problems = output_problems(shown, text.strip("\n"))
        assert not problems, f"{ex.id}:\n" + "\n".join(problems)


def _doc_shape(value: Any, shape: tuple[int, ...], line: int) -> None:
    got = tuple(getattr(value, "shape", ()))
    assert got == shape, f"line {line} says shape {shape}, the value has {got}"


def with_shape_checks(src: str) -> ast.Module:
    """``src`` with a check after each top-level line commented ``# (5, 3)``."""
    shapes: dict[int, tuple[int, ...]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT and (m := SHAPE.match(tok.string)):
            shapes[tok.start[0]] = tuple(int(d) for d in m.group(1).split(",") if d.strip())
    tree = ast.parse(src)
    body: list[ast.stmt] = []
    for node in tree.body:
        shape = shapes.get(node.end_lineno or -1)
        target: ast.expr | None = None
        if isinstance(node, ast.Expr) and shape is not None:
            target = node.value
        else:
            body.append(node)
            if isinstance(node, ast.Assign) and shape is not None and len(node.targets) == 1:
                target = ast.Name(id=ast.unparse(node.targets[0]), ctx=ast.Load())
        if target is not None and shape is not None:
            dims = ast.Tuple([ast.Constant(d) for d in shape], ast.Load())
            args = [target, dims, ast.Constant(node.lineno)]
            call = ast.Call(ast.Name("_doc_shape", ast.Load()), args, [])
            body.append(ast.copy_location(ast.Expr(call), node))
    tree.body = body
    return ast.fix_missing_locations(tree)


def run_python(ex: Example, url: str) -> None:
    src = DOC_URL.sub(url.removeprefix("http://"), ex.code.text)
    code = compile(with_shape_checks(src), ex.id, "exec")
    buf = io.StringIO()
    with redirect_stdout(buf):
        exec(code, {"__name__": "__doc_example__", "_doc_shape": _doc_shape})
    if ex.output:
        problems = output_problems(ex.output.text, buf.getvalue())
        assert not problems, f"{ex.id}:\n" + "\n".join(problems)


@pytest.mark.parametrize("ex", ALL, ids=[ex.id for ex in ALL])
def test_doc_example(ex: Example, server: str, workdir: Path) -> None:
    if ex.code.marker == "skip":
        pytest.skip(f"{ex.id}: {ex.code.reason}")
    kind = ex.code.kind
    if kind == "python":
        run_python(ex, server)
    elif kind == "session":
        run_session(ex, server, workdir)
    else:
        run_shell(ex, server, workdir)
