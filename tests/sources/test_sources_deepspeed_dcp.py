"""Layouts of distributed and multi-model training tools, built with the real libraries
where they run here (diffusers, Accelerate, torch.distributed.checkpoint) and by hand
from DeepSpeed's own key set where they do not (issue 13, item 2).

Each layout: discovery finds the right runs and steps, and the matrices read through the
checkpoint reader are the model's own operator weights (``named_modules``) with the
model's own values (``state_dict``) at that step.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from specdyn.errors import CheckpointError, DiscoveryError, UnsafePickleError
from specdyn.matrices import plan_checkpoint, read_matrices
from specdyn.sources import Checkpoint, discover, open_checkpoint

_OPERATORS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def _operator_weights(model: nn.Module) -> set[str]:
    """The weight of every operator module of `model`, by its state-dict key."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, _OPERATORS)}


def _check_matrices(ckpt: Checkpoint, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The checkpoint holds exactly `state` (names and values), and its planned matrices
    are the operator weights of `model`."""
    planned = plan_checkpoint(ckpt)
    analysed = set()
    with ckpt.open() as reader:
        assert set(reader.keys()) == set(state)
        for key in reader.keys():
            assert torch.equal(reader.get(key), state[key]), key
        for group in read_matrices(reader, planned.plan.matrices):
            analysed |= set(group.tensors)
    assert analysed == _operator_weights(model)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    """One real optimizer step on random data (weights change, optimizer state appears)."""
    g = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    loss = model(torch.randn(4, 6, generator=g)).square().mean()
    loss.backward()
    optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------- diffusers


@pytest.fixture(scope="module")
def unet():
    """A tiny diffusers UNet2DModel (built once: diffusers is slow to set up)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )


@pytest.mark.parametrize(
    "save, fmt, n_files",
    [
        ({"max_shard_size": "20KB", "safe_serialization": True}, "safetensors-sharded", 12),
        ({"max_shard_size": "20KB", "safe_serialization": False}, "torch-sharded", 12),
        ({"safe_serialization": False}, "torch", 1),
    ],
)
def test_diffusers_model_folders_sharded_and_bin(tmp_path, unet, save, fmt, n_files):
    out, states = tmp_path / "out", {}
    for step in (100, 200, 300):
        with torch.no_grad():  # a training step's worth of change (a forward pass costs seconds)
            for param in unet.parameters():
                param.add_(0.01 * torch.randn_like(param))
        unet.save_pretrained(out / f"checkpoint-{step}" / "unet", **save)
        states[step] = _snapshot(unet)
    found = discover(out)
    (run,) = found.runs
    assert run.name == "out" and [c.step for c in run.checkpoints] == [100, 200, 300]
    assert found.notes == []
    for ckpt in run.checkpoints:
        assert ckpt.format == fmt and len(ckpt.files) == n_files
        assert ckpt.step_origin == "ancestor name"
        _check_matrices(ckpt, unet, states[ckpt.step])


# ----------------------------------------------------------------- Accelerate


