"""Names cannot drive the terminal (issue 22, finding 8).

A checkpoint or run folder named with ANSI escapes, a bell, a newline, C1 controls, bidi
overrides or undecodable bytes is printed with visible escapes in warnings, tables,
errors and progress; rich markup in a name still prints literally; --json stays JSON.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from _ckpt_factory import write_torch
from rich.console import Console

from specdyn.analysis import Progress
from specdyn.cli import main
from specdyn.cli._output import Output, printable

HOSTILE = "step_3\x1b]0;TITLE\x07\x1b[2J…\nFAKE: all good.pt"
RUN = "run\x1b[2J\r\nFAKE: run \u202eevil\u2066"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\r", "\u202e", "\u2066")


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one warning per line, no folded cells
    for name in ("FORCE_COLOR", "SPECDYN_HOME", "SPECDYN_DEBUG"):
        monkeypatch.delenv(name, raising=False)


def _state(i: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(i)
    return {
        "fc1.weight": torch.randn(5, 4, generator=gen),
        "fc2.weight": torch.randn(3, 5, generator=gen),
    }


def _hostile_folder(tmp_path: Path) -> Path:
    """A run folder with a hostile name holding hostile file names: a duplicate of step 3
    (a "duplicate" note names it), a corrupt file, undecodable bytes, rich markup."""
    folder = tmp_path / RUN
    write_torch(folder / "step_0.pt", _state(0))
    write_torch(folder / "step_3.pt", _state(3))
    write_torch(folder / HOSTILE, _state(3))
    (folder / "step_5\x9b\x7f\u202e\nFAKE: corrupt.pt").write_bytes(b"not a checkpoint at all")
    write_torch(Path(os.fsdecode(os.fsencode(str(folder)) + b"/step_7\xff.pt")), _state(7))
    write_torch(folder / "step_9[bold red]loud[/].pt", _state(9))
    return folder


def _cli(argv: list[str], monkeypatch) -> tuple[int, str, str]:
    """Run the CLI with byte streams like a pipe: stdout strict UTF-8 (as Python's own),
    stderr with backslashreplace; returns (code, stdout, stderr) decoded strictly."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(
        err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True
    )
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", out)
        m.setattr(sys, "stderr", err)
        code = main(argv)
    return code, out_bytes.getvalue().decode("utf-8"), err_bytes.getvalue().decode("utf-8")


def _assert_inert(text: str) -> None:
    """No raw control, bidi or surrogate character, and no line forged to start with FAKE:."""
    for raw in RAW:
        assert raw not in text, f"{raw!r} printed raw"
    assert not re.search(r"[\ud800-\udfff]", text)
    for line in text.splitlines():
        assert not re.match(r"[\s│┃|]*FAKE:", line), line


def test_printable_escapes_every_control_and_bidi_character():
    assert printable(HOSTILE) == "step_3\\x1b]0;TITLE\\x07\\x1b[2J…\\nFAKE: all good.pt"
    assert printable("a\tb\rc\x00d\x7fe\x9bf") == "a\\tb\\rc\\x00d\\x7fe\\x9bf"
    bidi = "".join(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
    assert printable(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert printable("x\udcffy\u2028z") == "x\\udcffy\\u2028z"
    assert printable("ünï cødé [red]x[/] ✓") == "ünï cødé [red]x[/] ✓"  # kept as is


def test_hostile_names_print_as_escapes_in_analyze_runs_and_info(
    tmp_path, monkeypatch, one_torch_thread
):
    folder = _hostile_folder(tmp_path)
    home = str(tmp_path / "ws")
    code, out, err = _cli(["analyze", str(folder), "--home", home, "--values-only"], monkeypatch)
    assert code == 0, err
    _assert_inert(out + err)
    assert "step_3\\x1b]0;TITLE\\x07\\x1b[2J…\\nFAKE: all good.pt" in err  # the duplicate note
    assert "step_5\\x9b\\x7f\\u202e\\nFAKE: corrupt.pt" in err  # the corrupt-file warning
    assert "run\\x1b[2J\\r\\nFAKE: run \\u202eevil\\u2066" in out  # the summary table
    code, out, err = _cli(["analyze", str(folder), "--home", home, "--json"], monkeypatch)
    assert code == 0, err
    _assert_inert(out + err)
    payload = json.loads(out)
    assert payload["runs"][0]["name"] == RUN  # JSON carries the name exactly, escaped
    for argv in (["runs", "--home", home], ["info", RUN, "--home", home, "--matrices"]):
        code, out, err = _cli(argv, monkeypatch)
        assert code == 0, err
        _assert_inert(out + err)
        assert "FAKE: run \\u202eevil" in out
    code, out, err = _cli(["runs", "--home", home, "--json"], monkeypatch)
    assert code == 0 and json.loads(out)[0]["name"] == RUN
    _assert_inert(out + err)


def test_rich_markup_in_a_name_prints_literally(tmp_path, monkeypatch, one_torch_thread):
    folder = tmp_path / "plain"
    write_torch(folder / "step_3.pt", _state(0))
    write_torch(folder / "step_3[bold red]loud[/].pt", _state(0))  # a duplicate: noted
    code, out, err = _cli(["analyze", str(folder), "--home", str(tmp_path / "ws")], monkeypatch)
    assert code == 0, err
    assert "step_3[bold red]loud[/].pt holds the same weights" in err


def test_errors_naming_hostile_files_are_one_escaped_line(tmp_path, monkeypatch):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "step_5\x1b]0;TITLE\x07\nFAKE: all good.pt").write_bytes(b"garbage")
    code, out, err = _cli(["analyze", str(folder), "--home", str(tmp_path / "ws")], monkeypatch)
    assert code == 1
    _assert_inert(out + err)
    assert err.strip().startswith("specdyn: error: ") and "\n" not in err.strip()
    assert "step_5\\x1b]0;TITLE\\x07\\nFAKE: all good.pt" in err
    code, out, err = _cli(["info", "nope\x1b[2J\nFAKE: x", "--home", str(tmp_path)], monkeypatch)
    assert code == 1
    _assert_inert(out + err)
    assert "nope\\x1b[2J\\nFAKE: x" in err
    code, out, err = _cli(["plot", "rank", "a", "b\x1b[2J\nFAKE: usage"], monkeypatch)
    assert code == 2  # a usage error quoting the arguments as given
    _assert_inert(out + err)
    assert "b\\x1b[2J\\nFAKE: usage" in err


def test_progress_descriptions_escape_the_run_name():
    output = Output()
    screen = io.StringIO()
    output.err = Console(file=screen, force_terminal=True, width=200, highlight=False)
    with output.analysis_progress() as on_progress:
        for phase in ("hashing", "analysing"):
            on_progress(Progress(RUN, 0, 0, 1, 1, 2, phase))
    text = screen.getvalue()
    assert "\x1b]0;" not in text and "\x07" not in text and "\x1b[2J" not in text
    assert "\u202e" not in text and "\r\nFAKE" not in text
    assert "run\\x1b[2J\\r\\nFAKE: run \\u202eevil\\u2066" in text
