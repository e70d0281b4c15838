"""Checkpoints that cannot be analysed stay visible: in the store (/problems), in `runs`
and `info`, in the summary, and as exit 1 under --strict (issue 13, item 6); the step's
origin is recorded (item 1); --run takes a glob (item 4)."""

from __future__ import annotations

import json
import os

import h5py
import pytest
import torch
from _ckpt_factory import write_malicious, write_torch

import specdyn
from specdyn.cli import main
from specdyn.errors import SpecdynError


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(8, 6, generator=g), "b.weight": torch.randn(4, 8, generator=g)}


def _run_with_a_bad_file(folder, *, bad="corrupt"):
    folder.mkdir(parents=True)
    for step in (0, 1, 2):
        write_torch(folder / f"step_{step}.pt", _weights(step))
    target = folder / "step_3.pt"
    if bad == "corrupt":
        target.write_bytes(b"PK\x03\x04 truncated zip, not a checkpoint" * 4)
    else:
        write_malicious(target, os.system, ("true",))
    return target


@pytest.mark.parametrize("bad", ["corrupt", "unsafe-pickle"])
def test_a_bad_checkpoint_among_good_ones_is_recorded_not_dropped(tmp_path, bad):
    target = _run_with_a_bad_file(tmp_path / "run", bad=bad)
    home = tmp_path / "ws"
    result = specdyn.analyze(tmp_path / "run", home=home, vectors=None)
    (run,) = result.runs
    assert run.steps_computed == [0, 1, 2]
    assert [(p.source, p.kind) for p in run.problems] == [(str(target), bad)]
    assert run.incomplete and result.incomplete
    with specdyn.open_run("run", home=home) as stored:
        assert [(p.source, p.kind) for p in stored.problems] == [(str(target), bad)]
        assert str(target) in stored.problems[0].message
        assert stored.info()["problems"][0]["source"] == str(target)
    with h5py.File(home / "run.h5", "r") as f:  # plain h5py readers see it too
        assert [s.decode() for s in f["problems/source"][()]] == [str(target)]
    (summary,) = specdyn.list_runs(home)
    assert summary.status == "1 unreadable checkpoint" and summary.problems == 1


def test_fixing_the_file_clears_the_problem_and_adds_the_step(tmp_path):
    target = _run_with_a_bad_file(tmp_path / "run")
    home = tmp_path / "ws"
    specdyn.analyze(tmp_path / "run", home=home, vectors=None)
    with specdyn.open_run("run", home=home) as stored:
        before = stored.values.sigma("a.weight").copy()
    write_torch(target, _weights(3))
    result = specdyn.analyze(tmp_path / "run", home=home, vectors=None)
    assert result.runs[0].problems == [] and not result.incomplete
    assert result.runs[0].steps_computed == [3]
    with specdyn.open_run("run", home=home) as stored:
        assert stored.problems == []
        assert (stored.values.sigma("a.weight")[:3] == before).all()  # copied, not recomputed
    assert specdyn.list_runs(home)[0].status == "complete"


def test_a_removed_bad_file_leaves_the_store_clean_without_recomputing(tmp_path):
    target = _run_with_a_bad_file(tmp_path / "run")
    home = tmp_path / "ws"
    specdyn.analyze(tmp_path / "run", home=home, vectors=None)
    target.unlink()
    result = specdyn.analyze(tmp_path / "run", home=home, vectors=None)
    assert result.runs[0].steps_computed == [] and result.runs[0].problems == []
    with specdyn.open_run("run", home=home) as stored:
        assert stored.problems == []


def test_a_clean_store_has_no_problems_group(tmp_path):
    (tmp_path / "run").mkdir()
    for step in (0, 1):
        write_torch(tmp_path / "run" / f"step_{step}.pt", _weights(step))
    specdyn.analyze(tmp_path / "run", home=tmp_path / "ws", vectors=None)
    with h5py.File(tmp_path / "ws" / "run.h5", "r") as f:
        assert "problems" not in f
    assert specdyn.list_runs(tmp_path / "ws")[0].status == "complete"


def test_a_bad_file_beside_run_folders_belongs_to_every_run(tmp_path):
    for offset, name in enumerate(("a", "b")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        for step in (0, 1):
            write_torch(tmp_path / "runs" / name / f"step_{step}.pt", _weights(10 * offset + step))
    (tmp_path / "runs" / "b" / "step_2.pt").write_bytes(b"not a zip")
    (tmp_path / "runs" / "stray.pt").write_bytes(b"not a zip either")
    result = specdyn.analyze(tmp_path / "runs", home=tmp_path / "ws", vectors=None)
    problems = {r.name: sorted(os.path.basename(p.source) for p in r.problems) for r in result.runs}
    assert problems == {"a": ["stray.pt"], "b": ["step_2.pt", "stray.pt"]}


def test_strict_exits_1_after_analysing_the_good_ones(tmp_path, capsys):
    _run_with_a_bad_file(tmp_path / "run")
    home = str(tmp_path / "ws")
    args = ["analyze", str(tmp_path / "run"), "--home", home, "--values-only"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "unreadable" in out.out and "1 corrupt" in out.out
    assert main([*args, "--strict"]) == 1
    err = capsys.readouterr().err
    assert "1 checkpoint could not be analysed" in err and "--strict" in err
    assert main(["runs", "--home", home, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["status"] == "1 unreadable checkpoint" and listed["problems"] == 1
    assert main(["info", "run", "--home", home]) == 0
    shown = capsys.readouterr().out
    assert "step_3.pt" in shown and "not analysed" in shown


def test_strict_is_quiet_when_every_checkpoint_was_read(tmp_path):
    (tmp_path / "run").mkdir()
    for step in (0, 1):
        write_torch(tmp_path / "run" / f"step_{step}.pt", _weights(step))
    args = ["analyze", str(tmp_path / "run"), "--home", str(tmp_path / "ws"), "-q"]
    assert main([*args, "--values-only", "--strict"]) == 0


def test_step_origin_is_recorded(tmp_path):
    (tmp_path / "run" / "checkpoint-500" / "unet").mkdir(parents=True)
    write_torch(tmp_path / "run" / "step_100.pt", _weights(0))
    write_torch(tmp_path / "run" / "named.pt", _weights(1), extra={"global_step": 300})
    write_torch(tmp_path / "run" / "checkpoint-500" / "unet" / "weights.pt", _weights(2))
    specdyn.analyze(tmp_path / "run", home=tmp_path / "ws", vectors=None)
    with specdyn.open_run("run", home=tmp_path / "ws") as stored:
        origins = {s["step"]: s["origin"] for s in stored.step_sources}
    assert origins == {100: "name", 300: "metadata:global_step", 500: "ancestor name"}


def test_run_takes_a_glob(tmp_path):
    for offset, name in enumerate(("sweep-lr1", "sweep-lr2", "baseline")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        for step in (0, 1):
            write_torch(tmp_path / "runs" / name / f"step_{step}.pt", _weights(10 * offset + step))
    result = specdyn.analyze(tmp_path / "runs", home=tmp_path / "ws", run="sweep-*", vectors=None)
    assert sorted(r.name for r in result.runs) == ["sweep-lr1", "sweep-lr2"]
    with pytest.raises(SpecdynError, match=r"no run matches run 'nope\*'; runs found: "):
        specdyn.analyze(tmp_path / "runs", home=tmp_path / "ws", run="nope*", vectors=None)
