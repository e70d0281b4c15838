"""`compare` on checkpoint folders never reuses another folder's stores, takes a folder of
runs, has --overwrite, and its errors name only its own options (issue 14, item 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer

import specdyn
from specdyn.cli import app, main
from specdyn.comparison import compare, open_comparison
from specdyn.errors import CompareError
from specdyn.sources import discover

LMC = Path(__file__).resolve().parents[2] / "fixtures" / "lmc"
BRANCHES = ("branch-split0000-order1", "branch-split0000-order2")
MANIFEST = json.loads((LMC.parent / "manifest.json").read_text())["experiments"]["lmc"]
COMPARE_FLAGS = {
    opt
    for param in typer.main.get_command(app).commands["compare"].params
    for opt in param.opts
    if opt.startswith("--")
}


def _sources(result) -> list[str]:
    out = []
    for entry in result.runs:
        with specdyn.open_run(entry.store) as run:
            out.append(run.info()["source_root"])
    return out


def _branches(trunk: str) -> list[Path]:
    """What the shell makes of `trunk-a/branch-*/`: the branch folders, sorted."""
    return sorted((LMC / trunk).glob("branch-*/"))


def _manifest_same_trunk(trunks: tuple[str, ...], matrices: list[str]) -> np.ndarray:
    """[split, matrix]: the fixture script's float64 agreement of the two orders of each
    split step, averaged over `trunks` (fixtures/README.md, lmc table)."""
    rows = []
    for split in MANIFEST["split_steps"]:
        pairs = [
            c for c in MANIFEST["comparisons"]
            if c["kind"] == "same trunk" and c["split_step"] == split
            and c["first"].split("/")[0] in trunks
        ]  # fmt: skip
        assert len(pairs) == len(trunks)
        rows.append(np.mean([[c["agreement"][m] for m in matrices] for c in pairs], axis=0))
    return np.array(rows)


def _flags(text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]*", text))


def test_trunk_b_after_trunk_a_analyses_its_own_checkpoints(tmp_path):
    """`compare trunk-a/branch-*/ --by split`, then `compare trunk-b/branch-*/ --by split`
    in one workspace: the second analyses trunk-b and its numbers are trunk-b's."""
    home = tmp_path / "ws"
    a, b = _branches("trunk-a"), _branches("trunk-b")
    assert len(a) == len(b) == 6 and [f.name for f in a] == [f.name for f in b]
    first = compare(a, by="split", home=home)
    second = compare(b, by="split", home=home)
    assert [e.label for e in first.runs] == [f.name for f in a]  # named as `analyze trunk-a`
    assert second.analysed == [str(f) for f in b]
    assert _sources(second) == [str(f) for f in b]
    assert _sources(first) == [str(f) for f in a]  # trunk-a's stores left alone
    assert {e.store for e in first.runs}.isdisjoint(e.store for e in second.runs)
    assert [e.label for e in second.runs] == [f"trunk-b-{f.name}" for f in b]
    assert any(n.kind == "store-name" for n in second.notes)
    # the numbers of a direct analyze of trunk-b's branch folders
    direct = specdyn.analyze(LMC / "trunk-b", home=tmp_path / "direct", run="branch-*")
    assert [Path(r.source_root).name for r in direct.runs] == [f.name for f in b]
    for metric in ("stable_rank", "normalized_effective_rank"):
        want = []
        for r in direct.runs:
            with specdyn.open_run(r.store_path) as run:
                want.append(
                    run.metric(metric)[-1, [run.matrices.index(m) for m in second.matrices]]
                )
        np.testing.assert_array_equal(second.final(metric), np.array(want))
        assert not np.array_equal(first.final(metric), second.final(metric))
    # and the agreement of the fixture script's own float64 SVDs, trunk b's, not trunk a's
    np.testing.assert_allclose(
        second.split.same_score, _manifest_same_trunk(("trunk-b",), second.matrices), atol=1e-6
    )
    np.testing.assert_allclose(
        first.split.same_score, _manifest_same_trunk(("trunk-a",), first.matrices), atol=1e-6
    )
    # a re-run picks the same stores again, and writes no other
    stores = sorted(home.glob("*.h5"))
    again = compare(b, by="split", home=home)
    assert [e.store for e in again.runs] == [e.store for e in second.runs]
    assert sorted(home.glob("*.h5")) == stores and len(stores) == 12


