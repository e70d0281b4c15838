"""Layouts written by other training tools: diffusers / Accelerate output folders, steps
named by a folder above the weights, and initialisation checkpoints (issue 13)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _ckpt_factory import write_hf_folder, write_safetensors, write_torch

import specdyn
from specdyn.errors import DiscoveryError
from specdyn.sources import RunSource, discover, open_checkpoint


def _sd(seed: int) -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)),
        "a.bias": torch.full((4,), float(seed)),
    }


def _unet_state(seed: int) -> dict[str, torch.Tensor]:
    """A tiny state dict in diffusers' UNet key style."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv_in.weight": torch.randn(8, 4, 3, 3, generator=g),
        "conv_in.bias": torch.randn(8, generator=g),
        "down_blocks.0.resnets.0.conv1.weight": torch.randn(8, 8, 3, 3, generator=g),
        "mid_block.attentions.0.to_q.weight": torch.randn(8, 8, generator=g),
        "mid_block.attentions.0.to_k.weight": torch.randn(8, 8, generator=g),
    }


def _text_encoder_state(seed: int) -> dict[str, torch.Tensor]:
    """A tiny state dict in a CLIP text encoder's key style."""
    g = torch.Generator().manual_seed(seed)
    return {
        "text_model.encoder.layers.0.self_attn.q_proj.weight": torch.randn(6, 6, generator=g),
        "text_model.encoder.layers.0.mlp.fc1.weight": torch.randn(12, 6, generator=g),
    }


def _write_component(folder: Path, sd: dict[str, torch.Tensor]) -> None:
    """One diffusers model folder: config.json and diffusion_pytorch_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    safetensors.torch.save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))


def _write_accelerate_state(folder: Path) -> None:
    """What Accelerate's save_state writes beside the models: never weights."""
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    torch.save({"last_epoch": 1}, folder / "scheduler.bin")
    with open(folder / "random_states_0.pkl", "wb") as fh:
        pickle.dump({"step": 0}, fh)


def _write_diffusers_run(out: Path, steps=(100, 200), text_encoder: bool = False) -> None:
    """A diffusers training script's output: checkpoint-N/unet/… per step."""
    for i, step in enumerate(steps):
        folder = out / f"checkpoint-{step}"
        _write_component(folder / "unet", _unet_state(i))
        if text_encoder:
            _write_component(folder / "text_encoder", _text_encoder_state(i))
        _write_accelerate_state(folder)


def _steps(run: RunSource) -> list[int]:
    return [c.step for c in run.checkpoints]


def test_diffusers_training_output_is_analysed_end_to_end(tmp_path):
    out = tmp_path / "out"
    _write_diffusers_run(out)
    found = discover(out)
    (run,) = found.runs
    assert run.name == "out" and _steps(run) == [100, 200]
    assert [c.path for c in run.checkpoints] == [
        out / "checkpoint-100" / "unet",
        out / "checkpoint-200" / "unet",
    ]
    assert all(c.step_origin == "ancestor name" for c in run.checkpoints)
    # optimizer.bin, scheduler.bin, random_states_0.pkl: not weights, one note for all
    (note,) = found.notes
    assert note.kind == "training-state" and note.message.startswith("6 training-state file(s)")
    assert "optimizer.bin, random_states_0.pkl, scheduler.bin" in note.message

    result = specdyn.analyze(out, home=tmp_path / "ws", vectors=None)
    (analysed,) = result.runs
    assert analysed.steps_computed == [100, 200]
    assert analysed.n_matrices >= 3
    with specdyn.open_run("out", home=tmp_path / "ws") as store:
        assert list(store.steps) == [100, 200]
        assert "mid_block.attentions.0.to_q.weight" in store.matrices
        sources = [s["source"] for s in store.step_sources]
        assert sources == [str(out / f"checkpoint-{s}" / "unet") for s in (100, 200)]


