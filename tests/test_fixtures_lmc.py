"""The linear-mode-connectivity fixture (fixtures/lmc): layout, file contents, split points,
seeds, sha256s, and the agreement / interpolation numbers its manifest entry and README claim.

Two MLP trunks (trunk-a, trunk-b: different initialisation and data order) on the mlp-wd task;
each spawns branches at steps 0, 50 and 500 with data orders 1 and 2 (the same order seeds under
both trunks), all trained to step 4000. Numbers are recomputed here from the weights with an
independent float64 numpy forward pass and SVD.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixture_script import make_fixtures

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LMC = FIXTURES / "lmc"
ENTRY = json.loads((FIXTURES / "manifest.json").read_text())["experiments"]["lmc"]
TRUNKS = ("a", "b")
SPLITS = (0, 50, 500)
ORDERS = (1, 2)
TRUNK_STEPS = (0, 10, 50, 200, 500, 4000)
FINAL = 4000
METRIC_KEYS = {"model_state_dict", "step", "epoch", "train_loss", "train_acc", "val_acc"}
BRANCH_KEYS = {"trunk", "split_step", "branch_order", "order_seed"}
PARAMETERS = {f"layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")}


mf = make_fixtures()


def _branch(trunk: str, split: int, order: int) -> str:
    """A branch folder relative to fixtures/lmc."""
    return f"trunk-{trunk}/branch-split{split:04d}-order{order}"


def _expected_files() -> dict[str, int]:
    """Every file the layout promises (relative to fixtures/lmc) -> its step."""
    files = {}
    for trunk in TRUNKS:
        for step in TRUNK_STEPS:
            files[f"trunk-{trunk}/trunk/step_{step:06d}.pt"] = step
        for split in SPLITS:
            for order in ORDERS:
                for step in (split, FINAL):
                    files[f"{_branch(trunk, split, order)}/step_{step:06d}.pt"] = step
    return files


@functools.cache
def _checkpoint(relative: str) -> dict:
    """A fixture file loaded the safe way."""
    return torch.load(LMC / relative, weights_only=True)


def _weights(relative: str) -> dict[str, np.ndarray]:
    """The float64 numpy parameters of a fixture file."""
    state = _checkpoint(relative)["model_state_dict"]
    return {key: value.numpy().astype(np.float64) for key, value in state.items()}


def _final(run: str) -> str:
    """The step-4000 file of a run folder."""
    return f"{run}/step_{FINAL:06d}.pt"


@functools.cache
def _data() -> tuple[np.ndarray, ...]:
    """The mlp-wd teacher task as float64 / int numpy arrays."""
    return tuple(
        t.numpy().astype(np.float64 if t.is_floating_point() else np.int64)
        for t in mf.teacher_data()
    )


def _loss_and_accuracy(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray):
    """Cross-entropy and accuracy of the ReLU MLP, forward pass in float64 numpy."""
    h = x
    for i in range(3):
        h = np.maximum(h @ weights[f"layers.{i}.weight"].T + weights[f"layers.{i}.bias"], 0.0)
    logits = h @ weights["layers.3.weight"].T + weights["layers.3.bias"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean(), (logits.argmax(axis=1) == y).mean()


def _agreement(first: np.ndarray, second: np.ndarray, top: int = 10) -> float:
    """Mean of the first min(top, rank) diagonal entries of |U1^T U2| * |V1^T V2|."""
    u1, _, vt1 = np.linalg.svd(first, full_matrices=False)
    u2, _, vt2 = np.linalg.svd(second, full_matrices=False)
    k = min(top, len(vt1))
    diagonal = np.diag(np.abs(u1.T @ u2)) * np.diag(np.abs(vt1 @ vt2.T))
    return float(diagonal[:k].mean())


def _comparisons(kind: str) -> list[dict]:
    """The manifest's comparisons of one kind ('same trunk' or 'different trunks')."""
    return [c for c in ENTRY["comparisons"] if c["kind"] == kind]


# ------------------------------------------------------------------ layout and files


