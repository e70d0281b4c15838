"""The comparison store: what `specdyn compare` measured, in one HDF5 file (docs/compare.md).

Written whole, into a temporary file renamed over the old one (`specdyn.files.atomic_output`),
so a reader never sees half a comparison; re-running a comparison replaces it. The result
written is any object with the fields `ComparisonResult` lists
(`specdyn.comparison.CompareResult` in practice); the store does not import the comparison.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from ..errors import RunNotFoundError, StoreError, command_ref, option_ref
from ..files import atomic_output
from ..version import __version__
from . import _layout as layout
from ._comparison_tables import (
    comparison_sections,
    comparison_to_datatree,
    comparison_to_pandas,
    comparison_to_xarray,
)
from ._reader import Run
from ._workspace import STORE_SUFFIX, resolve_home

__all__ = [
    "COMPARISON_FORMAT",
    "COMPARISON_SCHEMA",
    "Comparison",
    "ComparisonResult",
    "comparison_path",
    "open_comparison",
    "write_comparison",
]

COMPARISON_FORMAT = "specdyn-comparison"
COMPARISON_SCHEMA = 1
COMPARISONS_DIR = "comparisons"


class ComparisonResult(Protocol):
    """What `write_comparison` reads of a comparison's result (the fields of
    `specdyn.comparison.CompareResult`, which docs/compare.md describes): mode, k,
    score_top, notes (each with a `message`), runs (each with label, store, trunk,
    split, last_step), matrices, only_in, steps (int64 [S]), metrics (name → float
    [R, M, S]), pairs (each with a, b, same_trunk, steps_a, steps_b, diagonal, score,
    source), split (None, or the split summary's arrays) and barriers (each with pair,
    alpha, loss, barrier)."""

    @property
    def mode(self) -> str: ...
    @property
    def k(self) -> int: ...
    @property
    def score_top(self) -> int: ...
    @property
    def notes(self) -> Sequence[Any]: ...
    @property
    def runs(self) -> Sequence[Any]: ...
    @property
    def matrices(self) -> Sequence[str]: ...
    @property
    def only_in(self) -> Mapping[str, Any]: ...
    @property
    def steps(self) -> np.ndarray: ...
    @property
    def metrics(self) -> Mapping[str, np.ndarray]: ...
    @property
    def pairs(self) -> Sequence[Any]: ...
    @property
    def split(self) -> Any: ...
    @property
    def barriers(self) -> Sequence[Any]: ...


def comparison_path(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/comparisons/<name>.h5``."""
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        raise StoreError(f"comparison name {name!r} is not a plain file name; pick e.g. 'wd-sweep'")
    return resolve_home(home) / COMPARISONS_DIR / f"{name}{STORE_SUFFIX}"


