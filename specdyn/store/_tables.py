"""A run's sections as tidy tables (one row per value), read step-chunk by step-chunk.

`table_chunks` yields `TableChunk`s: plain numpy columns, strings as category codes with
their categories, so that a whole table is never needed at once (`specdyn.export` streams
them to parquet or CSV) and pandas is needed only by `to_pandas`. `to_xarray` gives the
same numbers as labelled arrays. Only rows whose done flags are set are read
(docs/store.md, "Only rows with done = 1 are valid"): a step not done has no row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import StoreError
from ..extras import require_extra
from . import _layout as layout
from . import _training as trainstore

# `Run` (``_reader``) calls into this module, so its types are named, not imported.
Run = Any
OpenStore = Any

__all__ = [
    "COLUMNS",
    "DEFAULT_CHUNK_ROWS",
    "SECTIONS",
    "TableChunk",
    "STACKED",
    "empty_chunk",
    "frame",
    "joined_frame",
    "section_rows",
    "xarray_skeleton",
    "run_sections",
    "table_chunks",
    "to_datatree",
    "to_pandas",
    "to_xarray",
]

SECTIONS = ("metrics", "sigma", "alignment", "agreement", "training")
# The columns of each section's table, in order; those in CATEGORICAL hold category codes.
COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("run", "step", "epoch", "matrix", "kind", "metric", "value"),
    "sigma": ("run", "matrix", "step", "i", "sigma"),
    "alignment": ("run", "pair", "step", "i", "value"),
    "agreement": ("run", "matrix", "step", "i", "value"),
    "training": ("run", "step", "metric", "value"),
}
CATEGORICAL = frozenset({"run", "matrix", "kind", "metric", "pair"})
# Rows per chunk: ~2 MB of columns (about 28 bytes a row), a fair parquet row group, small
# next to a large store's sigma section (a Pythia-12b one is ~1.5 GB); benchmarks/bench_export.py.
DEFAULT_CHUNK_ROWS = 1 << 16


@dataclass
class TableChunk:
    """Consecutive rows of one section's table.

    columns: name → numpy array [rows] in `COLUMNS` order; a categorical column holds int32
    codes into ``categories[name]`` (a list of str).
    """

    section: str
    columns: dict[str, np.ndarray]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Number of rows."""
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def strings(self, name: str) -> np.ndarray:
        """A categorical column as str values (object array [rows])."""
        return np.array(self.categories[name], dtype=object)[self.columns[name]]


def run_sections(run: Run) -> list[str]:
    """The sections a run has: metrics and sigma always, alignment and agreement with
    singular vectors, training when metrics were logged."""
    store = run._store
    out = ["metrics", "sigma"]
    if store.vector_layout is not None:
        out += ["alignment", "agreement"]
    if layout_has_training(store):
        out.append("training")
    return out


def layout_has_training(store: OpenStore) -> bool:
    """Whether the store holds training metrics."""
    return trainstore.GROUP in store.file


def _check_section(run: Run, section: str) -> None:
    """StoreError for an unknown section, or one this run does not hold."""
    if section not in SECTIONS:
        raise StoreError(
            f"no section {section!r}; sections: {', '.join(SECTIONS)}", option="section"
        )
    if section not in run_sections(run):
        raise StoreError(
            f"{run.path}: run {run.name!r} has no {section} section (its sections: "
            f"{', '.join(run_sections(run))})",
            file=run.path,
            option="section",
        )


def table_chunks(
    run: Run,
    section: str,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    runs: Sequence[str] | None = None,
) -> Iterator[TableChunk]:
    """The rows of one section of `run`, in chunks of at most `chunk_rows` rows (a chunk
    is never split inside one step of one matrix or pair, so it holds at least that step's
    values: R for σ, M × metrics for the metrics).

    Args:
        run: an open run.
        section: one of `SECTIONS`.
        chunk_rows: rows per chunk (at least 1).
        runs: the categories of the ``run`` column (default: this run's name only), so
            that chunks of several runs share them.

    Yields:
        `TableChunk` with the columns of ``COLUMNS[section]``; rows ordered by step,
        metric and matrix (metrics), by matrix or pair, step and i (sigma, alignment,
        agreement), by metric and step (training). i is the 0-based position in
        descending order of σ. Only done rows; none for an empty section.

    Raises:
        StoreError: unknown section, or one the run does not have.
        StoreDamagedError: a row read does not match its checksum.
    """
    _check_section(run, section)
    categories = list(runs) if runs is not None else [run.name]
    code = categories.index(run.name)
    produce = {
        "metrics": _metric_pieces,
        "sigma": _sigma_pieces,
        "alignment": _alignment_pieces,
        "agreement": _agreement_pieces,
        "training": _training_pieces,
    }[section]
    store = run._store
    pending: list[dict[str, np.ndarray]] = []
    held = 0
    cats: dict[str, list[str]] = {"run": categories}
    for piece, piece_cats in produce(store, max(1, int(chunk_rows))):
        cats.update(piece_cats)
        n = len(next(iter(piece.values())))
        piece["run"] = np.full(n, code, dtype=np.int32)
        if pending and held + n > chunk_rows:
            yield _joined(section, pending, cats)
            pending, held = [], 0
        pending.append(piece)
        held += n
    if pending:
        yield _joined(section, pending, cats)


