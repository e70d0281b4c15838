"""The committed fixtures (fixtures/*): present, readable with plain torch/safetensors/json, and
true to what fixtures/README.md and fixtures/manifest.json claim.

Accuracies are recomputed here from the weights and the task generators in
fixtures/make_fixtures.py (plain torch; the GPT-NeoX forward pass is re-implemented below so
that neither lightning nor transformers is needed), effective ranks with float64 numpy SVD.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixture_script import make_fixtures
from safetensors import safe_open
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
NAMES = ("mlp-wd", "mlp-nowd", "cnn-lightning", "lstm", "neox-trainer")


mf = make_fixtures()


def _readme_results() -> dict[str, dict[str, float]]:
    """The results table of fixtures/README.md: fixture -> train loss, train acc, held-out acc."""
    text = (FIXTURES / "README.md").read_text()
    table = text.split(mf.RESULTS_BEGIN)[1].split(mf.RESULTS_END)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in NAMES:
            rows[cells[0]] = {"train_loss": float(cells[2]), "train_acc": float(cells[3]),
                              "val_acc": float(cells[4])}
    return rows


def _normalised_effective_rank(weight: np.ndarray) -> float:
    """exp(H)/R from float64 LAPACK singular values."""
    sigma = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    p = sigma / sigma.sum()
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum()) / len(sigma)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy of `model` over a whole set."""
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


# ------------------------------------------------------------------ the whole set


def test_manifest_lists_every_fixture_with_a_log_spaced_trajectory_from_step_zero():
    assert tuple(MANIFEST) == NAMES
    for name, entry in MANIFEST.items():
        folder = FIXTURES / entry["folder"]
        assert folder.is_dir(), name
        steps = entry["steps"]
        assert 8 <= len(steps) <= 12 and steps[0] == 0 and steps == sorted(set(steps)), name
        # roughly log-spaced: the first half of the checkpoints covers at most a fifth of training
        assert steps[len(steps) // 2] <= steps[-1] / 5 and steps[1] <= steps[-1] / 50, name
        assert sorted(set(entry["files"].values())) == steps, name
        for relative in entry["files"]:
            assert (folder / relative).exists(), f"{name}/{relative}"


def test_committed_size_is_under_ten_megabytes():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts)
    assert total < 10 * 2**20, f"fixtures/ holds {total / 2**20:.1f} MiB"


def test_readme_results_table_matches_the_manifest():
    readme = _readme_results()
    assert set(readme) == set(NAMES)
    for name in NAMES:
        final = MANIFEST[name]["final"]
        for key in ("train_acc", "val_acc"):
            assert readme[name][key] == pytest.approx(final[key], abs=6e-4), (name, key)
        assert readme[name]["train_loss"] == pytest.approx(final["train_loss"], abs=6e-5), name
        assert readme[name]["train_acc"] >= 0.99, name  # every model learned its task


# ------------------------------------------------------------------ MLP pair


@pytest.mark.parametrize("name", ["mlp-wd", "mlp-nowd"])
def test_mlp_checkpoints_are_plain_nested_dicts_with_their_metrics(name):
    entry = MANIFEST[name]
    last = max(entry["files"], key=entry["files"].get)
    for filename, step in entry["files"].items():
        assert filename == f"step_{step:06d}.pt"
        checkpoint = torch.load(FIXTURES / name / filename, weights_only=True)
        assert checkpoint["step"] == step
        assert checkpoint["epoch"] == max(step - 1, 0) // (mf.MLP_N_TRAIN // mf.MLP_BATCH)
        assert ("optimizer_state_dict" in checkpoint) == (filename == last)
        assert set(checkpoint["model_state_dict"]) == {f"layers.{i}.{p}" for i in range(4)
                                                       for p in ("weight", "bias")}
        assert checkpoint["model_state_dict"]["layers.1.weight"].shape == (mf.MLP_HIDDEN, mf.MLP_HIDDEN)
    assert checkpoint["train_acc"] == entry["final"]["train_acc"]
    assert checkpoint["val_acc"] == entry["final"]["val_acc"]
    weight_decays = [group["weight_decay"] for group in checkpoint["optimizer_state_dict"]["param_groups"]]
    assert weight_decays == [mf.MLP_WEIGHT_DECAY[name]]


@pytest.mark.parametrize("name", ["mlp-wd", "mlp-nowd"])
def test_mlp_final_accuracy_recomputed_from_the_weights(name):
    x_train, y_train, x_val, y_val = mf.teacher_data()
    model = mf.MLP()
    model.load_state_dict(torch.load(FIXTURES / name / "step_004000.pt", weights_only=True)["model_state_dict"])
    final = MANIFEST[name]["final"]
    assert _accuracy(model, x_train, y_train) == pytest.approx(final["train_acc"], abs=2 / mf.MLP_N_TRAIN)
    assert _accuracy(model, x_val, y_val) == pytest.approx(final["val_acc"], abs=2 / mf.MLP_N_VAL)


