"""The store's optional ``/training`` section: training metrics logged over the run.

Layout (docs/store.md): ``training/step`` int64 [L]; ``training/name`` strings [N];
``training/values`` float64 [N, L] (NaN where a metric was not logged at a step);
``training/source`` strings [N]; the group's ``kind`` attribute, strings [N]:
``"training"`` or ``"system"`` per metric (`metric_kind`; absent in older stores, read
as every metric ``"training"``). Written only while a store file is being built (the
whole file, then an atomic rename), never in place, so a crash cannot damage it; the
attribute is thus under the static checksums, as the datasets are.
"""

from __future__ import annotations

import re

import h5py
import numpy as np

from ..types import TrainingLog
from . import _layout as layout

__all__ = ["write", "read", "read_kinds", "copy", "metric_kind", "KINDS"]

GROUP = "training"
KIND_ATTR = "kind"
KINDS = ("training", "system")
# What the run's machine did, not what the model learned: the Hugging Face Trainer's
# speed and memory metrics ({split}_runtime, _samples/_steps/_tokens_per_second,
# _model_preparation_time, _jit_compilation_time, _mem_{cpu,gpu}_*; total_flos), and
# throughput columns of other loops. Matched at the end of a name, any prefix ("eval_",
# "train/", ...).
_SYSTEM = re.compile(
    r"(?:^|[_/.\-])(?:runtime|\w*per_sec(?:ond)?|throughput|\w*flos"
    r"|model_preparation_time|jit_compilation_time|mem_(?:cpu|gpu)_\w+)$",
    re.IGNORECASE,
)


def metric_kind(name: str) -> str:
    """Whether a training metric is a training curve or a system metric.

    Args:
        name: the metric's name as logged (``eval_loss``, ``eval_runtime``, ...).

    Returns:
        ``"system"`` for runtime, throughput, FLOP and memory counters
        (``eval_runtime``, ``train_samples_per_second``, ``eval_steps_per_second``,
        ``total_flos``, ``train_mem_gpu_alloc_delta``, ...), else ``"training"``.
    """
    return "system" if _SYSTEM.search(name) else "training"


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
    g.attrs[KIND_ATTR] = np.array([metric_kind(n) for n in log.names], dtype=h5py.string_dtype())


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


def read_kinds(f: h5py.File) -> dict[str, str]:
    """Metric name → ``"training"`` or ``"system"`` (every metric ``"training"`` in a store
    written before kinds were stored); empty when the store has no training section."""
    if GROUP not in f:
        return {}
    g = f[GROUP]
    names = layout.read_strings(g["name"])
    if KIND_ATTR not in g.attrs:
        return dict.fromkeys(names, "training")
    raw = np.atleast_1d(g.attrs[KIND_ATTR])
    kinds = [k.decode() if isinstance(k, bytes) else str(k) for k in raw]
    if len(kinds) != len(names) or not set(kinds) <= set(KINDS):
        raise ValueError(f"/{GROUP} attribute {KIND_ATTR!r}: {kinds[:3]} for {len(names)} metrics")
    return dict(zip(names, kinds, strict=True))


def copy(old: h5py.File, f: h5py.File) -> None:
    """Carry the section of `old` into a file being built."""
    if GROUP in old:
        old.copy(old[GROUP], f, name=GROUP)
