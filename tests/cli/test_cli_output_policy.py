"""One output policy for every command (issue 14, items 4, 7 and 8): `-q` prints warnings
and errors only; `--json` is one document with its notes inside and nothing else; the
summary counts warnings and notes as they are printed; one line on Ctrl-C; no stray blank
lines; `--version`; boolean flags are plain flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import specdyn
from specdyn.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _run_with_copies(folder: Path) -> Path:
    """Three steps, plus best/last copies of the last one (two duplicate notes)."""
    folder.mkdir(parents=True)
    for step in (0, 1, 2):
        g = torch.Generator().manual_seed(step)
        sd = {"a.weight": torch.randn(6, 5, generator=g), "b.weight": torch.randn(4, 6, generator=g)}
        torch.save(sd, folder / f"step_{step}.pt")
    shutil.copy(folder / "step_2.pt", folder / "best.pt")
    shutil.copy(folder / "step_2.pt", folder / "last.pt")
    (folder / "step_3.pt").write_bytes(b"not a checkpoint at all")  # one real warning
    return folder


def test_quiet_prints_warnings_only(tmp_path, capsys):
    folder = _run_with_copies(tmp_path / "run")
    assert main(["analyze", str(folder), "--home", str(tmp_path / "ws"), "-q", "--values-only"]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert lines and all(line.startswith("warning") for line in lines), lines
    assert any("step_3.pt" in line for line in lines)
    assert not any("duplicate" in line for line in lines)  # notes are not printed with -q


def test_json_is_one_document_with_its_notes(tmp_path, capsys):
    folder = _run_with_copies(tmp_path / "run")
    args = ["analyze", str(folder), "--home", str(tmp_path / "ws"), "--json", "--values-only"]
    for extra in ([], ["-q"]):
        assert main([*args, *extra]) == 0
        out = capsys.readouterr()
        assert out.err == ""
        doc = json.loads(out.out)
        kinds = {n["kind"] for n in doc["notes"]}
        assert {"duplicate", "corrupt"} <= kinds


def test_summary_counts_warnings_and_notes_as_printed(tmp_path, capsys):
    folder = _run_with_copies(tmp_path / "run")
    assert main(["analyze", str(folder), "--home", str(tmp_path / "ws"), "--values-only"]) == 0
    out = capsys.readouterr()
    printed_warnings = [line for line in out.err.splitlines() if line.startswith("warning")]
    printed_notes = [line for line in out.err.splitlines() if line.startswith("note")]
    table = " ".join(out.out.split())
    assert f"│ warnings │ {len(printed_warnings)} │" in table
    assert f"│ notes │ {len(printed_notes)} │" in table
    assert len(printed_notes) >= 2 and len(printed_warnings) >= 1


def test_errors_have_no_stray_blank_line(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing"), "--home", str(tmp_path / "ws")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("specdyn: error: ") and err.count("\n") == 1


def test_ctrl_c_prints_one_line_with_what_is_stored(tmp_path, capsys, monkeypatch):
    home = tmp_path / "ws"
    specdyn.analyze(FIXTURES / "mlp-wd", home=home, steps="0,10", vectors=None)
    from specdyn.analysis import _run

    real = _run._AnalysisRun._visit
    calls = []

    def interrupt_on_the_second_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_run._AnalysisRun, "_visit", interrupt_on_the_second_step)
    args = ["analyze", str(FIXTURES / "mlp-wd"), "--home", str(home), "--steps", "0:200"]
    assert main([*args, "--values-only"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    with specdyn.open_run("mlp-wd", home=home) as run:
        done, total = run.values.steps.size, run.values.all_steps.size
    assert done == 3 and total > done
    assert err == (
        f"specdyn: interrupted: {done} of {total} steps stored in {home / 'mlp-wd.h5'}; "
        "run the same command to resume\n"
    )


def test_version_and_plain_flags(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"specdyn {specdyn.__version__}\n"
    assert main(["analyze", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "<bool>" not in help_text and "--json" in help_text and "--strict" in help_text


@pytest.mark.parametrize("bad", ["true", "1"])
def test_a_flag_takes_no_value(tmp_path, capsys, bad):
    assert main(["runs", "--home", str(tmp_path), "--json", bad]) == 2
    assert "unexpected extra argument" in capsys.readouterr().err.lower()
