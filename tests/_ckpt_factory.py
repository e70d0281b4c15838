"""Write checkpoints in the formats real tools produce, for tests (shared by test modules).

Every writer takes a state dict (name → tensor) and returns the path it wrote:

    sd = sample_state_dict()
    write_torch(tmp / "step_100.pt", sd, nest="model_state_dict", extra={"step": 100})
    write_torch(tmp / "old.pt", sd, legacy=True)                  # pre-1.6 non-zip format
    write_safetensors(tmp / "w.safetensors", sd, metadata={"step": "100"})
    write_sharded(tmp / "shards", sd, "safetensors", n_shards=3)  # → the *.index.json
    write_hf_folder(tmp / "model", sd, config={"model_type": "x"}, fmt="bin", n_shards=2)
    write_trainer_checkpoint(tmp / "out", 500, sd)                # → out/checkpoint-500/
    write_lightning_like(tmp / "epoch=1-step=10.ckpt", sd, global_step=10, epoch=1,
                         hparams_object=HParams(lr=np.float64(1e-3)))
    write_malicious(tmp / "evil.pt", os.system, ("touch /tmp/x",))
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

__all__ = [
    "sample_state_dict",
    "write_torch",
    "write_safetensors",
    "write_sharded",
    "write_hf_folder",
    "write_trainer_checkpoint",
    "write_lightning_like",
    "write_malicious",
    "write_plain_pickle",
    "HParams",
    "SIDE_EFFECTS",
    "record_side_effect",
]

# Anything code from a checkpoint managed to run appends here (tests assert it stays empty).
SIDE_EFFECTS: list[str] = []


class HParams(dict):
    """A hyper-parameter container like Lightning's AttributeDict. Unpickling it for real
    runs `__setstate__`, which records a side effect: a safe reader must not."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.origin = "save_hyperparameters"  # non-empty __dict__: pickles a BUILD state

    def __setstate__(self, state: dict) -> None:
        SIDE_EFFECTS.append("HParams.__setstate__ ran")
        self.__dict__.update(state)


def record_side_effect(what: str) -> str:
    """A module-level function a pickle can be made to call; records that it ran."""
    SIDE_EFFECTS.append(what)
    return what


class _Call:
    """Pickles as a call of `func(*args)` (what a malicious checkpoint does)."""

    def __init__(self, func: Any, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def sample_state_dict(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A small model's state dict: linear, conv, embedding, LSTM, 1-D and integer buffers.

    Values are deterministic in `seed`; floating tensors have `dtype`.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        "embed.weight": rnd(11, 6),
        "conv.weight": rnd(4, 3, 3, 3),
        "conv.bias": rnd(4),
        "lstm.weight_ih_l0": rnd(32, 6),
        "fc1.weight": rnd(8, 6),
        "fc1.bias": rnd(8),
        "fc2.weight": rnd(3, 8),
        "norm.running_mean": rnd(8),
        "norm.num_batches_tracked": torch.tensor(seed + 7, dtype=torch.int64),
        "mask": torch.arange(6) % 2 == 0,
    }


def _nest(sd: dict, nest: str | tuple[str, ...] | None, extra: dict | None) -> dict:
    """Wrap `sd` under the key path `nest` and add `extra` top-level entries."""
    obj: Any = dict(sd)
    if nest:
        for key in reversed((nest,) if isinstance(nest, str) else tuple(nest)):
            obj = {key: obj}
    if extra:
        obj = {**obj, **extra}
    return obj


def write_torch(path: Path, state_dict: dict, *, nest: str | tuple[str, ...] | None = None,
                extra: dict | None = None, legacy: bool = False) -> Path:
    """torch.save `state_dict`, optionally nested under `nest` (e.g. "model_state_dict" or
    ("model", "module")) with `extra` top-level entries; `legacy` = the non-zip format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_nest(state_dict, nest, extra), path, _use_new_zipfile_serialization=not legacy)
    return path


def write_safetensors(path: Path, sd: dict, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file of `sd` (tensors copied so shared storages are allowed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path),
                                metadata=metadata)
    return path


def _split(sd: dict, n_shards: int) -> list[dict]:
    """Split a state dict into `n_shards` non-empty parts, keeping order."""
    keys = list(sd)
    n = max(1, min(n_shards, len(keys)))
    bounds = [round(i * len(keys) / n) for i in range(n + 1)]
    return [{k: sd[k] for k in keys[bounds[i]:bounds[i + 1]]} for i in range(n)]


def write_sharded(folder: Path, sd: dict, fmt: str = "safetensors", n_shards: int = 2, *,
                  prefix: str | None = None, metadata: dict | None = None) -> Path:
    """Shards of `sd` in HF naming plus their ``*.index.json``; returns the index path.

    fmt: "safetensors" (model-0000i-of-0000n.safetensors) or "bin"/"torch"
    (pytorch_model-0000i-of-0000n.bin).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = fmt == "safetensors"
    stem = prefix or ("model" if st else "pytorch_model")
    ext = "safetensors" if st else "bin"
    parts = _split(sd, n_shards)
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"{stem}-{i:05d}-of-{len(parts):05d}.{ext}"
        if st:
            write_safetensors(folder / name, part)
        else:
            write_torch(folder / name, part)
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = folder / f"{stem}.{ext}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total, **(metadata or {})},
                                 "weight_map": weight_map}, indent=1))
    return index


