"""Store evolution of the metrics (issue 18): a store written before the heavy-tailed
metrics gains them from its stored σ on the next writer, with nothing else recomputed,
no checkpoint read, checksums valid, crash-safe; a store with unknown metrics is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _store_crash_worker as worker
import h5py
import numpy as np
import pytest
import torch
from _stores import reseal, store_contents

import specdyn
from specdyn.errors import StoreError, StoreMismatchError
from specdyn.metrics import (
    HEAVY_TAIL_NAMES,
    METRIC_NAMES,
    STORED_METRIC_NAMES,
    heavy_tail_metrics,
    spectral_metrics,
)
from specdyn.store import StoreWriter, open_run, verify_store
from specdyn.store import _build as store_build

ADDED = [n for n in STORED_METRIC_NAMES if n not in METRIC_NAMES]
HOOKS = ("SPECDYN_TEST_HOLD_WRITE", "SPECDYN_TEST_HOLD_REBUILD", "SPECDYN_NO_LOCK")
# besides the worker's matrices: one too small to fit (R = 5 < 8), one that is all zeros
# at step 10 (its spectral metrics NaN as well)
SMALL = ("head.weight", 5, 12)


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch):
    for name in HOOKS:
        monkeypatch.delenv(name, raising=False)


def _matrices():
    """The worker's matrices and a small head (R = 5)."""
    from specdyn.store import MatrixRecord

    name, m, n = SMALL
    head = MatrixRecord(name=name, param=name, key=name, kind="linear", part=None,
                        shape=(m, n), source_shape=(m, n), source_dtype="float32")  # fmt: skip
    return [*worker.matrix_records(), head]


def _open(path: Path, known: list[int], metric_names=METRIC_NAMES, **overrides) -> StoreWriter:
    kwargs = dict(
        run_name="run",
        source_root="/ckpts/run",
        step_unit="step",
        steps=worker.step_records(known),
        matrices=_matrices(),
        skipped=[],
        aliases={},
        options={"precision": "float64", "exact": False, "include": [], "exclude": []},
        provenance={"argv": ["test"]},
        metric_names=metric_names,
    )
    kwargs.update(overrides)
    return StoreWriter.open(path, **kwargs)


def _step(step: int, names=METRIC_NAMES) -> tuple[dict, dict, list[str]]:
    """The worker's step data plus the head, with the metrics `names` (independently:
    spectral_metrics and heavy_tail_metrics, not the analysis' code)."""
    spectra, _, notes = worker.step_data(step)
    rng = np.random.default_rng(step)
    spectra[SMALL[0]] = (np.sort(rng.random(5))[::-1] + 0.1, "svdvals-f64")
    zero = "layers.0.mlp.dense_h_to_4h.weight"
    if step == 10:
        spectra[zero] = (np.zeros_like(spectra[zero][0]), "zero")
    shapes = {m.name: m.shape for m in _matrices()}
    metrics = {}
    for name, (sigma, _) in spectra.items():
        values = {**heavy_tail_metrics(sigma, shapes[name]), **spectral_metrics(sigma)}
        metrics[name] = {k: float(values[k]) for k in names}
    return spectra, metrics, notes


def _old_store(path: Path, known=(0, 10, 20, 30), write=(0, 10, 20)) -> None:
    """A store as specdyn wrote it before the heavy-tailed metrics (METRIC_NAMES only)."""
    with _open(path, list(known)) as w:
        for s in write:
            w.write_step(s, *_step(s))


def _expected(path: Path) -> dict[str, np.ndarray]:
    """The added metrics [T, M] computed independently from the stored σ and shapes."""
    with h5py.File(path, "r", locking=False) as f:
        done = f["steps/done"][()].astype(bool)
        names = f["matrices/name"].asstr()[()].tolist()
        shapes = f["matrices/shape"][()]
        out = {n: np.full((done.shape[0], len(names)), np.nan) for n in ADDED}
        for j, name in enumerate(names):
            sigma = f["sigma/" + name][()]
            for t in np.flatnonzero(done):
                values = heavy_tail_metrics(sigma[t], tuple(shapes[j]))
                for metric in ADDED:
                    out[metric][t, j] = values[metric]
    return out


