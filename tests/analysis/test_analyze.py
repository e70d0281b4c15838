"""End-to-end tests of `specdyn.analyze` on checkpoints written by the tests."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

import specdyn
from specdyn.errors import ShapeChangedError, SpecdynError, StoreMismatchError


def _mlp_state(seed: int, width: int = 24) -> dict[str, torch.Tensor]:
    """A small MLP state dict with biases (which must be skipped)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(width, 10, generator=g),
        "fc1.bias": torch.randn(width, generator=g),
        "fc2.weight": torch.randn(width, width, generator=g),
        "fc2.bias": torch.randn(width, generator=g),
        "head.weight": torch.randn(3, width, generator=g),
    }


def _write_run(folder, steps=(0, 10, 100)) -> dict[int, dict[str, torch.Tensor]]:
    """torch.save one nested checkpoint per step, named step_N.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    states = {}
    for i, step in enumerate(steps):
        sd = _mlp_state(i)
        states[step] = sd
        torch.save({"model_state_dict": sd, "step": step}, folder / f"step_{step}.pt")
    return states


def _lapack(w: torch.Tensor) -> np.ndarray:
    """Reference singular values: float64 LAPACK."""
    return np.linalg.svd(w.double().numpy(), compute_uv=False)


def test_values_match_float64_lapack_and_metrics(tmp_path):
    states = _write_run(tmp_path / "run")
    result = specdyn.analyze(tmp_path / "run", home=tmp_path / "ws")
    (run,) = result.runs
    assert run.steps_computed == [0, 10, 100]
    assert run.n_matrices == 3
    assert run.skipped  # the biases, counted with a reason
    assert sum(run.skipped.values()) == 2
    with specdyn.open_run("run", home=tmp_path / "ws") as store:
        assert list(store.steps) == [0, 10, 100]
        assert store.matrices == ["fc1.weight", "fc2.weight", "head.weight"]
        for name in store.matrices:
            sigma = store.sigma(name)
            for t, step in enumerate((0, 10, 100)):
                ref = _lapack(states[step][name])
                assert np.max(np.abs(sigma[t, : len(ref)] - ref)) <= 1e-6 * ref[0]
        rank = store.metric("normalized_effective_rank", "fc2.weight")
        ref = _lapack(states[100]["fc2.weight"])
        p = ref / ref.sum()
        assert rank[-1] == pytest.approx(np.exp(-(p * np.log(p)).sum()) / len(ref), rel=1e-9)


def test_rerun_adds_only_missing_steps(tmp_path):
    _write_run(tmp_path / "run", steps=(0, 10))
    home = tmp_path / "ws"
    first = specdyn.analyze(tmp_path / "run", home=home).runs[0]
    assert first.steps_computed == [0, 10]
    again = specdyn.analyze(tmp_path / "run", home=home).runs[0]
    assert again.steps_computed == []
    assert again.steps_already_done == [0, 10]
    sd = _mlp_state(7)
    torch.save({"model_state_dict": sd, "step": 5}, tmp_path / "run" / "step_5.pt")
    third = specdyn.analyze(tmp_path / "run", home=home).runs[0]
    assert third.steps_computed == [5]
    with specdyn.open_run("run", home=home) as store:
        assert list(store.steps) == [0, 5, 10]
        ref = _lapack(sd["fc1.weight"])
        assert np.allclose(store.sigma("fc1.weight")[1], ref, atol=1e-6 * ref[0])


def test_steps_selection_and_changed_options(tmp_path):
    _write_run(tmp_path / "run", steps=(0, 10, 100, 1000))
    home = tmp_path / "ws"
    # values only: with vectors, the agreement's reference (step 1000) would join
    run = specdyn.analyze(tmp_path / "run", home=home, steps="0:100", vectors=None).runs[0]
    assert run.steps_computed == [0, 10, 100]
    with pytest.raises(StoreMismatchError):
        specdyn.analyze(tmp_path / "run", home=home, compute=specdyn.ComputeOptions(exact=True))
    run = specdyn.analyze(
        tmp_path / "run", home=home, compute=specdyn.ComputeOptions(exact=True), overwrite=True
    ).runs[0]
    assert run.steps_computed == [0, 10, 100, 1000]


def test_include_exclude(tmp_path):
    _write_run(tmp_path / "run", steps=(0,))
    run = specdyn.analyze(
        tmp_path / "run",
        home=tmp_path / "ws",
        matrices=specdyn.MatrixSelection(exclude=(r"^head",)),
    ).runs[0]
    assert run.n_matrices == 2
    with specdyn.open_run("run", home=tmp_path / "ws") as store:
        assert "head.weight" not in store.matrices


def test_shape_change_between_steps_is_an_error_naming_the_file(tmp_path):
    _write_run(tmp_path / "run", steps=(0, 10))
    sd = _mlp_state(3, width=32)
    torch.save({"model_state_dict": sd, "step": 20}, tmp_path / "run" / "step_20.pt")
    with pytest.raises(ShapeChangedError) as err:
        specdyn.analyze(tmp_path / "run", home=tmp_path / "ws")
    assert "step_20.pt" in str(err.value)
    assert "\n" not in str(err.value)


def test_nan_and_zero_matrices_warn_and_store_nan(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    sd = _mlp_state(0)
    torch.save({"model_state_dict": sd, "step": 0}, folder / "step_0.pt")
    bad = {k: v.clone() for k, v in sd.items()}
    bad["fc1.weight"][2, 3] = float("nan")
    bad["fc2.weight"].zero_()
    torch.save({"model_state_dict": bad, "step": 1}, folder / "step_1.pt")
    run = specdyn.analyze(folder, home=tmp_path / "ws").runs[0]
    kinds = {(n.kind, n.message.split(" ")[0]) for n in run.notes}
    assert ("nonfinite", "fc1.weight") in kinds
    assert ("zero-matrix", "fc2.weight") in kinds
    with specdyn.open_run("run", home=tmp_path / "ws") as store:
        assert np.isnan(store.metric("normalized_effective_rank", "fc1.weight")[1])
        assert np.isnan(store.metric("normalized_effective_rank", "fc2.weight")[1])
        assert store.metric("spectral_norm", "fc2.weight")[1] == 0.0
        assert np.isfinite(store.metric("normalized_effective_rank", "head.weight")).all()


def test_store_opens_with_plain_h5py(tmp_path):
    _write_run(tmp_path / "run", steps=(0, 10))
    run = specdyn.analyze(tmp_path / "run", home=tmp_path / "ws").runs[0]
    with h5py.File(run.store_path, "r") as f:
        assert f.attrs["format"] == "specdyn-store"
        assert int(f.attrs["schema_version"]) >= 1


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecdynError) as err:
        specdyn.analyze(tmp_path / "empty", home=tmp_path / "ws")
    assert "empty" in str(err.value)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(SpecdynError) as err:
        specdyn.analyze(tmp_path / "nope", home=tmp_path / "ws")
    assert "nope" in str(err.value)


def test_analyze_a_store_of_another_run_is_refused(tmp_path):
    _write_run(tmp_path / "a" / "run", steps=(0,))
    _write_run(tmp_path / "b" / "run", steps=(0,))
    specdyn.analyze(tmp_path / "a" / "run", home=tmp_path / "ws")
    with pytest.raises(StoreMismatchError) as err:
        specdyn.analyze(tmp_path / "b" / "run", home=tmp_path / "ws")
    assert "use name to keep both runs or overwrite=True to replace it" in str(err.value)
    assert "use --name to keep both runs or --overwrite" in err.value.render(cli=True)
    run = specdyn.analyze(tmp_path / "b" / "run", home=tmp_path / "ws", name="run-b").runs[0]
    assert run.name == "run-b"
    assert os.path.exists(run.store_path)


def _sigma_table(store_path) -> dict[str, np.ndarray]:
    """Every stored sigma and metric, read with plain h5py."""
    with h5py.File(store_path, "r") as f:
        out = {f"steps/{k}": f["steps"][k][()] for k in ("step", "done")}
        f["sigma"].visititems(lambda n, d: out.__setitem__(f"sigma/{n}", d[()]))
        f["metrics"].visititems(lambda n, d: out.__setitem__(f"metrics/{n}", d[()]))
    return out


def test_kill_9_inside_a_store_write_then_resume_equals_uninterrupted(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "mlp-wd"
    clean = specdyn.analyze(fixture, home=tmp_path / "clean").runs[0]

    home = tmp_path / "ws"
    specdyn.analyze(fixture, home=home, steps="0:50")  # a partial store first
    marker = tmp_path / "held"
    env = dict(os.environ, SPECDYN_TEST_HOLD_WRITE=str(marker))
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdyn", "analyze", str(fixture), "--home", str(home), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the writer exited before reaching the hold point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    store_path = home / "mlp-wd.h5"
    with h5py.File(store_path, "r") as f:  # opens with plain h5py after the kill
        done = dict(zip(f["steps/step"][()].tolist(), f["steps/done"][()].tolist(), strict=True))
    # the partial run analysed the agreement's reference (the last step, 4000) too
    assert done[0] == 1 and done[50] == 1 and done[100] == 0 and done[4000] == 1
    resumed = specdyn.analyze(fixture, home=home).runs[0]
    assert resumed.steps_already_done == [0, 10, 20, 50, 4000]
    assert resumed.steps_computed == [100, 200, 500, 1000, 2000]
    got, want = _sigma_table(store_path), _sigma_table(clean.store_path)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_progress_events_cover_every_matrix_and_rehashing(tmp_path):
    _write_run(tmp_path / "run", steps=(0, 10, 100))
    events: list[specdyn.Progress] = []
    specdyn.analyze(tmp_path / "run", home=tmp_path / "ws", on_progress=events.append, vectors=None)
    assert not [e for e in events if e.phase == "hashing"]  # hashed while analysed
    last_per_step = {e.step: e for e in events if e.phase == "analysing"}
    assert sorted(last_per_step) == [0, 10, 100]
    assert all(e.matrices_done == e.n_matrices == 3 for e in last_per_step.values())
    assert [e.step_index for e in last_per_step.values()] == [0, 1, 2]
    # a done step whose file looks touched is hashed again before anything else
    os.utime(tmp_path / "run" / "step_10.pt", (1e9, 1e9))
    events.clear()
    specdyn.analyze(tmp_path / "run", home=tmp_path / "ws", on_progress=events.append, vectors=None)
    assert [e.step for e in events if e.phase == "hashing"] == [10]


def test_every_step_records_its_source_and_sha256(tmp_path):
    import hashlib

    _write_run(tmp_path / "run", steps=(0, 10))
    specdyn.analyze(tmp_path / "run", home=tmp_path / "ws")
    with specdyn.open_run("run", home=tmp_path / "ws") as store:
        sources = {int(s["step"]): s for s in store.step_sources}
    for step in (0, 10):
        path = tmp_path / "run" / f"step_{step}.pt"
        assert sources[step]["source"] == str(path)
        assert sources[step]["size"] == path.stat().st_size
        assert sources[step]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_checkpoint_is_reported_not_mixed_in(tmp_path):
    _write_run(tmp_path / "run", steps=(0, 10))
    home = tmp_path / "ws"
    specdyn.analyze(tmp_path / "run", home=home)
    with specdyn.open_run("run", home=home) as store:
        before = store.sigma("fc1.weight").copy()
    torch.save({"model_state_dict": _mlp_state(42), "step": 10}, tmp_path / "run" / "step_10.pt")
    run = specdyn.analyze(tmp_path / "run", home=home).runs[0]
    assert run.steps_computed == []
    changed = [n for n in run.notes if n.kind == "changed-source"]
    assert len(changed) == 1 and "step 10" in changed[0].message
    with specdyn.open_run("run", home=home) as store:
        np.testing.assert_array_equal(store.sigma("fc1.weight"), before)


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
def test_quantised_tensors_are_counted_as_skipped_not_dropped(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    sd = _mlp_state(0)
    sd["q.weight"] = torch.quantize_per_tensor(torch.randn(5, 5), 0.1, 0, torch.qint8)
    torch.save({"model_state_dict": sd, "step": 0}, folder / "step_0.pt")
    run = specdyn.analyze(folder, home=tmp_path / "ws").runs[0]
    assert run.n_matrices == 3
    reasons = [r for r in run.skipped if "unsupported tensor type" in r]
    assert reasons and run.skipped[reasons[0]] == 1
    with specdyn.open_run("run", home=tmp_path / "ws") as store:
        assert ("q.weight", reasons[0]) in [tuple(x) for x in store.skipped]


def test_a_parameter_added_later_is_reported(tmp_path):
    _write_run(tmp_path / "run", steps=(0,))
    sd = _mlp_state(1)
    sd["extra.weight"] = torch.randn(4, 4)
    torch.save({"model_state_dict": sd, "step": 10}, tmp_path / "run" / "step_10.pt")
    run = specdyn.analyze(tmp_path / "run", home=tmp_path / "ws").runs[0]
    assert run.steps_computed == [0, 10]
    (note,) = [n for n in run.notes if n.kind == "new-parameter"]
    assert "extra.weight" in note.message and "step 10" in note.message


def test_a_parameter_missing_later_is_an_error_naming_the_file(tmp_path):
    _write_run(tmp_path / "run", steps=(0,))
    sd = _mlp_state(1)
    del sd["fc2.weight"]
    torch.save({"model_state_dict": sd, "step": 10}, tmp_path / "run" / "step_10.pt")
    with pytest.raises(ShapeChangedError) as err:
        specdyn.analyze(tmp_path / "run", home=tmp_path / "ws")
    assert "step_10.pt" in str(err.value) and "fc2.weight" in str(err.value)
