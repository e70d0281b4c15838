"""Damage on disk is detected (issue 15, item 3): every row and every piece of built
content has a checksum; readers check what they read, `verify` checks everything, and a
writer recomputes damaged steps instead of keeping them.

The central test flips 50 seeded random bytes of a real store, one per copy: every flip
that changes something a reader returns must be reported by that reader and by
`verify`, never returned as a number.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import specdyn
from specdyn import VectorOptions
from specdyn.cli import main
from specdyn.errors import StoreDamagedError, StoreError
from specdyn.store import StoreWriter, verify_store
from specdyn.store._plan import read_contents

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mlp-wd"
STEPS = (0, 1000, 4000)
FLIPS = 50


def _flag(path: Path, step: int, text: str) -> None:
    """Write a flag on a step through the store's writer (as `specdyn pythia` does)."""
    with h5py.File(path, "r", locking=False) as f:
        plan = read_contents(f, path).plan
    with StoreWriter.open(
        path,
        run_name=plan.run_name,
        source_root=plan.source_root,
        step_unit=plan.step_unit,
        steps=plan.steps,
        matrices=plan.matrices,
        skipped=plan.skipped,
        aliases=plan.aliases,
        options=plan.options,
        provenance={"test": "flag"},
        metric_names=plan.metric_names,
    ) as writer:
        writer.flag_step(step, text)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """Three checkpoints of the MLP fixture, a broken one beside them and a metrics log."""
    folder = tmp_path_factory.mktemp("ckpts") / "mlp"
    folder.mkdir()
    for step in STEPS:
        shutil.copy(FIXTURE / f"step_{step:06d}.pt", folder)
    (folder / "step_002000.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    return folder


@pytest.fixture(scope="module")
def store(run_folder, tmp_path_factory) -> Path:
    """A store with every section: values, notes, problems, training metrics, alignment
    and agreement with whole matrices, vectors kept at every step, a flag."""
    home = tmp_path_factory.mktemp("home")
    log = run_folder.parent / "metrics.csv"
    log.write_text("step,loss,acc\n0,2.5,0.1\n500,1.0,0.5\n1000,0.5,0.8\n4000,0.1,0.99\n")
    specdyn.analyze(
        run_folder,
        home=home,
        vectors=VectorOptions(k=4, full_matrices=True, save_vectors="all"),
        metrics_file=log,
    )
    path = home / "mlp.h5"
    _flag(path, 1000, "suspect revision")
    return path


def _everything(path: Path) -> dict:
    """Everything the reading API returns for a store (arrays as bytes, NaN-exact)."""
    out: dict = {}

    def put(key, value):
        arr = np.asarray(value)
        out[key] = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.dtype.kind in "fiub" else value

    with specdyn.open_run(path) as run:
        put("steps", run.values.steps)
        put("all_steps", run.values.all_steps)
        for m in run.values.matrices:
            put(("sigma", m), run.values.sigma(m))
            out[("info", m)] = run.values.matrix_info(m)
        for name in run.values.metric_names:
            put(("metric", name), run.values.metric(name))
        for p in run.alignment.pairs:
            put(("alignment", p["name"]), run.alignment.diagonal(p["name"]))
            put(("heads", p["name"]), run.alignment.heads(p["name"]))
            put(("alignment matrix", p["name"]), run.alignment.matrix(p["name"]))
        put("alignment score", run.alignment.score())
        put("alignment steps", run.alignment.steps)
        for m in run.values.matrices:
            put(("agreement", m), run.agreement.diagonal(m))
            put(("agreement matrix", m), run.agreement.matrix(m))
            for step in run.vectors.steps:
                u, v = run.vectors.top_k(m, int(step))
                put(("u", m, int(step)), u)
                put(("v", m, int(step)), v)
        put("agreement score", run.agreement.score())
        out["pairs"] = run.alignment.pairs
        out["skipped pairs"] = run.alignment.skipped_pairs
        out["training"] = {n: run.training(n) for n in run.training.names}
        out["training"] = {n: (s.tobytes(), v.tobytes()) for n, (s, v) in out["training"].items()}
        out["notes"] = run.notes
        out["flags"] = run.step_flags
        out["provenance"] = run.provenance
        out["sources"] = run.step_sources
        out["skipped"] = run.skipped
        out["aliases"] = run.aliases
        out["problems"] = run.problems
        out["options"] = run.options
        info = run.info()
        info.pop("path")
        info.pop("size_bytes")
        out["info"] = info
    return out


def test_an_intact_store_verifies_and_reads_back(store):
    report = verify_store(store)
    assert report.ok and report.checked and not report.damage and not report.uncommitted
    assert report.rows_checked > 100
    read = _everything(store)
    assert read["flags"] == {1000: "suspect revision"}
    assert read["problems"] and read["training"] and read["notes"] is not None


def test_fifty_random_byte_flips_are_never_read_as_numbers(store, tmp_path):
    """Every flip that changes what a reader returns is reported by the reader and by
    verify; a flip that changes nothing read (free space, padding of unused slots) may
    go unreported."""
    original = _everything(store)
    size = store.stat().st_size
    rng = np.random.default_rng(20261203)
    outcomes = {"unchanged": 0, "reader": 0, "hidden": 0}
    for n in range(FLIPS):
        copy = tmp_path / f"flip{n}.h5"
        shutil.copy(store, copy)
        offset = int(rng.integers(size))
        with open(copy, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)[0]
            fh.seek(offset)
            fh.write(bytes([byte ^ int(rng.integers(1, 256))]))
        where = f"flip {n} at byte {offset} of {size}"
        try:
            report = verify_store(copy)
            verified = report.ok and not report.uncommitted
        except StoreError:
            verified = False
        try:
            read = _everything(copy)
        except StoreError:
            assert not verified, f"{where}: the reader reports damage verify missed"
            outcomes["reader"] += 1
            continue
        if read == original:
            outcomes["unchanged"] += 1
            continue
        # a cleared done flag hides a step, exactly as a write interrupted before its
        # flag: never a wrong number; verify lists it and the next analyze recomputes it
        assert not verified, f"{where}: changes what is read, and verify finds nothing"
        assert report.uncommitted and not report.damage, f"{where}: read as numbers"
        outcomes["hidden"] += 1
        copy.unlink()
    assert outcomes["reader"] >= FLIPS // 4, outcomes  # much of the file is data
    print(outcomes)


def _sigma_row_offset(path: Path, matrix: str, row: int) -> int:
    """The file offset of a row of a σ dataset (contiguous, so plain arithmetic)."""
    with h5py.File(path, "r", locking=False) as f:
        ds = f[f"sigma/{matrix}"]
        return ds.id.get_offset() + row * ds.shape[1] * ds.dtype.itemsize


def test_a_damaged_sigma_is_named_by_the_reader_and_verify_and_recomputed_by_analyze(
    store, run_folder, tmp_path, capsys
):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "mlp.h5"
    shutil.copy(store, path)
    with specdyn.open_run(path) as run:
        matrix = run.values.matrices[0]
        good = run.values.sigma(matrix)
    offset = _sigma_row_offset(path, matrix, 1)  # step 1000
    with open(path, "r+b") as fh:
        fh.seek(offset + 3)
        fh.write(b"\x7f")
    with specdyn.open_run(path) as run:
        with pytest.raises(StoreDamagedError, match=rf"values of step 1000: sigma/{matrix}"):
            run.values.sigma(matrix)
        run.values.sigma(run.values.matrices[1])  # other matrices still read
    report = verify_store(path)
    assert report.damaged_steps == [1000] and not report.ok
    assert main(["verify", "mlp", "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert "damaged on disk at step(s) 1000" in err and "--repair" in err
    result = specdyn.analyze(run_folder, home=home)
    notes = [n.message for r in result.runs for n in r.notes if n.kind == "store-damage"]
    assert any("values of step 1000" in m and "computed again" in m for m in notes), notes
    assert result.runs[0].steps_computed == [1000]
    assert verify_store(path).ok
    with specdyn.open_run(path) as run:
        assert np.array_equal(run.values.sigma(matrix), good)


def test_repair_drops_damaged_rows_and_keeps_the_rest(store, tmp_path, capsys):
    path = tmp_path / "mlp.h5"
    shutil.copy(store, path)
    with specdyn.open_run(path) as run:
        matrix = run.values.matrices[0]
        before = run.values.sigma(matrix)
    with open(path, "r+b") as fh:
        fh.seek(_sigma_row_offset(path, matrix, 2))
        fh.write(b"\x00\x01")
    assert main(["verify", str(path), "--repair"]) == 0
    assert "1 damaged row(s) dropped (steps 4000)" in capsys.readouterr().err
    assert verify_store(path).ok
    with specdyn.open_run(path) as run:
        assert run.values.steps.tolist() == [0, 1000]
        assert np.array_equal(run.values.sigma(matrix), before[:2])
        assert run.step_flags == {1000: "suspect revision"}


def test_damage_in_built_content_is_refused_with_overwrite_as_the_way_out(store, tmp_path):
    path = tmp_path / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        f["matrices/shape"][0, 0] += 1
    with pytest.raises(StoreDamagedError, match="matrices/shape does not match.*overwrite=True"):
        specdyn.open_run(path)
    with pytest.raises(StoreError, match="cannot repair: matrices/shape"):
        verify_store(path, repair=True)


def test_a_store_of_schema_2_cannot_be_verified_until_a_writer_adds_checksums(
    store, run_folder, tmp_path, capsys
):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        del f["checksums"]
        del f.attrs["checksum"]
        f.attrs["schema_version"] = 2
    assert not verify_store(path).checked
    assert main(["verify", str(path), "--json"]) == 1
    assert '"checked": false' in capsys.readouterr().out
    result = specdyn.analyze(run_folder, home=home)
    assert any(n.kind == "store-upgrade" for r in result.runs for n in r.notes)
    assert result.runs[0].steps_computed == []
    assert verify_store(path).ok


def test_a_store_of_schema_3_without_its_checksums_is_damaged(store, tmp_path):
    path = tmp_path / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        del f["checksums"]
    with pytest.raises(StoreDamagedError, match="the checksums are missing"):
        specdyn.open_run(path)


def test_a_cleared_done_flag_is_listed_by_verify_and_the_step_computed_again(
    store, run_folder, tmp_path
):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        row = int(np.flatnonzero(f["steps/step"][()] == 1000)[0])
        f["steps/done"][row] = 0
    with specdyn.open_run(path) as run:
        assert run.values.steps.tolist() == [0, 4000]  # not done: never a number
    report = verify_store(path)
    assert report.ok and report.uncommitted == [("values", 1000)]
    result = specdyn.analyze(run_folder, home=home)
    assert result.runs[0].steps_computed == [1000]
    assert not verify_store(path).uncommitted


def test_a_flag_being_rewritten_is_read_unchecked_and_a_damaged_one_is_cleared(store, tmp_path):
    path = tmp_path / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        column = [p.decode() for p in f["checksums/flag/datasets"][()]].index("steps/flag")
        row = int(np.flatnonzero(f["steps/step"][()] == 1000)[0])
        f["checksums/flag/rows"][row, column] = 0  # killed between digest 0 and the flag
    with specdyn.open_run(path) as run:
        assert run.step_flags == {1000: "suspect revision"}
    assert verify_store(path).ok
    with h5py.File(path, "r+", locking=False) as f:
        f["steps/flag"][row] = b"suspect revisioN"
        f["checksums/flag/rows"][row, column] = 12345
    with pytest.raises(StoreDamagedError, match="flag of step 1000: steps/flag"):
        specdyn.open_run(path)
    report = verify_store(path, repair=True)
    assert report.repaired and report.dropped == [
        "flag of step 1000: steps/flag does not match its checksum: the flag is cleared"
    ]
    with specdyn.open_run(path) as run:
        assert run.step_flags == {} and run.values.steps.tolist() == list(STEPS)


def test_a_damaged_provenance_record_is_replaced_by_one_saying_so(store, tmp_path):
    path = tmp_path / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        record = f["provenance/record"]
        text = bytearray(record[0])
        text[2] ^= 0x20
        record[0] = bytes(text)
    with pytest.raises(StoreDamagedError, match="provenance record 0"):
        specdyn.open_run(path)
    verify_store(path, repair=True)
    with specdyn.open_run(path) as run:
        assert "damaged on disk" in run.provenance[0]["unreadable"]
        assert len(run.provenance) >= 2 and "unreadable" not in run.provenance[1]
