"""Runs told apart by their file names in one flat folder, and files that hold no weights
counted once per kind (issue 13, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import specdyn
from specdyn.errors import DiscoveryError
from specdyn.sources import Discovery, RunSource, discover
from specdyn.sources._stepnames import run_stem


def _model(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))


def _save_run(folder: Path, names: list[str], kind: str = "mlp", seed: int = 0) -> dict:
    """Train one model a little between saves, saving its state dict under each name in
    turn; returns name → the state dict saved under it."""
    model = _model(kind, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = {}
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(100 * seed + i)
        x = (
            torch.randn(4, 3, 6, 6, generator=g)
            if kind == "cnn"
            else torch.randn(4, 5, generator=g)
        )
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / name)
        saved[name] = {k: v.clone() for k, v in model.state_dict().items()}
    return saved


def _steps(run: RunSource) -> list[int]:
    return [c.step for c in run.checkpoints]


def _by_name(found: Discovery) -> dict[str, RunSource]:
    return {r.name: r for r in found.runs}


def _holds(run: RunSource, saved: dict) -> None:
    """Each checkpoint of `run` holds exactly the state dict saved under its file name."""
    for ckpt in run.checkpoints:
        expected = saved[ckpt.path.name]
        with ckpt.open() as reader:
            assert set(reader.keys()) == set(expected)
            for key in reader.keys():
                assert torch.equal(reader.get(key), expected[key])


def test_runs_told_apart_by_their_stems(tmp_path):
    sweep = tmp_path / "sweep"
    a = _save_run(sweep, ["runA_epoch_1.pth", "runA_epoch_2.pth"], seed=1)
    b = _save_run(sweep, ["runB_epoch_1.pth", "runB_epoch_2.pth"], seed=2)
    m = _save_run(sweep, ["model_epoch_1.pth"], seed=3)
    found = discover(sweep)
    runs = _by_name(found)
    assert sorted(runs) == ["model", "runA", "runB"]
    assert _steps(runs["runA"]) == [1, 2] and _steps(runs["runB"]) == [1, 2]
    assert _steps(runs["model"]) == [1]
    assert all(r.step_unit == "epoch" and r.root == sweep for r in found.runs)
    _holds(runs["runA"], a)
    _holds(runs["runB"], b)
    _holds(runs["model"], m)
    (note,) = [n for n in found.notes if n.kind == "several-runs"]
    assert "3 runs (model, runA, runB)" in note.message


def test_each_stem_is_analysed_into_its_own_store(tmp_path):
    sweep = tmp_path / "sweep"
    _save_run(sweep, ["runA_step_10.pt", "runA_step_20.pt"], seed=1)
    _save_run(sweep, ["runB_step_10.pt", "runB_step_20.pt"], seed=2)
    result = specdyn.analyze(sweep, home=tmp_path / "ws", vectors=None)
    assert sorted(Path(r.store_path).name for r in result.runs) == ["runA.h5", "runB.h5"]
    for name in ("runA", "runB"):
        with specdyn.open_run(name, home=tmp_path / "ws") as store:
            assert list(store.steps) == [10, 20]
            sources = [Path(s["source"]).name for s in store.step_sources]
            assert sources == [f"{name}_step_10.pt", f"{name}_step_20.pt"]


@pytest.mark.parametrize(
    "names",
    [
        [f"epoch_{i}.pt" for i in range(1, 10)],
        ["model_1.pt", "model_2.pt", "model_3.pt"],
        ["epoch=0-val_loss=0.91.ckpt", "epoch=1-val_loss=0.52.ckpt", "epoch=2-val_loss=0.40.ckpt"],
        ["net_step_5.pt", "net_step_10.pt", "best_net_step_7.pt"],
    ],
)
def test_names_that_differ_only_in_the_step_are_one_run(tmp_path, names):
    folder = tmp_path / "training"
    saved = _save_run(folder, names)
    found = discover(folder)
    (run,) = found.runs
    assert run.name == "training"
    assert sorted(c.path.name for c in run.checkpoints) == sorted(names)
    _holds(run, saved)
    assert "several-runs" not in {n.kind for n in found.notes}


def test_a_final_model_joins_the_run_of_its_name(tmp_path):
    sweep = tmp_path / "sweep"
    a = _save_run(sweep, ["model_epoch_1.pt", "model_epoch_2.pt"], seed=1)
    _save_run(sweep, ["other_epoch_1.pt", "other_epoch_2.pt"], seed=2)
    torch.save(a["model_epoch_2.pt"], sweep / "model.pt")  # the final model: epoch 2's weights
    found = discover(sweep)
    assert sorted(_by_name(found)) == ["model", "other"]
    assert _steps(_by_name(found)["model"]) == [1, 2]
    (dup,) = [n for n in found.notes if n.kind == "duplicate"]
    assert dup.path == str(sweep / "model.pt") and "epoch 2" in dup.message


def test_a_file_without_step_matching_no_run_is_skipped_with_a_note(tmp_path):
    sweep = tmp_path / "sweep"
    _save_run(sweep, ["runA_epoch_1.pt", "runA_epoch_2.pt"], seed=1)
    _save_run(sweep, ["runB_epoch_1.pt", "runB_epoch_2.pt"], seed=2)
    _save_run(sweep, ["weights.pt"], seed=9)
    found = discover(sweep)
    assert sorted(_by_name(found)) == ["runA", "runB"]
    (note,) = [n for n in found.notes if n.kind == "no-step"]
    assert note.path == str(sweep / "weights.pt") and "rename it" in note.message


def test_the_empty_stem_keeps_the_folder_name(tmp_path):
    sweep = tmp_path / "sweep"
    _save_run(sweep, ["epoch_1.pt", "epoch_2.pt"], seed=1)
    _save_run(sweep, ["ema_epoch_1.pt", "ema_epoch_2.pt"], seed=2)
    assert sorted(_by_name(discover(sweep))) == ["ema", "sweep"]


def test_a_stem_equal_to_the_folder_name_is_prefixed(tmp_path):
    folder = tmp_path / "model"
    _save_run(folder, ["epoch_1.pt", "epoch_2.pt"], seed=1)
    _save_run(folder, ["model_epoch_1.pt", "model_epoch_2.pt"], seed=2)
    assert sorted(_by_name(discover(folder))) == ["model", "model-model"]


def test_stems_with_no_model_in_common_are_separate_runs(tmp_path):
    # No epoch is claimed twice, but an MLP and a CNN are not one trajectory.
    sweep = tmp_path / "sweep"
    _save_run(sweep, ["mlp_step_1.pt", "mlp_step_2.pt"], kind="mlp")
    _save_run(sweep, ["cnn_step_3.pt", "cnn_step_4.pt"], kind="cnn")
    runs = _by_name(discover(sweep))
    assert sorted(runs) == ["cnn", "mlp"]
    assert _steps(runs["mlp"]) == [1, 2] and _steps(runs["cnn"]) == [3, 4]


def test_one_stem_claiming_a_step_twice_is_still_an_error(tmp_path):
    sweep = tmp_path / "sweep"
    _save_run(sweep, ["runA_epoch_1.pt"], seed=1)
    _save_run(sweep, ["runA-epoch_1.pt"], seed=2)
    _save_run(sweep, ["runB_epoch_1.pt"], seed=3)
    with pytest.raises(DiscoveryError, match="epoch 1 is claimed by"):
        discover(sweep)


def test_stems_inside_a_folder_of_runs_are_prefixed_with_its_run(tmp_path):
    _save_run(tmp_path / "root" / "exp1", ["a_step_1.pt", "a_step_2.pt"], seed=1)
    _save_run(tmp_path / "root" / "exp1", ["b_step_1.pt", "b_step_2.pt"], seed=2)
    _save_run(tmp_path / "root" / "exp2", ["step_1.pt", "step_2.pt"], kind="cnn", seed=3)
    assert sorted(_by_name(discover(tmp_path / "root"))) == ["exp1-a", "exp1-b", "exp2"]


@pytest.mark.parametrize(
    "name, stem",
    [
        ("runA_epoch_1", "runA"),
        ("model_12", "model"),
        ("resnet18_init", "resnet18"),
        ("epoch_init", ""),
        ("epoch=3-step=500", ""),
        ("model-epoch=2-val_loss=0.32", "model"),
        ("lr0.1_step_100", "lr0.1"),
        ("last", ""),
        ("global_step300", ""),
        ("a_step_1_b", "a_b"),
        ("mp_rank_00_model_states", "mp_rank_00_model_states"),
    ],
)
def test_run_stem(name, stem):
    assert run_stem(name) == stem


# ----------------------------------------------------------------- files that hold no weights


def test_files_without_weights_are_counted_once_per_kind(tmp_path):
    folder = tmp_path / "run"
    saved = _save_run(folder, ["step_1.pt", "step_2.pt"])
    model = _model("mlp", 0)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 5)).sum().backward()
    optimizer.step()
    for i in range(12):
        torch.save(optimizer.state_dict(), folder / f"optimizer_step_{i}.pt")
    for i in range(3):
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        torch.save(grads, folder / f"grads_step_{i}.pt")  # looks like weights: told by name
    torch.save({"loss": 0.5, "acc": 0.9}, folder / "metrics_step_1.pt")
    torch.save({"loss": 0.4, "acc": 0.95}, folder / "metrics_step_2.pt")
    found = discover(folder)
    (run,) = found.runs
    _holds(run, saved)
    notes = [n for n in found.notes if n.kind == "not-a-checkpoint"]
    assert len(notes) == 3 and len(found.notes) == 3
    messages = sorted(n.message for n in notes)
    assert messages[0].startswith("12 optimizer-state files (")
    assert messages[1].startswith("2 files without weight tensors (")
    assert messages[2].startswith("3 gradient files (by their names) (")
    assert all("no weights; skipped" in m and "\n" not in m for m in messages)


def test_a_single_file_without_weights_keeps_its_own_message(tmp_path):
    folder = tmp_path / "run"
    _save_run(folder, ["step_1.pt", "step_2.pt"])
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": []}]}, folder / "opt_1.pt")
    (note,) = discover(folder).notes
    assert note.kind == "not-a-checkpoint" and note.path == str(folder / "opt_1.pt")
    assert "optimizer state only" in note.message


@pytest.mark.parametrize("name", ["grad_clip_1.0_step_5.pt", "gradnorm_step_5.pt"])
def test_names_that_only_mention_gradients_are_weights(tmp_path, name):
    folder = tmp_path / "run"
    _save_run(folder, [name])
    (run,) = discover(folder).runs
    assert [c.path.name for c in run.checkpoints] == [name]
