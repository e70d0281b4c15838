"""The kind of each stored training metric: a training curve, or a system metric (runtime,
throughput, FLOPs, memory) kept beside them (issue 24, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

import specdyn
from specdyn.store import verify_store
from specdyn.store._training import metric_kind, read_kinds, write
from specdyn.types import TrainingLog

# the keys the Hugging Face Trainer puts in log_history (speed_metrics, memory tracker)
SYSTEM = [
    "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
    "eval_tokens_per_second", "train_runtime", "train_samples_per_second",
    "train_steps_per_second", "eval_model_preparation_time", "eval_jit_compilation_time",
    "train_mem_gpu_alloc_delta", "train_mem_cpu_peaked_delta", "total_flos", "train/train_runtime",
]  # fmt: skip
TRAINING = ["loss", "eval_loss", "learning_rate", "grad_norm", "eval_accuracy", "val_acc",
            "train_loss_epoch", "floss", "epoch_time_ratio"]  # fmt: skip


def test_metric_kind_of_every_trainer_speed_and_memory_metric():
    assert {n: metric_kind(n) for n in SYSTEM} == dict.fromkeys(SYSTEM, "system")
    assert {n: metric_kind(n) for n in TRAINING} == dict.fromkeys(TRAINING, "training")


def _trainer_run(folder: Path) -> Path:
    """Two Trainer checkpoint-N/ folders; the last trainer_state.json logs losses and the
    eval speed metrics the Trainer adds to every evaluation."""
    history = []
    for step in (10, 20):
        history.append(
            {"step": step, "loss": 1.0 / step, "learning_rate": 1e-3, "epoch": step / 20}
        )
        history.append({"step": step, "eval_loss": 2.0 / step, "eval_runtime": 0.5 + step,
                        "eval_samples_per_second": 100.0 + step, "eval_steps_per_second": 9.0,
                        "epoch": step / 20})  # fmt: skip
    for step in (10, 20):
        ckpt = folder / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        g = torch.Generator().manual_seed(step)
        torch.save({"fc1.weight": torch.randn(6, 4, generator=g),
                    "fc2.weight": torch.randn(3, 6, generator=g)}, ckpt / "pytorch_model.bin")  # fmt: skip
        state = {"global_step": step, "log_history": [h for h in history if h["step"] <= step]}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_system_metrics_are_stored_with_their_kind_under_the_checksums(tmp_path):
    home = tmp_path / "home"
    specdyn.analyze(_trainer_run(tmp_path / "out"), home=home, vectors=None)
    with specdyn.open_run("out", home) as run:
        store = run.path
        # stored and readable, as every logged metric is
        assert run.training("eval_runtime")[1].tolist() == [10.5, 20.5]
        public = run.training.kinds
        info = run.info()
    with h5py.File(store, "r") as f:
        kinds = read_kinds(f)
    assert public == kinds and set(info["training_metrics"]) == set(kinds)
    assert info["system_metrics"] == sorted(n for n, k in kinds.items() if k == "system")
    assert kinds == {"loss": "training", "learning_rate": "training", "eval_loss": "training",
                     "eval_runtime": "system", "eval_samples_per_second": "system",
                     "eval_steps_per_second": "system"}  # fmt: skip
    assert verify_store(store).ok
    # the attribute is static content: a changed kind is damage that verify names
    with h5py.File(store, "r+") as f:
        f["training"].attrs["kind"] = np.array(["system"] * len(kinds), dtype=h5py.string_dtype())
    report = verify_store(store)
    assert not report.ok and any("training:kind" in d.what for d in report.damage)


def test_a_store_written_before_kinds_reads_every_metric_as_training(tmp_path):
    log = TrainingLog(
        steps=np.array([0, 5]),
        values={"loss": np.array([1.0, 0.5]), "eval_runtime": np.array([np.nan, 3.0])},
        sources={"loss": "checkpoints", "eval_runtime": "checkpoints"},
    )
    with h5py.File(tmp_path / "s.h5", "w") as f:
        write(f, log)
        assert read_kinds(f) == {"loss": "training", "eval_runtime": "system"}
        del f["training"].attrs["kind"]  # as an older release wrote it
        assert read_kinds(f) == {"loss": "training", "eval_runtime": "training"}
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        assert read_kinds(f) == {}
