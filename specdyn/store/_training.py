"""The store's optional ``/training`` section: training metrics logged over the run.

Layout (docs/store.md): ``training/step`` int64 [L]; ``training/name`` strings [N];
``training/values`` float64 [N, L] (NaN where a metric was not logged at a step);
``training/source`` strings [N]. Written only while a store file is being built (the
whole file, then an atomic rename), never in place, so a crash cannot damage it.
"""

from __future__ import annotations

import h5py
import numpy as np

from ..types import TrainingLog
from . import _layout as layout

__all__ = ["write", "read", "copy"]

GROUP = "training"


def write(f: h5py.File, log: TrainingLog) -> None:
    """Create the section in a file being built."""
    g = f.create_group(GROUP)
    g.create_dataset("step", data=np.asarray(log.steps, dtype=np.int64))
    layout.vlen_strings(g, "name", log.names)
    layout.vlen_strings(g, "source", [log.sources.get(n, "") for n in log.names])
    values = np.array([log.values[n] for n in log.names], dtype=np.float64).reshape(
        len(log.names), len(log.steps)
    )
    g.create_dataset("values", data=values, compression="gzip" if values.size > 4096 else None)


def read(f: h5py.File) -> TrainingLog | None:
    """The section, or None when the store has none."""
    if GROUP not in f:
        return None
    g = f[GROUP]
    names = layout.read_strings(g["name"])
    sources = layout.read_strings(g["source"])
    values = np.asarray(g["values"][()], dtype=np.float64)
    return TrainingLog(
        steps=np.asarray(g["step"][()], dtype=np.int64),
        values={n: values[i] for i, n in enumerate(names)},
        sources=dict(zip(names, sources, strict=True)),
    )


def copy(old: h5py.File, f: h5py.File) -> None:
    """Carry the section of `old` into a file being built."""
    if GROUP in old:
        old.copy(old[GROUP], f, name=GROUP)
