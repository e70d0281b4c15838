"""The store's singular-vector sections (schema 2): round trip, scores, layout changes
that keep what stays valid, raw-data-only writes, and clear errors."""

from __future__ import annotations

import json
from dataclasses import replace

import _store_crash_worker as worker
import h5py
import numpy as np
import pytest
from test_store import _data_extents, _metadata_bytes, _open, _write

from specdyn.errors import StoreError
from specdyn.store import (
    SCHEMA_VERSION,
    MatrixAgreement,
    PairAlignment,
    PairRecord,
    StepVectors,
    VectorLayout,
    open_run,
    verify_store,
)
from specdyn.types import TrainingLog

STEPS = [0, 10, 20]
MATS = {m.name: m for m in worker.matrix_records()}
QKV = "layers.0.attention.query_key_value.weight"
PAIRS = (
    PairRecord(
        name=f"embed_in.weight~{QKV}",
        first="embed_in.weight",
        second=QKV,
        first_side="u",
        second_side="v",
        rule="embed-to-qkv",
        k=8,
        dim=12,
    ),
    PairRecord(
        name=f"{QKV}[q]~heads",
        first=f"{QKV}[q]",
        second="layers.0.mlp.dense_h_to_4h.weight",
        first_side="u",
        second_side="u",
        rule="file",
        options={"heads": 2},
        blocks=2,
        k=4,
        dim=4,
    ),
)


def _layout(**changes) -> VectorLayout:
    base = VectorLayout(
        k=10,
        score_top=3,
        reference=20,
        reference_rule="last",
        full_matrices=True,
        save_vectors="ends",
        pairs=PAIRS,
        pairs_preset="test",
        skipped_pairs=(("a → b", "dimensions do not match"),),
    )
    return replace(base, **changes)


def _k(vl: VectorLayout, name: str) -> int:
    return min(vl.k, MATS[name].rank)


def _vectors(step: int, vl: VectorLayout, sections=("alignment", "agreement", "vectors")):
    """Deterministic StepVectors of one step (a function of the step and the layout)."""
    rng = np.random.default_rng(step + 1)
    alignment = agreement = kept = None
    if "alignment" in sections:
        alignment = {}
        for p in vl.pairs:
            heads = rng.random((p.blocks, p.k))
            alignment[p.name] = PairAlignment(
                diagonal=heads.mean(axis=0),
                heads=heads if p.blocks > 1 else None,
                matrix=rng.random((p.k, p.k)) if vl.full_matrices else None,
            )
    if "agreement" in sections:
        agreement = {
            name: MatrixAgreement(
                diagonal=rng.random(_k(vl, name)),
                matrix=rng.random((_k(vl, name),) * 2) if vl.full_matrices else None,
            )
            for name in MATS
        }
    if "vectors" in sections and step in vl.slots(STEPS):
        kept = {
            name: (rng.random((m.shape[0], _k(vl, name))), rng.random((m.shape[1], _k(vl, name))))
            for name, m in MATS.items()
        }
    return StepVectors(alignment=alignment, agreement=agreement, vectors=kept)


def _write_all(path, vl: VectorLayout, steps=STEPS) -> None:
    with _open(path, steps, vectors=vl) as w:
        for s in steps:
            spectra, metrics, notes = worker.step_data(s)
            w.write_step(s, spectra, metrics, notes, vectors=_vectors(s, vl))