def test_diffusers_weight_file_names_make_a_model_folder(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    torch.save(_unet_state(0), folder / "diffusion_pytorch_model.bin")
    ckpt = open_checkpoint(folder)
    assert ckpt.path == folder and ckpt.files == (folder / "diffusion_pytorch_model.bin",)


def test_models_beside_each_other_in_a_step_folder_are_separate_runs(tmp_path):
    out = tmp_path / "out"
    _write_diffusers_run(out, text_encoder=True)
    found = discover(out)
    assert [r.name for r in found.runs] == ["out-text_encoder", "out-unet"]
    for run in found.runs:
        assert _steps(run) == [100, 200]
        assert {c.path.name for c in run.checkpoints} == {run.name.removeprefix("out-")}
    assert [n.kind for n in found.notes if n.kind == "several-runs"] == ["several-runs"]


def test_final_model_beside_step_folders_is_matched_to_its_model(tmp_path):
    out = tmp_path / "out"
    _write_diffusers_run(out, text_encoder=True)
    _write_component(out / "unet", _unet_state(1))  # the final pipeline's unet = step 200
    _write_component(out / "vae", _unet_state(9))  # a model no step folder holds
    found = discover(out)
    assert [r.name for r in found.runs] == ["out-text_encoder", "out-unet"]
    assert _steps(found.runs[1]) == [100, 200]
    (dup,) = [n for n in found.notes if n.kind == "duplicate"]
    assert str(out / "unet") in dup.message and "step 200" in dup.message
    (skipped,) = [n for n in found.notes if n.kind == "no-step"]
    assert skipped.path == str(out / "vae")


@pytest.mark.parametrize(
    "folder, inner, step",
    [
        ("global_step500", "unet", 500),
        ("step_500", "model", 500),
        ("epoch=3-step=500", "weights", 500),
    ],
)
def test_step_from_the_nearest_named_ancestor_folder(tmp_path, folder, inner, step):
    root = tmp_path / "run"
    write_hf_folder(root / folder / inner, _sd(0))
    write_hf_folder(root / folder.replace("500", "900") / inner, _sd(1))
    (run,) = discover(root).runs
    assert _steps(run) == [step, 900]
    assert all(c.step_origin == "ancestor name" for c in run.checkpoints)


def test_nearest_ancestor_wins_and_files_count_too(tmp_path):
    root = tmp_path / "run"
    write_torch(root / "checkpoint-7" / "step_300" / "model" / "weights.pt", _sd(0))
    (run,) = discover(root).runs
    assert _steps(run) == [300] and run.checkpoints[0].step_origin == "ancestor name"


def test_the_analysed_folder_and_folders_above_it_give_no_step(tmp_path):
    # checkpoint-300 is the folder analysed: it is not read for a step, nor step_9 above it.
    root = tmp_path / "step_9" / "checkpoint-300"
    _write_component(root / "unet", _unet_state(0))
    found = discover(root)
    (run,) = found.runs
    assert run.checkpoints[0].step_origin == "default"
    assert [n.kind for n in found.notes] == ["no-step"]


def test_a_step_folder_beyond_int64_is_skipped_with_its_folder_named(tmp_path):
    root = tmp_path / "run"
    write_hf_folder(root / f"step_{2**63}" / "model", _sd(0))
    write_hf_folder(root / "step_5" / "model", _sd(1))
    found = discover(root)
    assert _steps(found.runs[0]) == [5]
    (note,) = [n for n in found.notes if n.kind == "bad-step"]
    assert f"the name of {root / f'step_{2**63}'}" in note.message and "rename it" in note.message


def test_own_name_and_metadata_come_before_an_ancestor(tmp_path):
    root = tmp_path / "run"
    write_torch(root / "checkpoint-1" / "sub" / "step_40.pt", _sd(0))
    write_torch(root / "checkpoint-2" / "sub" / "model.pt", _sd(1), extra={"step": 50})
    (run,) = discover(root).runs
    assert _steps(run) == [40, 50]
    assert [c.step_origin for c in run.checkpoints] == ["name", "metadata:step"]


def test_epoch_init_is_epoch_zero_in_order(tmp_path):
    for name in ("epoch_2.pt", "epoch_init.pt", "epoch_1.pt"):
        write_torch(tmp_path / name, _sd(len(name)))
    found = discover(tmp_path)
    (run,) = found.runs
    assert run.step_unit == "epoch" and _steps(run) == [0, 1, 2]
    assert [c.path.name for c in run.checkpoints] == ["epoch_init.pt", "epoch_1.pt", "epoch_2.pt"]
    (note,) = [n for n in found.notes if n.kind == "init-name"]
    assert "epoch_init.pt" in note.message and "epoch 0" in note.message


@pytest.mark.parametrize(
    "name", ["init", "initial", "untrained", "step_init", "model_init", "resnet18_init", "INIT"]
)
def test_initialisation_names_are_step_zero(tmp_path, name):
    write_torch(tmp_path / f"{name}.pt", _sd(0))
    write_torch(tmp_path / "step_10.pt", _sd(1))
    found = discover(tmp_path)
    (run,) = found.runs
    assert _steps(run) == [0, 10] and run.checkpoints[0].path.name == f"{name}.pt"
    assert run.checkpoints[0].step_origin == "name"
    (note,) = [n for n in found.notes if n.kind == "init-name"]
    assert "step 0" in note.message


def test_init_safetensors_and_model_folder(tmp_path):
    assert open_checkpoint(write_safetensors(tmp_path / "model_init.safetensors", _sd(0))).step == 0
    assert open_checkpoint(write_hf_folder(tmp_path / "checkpoint_init", _sd(0))).step == 0


@pytest.mark.parametrize(
    "name, step",
    [
        ("initializer_run", None),
        ("init_lr_0.1_step_5", 5),
        ("init_lr_0.1", None),
        ("initialization", None),
        ("model_init_v2", None),
        ("reinit", None),
    ],
)
def test_names_that_only_contain_init_are_not_initialisation(tmp_path, name, step):
    ckpt = open_checkpoint(write_torch(tmp_path / f"{name}.pt", _sd(0)))
    assert (ckpt.step, ckpt.epoch) == (step, None)


def test_init_folder_above_a_file_is_not_a_step(tmp_path):
    ckpt = open_checkpoint(write_torch(tmp_path / "init" / "model.pt", _sd(0)))
    assert ckpt.step is None


def test_init_with_different_weights_than_another_step_zero_is_an_error(tmp_path):
    write_torch(tmp_path / "init.pt", _sd(0))
    write_torch(tmp_path / "step_0.pt", _sd(1))
    write_torch(tmp_path / "step_10.pt", _sd(2))
    with pytest.raises(DiscoveryError, match="step 0 is claimed by"):
        discover(tmp_path)


def test_init_with_the_same_weights_as_step_zero_is_a_duplicate(tmp_path):
    write_torch(tmp_path / "init.pt", _sd(0))
    write_torch(tmp_path / "step_0.pt", _sd(0))
    found = discover(tmp_path)
    assert _steps(found.runs[0]) == [0]
    assert [n.kind for n in found.notes if n.kind == "duplicate"] == ["duplicate"]


def test_metadata_step_wins_over_an_init_name(tmp_path):
    write_torch(tmp_path / "model_init.pt", _sd(0), extra={"step": 3})
    found = discover(tmp_path)
    assert _steps(found.runs[0]) == [3]
    assert not [n for n in found.notes if n.kind == "init-name"]
