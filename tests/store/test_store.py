"""The HDF5 store: round trip, evolution, locking, kill -9 safety, read API."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import _store_crash_worker as worker
import h5py
import numpy as np
import pytest

from specdyn.errors import StoreError, StoreLockedError, StoreMismatchError
from specdyn.metrics import METRIC_NAMES, spectral_metrics
from specdyn.store import SCHEMA_VERSION, StepRecord, StoreWriter, open_run, verify_store
from specdyn.store import _lock as _store_lock

WORKER = Path(__file__).resolve().parents[1] / "_store_crash_worker.py"
HOOKS = ("SPECDYN_TEST_HOLD_WRITE", "SPECDYN_TEST_HOLD_REBUILD", "SPECDYN_NO_LOCK")
STEPS = [0, 10, 20, 30, 40, 50]


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch):
    for name in HOOKS:
        monkeypatch.delenv(name, raising=False)


def _open(path, known, **overrides):
    """A writer on `path` with the worker's matrices and options (overridable)."""
    kwargs = dict(
        run_name="run",
        source_root="/ckpts/run",
        step_unit="step",
        steps=worker.step_records(known),
        matrices=worker.matrix_records(),
        skipped=[("embed_in.bias", "1-D parameter"), ("layers.0.attention.bias", "buffer")],
        aliases={"embed_out.weight.tied": "embed_out.weight"},
        options={"precision": "float64", "exact": False, "include": [], "exclude": []},
        provenance={"argv": ["test"]},
    )
    kwargs.update(overrides)
    return StoreWriter.open(path, **kwargs)


def _write(writer, steps):
    """Write the worker's data for `steps`."""
    for s in steps:
        spectra, metrics, notes = worker.step_data(s)
        writer.write_step(s, spectra, metrics, notes)


def _contents(path: Path) -> dict:
    """Everything a store holds except what differs between invocations
    (provenance records, which invocation wrote a step, creation time)."""
    out = {}
    with h5py.File(path, "r") as f:
        for key, value in f.attrs.items():
            if key != "created":
                out["@" + key] = value

        def visit(name, obj):
            if (
                isinstance(obj, h5py.Dataset)
                and not name.startswith("provenance")
                and not name.startswith("checksums")  # cover invocations and times
                and name != "steps/invocation"
            ):
                out[name] = obj[()]

        f.visititems(visit)
    return out


def _assert_same_store(a: Path, b: Path) -> None:
    """The two stores hold the same steps, records and numbers, and both verify."""
    for path in (a, b):
        report = verify_store(path)
        assert report.ok and not report.uncommitted, report.damage[:3]
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        x, y = np.asarray(ca[key]), np.asarray(cb[key])
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), key
        else:
            assert np.array_equal(x, y), key


def _reference(tmp_path: Path, known, big=False) -> Path:
    """An uninterrupted store of `known` steps, written in-process."""
    path = tmp_path / "reference" / "run.h5"
    worker.write_store(path, list(known), big=big)
    return path


def _check_done_data(path: Path, big=False) -> list[int]:
    """Open with plain h5py and with open_run; every done step holds exactly its data."""
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "specdyn-store"
    with open_run(path) as run:
        for name in run.matrices:
            sigma = run.sigma(name)
            for t, step in enumerate(run.steps):
                expected = worker.step_data(int(step), big)[0][name][0]
                assert np.array_equal(sigma[t], expected), (name, step)
        return [int(s) for s in run.steps]


# ----------------------------------------------------------------------------- subprocesses


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in HOOKS}
    env.update(extra)
    return env


