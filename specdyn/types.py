"""Small value types shared by sources, views and the pipeline."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # an annotation only: reading a store or drawing needs no torch
    import torch


@dataclass(frozen=True)
class TensorInfo:
    """What is known about one stored tensor without reading its data.

    shape: the stored shape; dtype: the stored torch dtype; storage_id: an opaque
    key equal for two names that share one storage at the same offset, shape and
    stride (tied weights), else None when the format cannot tell.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    storage_id: Hashable | None = None

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Note:
    """A warned skip or an observation the user must see (never raised).

    kind: a short tag, e.g. "duplicate", "skipped-file", "unsafe-pickle",
    "nonfinite", "zero-matrix", "fallback", "changed-source";
    message: one line saying what happened and, where useful, what to do;
    path: the file or matrix concerned, if any.
    """

    kind: str
    message: str
    path: str | None = None


@dataclass(eq=False)
class TrainingLog:
    """Training metrics (losses, accuracies, learning rate, ...) logged over a run.

    steps: int64 numpy [L], ascending and distinct: every step at which at least one
    metric was logged (checkpoint steps or not). values: metric name → float64 [L],
    NaN where that metric was not logged. sources: metric name → where it was read
    ("checkpoints", "trainer_state.json log_history: PATH", "metrics.csv: PATH",
    "--metrics PATH", ...).
    """

    steps: Any
    values: dict[str, Any]
    sources: dict[str, str]

    @property
    def names(self) -> list[str]:
        """Metric names in insertion order."""
        return list(self.values)

    def over(self, old: TrainingLog | None) -> TrainingLog:
        """This log laid over an older one: its metrics replace the old ones of the same
        name, old metrics it lacks are kept (a re-run without ``--metrics`` keeps what an
        earlier ``--metrics`` stored)."""
        import numpy as np

        if old is None:
            return self
        steps = np.union1d(np.asarray(old.steps, np.int64), np.asarray(self.steps, np.int64))
        values, sources = {}, {}
        for log in (old, self):
            cols = np.searchsorted(steps, log.steps)
            for name in log.names:
                row = np.full(steps.size, np.nan)
                row[cols] = log.values[name]
                values[name] = row
                sources[name] = log.sources.get(name, "")
        kept = {name for name in values if ~np.isnan(values[name]).all()}
        have = np.zeros(steps.size, dtype=bool)
        for name in kept:
            have |= ~np.isnan(values[name])
        return TrainingLog(
            steps=steps[have],
            values={n: v[have] for n, v in values.items() if n in kept},
            sources={n: s for n, s in sources.items() if n in kept},
        )

    def same_as(self, other: TrainingLog | None) -> bool:
        """Equal steps, names, sources and values (NaN equal to NaN)."""
        import numpy as np

        if other is None:
            return False
        return (
            np.array_equal(self.steps, other.steps)
            and self.names == other.names
            and self.sources == other.sources
            and all(
                np.array_equal(self.values[n], other.values[n], equal_nan=True) for n in self.names
            )
        )
