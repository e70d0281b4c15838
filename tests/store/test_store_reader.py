"""Reading a store whose free-text slots were damaged on disk never ends in an internal
error (issue 15: a corrupt JSON in /steps/notes made `specdyn info` raise)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import specdyn
from specdyn.cli import main
from specdyn.errors import StoreDamagedError


def _damage_notes(tmp_path, checksums: bool):
    """A run's store whose notes are overwritten with bad JSON (checksums kept, or removed
    as in a store of schema 2, which has none)."""
    (tmp_path / "run").mkdir()
    for step in (0, 1):
        torch.save({"a.weight": torch.randn(5, 4)}, tmp_path / "run" / f"step_{step}.pt")
    home = tmp_path / "ws"
    specdyn.analyze(tmp_path / "run", home=home, vectors=None)
    with h5py.File(home / "run.h5", "r+") as f:
        notes = f["steps/notes"]
        notes[0] = np.array(b'["a note", {"unclosed', dtype=notes.dtype)
        notes[1] = np.array(b'{"not": "a list"}', dtype=notes.dtype)
        if not checksums:
            del f["checksums"]
            f.attrs["schema_version"] = 2
    return home


def test_damaged_notes_are_detected_by_their_checksums(tmp_path, capsys):
    home = _damage_notes(tmp_path, checksums=True)
    with pytest.raises(StoreDamagedError, match=r"values of step 0: steps/notes does not match"):
        specdyn.open_run("run", home=home)
    assert main(["info", "run", "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err and "specdyn verify run --repair" in err


def test_damaged_step_notes_are_shown_as_damaged_in_a_store_without_checksums(tmp_path, capsys):
    home = _damage_notes(tmp_path, checksums=False)
    with specdyn.open_run("run", home=home) as run:
        shown = run.notes
    assert shown[0][0].startswith("(notes unreadable, damaged in the store")
    assert shown[1][0].startswith("(notes unreadable, not a list")
    assert main(["info", "run", "--home", str(home)]) == 0
    assert "internal error" not in capsys.readouterr().err