def test_round_trip_of_every_vector_section(tmp_path):
    path = tmp_path / "run.h5"
    vl = _layout()
    _write_all(path, vl)
    with open_run(path) as run:
        assert run.reference == 20 and run.vectors_config["k"] == 10
        assert [p["name"] for p in run.pairs] == [p.name for p in PAIRS]
        assert run.pairs[1]["options"] == {"heads": 2} and run.pairs[1]["blocks"] == 2
        assert run.skipped_pairs == [("a → b", "dimensions do not match")]
        for t, s in enumerate(STEPS):
            want = _vectors(s, vl)
            for p in PAIRS:
                got = run.alignment(p.name)[t]
                assert np.array_equal(got, want.alignment[p.name].diagonal)
                assert np.array_equal(
                    run.alignment_matrix(p.name)[t], want.alignment[p.name].matrix
                )
                # stored scores average the first score_top entries of the diagonal
                assert run.alignment_score(p.name)[t] == pytest.approx(got[:3].mean())
                assert run.alignment_score(p.name, top=2)[t] == pytest.approx(got[:2].mean())
            heads = run.alignment_heads(PAIRS[1].name)
            assert np.array_equal(heads[t], want.alignment[PAIRS[1].name].heads)
            assert run.alignment_heads(PAIRS[0].name).shape == (3, 1, 8)
            for name in MATS:
                got = run.agreement(name)[t]
                assert np.array_equal(got, want.agreement[name].diagonal)
                assert run.agreement_score(name)[t] == pytest.approx(got[:3].mean())
        # [T, P] and [T, M], as /alignment/score and /agreement/score in the file
        assert run.alignment_score().shape == (3, 2)
        assert run.alignment_score(top=2).shape == (3, 2)
        assert run.agreement_score().shape == (3, len(MATS))
        assert run.agreement_score(top=2).shape == (3, len(MATS))
        # "ends": the first and last step keep their vectors (stored as float32)
        assert run.section_steps("vectors").tolist() == [0, 20]
        u, v = run.vectors("embed_in", 20)
        want_u, want_v = _vectors(20, vl).vectors["embed_in.weight"]
        assert u.dtype == np.float32 and u.shape == (12, 10) and v.shape == (40, 10)
        assert np.allclose(u, want_u, atol=1e-7) and np.allclose(v, want_v, atol=1e-7)
        with pytest.raises(
            StoreError, match="no singular vectors kept for step 10.*vectors.save_vectors='all'"
        ) as err:
            run.vectors("embed_in", 10)
        # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
        assert "with --save-vectors all to keep every step" in err.value.render(cli=True)
        assert err.value.step == 10
        info = run.info()
        assert info["pairs"] == 2 and info["vector_steps"] == [0, 20]


def test_pending_sections_read_as_nan_rows(tmp_path):
    path = tmp_path / "run.h5"
    vl = _layout(full_matrices=False)
    with _open(path, STEPS, vectors=vl) as w:
        assert w.pending("alignment") == STEPS and w.pending("vectors") == [0, 20]
        for s in STEPS:
            spectra, metrics, notes = worker.step_data(s)
            sections = ("alignment",) if s == 10 else ("alignment", "agreement")
            w.write_step(s, spectra, metrics, notes, vectors=_vectors(s, vl, sections))
        assert w.pending("agreement") == [10] and w.pending("alignment") == []
    with open_run(path) as run:
        agreement = run.agreement("embed_out")
        assert np.isnan(agreement[1]).all() and not np.isnan(agreement[[0, 2]]).any()
        assert run.section_steps("agreement").tolist() == [0, 20]
        with pytest.raises(
            StoreError, match="whole alignment matrices are not stored.*full_matrices=True"
        ) as err:
            run.alignment_matrix(PAIRS[0].name)
        assert err.value.render(cli=True).endswith("specdyn analyze with --full-matrices")


def test_vectors_are_added_to_a_values_only_store_keeping_its_values(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, STEPS) as w:
        _write(w, STEPS)
    with h5py.File(path, "r") as f:
        sigma_before = f["sigma/embed_in.weight"][()]
    with open_run(path) as run:
        assert run.vectors_config is None and run.pairs == []
        with pytest.raises(StoreError, match="no alignment.*without vectors=None") as err:
            run.alignment("anything")
        assert "on its checkpoints without --values-only" in err.value.render(cli=True)
    vl = _layout()
    with _open(path, STEPS, vectors=vl) as w:
        assert w.pending_steps == [] and w.pending("agreement") == STEPS
        for s in STEPS:
            w.write_step(s, vectors=_vectors(s, vl))
    with open_run(path) as run:
        assert np.array_equal(run.sigma("embed_in.weight"), sigma_before)
        assert run.section_steps("alignment").tolist() == STEPS
    # a values-only writer keeps the layout it finds
    with _open(path, [*STEPS, 30]) as w:
        assert w.vector_layout == vl and w.pending("alignment") == [30]


def test_a_new_reference_clears_only_the_agreement(tmp_path):
    path = tmp_path / "run.h5"
    vl = _layout()
    _write_all(path, vl)
    with open_run(path) as run:
        alignment = run.alignment(PAIRS[1].name)
    moved = _layout(reference=10, reference_rule="given")
    with _open(path, STEPS, vectors=moved) as w:
        assert w.vector_changes == ["reference changed from step 20 to 10: agreement recomputed"]
        assert w.pending("agreement") == STEPS
        assert w.pending("alignment") == [] and w.pending("vectors") == []
    with open_run(path) as run:
        assert np.array_equal(run.alignment(PAIRS[1].name), alignment)
        assert np.isnan(run.agreement("embed_in")).all()


