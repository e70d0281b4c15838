"""`specdyn export` on a fixture store: the files, the --json summary, errors in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import specdyn
from specdyn.cli import main

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mlp-wd"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-export")
    specdyn.analyze(FIXTURE, home=home, steps="0,100,4000")
    return home


def test_export_writes_each_section_and_a_json_summary(home, tmp_path, capsys):
    out = tmp_path / "tables"
    args = ["export", "mlp-wd", "--home", str(home), "--section", "metrics,sigma"]
    assert main([*args, "--section", "training", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "parquet" and summary["runs"] == ["mlp-wd"]
    assert summary["sections"] == ["metrics", "sigma", "training"]
    with specdyn.open_run("mlp-wd", home=home) as run:
        for entry in summary["files"]:
            path = Path(entry["path"])
            assert path.parent == out and entry["bytes"] == path.stat().st_size
            want = run.to_pandas(entry["sections"][0])
            pd.testing.assert_frame_equal(pd.read_parquet(path), want)
            assert entry["rows"] == len(want)
    assert [Path(e["path"]).name for e in summary["files"]] == [
        "metrics.parquet",
        "sigma.parquet",
        "training.parquet",
    ]


def test_export_csv_to_one_file_prints_a_table(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    out = tmp_path / "sigma.csv"
    args = ["export", "mlp-wd", "--home", str(home), "--format", "csv", "--section", "sigma"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported mlp-wd (csv" in text and str(out) in text
    got = pd.read_csv(out)
    with specdyn.open_run("mlp-wd", home=home) as run:
        want = run.to_pandas("sigma")
    np.testing.assert_array_equal(got["sigma"].to_numpy(), want["sigma"].to_numpy())
    assert got["matrix"].tolist() == want["matrix"].astype(str).tolist()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--format", "xlsx"], "specdyn: error: --format 'xlsx': not a format"),
        (["--section", "weights"], "specdyn: error: --section 'weights': no such section"),
    ],
)
def test_export_errors_are_one_line_in_flags(home, tmp_path, capsys, extra, expected):
    args = ["export", "mlp-wd", "--home", str(home), "--out", str(tmp_path / "x"), *extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and "\n" not in err