@pytest.mark.parametrize("name", ["mlp-wd", "mlp-nowd"])
def test_mlp_recorded_effective_ranks_match_float64_svd(name):
    entry = MANIFEST[name]
    for which, filename in (("initial_spectra", "step_000000.pt"), ("final_spectra", "step_004000.pt")):
        state = torch.load(FIXTURES / name / filename, weights_only=True)["model_state_dict"]
        assert set(entry[which]) == {key for key, value in state.items() if value.ndim == 2}
        for key, recorded in entry[which].items():
            assert _normalised_effective_rank(state[key].numpy()) == pytest.approx(
                recorded["normalised_effective_rank"], rel=1e-12, abs=0)
            assert math.exp(recorded["spectral_entropy"]) / min(state[key].shape) == pytest.approx(
                recorded["normalised_effective_rank"], rel=1e-12)
    by_step = entry["normalised_effective_rank_by_step"]
    for index, (filename, step) in enumerate(entry["files"].items()):
        assert entry["steps"][index] == step
        state = torch.load(FIXTURES / name / filename, weights_only=True)["model_state_dict"]
        for key, values in by_step.items():
            assert _normalised_effective_rank(state[key].numpy()) == pytest.approx(values[index], rel=1e-12)


def test_weight_decay_clearly_lowers_the_hidden_effective_rank():
    initial = {name: torch.load(FIXTURES / name / "step_000000.pt", weights_only=True)["model_state_dict"]
               for name in ("mlp-wd", "mlp-nowd")}
    for key in initial["mlp-wd"]:  # same seed: the two runs start from the same weights
        assert torch.equal(initial["mlp-wd"][key], initial["mlp-nowd"][key]), key
    final = {name: torch.load(FIXTURES / name / "step_004000.pt", weights_only=True)["model_state_dict"]
             for name in ("mlp-wd", "mlp-nowd")}
    for key in ("layers.1.weight", "layers.2.weight"):
        with_wd = _normalised_effective_rank(final["mlp-wd"][key].numpy())
        without = _normalised_effective_rank(final["mlp-nowd"][key].numpy())
        assert with_wd < without - 0.15, (key, with_wd, without)


# ------------------------------------------------------------------ Lightning CNN


def test_lightning_checkpoints_carry_hyperparameters_that_plain_weights_only_refuses():
    entry = MANIFEST["cnn-lightning"]
    folder = FIXTURES / "cnn-lightning"
    numpy_scalars = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]
    for filename, step in entry["files"].items():
        path = folder / filename
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == {
            "numpy._core.multiarray.scalar", "numpy.dtype"}
        with torch.serialization.safe_globals(numpy_scalars):
            checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["global_step"] == step
        match = re.fullmatch(r"epoch=(\d+)-step=(\d+)\.ckpt", filename)
        if match:
            assert (int(match[1]), int(match[2])) == (checkpoint["epoch"], step)
        assert isinstance(checkpoint["hyper_parameters"]["lr"], np.float64)
        assert checkpoint["datamodule_hyper_parameters"]["n_train"] == mf.CNN_N_TRAIN
        assert "optimizer_states" not in checkpoint  # save_weights_only
        assert all(key.startswith("model.") for key in checkpoint["state_dict"])
    assert (folder / "last.ckpt").read_bytes() == (folder / entry["duplicates"]["last.ckpt"]).read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*entry["files"], "hparams.yaml", "metrics.csv"])


