"""A comparison store's sections as tidy tables and labelled arrays (`Comparison.to_pandas`,
`Comparison.to_xarray`), with the conventions of a run's tables (``_tables``).

Only valid rows: a run's metrics at the union steps it holds (``runs/has_step``), the
diagonals up to each matrix's length min(k, R) (``matrices/length``), the split groups
that averaged at least one pair. A NaN that is a value (a metric that is NaN at a step
the run holds) keeps its row. Comparison stores written before those two datasets are
read by inference: a run holds a step where some metric is not NaN; a matrix's length is
its longest non-NaN diagonal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import StoreError, command_ref, option_ref
from ..extras import require_extra
from . import _layout as layout
from ._tables import TableChunk, joined_frame

# `Comparison` (``_comparison``) calls into this module, so its type is named, not imported.
Comparison = Any

__all__ = [
    "COMPARISON_COLUMNS",
    "COMPARISON_SECTIONS",
    "XARRAY_SECTIONS",
    "comparison_to_datatree",
    "check_section",
    "comparison_chunks",
    "comparison_sections",
    "comparison_to_pandas",
    "comparison_to_xarray",
    "empty_comparison_chunk",
    "has_steps",
    "matrix_lengths",
    "pair_names",
]

# The columns of each section's table, in order; those in CATEGORICAL hold category codes.
COMPARISON_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": ("run", "store", "trunk", "split", "last_step"),
    "steps": ("run", "step"),
    "metrics": ("run", "step", "matrix", "metric", "value"),
    "agreement": (
        "pair", "a", "b", "step_a", "step_b", "endpoint", "source", "matrix", "i", "value",
    ),
    "agreement_score": (
        "pair", "a", "b", "step_a", "step_b", "endpoint", "source", "matrix", "score",
    ),
    "split": ("split", "trunks", "pairs", "matrix", "score"),
    "split_diagonal": ("split", "trunks", "pairs", "matrix", "i", "value"),
    "barrier": ("pair", "a", "b", "alpha", "loss", "barrier"),
}  # fmt: skip
COMPARISON_SECTIONS = tuple(COMPARISON_COLUMNS)
XARRAY_SECTIONS = ("runs", "metrics", "agreement", "split", "barrier")
CATEGORICAL = frozenset({"run", "store", "trunk", "matrix", "metric", "pair", "a", "b"})
CATEGORICAL |= {"source", "trunks"}
TRUNKS = ["same", "other"]
_SECTION = option_ref("section")


def comparison_sections(cmp: Comparison) -> list[str]:
    """The sections a comparison has: split ones in mode "split", barrier with barriers."""
    f = cmp._f
    out = ["runs", "steps", "metrics", "agreement", "agreement_score"]
    if "split" in f:
        out += ["split", "split_diagonal"]
    if "barrier" in f:
        out.append("barrier")
    return out


def check_section(cmp: Comparison, section: str, known: tuple[str, ...]) -> None:
    """Raise StoreError for a `section` not in `known`, or one this comparison lacks."""
    if section not in known:
        raise StoreError(
            f"{_SECTION} {section!r}: no such section of a comparison; sections: "
            f"{', '.join(known)}",
            option="section",
        )
    have = comparison_sections(cmp)
    if section not in have:
        raise StoreError(
            f"{cmp.path}: comparison {cmp.name!r} has no {section} section (its sections: "
            f"{', '.join(s for s in have if s in known)})",
            file=cmp.path,
            option="section",
        )


def has_steps(cmp: Comparison) -> np.ndarray:
    """bool [runs, steps]: which union steps each run holds (stored, or inferred from the
    metrics of an older file)."""
    f = cmp._f
    if "runs/has_step" in f:
        return np.asarray(f["runs/has_step"][()], dtype=bool)
    have = np.zeros((len(cmp.labels), len(cmp.steps)), dtype=bool)
    for name in cmp.metric_names:
        have |= ~np.isnan(cmp.metric(name)).all(axis=1)
    return have


def matrix_lengths(cmp: Comparison) -> np.ndarray:
    """int64 [matrices]: each matrix's diagonal length min(k, R) (stored, or the longest
    non-NaN diagonal of an older file)."""
    f = cmp._f
    if "matrices/length" in f:
        return np.asarray(f["matrices/length"][()], dtype=np.int64)
    out = np.zeros(len(cmp.matrices), dtype=np.int64)
    diagonals = [f[f"agreement/{q}/diagonal"] for q in range(len(cmp.pairs))]
    if "split" in f:
        diagonals += [f["split/same/diagonal"], f["split/other/diagonal"]]
    for ds in diagonals:
        seen = ~np.isnan(np.asarray(ds[()]))  # [S, M, k]
        last = np.where(seen.any(axis=0), np.arange(1, seen.shape[2] + 1), 0).max(axis=1)
        out = np.maximum(out, last)
    return out


def pair_names(cmp: Comparison) -> list[str]:
    """``"<label a>~<label b>"`` of each compared pair, in the file's order."""
    return [f"{cmp.labels[a]}~{cmp.labels[b]}" for a, b, _same in cmp.pairs]


