"""Train the paper's grokking setting (§3, App. D.7) on CPU and save its checkpoints.

A one-layer transformer (Nanda et al., 2023: learned token and position embeddings,
multi-head attention, a ReLU MLP, no LayerNorm) learns ``a + b mod p`` from a fraction
of all pairs with full-batch AdamW and strong weight decay. It fits the training pairs
within a few hundred steps and generalises much later ("grokking"), while the effective
rank of its weight matrices falls; without weight decay neither happens within the
budget.

    run = train_grokking(Path("grok"))                     # ≈ 70–120 s on 2 cores
    run = train_grokking(Path("quick"), **GROKKING_QUICK)  # ≈ 8 s

The folder then holds ``step_NNNNNN.pt`` checkpoints on a log+linear schedule, a
``config.json`` for the view and pair presets and ``metrics.jsonl`` with the curves.
Training is deterministic for a given seed and thread count: two runs give
byte-identical checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DemoError, option_ref
from ..files import atomic_output
from ._modular import ModularTransformer, is_prime, modular_addition_data, train_size

__all__ = [
    "DemoError",
    "GrokkingRun",
    "GROKKING_QUICK",
    "HISTORY_KEYS",
    "checkpoint_schedule",
    "train_grokking",
]

HISTORY_KEYS = ("step", "train_loss", "train_acc", "val_loss", "val_acc")

# A shortened setting (≈ 8 s a run on one core): it fits the training pairs by step ≈ 50,
# holds validation near 0.5 to step ≈ 300 and passes 0.9 near step 600 (seeds 0–4: 360–590),
# while the mean normalised effective rank falls 0.89 → 0.29 (0.89 → 0.82 without weight
# decay, where validation stays near 0.5). Pass as ``train_grokking(out, **GROKKING_QUICK)``.
GROKKING_QUICK: Mapping[str, Any] = MappingProxyType(
    {
        "modulus": 31,
        "train_fraction": 0.6,
        "steps": 1500,
        "width": 64,
        "heads": 4,
        "mlp": 256,
        "lr": 5e-3,
        "weight_decay": 1.0,
        "checkpoints": 30,
    }
)

_CHECKPOINT_NAME = "step_{:06d}.pt"
_METRICS_NAME = "metrics.jsonl"
_CONFIG_NAME = "config.json"


@dataclass
class GrokkingRun:
    """What `train_grokking` did.

    folder: where the checkpoints, ``config.json`` and ``metrics.jsonl`` are.
    steps_saved: the checkpointed steps, ascending (0 and the last step included).
    history: the logged curves, keys `HISTORY_KEYS`: ``step`` int64 [L] ascending,
        ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` float64 [L], each
        measured on the weights after that many optimiser steps (step 0: the init).
    wall_time_s: seconds the training took (data, model, steps and saving).
    settings: every option as used, plus ``n_train`` and ``n_val`` (pair counts).
    """

    folder: Path
    steps_saved: list[int]
    history: dict[str, np.ndarray]
    wall_time_s: float
    settings: dict[str, Any] = field(default_factory=dict)

    def first_step(self, key: str, threshold: float) -> int | None:
        """The first logged step where ``history[key] >= threshold``, None if never."""
        hit = np.flatnonzero(self.history[key] >= threshold)
        return int(self.history["step"][hit[0]]) if hit.size else None


def checkpoint_schedule(steps: int, checkpoints: int) -> list[int]:
    """Steps to checkpoint, evenly spaced in ½·log(1+step)/log(1+steps) + ½·step/steps.

    The log half resolves the fast early fit (steps 1, 2, 3, … are all taken), the
    linear half the late jump in validation accuracy (near the end the spacing is
    about 2·steps/checkpoints).

    Args:
        steps: the last training step (≥ 1).
        checkpoints: how many steps to pick (≥ 2).

    Returns:
        min(checkpoints, steps + 1) sorted unique steps in [0, steps], 0 and `steps`
        included.

    Raises:
        DemoError: steps < 1 or checkpoints < 2.
    """
    if steps < 1 or checkpoints < 2:
        raise DemoError(
            f"checkpoint schedule: needs steps ≥ 1 and checkpoints ≥ 2 (got {steps}, {checkpoints})"
        )
    n = min(checkpoints, steps + 1)
    grid = np.unique(
        np.concatenate([np.arange(min(steps, 100_000) + 1), np.linspace(0, steps, 100_001)])
    )
    blend = 0.5 * np.log1p(grid) / math.log1p(steps) + 0.5 * grid / steps
    wanted = np.rint(np.interp(np.linspace(0.0, 1.0, n), blend, grid)).astype(np.int64)
    picked: list[int] = []
    for i, step in enumerate(wanted.tolist()):
        # where the blend is finer than one step, rounding collides: take the next free step
        # (never so far that the remaining picks cannot fit before `steps`)
        low = picked[-1] + 1 if picked else 0
        picked.append(min(max(step, low), steps - (n - 1 - i)))
    return picked


def train_grokking(
    out: Path,
    *,
    modulus: int = 59,
    train_fraction: float = 0.5,
    steps: int = 3000,
    width: int = 128,
    heads: int = 4,
    mlp: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.98),
    seed: int = 0,
    checkpoints: int = 40,
    log_every: int = 10,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, Mapping[str, float]], None] | None = None,
) -> GrokkingRun:
    """Train a one-layer transformer on ``a + b mod p`` and checkpoint it.

    The pairs (a, b), a, b in [0, p), are shuffled with `seed`; the first
    round(`train_fraction` · p²) are trained on with full-batch AdamW, the others
    validate. The model reads ``a b =`` and predicts (a+b) mod p at "=" (the loss is
    computed in float64, as in Nanda et al.). Weights are drawn N(0, 1/fan_in).

    Args:
        out: folder to write into (created). It receives ``step_NNNNNN.pt`` for each
            step of `checkpoint_schedule` (a ``torch.save`` dict: ``model_state_dict``,
            ``step`` int, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` plain
            floats; loads with ``weights_only=True``), ``config.json`` (hidden_size,
            num_attention_heads, intermediate_size, vocab_size, … and the settings) and
            ``metrics.jsonl`` (one object per logged step, keys `HISTORY_KEYS`).
        modulus: the prime p (≥ 3).
        train_fraction: share of the p² pairs trained on, in (0, 1); both the train and
            the validation set must be non-empty.
        steps: optimiser steps (full batches), ≥ 1.
        width: model width d (a multiple of `heads`); heads: attention heads;
            mlp: MLP hidden width.
        lr, weight_decay, betas: AdamW's (decoupled weight decay; 0 is the control
            without weight decay).
        seed: seeds the data split and the initial weights (0 ≤ seed < 2**63).
        checkpoints: how many checkpoints (≥ 2), see `checkpoint_schedule`.
        log_every: the curves are logged every this many steps (and at checkpoints).
        threads: torch CPU threads during training (set for the call and restored);
            None: 2, or 1 on a single core (more gains little on these small matrices;
            measured on 2 idle cores, 23 ms a default step with 2 threads, 35 ms with 1;
            on cores busy with other work 1 thread is faster). The result is
            deterministic for a given seed and thread count (1 and 2 threads gave
            byte-identical checkpoints here).
        overwrite: replace an earlier run's files in `out` (checkpoints, metrics,
            config); without it such a folder is refused.
        progress: called as ``progress(step, steps, metrics)`` at every logged step,
            metrics a dict of the four curves at that step.

    Returns:
        `GrokkingRun` (folder, checkpointed steps, curves, wall time, settings).

    Raises:
        DemoError: an option out of range (naming it), or `out` already holding a
            run (without `overwrite`) or not being a writable folder.
    """
    settings = _check_options(
        modulus=modulus, train_fraction=train_fraction, steps=steps, width=width,
        heads=heads, mlp=mlp, lr=lr, weight_decay=weight_decay, betas=betas, seed=seed,
        checkpoints=checkpoints, log_every=log_every, threads=threads,
    )  # fmt: skip
    out = Path(out)
    _prepare_folder(out, overwrite)
    schedule = checkpoint_schedule(steps, checkpoints)
    with _torch_threads(settings["threads"]):
        start = time.perf_counter()
        try:
            history, saved = _train(out, settings, schedule, progress)
        except OSError as exc:
            raise DemoError(f"{out}: cannot write the run ({exc.strerror or exc})") from None
        wall = time.perf_counter() - start
    return GrokkingRun(
        folder=out,
        steps_saved=saved,
        history={k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64)
                 for k, v in history.items()},
        wall_time_s=wall,
        settings=settings,
    )  # fmt: skip


# ------------------------------------------------------------------ internals


def _train(
    out: Path,
    s: dict[str, Any],
    schedule: list[int],
    progress: Callable[[int, int, Mapping[str, float]], None] | None,
) -> tuple[dict[str, list], list[int]]:
    """The training loop: curves at logged steps, checkpoints at `schedule`."""
    generator = torch.Generator().manual_seed(s["seed"])
    train_x, train_y, val_x, val_y = modular_addition_data(
        s["modulus"], s["train_fraction"], generator
    )
    model = ModularTransformer(s["modulus"], s["width"], s["heads"], s["mlp"])
    model.reset_parameters(generator)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=s["lr"], betas=tuple(s["betas"]), weight_decay=s["weight_decay"]
    )
    _write_json(out / _CONFIG_NAME, _config(s))
    to_save = set(schedule)
    steps = s["steps"]
    history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
    saved: list[int] = []
    with open(out / _METRICS_NAME, "w", encoding="utf-8") as log:
        for step in range(steps + 1):
            # this forward pass sees the weights after `step` updates: it gives the curves
            # at `step` and the gradient of update step + 1
            logits = model(train_x)
            loss = F.cross_entropy(logits.double(), train_y)
            if step % s["log_every"] == 0 or step in to_save or step == steps:
                with torch.no_grad():
                    val_logits = model(val_x)
                    metrics = {
                        "train_loss": float(loss),
                        "train_acc": _accuracy(logits, train_y),
                        "val_loss": float(F.cross_entropy(val_logits.double(), val_y)),
                        "val_acc": _accuracy(val_logits, val_y),
                    }
                history["step"].append(step)
                for key, value in metrics.items():
                    history[key].append(value)
                log.write(json.dumps({"step": step, **metrics}) + "\n")
                log.flush()
                if step in to_save:
                    _save_checkpoint(out, step, model, metrics)
                    saved.append(step)
                if progress is not None:
                    progress(step, steps, dict(metrics))
            if step == steps:
                break
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return history, saved


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose arg-max is the label."""
    return float((logits.detach().argmax(dim=-1) == labels).double().mean())