def _unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Keys of `before` whose bytes differ in `after` (the metric list and the notes of the
    steps with NaN fits are expected to change; those are checked on their own)."""
    skip = ("/@metric_names", "/steps/notes")
    # the step and matrix scales list the datasets attached to them: the new ones too
    scales = ("/step@REFERENCE_LIST", "/matrix@REFERENCE_LIST")
    return [
        k
        for k in before
        if not k.startswith(skip) and k not in scales and before[k] != after.get(k)
    ]


def test_an_old_store_gains_the_metrics_from_its_sigma(tmp_path):
    path = tmp_path / "run.h5"
    _old_store(path)
    before = store_contents(path)
    with open_run(path) as run:
        old_notes = run.notes
    with _open(path, [0, 10, 20, 30], metric_names=STORED_METRIC_NAMES) as w:
        changes = w.metric_changes
        assert w.pending_steps == [30]  # the done steps stay done: nothing recomputed
        w.write_step(30, *_step(30, STORED_METRIC_NAMES))
    kinds = [k for k, _ in changes]
    assert kinds[0] == "store-upgrade" and "12 metrics added" in changes[0][1]
    assert "3 done step(s)" in changes[0][1] and "no checkpoint read" in changes[0][1]
    nan_lines = sorted(line for kind, line in changes if kind == "heavy-tail-nan")
    assert nan_lines == [
        "head.weight: alpha NaN at 3 of 3 steps: too-few-eigenvalues (fewer than 8 singular "
        "values, or fewer than 2 eigenvalues above 1e-05); so are the other power-law metrics "
        "(docs/metrics.md#heavy-tailed-metrics-weightwatcher)",
        "layers.0.mlp.dense_h_to_4h.weight: alpha NaN at 1 of 3 steps: zero-matrix (an "
        "all-zero matrix); so are the other power-law metrics "
        "(docs/metrics.md#heavy-tailed-metrics-weightwatcher)",
    ]
    after = store_contents(path)
    # every dataset and attribute of the old store as it was, but the rows of step 30
    # written since; the metric datasets the old store had are untouched
    step30 = ("/sigma/", "/matrices/method", "/steps/done", "/steps/sha256", "/metrics/")
    assert [k for k in _unchanged(before, after) if not k.startswith(step30)] == []
    expected = _expected(path)
    with h5py.File(path, "r", locking=False) as f:
        assert json.loads(f.attrs["metric_names"]) == list(STORED_METRIC_NAMES)
        for name in METRIC_NAMES:  # rows 0-2 copied bit for bit
            old = np.frombuffer(before[f"/metrics/{name}"]).reshape(4, -1)
            assert np.array_equal(f["metrics/" + name][:3], old[:3], equal_nan=True), name
        for name in ADDED:
            got = f["metrics/" + name][()]
            assert np.array_equal(got, expected[name], equal_nan=True), name
            assert np.isfinite(got[0, 0]) or name not in HEAVY_TAIL_NAMES
    assert np.isnan(expected["alpha"][:, -1]).all() and np.isfinite(expected["alpha"][:, 0]).all()
    with open_run(path) as run:
        notes = run.notes
        assert run.metric_names == list(STORED_METRIC_NAMES)
        np.testing.assert_array_equal(run.values.metric("alpha"), expected["alpha"])
    # each step's notes: the old ones, then one line per reason of its NaN fits
    for step in (0, 10, 20):
        assert notes[step][: len(old_notes.get(step, []))] == old_notes.get(step, [])
        assert "alpha NaN (too-few-eigenvalues): head.weight" in notes[step]
    assert "alpha NaN (zero-matrix): layers.0.mlp.dense_h_to_4h.weight" in notes[10]
    report = verify_store(path)
    assert report.ok and report.checked and not report.damage, report
    # evolved once: the next writer finds nothing to add
    with _open(path, [0, 10, 20, 30], metric_names=STORED_METRIC_NAMES) as w:
        assert w.metric_changes == []


def test_the_evolved_store_equals_one_written_with_every_metric(tmp_path):
    """An old store gains exactly the numbers a store written with every metric holds."""
    old, fresh = tmp_path / "old.h5", tmp_path / "fresh.h5"
    _old_store(old, known=(0, 10), write=(0, 10))
    with _open(old, [0, 10], metric_names=STORED_METRIC_NAMES):
        pass
    with _open(fresh, [0, 10], metric_names=STORED_METRIC_NAMES) as w:
        for s in (0, 10):
            w.write_step(s, *_step(s, STORED_METRIC_NAMES))
    a, b = store_contents(old), store_contents(fresh)
    for name in STORED_METRIC_NAMES:
        assert a[f"/metrics/{name}"] == b[f"/metrics/{name}"], name


def test_a_failure_while_evolving_leaves_the_old_store(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    _old_store(path)
    before = path.read_bytes()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = store_build.matrix_metrics
    monkeypatch.setattr(store_build, "matrix_metrics", failing)
    with pytest.raises(StoreError, match="No space left on device.*it is unchanged"):
        _open(path, [0, 10, 20, 30], metric_names=STORED_METRIC_NAMES)
    assert path.read_bytes() == before and not list(tmp_path.glob(".run.h5.rebuild-*"))
    with open_run(path) as run:
        assert run.metric_names == list(METRIC_NAMES) and run.steps.tolist() == [0, 10, 20]
    monkeypatch.setattr(store_build, "matrix_metrics", real)
    with _open(path, [0, 10, 20, 30], metric_names=STORED_METRIC_NAMES) as w:
        assert w.metric_changes and w.pending_steps == [30]


# the evolution in a subprocess that imports the store without torch (fast to start)
_EVOLVE = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import _store_crash_worker as w
w._import_store_without_torch()
from specdyn.metrics import STORED_METRIC_NAMES
from specdyn.store import MatrixRecord, StoreWriter
name, m, n = {small!r}
head = MatrixRecord(name=name, param=name, key=name, kind="linear", part=None,
                    shape=(m, n), source_shape=(m, n), source_dtype="float32")
StoreWriter.open(
    Path({path!r}), run_name="run", source_root="/ckpts/run", step_unit="step",
    steps=w.step_records([0, 10, 20, 30]), matrices=[*w.matrix_records(), head],
    skipped=[], aliases={{}}, provenance={{"argv": ["test"]}},
    options={{"precision": "float64", "exact": False, "include": [], "exclude": []}},
    metric_names=STORED_METRIC_NAMES,
).close()
"""


