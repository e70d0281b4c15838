"""A step is marked done only over data that is on disk (issue 22, finding 1).

Every write of a step can fail (full disk, a file size limit, an I/O error) or be lost
without an error; after each, the store must stay openable with no step marked done
over data that was not written, and a resume must end equal to an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _stores import store_contents

import specdyn
from specdyn.errors import StoreWriteError
from specdyn.store import _writer as store_module

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mlp-wd"
STEPS = "0,1000,4000"

_contents = store_contents


def _analyze(home: Path, **kwargs):
    return specdyn.analyze(FIXTURE, home=home, steps=STEPS, **kwargs)


@pytest.fixture(scope="module")
def reference_home(tmp_path_factory) -> Path:
    """The workspace of the uninterrupted run."""
    home = tmp_path_factory.mktemp("reference")
    _analyze(home)
    return home


@pytest.fixture(scope="module")
def reference(reference_home) -> dict[str, bytes]:
    """The uninterrupted run's store."""
    return _contents(reference_home / "mlp-wd.h5")


def _assert_no_done_step_over_missing_data(path: Path) -> None:
    """Each done step has finite σ and finite diagonals in each section marked done, and
    every checksum matches."""
    report = specdyn.verify(path)
    assert report.ok, report.damage[:3]
    with specdyn.open_run(path) as run:
        for matrix in run.matrices:
            assert np.isfinite(run.sigma(matrix)).all(), matrix
    with h5py.File(path, "r") as f:
        for section in ("alignment", "agreement"):
            done = np.asarray(f[f"{section}/done"][()], dtype=bool)
            for name, ds in f[f"{section}/diagonal"].items():
                rows = np.asarray(ds[()])[done]
                assert not np.isnan(rows).all(axis=-1).any(), (section, name)
        done = np.asarray(f["vectors/done"][()], dtype=bool)
        for side in ("u", "v"):
            for name, ds in f[f"vectors/{side}"].items():
                assert np.isfinite(np.asarray(ds[()])[done]).all(), (side, name)


def _written(monkeypatch, home: Path) -> list[tuple[str, int]]:
    """(dataset path, row) of each row one uninterrupted run writes through `write_row`."""
    calls = []
    real = store_module.write_row

    def counting(ds, row, value):
        calls.append((ds.name, int(np.asarray(row).reshape(-1)[0])))
        real(ds, row, value)

    monkeypatch.setattr(store_module, "write_row", counting)
    _analyze(home)
    monkeypatch.setattr(store_module, "write_row", real)
    return calls


def _count_writes(monkeypatch, home: Path) -> int:
    """How many rows one uninterrupted run writes through `write_row`."""
    return len(_written(monkeypatch, home))


def _fault_points(calls: list[tuple[str, int]]) -> list[int]:
    """The 1-based write numbers the fault test fails at: every kind of write once.

    Each step's commit writes a sequence of datasets that starts at the first σ dataset;
    within a run of consecutive writes to one top-level group (the 19 ``/metrics/*``, the
    ``/vectors/u|v/*``, ...) every write goes through the same code with the same state
    around it. So: all writes before the first commit (provenance); in each commit whose
    sequence of datasets is new (the first; the last step's, which has no vectors) the
    first and last write of every such run; in a commit that repeats an earlier sequence,
    its first and last write. Every done flag is failed at every step.
    """
    first_sigma = next(name for name, _ in calls if name.startswith("/sigma/"))
    starts = [n for n, (name, _) in enumerate(calls, 1) if name == first_sigma]
    points = set(range(1, starts[0]))
    seen: set[tuple[str, ...]] = set()
    groups = [name.split("/")[1] for name, _ in calls]
    for lo, hi in zip(starts, [*starts[1:], len(calls) + 1], strict=True):
        sequence = tuple(name for name, _ in calls[lo - 1 : hi - 1])
        points |= {lo, hi - 1}
        # the done flags decide what a reader trusts: each is failed at every step
        points |= {n for n in range(lo, hi) if calls[n - 1][0].endswith("/done")}
        if sequence in seen:
            continue
        seen.add(sequence)
        for n in range(lo + 1, hi - 1):
            if groups[n - 1] != groups[n - 2] or groups[n - 1] != groups[n]:
                points.add(n)
    return sorted(points)


