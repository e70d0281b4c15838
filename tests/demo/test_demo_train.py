"""The grokking demo's training half: schedule, checkpoints, determinism, options, real grokking."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from specdyn.demo import (
    GROKKING_QUICK,
    HISTORY_KEYS,
    DemoError,
    checkpoint_schedule,
    train_grokking,
)
from specdyn.demo._modular import ModularTransformer, is_prime, modular_addition_data
from specdyn.errors import SpecdynError

TINY = {
    "modulus": 7,
    "train_fraction": 0.6,
    "steps": 30,
    "width": 8,
    "heads": 2,
    "mlp": 16,
    "checkpoints": 6,
}


def _norm_eff_rank(w: np.ndarray) -> float:
    """exp(entropy of σ/Σσ) / R in float64 (paper Eq. 1–2)."""
    s = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()) / len(s))


def _mean_rank(path) -> float:
    state = torch.load(path, weights_only=True)["model_state_dict"]
    return float(np.mean([_norm_eff_rank(t.numpy()) for t in state.values() if t.ndim == 2]))


# ------------------------------------------------------------------ schedule


@pytest.mark.parametrize("steps", [1, 2, 9, 30, 257, 1500, 4000, 10**7])
@pytest.mark.parametrize("n", [2, 3, 10, 40])
def test_schedule_is_sorted_unique_with_ends(steps, n):
    sched = checkpoint_schedule(steps, n)
    assert sched == sorted(set(sched))
    assert sched[0] == 0 and sched[-1] == steps
    assert len(sched) == min(n, steps + 1)


def test_schedule_refuses_too_few():
    with pytest.raises(DemoError, match="steps ≥ 1 and checkpoints ≥ 2"):
        checkpoint_schedule(0, 5)
    with pytest.raises(DemoError, match="checkpoints ≥ 2"):
        checkpoint_schedule(10, 1)


def test_schedule_is_log_early_and_linear_late():
    sched = np.array(checkpoint_schedule(4000, 40))
    assert sched[:4].tolist() == [0, 1, 2, 3]  # every early step
    gaps = np.diff(sched)
    assert np.all(np.diff(gaps) >= -1)  # spacing never shrinks (±1 from rounding)
    early = sched[5:14]  # geometric there: each step ≥ 1.3 × the one before
    assert np.all(early[1:] / early[:-1] > 1.3)
    late = gaps[-10:]  # near-even there, about 2·steps/n, so the late jump is resolved
    assert late.max() / late.min() < 1.1 and 150 <= late.mean() <= 200


# ------------------------------------------------------------------ model and data


def test_data_split_covers_all_pairs_once():
    g = torch.Generator().manual_seed(3)
    tx, ty, vx, vy = modular_addition_data(11, 0.4, g)
    assert len(tx) == round(0.4 * 121) and len(tx) + len(vx) == 121
    x = torch.cat([tx, vx])
    y = torch.cat([ty, vy])
    assert torch.all(x[:, 2] == 11)  # the "=" token
    assert len({(int(a), int(b)) for a, b, _ in x}) == 121
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 11)


def test_model_matches_a_plain_causal_transformer():
    """The table/last-query shortcuts equal a textbook forward pass over all positions."""
    torch.manual_seed(0)
    p, d, heads = 7, 8, 2
    model = ModularTransformer(p, d, heads, 16)
    model.reset_parameters(torch.Generator().manual_seed(1))
    tokens = torch.tensor([[a, b, p] for a in range(p) for b in range(p)])
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    x = (model.embed_tokens(tokens) + model.embed_positions.weight).double()
    n, t, _ = x.shape
    hd = d // heads

    def split(w):
        return (x @ w.weight.double().T).view(n, t, heads, hd).transpose(1, 2)

    q, k, v = split(attn.q_proj), split(attn.k_proj), split(attn.v_proj)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -math.inf)
    z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
    h = x + z @ attn.o_proj.weight.double().T
    pre = h @ mlp.fc_in.weight.double().T + mlp.fc_in.bias.double()
    h = h + pre.relu() @ mlp.fc_out.weight.double().T + mlp.fc_out.bias.double()
    expected = (h @ model.lm_head.weight.double().T)[:, -1]
    with torch.no_grad():
        got = model(tokens).double()
    assert got.shape == (p * p, p)
    assert torch.allclose(got, expected, atol=1e-5)


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


# ------------------------------------------------------------------ checkpoints


def test_checkpoints_config_and_metrics(tmp_path):
    calls = []
    run = train_grokking(tmp_path / "run", progress=lambda s, n, m: calls.append((s, n, m)), **TINY)
    folder = tmp_path / "run"
    assert run.folder == folder
    assert run.steps_saved == checkpoint_schedule(30, 6)
    files = sorted(p.name for p in folder.glob("step_*.pt"))
    assert files == [f"step_{s:06d}.pt" for s in run.steps_saved]
    assert not list(folder.glob("*.tmp"))

    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines]
    assert steps == sorted(set(range(0, 31, 10)) | set(run.steps_saved))
    assert run.history["step"].tolist() == steps
    assert set(run.history) == set(HISTORY_KEYS)
    for key in HISTORY_KEYS[1:]:
        assert run.history[key].dtype == np.float64
        assert run.history[key].tolist() == [x[key] for x in lines]
    assert [c[0] for c in calls] == steps and all(c[1] == 30 for c in calls)

    by_step = {x["step"]: x for x in lines}
    for step in run.steps_saved:
        ckpt = torch.load(folder / f"step_{step:06d}.pt", weights_only=True)
        assert set(ckpt) == {"model_state_dict", "step", *HISTORY_KEYS[1:]}
        assert ckpt["step"] == step and type(ckpt["step"]) is int
        for key in HISTORY_KEYS[1:]:
            assert type(ckpt[key]) is float and ckpt[key] == by_step[step][key]
        assert 0.0 <= ckpt["train_acc"] <= 1.0 and ckpt["train_loss"] > 0
    state = torch.load(folder / "step_000000.pt", weights_only=True)["model_state_dict"]
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes == {
        "embed_tokens.weight": (8, 8),
        "embed_positions.weight": (3, 8),
        "layers.0.self_attn.q_proj.weight": (8, 8),
        "layers.0.self_attn.k_proj.weight": (8, 8),
        "layers.0.self_attn.v_proj.weight": (8, 8),
        "layers.0.self_attn.o_proj.weight": (8, 8),
        "layers.0.mlp.fc_in.weight": (16, 8),
        "layers.0.mlp.fc_in.bias": (16,),
        "layers.0.mlp.fc_out.weight": (8, 16),
        "layers.0.mlp.fc_out.bias": (8,),
        "lm_head.weight": (7, 8),
    }
    # the step-0 weights are the init: a model loaded from them reproduces step 0's curves
    model = ModularTransformer(7, 8, 2, 16)
    model.load_state_dict(state)
    tx, ty, _, _ = modular_addition_data(7, 0.6, torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(tx).double(), ty)
    assert float(loss) == pytest.approx(lines[0]["train_loss"], rel=1e-6)

    config = json.loads((folder / "config.json").read_text())
    assert config["num_attention_heads"] == 2 and config["hidden_size"] == 8
    assert config["settings"]["n_train"] == 29 and config["settings"]["n_val"] == 20
    assert run.settings["weight_decay"] == 1.0 and run.wall_time_s > 0


def test_pairs_preset_finds_the_paper_pairs(tmp_path):
    from specdyn.pairs import pairs_for

    train_grokking(tmp_path, **{**TINY, "checkpoints": 2})
    plan = pairs_for(tmp_path / "step_000030.pt")
    rules = {(p.first.matrix, p.second.matrix): p.rule for p in plan.pairs}
    a = "layers.0.self_attn."
    assert rules == {
        ("embed_tokens.weight", a + "q_proj.weight"): "embed-to-qkv",
        (a + "q_proj.weight", a + "k_proj.weight"): "q-k-per-head",
        (a + "v_proj.weight", a + "o_proj.weight"): "v-o-per-head",
        (a + "o_proj.weight", "layers.0.mlp.fc_in.weight"): "o-to-mlp-in",
        ("layers.0.mlp.fc_in.weight", "layers.0.mlp.fc_out.weight"): "mlp-in-to-out",
    }


def test_two_runs_are_byte_identical_and_seed_matters(tmp_path):
    threads = torch.get_num_threads()
    a = train_grokking(tmp_path / "a", threads=2, **TINY)
    b = train_grokking(tmp_path / "b", threads=2, **TINY)
    c = train_grokking(tmp_path / "c", threads=2, seed=1, **TINY)
    assert torch.get_num_threads() == threads  # restored
    assert a.steps_saved == b.steps_saved
    for key in HISTORY_KEYS:
        assert np.array_equal(a.history[key], b.history[key])
    for name in ["metrics.jsonl", "config.json", *(f"step_{s:06d}.pt" for s in a.steps_saved)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    last = f"step_{a.steps_saved[-1]:06d}.pt"
    assert (tmp_path / "a" / last).read_bytes() != (tmp_path / "c" / last).read_bytes()
    assert not np.array_equal(a.history["train_loss"], c.history["train_loss"])


def test_refuses_an_earlier_run_unless_overwrite(tmp_path):
    small = {**TINY, "steps": 3, "checkpoints": 2}
    train_grokking(tmp_path, **small)
    with pytest.raises(DemoError, match=r"already holds a run.*overwrite=True$") as info:
        train_grokking(tmp_path, **small)
    # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
    assert info.value.render(cli=True).endswith("pass --overwrite")
    (tmp_path / "step_000002.pt").write_bytes(b"stale")  # not in the new schedule: removed
    run = train_grokking(tmp_path, overwrite=True, **{**small, "steps": 5})
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == [
        "step_000000.pt",
        "step_000005.pt",
    ]
    assert run.steps_saved == [0, 5]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoError, match="not a folder"):
        train_grokking(tmp_path / "file", **small)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("modulus", 60, r"--modulus 60: must be a prime"),
        ("modulus", 2, r"--modulus 2: must be at least 3"),
        ("modulus", 7.0, r"--modulus 7.0: must be a whole number"),
        ("train_fraction", 0.0, r"--train-fraction 0.0: must lie in \(0, 1\)"),
        ("train_fraction", 1.0, r"--train-fraction 1.0: must lie in \(0, 1\)"),
        ("train_fraction", 0.001, r"--train-fraction 0.001: leaves an empty train"),
        ("train_fraction", float("nan"), r"--train-fraction nan"),
        ("steps", 0, r"--steps 0: must be at least 1"),
        ("steps", True, r"--steps True: must be a whole number"),
        ("width", 10, r"--width 10: must be a multiple of --heads \(4\)"),
        ("heads", 0, r"--heads 0: must be at least 1"),
        ("mlp", 0, r"--mlp 0"),
        ("lr", 0.0, r"--lr 0.0: must lie in \(0, inf\)"),
        ("lr", float("inf"), r"--lr inf"),
        ("weight_decay", -0.1, r"--weight-decay -0.1: must lie in \[0, inf\)"),
        ("betas", (0.9, 1.0), r"--betas \(0.9, 1.0\): must be two numbers in \[0, 1\)"),
        ("betas", 0.9, r"--betas 0.9"),
        ("seed", -1, r"--seed -1: must be at least 0"),
        ("checkpoints", 1, r"--checkpoints 1: must be at least 2"),
        ("log_every", 0, r"--log-every 0"),
        ("threads", 0, r"--threads 0"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, option, value, message):
    kwargs = {"modulus": 7, "steps": 3, "width": 8, "heads": 4, "mlp": 8, option: value}
    # `message` is the CLI's wording (flags); a Python caller reads the parameter name
    with pytest.raises(DemoError) as info:
        train_grokking(tmp_path / "out", **kwargs)
    assert re.search(message, info.value.render(cli=True))
    assert str(info.value).startswith(f"{option} {value!r}: ") and info.value.option == option
    assert isinstance(info.value, SpecdynError) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


# ------------------------------------------------------------------ real grokking


def test_quick_setting_groks_and_loses_rank_only_with_weight_decay(quick_demos):
    """Real training (GROKKING_QUICK, ≈ 2 × 8 s, shared with the demo's tests): the fit
    comes first, generalisation late, and the mean normalised effective rank falls far
    more with weight decay."""
    _, with_wd, without = quick_demos
    run = with_wd.training
    assert run.settings["weight_decay"] == GROKKING_QUICK.get("weight_decay", 1.0) > 0
    steps, val = run.history["step"], run.history["val_acc"]
    fit = run.first_step("train_acc", 0.99)  # measured: 45
    grok = run.first_step("val_acc", 0.9)  # measured: 590
    assert fit is not None and grok is not None
    assert grok >= 5 * fit  # validation rises late …
    assert val[(steps >= fit) & (steps <= 3 * fit)].max() < 0.65  # … after a plateau
    assert val[-1] > 0.95 and run.history["train_acc"][-1] == 1.0

    control = without.training
    assert control.settings["weight_decay"] == 0.0
    assert control.first_step("train_acc", 0.99) is not None
    assert control.history["val_acc"].max() < 0.7  # no grokking without weight decay (0.53)

    first, last = "step_000000.pt", f"step_{GROKKING_QUICK['steps']:06d}.pt"
    drop = _mean_rank(run.folder / first) - _mean_rank(run.folder / last)
    drop_control = _mean_rank(control.folder / first) - _mean_rank(control.folder / last)
    assert drop > 0.3  # measured 0.887 → 0.285
    assert 0.0 < drop_control < 0.15  # measured 0.887 → 0.820
    assert drop > 3 * drop_control
