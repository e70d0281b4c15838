"""The single-writer lock survives the deletion of its lock file (issue 22, finding 6).

The writer holds a kernel lock on the store file itself as well as on ``<store>.lock``,
moves it to every rebuilt file before that file appears, and a second writer needs both:
deleting the lock file (a user cleaning stale ``*.lock`` files) must not let it in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _store_crash_worker as worker
import numpy as np
import pytest
import torch
from _ckpt_factory import write_torch

import specdyn
from specdyn.errors import StoreError, StoreLockedError
from specdyn.store import StoreWriter, list_runs, open_run, store_path_for
from specdyn.store import _lock as _store_lock
from specdyn.store._lock import WriterLock, is_being_written, lock_path_for

HOOKS = ("SPECDYN_TEST_HOLD_WRITE", "SPECDYN_TEST_HOLD_REBUILD", "SPECDYN_NO_LOCK")
WORKER = Path(__file__).resolve().parents[1] / "_store_crash_worker.py"
BUSY = "being written by another specdyn process"

pytestmark = pytest.mark.skipif(
    not hasattr(_store_lock.fcntl, "F_OFD_SETLK"), reason="store locks need Linux OFD locks"
)

# A real analysis, paused between its first and second step until `go` exists.
_PAUSED_ANALYSIS = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import specdyn
folder, home, marker, go = map(Path, sys.argv[1:5])
def hold(event):
    if event.phase == "analysing" and event.step_index == 1 and not marker.exists():
        marker.write_text("holding")
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
specdyn.analyze(folder, home=home, vectors=None, on_progress=hold)
"""

# Plain h5py with HDF5's default file locking (a shared flock held while the file is open).
_PLAIN_READER = """
import sys, time
from pathlib import Path
import h5py
store, marker, go = sys.argv[1:4]
with h5py.File(store, "r") as f:
    done = f["steps/done"][()].tolist()
    Path(marker).write_text("open")
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
print(done)
"""


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch):
    for name in HOOKS:
        monkeypatch.delenv(name, raising=False)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in HOOKS}


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"writer exited with {proc.returncode}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("writer never reached its hold point")
        time.sleep(0.01)


def _open(path: Path, known: list[int]) -> StoreWriter:
    """A writer on `path` with the crash worker's matrices."""
    return StoreWriter.open(
        path,
        run_name="run",
        source_root="/ckpts/run",
        step_unit="step",
        steps=worker.step_records(known),
        matrices=worker.matrix_records(),
        skipped=[],
        aliases={},
        options={},
        provenance={},
    )


def _write(writer: StoreWriter, steps: list[int]) -> None:
    for s in steps:
        spectra, metrics, notes = worker.step_data(s)
        writer.write_step(s, spectra, metrics, notes)


def _checkpoints(folder: Path) -> Path:
    """Three small checkpoints, steps 0, 10, 20."""
    gen = torch.Generator().manual_seed(0)
    base = {
        "fc1.weight": torch.randn(6, 4, generator=gen),
        "fc2.weight": torch.randn(3, 6, generator=gen),
    }
    for i, step in enumerate((0, 10, 20)):
        write_torch(folder / f"step_{step}.pt", {k: v * (1 + i) + i for k, v in base.items()})
    return folder


def test_deleting_the_lock_file_mid_analysis_does_not_let_a_second_writer_in(
    tmp_path, one_torch_thread
):
    folder = _checkpoints(tmp_path / "run")
    home = tmp_path / "ws"
    marker, go = tmp_path / "holding", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_ANALYSIS, str(folder), str(home), str(marker), str(go)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(marker, first)
        store = store_path_for("run", home)
        lock_path_for(store).unlink()  # "cleaning stale lock files"
        with pytest.raises(StoreLockedError, match=BUSY) as err:
            specdyn.analyze(folder, home=home, vectors=None)
        assert "lock file" in str(err.value) and "deleted" in str(err.value)
        [listed] = list_runs(home)
        assert listed.status == "being written"  # readers still see the writer
        go.write_text("go")
        _out, errors = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, errors.decode()
    reference = specdyn.analyze(folder, home=tmp_path / "ref", vectors=None)
    with open_run(store) as got, open_run(reference.runs[0].store_path) as want:
        assert list(got.steps) == [0, 10, 20]
        assert got.matrices == want.matrices
        for name in want.matrices:
            assert np.allclose(got.sigma(name), want.sigma(name), rtol=1e-12, atol=0)
    assert not is_being_written(store)


def test_a_writer_killed_after_its_lock_file_was_deleted_leaves_nothing_locked(tmp_path):
    store = tmp_path / "run.h5"
    marker = tmp_path / "between"
    spec = {"known": [0, 10, 20], "stop_after": 1, "marker": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(store), json.dumps(spec)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(marker, proc)
        lock_path_for(store).unlink()
        with pytest.raises(StoreLockedError, match=BUSY):
            worker.write_store(store, [0, 10, 20])
        assert is_being_written(store)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert not is_being_written(store)
    # the kernel dropped both of the dead writer's locks
    assert worker.write_store(store, [0, 10, 20]) == [10, 20]
    with open_run(store) as run:
        assert list(run.steps) == [0, 10, 20]


def test_a_rebuilt_store_is_locked_before_it_replaces_the_old_one(tmp_path):
    store = tmp_path / "run.h5"
    with _open(store, [0, 10]) as w:
        _write(w, [0])
    before = os.stat(store).st_ino
    with _open(store, [0, 10, 20]) as w:  # a new step: the store is rebuilt and renamed over
        assert os.stat(store).st_ino != before
        lock_path_for(store).unlink()
        with pytest.raises(StoreLockedError, match=BUSY):
            _open(store, [0, 10, 20])
        assert is_being_written(store)
        _write(w, w.pending_steps)
    assert not is_being_written(store)
    with _open(store, [0, 10, 20]) as w:
        assert w.pending_steps == []


def test_a_store_another_writer_created_meanwhile_is_not_overwritten(tmp_path):
    store = tmp_path / "run.h5"
    first = WriterLock.acquire(store)  # no store yet: only the lock file guards it
    lock_path_for(store).unlink()
    second = WriterLock.acquire(store)
    try:
        ours, theirs = tmp_path / ".first.tmp", tmp_path / ".second.tmp"
        ours.write_bytes(b"first")
        theirs.write_bytes(b"second")
        second.replace_store(theirs)
        assert store.read_bytes() == b"second" and not theirs.exists()
        with pytest.raises(StoreLockedError, match="created or replaced by another process"):
            first.replace_store(ours)
        assert store.read_bytes() == b"second" and ours.exists()
        assert is_being_written(store)
    finally:
        first.release()
        second.release()
    assert not is_being_written(store)


def test_a_plain_h5py_reader_does_not_keep_a_writer_out(tmp_path):
    store = tmp_path / "run.h5"
    with _open(store, [0, 10]) as w:
        _write(w, [0])
    marker, go = tmp_path / "reading", tmp_path / "go"
    reader = subprocess.Popen(
        [sys.executable, "-c", _PLAIN_READER, str(store), str(marker), str(go)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(marker, reader)
        with _open(store, [0, 10]) as w:  # the reader's flock on the store is not ours
            _write(w, [10])
        go.write_text("go")
        out, errors = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0, errors.decode()
    assert out.decode().split() == ["[1,", "0]"]


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_left_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    store = tmp_path / "run.h5"
    lock_path_for(store).symlink_to(victim)
    with pytest.raises(StoreError, match="is a symbolic link; delete it"):
        _open(store, [0])
    assert victim.read_text() == "precious\n"
    assert not store.exists()