def _save_checkpoint(
    out: Path, step: int, model: torch.nn.Module, metrics: Mapping[str, float]
) -> None:
    """torch.save the weights and the step's curves, atomically (temp file, then rename)."""
    path = out / _CHECKPOINT_NAME.format(step)
    payload = {"model_state_dict": model.state_dict(), "step": step, **metrics}
    try:
        # `<name>.tmp`: what a killed run leaves behind, cleared by `_prepare_folder`
        with atomic_output(path, temp_name=path.name + ".tmp") as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise DemoError(f"{path}: cannot write the checkpoint ({exc.strerror or exc})") from None


def _config(s: Mapping[str, Any]) -> dict[str, Any]:
    """config.json: the model description the view and pair presets read, plus the settings."""
    return {
        "architecture": "one-layer transformer for modular addition (Nanda et al. 2023)",
        "hidden_size": s["width"],
        "num_attention_heads": s["heads"],
        "intermediate_size": s["mlp"],
        "num_hidden_layers": 1,
        "vocab_size": s["modulus"] + 1,
        "num_classes": s["modulus"],
        "max_position_embeddings": 3,
        "hidden_act": "relu",
        "specdyn_demo": "grokking",
        "settings": dict(s),
    }


def _write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, naming the file on failure."""
    try:
        path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise DemoError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Create `out`; refuse (or, with overwrite, clear) an earlier run's files in it."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder; choose another output folder")
    ours = sorted(out.glob("step_*.pt")) + sorted(out.glob("step_*.pt.tmp")) if out.is_dir() else []
    ours += [p for p in (out / _METRICS_NAME, out / _CONFIG_NAME) if p.exists()]
    if ours and not overwrite:
        raise DemoError(
            f"{out}: already holds a run ({ours[0].name}); choose another folder or "
            f"pass {option_ref('overwrite=True', '--overwrite')}",
            file=out,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path in ours:
            path.unlink()
    except OSError as exc:
        raise DemoError(f"{out}: cannot prepare the folder ({exc.strerror or exc})") from None


class _torch_threads:
    """Fix torch's CPU thread count for the call and restore it after.

    With a fixed thread count the CPU kernels used here (matmul, index_select/index_add,
    softmax, reductions, AdamW) are deterministic, so runs are byte-identical (tested).
    `torch.use_deterministic_algorithms` is not set: it would change none of them, and
    its first call imports torch._inductor (≈ 5 s).
    """

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


def _check_options(**o: Any) -> dict[str, Any]:
    """Validate the options (one-line DemoError naming the option); return them as settings."""

    def fail(name: str, what: str) -> None:
        raise DemoError(f"{option_ref(name)} {o[name]!r}: {what}", option=name)

    def integer(name: str, low: int, high: int | None = None) -> None:
        v = o[name]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            fail(name, "must be a whole number")
        if v < low or (high is not None and v > high):
            fail(name, f"must be at least {low}" + (f" and at most {high}" if high else ""))
        o[name] = int(v)

    def real(name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
        v = o[name]
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
            fail(name, "must be a number")
        v = float(v)
        bad = (
            not math.isfinite(v)
            or (v <= low if low_open else v < low)
            or (v >= high if high_open else v > high)
        )
        if bad:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            fail(name, f"must lie in {left}{low:g}, {high:g}{right}")
        o[name] = v

    integer("modulus", 3)
    if not is_prime(o["modulus"]):
        fail("modulus", "must be a prime (e.g. 23, 31, 59, 97, 113)")
    real("train_fraction", 0.0, 1.0, low_open=True, high_open=True)
    n_train = train_size(o["modulus"], o["train_fraction"])
    if not 0 < n_train < o["modulus"] ** 2:
        fail("train_fraction", f"leaves an empty train or validation set at modulus {o['modulus']}")
    integer("steps", 1)
    integer("heads", 1)
    integer("width", 1)
    if o["width"] % o["heads"]:
        fail("width", f"must be a multiple of {option_ref('heads')} ({o['heads']})")
    integer("mlp", 1)
    real("lr", 0.0, math.inf, low_open=True, high_open=True)
    real("weight_decay", 0.0, math.inf, low_open=False, high_open=True)
    betas = o["betas"]
    if (
        not isinstance(betas, (tuple, list))
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
        or not all(0.0 <= b < 1.0 for b in betas)
    ):
        fail("betas", "must be two numbers in [0, 1)")
    o["betas"] = [float(b) for b in betas]
    integer("seed", 0, 2**63 - 1)
    integer("checkpoints", 2)
    integer("log_every", 1)
    if o["threads"] is None:
        o["threads"] = min(2, _available_cores())
    integer("threads", 1)
    o["n_train"] = n_train
    o["n_val"] = o["modulus"] ** 2 - n_train
    return o


def _available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