def _categories(cmp: Comparison) -> dict[str, list[str]]:
    """The categories of every categorical column."""
    f = cmp._f
    sources = sorted(
        {s for q in range(len(cmp.pairs)) for s in layout.read_strings(f[f"agreement/{q}/source"])}
    )
    return {
        "run": list(cmp.labels),
        "a": list(cmp.labels),
        "b": list(cmp.labels),
        "store": list(dict.fromkeys(cmp.stores)),
        "trunk": list(dict.fromkeys(t or "" for t in cmp.trunks)),
        "matrix": list(cmp.matrices),
        "metric": list(cmp.metric_names),
        "pair": pair_names(cmp),
        "source": sources,
        "trunks": list(TRUNKS),
    }


def comparison_chunks(cmp: Comparison, section: str) -> Iterator[TableChunk]:
    """The rows of one section of a comparison store, in chunks (one per run for
    metrics, one per pair for agreement and agreement_score, else one).

    Args:
        cmp: an open `Comparison`.
        section: one of `COMPARISON_SECTIONS` that it holds (`comparison_sections`).

    Yields:
        `TableChunk` with the columns of ``COMPARISON_COLUMNS[section]`` (categorical
        ones as int32 codes). Rows ordered by run, step, metric and matrix (metrics), by
        pair, row, matrix and i (agreement), by split step, trunks and matrix (split).
        Only valid rows (see the module docstring); none for an empty section.

    Raises:
        StoreError: unknown section, or one the comparison does not hold.
    """
    check_section(cmp, section, COMPARISON_SECTIONS)
    cats = _categories(cmp)
    names = COMPARISON_COLUMNS[section]
    produce = {
        "runs": _runs_pieces,
        "steps": _steps_pieces,
        "metrics": _metric_pieces,
        "agreement": _agreement_pieces,
        "agreement_score": _agreement_pieces,
        "split": _split_pieces,
        "split_diagonal": _split_pieces,
        "barrier": _barrier_pieces,
    }[section]
    for piece in produce(cmp, section, cats):
        if len(piece[names[-1]]):
            columns = {n: piece[n] for n in names}
            yield TableChunk(section, columns, {n: cats[n] for n in names if n in CATEGORICAL})


def _codes(values: list[str], categories: list[str]) -> np.ndarray:
    """int32 codes of str values."""
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index[v] for v in values], dtype=np.int32)


def _runs_pieces(cmp: Comparison, section: str, cats: dict):
    """runs: run, store, trunk, split (-1 when none), last_step."""
    n = len(cmp.labels)
    yield {
        "run": np.arange(n, dtype=np.int32),
        "store": _codes(cmp.stores, cats["store"]),
        "trunk": _codes([t or "" for t in cmp.trunks], cats["trunk"]),
        "split": np.array([-1 if s is None else s for s in cmp.splits], dtype=np.int64),
        "last_step": np.array(cmp.last_steps, dtype=np.int64),
    }


def _steps_pieces(cmp: Comparison, section: str, cats: dict):
    """steps: run, step (the union steps each run holds)."""
    have = has_steps(cmp)
    runs, cols = np.nonzero(have)
    yield {"run": runs.astype(np.int32), "step": cmp.steps[cols]}


