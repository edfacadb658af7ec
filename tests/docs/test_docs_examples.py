"""Every python and shell example of README.md and docs/*.md, run against a live server.

Each example runs in a scratch folder holding a link to the repository's ``models/``, with
``localhost:8000`` (and the docs' ``127.0.0.1:8765``) pointing at a server the test starts
on a free loopback port, and ``localhost:8001`` at the same server's gRPC port (also a free
one). What an example shows is checked: the output block shown under it (JSON keys, numbers
at the precision shown), the HTTP status of every curl call (2xx, or 4xx where the shown
answer is an error), and ``# (B, C)`` shape comments on Python lines.
Blocks marked ``<!-- doc-test: skip REASON -->`` are reported as skipped with the reason.

Python examples run in this process, except those that import ``kserve``: KServe's SDK
lives in a venv of its own (``tests/helpers/kserve_env.py``: it pins protobuf<7, and it
registers the protobuf names ``inference.*`` that ``tritonclient.grpc``, imported by other
examples here, registers too), so they run with that venv's interpreter in a subprocess,
with the same shape and output checks. They are marked slow: the SDK takes seconds to import
(one interpreter imports it while the server starts, and runs the first such example).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from doctools import Example, examples, output_problems, session, shows_error
from helpers.kserve_env import kserve_python
from helpers.live_server import MODELS_DIR, free_port, live_server

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL = [ex for path in DOCS for ex in examples(path)]
DOC_URL = re.compile(r"\b(?:localhost|127\.0\.0\.1):(?:8000|8765)\b")
DOC_GRPC = re.compile(r"\b(?:localhost|127\.0\.0\.1):8001\b")
KSERVE = re.compile(r"^\s*(?:from|import)\s+kserve\b", re.M)
STATUS = re.compile(r"^@@http_status=(\d{3})@@$", re.M)
# curl as the docs call it, plus the status code on a line of its own for the checks
PRELUDE = 'curl() { command curl -w "\\n@@http_status=%{http_code}@@\\n" "$@"; }\n'
SHAPE = re.compile(r"#\s*\((\d+(?:\s*,\s*\d+)*\s*,?)\)")

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Served:
    """The docs' server: its HTTP base URL and its gRPC address."""

    url: str
    grpc: str

    def localize(self, text: str) -> str:
        """``text`` with the docs' addresses replaced by this server's."""
        text = DOC_GRPC.sub(self.grpc, text)
        return DOC_URL.sub(self.url.removeprefix("http://"), text)


class KServeRunner:
    """Runs examples with the KServe venv's interpreter (in a subprocess, in the test's
    scratch folder). One interpreter is started ahead with the SDK imported, waiting for
    its example on stdin, so that the import (seconds) overlaps the server's start-up."""

    def __init__(self) -> None:
        self._warm: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the interpreter the next example will use."""
        self._warm = self._spawn()

    @staticmethod
    def _spawn() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(kserve_python()), "-c", _KSERVE_MAIN], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, script: str, where: str) -> str:
        """Run ``script`` in the current folder; what it printed (it must exit 0)."""
        proc, self._warm = self._warm or self._spawn(), None
        try:
            out, err = proc.communicate(f"{os.getcwd()}\n{script}", timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{where} (KServe venv): still running after 180 s") from None
        assert proc.returncode == 0, f"{where} (KServe venv): exit {proc.returncode}\n{err[-3000:]}"
        return out

    def close(self) -> None:
        if self._warm is not None:
            self._warm.kill()
            self._warm.communicate()
            self._warm = None


# The KServe interpreter's program: the SDK imported first, then the folder to run in and
# the example's source from stdin. _doc_shape is the shape check (this module cannot be
# imported there).
_KSERVE_MAIN = """
import os, sys
import kserve

def _doc_shape(value, shape, line):
    got = tuple(getattr(value, "shape", ()))
    assert got == shape, f"line {line} says shape {shape}, the value has {got}"

