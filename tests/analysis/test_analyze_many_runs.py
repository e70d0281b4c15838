"""A folder of many runs (issue 24, finding 4): a run that cannot be analysed is reported
and skipped while the others proceed; runs come in natural order; ``--ignore`` leaves
paths out, counted in a note."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import specdyn
from specdyn.cli import main
from specdyn.sources import discover

N_RUNS = 20
STEPS = (1, 2, 3)
BROKEN = "version_7"  # its last checkpoint changes the first layer's shape
TRUNCATED = "version_12"  # its step-2 file is cut short: skipped, the run still analysed


def _train(folder: Path, seed: int, *, grow_at: int | None = None) -> dict[int, dict]:
    """A few SGD steps of a tiny MLP, `torch.save(state_dict)` after each; the weights saved."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    folder.mkdir(parents=True)
    saved = {}
    for step in STEPS:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step == grow_at:  # a run whose shapes change mid-run
            model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, folder / f"step_{step}.pt")
        saved[step] = state
    return saved


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """20 runs in lightning_logs/version_0 … version_19, analysed once through the CLI
    (values only, --json): (folder, home, exit code, JSON document, stderr, weights)."""
    base = tmp_path_factory.mktemp("many")
    folder = base / "lightning_logs"
    weights = {}
    for i in range(N_RUNS):
        name = f"version_{i}"
        weights[name] = _train(folder / name, i, grow_at=3 if name == BROKEN else None)
    cut = folder / TRUNCATED / "step_2.pt"
    cut.write_bytes(cut.read_bytes()[:200])
    home = base / "ws"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", str(folder), "--home", str(home), "--values-only", "--json"])
    return folder, home, code, json.loads(out.getvalue()), err.getvalue(), weights


def test_the_broken_run_fails_alone_and_exits_1(many):
    _folder, _home, code, doc, err, _ = many
    assert code == 1
    assert [f["name"] for f in doc["failed"]] == [BROKEN]
    (failure,) = doc["failed"]
    assert failure["kind"] == "ShapeChangedError" and failure["step"] == 3
    assert failure["file"].endswith(f"{BROKEN}/step_3.pt")
    assert "has shape (8, 4) at step 3 but (6, 4)" in failure["reason"]
    assert "--exclude" in failure["cli_reason"] and "--exclude" not in failure["reason"]
    assert f"run {BROKEN} failed: " in err
    assert f"1 of {N_RUNS} runs could not be analysed ({BROKEN}" in err


def test_the_19_others_are_analysed_in_natural_order(many):
    _folder, home, _code, doc, _err, weights = many
    names = [r["name"] for r in doc["runs"]]
    expected = [f"version_{i}" for i in range(N_RUNS) if f"version_{i}" != BROKEN]
    assert names == expected  # version_2 before version_10
    assert doc["failed"][0]["position"] == 7  # its place among the 20, in order
    for name in names:
        with specdyn.open_run(name, home=home) as store:
            steps = [1, 3] if name == TRUNCATED else list(STEPS)
            assert list(store.steps) == steps
            sigma = store.sigma("0.weight")
            for t, step in enumerate(steps):
                ref = np.linalg.svd(
                    weights[name][step]["0.weight"].double().numpy(), compute_uv=False
                )
                np.testing.assert_allclose(sigma[t, : len(ref)], ref, rtol=0, atol=1e-6 * ref[0])


def test_the_truncated_file_is_a_problem_of_its_run_only(many):
    _folder, _home, _code, doc, _err, _ = many
    by_name = {r["name"]: r for r in doc["runs"]}
    (problem,) = by_name[TRUNCATED]["problems"]
    assert problem["source"].endswith(f"{TRUNCATED}/step_2.pt")
    assert all(not r["problems"] for n, r in by_name.items() if n != TRUNCATED)


def test_the_library_reports_the_failure_in_the_result(many, tmp_path):
    folder = many[0]
    result = specdyn.analyze(folder, home=tmp_path, run="version_[67]", vectors=None)
    assert [r.name for r in result.runs] == ["version_6"]
    (failure,) = result.failed
    assert failure.name == BROKEN and failure.position == 1
    assert failure.store_path == str(tmp_path / f"{BROKEN}.h5")
    assert "matrices.exclude" in failure.reason


def test_one_run_that_fails_still_raises_its_error(many, tmp_path):
    with pytest.raises(specdyn.errors.ShapeChangedError, match="step_3.pt"):
        specdyn.analyze(many[0], home=tmp_path, run=BROKEN, vectors=None)


def test_the_table_lists_which_ran_and_which_failed(many, tmp_path, capsys):
    folder = many[0]
    argv = ["analyze", str(folder), "--home", str(tmp_path), "--values-only"]
    code = main([*argv, "--run", "version_[78]"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 runs: 1 analysed, 1 failed" in captured.out
    rows = [
        [cell.strip() for cell in line.split("│")[1:3]]
        for line in captured.out.splitlines()
        if line.startswith("│ version_")
    ]
    assert rows == [[BROKEN, "failed"], ["version_8", "analysed"]]  # discovery order
    assert "2 runs found: version_7, version_8" in captured.err
    assert f"leave a run out with --ignore '{BROKEN}'" in captured.err


def test_natural_order_of_discovery(many):
    runs = [r.name for r in discover(many[0]).runs]
    assert runs == [f"version_{i}" for i in range(N_RUNS)]
    assert runs.index("version_2") < runs.index("version_10")


def test_natural_key_orders_numbers_by_value():
    from specdyn.sources._discover import natural_key

    names = ["version_10", "version_2", "version_1", "b", "a10b", "a9b", "version_0"]
    assert sorted(names, key=natural_key) == [
        "a9b",
        "a10b",
        "b",
        "version_0",
        "version_1",
        "version_2",
        "version_10",
    ]


def _ignored_notes(notes: list[dict]) -> list[str]:
    return [n["message"] for n in notes if n["kind"] in ("ignored-paths", "ignore-unmatched")]


def test_ignore_leaves_a_run_folder_out_and_counts_its_files(many, tmp_path, capsys):
    folder = many[0]
    argv = ["analyze", str(folder), "--home", str(tmp_path), "--values-only", "--json"]
    code = main([*argv, "--run", "version_[67]", "--ignore", BROKEN])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["failed"] == []
    assert [r["name"] for r in doc["runs"]] == ["version_6"]
    assert not (tmp_path / f"{BROKEN}.h5").exists() and (tmp_path / "version_6.h5").exists()
    (note,) = _ignored_notes(doc["notes"])
    assert f"3 files (in 1 folder: {folder / BROKEN}) left out" in note


def test_ignore_globs_match_relative_or_as_given(many):
    folder = many[0]
    # the folder's files by the path as given, and every step_3 by the relative path
    found = discover(folder, ignore=[f"{folder}/{BROKEN}/*", "*/step_3.pt", "nothing/*"])
    runs = {r.name: [c.step for c in r.checkpoints] for r in found.runs}
    assert BROKEN not in runs and len(runs) == N_RUNS - 1
    assert runs["version_0"] == [1, 2] and runs[TRUNCATED] == [1]
    unmatched, counted = _ignored_notes([dataclasses.asdict(n) for n in found.notes])
    assert "'nothing/*' (--ignore) matched nothing" in unmatched
    assert counted.endswith(
        f"{folder}: {3 + N_RUNS - 1} files left out by the ignore globs (--ignore)"
    )


def test_ignoring_everything_says_so(many):
    with pytest.raises(specdyn.errors.DiscoveryError, match=r"60 files left out by ignore"):
        discover(many[0], ignore=["version_*"])