def write_comparison(
    path: Path, result: ComparisonResult, opened: Sequence[Run], *, name: str
) -> None:
    """Write a comparison store (temporary file, then an atomic rename over `path`).

    Args:
        path: the comparison store (see `comparison_path`); its folder is created.
        result: what was measured (`specdyn.comparison.CompareResult`).
        opened: the compared runs, open (the first one's step unit is recorded).
        name: the comparison's name (attribute ``name``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, temp_name=f".{path.name}.tmp-{os.getpid()}") as temp:
        with h5py.File(temp, "w", libver=layout.LIBVER) as f:
            _write(f, result, opened, name)
            f.flush()


def _write(f: h5py.File, result: ComparisonResult, opened: Sequence[Run], name: str) -> None:
    """The datasets and attributes of docs/compare.md."""
    f.attrs["format"] = COMPARISON_FORMAT
    f.attrs["schema_version"] = COMPARISON_SCHEMA
    f.attrs["name"] = name
    f.attrs["mode"] = result.mode
    f.attrs["created"] = layout.now_iso()
    f.attrs["specdyn_version"] = __version__
    f.attrs["k"] = result.k
    f.attrs["score_top"] = result.score_top
    f.attrs["step_unit"] = opened[0].step_unit
    f.attrs["notes"] = json.dumps([n.message for n in result.notes])
    runs = f.create_group("runs")
    layout.vlen_strings(runs, "label", [e.label for e in result.runs])
    layout.vlen_strings(runs, "store", [str(Path(e.store).absolute()) for e in result.runs])
    layout.vlen_strings(runs, "trunk", [e.trunk or "" for e in result.runs])
    runs["split"] = np.array([-1 if e.split is None else e.split for e in result.runs], np.int64)
    runs["last_step"] = np.array([e.last_step for e in result.runs], np.int64)
    # which union steps each run holds: a metric's NaN cannot tell a missing step from a
    # NaN value (the tables keep the one, drop the other)
    steps = np.asarray(result.steps, np.int64)
    runs["has_step"] = np.stack(
        [np.isin(steps, np.asarray(r.steps, np.int64)) for r in opened]
    ).astype(np.int8)
    mats = f.create_group("matrices")
    layout.vlen_strings(mats, "name", result.matrices)
    # the diagonal length of each matrix, min(k, R): the NaN past it is padding
    ranks = {rec.name: rec.rank for rec in opened[0]._store.records}
    mats["length"] = np.array([min(result.k, ranks[m]) for m in result.matrices], np.int64)
    mats.attrs["only_in"] = json.dumps(result.only_in)
    f["steps"] = steps
    metrics = f.create_group("metrics")
    for metric, data in result.metrics.items():
        metrics.create_dataset(metric, data=data.astype(np.float64), compression="gzip")
    agr = f.create_group("agreement")
    agr["pair_a"] = np.array([p.a for p in result.pairs], np.int64)
    agr["pair_b"] = np.array([p.b for p in result.pairs], np.int64)
    agr["same_trunk"] = np.array(
        [-1 if p.same_trunk is None else int(p.same_trunk) for p in result.pairs], np.int8
    )
    for q, pair in enumerate(result.pairs):
        g = agr.create_group(str(q))
        g["step_a"] = pair.steps_a
        g["step_b"] = pair.steps_b
        g.create_dataset("diagonal", data=pair.diagonal, compression="gzip")
        g["score"] = pair.score
        layout.vlen_strings(g, "source", pair.source)
    if result.split is not None:
        s = result.split
        g = f.create_group("split")
        g["steps"] = s.steps
        g["barrier"] = s.barrier
        for which in ("same", "other"):
            h = g.create_group(which)
            h["score"] = getattr(s, f"{which}_score")
            h.create_dataset("diagonal", data=getattr(s, f"{which}_diagonal"), compression="gzip")
            h["pairs"] = getattr(s, f"{which}_pairs")
    if result.barriers:
        g = f.create_group("barrier")
        g["pair"] = np.array([b.pair for b in result.barriers], np.int64).reshape(-1, 2)
        g["alpha"] = result.barriers[0].alpha
        g["loss"] = np.stack([b.loss for b in result.barriers])
        g["barrier"] = np.array([b.barrier for b in result.barriers])


def open_comparison(
    name_or_path: str | os.PathLike[str], home: str | os.PathLike[str] | None = None
) -> Comparison:
    """Open a comparison store by name (``<home>/comparisons/<name>.h5``) or path.

    Raises:
        RunNotFoundError: no such comparison (the message lists the workspace's).
        StoreError: the file is not a comparison store or is of a newer schema.
    """
    text = os.fspath(name_or_path)
    folder = resolve_home(home) / COMPARISONS_DIR
    candidate = folder / f"{text}{STORE_SUFFIX}"
    if "/" not in text and candidate.is_file():
        return Comparison(candidate)
    path = Path(text).expanduser()
    if path.is_file():
        return Comparison(path)
    known = sorted(p.stem for p in folder.glob(f"*{STORE_SUFFIX}")) if folder.is_dir() else []
    listing = ", ".join(known[:10]) if known else "none"
    raise RunNotFoundError(
        f"no comparison named {text!r} in {folder} (comparisons there: {listing}) and no "
        f"file at {path}; run {command_ref('compare')} first",
        file=path,
    )


class Comparison:
    """A comparison store opened for reading (a context manager).

    Attributes: path, name, mode ("runs"|"split"), labels (run labels), stores,
    splits (int or None per run), trunks, last_steps, matrices (common, forward
    order), only_in (label → matrices left out), steps (int64 union step axis),
    k, score_top, step_unit, notes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path} is not an HDF5 file ({layout.h5_reason(exc)})") from None
        try:
            fmt = layout.attr_str(self._f, "format")
            if fmt != COMPARISON_FORMAT:
                raise StoreError(
                    f"{self.path} is not a comparison store (format {fmt!r}); "
                    f"write one with {command_ref('compare')}",
                    file=self.path,
                )
            if int(self._f.attrs["schema_version"]) > COMPARISON_SCHEMA:
                raise StoreError(
                    f"{self.path}: comparison schema {int(self._f.attrs['schema_version'])} is "
                    f"newer than this specdyn reads; upgrade specdyn or re-run "
                    f"{command_ref('compare')}",
                    file=self.path,
                )
            self._load()
        except (KeyError, ValueError, TypeError) as exc:
            self.close()
            raise StoreError(
                f"{self.path}: damaged comparison store ({exc}); re-run {command_ref('compare')}",
                file=self.path,
            ) from None
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        """Read the small tables."""
        f = self._f
        self.name = layout.attr_str(f, "name") or self.path.stem
        self.mode = layout.attr_str(f, "mode")
        self.k = int(f.attrs["k"])
        self.score_top = int(f.attrs["score_top"])
        self.step_unit = layout.attr_str(f, "step_unit", "step")
        self.notes = list(json.loads(layout.attr_str(f, "notes", "[]")))
        self.labels = layout.read_strings(f["runs/label"])
        self.stores = layout.read_strings(f["runs/store"])
        self.trunks = [t or None for t in layout.read_strings(f["runs/trunk"])]
        self.splits = [None if s < 0 else int(s) for s in f["runs/split"][()]]
        self.last_steps = [int(s) for s in f["runs/last_step"][()]]
        self.matrices = layout.read_strings(f["matrices/name"])
        self.only_in = json.loads(layout.attr_str(f["matrices"], "only_in", "{}"))
        self.steps = np.asarray(f["steps"][()], dtype=np.int64)
        self.metric_names = sorted(f["metrics"].keys())
        a = np.asarray(f["agreement/pair_a"][()], dtype=np.int64)
        b = np.asarray(f["agreement/pair_b"][()], dtype=np.int64)
        same = np.asarray(f["agreement/same_trunk"][()], dtype=np.int64)
        self.pairs = [
            (int(x), int(y), None if s < 0 else bool(s)) for x, y, s in zip(a, b, same, strict=True)
        ]

    # ---------------------------------------------------------------- metrics

    def run_index(self, run: int | str) -> int:
        """Index of a run given by index, label or unique label substring."""
        if isinstance(run, (int, np.integer)):
            if not 0 <= int(run) < len(self.labels):
                raise StoreError(
                    f"{self.path}: run index {run} out of range 0..{len(self.labels) - 1}"
                )
            return int(run)
        if run in self.labels:
            return self.labels.index(run)
        hits = [i for i, label in enumerate(self.labels) if run in label]
        if len(hits) == 1:
            return hits[0]
        what = "matches several runs: " if hits else "matches no run; runs: "
        raise StoreError(
            f"{run!r} {what}{', '.join(self.labels[i] for i in (hits or range(len(self.labels))))}"
        )

    def find_matrix(self, pattern: str) -> str:
        """A common matrix by exact name or unique substring (ambiguous ones list candidates)."""
        if pattern in self.matrices:
            return pattern
        hits = [m for m in self.matrices if pattern in m]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise StoreError(
                f"{self.path}: no common matrix matches {pattern!r}; e.g. {', '.join(self.matrices[:5])}"
            )
        raise StoreError(f"{pattern!r} matches {len(hits)} matrices: {', '.join(hits[:8])}")

    def metric(self, name: str) -> np.ndarray:
        """float64 [runs, matrices, steps] on the union step axis, NaN where a run lacks a step."""
        if name not in self._f["metrics"]:
            raise StoreError(
                f"{self.path}: no metric {name!r}; stored: {', '.join(self.metric_names)}"
            )
        return np.asarray(self._f[f"metrics/{name}"][()], dtype=np.float64)

    def final(self, name: str) -> np.ndarray:
        """float64 [runs, matrices]: each run's `name` at its last step."""
        data = self.metric(name)
        cols = np.searchsorted(self.steps, self.last_steps)
        return np.stack([data[r, :, c] for r, c in enumerate(cols)])

    def shared_steps(self, a: int | str = 0, b: int | str = 1) -> np.ndarray:
        """int64 steps both runs hold."""
        data = self.metric(self.metric_names[0])
        ia, ib = self.run_index(a), self.run_index(b)
        have = ~np.isnan(data[ia]).all(axis=0) & ~np.isnan(data[ib]).all(axis=0)
        return self.steps[have]

    def difference(self, name: str, a: int | str = 0, b: int | str = 1) -> np.ndarray:
        """float64 [matrices, shared steps]: run b's `name` minus run a's."""
        ia, ib = self.run_index(a), self.run_index(b)
        data = self.metric(name)
        cols = np.searchsorted(self.steps, self.shared_steps(ia, ib))
        return data[ib][:, cols] - data[ia][:, cols]

    # ---------------------------------------------------------------- agreement

    def pair_index(self, a: int | str = 0, b: int | str = 1) -> int:
        """Index of the pair of runs (a, b) in either order."""
        ia, ib = self.run_index(a), self.run_index(b)
        for q, (x, y, _same) in enumerate(self.pairs):
            if {x, y} == {ia, ib}:
                return q
        raise StoreError(
            f"{self.path}: runs {self.labels[ia]} and {self.labels[ib]} were not compared "
            "with each other"
        )

    def agreement(self, a: int | str = 0, b: int | str = 1) -> dict[str, Any]:
        """The branch agreement between two runs.

        Returns:
            dict with step_a, step_b (int64 [S], the last row being the endpoints),
            diagonal (float32 [S, matrices, k], NaN-padded), score (float64
            [S, matrices]), source (list of "vectors"/"checkpoint" pairs per row).
        """
        g = self._f[f"agreement/{self.pair_index(a, b)}"]
        return {
            "step_a": np.asarray(g["step_a"][()], dtype=np.int64),
            "step_b": np.asarray(g["step_b"][()], dtype=np.int64),
            "diagonal": np.asarray(g["diagonal"][()]),
            "score": np.asarray(g["score"][()], dtype=np.float64),
            "source": layout.read_strings(g["source"]),
        }

    def endpoint_agreement(self, a: int | str = 0, b: int | str = 1) -> np.ndarray:
        """float32 [matrices, k]: the agreement diagonal at the two runs' endpoints."""
        return self.agreement(a, b)["diagonal"][-1]

    def split_summary(self) -> dict[str, np.ndarray]:
        """Mode "split": steps [G], barrier [G], and for "same"/"other" trunk pairs:
        score [G, M], diagonal [G, M, k], pairs [G] (see `specdyn.compare.SplitSummary`)."""
        if "split" not in self._f:
            by_split = option_ref("by='split'", "--by split")
            raise StoreError(
                f"{self.path}: not a split comparison; run {command_ref('compare')} on the "
                f"branches with {by_split}",
                file=self.path,
            )
        g = self._f["split"]
        out: dict[str, np.ndarray] = {
            "steps": np.asarray(g["steps"][()], dtype=np.int64),
            "barrier": np.asarray(g["barrier"][()], dtype=np.float64),
        }
        for which in ("same", "other"):
            out[f"{which}_score"] = np.asarray(g[f"{which}/score"][()], dtype=np.float64)
            out[f"{which}_diagonal"] = np.asarray(g[f"{which}/diagonal"][()])
            out[f"{which}_pairs"] = np.asarray(g[f"{which}/pairs"][()], dtype=np.int64)
        return out

    def barriers(self) -> dict[str, np.ndarray] | None:
        """pair int64 [B, 2], alpha [P], loss [B, P], barrier [B]; None without --barrier."""
        if "barrier" not in self._f:
            return None
        g = self._f["barrier"]
        return {key: np.asarray(g[key][()]) for key in ("pair", "alpha", "loss", "barrier")}

    # ---------------------------------------------------------------- tables

    @property
    def sections(self) -> list[str]:
        """The table sections this comparison holds (`to_pandas`): runs, steps, metrics,
        agreement, agreement_score; split and split_diagonal in mode "split"; barrier
        when barriers were measured."""
        return comparison_sections(self)

    def to_pandas(self, section: str = "metrics") -> Any:
        """One section as a tidy pandas DataFrame: one row per value, valid rows only.

        Args:
            section: ``"runs"`` (columns run, store, trunk, split, last_step: one row per
                run), ``"steps"`` (run, step: the union steps each run holds),
                ``"metrics"`` (run, step, matrix, metric, value), ``"agreement"`` (pair,
                a, b, step_a, step_b, endpoint, source, matrix, i, value: the branch
                agreement diagonal S_ii), ``"agreement_score"`` (pair, a, b, step_a,
                step_b, endpoint, source, matrix, score), ``"split"`` (split, trunks,
                pairs, matrix, score: the mean endpoint score per split step over
                one-trunk, trunks "same", or different-trunk pairs, "other"),
                ``"split_diagonal"`` (split, trunks, pairs, matrix, i, value) or
                ``"barrier"`` (pair, a, b, alpha, loss, barrier).

        Returns:
            A DataFrame: steps, split, pairs and last_step int64 (split -1 when none), i
            int32 (0-based), endpoint bool (the pair's last row: the two runs'
            endpoints), values float64; run, a, b (run labels), pair
            (``"<a>~<b>"``), matrix, metric, source, trunks, store and trunk
            categorical of str (runs, matrices and pairs in the file's order). No row for
            a step a run does not hold, past a matrix's diagonal length min(k, R), or for
            a split group with no pair; a NaN value at a step a run holds keeps its row.

        Raises:
            MissingExtraError: pandas is not installed (``pip install 'specdyn[pandas]'``).
            StoreError: unknown section, or one this comparison lacks (split sections
                outside mode "split", barrier without barriers).
        """
        return comparison_to_pandas(self, section)

    def to_xarray(self, section: str = "metrics") -> Any:
        """One section as an `xarray.Dataset` with named dimensions and coordinates.

        Args:
            section: ``"metrics"``: one variable per metric, dims (run, step, matrix), NaN
                where a run lacks the step (coord has_step (run, step)), coords store,
                trunk, split, last_step (run) and length (matrix); ``"agreement"``:
                diagonal (pair, row, matrix, k) and score (pair, row, matrix), every
                pair's rows stacked on ``row`` (coords step_a, step_b, source (pair,
                row); rows, a, b, same_trunk (pair); NaN, -1 and "" past a pair's rows);
                ``"split"``: score (trunks, split, matrix), diagonal (trunks, split,
                matrix, k), pairs (trunks, split), barrier (split), trunks "same" and
                "other"; ``"barrier"``: loss (pair, alpha), barrier (pair); ``"runs"``:
                steps (run: steps held) and the run coordinates.

        Returns:
            The Dataset (float64 values; attributes comparison, mode, k, score_top,
            step_unit).

        Raises:
            MissingExtraError: xarray is not installed (``pip install 'specdyn[xarray]'``).
            StoreError: unknown section, or one this comparison lacks.
        """
        return comparison_to_xarray(self, section)

    def to_datatree(self) -> Any:
        """Every section `to_xarray` gives (runs, metrics, agreement; split and barrier
        where held) as the children of one `xarray.DataTree` named after the comparison.

        Raises:
            MissingExtraError: xarray is not installed (``pip install 'specdyn[xarray]'``).
        """
        return comparison_to_datatree(self)

    def close(self) -> None:
        """Close the file (idempotent)."""
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            f.close()

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Comparison({self.name!r}, mode={self.mode}, runs={self.labels})"