def _metric_pieces(cmp: Comparison, section: str, cats: dict):
    """metrics, one piece per run: step, matrix, metric, value."""
    have = has_steps(cmp)
    names = cmp.metric_names
    m = len(cmp.matrices)
    data = {name: cmp._f[f"metrics/{name}"] for name in names}
    for r in range(len(cmp.labels)):
        cols = np.flatnonzero(have[r])
        t = len(cols)
        values = np.empty((t, len(names), m), dtype=np.float64)
        for j, name in enumerate(names):
            values[:, j, :] = np.asarray(data[name][r], dtype=np.float64)[:, cols].T
        yield {
            "run": np.full(t * len(names) * m, r, dtype=np.int32),
            "step": np.repeat(cmp.steps[cols], len(names) * m),
            "matrix": np.tile(np.arange(m, dtype=np.int32), t * len(names)),
            "metric": np.tile(np.repeat(np.arange(len(names), dtype=np.int32), m), t),
            "value": values.reshape(-1),
        }


def _agreement_pieces(cmp: Comparison, section: str, cats: dict):
    """agreement (S_ii up to each matrix's length) or agreement_score, one piece per pair:
    pair, a, b, step_a, step_b, endpoint (the last row), source, matrix[, i], value."""
    lengths = matrix_lengths(cmp)
    m = len(cmp.matrices)
    for q, (a, b, _same) in enumerate(cmp.pairs):
        g = cmp._f[f"agreement/{q}"]
        step_a = np.asarray(g["step_a"][()], dtype=np.int64)
        source = _codes(layout.read_strings(g["source"]), cats["source"])
        s = len(step_a)
        row_columns = {
            "step_a": step_a,
            "step_b": np.asarray(g["step_b"][()], dtype=np.int64),
            "endpoint": np.arange(s) == s - 1,
            "source": source,
        }
        if section == "agreement_score":
            row = np.repeat(np.arange(s), m)
            matrix = np.tile(np.arange(m, dtype=np.int32), s)
            piece = {"matrix": matrix, "score": np.asarray(g["score"][()], np.float64).reshape(-1)}
        else:
            diagonal = np.asarray(g["diagonal"][()])  # [S, M, k]
            row, matrix, i = _diagonal_index(s, lengths, diagonal.shape[2])
            piece = {"matrix": matrix, "i": i, "value": diagonal[row, matrix, i].astype(np.float64)}
        piece.update({k: v[row] for k, v in row_columns.items()})
        piece.update(_pair_columns(q, a, b, len(row)))
        yield piece


def _diagonal_index(groups: int, lengths: np.ndarray, width: int):
    """(group, matrix int32, i int32) of every valid diagonal entry, i < the matrix's length."""
    lengths = np.minimum(lengths, width)
    matrix = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    i = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths] or [np.zeros(0, np.int32)])
    per = len(matrix)
    return np.repeat(np.arange(groups), per), np.tile(matrix, groups), np.tile(i, groups)


def _pair_columns(q: int, a: int, b: int, n: int) -> dict[str, np.ndarray]:
    """pair, a, b of `n` rows of pair `q`."""
    return {
        "pair": np.full(n, q, dtype=np.int32),
        "a": np.full(n, a, dtype=np.int32),
        "b": np.full(n, b, dtype=np.int32),
    }


def _split_pieces(cmp: Comparison, section: str, cats: dict):
    """split or split_diagonal: split, trunks, pairs, matrix[, i], score or value, for the
    groups (split step, same/other trunks) that averaged at least one pair."""
    s = cmp.split_summary()
    m = len(cmp.matrices)
    pairs = np.stack([s[f"{w}_pairs"] for w in TRUNKS], axis=1)  # [G, 2]
    groups, trunks = np.nonzero(pairs > 0)  # by split step, then same before other
    if section == "split":
        score = np.stack([s[f"{w}_score"] for w in TRUNKS], axis=1)  # [G, 2, M]
        row = np.repeat(np.arange(len(groups)), m)
        matrix = np.tile(np.arange(m, dtype=np.int32), len(groups))
        piece = {"matrix": matrix, "score": score[groups[row], trunks[row], matrix]}
    else:
        diagonal = np.stack([s[f"{w}_diagonal"] for w in TRUNKS], axis=1)  # [G, 2, M, k]
        row, matrix, i = _diagonal_index(len(groups), matrix_lengths(cmp), diagonal.shape[3])
        value = diagonal[groups[row], trunks[row], matrix, i].astype(np.float64)
        piece = {"matrix": matrix, "i": i, "value": value}
    piece["split"] = s["steps"][groups[row]]
    piece["trunks"] = trunks[row].astype(np.int32)
    piece["pairs"] = pairs[groups[row], trunks[row]]
    yield piece


