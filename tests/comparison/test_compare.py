"""specdyn.compare: known answers, independent numpy checks, sources of vectors, the store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _ckpt_factory import write_state_run
from _fixture_script import make_fixtures

import specdyn
from specdyn.comparison import BarrierOptions, chance_agreement, compare, open_comparison
from specdyn.errors import CompareError, StoreError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _spectrum_matrix(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """A random (m, n) matrix with well-separated singular values 2^(-i/3)."""
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * 2.0 ** (-np.arange(r) / 3.0)) @ v.T


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


SHAPES = {"fc1.weight": (48, 40), "fc2.weight": (40, 48), "fc3.weight": (36, 40)}


def _base_states(seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        step: {name: _spectrum_matrix(rng, *shape) for name, shape in SHAPES.items()}
        for step in (0, 10, 20)
    }


@pytest.fixture()
def two_runs(tmp_path):
    """Run a, and run b = a rotated on both sides by independent random orthogonal maps."""
    rng = np.random.default_rng(7)
    states = _base_states()
    rotations = {
        name: (_orthogonal(rng, shape[0]), _orthogonal(rng, shape[1]))
        for name, shape in SHAPES.items()
    }
    rotated = {
        step: {name: rotations[name][0] @ w @ rotations[name][1] for name, w in sd.items()}
        for step, sd in states.items()
    }
    a = write_state_run(tmp_path / "runs" / "a", states)
    b = write_state_run(tmp_path / "runs" / "b", rotated)
    return a, b, states, rotated


def _numpy_diagonal(w1: np.ndarray, w2: np.ndarray, k: int) -> np.ndarray:
    """S_ii from float64 LAPACK SVDs of the two matrices (independent of specdyn)."""
    u1, _, v1t = np.linalg.svd(np.asarray(w1, np.float32).astype(np.float64))
    u2, _, v2t = np.linalg.svd(np.asarray(w2, np.float32).astype(np.float64))
    kk = min(k, u1.shape[1], v1t.shape[0])
    return np.abs(np.sum(u1[:, :kk] * u2[:, :kk], axis=0)) * np.abs(
        np.sum(v1t[:kk].T * v2t[:kk].T, axis=0)
    )


def test_run_against_itself_agrees_fully_and_differs_by_nothing(two_runs, tmp_path):
    a, _b, _, _ = two_runs
    home = tmp_path / "home"
    specdyn.analyze(a, home=home)
    result = compare(["a", "a"], home=home)
    assert any(n.kind == "same-run" for n in result.notes)
    pair = result.pairs[0]
    assert pair.steps_a.tolist() == [0, 10, 20]
    assert np.allclose(pair.diagonal[:, :, :36], 1.0, atol=1e-5)
    assert np.allclose(pair.score, 1.0, atol=1e-6)
    with open_comparison(result.path) as cmp:
        for metric in cmp.metric_names:
            assert np.all(cmp.difference(metric, 0, 1) == 0.0)
        assert cmp.shared_steps(0, 1).tolist() == [0, 10, 20]


def test_rotated_copy_agrees_at_chance_level(two_runs, tmp_path):
    a, b, states, rotated = two_runs
    home = tmp_path / "home"
    result = compare([a, b], home=home)
    assert result.analysed == [str(a), str(b)]
    pair = result.pairs[0]
    for j, name in enumerate(result.matrices):
        m, n = SHAPES[name]
        chance = chance_agreement(m, n)
        diag = pair.diagonal[-1, j, : min(m, n)].astype(np.float64)
        # 36..40 entries of |<a,b>|·|<c,d>| for random unit vectors: the mean lies within
        # a factor 2.5 of 2/(π·sqrt(mn)) (checked over 2000 draws: 0.45–1.9 ×)
        assert 0.4 * chance < diag.mean() < 2.5 * chance, (name, diag.mean(), chance)
        assert diag.max() < 0.25
        # and the same numbers as an independent float64 numpy computation
        want = _numpy_diagonal(states[20][name], rotated[20][name], 100)
        assert np.allclose(diag, want, atol=2e-5)
    # spectra are rotation invariant: every metric equal up to float32 rounding
    with open_comparison(result.path) as cmp:
        d = cmp.difference("normalized_effective_rank", "a", "b")
        assert np.abs(d).max() < 1e-5
        assert d.shape == (3, 3)


def test_diagonals_match_numpy_from_vectors_and_from_checkpoints(tmp_path):
    states_a = _base_states(1)
    rng = np.random.default_rng(3)
    # run b: a perturbed copy, so the agreement is neither 0 nor 1
    states_b = {
        s: {k: w + 0.05 * rng.standard_normal(w.shape) for k, w in sd.items()}
        for s, sd in states_a.items()
    }
    a = write_state_run(tmp_path / "a", states_a)
    b = write_state_run(tmp_path / "b", states_b)
    home = tmp_path / "home"
    specdyn.analyze(a, home=home)
    specdyn.analyze(b, home=home)
    result = compare(["a", "b"], home=home, k=20)
    pair = result.pairs[0]
    # ends from the kept vectors (float32), the middle step from the checkpoints
    assert pair.source == ["vectors/vectors", "checkpoint/checkpoint", "vectors/vectors"]
    for row, step in enumerate(pair.steps_a):
        for j, name in enumerate(result.matrices):
            want = _numpy_diagonal(states_a[int(step)][name], states_b[int(step)][name], 20)
            got = pair.diagonal[row, j, :20]
            assert np.allclose(got, want, atol=5e-5), (step, name)
            assert math.isclose(pair.score[row, j], want[:10].mean(), abs_tol=5e-5)
    assert 0.2 < pair.score[-1].mean() < 0.999


def test_metric_differences_and_final_values(tmp_path):
    a = FIXTURES / "mlp-wd"
    b = FIXTURES / "mlp-nowd"
    home = tmp_path / "home"
    result = compare([a, b], home=home, steps="none")
    assert [len(p.steps_a) for p in result.pairs] == [1]
    with specdyn.open_run("mlp-wd", home) as ra, specdyn.open_run("mlp-nowd", home) as rb:
        with open_comparison(result.path) as cmp:
            for metric in ("normalized_effective_rank", "stable_rank", "spectral_norm"):
                want = (rb.metric(metric) - ra.metric(metric)).T  # a comparison is [M, T]
                assert np.array_equal(cmp.difference(metric, "mlp-wd", "mlp-nowd"), want)
                assert np.array_equal(cmp.final(metric)[0], ra.metric(metric)[-1])
            assert np.array_equal(cmp.steps, ra.steps)
            # both start from one initialisation: equal spectra at step 0
            assert np.all(cmp.difference("normalized_effective_rank")[:, 0] == 0)
    # weight decay lowers the rank of the hidden layers (the fixture's headline)
    final = result.final("normalized_effective_rank")
    assert (final[0, 1:3] < final[1, 1:3] - 0.1).all()


def test_different_matrices_compared_on_the_common_ones(tmp_path):
    states = _base_states()
    extra = {s: dict(sd, **{"fc4.weight": np.eye(36, 36)[:8]}) for s, sd in states.items()}
    a = write_state_run(tmp_path / "x" / "small", states)
    b = write_state_run(tmp_path / "x" / "big", extra)
    result = compare([a, b], home=tmp_path / "home")
    assert result.matrices == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert result.only_in == {"big": ["fc4.weight"]}
    assert any(n.kind == "not-common" and "fc4.weight" in n.message for n in result.notes)


def test_endpoint_without_vectors_or_checkpoint_is_a_clear_error(tmp_path):
    states = _base_states()
    a = write_state_run(tmp_path / "a", states)
    b = write_state_run(tmp_path / "b", states)
    home = tmp_path / "home"
    specdyn.analyze(a, home=home, vectors=None)
    specdyn.analyze(b, home=home, vectors=None)
    # values-only stores: the vectors come from the checkpoints
    result = compare(["a", "b"], home=home, steps="none")
    assert result.pairs[0].source == ["checkpoint/checkpoint"]
    assert np.allclose(result.pairs[0].score, 1.0, atol=1e-6)
    (a / "step_00020.pt").unlink()
    with pytest.raises(CompareError, match=r"step 20 .*vectors\.save_vectors ends") as err:
        compare(["a", "b"], home=home, steps="none")
    # a Python caller reads the field, the CLI the flag (errors.option_ref)
    assert "re-analyse with --save-vectors ends" in err.value.render(cli=True)
    # a missing middle checkpoint is a warned skip, not an error
    b2 = write_state_run(tmp_path / "c", states)
    specdyn.analyze(b2, home=home)
    specdyn.analyze(write_state_run(tmp_path / "d", states), home=home)
    (b2 / "step_00010.pt").unlink()
    result = compare(["c", "d"], home=home)
    assert result.pairs[0].steps_a.tolist() == [0, 20]
    assert any(n.kind == "no-vectors" and "step 10" in n.message for n in result.notes)


def test_changed_checkpoint_is_not_mixed_in(tmp_path):
    states = _base_states()
    a = write_state_run(tmp_path / "a", states)
    b = write_state_run(tmp_path / "b", states)
    home = tmp_path / "home"
    specdyn.analyze(a, home=home)
    specdyn.analyze(b, home=home)
    torch.save({k: torch.zeros(v.shape) for k, v in states[10].items()}, a / "step_00010.pt")
    result = compare(["a", "b"], home=home)
    assert result.pairs[0].steps_a.tolist() == [0, 20]
    assert any("changed since it was analysed" in n.message for n in result.notes)


def test_n_runs_each_against_the_first(tmp_path):
    home = tmp_path / "home"
    runs = [write_state_run(tmp_path / f"r{i}", _base_states(i % 2)) for i in range(3)]
    result = compare(runs, home=home)
    assert [(p.a, p.b) for p in result.pairs] == [(0, 1), (0, 2)]
    assert [len(p.steps_a) for p in result.pairs] == [1, 1]
    assert np.allclose(result.pairs[1].score, 1.0, atol=1e-6)  # r2 has r0's weights
    assert result.pairs[0].score.max() < 0.5
    assert result.metrics["normalized_effective_rank"].shape == (3, 3, 3)


def _branch_states(trunk_seed: int, split: int, order: int) -> dict[int, dict[str, np.ndarray]]:
    """A toy trunk/branch family: the branch is the trunk's matrix at the split plus noise
    that shrinks with the split step (late splits share more)."""
    rng = np.random.default_rng(trunk_seed)
    base = {name: _spectrum_matrix(rng, *shape) for name, shape in SHAPES.items()}
    noise = np.random.default_rng(1000 * trunk_seed + 10 * split + order)
    scale = 0.03 / (1 + split)
    end = {k: w + scale * noise.standard_normal(w.shape) for k, w in base.items()}
    return {split: base, 100: end}


def test_split_mode_groups_by_split_step_and_trunk(tmp_path):
    home = tmp_path / "home"
    folders = []
    for trunk in ("ta", "tb"):
        for split in (0, 9):
            for order in (1, 2):
                seed = 1 if trunk == "ta" else 2
                folders.append(
                    write_state_run(
                        tmp_path / trunk / f"branch-split{split:03d}-order{order}",
                        _branch_states(seed, split, order),
                    )
                )
    result = compare(folders, by="split", home=home)
    # labels made unique with the trunk folder
    assert {e.label for e in result.runs} == {
        f"{t}-branch-split{s:03d}-order{o}" for t in ("ta", "tb") for s in (0, 9) for o in (1, 2)
    }
    s = result.split
    assert s.steps.tolist() == [0, 9]
    assert s.same_pairs.tolist() == [2, 2] and s.other_pairs.tolist() == [4, 4]
    same = s.same_score.mean(axis=1)
    other = s.other_score.mean(axis=1)
    assert same[1] > same[0] > 5 * other.max()
    with open_comparison(result.path) as cmp:
        summary = cmp.split_summary()
        assert np.array_equal(summary["same_score"], s.same_score)
        assert cmp.mode == "split"


def test_split_step_from_mapping_or_error(tmp_path):
    a = write_state_run(tmp_path / "left", _branch_states(1, 5, 1))
    b = write_state_run(tmp_path / "right", _branch_states(1, 5, 2))
    with pytest.raises(CompareError, match=r"pass split=\{NAME: STEP\}$") as err:
        compare([a, b], by="split", home=tmp_path / "home")
    assert err.value.render(cli=True).endswith("pass --split NAME=STEP")
    assert err.value.option == "split"
    result = compare([a, b], by="split", split={"left": 5, "right": 5}, home=tmp_path / "home")
    assert result.split.steps.tolist() == [5]
    assert result.split.same_pairs.tolist() == [1]  # equal spectra at step 5: one trunk


def _norm_loss(sign: float):
    def loss(state: dict[str, torch.Tensor]) -> float:
        return sign * float(sum((t.double() ** 2).sum() for t in state.values()))

    return loss


def test_barrier_known_answers(tmp_path):
    sa, sb = _base_states(0), _base_states(1)
    a = write_state_run(tmp_path / "a", sa)
    b = write_state_run(tmp_path / "b", sb)
    home = tmp_path / "home"
    # L = -||W||²: L(α) minus the chord = α(1-α)||A-B||², largest at α = 1/2
    result = compare(
        [a, b], home=home, steps="none", barrier=BarrierOptions(_norm_loss(-1.0), points=11)
    )
    dist = sum(
        float(((np.float32(sa[20][k]).astype(np.float64) - np.float32(sb[20][k])) ** 2).sum())
        for k in SHAPES
    )
    bar = result.barriers[0]
    assert bar.alpha.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert bar.barrier == pytest.approx(0.25 * dist, rel=1e-5)
    # L = +||W||² is convex along the line: no barrier (the endpoints give 0)
    result = compare(
        [a, b], home=home, steps="none", barrier=BarrierOptions(_norm_loss(1.0), points=5)
    )
    assert result.barriers[0].barrier == pytest.approx(0.0, abs=1e-9)
    with open_comparison(result.path) as cmp:
        stored = cmp.barriers()
        assert stored["loss"].shape == (1, 5)


def test_barrier_evaluator_errors_are_one_line(tmp_path):
    a = write_state_run(tmp_path / "a", _base_states(0))
    b = write_state_run(tmp_path / "b", _base_states(1))

    def broken(state):
        raise RuntimeError("shape mismatch in my model")

    with pytest.raises(CompareError, match="failed at alpha=0.00: RuntimeError: shape mismatch"):
        compare([a, b], home=tmp_path / "h", barrier=BarrierOptions(broken, label="m:f"))
    with pytest.raises(CompareError, match="not a number"):
        compare([a, b], home=tmp_path / "h", barrier=BarrierOptions(lambda s: "x"))


def test_fewer_than_two_runs_and_unknown_runs(tmp_path):
    with pytest.raises(CompareError, match="at least two"):
        compare([], home=tmp_path)
    with pytest.raises(StoreError, match="no run named"):
        compare(["a"], home=tmp_path)
    with pytest.raises(StoreError, match="no run named"):
        compare(["nope", "nada"], home=tmp_path)


def test_a_comparison_store_is_not_a_run(two_runs, tmp_path):
    a, b, _, _ = two_runs
    result = compare([a, b], home=tmp_path / "home", steps="none")
    with pytest.raises(StoreError, match="comparison store"):
        specdyn.open_run(result.path)
    with pytest.raises(StoreError, match="not a comparison store"):
        open_comparison(tmp_path / "home" / "a.h5")


def test_lmc_fixture_late_splits_agree_more_and_other_trunks_not_at_all(tmp_path):
    """fixtures/lmc: two trunks of the mlp-wd MLP, branches split at 0, 50 and 500 with
    two data orders each (fixtures/README.md reports the numbers)."""
    branches = sorted((FIXTURES / "lmc").glob("trunk-*/branch-*"))
    assert len(branches) == 12
    result = compare(branches, by="split", home=tmp_path / "home", name="lmc")
    s = result.split
    assert s.steps.tolist() == [0, 50, 500]
    # two trunks × one pair of orders per split; 4 cross-trunk pairs per split
    assert s.same_pairs.tolist() == [2, 2, 2] and s.other_pairs.tolist() == [4, 4, 4]
    same = s.same_score  # [split, matrix], mean over the two trunks' pairs
    # late splits share more top directions than the earliest, in every matrix
    assert (same[2] > same[0]).all(), same
    # branches of different trunks share nothing beyond chance-like levels
    assert s.other_score.max() < 0.15 < same.min()
    assert {e.label for e in result.runs} >= {"trunk-a-branch-split0500-order1"}


def test_lmc_fixture_barrier_equals_the_fixture_scripts_own(tmp_path):
    """--barrier with a real evaluator (the fixture MLP's training loss) reproduces the
    interpolation path that fixtures/make_fixtures.py recorded in the manifest."""
    import json

    mf = make_fixtures()
    x_train, y_train, _, _ = mf.teacher_data()
    model = mf.MLP()

    def train_loss(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x_train), y_train).item()

    manifest = json.loads((FIXTURES / "manifest.json").read_text())["experiments"]["lmc"]
    checked = 0
    for label, runs in (
        ("trunk-a: order 1 vs order 2", ["trunk-a/branch-split0000-order1",
                                         "trunk-a/branch-split0000-order2"]),
        ("trunk-a: order 1 vs order 2", ["trunk-a/branch-split0500-order1",
                                         "trunk-a/branch-split0500-order2"]),
    ):  # fmt: skip
        split = int(runs[0].split("split")[1][:4])
        entry = next(
            c for c in manifest["comparisons"]
            if c["first"] == runs[0] and c["second"] == runs[1]
        )  # fmt: skip
        assert entry["label"] == label and entry["split_step"] == split
        result = compare(
            [FIXTURES / "lmc" / r for r in runs], home=tmp_path / "home", steps="none",
            barrier=BarrierOptions(train_loss, points=11),
        )  # fmt: skip
        bar = result.barriers[0]
        assert bar.loss == pytest.approx(entry["interpolation"]["train_loss"], rel=1e-4, abs=1e-6)
        assert bar.barrier == pytest.approx(entry["train_loss_barrier"], rel=1e-3, abs=1e-6)
        checked += 1
    assert checked == 2


def test_runs_in_different_step_units_are_refused(tmp_path):
    states = _base_states()
    a = write_state_run(tmp_path / "a", states)
    b = tmp_path / "b"
    b.mkdir()
    for epoch, sd in enumerate(states.values()):  # no step anywhere: the run counts epochs
        torch.save({k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()},
                   b / f"epoch_{epoch}.pt")  # fmt: skip
    home = tmp_path / "home"
    with specdyn.open_run(specdyn.analyze(b, home=home, vectors=None).runs[0].store_path) as run:
        assert run.step_unit == "epoch"
    with pytest.raises(CompareError, match=r"different units \(a \(step\), b \(epoch\)\)"):
        compare([a, b], home=home)