def test_kill_while_evolving_leaves_the_old_store_readable(tmp_path):
    path = tmp_path / "run.h5"
    _old_store(path)
    before = path.read_bytes()
    flag = tmp_path / "flag"
    env = {k: v for k, v in os.environ.items() if k not in HOOKS}
    env["SPECDYN_TEST_HOLD_REBUILD"] = str(flag)
    tests = str(Path(__file__).resolve().parents[1])
    code = _EVOLVE.format(tests=tests, small=SMALL, path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the evolution never reached its hold point"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert path.read_bytes() == before  # untouched until the rename
    assert len(list(tmp_path.glob(".run.h5.rebuild-*.tmp"))) == 1
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["metric_names"]) == list(METRIC_NAMES)
    assert verify_store(path).ok
    # the next writer removes the partial build and evolves the store
    with _open(path, [0, 10, 20, 30], metric_names=STORED_METRIC_NAMES) as w:
        assert w.metric_changes
    assert not list(tmp_path.glob(".run.h5.rebuild-*.tmp"))
    with h5py.File(path, "r", locking=False) as f:
        np.testing.assert_array_equal(f["metrics/alpha"][()], _expected(path)["alpha"])


def test_unknown_metrics_are_still_refused(tmp_path):
    path = tmp_path / "run.h5"
    _old_store(path, known=(0,), write=(0,))
    with h5py.File(path, "r+", locking=False) as f:  # a metric of a newer specdyn
        f.create_dataset("metrics/future_metric", data=np.zeros_like(f["metrics/entropy"]))
        names = json.loads(f.attrs["metric_names"])
        f.attrs["metric_names"] = json.dumps([*names, "future_metric"])
    reseal(path)
    before = path.read_bytes()
    with pytest.raises(StoreMismatchError, match="does not know .*future_metric.*newer specdyn"):
        _open(path, [0], metric_names=STORED_METRIC_NAMES)
    # a metric this specdyn cannot compute from σ is not added either
    with pytest.raises(StoreMismatchError, match="metrics"):
        _open(path, [0], metric_names=[*METRIC_NAMES, "future_metric", "made_up"])
    assert path.read_bytes() == before


# ------------------------------------------------------------------ through analyze


def _tiny_run(folder: Path) -> None:
    """Three checkpoints of an MLP whose last layer is too small for a fit (4 x 16)."""
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for step in (0, 10, 20):
        state = {
            "layers.0.weight": torch.randn(24, 16, generator=g),
            "layers.1.weight": torch.randn(16, 24, generator=g),
            "layers.2.weight": torch.randn(4, 16, generator=g),
        }
        torch.save({"model_state_dict": state, "step": step}, folder / f"step_{step}.pt")