def test_lightning_final_accuracy_and_logged_metrics():
    folder = FIXTURES / "cnn-lightning"
    with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]):
        state = torch.load(folder / "last.ckpt", weights_only=True)["state_dict"]
    model = mf.BarsCNN()
    model.load_state_dict({key.removeprefix("model."): value for key, value in state.items()})
    final = MANIFEST["cnn-lightning"]["final"]
    x_train, y_train = mf.bars_data(mf.CNN_N_TRAIN, mf.CNN_SEED)
    x_val, y_val = mf.bars_data(mf.CNN_N_VAL, mf.CNN_SEED + 1)
    assert _accuracy(model, x_train, y_train) == pytest.approx(final["train_acc"], abs=2 / mf.CNN_N_TRAIN)
    assert _accuracy(model, x_val, y_val) == pytest.approx(final["val_acc"], abs=2 / mf.CNN_N_VAL)
    with open(folder / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == mf.CNN_STEPS // mf.CNN_LOG_EVERY
    late = [float(row["train_acc"]) for row in rows[-10:]]  # batch accuracies near the end
    assert np.mean(late) == pytest.approx(final["train_acc"], abs=0.03)


# ------------------------------------------------------------------ LSTM


def test_lstm_files_are_bare_state_dicts_and_the_final_one_solves_the_task():
    entry = MANIFEST["lstm"]
    for filename, step in entry["files"].items():
        assert filename == f"iter_{step:05d}.pth"
        state = torch.load(FIXTURES / "lstm" / filename, weights_only=True)
        assert all(isinstance(value, torch.Tensor) for value in state.values())
        assert "lstm.weight_hh_l1_reverse" in state and "lstm.weight_ih_l1" in state
        assert state["lstm.weight_ih_l1"].shape == (4 * mf.LSTM_HIDDEN, 2 * mf.LSTM_HIDDEN)
    model = mf.SequenceClassifier()
    model.load_state_dict(state)
    x_train, y_train, x_val, y_val = mf.majority_data()
    assert _accuracy(model, x_train, y_train) == pytest.approx(entry["final"]["train_acc"], abs=2 / mf.LSTM_N_TRAIN)
    assert _accuracy(model, x_val, y_val) == pytest.approx(entry["final"]["val_acc"], abs=2 / mf.LSTM_N_VAL)


# ------------------------------------------------------------------ GPT-NeoX (HF Trainer)


def _neox_logits(weights: dict[str, torch.Tensor], config: dict, tokens: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX forward pass (parallel residual, full rotary, fused [head, q|k|v] QKV) in plain torch."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_size, eps = hidden // heads, config["layer_norm_eps"]
    rotary = int(head_size * config["rope_parameters"]["partial_rotary_factor"])
    batch, length = tokens.shape
    inv_freq = 1.0 / config["rope_parameters"]["rope_theta"] ** (torch.arange(0, rotary, 2).double() / rotary)
    angles = torch.outer(torch.arange(length).double(), inv_freq).float()
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(x: torch.Tensor) -> torch.Tensor:
        turned = torch.cat([-x[..., rotary // 2: rotary], x[..., : rotary // 2]], -1)
        return torch.cat([x[..., :rotary] * cos + turned * sin, x[..., rotary:]], -1)

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, (hidden,), weights[prefix + ".weight"], weights[prefix + ".bias"], eps)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return torch.nn.functional.linear(x, weights[prefix + ".weight"], weights[prefix + ".bias"])

    causal = torch.ones(length, length, dtype=torch.bool).tril()
    x = weights["gpt_neox.embed_in.weight"][tokens]
    for layer in range(config["num_hidden_layers"]):
        p = f"gpt_neox.layers.{layer}"
        qkv = linear(norm(x, p + ".input_layernorm"), p + ".attention.query_key_value")
        q, k, v = qkv.view(batch, length, heads, 3 * head_size).transpose(1, 2).chunk(3, dim=-1)
        scores = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(head_size)
        attention = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        attention = linear(attention.transpose(1, 2).reshape(batch, length, hidden), p + ".attention.dense")
        mlp = linear(torch.nn.functional.gelu(linear(norm(x, p + ".post_attention_layernorm"),
                                                     p + ".mlp.dense_h_to_4h")), p + ".mlp.dense_4h_to_h")
        x = x + attention + mlp
    return torch.nn.functional.linear(norm(x, "gpt_neox.final_layer_norm"), weights["embed_out.weight"])


def test_trainer_folders_hold_checkpoints_with_their_state_and_a_final_duplicate():
    entry = MANIFEST["neox-trainer"]
    folder = FIXTURES / "neox-trainer"
    for relative, step in entry["files"].items():
        checkpoint = folder / relative
        assert {"model.safetensors", "config.json"} <= {p.name for p in checkpoint.iterdir()}
        with safe_open(checkpoint / "model.safetensors", "pt") as weights:
            keys = set(weights.keys())
        assert "gpt_neox.layers.1.attention.query_key_value.weight" in keys and "embed_out.weight" in keys
        if relative == ".":  # trainer.save_model: the final weights, no trainer state of its own
            assert not (checkpoint / "trainer_state.json").exists()
            continue
        assert relative == f"checkpoint-{step}"
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert state["global_step"] == step
        # checkpoint-0 is written by make_fixtures.py; the others by the Trainer, with its pickled arguments
        assert (checkpoint / "training_args.bin").exists() == (step != 0)
    assert (folder / "model.safetensors").read_bytes() == (folder / entry["duplicates"]["."] / "model.safetensors").read_bytes()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(folder / "training_args.bin", weights_only=True)
    log = json.loads((folder / "checkpoint-1500" / "trainer_state.json").read_text())["log_history"]
    assert log[-1]["step"] == mf.NEOX_STEPS and log[-1]["loss"] < 0.01 < log[0]["loss"]


def test_trainer_final_model_reverses_sequences():
    folder = FIXTURES / "neox-trainer"
    config = json.loads((folder / "config.json").read_text())
    assert config["use_parallel_residual"] and not config["tie_word_embeddings"]
    final = MANIFEST["neox-trainer"]["final"]
    answer = slice(mf.NEOX_LENGTH + 2, 2 * mf.NEOX_LENGTH + 2)
    predicted_at = slice(mf.NEOX_LENGTH + 1, 2 * mf.NEOX_LENGTH + 1)
    train, val = mf.reversal_data()
    for step, tokens, recorded in ((1500, train, final["train_acc"]), (1500, val, final["val_acc"]),
                                   (0, val, None)):
        weights = load_file(folder / f"checkpoint-{step}" / "model.safetensors")
        with torch.no_grad():
            predicted = _neox_logits(weights, config, tokens)[:, predicted_at].argmax(-1)
        accuracy = (predicted == tokens[:, answer]).float().mean().item()
        if recorded is None:
            assert accuracy < 0.2  # the initial model is at chance (1/16 per token)
        else:
            assert accuracy == pytest.approx(recorded, abs=1e-3)