def test_a_folder_of_runs_is_compared_by_split(tmp_path, capsys):
    home = tmp_path / "ws"
    result = compare([LMC], by="split", home=home)
    # the runs named as `analyze fixtures/lmc` names them, less the trunks
    names = [r.name for r in discover(LMC).runs]
    assert [e.label for e in result.runs] == [n for n in names if not n.endswith("-trunk")]
    assert len(result.runs) == 12 and {e.split for e in result.runs} == {0, 50, 500}
    assert result.path.name == "lmc-split.h5"
    (left,) = [n for n in result.notes if n.kind == "not-a-branch"]
    assert "trunk-a-trunk, trunk-b-trunk" in left.message
    assert result.split.same_pairs.tolist() == [2, 2, 2]
    assert result.split.other_pairs.tolist() == [4, 4, 4]
    np.testing.assert_allclose(
        result.split.same_score,
        _manifest_same_trunk(("trunk-a", "trunk-b"), result.matrices),
        atol=1e-6,
    )
    # the trunks' folders given instead: the same names, the same stores, nothing new
    stores = sorted(home.glob("*.h5"))
    both = compare([LMC / "trunk-a", LMC / "trunk-b"], by="split", home=home, name="trunks")
    assert [e.store for e in both.runs] == [e.store for e in result.runs]
    assert sorted(home.glob("*.h5")) == stores
    # the command line: `specdyn compare fixtures/lmc --by split`
    assert main(["compare", str(LMC), "--by", "split", "--home", str(home), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["runs"]) == 12 and payload["comparison"] == str(result.path)


def test_a_run_name_that_is_a_folder_here_is_that_folder(tmp_path, monkeypatch):
    """`cd trunk-b; compare branch-1 branch-2` after trunk-a's branches were compared:
    the names are trunk-a's runs, but the folders here are what was meant."""
    home = tmp_path / "ws"
    compare([LMC / "trunk-a" / b for b in BRANCHES], home=home, steps="none")
    monkeypatch.chdir(LMC / "trunk-b")
    result = compare(list(BRANCHES), home=home, steps="none")
    assert _sources(result) == [str(LMC / "trunk-b" / b) for b in BRANCHES]
    assert sum(n.kind == "store-name" and "compared the folder" in n.message
               for n in result.notes) == 2  # fmt: skip
    # a name whose store holds that very folder is the store, silently
    result = compare(["trunk-b-" + b for b in BRANCHES], home=home, steps="none")
    assert not [n for n in result.notes if n.kind == "store-name"]


def test_names_below_the_common_parent(tmp_path):
    home = tmp_path / "ws"
    result = compare([LMC / t / BRANCHES[0] for t in ("trunk-a", "trunk-b")], home=home)
    assert [e.label for e in result.runs] == [f"{t}-{BRANCHES[0]}" for t in ("trunk-a", "trunk-b")]
    assert sorted(p.stem for p in home.glob("*.h5")) == [e.label for e in result.runs]


def test_one_run_is_still_too_few(tmp_path):
    with pytest.raises(CompareError, match="holds one run .*at least two runs"):
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
    assert err.count("\n") == 1 and "--overwrite" in err and "--name" not in err
    assert _flags(err) <= COMPARE_FLAGS, err
    # it names the folder and the store, and what the store says is wrong
    assert str(folders[0]) in err and str(home / f"{BRANCHES[0]}.h5") in err
    assert "precision" in err
    with pytest.raises(CompareError) as caught:
        compare(folders, home=home, steps="none")
    assert "overwrite=True" in str(caught.value) and "--" not in str(caught.value)
    assert main([*args, "--overwrite"]) == 0
    with specdyn.open_run(BRANCHES[0], home=home) as run:
        assert run.options["precision"] == "float64"


def test_a_comparison_of_other_runs_is_replaced_only_with_overwrite(tmp_path, capsys):
    home = tmp_path / "ws"
    a = [LMC / "trunk-a" / b for b in BRANCHES]
    b = [LMC / "trunk-b" / b for b in BRANCHES]
    compare(a, home=home, name="pair", steps="none")
    compare(a, home=home, name="pair")  # the same runs again: replaced
    with open_comparison("pair", home) as cmp:
        assert cmp.labels == list(BRANCHES) and len(cmp.agreement()["step_a"]) == 2
    args = ["compare", *map(str, b), "--home", str(home), "--name", "pair", "--steps", "none"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "compares other runs (branch-split0000-order1" in err and err.count("\n") == 1
    assert _flags(err) == {"--name", "--overwrite"} and _flags(err) <= COMPARE_FLAGS
    with open_comparison("pair", home) as cmp:
        assert cmp.labels == list(BRANCHES)  # left as it was
    assert main([*args, "--overwrite", "-q"]) == 0
    with open_comparison("pair", home) as cmp:
        assert cmp.labels == [f"trunk-b-{x}" for x in BRANCHES]