os.chdir(sys.stdin.readline().rstrip("\\n"))
src = sys.stdin.read()
exec(compile(src, "doc-example", "exec"), {"__name__": "__doc_example__", "_doc_shape": _doc_shape})
"""


def _is_kserve(ex: Example) -> bool:
    """A runnable Python example that imports KServe's SDK."""
    return (
        ex.code.kind == "python" and ex.code.marker != "skip" and bool(KSERVE.search(ex.code.text))
    )


@pytest.fixture(scope="module")
def kserve(request: pytest.FixtureRequest) -> Iterator[KServeRunner]:
    runner = KServeRunner()
    selected = [getattr(item, "callspec", None) for item in request.session.items]
    if any(c is not None and isinstance(ex := c.params.get("ex"), Example) and _is_kserve(ex)
           for c in selected):  # fmt: skip
        runner.start()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def server(kserve: KServeRunner) -> Iterator[Served]:
    """The docs' server (after ``kserve``, whose interpreter starts meanwhile)."""
    port = free_port()
    settings = Settings(models_dir=MODELS_DIR, grpc_port=port, log_level="warning")
    with live_server(settings=settings) as url:
        yield Served(url, f"127.0.0.1:{port}")


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


def _shell(script: str, srv: Served, cwd: Path) -> str:
    res = subprocess.run(
        ["bash", "-c", PRELUDE + srv.localize(script)],
        cwd=cwd, env=_env(srv.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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


def run_session(ex: Example, srv: Served, cwd: Path) -> None:
    pairs = session(ex.code.text)
    script = "".join(f"printf '\\n@@cmd {n}@@\\n'\n{cmd}\n" for n, (cmd, _) in enumerate(pairs))
    out = re.sub(r"\n@@exit=\d+@@\n$", "", _shell(script, srv, cwd))
    chunks = re.split(r"\n?@@cmd \d+@@\n", out)[1:]
    assert len(chunks) == len(pairs), f"{ex.id}: the session stopped early:\n{out}"
    for (cmd, shown), chunk in zip(pairs, chunks):
        codes, text = _statuses(chunk)
        _check_statuses(codes, shows_error(shown), f"{ex.id} `{cmd}`")
        problems = output_problems(shown, text.strip("\n")) if shown else []
        if not shown:
            problems = [f"prints {text.strip()!r}, shows nothing"] if text.strip() else []
        assert not problems, f"{ex.id} `{cmd}`:\n" + "\n".join(problems)


def run_shell(ex: Example, srv: Served, cwd: Path) -> None:
    out = _shell("set -e\n" + ex.code.text, srv, cwd)
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


def run_python(ex: Example, srv: Served, kserve: KServeRunner) -> None:
    src = srv.localize(ex.code.text)
    tree = with_shape_checks(src)
    if _is_kserve(ex):
        printed = kserve.run(ast.unparse(tree) + "\n", ex.id)
    else:
        code = compile(tree, ex.id, "exec")
        buf = io.StringIO()
        with redirect_stdout(buf):
            exec(code, {"__name__": "__doc_example__", "_doc_shape": _doc_shape})
        printed = buf.getvalue()
    if ex.output:
        problems = output_problems(ex.output.text, printed)
        assert not problems, f"{ex.id}:\n" + "\n".join(problems)


def _param(ex: Example) -> Any:
    """An example as a test case; the KServe ones are slow (the SDK's import)."""
    return pytest.param(ex, id=ex.id, marks=[pytest.mark.slow] if _is_kserve(ex) else [])


@pytest.mark.parametrize("ex", [_param(ex) for ex in ALL])
def test_doc_example(ex: Example, server: Served, kserve: KServeRunner, workdir: Path) -> None:
    if ex.code.marker == "skip":
        pytest.skip(f"{ex.id}: {ex.code.reason}")
    kind = ex.code.kind
    if kind == "python":
        run_python(ex, server, kserve)
    elif kind == "session":
        run_session(ex, server, workdir)
    else:
        run_shell(ex, server, workdir)
