"""The doc-example runner's own parts: block markers, sessions, and output matching."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctools import examples, output_problems, session, shows_error
from test_docs_examples import ALL, _doc_shape, with_shape_checks


def test_markers_outputs_and_prose(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "Intro\n\n```python\nprint(1)\n```\n\n<!-- doc-test: output -->\n```text\n1\n```\n\n"
        "```toml\na = 1\n```\n\n<!-- doc-test: skip (needs Docker) -->\n```bash\ndocker ps\n```\n"
        "\n```text\n$ echo hi\nhi\n```\n"
    )
    found = examples(md)
    assert [(e.code.kind, e.code.marker) for e in found] == [
        ("python", ""), ("shell", "skip"), ("session", "")
    ]  # fmt: skip
    assert found[0].output is not None and found[0].output.text == "1\n"
    assert found[1].code.reason == "(needs Docker)" and found[1].output is None


def test_a_skip_marker_on_prose_is_refused(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("<!-- doc-test: skip (why) -->\n```toml\na = 1\n```\n")
    with pytest.raises(AssertionError, match="not an example"):
        examples(md)


def test_session_commands_span_open_quotes_and_backslashes() -> None:
    text = "$ curl -s u \\\n    -d '{\n  \"a\": 1}'\n{\"ok\": true}\n$ true\n$ echo 'a b'\na b\n"
    assert session(text) == [
        ("curl -s u \\\n    -d '{\n  \"a\": 1}'", '{"ok": true}'),
        ("true", ""),
        ("echo 'a b'", "a b"),
    ]


def test_json_keys_and_numbers_at_shown_precision() -> None:
    shown = '{"model": "toy1d", "mean": [[0.00852], [2.50790]], "seed": 7}'
    good = '{"model": "toy1d", "mean": [[0.0085204], [2.5078959]], "seed": 7}'
    assert output_problems(shown, good) == []
    assert output_problems(shown, good.replace("2.5078959", "2.50801"))  # off in place 5
    assert output_problems(shown, good.replace('"seed": 7', '"seed": 8'))  # integers: exact
    assert output_problems(shown, good.replace('"seed": 7', '"seed": 7, "extra": 1'))
    assert output_problems(shown, good.replace('"seed": 7', '"sid": 7'))
    assert output_problems(shown, good.replace("[[0.0085204], ", "["))  # one row fewer


def test_json_ellipses() -> None:
    shown = '{"a": [[...]], "b": [1, 2, ...], "c": {"d": 1, ...}, "e": ..., ...}'
    assert output_problems(shown, '{"a": [[5, 6]], "b": [1, 2, 3], "c": {"d": 1, "x": 0},'
                                  ' "e": null, "f": 0}') == []  # fmt: skip
    assert output_problems(shown, '{"a": [[5], [6]], "b": [1, 2], "c": {"d": 1}, "e": 1}')
    assert output_problems(shown, '{"a": [[5]], "b": [1], "c": {"d": 1}, "e": 1}')
    assert output_problems("[1, 2]", "not json")


def test_float32_rounding_is_allowed_beyond_the_shown_digits() -> None:
    shown = '{"v": 0.20663960753008723}'
    assert output_problems(shown, '{"v": 0.2066396}') == []  # float32 on another CPU
    assert output_problems(shown, '{"v": 0.2067}')


def test_text_lines_words_exact_numbers_at_precision() -> None:
    shown = "class [2 0 4 4]\nprob  [0.865 0.999]\n...\nlast 1.5"
    assert output_problems(shown, "class [2 0 4 4]\nprob  [0.8651 0.9994]\nx\ny\nlast 1.46") == []
    assert output_problems(shown, "class [2 0 4 3]\nprob  [0.865 0.999]\nlast 1.5")
    assert output_problems(shown, "class [2 0 4 4]\nprob  [0.866 0.999]\nlast 1.5")
    assert output_problems(shown, "klass [2 0 4 4]\nprob  [0.865 0.999]\nlast 1.5")
    assert output_problems("a\nb", "a\nb\nc")  # more output than shown
    assert output_problems("a\nb", "a")


def test_error_bodies_are_recognised() -> None:
    assert shows_error('{"error":"expected rows of shape [1], got [2]"}')
    assert not shows_error('{"model": "toy1d"}')


def test_shape_comments_are_checked() -> None:
    import numpy as np

    src = "import numpy as np\nx = np.zeros((4, 64))  # (4, 64)\nx.sum(axis=1)  # (3,) wrong\n"
    code = compile(with_shape_checks(src), "t", "exec")
    with pytest.raises(AssertionError, match=r"line 3 says shape \(3,\), the value has \(4,\)"):
        exec(code, {"_doc_shape": _doc_shape, "np": np})


def test_every_skip_says_why() -> None:
    skipped = [ex for ex in ALL if ex.code.marker == "skip"]
    assert all(len(ex.code.reason) > 10 for ex in skipped), [
        (ex.id, ex.code.reason) for ex in skipped
    ]
    ran = {ex.code.kind for ex in ALL if ex.code.marker != "skip"}
    assert ran == {"python", "shell", "session"}