def _joined(section: str, pieces: list[dict[str, np.ndarray]], cats) -> TableChunk:
    """One chunk from pieces (concatenated column by column, in `COLUMNS` order)."""
    names = COLUMNS[section]
    if len(pieces) == 1:
        columns = {n: pieces[0][n] for n in names}
    else:
        columns = {n: np.concatenate([p[n] for p in pieces]) for n in names}
    return TableChunk(section, columns, {n: cats[n] for n in names if n in CATEGORICAL})


def _row_chunks(rows: np.ndarray, per_row: int, chunk_rows: int) -> Iterator[np.ndarray]:
    """`rows` (file rows of done steps) cut so that each part has about `chunk_rows`
    values of `per_row` values a row."""
    step = max(1, chunk_rows // max(1, per_row))
    for a in range(0, len(rows), step):
        yield rows[a : a + step]


def _metric_pieces(store: OpenStore, chunk_rows: int):
    """metrics: step, epoch, matrix, kind, metric, value."""
    names = store.metric_names
    m = len(store.matrices)
    kinds = sorted({r.kind for r in store.records})
    kind_code = np.array([kinds.index(r.kind) for r in store.records], dtype=np.int32)
    epochs = np.asarray(store.file[layout.STEPS_EPOCH][()], dtype=np.int64)
    cats = {"matrix": list(store.matrices), "kind": kinds, "metric": list(names)}
    per_step = len(names) * m
    for rows in _row_chunks(store.done_rows, per_step, chunk_rows):
        t = len(rows)
        values = np.empty((t, len(names), m), dtype=np.float64)
        for a, name in enumerate(names):
            values[:, a, :] = store.read_rows(layout.metric_path(name), rows)
        matrix = np.tile(np.arange(m, dtype=np.int32), t * len(names))
        piece = {
            "step": np.repeat(store.all_steps[rows], per_step),
            "epoch": np.repeat(epochs[rows], per_step),
            "matrix": matrix,
            "kind": kind_code[matrix],
            "metric": np.tile(np.repeat(np.arange(len(names), dtype=np.int32), m), t),
            "value": values.reshape(-1),
        }
        yield piece, cats


def _diagonal_pieces(
    store: OpenStore, rows: np.ndarray, paths: Sequence[str], key: str, value: str, chunk_rows
):
    """One piece per (dataset, step chunk) of [T, n] datasets: key, step, i, value."""
    for j, path in enumerate(paths):
        width = int(store.file[path].shape[1])
        for part in _row_chunks(rows, width, chunk_rows):
            data = store.read_rows(path, part)
            t = len(part)
            yield {
                key: np.full(t * width, j, dtype=np.int32),
                "step": np.repeat(store.all_steps[part], width),
                "i": np.tile(np.arange(width, dtype=np.int32), t),
                value: np.ascontiguousarray(data, dtype=np.float64).reshape(-1),
            }


def _sigma_pieces(store: OpenStore, chunk_rows: int):
    """sigma: matrix, step, i, sigma."""
    cats = {"matrix": list(store.matrices)}
    paths = [layout.sigma_path(n) for n in store.matrices]
    for piece in _diagonal_pieces(store, store.done_rows, paths, "matrix", "sigma", chunk_rows):
        yield piece, cats


def section_rows(store: OpenStore, section: str) -> np.ndarray:
    """File rows whose values and `section` ("alignment", "agreement") are done."""
    done = np.asarray(store.file[layout.done_path(section)][()], dtype=bool)
    return store.done_rows[done[store.done_rows]]


def _alignment_pieces(store: OpenStore, chunk_rows: int):
    """alignment: pair, step, i, value (the diagonal A_ii)."""
    names = list(store.pair_column)
    paths = [layout.diagonal_path("alignment", n) for n in names]
    rows = section_rows(store, "alignment")
    for piece in _diagonal_pieces(store, rows, paths, "pair", "value", chunk_rows):
        yield piece, {"pair": names}


def _agreement_pieces(store: OpenStore, chunk_rows: int):
    """agreement: matrix, step, i, value (the diagonal S_ii)."""
    paths = [layout.diagonal_path("agreement", n) for n in store.matrices]
    rows = section_rows(store, "agreement")
    for piece in _diagonal_pieces(store, rows, paths, "matrix", "value", chunk_rows):
        yield piece, {"matrix": list(store.matrices)}


def _training_pieces(store: OpenStore, chunk_rows: int):
    """training: step, metric, value (only the steps where a metric was logged)."""
    log = trainstore.read(store.file)
    names = log.names
    for j, name in enumerate(names):
        values = log.values[name]
        have = ~np.isnan(values)
        yield (
            {
                "step": log.steps[have].astype(np.int64),
                "metric": np.full(int(have.sum()), j, dtype=np.int32),
                "value": values[have].astype(np.float64),
            },
            {"metric": list(names)},
        )


def empty_chunk(run: Run, section: str) -> TableChunk:
    """A chunk of no rows with the section's columns and dtypes."""
    ints = {"step", "epoch"}
    columns = {
        n: np.zeros(
            0,
            dtype=np.int32
            if n in CATEGORICAL or n == "i"
            else (np.int64 if n in ints else np.float64),
        )
        for n in COLUMNS[section]
    }
    store = run._store
    known = {
        "run": [run.name],
        "matrix": list(store.matrices),
        "kind": sorted({r.kind for r in store.records}),
        "pair": list(store.pair_column),
        "metric": list(store.metric_names)
        if section == "metrics"
        else (trainstore.read(store.file).names if layout_has_training(store) else []),
    }
    return TableChunk(section, columns, {n: known[n] for n in COLUMNS[section] if n in known})


def frame(pd: ModuleType, chunk: TableChunk) -> Any:
    """A pandas DataFrame of one chunk: categorical columns as pandas categoricals of str."""
    data = {}
    for name, column in chunk.columns.items():
        if name in chunk.categories:
            data[name] = pd.Categorical.from_codes(column, categories=chunk.categories[name])
        else:
            data[name] = column
    return pd.DataFrame(data)


def to_pandas(run: Run, section: str) -> Any:
    """`Run.to_pandas`: the whole table of one section (see `table_chunks`)."""
    pd = require_extra("pandas", "pandas", "Run.to_pandas")
    _check_section(run, section)
    return joined_frame(pd, table_chunks(run, section), lambda: empty_chunk(run, section))


def joined_frame(pd: ModuleType, chunks: Any, empty: Any) -> Any:
    """One DataFrame of the `TableChunk`s `chunks` (`empty()`: the chunk of no rows that
    gives the columns when there is none)."""
    frames = [frame(pd, c) for c in chunks]
    if not frames:
        return frame(pd, empty())
    if len(frames) == 1:
        return frames[0]
    # the chunks share their categories, so concatenation keeps the columns categorical
    return pd.concat(frames, ignore_index=True)


def _padded(store: OpenStore, rows: np.ndarray, paths: Sequence[str]) -> np.ndarray:
    """[len(paths), len(rows), max width] of [T, n] datasets, NaN beyond each one's width."""
    widths = [int(store.file[p].shape[1]) for p in paths]
    out = np.full((len(paths), len(rows), max(widths, default=0)), np.nan)
    for j, path in enumerate(paths):
        if len(rows):
            out[j, :, : widths[j]] = store.read_rows(path, rows)
    return out


# The sections with one large variable (a padded stack of per-matrix or per-pair
# datasets): its name, the dimension it stacks and its trailing dimension.
STACKED = {
    "sigma": ("sigma", "matrix", "sv"),
    "alignment": ("diagonal", "pair", "k"),
    "agreement": ("diagonal", "matrix", "k"),
}


def to_xarray(run: Run, section: str) -> Any:
    """`Run.to_xarray`: one section as an `xarray.Dataset` with named dimensions."""
    xr = require_extra("xarray", "xarray", "Run.to_xarray")
    _check_section(run, section)
    store = run._store
    attrs = {"run": run.name, "section": section, "step_unit": run.step_unit}
    if section in STACKED:
        data, rows, paths = xarray_skeleton(run, section)
        variable, stacked, last = STACKED[section]
        data[variable] = ((stacked, "step", last), _padded(store, rows, paths))
        return data
    if section == "metrics":
        rows = store.done_rows
        epochs = np.asarray(store.file[layout.STEPS_EPOCH][()], dtype=np.int64)[rows]
        data = {
            name: (("step", "matrix"), store.read_rows(layout.metric_path(name), rows))
            for name in store.metric_names
        }
        return xr.Dataset(data, coords=_matrix_coords(store, rows, epoch=epochs), attrs=attrs)
    log = trainstore.read(store.file)
    values = np.array([log.values[n] for n in log.names]).reshape(len(log.names), -1)
    coords = {"metric": list(log.names), "step": log.steps.astype(np.int64)}
    coords["source"] = ("metric", list(log.sources.get(n, "") for n in log.names))
    return xr.Dataset({"value": (("metric", "step"), values)}, coords=coords, attrs=attrs)


def to_datatree(run: Run) -> Any:
    """`Run.to_datatree`: every section the run has, as children of one `xarray.DataTree`."""
    xr = require_extra("xarray", "xarray", "Run.to_datatree")
    children = {f"/{section}": to_xarray(run, section) for section in run_sections(run)}
    return xr.DataTree.from_dict(children, name=run.name)


def _matrix_coords(store: OpenStore, rows: np.ndarray, **per_step: np.ndarray) -> dict:
    """Coordinates step, matrix and the matrix table (kind, rank) for a section."""
    coords: dict[str, Any] = {
        "step": store.all_steps[rows],
        "matrix": list(store.matrices),
        "kind": ("matrix", [r.kind for r in store.records]),
        "rank": ("matrix", np.array([r.rank for r in store.records], dtype=np.int64)),
    }
    coords.update({k: ("step", v) for k, v in per_step.items()})
    return coords


def xarray_skeleton(run: Run, section: str) -> tuple[Any, np.ndarray, list[str]]:
    """A `STACKED` section's Dataset without its large variable (coordinates, and the
    scores of alignment and agreement), the file rows of its steps and the dataset of
    each matrix or pair (the large variable stacks them, NaN beyond each one's width).
    alignment: score [step, pair], coords first, second, length (k_p); agreement: score
    [step, matrix], attribute reference; sigma: coords kind, rank."""
    xr = require_extra("xarray", "xarray", "Run.to_xarray")
    store = run._store
    attrs: dict[str, Any] = {"run": run.name, "section": section, "step_unit": run.step_unit}
    data: dict[str, Any] = {}
    if section == "sigma":
        rows = store.done_rows
        paths = [layout.sigma_path(n) for n in store.matrices]
        coords = _matrix_coords(store, rows)
    elif section == "alignment":
        rows = section_rows(store, section)
        names = list(store.pair_column)
        paths = [layout.diagonal_path(section, n) for n in names]
        pairs = store.vector_layout.pairs
        coords = {
            "step": store.all_steps[rows],
            "pair": names,
            "first": ("pair", [p.first for p in pairs]),
            "second": ("pair", [p.second for p in pairs]),
        }
        data["score"] = (("step", "pair"), _rows_or_empty(store, layout.ALIGNMENT_SCORE, rows))
    else:
        rows = section_rows(store, section)
        paths = [layout.diagonal_path(section, n) for n in store.matrices]
        coords = _matrix_coords(store, rows)
        attrs["reference"] = int(store.vector_layout.reference)
        data["score"] = (("step", "matrix"), _rows_or_empty(store, layout.AGREEMENT_SCORE, rows))
    widths = np.array([store.file[p].shape[1] for p in paths], dtype=np.int64)
    _, stacked, last = STACKED[section]
    if section != "sigma":
        coords["length"] = (stacked, widths)
    coords[last] = np.arange(int(widths.max(initial=0)), dtype=np.int64)
    return xr.Dataset(data, coords=coords, attrs=attrs), rows, paths


def _rows_or_empty(store: OpenStore, path: str, rows: np.ndarray) -> np.ndarray:
    """Rows of a [T, n] dataset ([0, n] when there are none)."""
    if len(rows):
        return store.read_rows(path, rows)
    return np.zeros((0, store.file[path].shape[1]))