def _barrier_pieces(cmp: Comparison, section: str, cats: dict):
    """barrier: pair, a, b, alpha, loss, barrier (the pair's, on each of its alpha rows)."""
    data = cmp.barriers()
    pairs = data["pair"]
    p = len(data["alpha"])
    index = {(a, b): q for q, (a, b, _same) in enumerate(cmp.pairs)}
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("pair", "a", "b")}
    for a, b in pairs.tolist():
        q = index.get((a, b), index.get((b, a)))
        if q is None:
            raise StoreError(
                f"{cmp.path}: a barrier of runs {a} and {b}, which were not compared; "
                f"re-run {command_ref('compare')}",
                file=cmp.path,
            )
        for key, column in _pair_columns(q, a, b, p).items():
            out[key].append(column)
    piece = {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in out.items()}
    piece["alpha"] = np.tile(np.asarray(data["alpha"], np.float64), len(pairs))
    piece["loss"] = np.asarray(data["loss"], np.float64).reshape(-1)
    piece["barrier"] = np.repeat(np.asarray(data["barrier"], np.float64), p)
    yield piece


def empty_comparison_chunk(cmp: Comparison, section: str) -> TableChunk:
    """A chunk of no rows with the section's columns, dtypes and categories."""
    ints = {"step", "step_a", "step_b", "split", "last_step", "pairs"}
    cats = _categories(cmp)
    columns = {}
    for n in COMPARISON_COLUMNS[section]:
        dtype = np.int32 if n in CATEGORICAL or n == "i" else np.float64
        dtype = np.int64 if n in ints else (bool if n == "endpoint" else dtype)
        columns[n] = np.zeros(0, dtype=dtype)
    names = COMPARISON_COLUMNS[section]
    return TableChunk(section, columns, {n: cats[n] for n in names if n in CATEGORICAL})


def comparison_to_pandas(cmp: Comparison, section: str) -> Any:
    """`Comparison.to_pandas`: the whole table of one section (see `comparison_chunks`)."""
    pd = require_extra("pandas", "pandas", "Comparison.to_pandas")
    chunks = comparison_chunks(cmp, section)
    return joined_frame(pd, chunks, lambda: empty_comparison_chunk(cmp, section))


def _run_coords(cmp: Comparison) -> dict[str, Any]:
    """Coordinate run and the run table (store, trunk, split, last_step) on it."""
    return {
        "run": list(cmp.labels),
        "store": ("run", list(cmp.stores)),
        "trunk": ("run", [t or "" for t in cmp.trunks]),
        "split": ("run", np.array([-1 if s is None else s for s in cmp.splits], np.int64)),
        "last_step": ("run", np.array(cmp.last_steps, np.int64)),
    }


def comparison_to_datatree(cmp: Comparison) -> Any:
    """`Comparison.to_datatree`: its labelled sections as children of one DataTree."""
    xr = require_extra("xarray", "xarray", "Comparison.to_datatree")
    have = [s for s in comparison_sections(cmp) if s in XARRAY_SECTIONS]
    children = {f"/{section}": comparison_to_xarray(cmp, section) for section in have}
    return xr.DataTree.from_dict(children, name=cmp.name)


