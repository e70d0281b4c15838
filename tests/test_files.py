"""Atomic writes (`specdyn.files.atomic_output`): the new file replaces the old one whole, or
the old one stays, whatever happens to the writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specdyn.files import atomic_output, fsync_dir

_CHILD = """
import sys, time
from pathlib import Path
from specdyn.files import atomic_output

target, flag = Path(sys.argv[1]), Path(sys.argv[2])
with atomic_output(target) as temp:
    with open(temp, "wb") as f:
        f.write(b"half of the new")
        f.flush()
        flag.write_text("writing")
        time.sleep(600)
"""


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_output(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".out.bin.tmp-")
        assert not temp.exists()
        temp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible before the rename
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_new_file_is_created(tmp_path):
    target = tmp_path / "new.bin"
    with atomic_output(target, temp_name="new.bin.partial") as temp:
        assert temp == tmp_path / "new.bin.partial"
        temp.write_bytes(b"data")
    assert target.read_bytes() == b"data" and not temp.exists()


def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_output(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_body_that_writes_nothing_fails_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        with atomic_output(target):
            pass
    assert target.read_bytes() == b"old"


def test_a_failing_replace_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    seen = []

    def refuse(temp: Path, path: Path) -> None:
        seen.append((temp.read_bytes(), path))
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with atomic_output(target, replace=refuse) as temp:
            temp.write_bytes(b"new")
    assert seen == [(b"new", target)]  # called with the finished file
    assert target.read_bytes() == b"old" and not temp.exists()


@pytest.mark.parametrize("name", ["", "sub/x.tmp", "out.bin"])
def test_a_temporary_name_must_be_another_file_in_the_same_folder(tmp_path, name):
    with pytest.raises(ValueError, match="temp_name"):
        with atomic_output(tmp_path / "out.bin", temp_name=name):
            pass


def test_fsync_dir_never_raises(tmp_path):
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")


def test_a_writer_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    flag = tmp_path / "flag"
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(target), str(flag)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, "the writer died before writing"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_bytes() == b"old"
    # the killed writer's temporary file stays, beside the target and hidden
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("out.bin", "flag")]
    assert leftovers == [f".out.bin.tmp-{proc.pid}"]
