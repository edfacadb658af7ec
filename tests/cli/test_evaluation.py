"""`mcdrop evaluate`: reports, plots, and clean exit code 2 on bad data."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop.errors import DataError
from mcdrop.evaluation import Progress, main, read_table

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_read_table_header_and_whitespace(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("a,b,y\n1,2,3\n\n4,5,6\n")
    np.testing.assert_array_equal(read_table(p, 3), [[1, 2, 3], [4, 5, 6]])
    q = tmp_path / "d.txt"
    q.write_text("1 2  3\n4\t5 6\n")
    np.testing.assert_array_equal(read_table(q, 3), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3\n4,5\n", r"line 2: expected 3 columns .* got 2"),
        ("1,2,3\n1,nan,3\n", r"line 2, column 2: nan \(NaN/Inf"),
        ("1,2,3\n1,,3\n", r"line 2, column 2: an empty cell"),
        ("1,2,3\n1,x,3\n", r"line 2, column 2: 'x', not a number"),
        ("a,b,c\n", "no data rows"),
    ],
)
def test_read_table_errors(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "d.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        read_table(p, 3)


def test_bad_data_exits_2_without_traceback(tmp_path: Path, capsys) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("x,y\n0.5,1.0\n0.5,nan\n")
    assert main([str(MODELS / "toy1d"), str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "line 3, column 2" in err and "Traceback" not in err
    p.write_text("1,2,3\n")
    assert main([str(MODELS / "toy1d"), str(p), "--out", str(tmp_path / "o")]) == 2
    assert "expected 2 columns" in capsys.readouterr().err
    assert main([str(tmp_path / "nomodel"), str(p)]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_bad_class_labels_exit_2(tmp_path: Path, capsys) -> None:
    p = tmp_path / "d.txt"
    p.write_text(" ".join(["0"] * 64) + " 12\n")
    assert main([str(MODELS / "digits"), str(p), "--out", str(tmp_path / "o")]) == 2
    assert "class indices 0..9" in capsys.readouterr().err


def test_regression_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    rc = main([str(MODELS / "toy1d"), str(MODELS / "toy1d" / "test.csv"), "--out", str(out),
               "--samples", "100", "--levels", "0.5", "0.9"])  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["rows"] == 200 and rep["samples"] == 100 and rep["seed"] == 0
    assert set(rep["metrics"]["coverage"]) == {"0.5", "0.9"}
    assert rep["metrics"]["rmse"] < 0.3  # noise sd is 0.1
    assert 0.8 <= rep["metrics"]["coverage"]["0.9"] <= 1.0
    assert rep["figures"] == ["coverage.png", "band.png"]
    for f in rep["figures"]:
        assert (out / f).read_bytes()[:4] == b"\x89PNG"


def test_classification_report_and_batches(tmp_path: Path) -> None:
    # 450 rows in batches of 1024 -> one batch; a smaller file split in two batches gives
    # the same numbers (keyed masks do not depend on batching)
    out = tmp_path / "rep"
    data = MODELS / "digits" / "test.csv"
    assert main([str(MODELS / "digits"), str(data), "--out", str(out), "--samples", "30"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["metrics"]["accuracy"] > 0.95
    assert 0 <= rep["metrics"]["ece"] < 0.1
    assert rep["figures"] == ["reliability.png"]
    assert (out / "reliability.png").stat().st_size > 1000


def test_progress_printer() -> None:
    s = io.StringIO()
    p = Progress(3, "run", s)
    for _ in range(3):
        p.update()
    text = s.getvalue()
    assert "3/3" in text and text.endswith("\n")
    quiet = io.StringIO()
    Progress(1, "run", quiet).update()
    assert quiet.getvalue() == ""


@pytest.mark.slow  # a fresh interpreter importing torch
def test_matplotlib_not_imported_by_library() -> None:
    import subprocess
    import sys

    code = "import sys, mcdrop.evaluation, mcdrop.repository; print('matplotlib' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_without_matplotlib_the_report_is_written_and_says_how_to_get_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes `import matplotlib` fail as it does when it is not installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "rep"
    data = MODELS / "toy1d" / "test.csv"
    assert main([str(MODELS / "toy1d"), str(data), "--out", str(out), "--samples", "20"]) == 0
    err = capsys.readouterr().err
    assert "pip install 'mcdrop[plots]'" in err and "Traceback" not in err
    rep = json.loads((out / "report.json").read_text())
    assert rep["figures"] == [] and "mcdrop[plots]" in rep["figures_skipped"]
    assert rep["metrics"]["rmse"] < 0.3
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_a_failed_run_leaves_no_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mcdrop.evaluation as ev

    def broken_plot(out: Path, *args: object) -> str:
        (out / "reliability.png").write_bytes(b"half")
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(ev, "_plot_reliability", broken_plot)
    data = MODELS / "digits" / "test.csv"
    fresh = tmp_path / "fresh" / "rep"
    with pytest.raises(RuntimeError, match="the plot failed"):
        ev.evaluate(MODELS / "digits", data, fresh, samples=5)
    assert not fresh.parent.exists()  # neither the folder nor the parent made for it
    # a folder that was there before is the user's: kept, without report.json
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError):
        ev.evaluate(MODELS / "digits", data, mine, samples=5)
    assert (mine / "notes.txt").read_text() == "keep me" and not (mine / "report.json").exists()
    # bad data fails before anything is created
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n")
    assert main([str(MODELS / "digits"), str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
