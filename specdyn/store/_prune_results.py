"""The prune results file, ``prune.h5`` (layout in docs/prune.md): what
`specdyn.prune.prune_magnitude` measured, written whole and read back.

The store package owns it because it names HDF5 paths; prune builds a `PruneResults`
and hands it over, so this module needs nothing from prune.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import PruneError, option_ref
from ..files import atomic_output

__all__ = ["PRUNE_RESULTS_NAME", "PruneResults", "write_prune_results", "read_prune_results"]

PRUNE_RESULTS_NAME = "prune.h5"
_SCHEMA = 1
_PRUNE_MAGNITUDE = option_ref("specdyn.prune.prune_magnitude()", "specdyn prune --magnitude")


@dataclass
class PruneResults:
    """The contents of a ``prune.h5`` (layout in docs/prune.md).

    attrs: file attributes (schema, source, checkpoint, step, fraction, seed, k, score_top,
    control, specdyn_version, created); matrices / matrix_param / matrix_kind: [M] names;
    matrix_shape: int64 [M, 2]; matrix_kept_fraction: float64 [M]; parameters /
    parameter_names: [P] raw keys and canonical names; parameter_size, kept: int64 [P];
    kept_fraction: float64 [P]; diagonal: mask → float32 [M, k]; score: mask → float64 [M].
    """

    attrs: dict
    matrices: list[str]
    matrix_param: list[str]
    matrix_kind: list[str]
    matrix_shape: np.ndarray
    matrix_kept_fraction: np.ndarray
    parameters: list[str]
    parameter_names: list[str]
    parameter_size: np.ndarray
    kept: np.ndarray
    kept_fraction: np.ndarray
    diagonal: dict[str, np.ndarray]
    score: dict[str, np.ndarray]


def write_prune_results(path: str | os.PathLike[str], results: PruneResults) -> None:
    """Write `results` to `path` atomically (``<name>.partial``, then a rename).

    The schema number is written first among the attributes; the masks in the order of
    `results.diagonal`. Arrays are stored as the `PruneResults` fields say (float32
    diagonals, float64 scores and fractions, int64 sizes).
    """
    path = Path(path)
    text = h5py.string_dtype("utf-8")
    attrs = {"schema": _SCHEMA, **{k: v for k, v in results.attrs.items() if k != "schema"}}
    with atomic_output(path, temp_name=path.name + ".partial") as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs.update(attrs)
            for key in ("matrices", "matrix_param", "matrix_kind"):
                f.create_dataset(key, data=getattr(results, key), dtype=text)
            f.create_dataset(
                "matrix_shape", data=np.asarray(results.matrix_shape, np.int64).reshape(-1, 2)
            )
            f.create_dataset(
                "matrix_kept_fraction", data=np.asarray(results.matrix_kept_fraction, np.float64)
            )
            f.create_dataset("parameters", data=results.parameters, dtype=text)
            f.create_dataset("parameter_names", data=results.parameter_names, dtype=text)
            f.create_dataset("parameter_size", data=np.asarray(results.parameter_size, np.int64))
            f.create_dataset("kept", data=np.asarray(results.kept, np.int64))
            f.create_dataset("kept_fraction", data=np.asarray(results.kept_fraction, np.float64))
            for mask, table in results.diagonal.items():
                group = f.create_group(f"masks/{mask}")
                group.create_dataset("diagonal", data=np.asarray(table, np.float32))
                group.create_dataset("score", data=np.asarray(results.score[mask], np.float64))


def read_prune_results(path: str | os.PathLike[str]) -> PruneResults:
    """Read a ``prune.h5`` written by `prune_magnitude` (layout in docs/prune.md).

    Args:
        path: the file, or the output folder holding it.

    Returns:
        `PruneResults` (numpy arrays, lists of names, the file's attributes).

    Raises:
        PruneError: missing file or not a specdyn prune results file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / PRUNE_RESULTS_NAME
    if not p.is_file():
        raise PruneError(f"{p}: no such prune results file; run {_PRUNE_MAGNITUDE} first", file=p)
    try:
        with h5py.File(p, "r", locking=False) as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            masks = sorted(f["masks"]) if "masks" in f else []
            return PruneResults(
                attrs=attrs,
                matrices=_names(f, "matrices"),
                matrix_param=_names(f, "matrix_param"),
                matrix_kind=_names(f, "matrix_kind"),
                matrix_shape=f["matrix_shape"][()],
                matrix_kept_fraction=f["matrix_kept_fraction"][()],
                parameters=_names(f, "parameters"),
                parameter_names=_names(f, "parameter_names"),
                parameter_size=f["parameter_size"][()],
                kept=f["kept"][()],
                kept_fraction=f["kept_fraction"][()],
                diagonal={m: f[f"masks/{m}/diagonal"][()] for m in masks},
                score={m: f[f"masks/{m}/score"][()] for m in masks},
            )
    except (OSError, KeyError) as exc:
        raise PruneError(f"{p}: not a readable prune results file ({exc})", file=p) from None


def _names(f: h5py.File, key: str) -> list[str]:
    """A string dataset as a list of str."""
    return [s.decode() if isinstance(s, bytes) else str(s) for s in f[key][()]]
