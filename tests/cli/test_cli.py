"""The command line: exit codes, one-line errors, --json, runs and info."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from specdyn.cli import main


def _write_run(folder, steps=(0, 5)):
    """Two tiny nested-dict checkpoints."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for step in steps:
        sd = {
            "a.weight": torch.randn(6, 4, generator=g),
            "b.weight": torch.randn(2, 6, generator=g),
        }
        torch.save({"state_dict": sd, "global_step": step}, folder / f"step_{step}.pt")


def test_analyze_json_runs_and_info(tmp_path, capsys):
    _write_run(tmp_path / "myrun")
    home = str(tmp_path / "ws")
    assert main(["analyze", str(tmp_path / "myrun"), "--home", home, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    (run,) = payload["runs"]
    assert run["name"] == "myrun"
    assert run["steps_computed"] == [0, 5]
    assert run["n_matrices"] == 2

    assert main(["runs", "--home", home, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in runs] == ["myrun"]

    assert main(["info", "--home", home, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "myrun"

    assert main(["info", "myrun", "--home", home]) == 0
    out = capsys.readouterr().out
    assert "myrun" in out


def test_analyze_prints_a_summary_table(tmp_path, capsys):
    _write_run(tmp_path / "myrun")
    assert main(["analyze", str(tmp_path / "myrun"), "--home", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    for word in ("matrices", "skipped", "store", "time", "warnings", "duplicates"):
        assert word in out


def _analyze_missing(tmp_path, debug: str) -> subprocess.CompletedProcess:
    """`python -m specdyn analyze` on a path that does not exist, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "specdyn", "analyze", str(tmp_path / "missing"), "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, SPECDYN_DEBUG=debug),
    )


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    proc = _analyze_missing(tmp_path, debug="")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "missing" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_env_shows_the_traceback(tmp_path):
    proc = _analyze_missing(tmp_path, debug="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_bad_option_value_is_a_usage_error(tmp_path, capsys):
    _write_run(tmp_path / "r")
    code = main(
        ["analyze", str(tmp_path / "r"), "--home", str(tmp_path / "ws"), "--precision", "float16"]
    )
    assert code == 2
    code = main(
        ["analyze", str(tmp_path / "r"), "--home", str(tmp_path / "ws"), "--max-memory", "lots"]
    )
    assert code == 2


def test_runs_on_an_empty_workspace_says_how_to_start(tmp_path, capsys):
    assert main(["runs", "--home", str(tmp_path / "ws")]) == 0
    assert "specdyn analyze" in capsys.readouterr().err


def test_info_of_unknown_run_fails_cleanly(tmp_path, capsys):
    code = main(["info", "nope", "--home", str(tmp_path / "ws")])
    assert code != 0
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


class _RunsCode:
    """A pickle payload that would create a file if it were ever unpickled by pickle.load."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_and_truncated_files_are_reported_and_skipped(tmp_path, capsys):
    import pickle

    _write_run(tmp_path / "r")
    marker = tmp_path / "ran"
    with open(tmp_path / "r" / "step_9.pt", "wb") as fh:
        pickle.dump({"state_dict": _RunsCode(str(marker))}, fh)
    good = (tmp_path / "r" / "step_5.pt").read_bytes()
    (tmp_path / "r" / "step_7.pt").write_bytes(good[: len(good) // 3])
    assert main(["analyze", str(tmp_path / "r"), "--home", str(tmp_path / "ws")]) == 0
    captured = capsys.readouterr()
    assert not marker.exists()
    assert "unsafe-pickle" in captured.err and "step_9.pt" in captured.err
    assert "step_7.pt" in captured.err
    assert "warnings" in captured.out and "│ 2 " in captured.out.split("warnings", 1)[1][:40]