def _failing_at(n: int, lose: bool):
    """A `write_row` whose n-th call raises EIO (or, with `lose`, silently writes nothing)."""
    real = store_module.write_row
    count = [0]

    def write(ds, row, value):
        count[0] += 1
        if count[0] == n:
            if lose:
                return
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(ds, row, value)

    return write


def test_a_fault_at_any_write_leaves_a_store_that_resumes_to_the_uninterrupted_one(
    tmp_path, monkeypatch, reference, one_torch_thread
):
    calls = _written(monkeypatch, tmp_path / "count")
    assert len(calls) > 30  # provenance, then σ, metrics, sections and flags of three steps
    points = _fault_points(calls)
    # every group written, and every done flag of every step, is failed at least once
    assert {calls[n - 1][0].split("/")[1] for n in points} == {n.split("/")[1] for n, _ in calls}
    flags = [n for n, (name, _) in enumerate(calls, 1) if name.endswith("/done")]
    assert set(flags) <= set(points) and len(points) < len(calls) / 2
    for n in points:
        home = tmp_path / f"fault-{n}"
        monkeypatch.setattr(store_module, "write_row", _failing_at(n, lose=False))
        with pytest.raises(StoreWriteError, match="Input/output error") as info:
            _analyze(home)
        assert "\n" not in str(info.value) and "mlp-wd.h5" in str(info.value)
        monkeypatch.undo()
        _assert_no_done_step_over_missing_data(home / "mlp-wd.h5")
        _analyze(home)
        assert _contents(home / "mlp-wd.h5") == reference, f"fault at write {n}"


def test_a_write_lost_without_an_error_is_caught_before_the_step_is_marked_done(
    tmp_path, monkeypatch, reference, one_torch_thread
):
    total = _count_writes(monkeypatch, tmp_path / "count")
    for n in sorted({1, 2, 3, total // 3, total // 2, total - 1, total}):
        home = tmp_path / f"lost-{n}"
        monkeypatch.setattr(store_module, "write_row", _failing_at(n, lose=True))
        with pytest.raises(StoreWriteError, match="reads back different"):
            _analyze(home)
        monkeypatch.undo()
        _assert_no_done_step_over_missing_data(home / "mlp-wd.h5")
        _analyze(home)
        assert _contents(home / "mlp-wd.h5") == reference, f"write {n} lost"


def _limit_fsize(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _cli(home: Path, *extra: str, limit: int | None = None, env=None):
    cmd = [sys.executable, "-m", "specdyn", "analyze", str(FIXTURE), "--home", str(home)]
    cmd += ["--steps", STEPS, "-q", *extra]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=None if limit is None else _limit_fsize(limit),
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_a_file_size_limit_ends_in_one_line_and_a_resumable_store(
    tmp_path, reference, reference_home, fraction
):
    limit = int((reference_home / "mlp-wd.h5").stat().st_size * fraction)
    home = tmp_path / "limited"
    run = _cli(home, limit=limit)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])  # never a signal
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specdyn: error:"), run.stderr[-2000:]
    assert "file too large" in lines[0].lower()
    assert not [p.name for p in home.glob(".*.tmp")]  # no half-built file left behind
    if (home / "mlp-wd.h5").exists():
        _assert_no_done_step_over_missing_data(home / "mlp-wd.h5")
    resumed = _cli(home)
    assert resumed.returncode == 0, resumed.stderr
    assert _contents(home / "mlp-wd.h5") == reference


def test_killed_in_a_write_then_resumed_on_a_full_file_then_resumed_again(tmp_path, reference):
    """The reported sequence: killed inside the first step's write, resumed under
    RLIMIT_FSIZE (which ended in a segfault with every step marked done over NaN)."""
    home = tmp_path / "home"
    flag = tmp_path / "held"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPECDYN_TEST_HOLD_WRITE": str(flag)}
    cmd = [sys.executable, "-m", "specdyn", "analyze", str(FIXTURE), "--home", str(home)]
    proc = subprocess.Popen(
        [*cmd, "--steps", STEPS, "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert flag.exists(), proc.stderr.read() if proc.poll() is not None else "not held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    store = home / "mlp-wd.h5"
    for limit in (200_000, 400_000):
        run = _cli(home, limit=limit)
        assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
        assert run.stderr.count("\n") == 1 and "file too large" in run.stderr.lower()
        _assert_no_done_step_over_missing_data(store)
    resumed = _cli(home)
    assert resumed.returncode == 0, resumed.stderr
    assert _contents(store) == reference