def test_new_last_step_and_k_and_score_top_changes(tmp_path):
    path = tmp_path / "run.h5"
    _write_all(path, _layout())
    with open_run(path) as run:
        diag = run.alignment(PAIRS[0].name)
    moved = _layout(reference=30)
    with _open(path, [*STEPS, 30], vectors=moved) as w:
        assert "new checkpoints moved the last step from 20 to 30" in w.vector_changes[0]
        assert w.pending("agreement") == [*STEPS, 30]
        # "ends" now keeps 0 and 30; 0 is copied, 30 is new
        assert w.pending("vectors") == [30]
    rescored = _layout(reference=30, score_top=2)
    with _open(path, [*STEPS, 30], vectors=rescored) as w:
        assert w.vector_changes == ["scores now average the top 2 (were 3)"]
        assert w.pending("alignment") == [30]
    with open_run(path) as run:
        # scores of the copied rows are recomputed from the stored diagonals
        assert np.allclose(run.alignment_score(PAIRS[0].name)[:3], diag[:, :2].mean(axis=1))
    with _open(path, [*STEPS, 30], vectors=replace(rescored, k=5)) as w:
        assert w.vector_changes == [
            "top-k vectors changed from 10 to 5: alignment and agreement recomputed"
        ]
        assert w.pending("alignment") == [*STEPS, 30] and w.pending("vectors") == [0, 30]


def test_a_schema_1_store_is_read_and_upgraded(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, STEPS) as w:
        _write(w, STEPS)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 1
        del f["checksums"]  # a schema 1 store has none
    with open_run(path) as run:
        assert run.schema_version == 1 and run.steps.tolist() == STEPS
        assert run.vectors_config is None
    with _open(path, STEPS, vectors=_layout()) as w:
        assert w.pending_steps == [] and w.pending("alignment") == STEPS
    with h5py.File(path, "r") as f:
        assert int(f.attrs["schema_version"]) == SCHEMA_VERSION
        assert json.loads(f.attrs["vectors"])["reference"] == 20
    assert verify_store(path).ok


def test_vector_writes_touch_only_preallocated_raw_data(tmp_path):
    path = tmp_path / "run.h5"
    vl = _layout(save_vectors="all")
    with _open(path, STEPS, vectors=vl):
        pass
    extents = _data_extents(path)
    before = _metadata_bytes(path, extents)
    size = path.stat().st_size
    with _open(path, STEPS, vectors=vl) as w:
        for s in STEPS:
            spectra, metrics, notes = worker.step_data(s)
            w.write_step(s, spectra, metrics, notes, vectors=_vectors(s, vl))
    assert path.stat().st_size == size
    assert _data_extents(path) == extents
    assert _metadata_bytes(path, extents) == before


def test_bad_vector_writes_are_refused_before_writing(tmp_path):
    path = tmp_path / "run.h5"
    vl = _layout(full_matrices=False)
    with _open(path, STEPS, vectors=vl) as w:
        good = _vectors(10, vl)
        with pytest.raises(ValueError, match="values are not done"):
            w.write_step(10, vectors=good)
        spectra, metrics, notes = worker.step_data(10)
        short = dict(good.alignment)
        short[PAIRS[0].name] = PairAlignment(np.ones(3))
        with pytest.raises(ValueError, match=r"alignment embed_in.*expected \(8,\)"):
            w.write_step(10, spectra, metrics, vectors=replace(good, alignment=short))
        with pytest.raises(ValueError, match="vectors are not kept"):
            w.write_step(10, spectra, metrics, vectors=_vectors(0, vl))
        w.write_step(10, spectra, metrics, notes, vectors=good)
        with pytest.raises(ValueError, match="alignment is already done"):
            w.write_step(10, vectors=StepVectors(alignment=good.alignment))
    values_only = tmp_path / "values.h5"
    with _open(values_only, STEPS) as w:
        with pytest.raises(ValueError, match="values-only store"):
            w.write_step(0, *worker.step_data(0)[:2], vectors=_vectors(0, vl))
    with pytest.raises(ValueError, match="is not a matrix of the store"):
        _open(
            tmp_path / "x.h5",
            STEPS,
            vectors=_layout(pairs=(replace(PAIRS[0], second="nope"),)),
        )