def _strip_heavy_tail(path: Path) -> None:
    """Make an analysed store look as specdyn wrote it before the heavy-tailed metrics."""
    with h5py.File(path, "r+", locking=False) as f:
        for name in ADDED:
            ds = f["metrics/" + name]
            ds.dims[0].detach_scale(f["step"])  # no dangling reference left in the scales
            ds.dims[1].detach_scale(f["matrix"])
            del f["metrics/" + name]
        f.attrs["metric_names"] = json.dumps(list(METRIC_NAMES))
        notes = f["steps/notes"]
        for t in range(notes.shape[0]):  # nor did it note the NaN fits
            kept = [n for n in json.loads(notes[t].decode() or "[]") if "alpha NaN" not in n]
            notes[t] = json.dumps(kept).encode()
    reseal(path)


def test_analyze_stores_every_metric_and_notes_the_nan_fits(tmp_path, one_torch_thread):
    folder = tmp_path / "tiny"
    _tiny_run(folder)
    result = specdyn.analyze(folder, home=tmp_path / "ws", vectors=None)
    (run,) = result.runs
    lines = [n for n in run.notes if n.kind == "heavy-tail-nan"]
    assert [(n.path, n.message.split(": ")[1]) for n in lines] == [
        ("layers.2.weight", "alpha NaN at 3 of 3 steps")
    ]
    with open_run(run.store_path) as stored:
        assert stored.metric_names == list(STORED_METRIC_NAMES)
        assert all(n == ["alpha NaN (too-few-eigenvalues): layers.2.weight"]
                   for n in stored.notes.values()) and len(stored.notes) == 3  # fmt: skip
        for j, name in enumerate(stored.matrices):
            info = stored.values.matrix_info(name)
            want = heavy_tail_metrics(stored.values.sigma(name), tuple(info["shape"]))
            for metric in ADDED:
                np.testing.assert_array_equal(
                    stored.values.metric(metric)[:, j], want[metric], err_msg=metric
                )


def test_reanalyze_adds_the_metrics_without_reading_a_checkpoint(
    tmp_path, monkeypatch, one_torch_thread
):
    folder = tmp_path / "tiny"
    _tiny_run(folder)
    home = tmp_path / "ws"
    (first,) = specdyn.analyze(folder, home=home, vectors=None).runs
    path = Path(first.store_path)
    with h5py.File(path, "r", locking=False) as f:
        full = {n: f["metrics/" + n][()] for n in ADDED}
    _strip_heavy_tail(path)
    before = store_contents(path)

    def no_tensor(*args, **kwargs):
        raise AssertionError("a checkpoint's tensors were read")

    monkeypatch.setattr("specdyn.analysis._run.read_matrices", no_tensor)
    monkeypatch.setattr("specdyn.analysis._run.compute_step", no_tensor)
    (again,) = specdyn.analyze(folder, home=home, vectors=None).runs
    assert again.steps_computed == [] and again.steps_already_done == [0, 10, 20]
    upgrade = [n.message for n in again.notes if n.kind == "store-upgrade"]
    assert len(upgrade) == 1 and "12 metrics added" in upgrade[0], again.notes
    nan = [n.message for n in again.notes if n.kind == "heavy-tail-nan"]
    assert len(nan) == 1 and nan[0].startswith("layers.2.weight: alpha NaN at 3 of 3 steps")
    after = store_contents(path)
    assert _unchanged(before, after) == []
    with h5py.File(path, "r", locking=False) as f:
        for name in ADDED:  # the same numbers as the first analysis computed
            assert np.array_equal(f["metrics/" + name][()], full[name], equal_nan=True), name
    assert verify_store(path).ok


def test_every_stored_metric_describes_itself():
    from specdyn.store import _describe

    for name in STORED_METRIC_NAMES:
        description, _units, dims = _describe.spec(f"metrics/{name}")
        assert not description.startswith(f"metric {name}"), name  # not the fallback
        assert dims == ("step", "matrix")


def test_evolved_and_new_steps_give_one_note_per_matrix_and_reason(tmp_path, one_torch_thread):
    folder = tmp_path / "tiny"
    _tiny_run(folder)
    home = tmp_path / "ws"
    (first,) = specdyn.analyze(folder, home=home, steps="0,10", vectors=None).runs
    _strip_heavy_tail(Path(first.store_path))
    (again,) = specdyn.analyze(folder, home=home, vectors=None).runs
    assert again.steps_computed == [20] and again.steps_already_done == [0, 10]
    nan = [n.message for n in again.notes if n.kind == "heavy-tail-nan"]
    assert len(nan) == 1 and nan[0].startswith("layers.2.weight: alpha NaN at 3 of 3 steps")
    with open_run(again.store_path) as run:
        assert np.isnan(run.values.metric("alpha")[:, 2]).all()
        assert np.isfinite(run.values.metric("alpha")[:, :2]).all()