def test_layout_is_two_trunks_with_six_branches_each_and_matches_the_manifest():
    on_disk = {p.relative_to(LMC).as_posix() for p in LMC.rglob("*") if p.is_file()}
    assert on_disk == set(_expected_files())
    assert ENTRY["files"] == _expected_files()
    assert sorted(p.name for p in LMC.iterdir()) == ["trunk-a", "trunk-b"]
    for trunk in TRUNKS:
        branches = sorted(p.name for p in (LMC / f"trunk-{trunk}").glob("branch-*/"))
        assert branches == sorted(
            _branch(trunk, s, o).split("/")[1] for s in SPLITS for o in ORDERS
        )
        for branch in branches:
            assert len(list((LMC / f"trunk-{trunk}" / branch).iterdir())) <= 3
    runs = {f"trunk-{t}/trunk": list(TRUNK_STEPS) for t in TRUNKS}
    runs |= {_branch(t, s, o): [s, FINAL] for t in TRUNKS for s in SPLITS for o in ORDERS}
    assert ENTRY["runs"] == runs
    assert ENTRY["split_steps"] == list(SPLITS) and ENTRY["trunk_steps"] == list(TRUNK_STEPS)


def test_manifest_sha256_match_the_files():
    assert set(ENTRY["sha256"]) == set(ENTRY["files"])
    for relative, digest in ENTRY["sha256"].items():
        assert hashlib.sha256((LMC / relative).read_bytes()).hexdigest() == digest, relative


def test_files_are_mlp_wd_nested_dicts_with_branch_metadata():
    batches_per_epoch = mf.MLP_N_TRAIN // mf.MLP_BATCH
    for relative, step in _expected_files().items():
        checkpoint = _checkpoint(relative)
        folder = relative.split("/")[1]
        expected_keys = METRIC_KEYS if folder == "trunk" else METRIC_KEYS | BRANCH_KEYS
        assert set(checkpoint) == expected_keys, relative  # no optimizer state anywhere
        assert checkpoint["step"] == step
        assert checkpoint["epoch"] == max(step - 1, 0) // batches_per_epoch
        assert set(checkpoint["model_state_dict"]) == PARAMETERS
        assert checkpoint["model_state_dict"]["layers.1.weight"].shape == (96, 96)
        if folder != "trunk":
            assert (
                folder
                == f"branch-split{checkpoint['split_step']:04d}-order{checkpoint['branch_order']}"
            )
            assert relative.startswith(f"trunk-{checkpoint['trunk']}/")


def test_each_branch_starts_from_the_trunk_checkpoint_at_its_split_step():
    for trunk in TRUNKS:
        for split in SPLITS:
            trunk_file = _checkpoint(f"trunk-{trunk}/trunk/step_{split:06d}.pt")
            for order in ORDERS:
                first = _checkpoint(f"{_branch(trunk, split, order)}/step_{split:06d}.pt")
                assert first["split_step"] == split
                for key, value in trunk_file["model_state_dict"].items():
                    # byte-equal, not merely close
                    assert (
                        value.numpy().tobytes() == first["model_state_dict"][key].numpy().tobytes()
                    )
                for key in ("train_loss", "train_acc", "val_acc", "epoch"):
                    assert first[key] == trunk_file[key]


def test_every_run_ends_at_the_same_final_step_and_branches_really_trained():
    runs = [f"trunk-{t}/trunk" for t in TRUNKS]
    runs += [_branch(t, s, o) for t in TRUNKS for s in SPLITS for o in ORDERS]
    finals = {run: _weights(_final(run))["layers.1.weight"] for run in runs}
    assert all(_checkpoint(_final(run))["step"] == FINAL for run in runs)
    for i, first in enumerate(runs):
        for second in runs[i + 1 :]:
            assert not np.allclose(finals[first], finals[second], atol=1e-4), (first, second)
    for run in runs:
        assert _checkpoint(_final(run))["train_acc"] >= 0.999, run  # every run fits the data
        assert ENTRY["final"][run]["val_acc"] == _checkpoint(_final(run))["val_acc"]


def test_trunks_start_from_different_initialisations():
    a = _weights("trunk-a/trunk/step_000000.pt")
    b = _weights("trunk-b/trunk/step_000000.pt")
    for key in PARAMETERS:
        assert not np.allclose(a[key], b[key]), key
    # but an initialisation, not a random tensor: the same PyTorch default scale
    assert np.abs(a["layers.1.weight"]).max() <= 1 / np.sqrt(96)


