"""Self-contained demos that train a small network and save its checkpoints for specdyn."""

from .grokking import (
    GROKKING_QUICK,
    HISTORY_KEYS,
    DemoError,
    GrokkingRun,
    checkpoint_schedule,
    train_grokking,
)

__all__ = [
    "train_grokking",
    "GrokkingRun",
    "GROKKING_QUICK",
    "HISTORY_KEYS",
    "checkpoint_schedule",
    "DemoError",
]