def comparison_to_xarray(cmp: Comparison, section: str) -> Any:
    """`Comparison.to_xarray`: one section as an `xarray.Dataset` with named dimensions."""
    xr = require_extra("xarray", "xarray", "Comparison.to_xarray")
    check_section(cmp, section, XARRAY_SECTIONS)
    attrs = {
        "comparison": cmp.name,
        "mode": cmp.mode,
        "section": section,
        "k": cmp.k,
        "score_top": cmp.score_top,
        "step_unit": cmp.step_unit,
    }
    coords: dict[str, Any] = {
        "matrix": list(cmp.matrices),
        "length": ("matrix", matrix_lengths(cmp)),
    }
    data: dict[str, Any] = {}
    if section == "runs":
        coords = _run_coords(cmp)
        data["steps"] = ("run", has_steps(cmp).sum(axis=1).astype(np.int64))
    elif section == "metrics":
        coords.update(_run_coords(cmp), step=cmp.steps)
        coords["has_step"] = (("run", "step"), has_steps(cmp))
        for name in cmp.metric_names:
            data[name] = (("run", "step", "matrix"), cmp.metric(name).transpose(0, 2, 1))
    elif section == "agreement":
        data, more = _agreement_arrays(cmp)
        coords.update(more)
    elif section == "split":
        s = cmp.split_summary()
        coords.update(trunks=list(TRUNKS), split=s["steps"], k=np.arange(cmp.k, dtype=np.int64))
        data["score"] = (
            ("trunks", "split", "matrix"),
            np.stack([s["same_score"], s["other_score"]]),
        )
        diagonal = np.stack([s["same_diagonal"], s["other_diagonal"]]).astype(np.float64)
        data["diagonal"] = (("trunks", "split", "matrix", "k"), diagonal)
        data["pairs"] = (("trunks", "split"), np.stack([s["same_pairs"], s["other_pairs"]]))
        data["barrier"] = ("split", s["barrier"])
    else:
        b = cmp.barriers()
        names = [f"{cmp.labels[x]}~{cmp.labels[y]}" for x, y in b["pair"].tolist()]
        coords = {
            "pair": names,
            "a": ("pair", [cmp.labels[x] for x, _ in b["pair"].tolist()]),
            "b": ("pair", [cmp.labels[y] for _, y in b["pair"].tolist()]),
            "alpha": np.asarray(b["alpha"], np.float64),
        }
        data["loss"] = (("pair", "alpha"), np.asarray(b["loss"], np.float64))
        data["barrier"] = ("pair", np.asarray(b["barrier"], np.float64))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _agreement_arrays(cmp: Comparison) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, coords) of the agreement Dataset: every pair's rows stacked on a ``row`` dim,
    NaN, -1 and "" past a pair's rows (coord ``rows``)."""
    f = cmp._f
    groups = [f[f"agreement/{q}"] for q in range(len(cmp.pairs))]
    rows = np.array([g["step_a"].shape[0] for g in groups], dtype=np.int64)
    n_rows, m, k = int(rows.max(initial=0)), len(cmp.matrices), cmp.k
    diagonal = np.full((len(groups), n_rows, m, k), np.nan)
    score = np.full((len(groups), n_rows, m), np.nan)
    step_a = np.full((len(groups), n_rows), -1, dtype=np.int64)
    step_b = step_a.copy()
    source = np.full((len(groups), n_rows), "", dtype=object)
    for q, g in enumerate(groups):
        s = rows[q]
        d = np.asarray(g["diagonal"][()])
        diagonal[q, :s, :, : d.shape[2]] = d
        score[q, :s] = g["score"][()]
        step_a[q, :s] = g["step_a"][()]
        step_b[q, :s] = g["step_b"][()]
        source[q, :s] = layout.read_strings(g["source"])
    same = [-1 if x is None else int(x) for _a, _b, x in cmp.pairs]
    coords = {
        "pair": pair_names(cmp),
        "a": ("pair", [cmp.labels[a] for a, _b, _s in cmp.pairs]),
        "b": ("pair", [cmp.labels[b] for _a, b, _s in cmp.pairs]),
        "same_trunk": ("pair", np.array(same, dtype=np.int8)),
        "rows": ("pair", rows),
        "row": np.arange(n_rows, dtype=np.int64),
        "k": np.arange(k, dtype=np.int64),
        "step_a": (("pair", "row"), step_a),
        "step_b": (("pair", "row"), step_b),
        "source": (("pair", "row"), source.astype(str)),
    }
    data = {
        "diagonal": (("pair", "row", "matrix", "k"), diagonal),
        "score": (("pair", "row", "matrix"), score),
    }
    return data, coords
