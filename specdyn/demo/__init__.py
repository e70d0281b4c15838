"""Self-contained demos that train a small network and save its checkpoints for specdyn."""

from ._demo import DemoResult, grokking_demo
from .grokking import (
    GROKKING_QUICK,
    HISTORY_KEYS,
    DemoError,
    GrokkingRun,
    checkpoint_schedule,
    train_grokking,
)

__all__ = [
    "grokking_demo",
    "DemoResult",
    "train_grokking",
    "GrokkingRun",
    "GROKKING_QUICK",
    "HISTORY_KEYS",
    "checkpoint_schedule",
    "DemoError",
]