def test_branch_order_seeds_are_shared_across_trunks_and_differ_between_orders():
    seeds = {}
    for trunk in TRUNKS:
        for split in SPLITS:
            for order in ORDERS:
                for step in (split, FINAL):
                    checkpoint = _checkpoint(f"{_branch(trunk, split, order)}/step_{step:06d}.pt")
                    assert checkpoint["branch_order"] == order
                    seeds.setdefault(order, set()).add(checkpoint["order_seed"])
    assert all(len(found) == 1 for found in seeds.values())  # same seed under trunk-a and trunk-b
    branch_seeds = {order: found.pop() for order, found in seeds.items()}
    assert len(set(branch_seeds.values())) == len(ORDERS)
    assert ENTRY["branch_order_seeds"] == {str(o): s for o, s in branch_seeds.items()}
    trunk_seeds = {s for seeds in ENTRY["trunks"].values() for s in seeds.values()}
    assert len(trunk_seeds) == 4 and not trunk_seeds & set(branch_seeds.values())


# ------------------------------------------------------------------ measured numbers


def test_recorded_agreement_and_interpolation_match_an_independent_computation():
    x_train, y_train, x_val, y_val = _data()
    assert len(ENTRY["comparisons"]) == 12
    for comparison in ENTRY["comparisons"]:
        first, second = (
            _weights(_final(comparison["first"])),
            _weights(_final(comparison["second"])),
        )
        for key, recorded in comparison["agreement"].items():
            assert _agreement(first[key], second[key]) == pytest.approx(recorded, abs=1e-6), key
        path = comparison["interpolation"]
        assert path["alpha"] == pytest.approx([i / 10 for i in range(11)])
        middle = {key: 0.5 * first[key] + 0.5 * second[key] for key in first}
        train_loss, _ = _loss_and_accuracy(middle, x_train, y_train)
        _, val_acc = _loss_and_accuracy(middle, x_val, y_val)
        assert train_loss == pytest.approx(path["train_loss"][5], rel=1e-4)
        assert val_acc == pytest.approx(comparison["val_acc_midpoint"], abs=3 / len(y_val))
        losses = np.array(path["train_loss"])
        alphas = np.array(path["alpha"])
        line = (1 - alphas) * losses[0] + alphas * losses[-1]
        assert comparison["train_loss_barrier"] == pytest.approx((losses - line).max())


def test_readme_lmc_table_matches_the_manifest():
    text = (FIXTURES / "README.md").read_text()
    table = text.split(mf.RESULTS_BEGIN)[1].split(mf.RESULTS_END)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| trunk-")
    ]
    assert len(rows) == len(ENTRY["comparisons"])
    for cells, comparison in zip(rows, ENTRY["comparisons"], strict=True):
        assert cells[0] == comparison["label"] and int(cells[1]) == comparison["split_step"]
        agreements = [float(c) for c in cells[2:6]]
        assert agreements == pytest.approx(list(comparison["agreement"].values()), abs=6e-4)
        assert float(cells[7]) == pytest.approx(comparison["val_acc_midpoint"], abs=6e-4)
        assert float(cells[8]) == pytest.approx(comparison["train_loss_barrier"], abs=6e-5)


def test_what_the_readme_says_the_fixture_shows():
    same, different = _comparisons("same trunk"), _comparisons("different trunks")
    for comparison in same:
        # shared trunk: top directions shared, midpoint about as good as the ends
        assert min(comparison["agreement"].values()) > 0.4, comparison["label"]
        assert comparison["train_loss_barrier"] < 0.05
        assert comparison["val_acc_midpoint"] > min(comparison["val_acc_ends"]) - 0.02
    for comparison in different:
        # different trunks, same split step and branch order: neither agreement nor LMC
        assert max(comparison["agreement"].values()) < 0.15, comparison["label"]
        assert comparison["train_loss_barrier"] > 0.5
        assert comparison["val_acc_midpoint"] < 0.65
    by_split = {(c["label"], c["split_step"]): c for c in same}
    for trunk in TRUNKS:
        early = by_split[(f"trunk-{trunk}: order 1 vs order 2", 0)]
        late = by_split[(f"trunk-{trunk}: order 1 vs order 2", 500)]
        assert late["train_loss_barrier"] < early["train_loss_barrier"] / 5
        for key, value in late["agreement"].items():
            assert value > early["agreement"][key], (trunk, key)