def write_hf_folder(folder: Path, sd: dict, config: dict | None = None, fmt: str = "safetensors",
                    *, n_shards: int = 1, trainer_state: dict | None = None,
                    trainer_extras: bool = False) -> Path:
    """An HF model folder: config.json and model.safetensors / pytorch_model.bin (sharded
    with an index when n_shards > 1); optional trainer_state.json and the Trainer's
    optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "toy", "hidden_size": 6}))
    if n_shards > 1:
        write_sharded(folder, sd, fmt, n_shards)
    elif fmt == "safetensors":
        write_safetensors(folder / "model.safetensors", sd)
    else:
        write_torch(folder / "pytorch_model.bin", sd)
    if trainer_state is not None:
        (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    if trainer_extras:
        moments = {k: torch.zeros_like(v) for k, v in sd.items() if v.is_floating_point()}
        torch.save({"state": {i: {"exp_avg": m} for i, m in enumerate(moments.values())},
                    "param_groups": [{"lr": 1e-3, "params": list(range(len(moments)))}]},
                   folder / "optimizer.pt")
        torch.save({"last_epoch": 3, "_step_count": 4}, folder / "scheduler.pt")
        torch.save({"python": [1, 2, 3], "numpy": ("MT19937", np.arange(4, dtype=np.uint32)),
                    "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
        torch.save(_Call(dict, ()), folder / "training_args.bin")
    return folder


def write_trainer_checkpoint(output_dir: Path, step: int, sd: dict, *, fmt: str = "safetensors",
                             extras: bool = True, epoch: float | None = None) -> Path:
    """``output_dir/checkpoint-<step>/`` as transformers.Trainer writes it (trainer_state.json
    with global_step, and with `extras` the optimizer/scheduler/RNG/args files)."""
    state = {"global_step": step, "epoch": float(epoch if epoch is not None else step / 10),
             "log_history": [{"loss": 1.0 / (1 + step), "step": step}], "max_steps": 10_000}
    return write_hf_folder(Path(output_dir) / f"checkpoint-{step}", sd, fmt=fmt,
                           trainer_state=state, trainer_extras=extras)


def write_lightning_like(path: Path, sd: dict, global_step: int, epoch: int,
                         hparams_object: Any = None, *, callbacks: bool = True,
                         callback_score: float = 0.5) -> Path:
    """A checkpoint with the structure Lightning's ModelCheckpoint writes: weights under
    ``state_dict`` with the ``model.`` prefix, epoch/global_step, loops, callback state
    (which differs between ``last.ckpt`` and the step file: use `callback_score`),
    optimizer state with numpy scalars, and ``hyper_parameters`` = `hparams_object`."""
    moments = {f"model.{k}": torch.zeros_like(v) for k, v in sd.items() if v.is_floating_point()}
    ckpt = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
            "total": {"ready": epoch + 1, "completed": epoch}}, "epoch_loop.batch_progress": {
            "total": {"ready": global_step, "completed": global_step}}}},
        "optimizer_states": [{"state": {i: {"step": torch.tensor(float(global_step)), "exp_avg": m}
                                        for i, m in enumerate(moments.values())},
                              "param_groups": [{"lr": np.float64(1e-3), "betas": (0.9, 0.999),
                                                "weight_decay": np.float64(0.01),
                                                "params": list(range(len(moments)))}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams_object if hparams_object is not None else {
            "lr": np.float64(1e-3), "width": np.int64(8), "grid": np.linspace(0, 1, 3)},
    }
    if callbacks:
        ckpt["callbacks"] = {
            "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": None, "best_model_score": torch.tensor(callback_score),
                "best_model_path": str(path), "current_score": None, "dirpath": str(Path(path).parent),
                "best_k_models": {str(path): torch.tensor(callback_score)},
                "kth_best_model_path": "", "kth_value": torch.tensor(float("inf")),
                "last_model_path": str(path)},
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def write_malicious(path: Path, func: Any, args: tuple, *, with_weights: bool = True) -> Path:
    """torch.save a checkpoint whose pickle calls ``func(*args)`` when loaded normally
    (beside a real state dict when `with_weights`)."""
    obj: dict = {"state_dict": sample_state_dict()} if with_weights else {}
    obj["payload"] = _Call(func, args)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_plain_pickle(path: Path, obj: Any) -> Path:
    """pickle.dump `obj` (not torch.save): e.g. a list of strings under a .pt name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path



def write_state_run(folder: Path, states: dict[int, dict]) -> Path:
    """A run of plain state dicts ``step_NNNNN.pt`` (numpy arrays saved as float32 tensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    for step, sd in states.items():
        torch.save(
            {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in sd.items()},
            folder / f"step_{step:05d}.pt",
        )
    return folder


def assert_sigma_is_svd(sigma, weights) -> None:
    """Each row of a stored σ history [T, R] equals float64 LAPACK's singular values of the
    saved weight of that step (`weights`: the tensors, in step order), to 1e-10."""
    for row, weight in zip(sigma, weights, strict=True):
        expected = np.linalg.svd(weight.double().numpy(), compute_uv=False)
        np.testing.assert_allclose(row[: expected.size], expected, rtol=1e-10, atol=1e-12)
