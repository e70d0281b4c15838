"""Training step and epoch from a checkpoint's file or folder name."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_STEP",
    "WEIGHT_SUFFIXES",
    "NameSteps",
    "steps_from_name",
    "checkpoint_name",
    "is_generic_name",
    "run_stem",
    "step_out_of_range",
]

# The largest step (or epoch) a store can hold: its step axis is int64.
MAX_STEP = 2**63 - 1

_SEP = r"[=_\-]?"
# Explicit step markers; (?<![a-z]) keeps "step" from matching inside another word.
_STEP_PATTERNS = [
    re.compile(rf"(?<![a-z])step{_SEP}(\d+)", re.IGNORECASE),  # step_1200, step=500, global_step10
    re.compile(rf"(?<![a-z])checkpoint{_SEP}(\d+)", re.IGNORECASE),  # checkpoint-500
    re.compile(rf"(?<![a-z])ckpt{_SEP}(\d+)", re.IGNORECASE),  # ckpt_000100
    re.compile(rf"(?<![a-z])iter(?:ation)?s?{_SEP}(\d+)", re.IGNORECASE),  # iter_0000500
]
_EPOCH = re.compile(rf"(?<![a-z])epoch{_SEP}(\d+)", re.IGNORECASE)
# A bare trailing number (model_500, 1200): a step, unless it is a shard counter.
_TRAILING = re.compile(r"(?:^|[_\-])(\d+)$")
_SHARD = re.compile(r"\d+-of-\d+$", re.IGNORECASE)
# Initialisation names (the whole name): step 0, or epoch 0 for epoch_init. Anchored so that
# initializer_run or init_lr_0.1 are not taken for one.
_INIT_STEP = re.compile(r"^(?:init|initial|untrained|step_init|.+_init)$", re.IGNORECASE)
_INIT_EPOCH = re.compile(r"^epoch_init$", re.IGNORECASE)
_GENERIC = re.compile(r"(?<![a-z])(last|best|final|latest)(?![a-z])", re.IGNORECASE)
# Every suffix torch users save weights under (the PyTorch ImageNet example's and timm's
# checkpoint_N.pth.tar, pickle.dump's .pkl, a bare .model, .tar), longest first so that
# checkpoint_20.pth.tar is named checkpoint_20. Which format a file holds is read from its
# first bytes, never from its suffix (docs/runs.md#finding-checkpoints).
WEIGHT_SUFFIXES = (
    ".pth.tar", ".pt.tar", ".safetensors", ".ckpt", ".pth", ".pt", ".bin", ".tar", ".pkl",
    ".model",
)  # fmt: skip


# What run_stem removes from a name: every step/epoch marker with its number, Lightning's
# logged metrics (val_loss=0.32, which change from checkpoint to checkpoint of one run) and
# role words; what remains names the run.
_STEM_MARKERS = [
    re.compile(rf"(?<![a-z])(?:global{_SEP})?steps?{_SEP}\d+", re.IGNORECASE),
    re.compile(rf"(?<![a-z])checkpoint{_SEP}\d+", re.IGNORECASE),
    re.compile(rf"(?<![a-z])ckpt{_SEP}\d+", re.IGNORECASE),
    re.compile(rf"(?<![a-z])iter(?:ation)?s?{_SEP}\d+", re.IGNORECASE),
    re.compile(rf"(?<![a-z])epochs?{_SEP}\d+", re.IGNORECASE),
]
_STEM_INIT = re.compile(r"(?:^|[_\-])(?:init|initial|untrained)$", re.IGNORECASE)
_STEM_METRIC = re.compile(
    r"(?<![a-z0-9])[a-z][a-z0-9_]*=-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE
)
_STEM_GAP = re.compile(r"[_\-=.]*\0[_\-=.\0]*")
_STEM_ENDS = "_-=."


@dataclass(frozen=True)
class NameSteps:
    """What a name says: `step` and `epoch` (None when absent); `init`: the name marks the
    initialisation (``init``, ``epoch_init``, ``model_init``…), which is step or epoch 0."""

    step: int | None
    epoch: int | None
    init: bool = False


def checkpoint_name(filename: str) -> str:
    """The part of a file name that names the checkpoint (suffixes and `.index.json` removed)."""
    name = filename
    if name.endswith(".index.json"):
        name = name[: -len(".index.json")]
    for suffix in WEIGHT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def steps_from_name(name: str, *, trailing: bool = True) -> NameSteps:
    """Step and epoch written in a checkpoint name (suffixes already removed).

    Recognises ``step_1200``, ``step-1200``, ``step1200``, ``epoch=3-step=500`` (step 500,
    epoch 3), ``checkpoint-500``, ``ckpt_000100``, ``iter_0000500``, ``epoch_7`` (epoch
    only) and, with `trailing` (a checkpoint's own name, not a folder above it), a bare
    trailing number (``model_500``, ``1200``) and initialisation names: step 0 (``init``, ``initial``,
    ``untrained``, ``step_init``, ``model_init``, any ``*_init``) or epoch 0
    (``epoch_init``), with `init` set.
    """
    step = None
    for pattern in _STEP_PATTERNS:
        m = pattern.search(name)
        if m:
            step = int(m.group(1))
            break
    m = _EPOCH.search(name)
    epoch = int(m.group(1)) if m else None
    if step is None and epoch is None and trailing and not _SHARD.search(name):
        m = _TRAILING.search(name)
        if m:
            step = int(m.group(1))
    if step is None and epoch is None and trailing:
        if _INIT_EPOCH.match(name):
            return NameSteps(None, 0, init=True)
        if _INIT_STEP.match(name):
            return NameSteps(0, None, init=True)
    return NameSteps(step, epoch)


def is_generic_name(name: str) -> bool:
    """Whether a name is a role rather than a step (last, best, final, latest)."""
    return bool(_GENERIC.search(name))


def step_out_of_range(value: int | None) -> bool:
    """Whether a step or epoch cannot be stored (above MAX_STEP, or negative)."""
    return value is not None and not 0 <= value <= MAX_STEP


def run_stem(name: str) -> str:
    """What is left of a checkpoint name (suffixes already removed) once its step, epoch,
    initialisation marker, logged metrics (Lightning's ``val_loss=0.32``) and role words
    (last, best, final, latest) are taken out: the name of the run it belongs to.

    ``runA_epoch_3`` → ``runA``; ``model_12`` → ``model``; ``resnet18_init`` →
    ``resnet18``; ``epoch=3-step=500``, ``step_100``, ``last``, ``init``, ``epoch_init`` → ``""``.
    """
    cut = "\0"  # stands for a removed part until the separators around it are merged
    stem = name
    for pattern in _STEM_MARKERS:
        stem = pattern.sub(cut, stem)
    if stem == name and not _SHARD.search(name):
        if steps_from_name(name).init:
            stem = _STEM_INIT.sub(cut, stem)
            if stem.lower() in (cut, "step" + cut, "epoch" + cut):  # step_init, epoch_init
                stem = cut
        else:
            stem = _TRAILING.sub(cut, stem)
    stem = _GENERIC.sub(cut, _STEM_METRIC.sub(cut, stem))
    stem = _STEM_GAP.sub(lambda m: next((ch for ch in m.group() if ch != cut), "_"), stem)
    return stem.strip(_STEM_ENDS)