def _accelerate_run(project: Path, n_models: int, steps: int = 3):
    """Train with the real Accelerate and save_state with automatic checkpoint naming;
    returns the models and each save's state dicts (one per model)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    models = [_mlp(i) for i in range(n_models)]
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.01)
    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(
            project_dir=str(project), automatic_checkpoint_naming=True
        ),
    )
    *models, optimizer = accelerator.prepare(*models, optimizer)
    saved = []
    for i in range(steps):
        for model in models:
            _train(model, optimizer, i)
        accelerator.save_state()
        saved.append([_snapshot(accelerator.unwrap_model(m)) for m in models])
    return models, saved


def test_accelerate_save_state_one_model(tmp_path):
    models, saved = _accelerate_run(tmp_path / "proj", 1)
    found = discover(tmp_path / "proj")
    (run,) = found.runs
    # checkpoint_N counts saves; the step is the optimizer's (issue 24 item 1)
    assert run.name == "proj" and [c.step for c in run.checkpoints] == [1, 2, 3]
    # optimizer.bin, random_states_0.pkl: one note for all; the step note once
    state, note = sorted(found.notes, key=lambda n: n.kind != "training-state")
    assert state.kind == "training-state" and "optimizer.bin" in state.message
    assert "random_states_0.pkl" in state.message and state.message.startswith("6 ")
    assert note.kind == "step-mismatch" and "automatic save index 0" in note.message
    for ckpt, states in zip(run.checkpoints, saved, strict=True):
        assert ckpt.path.name == f"checkpoint_{ckpt.step - 1}" and ckpt.path.is_dir()
        _check_matrices(ckpt, models[0], states[0])


def test_accelerate_save_state_two_models_are_two_runs(tmp_path):
    models, saved = _accelerate_run(tmp_path / "proj", 2)
    folder = tmp_path / "proj" / "checkpoints" / "checkpoint_0"
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "model_1.safetensors"}
    found = discover(tmp_path / "proj")
    assert [r.name for r in found.runs] == ["proj-model", "proj-model_1"]
    kinds = sorted(n.kind for n in found.notes)
    # no "ignored" note for model_1; the state files in one note
    assert kinds == ["several-runs", "step-mismatch", "step-mismatch", "training-state"]
    for index, run in enumerate(found.runs):
        assert [c.step for c in run.checkpoints] == [1, 2, 3]  # the optimizer steps
        for ckpt, states in zip(run.checkpoints, saved, strict=True):
            assert ckpt.model == run.name.removeprefix("proj-")
            _check_matrices(ckpt, models[index], states[index])


def test_accelerate_models_in_a_step_folder_take_the_folder_step(tmp_path):
    # save_state(f"out/step_{n}") by hand: step from the folder, model_1 is no step 1
    for step in (50, 90):
        folder = tmp_path / "out" / f"step_{step}"
        folder.mkdir(parents=True)
        torch.save(_mlp(step).state_dict(), folder / "pytorch_model.bin")
        torch.save(_mlp(step + 1).state_dict(), folder / "pytorch_model_1.bin")
    found = discover(tmp_path / "out")
    assert [r.name for r in found.runs] == ["out-model", "out-model_1"]
    assert all([c.step for c in r.checkpoints] == [50, 90] for r in found.runs)
    assert "save-number" not in {n.kind for n in found.notes}


# ----------------------------------------------------------------- DeepSpeed


def _deepspeed_model_states(model: nn.Module, step: int, zero3: bool = False) -> dict:
    """What DeepSpeedEngine._save_checkpoint writes to mp_rank_00_model_states.pt (its
    key set, deepspeed/runtime/engine.py); ZeRO-3 keeps empty placeholders in module."""
    sd = model.state_dict()
    module = {k: torch.empty(0, dtype=v.dtype) for k, v in sd.items()} if zero3 else sd
    shapes = OrderedDict((n, p.shape) for n, p in model.named_parameters())
    return {
        "module": module,
        "buffer_names": [n for n, _ in model.named_buffers()],
        "optimizer": None,
        "param_shapes": [shapes],
        "frozen_param_shapes": None,
        "shared_params": {},
        "frozen_param_fragments": None,
        "lr_scheduler": {"last_epoch": step},
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": step,
        "global_samples": 8 * step,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_config": {"train_batch_size": 8, "zero_optimization": {"stage": 3 if zero3 else 2}},
        "ds_version": "0.16.4",
    }


def _write_deepspeed(out: Path, model: nn.Module, optimizer, steps, zero3: bool = False) -> dict:
    """DeepSpeed's save_checkpoint layout: global_stepN/ with the model states and the ZeRO
    optimizer states, `latest` and zero_to_fp32.py beside them."""
    states = {}
    for step in steps:
        _train(model, optimizer, step)
        folder = out / f"global_step{step}"
        folder.mkdir(parents=True)
        torch.save(
            _deepspeed_model_states(model, step, zero3), folder / "mp_rank_00_model_states.pt"
        )
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.save(
            {
                "optimizer_state_dict": {
                    "base_optimizer_state": optimizer.state_dict(),
                    "single_partition_of_fp32_groups": [flat],
                    "zero_stage": 3 if zero3 else 2,
                },
                "param_shapes": [OrderedDict((n, p.shape) for n, p in model.named_parameters())],
                "ds_config": {},
                "ds_version": "0.16.4",
            },
            folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        )
        states[step] = _snapshot(model)
    (out / "latest").write_text(f"global_step{steps[-1]}")
    (out / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script\n")
    return states


def test_deepspeed_module_key_and_global_steps(tmp_path):
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    states = _write_deepspeed(tmp_path / "ds", model, optimizer, (10, 20, 30))
    found = discover(tmp_path / "ds")
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == [10, 20, 30]
    assert all(c.step_origin == "metadata:global_steps" for c in run.checkpoints)
    for ckpt in run.checkpoints:
        _check_matrices(ckpt, model, states[ckpt.step])
    by_kind = {n.kind: n for n in found.notes}
    assert sorted(n.kind for n in found.notes) == ["ignored", "not-a-checkpoint"]
    assert "latest and zero_to_fp32.py" in by_kind["ignored"].message
    assert by_kind["not-a-checkpoint"].message.startswith("3 optimizer-state files")


def test_deepspeed_zero3_placeholders_say_to_run_zero_to_fp32(tmp_path):
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _write_deepspeed(tmp_path / "ds", model, optimizer, (10, 20), zero3=True)
    path = tmp_path / "ds" / "global_step10" / "mp_rank_00_model_states.pt"
    with pytest.raises(CheckpointError, match="zero_to_fp32.py") as err:
        open_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(DiscoveryError, match="ZeRO-3.*zero_to_fp32.py"):
        discover(tmp_path / "ds")


def test_deepspeed_tensor_parallel_slice_is_refused(tmp_path):
    states = _deepspeed_model_states(_mlp(), 5) | {"mp_world_size": 2}
    path = tmp_path / "global_step5" / "mp_rank_00_model_states.pt"
    path.parent.mkdir()
    torch.save(states, path)
    with pytest.raises(CheckpointError, match="tensor-parallel slice"):
        open_checkpoint(path)


# ----------------------------------------------------------------- torch.distributed.checkpoint


def _dcp_save(state: dict, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group: "assuming ... a single process"
        dcp.save(state, checkpoint_id=folder)


@pytest.mark.parametrize("layout", ["flat", "torchtitan", "nested"])
def test_distributed_checkpoint_folders(tmp_path, layout):
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    out, states = tmp_path / "outputs" / "checkpoint", {}
    for step in (10, 20, 30):
        _train(model, optimizer, step)
        sd = model.state_dict()
        if layout == "flat":  # FSDP2 style: dcp.save(model.state_dict())
            state = dict(sd)
        elif layout == "torchtitan":  # model keys flattened to the top, state beside them
            state = {
                **sd,
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": {"last_epoch": step},
                "train_state": {"step": torch.tensor(step, dtype=torch.int32)},
            }
        else:
            state = {"model": dict(sd), "optimizer": optimizer.state_dict()}
        _dcp_save(state, out / f"step-{step}")
        states[step] = _snapshot(model)
    assert (out / "step-10" / ".metadata").is_file()
    found = discover(tmp_path / "outputs")
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == [10, 20, 30]
    origin = "metadata:step" if layout == "torchtitan" else "name"
    assert all(c.step_origin == origin and c.format == "torch-dcp" for c in run.checkpoints)
    for ckpt in run.checkpoints:
        _check_matrices(ckpt, model, states[ckpt.step])
    ignored = [n for n in found.notes if n.kind == "ignored"]
    if layout == "flat":
        assert found.notes == []
    else:
        (note,) = ignored
        assert "only the model weights" in note.message and "optimizer" in note.message


def test_distributed_checkpoint_metadata_never_goes_through_pickle_load(tmp_path, monkeypatch):
    model = _mlp()
    _dcp_save(model.state_dict(), tmp_path / "step_1")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.load called")

    monkeypatch.setattr(pickle, "load", refuse)
    ckpt = open_checkpoint(tmp_path / "step_1")
    _check_matrices(ckpt, model, _snapshot(model))


class _Call:
    """Pickles as a call of `func(*args)`."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_distributed_checkpoint_metadata_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "step_1"
    _dcp_save(_mlp().state_dict(), folder)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Call(os.system, (f"touch {marker}",))))
    with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
        open_checkpoint(folder)
    assert not marker.exists()
    with pytest.raises(DiscoveryError, match="refused"):
        discover(tmp_path)


@pytest.mark.parametrize("how", ["relative path", "symlink"])
def test_distributed_checkpoint_data_file_outside_the_folder_is_refused(tmp_path, how):
    from torch.distributed.checkpoint import FileSystemReader

    folder = tmp_path / "ckpt" / "step_1"
    _dcp_save(_mlp().state_dict(), folder)
    outside = tmp_path / "outside.distcp"
    outside.write_bytes((folder / "__0_0.distcp").read_bytes())
    if how == "symlink":
        (folder / "__0_0.distcp").unlink()
        (folder / "__0_0.distcp").symlink_to(outside)
    else:
        metadata = FileSystemReader(folder).read_metadata()  # our own file: torch may read it
        for info in metadata.storage_data.values():
            info.relative_path = "../../outside.distcp"
        buf = io.BytesIO()
        pickle.dump(metadata, buf)
        (folder / ".metadata").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="points outside its folder") as err:
        open_checkpoint(folder)
    assert getattr(err.value, "kind", None) == "unsafe-index"
