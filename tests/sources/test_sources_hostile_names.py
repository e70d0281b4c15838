"""Folders that turn hostile after a store was written, and steps no store can hold
(issue 22, finding 9b): a warned skip or one line naming the file, never a traceback."""

from __future__ import annotations

import os

import pytest
import torch
from _ckpt_factory import write_torch

import specdyn
from specdyn.cli import main
from specdyn.errors import DiscoveryError
from specdyn.sources import discover
from specdyn.store import open_run

TOO_BIG = 2**63  # one more than the largest int64


def _state(i: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(i)
    return {
        "fc1.weight": torch.randn(5, 4, generator=gen),
        "fc2.weight": torch.randn(3, 5, generator=gen),
    }


def _run_folder(folder):
    for i, step in enumerate((0, 10)):
        write_torch(folder / f"step_{step}.pt", _state(i))
    return folder


def _add_loops(folder) -> None:
    """A folder link to its own parent, a link to itself, and two links to each other."""
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")
    os.symlink("self.pt", folder / "self.pt")
    os.symlink("b.pt", folder / "a.pt")
    os.symlink("a.pt", folder / "b.pt")


def test_symlink_loops_made_after_the_store_was_written_do_not_break_a_rerun(
    tmp_path, capsys, monkeypatch, one_torch_thread
):
    monkeypatch.setenv("COLUMNS", "500")  # one warning per line
    folder = _run_folder(tmp_path / "run")
    home = tmp_path / "ws"
    specdyn.analyze(folder, home=home, vectors=None)
    _add_loops(folder)
    again = specdyn.analyze(folder, home=home, vectors=None)
    noted = {os.path.basename(n.path) for n in again.notes if n.kind == "unreadable"}
    assert {"self.pt", "a.pt", "b.pt"} <= noted
    assert again.runs[0].steps_already_done == [0, 10]
    capsys.readouterr()
    # the CLI's summary sorts notes by folder: it must not resolve() a loop (RuntimeError)
    assert main(["analyze", str(folder), "--home", str(home), "--values-only"]) == 0
    captured = capsys.readouterr()
    assert "internal error" not in captured.err
    assert "a.pt: cannot be read" in captured.err
    assert "already in the store" in captured.out


def test_a_step_too_large_for_a_store_is_a_warned_skip_naming_the_file(tmp_path, one_torch_thread):
    folder = _run_folder(tmp_path / "run")
    write_torch(folder / f"step_{TOO_BIG}.pt", _state(2))
    write_torch(folder / f"step_{TOO_BIG - 1}.pt", _state(3))  # the largest that fits
    write_torch(folder / "weights.pt", _state(4), extra={"global_step": 2**64})
    result = specdyn.analyze(folder, home=tmp_path / "ws", vectors=None)
    skipped = {os.path.basename(n.path): n.message for n in result.notes if n.kind == "bad-step"}
    assert set(skipped) == {f"step_{TOO_BIG}.pt", "weights.pt"}
    assert f"its name gives step {TOO_BIG}" in skipped[f"step_{TOO_BIG}.pt"]
    assert "rename it with its real step" in skipped[f"step_{TOO_BIG}.pt"]
    assert "metadata:global_step gives step" in skipped["weights.pt"]
    with open_run(result.runs[0].store_path) as run:
        assert run.steps.tolist() == [0, 10, TOO_BIG - 1]


def test_only_unstorable_steps_is_one_line_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "run"
    write_torch(folder / f"step_{TOO_BIG}.pt", _state(0))
    with pytest.raises(DiscoveryError, match=f"step_{TOO_BIG}.pt: skipped"):
        discover(folder)
    assert main(["analyze", str(folder), "--home", str(tmp_path / "ws")]) == 1
    err = capsys.readouterr().err
    assert err.strip().startswith("specdyn: error: ") and err.strip().count("\n") == 0
    assert f"step_{TOO_BIG}.pt" in err and "Traceback" not in err