def test_step_flags_survive_growth_and_mark_pending_steps(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, STEPS) as w:
        _write(w, [0, 10])
        w.flag_step(10, "duplicate of step 0")
        w.flag_step(20, "failed: truncated download")
        with pytest.raises(ValueError, match="not a step"):
            w.flag_step(5, "x")
        with pytest.raises(ValueError, match="longer than 256 bytes"):
            w.flag_step(0, "x" * 300)
    with _open(path, [*STEPS, 30]):  # growth rebuilds the file
        pass
    with open_run(path) as run:
        assert run.step_flags == {10: "duplicate of step 0", 20: "failed: truncated download"}
    with _open(path, STEPS) as w:
        w.flag_step(20, "")
    with open_run(path) as run:
        assert run.step_flags == {10: "duplicate of step 0"}


def test_run_sections_read_what_the_flat_members_read(tmp_path):
    path = tmp_path / "run.h5"
    vl = _layout()
    training = TrainingLog(
        steps=np.array([0, 5, 20], dtype=np.int64),
        values={"loss": np.array([2.0, np.nan, 0.5])},
        sources={"loss": "test"},
    )
    with _open(path, STEPS, vectors=vl, training=training) as w:
        for s in STEPS:
            spectra, metrics, notes = worker.step_data(s)
            w.write_step(s, spectra, metrics, notes, vectors=_vectors(s, vl))
    pair, matrix = PAIRS[1].name, "embed_in.weight"
    with open_run(path) as run:
        values, alignment, agreement = run.values, run.alignment, run.agreement
        same = [
            (values.steps, run.steps),
            (values.all_steps, run.all_steps),
            (values.sigma("embed_in"), run.sigma("embed_in")),
            (values.metric("stable_rank"), run.metric("stable_rank")),
            (alignment.diagonal(pair), run.alignment(pair)),
            (alignment.heads(pair), run.alignment_heads(pair)),
            (alignment.matrix(pair), run.alignment_matrix(pair)),
            (alignment.score(top=2), run.alignment_score(top=2)),
            (alignment.steps, run.section_steps("alignment")),
            (agreement.diagonal(matrix), run.agreement(matrix)),
            (agreement.matrix(matrix), run.agreement_matrix(matrix)),
            (agreement.score(matrix), run.agreement_score(matrix)),
            (agreement.steps, run.section_steps("agreement")),
            (run.vectors.steps, run.section_steps("vectors")),
            (run.vectors.top_k(matrix, 20)[0], run.vectors(matrix, 20)[0]),
            (run.training.series("loss")[1], run.training("loss")[1]),
        ]
        for i, (section, flat) in enumerate(same):
            assert np.array_equal(section, flat, equal_nan=True), i
        assert values.matrices == run.matrices and values.metric_names == run.metric_names
        assert values.find_matrix("embed_in") == run.find_matrix("embed_in") == matrix
        assert values.matrix_info("embed_in") == run.matrix_info("embed_in")
        assert alignment.pairs == run.pairs and alignment.skipped_pairs == run.skipped_pairs
        assert alignment.find_pair("heads") == run.find_pair("heads") == pair
        assert agreement.reference == run.reference == 20
        assert run.vectors.config == run.vectors_config and run.vectors.config["k"] == 10
        assert run.training.names == run.training_names == ["loss"]
        assert run.training.log.names == run.training_log.names
        assert run.training("loss")[0].tolist() == [0, 20]
    assert "kept for one release" in type(run).__dict__["sigma"].__doc__


def test_a_values_only_run_has_empty_vector_sections(tmp_path):
    path = tmp_path / "run.h5"
    with _open(path, STEPS) as w:
        _write(w, STEPS)
    with open_run(path) as run:
        assert run.vectors.config is None and run.agreement.reference is None
        assert run.alignment.pairs == [] and run.alignment.skipped_pairs == []
        assert run.training.log is None and run.training.names == []
        for read in (lambda: run.alignment.steps, lambda: run.agreement("embed_in")):
            with pytest.raises(StoreError, match="vectors=None") as err:
                read()
            assert "--values-only" in err.value.render(cli=True)
        with pytest.raises(StoreError, match="no training metrics stored"):
            run.training("loss")
