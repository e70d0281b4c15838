"""A figure that cannot be written (full disk, read-only folder, file-size limit) is one
line and an unchanged file, never an internal error (issue 15)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import specdyn
from specdyn.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.mark.parametrize(
    ("code", "hint"),
    [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"), (errno.EFBIG, "size limit")],
)
def test_a_figure_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch, code, hint):
    home = tmp_path / "ws"
    specdyn.analyze(FIXTURES / "mlp-wd", home=home, steps="0,10,20", vectors=None)
    out = tmp_path / "rank.png"
    out.write_bytes(b"the figure from before")

    def failing_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"half a fig")  # some bytes went out before the error
        raise OSError(code, "simulated")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    assert main(["plot", "rank", "mlp-wd", "--home", str(home), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err
    assert err.startswith(f"specdyn: error: {out}: cannot be written") and hint in err
    assert out.read_bytes() == b"the figure from before"  # unchanged, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank.png", "ws"]