def _start(store: Path, spec: dict, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(store), json.dumps(spec)],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run(store: Path, spec: dict) -> None:
    done = subprocess.run(
        [sys.executable, str(WORKER), str(store), json.dumps(spec)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("worker never reached its hold point")
        time.sleep(0.005)


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------- round trip and layout


def test_round_trip_returns_what_was_written(tmp_path):
    path = tmp_path / "ws" / "run.h5"
    with _open(path, STEPS, provenance={"argv": ["analyze", "x"], "device": "cpu"}) as w:
        assert w.pending_steps == STEPS and w.done_steps == set()
        _write(w, STEPS)
        assert w.pending_steps == [] and w.done_steps == set(STEPS)
    with open_run(path) as run:
        assert run.name == "run" and run.step_unit == "step" and run.path == path
        assert run.steps.dtype == np.int64 and list(run.steps) == STEPS
        assert run.matrices == [name for name, _, _ in worker.SMALL]
        assert run.metric_names == list(METRIC_NAMES)
        everything = {n: run.metric(n) for n in METRIC_NAMES}
        for j, (name, m, n) in enumerate(worker.SMALL):
            sigma = run.sigma(name)
            assert sigma.shape == (len(STEPS), min(m, n)) and sigma.dtype == np.float64
            for t, step in enumerate(STEPS):
                expected = worker.step_data(step)[0][name][0]
                assert np.array_equal(sigma[t], expected)
            # the stored metrics are the values given, for every matrix and step
            recomputed = spectral_metrics(sigma)
            for metric in METRIC_NAMES:
                one = run.metric(metric, name)
                assert one.shape == (len(STEPS),)
                np.testing.assert_array_equal(one, recomputed[metric])
                np.testing.assert_array_equal(everything[metric][:, j], one)
        # [T, M], the axis order of /metrics in the file
        assert everything["spectral_norm"].shape == (len(STEPS), len(worker.SMALL))
        info = run.matrix_info("layers.0.attention.query_key_value.weight[q]")
        assert info == {
            "name": "layers.0.attention.query_key_value.weight[q]",
            "index": 2,
            "param": "layers.0.attention.query_key_value.weight",
            "key": "gpt_neox.layers.0.attention.query_key_value.weight",
            "kind": "qkv_part",
            "part": "q",
            "shape": [8, 8],
            "rank": 8,
            "source_shape": [24, 8],
            "source_dtype": "float16",
            "method": "svdvals-f64",
            "methods": {"svdvals-f64": len(STEPS)},
        }
        assert run.matrix_info("embed_in.weight")["part"] is None
        assert run.skipped == [
            ("embed_in.bias", "1-D parameter"),
            ("layers.0.attention.bias", "buffer"),
        ]
        assert run.aliases == {"embed_out.weight.tied": "embed_out.weight"}
        assert run.options == {"precision": "float64", "exact": False, "include": [], "exclude": []}
        assert run.notes == {
            0: ["step 0: note ü"],
            20: ["step 20: note ü"],
            40: ["step 40: note ü"],
        }
        assert run.provenance == [{"argv": ["analyze", "x"], "device": "cpu"}]
        sources = run.step_sources
        records = worker.step_records(STEPS)
        assert [s["step"] for s in sources] == STEPS
        for src, rec in zip(sources, records, strict=True):
            assert (
                StepRecord(
                    **{
                        k: src[k]
                        for k in ("step", "epoch", "source", "format", "size", "mtime", "sha256")
                    }
                )
                == rec
            )
            assert src["done"] and src["invocation"] == 0
        summary = run.info()
        json.dumps(summary)
        assert summary["steps_done"] == summary["steps_total"] == len(STEPS)
        assert (summary["first_step"], summary["last_step"]) == (0, 50)
        assert summary["matrices"] == len(worker.SMALL)
        assert summary["skipped"] == {"1-D parameter": 1, "buffer": 1}
        assert summary["schema_version"] == SCHEMA_VERSION
        assert summary["size_bytes"] == path.stat().st_size
        assert summary["methods"] == {
            "svdvals-f64": 3 * len(STEPS),
            "gram-eigvalsh-f64": 3 * len(STEPS),
        }


def test_plain_h5py_sees_the_documented_layout(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0, 10, 20]) as w:
        _write(w, [10])
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "specdyn-store" and f.attrs["schema_version"] == SCHEMA_VERSION
        for key in ("run_name", "source_root", "step_unit", "created", "options", "metric_names"):
            assert key in f.attrs
        assert f["steps/step"].dtype == np.int64 and list(f["steps/step"][()]) == [0, 10, 20]
        assert list(f["steps/done"][()]) == [0, 1, 0] and f["steps/done"].dtype == np.uint8
        assert f["steps/epoch"][()].tolist() == [0, 1, 2]
        assert f["steps/sha256"].asstr()[1] == worker.step_records([10])[0].sha256
        assert f["matrices/name"].asstr()[()].tolist() == [n for n, _, _ in worker.SMALL]
        assert f["matrices/shape"][()].tolist() == [[m, n] for _, m, n in worker.SMALL]
        sigma = f["sigma/embed_in.weight"]
        assert sigma.shape == (3, 12) and sigma.dtype == np.float64
        assert np.isnan(sigma[0]).all() and np.isnan(sigma[2]).all() and np.isfinite(sigma[1]).all()
        assert f["metrics/stable_rank"].shape == (3, len(worker.SMALL))
        assert f["matrices/method"].shape == (3, len(worker.SMALL))
        assert f["provenance/used"][()].sum() == 1
        # everything written per step is contiguous and allocated in full
        for name in (
            "sigma/embed_in.weight",
            "metrics/entropy",
            "steps/done",
            "steps/notes",
            "matrices/method",
        ):
            ds = f[name]
            assert ds.chunks is None and ds.id.get_storage_size() == ds.size * ds.dtype.itemsize


def _data_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of the raw data of every dataset of a store."""
    out = []
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_storage_size():
                out.append((obj.id.get_offset(), obj.id.get_storage_size()))

        f.visititems(visit)
    return out


def _metadata_bytes(path: Path, extents) -> bytes:
    data = bytearray(path.read_bytes())
    for offset, size in extents:
        data[offset : offset + size] = bytes(size)
    return bytes(data)


def test_writing_steps_changes_only_preallocated_raw_data(tmp_path):
    # the crash-safety argument: after creation, every write (a step, a done flag,
    # a provenance record) lands inside already allocated raw data; HDF5 metadata
    # (superblock, object headers, heaps, B-trees) is never rewritten in place
    path = tmp_path / "run.h5"
    with _open(path, STEPS):
        pass
    extents = _data_extents(path)
    before = _metadata_bytes(path, extents)
    size = path.stat().st_size
    with _open(path, STEPS) as w:
        _write(w, [0, 30])
    with _open(path, STEPS) as w:
        _write(w, [50])
    assert path.stat().st_size == size
    assert _data_extents(path) == extents
    assert _metadata_bytes(path, extents) == before
    assert path.read_bytes() != before  # the data itself did change


def test_write_step_checks_its_input_before_writing(tmp_path):
    path = tmp_path / "run.h5"
    spectra, metrics, _ = worker.step_data(10)
    with _open(path, [0, 10]) as w:
        with pytest.raises(ValueError, match="missing embed_out.weight"):
            w.write_step(10, {k: v for k, v in spectra.items() if k != "embed_out.weight"}, metrics)
        with pytest.raises(ValueError, match="unknown extra"):
            w.write_step(10, {**spectra, "extra": spectra["embed_in.weight"]}, metrics)
        bad = dict(spectra, **{"embed_in.weight": (np.ones(5), "m")})
        with pytest.raises(ValueError, match=r"expected \(12,\)"):
            w.write_step(10, bad, metrics)
        with pytest.raises(ValueError, match="missing entropy"):
            w.write_step(
                10, spectra, {k: {n: 0.0 for n in METRIC_NAMES if n != "entropy"} for k in metrics}
            )
        with pytest.raises(ValueError, match="longer than 64 bytes"):
            w.write_step(
                10,
                dict(spectra, **{"embed_in.weight": (spectra["embed_in.weight"][0], "x" * 65)}),
                metrics,
            )
        with pytest.raises(ValueError, match="not a step"):
            w.write_step(5, spectra, metrics)
        assert w.pending_steps == [0, 10]
        w.write_step(10, spectra, metrics)
        with pytest.raises(ValueError, match="already done"):
            w.write_step(10, spectra, metrics)
    with pytest.raises(StoreError, match="closed"):
        w.write_step(0, *worker.step_data(0)[:2])
    with open_run(path) as run:
        assert list(run.steps) == [10]
    with h5py.File(path, "r") as f:
        assert np.isnan(f["sigma/embed_in.weight"][0]).all()


# ----------------------------------------------------------------------------- evolution


def test_resume_keeps_finished_steps_and_ends_like_an_uninterrupted_run(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, STEPS) as w:
        _write(w, [0, 10])
    with h5py.File(path, "r") as f:
        first = f["sigma/embed_out.weight"][:2].copy()
    with _open(path, STEPS) as w:
        assert w.done_steps == {0, 10} and w.pending_steps == [20, 30, 40, 50]
        assert w.changed_steps == []
        _write(w, w.pending_steps)
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["sigma/embed_out.weight"][:2], first)
        assert f["steps/invocation"][()].tolist() == [0, 0, 1, 1, 1, 1]
    _assert_same_store(path, _reference(tmp_path, STEPS))
    with _open(path, STEPS) as w:
        assert w.pending_steps == []
    with open_run(path) as run:
        assert len(run.provenance) == 3


def test_growth_adds_new_steps_keeps_old_data_and_sorts(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [10, 30]) as w:
        _write(w, [10, 30])
    with open_run(path) as run:
        old = {name: run.sigma(name) for name in run.matrices}
        old_metrics = run.metric("entropy")
    inode = path.stat().st_ino
    with _open(path, [0, 20, 30, 40]) as w:
        assert w.done_steps == {10, 30}
        assert w.pending_steps == [0, 20, 40]
        assert path.stat().st_ino != inode  # grown by a new file renamed over the old one
        with open_run(path) as run:
            assert list(run.all_steps) == [0, 10, 20, 30, 40]
            assert list(run.steps) == [10, 30]
            for name, sigma in old.items():
                assert np.array_equal(run.sigma(name), sigma)
            assert np.array_equal(run.metric("entropy"), old_metrics)
            assert len(run.provenance) == 2
        _write(w, w.pending_steps)
    assert not list(tmp_path.glob(".*.tmp"))
    _assert_same_store(path, _reference(tmp_path, [0, 10, 20, 30, 40]))


def test_growth_accepts_the_matrices_in_another_order(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]) as w:
        _write(w, [0])
    with _open(path, [0, 10], matrices=worker.matrix_records()[::-1]) as w:
        _write(w, [10])
    with open_run(path) as run:
        assert run.matrices == [n for n, _, _ in worker.SMALL][::-1]
        for name in run.matrices:
            expected = [worker.step_data(s)[0][name][0] for s in (0, 10)]
            assert np.array_equal(run.sigma(name), np.stack(expected))
            entropy = run.metric("entropy", name)
            assert np.array_equal(entropy, spectral_metrics(np.stack(expected))["entropy"])


def test_overwrite_rebuilds_from_scratch(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0, 10]) as w:
        _write(w, [0, 10])
    other = {"precision": "float32", "exact": False, "include": [], "exclude": []}
    with _open(path, [10, 20], options=other, source_root="/elsewhere", overwrite=True) as w:
        assert w.done_steps == set() and w.pending_steps == [10, 20]
        with open_run(path) as run:
            assert list(run.all_steps) == [10, 20] and run.steps.size == 0
            assert run.options == other and len(run.provenance) == 1
            assert run.info()["source_root"] == "/elsewhere"
        _write(w, [10])
    with open_run(path) as run:
        assert list(run.steps) == [10]


def test_a_store_of_another_run_is_refused(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]) as w:
        _write(w, [0])
    before = path.read_bytes()
    with pytest.raises(
        StoreMismatchError, match=r"/ckpts/run, not of /other/run; use name .* overwrite=True"
    ) as err:
        _open(path, [0], source_root="/other/run")
    # a Python caller reads the parameters, the CLI the flags (errors.option_ref)
    assert re.search(r"; use --name .* --overwrite to replace it$", err.value.render(cli=True))
    assert path.read_bytes() == before
    with _open(path, [0]) as w:  # the refused open released the lock
        assert w.pending_steps == []


def test_changed_options_are_listed_and_refused(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]):
        pass
    other = {"precision": "float32", "exact": True, "include": [], "exclude": []}
    with pytest.raises(StoreMismatchError) as err:
        _open(path, [0], options=other)
    text = str(err.value)
    assert "exact: False in the store, True now" in text
    assert "precision: 'float64' in the store, 'float32' now" in text
    assert "include" not in text and "use overwrite=True to recompute" in text
    assert "use --overwrite to recompute" in err.value.render(cli=True)
    assert "\n" not in text


def test_changed_matrices_or_unit_are_refused(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]):
        pass
    mats = worker.matrix_records()
    with pytest.raises(StoreMismatchError, match="missing now: embed_out.weight"):
        _open(path, [0], matrices=mats[:-1])
    grown = replace(mats[0], shape=(13, 40), source_shape=(13, 40))
    with pytest.raises(
        StoreMismatchError, match="embed_in.weight was linear 12x40 .* now linear 13x40"
    ):
        _open(path, [0], matrices=[grown, *mats[1:]])
    with pytest.raises(StoreMismatchError, match="counts steps but these checkpoints count epochs"):
        _open(path, [0], step_unit="epoch")
    with pytest.raises(StoreMismatchError, match="metrics"):
        _open(path, [0], metric_names=["entropy"])


def test_changed_checkpoints_are_reported_not_recomputed(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0, 10, 20]) as w:
        _write(w, [0, 10])
    records = worker.step_records([0, 10, 20])
    changed = replace(records[1], size=5, sha256="f" * 64, mtime=2e9)
    touched = replace(records[0], mtime=2e9, source="/ckpts/run/moved_0.pt")  # same content
    with _open(path, [0, 10, 20], steps=[touched, changed, records[2]]) as w:
        assert w.pending_steps == [20]
        assert w.done_steps == {0, 10}
        assert len(w.changed_steps) == 1
        step, source, what = w.changed_steps[0]
        assert (step, source) == (10, "/ckpts/run/step_10.pt")
        assert "size 1010 -> 5 bytes" in what and "sha256" in what
    with open_run(path) as run:
        assert run.step_sources[1]["size"] == 1010  # the analysed file's record is kept
        assert np.array_equal(
            run.sigma("embed_in")[1], worker.step_data(10)[0]["embed_in.weight"][0]
        )
    # without hashes the mtime decides
    unhashed = [replace(r, sha256="") for r in records]
    path2 = tmp_path / "b" / "run.h5"
    with _open(path2, [0], steps=unhashed[:1]) as w:
        _write(w, [0])
    with _open(path2, [0], steps=[replace(unhashed[0], mtime=2e9)]) as w:
        assert [c[0] for c in w.changed_steps] == [0] and "modified" in w.changed_steps[0][2]


def test_a_pending_step_takes_its_new_source_record(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0, 10]) as w:
        _write(w, [0])
    records = worker.step_records([0, 10])
    newer = replace(records[1], size=77, sha256="e" * 64)
    with _open(path, [0, 10], steps=[records[0], newer]) as w:
        assert w.changed_steps == [] and w.pending_steps == [10]
    with open_run(path) as run:
        assert run.step_sources[1]["size"] == 77 and run.step_sources[1]["sha256"] == "e" * 64
        assert list(run.steps) == [0]


def test_provenance_keeps_every_invocation_beyond_the_preallocated_slots(tmp_path):
    path = tmp_path / "run.h5"
    for i in range(20):
        with _open(path, [0, 10], provenance={"i": i}) as w:
            if i == 3:
                _write(w, [0])
    with open_run(path) as run:
        assert [p["i"] for p in run.provenance] == list(range(20))
        assert run.step_sources[0]["invocation"] == 3
        assert list(run.steps) == [0]


def test_long_notes_are_cut_with_a_count_not_dropped(tmp_path):
    path = tmp_path / "run.h5"
    notes = [f"note {i}: " + "x" * 200 for i in range(100)]
    with _open(path, [0]) as w:
        spectra, metrics, _ = worker.step_data(0)
        w.write_step(0, spectra, metrics, notes)
    with open_run(path) as run:
        stored = run.notes[0]
    kept = len(stored) - 1
    assert 5 < kept < 100 and stored[:kept] == notes[:kept]
    assert stored[-1] == f"... {100 - kept} more notes not stored (see the analyze output)"


# ----------------------------------------------------------------------------- locking and readers


def test_a_second_writer_is_refused_while_the_first_writes(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]):
        with pytest.raises(StoreLockedError) as err:
            _open(path, [0])
        assert f"being written by another specdyn process (pid {os.getpid()})" in str(err.value)
        assert "wait for it or use another home/name" in str(err.value)
        assert "wait for it or use another --home/--name" in err.value.render(cli=True)
    with _open(path, [0]) as w:
        assert w.pending_steps == [0]


def test_a_filesystem_without_locks_says_how_to_proceed(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_store_lock.fcntl, "flock", no_locks)
    path = tmp_path / "run.h5"
    with pytest.raises(StoreError, match="does not support file locks .* SPECDYN_NO_LOCK=1"):
        _open(path, [0])
    assert not path.exists()
    monkeypatch.setenv("SPECDYN_NO_LOCK", "1")
    with _open(path, [0]) as w:
        _write(w, [0])
    with open_run(path) as run:
        assert list(run.steps) == [0]


_READER = """
import sys, h5py
sys.path.insert(0, {tests!r})
import _store_crash_worker as w
w._import_store_without_torch()
from specdyn.store import open_run
with h5py.File(sys.argv[1], "r") as f:   # plain h5py, default HDF5 file locking
    print(f["steps/done"][()].tolist())
with open_run(sys.argv[1]) as run:
    print(run.steps.tolist(), repr(float(run.sigma("embed_in")[0][0])))
"""


def test_readers_open_the_store_while_it_is_being_written(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0, 10, 20]) as w:
        _write(w, [10])
        code = _READER.format(tests=str(Path(__file__).resolve().parents[1]))
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "[0, 1, 0]"
        first = float(worker.step_data(10)[0]["embed_in.weight"][0][0])
        assert lines[1] == f"[10] {first!r}"
        with open_run(path) as run:  # in the same process too
            assert list(run.steps) == [10]
        _write(w, [0])


# ----------------------------------------------------------------------------- kill -9


def test_kill_between_steps_then_resume(tmp_path):
    path = tmp_path / "run.h5"
    flag = tmp_path / "flag"
    proc = _start(path, {"known": STEPS, "stop_after": 2, "marker": str(flag)})
    _wait_for(flag, proc)
    with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
        _open(path, STEPS)
    _kill9(proc)
    assert _check_done_data(path) == [0, 10]
    with _open(path, STEPS) as w:  # the kernel released the dead writer's lock
        assert w.pending_steps == [20, 30, 40, 50]
        _write(w, w.pending_steps)
    _assert_same_store(path, _reference(tmp_path, STEPS))


def test_kill_inside_a_step_write_then_resume(tmp_path):
    path = tmp_path / "run.h5"
    _run(path, {"known": STEPS, "write": [0, 10]})
    flag = tmp_path / "flag"
    proc = _start(path, {"known": STEPS}, SPECDYN_TEST_HOLD_WRITE=str(flag))
    _wait_for(flag, proc)
    _kill9(proc)
    with h5py.File(path, "r") as f:
        # killed with step 20 half written: its first matrix is on disk, not flagged done
        assert f["steps/done"][()].tolist() == [1, 1, 0, 0, 0, 0]
        assert np.isfinite(f["sigma/embed_in.weight"][2]).all()
        assert np.isnan(f["sigma/layers.0.attention.query_key_value.weight"][2]).all()
    assert _check_done_data(path) == [0, 10]
    with _open(path, STEPS) as w:
        assert w.pending_steps == [20, 30, 40, 50]
        _write(w, w.pending_steps)
    _assert_same_store(path, _reference(tmp_path, STEPS))


def test_kill_while_growing_then_resume(tmp_path):
    path = tmp_path / "run.h5"
    _run(path, {"known": [0, 20, 40]})
    before = path.read_bytes()
    flag = tmp_path / "flag"
    proc = _start(path, {"known": STEPS}, SPECDYN_TEST_HOLD_REBUILD=str(flag))
    _wait_for(flag, proc)
    _kill9(proc)
    assert path.read_bytes() == before  # the old store is untouched until the rename
    assert len(list(tmp_path.glob(".run.h5.rebuild-*.tmp"))) == 1
    assert _check_done_data(path) == [0, 20, 40]
    worker.write_store(path, STEPS)
    assert not list(tmp_path.glob(".run.h5.rebuild-*.tmp"))
    _assert_same_store(path, _reference(tmp_path, STEPS))


def test_kill_at_random_moments_never_damages_the_store(tmp_path):
    path = tmp_path / "run.h5"
    steps = list(range(0, 800, 10))
    rng = random.Random(7)
    done_counts = []
    for attempt in range(4):
        flag = tmp_path / f"open{attempt}"
        proc = _start(path, {"known": steps, "big": True, "marker": str(flag)})
        _wait_for(flag, proc)
        time.sleep(rng.uniform(0.0, 0.04))
        if proc.poll() is None:
            _kill9(proc)
        else:  # a very fast machine finished first: nothing left to interrupt
            proc.communicate()
            assert proc.returncode == 0
        done_counts.append(len(_check_done_data(path, big=True)))
    assert done_counts == sorted(done_counts) and done_counts[0] < len(steps)
    worker.write_store(path, steps, big=True)
    _assert_same_store(path, _reference(tmp_path, steps, big=True))


# ----------------------------------------------------------------------------- bad files and schema


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "run.h5"
    path.write_text("not hdf5 at all")
    with pytest.raises(
        StoreError, match=r"run.h5 is not an HDF5 file .* specdyn\.analyze\(\)$"
    ) as err:
        open_run(path)
    assert err.value.render(cli=True).endswith("pass a store written by specdyn analyze")
    with pytest.raises(StoreError, match="not a readable HDF5 file .* overwrite=True") as err:
        _open(path, [0])
    assert "use --overwrite to replace it or choose another --name" in err.value.render(cli=True)
    with _open(path, [0], overwrite=True) as w:
        _write(w, [0])
    with open_run(path) as run:
        assert list(run.steps) == [0]


def test_a_foreign_hdf5_file_is_never_overwritten(tmp_path):
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a specdyn store"):
        open_run(path)
    with pytest.raises(StoreError, match="did not write .* left untouched"):
        _open(path, [0], overwrite=True)
    assert path.read_bytes() == before


def test_a_newer_schema_asks_to_upgrade(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]):
        pass
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(
        StoreError,
        match=rf"schema {SCHEMA_VERSION + 1}, newer than specdyn .* upgrade specdyn or re-run specdyn\.analyze\(\) "
        "with overwrite=True",
    ) as err:
        open_run(path)
    assert err.value.render(cli=True).endswith("re-run specdyn analyze with --overwrite")
    with pytest.raises(StoreError, match="upgrade specdyn"):
        _open(path, [0])


def test_a_damaged_store_is_reported(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]):
        pass
    with h5py.File(path, "r+") as f:
        del f["matrices/name"]
    with pytest.raises(
        StoreError, match="damaged on disk: matrices/name is missing.* overwrite=True"
    ) as err:
        open_run(path)
    assert "re-run specdyn analyze with --overwrite" in err.value.render(cli=True)
    assert err.value.file == str(path)


# ----------------------------------------------------------------------------- read API


def test_find_matrix_exact_then_unique_substring(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0]) as w:
        _write(w, [0])
    with open_run(path) as run:
        # the fused name is also a substring of its [q] part: the exact name wins
        qkv = "layers.0.attention.query_key_value.weight"
        assert run.find_matrix(qkv) == qkv
        assert run.find_matrix("weight[q]") == qkv + "[q]"
        assert run.find_matrix("dense_h_to_4h") == "layers.0.mlp.dense_h_to_4h.weight"
        with pytest.raises(StoreError, match=r"'layers.0' matches 3 matrices \(layers.0.attention"):
            run.find_matrix("layers.0")
        with pytest.raises(StoreError, match="no matrix matches 'nope' .*embed_in.weight"):
            run.find_matrix("nope")
        assert np.array_equal(
            run.sigma("dense_4h"), run.sigma("layers.10.mlp.dense_4h_to_h.weight")
        )
        with pytest.raises(
            StoreError, match="no metric 'rank'; stored metrics: normalized_effective_rank"
        ):
            run.metric("rank")
    with pytest.raises(StoreError, match="closed"):
        run.sigma("embed_in")


def test_an_empty_store_reads_as_empty(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, [0, 10]):
        pass
    with open_run(path) as run:
        assert run.steps.size == 0 and list(run.all_steps) == [0, 10]
        assert run.sigma("embed_in").shape == (0, 12)
        assert run.metric("entropy").shape == (0, len(worker.SMALL))
        info = run.info()
        assert info["first_step"] is None and info["methods"] == {} and info["steps_done"] == 0
        assert run.matrix_info("embed_in")["method"] == ""
