"""``mcdrop predict``: each input format against the real service on 127.0.0.1, the table
and JSON outputs, and one-line errors with the documented exit codes."""

from __future__ import annotations

import functools
import json
import socket

import httpx
import numpy as np
import pytest

from mcdrop.cli import main as mcdrop_main
from mcdrop.predict_cli import load_inputs, main

pytest.importorskip("service.app")


@pytest.fixture(scope="module")
def url(default_models_subset):
    from helpers.live_server import live_server

    # the two default models these tests ask for
    with live_server(models_dir=default_models_subset("digits", "toy1d")) as u:
        yield u


@pytest.fixture
def digits_rows() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, size=(3, 64))


def _write(tmp_path, kind: str, arr: np.ndarray, header: bool = False):
    path = tmp_path / f"rows.{kind}"
    if kind == "npy":
        np.save(path, arr)
    elif kind == "json":
        path.write_text(json.dumps(arr.tolist()))
    else:
        head = ",".join(f"f{j}" for j in range(arr.shape[1])) + "\n" if header else ""
        path.write_text(head + "\n".join(",".join(repr(float(v)) for v in r) for r in arr) + "\n")
    return path


@pytest.mark.parametrize("kind", ["json", "npy", "csv"])
def test_each_format_gives_the_same_seeded_answer(url, tmp_path, capsys, digits_rows, kind):
    path = _write(tmp_path, kind, digits_rows, header=kind == "csv")
    out = tmp_path / "answer.json"
    argv = ["--url", url, "--model", "digits", "--input", str(path), "--samples", "20"]
    assert main([*argv, "--seed", "5", "--json", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["seed"] == 5 and printed["samples"] == 20
    assert np.asarray(printed["probs"]).shape == (3, 10)
    # The same answer whatever the file format (same rows, same seed).
    ref = tmp_path / "ref.npy"
    np.save(ref, digits_rows)
    assert main(["--url", url, "--model", "digits", "--input", str(ref), "--samples", "20",
                 "--seed", "5", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["probs"] == printed["probs"]


def test_classification_table(url, tmp_path, capsys, digits_rows):
    path = _write(tmp_path, "npy", digits_rows)
    assert main(["--url", url, "--model", "digits", "--input", str(path), "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model digits") and "seed 1" in lines[0]
    assert lines[1].split() == ["row", "class", "prob", "entropy", "MI"]
    assert len(lines) == 2 + 3
    # Right-aligned columns: every line of the table has the same width.
    assert len({len(line) for line in lines[1:]}) == 1
    row = lines[2].split()
    assert row[0] == "0" and row[1] in [str(k) for k in range(10)] and 0 < float(row[2]) <= 1


def test_regression_table_uses_output_names(url, tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"inputs": [[-2.0], [0.0], [2.5]]}))
    assert main(["--url", url, "--model", "toy1d", "--input", str(path), "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["row", "y", "mean", "±", "std"]
    assert len(lines) == 5 and all(" ± " in line for line in lines[2:])


def test_single_column_csv_without_header(url, tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text("-2\n0\n2.5\n")
    assert main(["--url", url, "--model", "toy1d", "--input", str(path), "--json"]) == 0
    assert np.asarray(json.loads(capsys.readouterr().out)["mean"]).shape == (3, 1)


def test_env_defaults_and_dispatch_through_mcdrop(url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MCDROP_URL", url)
    path = tmp_path / "x.json"
    path.write_text("[[0.5]]")
    assert mcdrop_main(["predict", "--model", "toy1d", "--input", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "toy1d"


# ----------------------------------------------------------------------------- errors


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("mcdrop predict: error: ")
    assert captured.out == ""
    return err


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.json", None, "does not exist"),
        ("x.txt", "1,2", ".json, .npy or .csv"),
        ("x.json", "{not json", "cannot read"),
        ("x.json", '{"rows": [[1]]}', "'inputs' key"),
        ("x.json", "[[1, 2], [3]]", "same length"),
        ("x.json", '[["a"]]', "same length"),
        ("x.csv", "1,2\n3\n", "different numbers of columns"),
        ("x.csv", "a,b\n1,x\n", "data row 1"),
        ("x.csv", "a,b\n", "no rows"),
        ("x.npy", "not an npy file", "cannot read"),
    ],
)
def test_unusable_input_files_exit_2(tmp_path, capsys, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code = main(["--url", "http://127.0.0.1:9", "--model", "m", "--input", str(path)])
    assert code == 2
    assert match in _one_line_error(capsys)


def test_nan_rows_are_named_and_nothing_is_sent(tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text("1,2\n3,\n5,6\nnan,1\n")
    calls = []
    transport = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(500))
    assert main(["--model", "m", "--input", str(path)], transport=transport) == 2
    assert "row(s) 1, 3" in _one_line_error(capsys)
    assert not calls


def test_server_errors_exit_1(url, tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text("[[1.0, 2.0]]")
    assert main(["--url", url, "--model", "nope", "--input", str(path)]) == 1
    assert "HTTP 404" in _one_line_error(capsys)
    assert main(["--url", url, "--model", "toy1d", "--input", str(path)]) == 1
    assert "HTTP 422" in _one_line_error(capsys)


def test_unreachable_server_exits_1(tmp_path, capsys, monkeypatch):
    # the CLI's Client retries a refused connection 3 times (0.5 + 1 + 2 s of backoff by
    # default); the same retries, 1 ms apart
    import mcdrop.predict_cli as cli

    monkeypatch.setattr(cli, "Client", functools.partial(cli.Client, backoff=0.001))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "x.json"
    path.write_text("[[1.0]]")
    code = main(["--url", f"http://127.0.0.1:{port}", "--model", "m", "--input", str(path)])
    assert code == 1
    assert "cannot reach" in _one_line_error(capsys)


def test_api_key_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MCDROP_API_KEY", "k123")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": "wrong key"})

    path = tmp_path / "x.json"
    path.write_text("[[1.0]]")
    assert main(["--model", "m", "--input", str(path)], transport=httpx.MockTransport(handler)) == 1
    assert "HTTP 401: wrong key" in _one_line_error(capsys)
    assert seen == ["Bearer k123"]


def test_bad_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", "m"])
    assert info.value.code == 2


def test_unwritable_output_exits_1(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text("[[1.0]]")
    answer = {
        "model": "m", "samples": 2, "seed": 1,
        "mean": [[0.0]], "variance": [[0.0]], "std": [[0.0]], "stderr": [[0.0]],
    }  # fmt: skip
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=answer))
    out = tmp_path / "no-such-dir" / "a.json"
    argv = ["--model", "m", "--input", str(path), "--json", "--output", str(out)]
    assert main(argv, transport=transport) == 1
    assert "cannot write" in _one_line_error(capsys)


def test_load_inputs_keeps_npy_shape_and_dtype(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((2, 1, 3), dtype=np.int32))
    arr = load_inputs(path)
    assert arr.shape == (2, 1, 3) and arr.dtype == np.int32


def test_load_inputs_keeps_json_integers_and_reads_csv_integers(tmp_path):
    js = tmp_path / "ids.json"
    js.write_text(json.dumps({"inputs": [[1, 2, 3], [4, 5, 6]]}))
    assert load_inputs(js).dtype == np.int64
    js.write_text(json.dumps([[1, 2.5, 3]]))
    assert load_inputs(js).dtype == np.float64
    js.write_text(json.dumps([[1, True, 3]]))
    with pytest.raises(Exception, match="booleans"):
        load_inputs(js)
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("a,b,c,d,e,f\n1,2,3,4,5,6\n-7,8,9,0,1,2\n")
    flat = load_inputs(csv_path)
    assert flat.dtype == np.int64 and flat.tolist() == [[1, 2, 3, 4, 5, 6], [-7, 8, 9, 0, 1, 2]]
    shaped = load_inputs(csv_path, (2, 3), "int64")
    assert shaped.shape == (2, 2, 3) and shaped.dtype == np.int64
    np.testing.assert_array_equal(shaped.reshape(2, 6), flat)
    assert load_inputs(csv_path, (6,), "float32").dtype == np.float64


# ----------------------------------------------------------------------------- int64 models


@pytest.fixture(scope="module")
def token_url(tmp_path_factory):
    from helpers.token_repo import make_token_repo, token_server

    with token_server(make_token_repo(tmp_path_factory.mktemp("tokens"))) as u:
        yield u


def _answer(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_int64_model_from_every_format(token_url, tmp_path, capsys):
    ids = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [0, 1, 2]]], dtype=np.int64)  # (B, 2, 3)
    files = {
        "npy": tmp_path / "ids.npy",
        "json": tmp_path / "ids.json",
        "csv": tmp_path / "ids.csv",  # one flattened input per row, as mcdrop evaluate reads
        "csv-floats": tmp_path / "ids-floats.csv",  # "1.0" for an int64 model is the id 1
    }
    np.save(files["npy"], ids)
    files["json"].write_text(json.dumps(ids.tolist()))
    files["csv"].write_text("\n".join(",".join(map(str, r)) for r in ids.reshape(2, 6)) + "\n")
    files["csv-floats"].write_text(
        "\n".join(",".join(f"{v:.1f}" for v in r) for r in ids.reshape(2, 6)) + "\n"
    )
    answers = []
    for path in files.values():
        argv = ["--url", token_url, "--model", "grid", "--input", str(path)]
        assert main([*argv, "--samples", "25", "--seed", "9", "--json"]) == 0, path
        answers.append(_answer(capsys))
    assert all(a["mean"] == answers[0]["mean"] for a in answers)
    assert np.asarray(answers[0]["mean"]).shape == (2, 1)
    assert all(v[0] > 0 for v in answers[0]["variance"])
    # The table works for an int64 model too.
    assert main(["--url", token_url, "--model", "grid", "--input", str(files["csv"])]) == 0
    assert capsys.readouterr().out.startswith("model grid")


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,2,3,4,5\n", "model takes 6 per row"),
        ("1,2,3,4,5,6.5\n", "not whole numbers"),
        ("1,2,3,4,5,\n", "NaN or infinite values in row(s) 0"),
    ],
    ids=["width", "fraction", "empty-cell"],
)
def test_csv_that_does_not_fit_the_model_exits_2(token_url, tmp_path, capsys, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert main(["--url", token_url, "--model", "grid", "--input", str(path)]) == 2
    assert match in _one_line_error(capsys)


def test_float_ids_to_an_int64_model_exit_1_with_the_servers_reason(token_url, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((1, 3)))  # a float array keeps its dtype: the server refuses it
    assert main(["--url", token_url, "--model", "tokens", "--input", str(path)]) == 1
    assert "integer" in _one_line_error(capsys)
