"""`compare` on checkpoint folders never reuses another folder's stores, takes a folder of
runs, has --overwrite, and its errors name only its own options (issue 14, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import specdyn
from specdyn.cli import main
from specdyn.comparison import compare
from specdyn.errors import CompareError

LMC = Path(__file__).resolve().parents[2] / "fixtures" / "lmc"
BRANCHES = ("branch-split0000-order1", "branch-split0000-order2")


def _sources(result) -> list[str]:
    out = []
    for entry in result.runs:
        with specdyn.open_run(entry.store) as run:
            out.append(run.info()["source_root"])
    return out


def test_the_same_leaf_names_in_two_trunks_do_not_collide(tmp_path):
    home = tmp_path / "ws"
    first = compare([LMC / "trunk-a" / b for b in BRANCHES], home=home, steps="none")
    second = compare([LMC / "trunk-b" / b for b in BRANCHES], home=home, steps="none")
    assert _sources(first) == [str(LMC / "trunk-a" / b) for b in BRANCHES]
    assert _sources(second) == [str(LMC / "trunk-b" / b) for b in BRANCHES]
    assert {e.store for e in first.runs}.isdisjoint(e.store for e in second.runs)
    # trunk-b's numbers, as a comparison of trunk-b alone in a fresh workspace gives them
    alone = compare([LMC / "trunk-b" / b for b in BRANCHES], home=tmp_path / "fresh", steps="none")
    np.testing.assert_array_equal(second.pairs[0].score, alone.pairs[0].score)
    assert not np.array_equal(first.pairs[0].score, second.pairs[0].score)


def test_a_folder_of_runs_is_compared_by_split(tmp_path):
    result = compare([LMC], by="split", home=tmp_path / "ws", steps="none")
    assert len(result.runs) == 12 and all(e.split is not None for e in result.runs)
    assert {e.split for e in result.runs} == {0, 50, 500}
    assert any(n.kind == "not-a-branch" and "trunk" in n.message for n in result.notes)
    assert result.split is not None


def test_one_run_is_still_too_few(tmp_path):
    with pytest.raises(CompareError, match="at least two runs"):
        compare([LMC / "trunk-a" / BRANCHES[0]], home=tmp_path / "ws")


def test_overwrite_and_errors_with_compare_options_only(tmp_path, capsys):
    home = tmp_path / "ws"
    folders = [LMC / "trunk-a" / b for b in BRANCHES]
    specdyn.analyze(
        folders[0], home=home, name=BRANCHES[0],
        compute=specdyn.ComputeOptions(precision="float32"),
    )  # fmt: skip
    args = ["compare", *map(str, folders), "--home", str(home), "--steps", "none", "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--name" not in err and err.count("\n") == 1
    assert main([*args, "--overwrite"]) == 0
    with specdyn.open_run(BRANCHES[0], home=home) as run:
        assert run.options["precision"] == "float64"
