"""The sections of a run opened for reading: its values, alignment, agreement, kept vectors
and training metrics, one small object each (`Run.values`, `Run.alignment`, ...).

Every section reads from one `OpenStore`: the open file and the tables read once when the
run was opened (the step axis, the done flags, the matrix table, the vector layout).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, command_ref, option_ref
from ..types import TrainingLog
from . import _checksums as checksums
from . import _layout as layout
from . import _training as trainstore
from . import _vectors as vecstore
from ._records import read_matrix_records

__all__ = [
    "OpenStore",
    "RunAgreement",
    "RunAlignment",
    "RunTraining",
    "RunValues",
    "RunVectors",
]

# How a message says which analysis adds a missing section, and where to list names:
# Python wording for a caller, flags and commands on the CLI (`specdyn.errors.option_ref`;
# the listings have no ``specdyn.<command>()`` twin for `command_ref`).
_ANALYZE = command_ref("analyze")
_VALUES_ONLY = option_ref("vectors=None", "--values-only")
_LIST_MATRICES = option_ref("run.values.matrices", "specdyn info RUN --matrices")
_LIST_PAIRS = option_ref("run.alignment.pairs", "specdyn info RUN --pairs")
_SAVE_EVERY_STEP = option_ref("vectors.save_vectors='all'", "--save-vectors all")


class OpenStore:
    """A store file open for reading and what is read once at open (shared by a `Run` and
    its sections; the values' done flags are not read again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: h5py.File | None = layout.open_checked(path)
        try:
            self._load()
        except checksums.StoreDamaged as exc:
            self.close()
            raise checksums.damaged_error(path, exc.damage) from None
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
            self.close()
            raise layout.damaged(path, exc) from None

    def _load(self) -> None:
        """Read the run's name and units, the step axis, the done flags, the matrix table
        and the vector layout."""
        f = self._f
        # first: everything read below is checked against its checksums
        self.checks = checksums.StoreChecks.load(f)
        self.name = layout.attr_str(f, "run_name") or self.path.stem
        self.step_unit = layout.attr_str(f, "step_unit", "step")
        self.schema_version = int(f.attrs["schema_version"])
        self.all_steps = np.asarray(f[layout.STEPS_STEP][()], dtype=np.int64)
        done = np.asarray(f[layout.STEPS_DONE][()], dtype=bool)
        if done.shape != self.all_steps.shape:
            raise ValueError("steps/done and steps/step differ in length")
        self.done_rows = np.flatnonzero(done)
        self.records = read_matrix_records(f)
        self.matrices = [m.name for m in self.records]
        self.column = {n: j for j, n in enumerate(self.matrices)}
        self.metric_names = list(json.loads(layout.attr_str(f, "metric_names", "[]")))
        self.vector_layout = vecstore.read_layout(f)
        pairs = self.vector_layout.pairs if self.vector_layout else ()
        self.pair_column = {p.name: j for j, p in enumerate(pairs)}

    @property
    def file(self) -> h5py.File:
        """The open file, or StoreError when closed."""
        if self._f is None:
            raise StoreError(f"{self.path}: the run is closed; open it again with open_run")
        return self._f

    def close(self) -> None:
        """Close the file (idempotent)."""
        f, self._f = self._f, None
        if f is not None:
            f.close()

    def read_rows(
        self, path: str, rows: np.ndarray, checked: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows `rows` (ascending) of a per-step dataset, those of `checked` (default: all
        of them) checked against their checksums (a store without checksums is read as
        it is); StoreDamagedError when they do not match or cannot be read."""
        rows = np.asarray(rows, dtype=np.int64)
        checked = rows if checked is None else np.asarray(checked, dtype=np.int64)
        try:
            ds = self.file[path]
            lo = int(rows[0]) if len(rows) else 0
            hi = int(rows[-1]) + 1 if len(rows) else 0
            block = ds[lo:hi]  # only the span asked for: kept vectors can be large
            if self.checks is not None:
                self.checks.check_rows(path, checked, block, offset=lo)
        except checksums.StoreDamaged as exc:
            raise checksums.damaged_error(self.path, exc.damage) from None
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
            raise layout.damaged(self.path, exc) from None
        return checksums.take_rows(block, rows - lo)

    def methods_of(self, column: int | None) -> Counter[str]:
        """Methods used over done steps, for one matrix column or all of them."""
        if not len(self.done_rows):
            return Counter()
        table = self.file[layout.MATRICES_METHOD][()][self.done_rows]
        if column is not None:
            table = table[:, column]
        return Counter(v.decode("utf-8", "replace") for v in table.reshape(-1) if v)

    def need_vectors(self, what: str) -> None:
        """StoreError when the store has no singular-vector sections."""
        if self.vector_layout is None:
            raise StoreError(
                f"{self.path}: the store has no {what} (analysed with {_VALUES_ONLY}, or by "
                f"an older specdyn); re-run {_ANALYZE} on its checkpoints without "
                f"{_VALUES_ONLY} to add it (values are kept)",
                file=self.path,
            )

    def section_steps(self, section: str) -> np.ndarray:
        """Steps whose `section` ("alignment", "agreement" or "vectors") is done: int64."""
        self.need_vectors(section)
        done = np.asarray(self.file[layout.done_path(section)][()], dtype=bool)
        if section == "vectors":
            return np.asarray(self.file[layout.VECTORS_STEP][()], dtype=np.int64)[done]
        values_done = np.zeros_like(done)
        values_done[self.done_rows] = True
        return self.all_steps[done & values_done].copy()

    def section_rows(self, section: str, path: str) -> np.ndarray:
        """Rows of a per-step dataset for the done steps, NaN where `section` is not done."""
        done = np.asarray(self.file[layout.done_path(section)][()], dtype=bool)[self.done_rows]
        data = self.read_rows(path, self.done_rows, checked=self.done_rows[done])
        if not done.all():
            data = data.astype(np.float64, copy=True)
            data[~done] = np.nan
        return data

    def full_matrix(self, section: str, name: str) -> np.ndarray:
        """The whole k×k matrices of a pair or matrix at the done steps, or StoreError
        when the store has none."""
        path = layout.full_matrix_path(section, name)
        if path not in self.file:
            raise StoreError(
                f"{self.path}: whole {section} matrices are not stored; re-run {_ANALYZE} "
                f"with {option_ref('vectors.full_matrices=True', '--full-matrices')}",
                file=self.path,
            )
        return self.section_rows(section, path)


class RunValues:
    """The values of a run: the step axis, the singular values and the scalar metrics of
    every matrix (`Run.values`).

    Only steps whose done flag is set are visible (a store being written, or
    interrupted, shows its finished steps); the flags are read once, at open.
    """

    def __init__(self, store: OpenStore) -> None:
        self._store = store

    @property
    def steps(self) -> np.ndarray:
        """The done steps, ascending: int64 [T_done]."""
        return self._store.all_steps[self._store.done_rows].copy()

    @property
    def all_steps(self) -> np.ndarray:
        """Every step the store knows, done or pending, ascending: int64 [T]."""
        return self._store.all_steps.copy()

    @property
    def matrices(self) -> list[str]:
        """Matrix names in forward order."""
        return list(self._store.matrices)

    @property
    def metric_names(self) -> list[str]:
        """Names of the scalar metrics stored per matrix and step."""
        return list(self._store.metric_names)

    def find_matrix(self, pattern: str) -> str:
        """The matrix named `pattern`, else the only one containing it as a substring.

        Raises:
            StoreError: several matrices contain `pattern` (they are listed), or
                none does (a few names are listed).
        """
        store = self._store
        if pattern in store.column:
            return pattern
        hits = [n for n in store.matrices if pattern in n]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise StoreError(
                f"{store.path}: {pattern!r} matches {len(hits)} matrices ({layout.few(hits, 8)}); "
                "give the exact name or a longer part of it"
            )
        raise StoreError(
            f"{store.path}: no matrix matches {pattern!r} (matrices include {layout.few(store.matrices, 5)}); "
            f"list them with {_LIST_MATRICES}",
            file=store.path,
        )

    def sigma(self, matrix: str) -> np.ndarray:
        """Singular values of one matrix at every done step.

        Args:
            matrix: exact name or unique substring (see `find_matrix`).

        Returns:
            float64 [T_done, R], each row descending (NaN rows for steps whose
            weights were NaN/Inf).
        """
        name = self.find_matrix(matrix)
        return self._store.read_rows(layout.sigma_path(name), self._store.done_rows)

    def metric(self, name: str, matrix: str | None = None) -> np.ndarray:
        """One scalar metric at every done step.

        Args:
            name: a metric of `metric_names` (e.g. ``"normalized_effective_rank"``).
            matrix: exact name or unique substring; None for every matrix.

        Returns:
            float64 [T_done] for one matrix, [T_done, M] for all (columns in forward
            order): the axis order of ``/metrics/<name>`` in the file (docs/store.md,
            "Axis order").

        Raises:
            StoreError: unknown metric or matrix.
        """
        store = self._store
        if name not in store.metric_names:
            raise StoreError(
                f"{store.path}: no metric {name!r}; stored metrics: {', '.join(store.metric_names)}"
            )
        data = store.read_rows(layout.metric_path(name), store.done_rows)  # [T_done, M]
        if matrix is None:
            return data
        return data[:, store.column[self.find_matrix(matrix)]].copy()

    def matrix_info(self, matrix: str) -> dict[str, Any]:
        """What the store records about one matrix (JSON-serialisable).

        Returns:
            name, index (forward position), param, key, kind, part, shape
            [out, in], rank R, source_shape, source_dtype, methods (method →
            number of done steps) and method (the most used one, "" if none).
        """
        name = self.find_matrix(matrix)
        j = self._store.column[name]
        rec = self._store.records[j]
        methods = self._store.methods_of(j)
        return {
            "name": rec.name,
            "index": j,
            "param": rec.param,
            "key": rec.key,
            "kind": rec.kind,
            "part": rec.part,
            "shape": list(rec.shape),
            "rank": rec.rank,
            "source_shape": list(rec.source_shape),
            "source_dtype": rec.source_dtype,
            "method": methods.most_common(1)[0][0] if methods else "",
            "methods": dict(methods),
        }


class RunAlignment:
    """The alignment of a run's pairs of matrices (`Run.alignment`): per pair and step the
    diagonal A_ii of the alignment between the singular vectors of its two matrices.

    Calling it, ``run.alignment(pair)``, is `diagonal`. Every reader raises StoreError for
    a values-only store. Rows of steps whose alignment is not computed yet are NaN.
    """

    def __init__(self, store: OpenStore) -> None:
        self._store = store

    @property
    def pairs(self) -> list[dict[str, Any]]:
        """One dict per pair, in forward order: name, first, second, first_side,
        second_side, rule, options, definition, blocks (head couples, or kernel
        taps with ``tap = "all"``, stored one by one), k (diagonal length), dim
        (vector length). definition: ``{"basis", "tap", "normalize"}`` for a pair
        whose conv operand is compared on v (a store written before definitions
        were recorded reads as basis "slice"), None for other pairs. Empty for a
        values-only store."""
        vl = self._store.vector_layout
        if vl is None:
            return []
        return [
            {
                "name": p.name,
                "first": p.first,
                "second": p.second,
                "first_side": p.first_side,
                "second_side": p.second_side,
                "rule": p.rule,
                "options": dict(p.options),
                "definition": vecstore.conv_definition(p.options),
                "blocks": p.blocks,
                "k": p.k,
                "dim": p.dim,
            }
            for p in vl.pairs
        ]

    @property
    def skipped_pairs(self) -> list[tuple[str, str]]:
        """(pair, reason) of every pair a rule wanted but could not make."""
        vl = self._store.vector_layout
        return [] if vl is None else list(vl.skipped_pairs)

    @property
    def steps(self) -> np.ndarray:
        """Steps whose alignment is done: int64 [T_alignment]."""
        return self._store.section_steps("alignment")

    def find_pair(self, pattern: str) -> str:
        """The pair named `pattern`, else the only one containing it as a substring.

        Raises:
            StoreError: the store has no pairs, or `pattern` matches none or several.
        """
        store = self._store
        store.need_vectors("alignment")
        if pattern in store.pair_column:
            return pattern
        names = list(store.pair_column)
        hits = [n for n in names if pattern in n]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise StoreError(
                f"{store.path}: {pattern!r} matches {len(hits)} pairs ({layout.few(hits, 8)}); "
                "give the exact name or a longer part of it"
            )
        listing = f"pairs include {layout.few(names, 5)}" if names else "the store has no pairs"
        raise StoreError(
            f"{store.path}: no pair matches {pattern!r} ({listing}); list them with {_LIST_PAIRS}",
            file=store.path,
        )

    def diagonal(self, pair: str) -> np.ndarray:
        """The alignment diagonal A_ii of one pair (averaged over its head couples).

        Args:
            pair: exact pair name or unique substring (see `find_pair`).

        Returns:
            float64 [T_done, k_p] aligned with `Run.values.steps`; rows of steps whose
            alignment is not computed yet are NaN (`steps`).
        """
        name = self.find_pair(pair)
        return self._store.section_rows("alignment", layout.diagonal_path("alignment", name))

    def __call__(self, pair: str) -> np.ndarray:
        """`diagonal`: ``run.alignment(pair)``."""
        return self.diagonal(pair)

    def heads(self, pair: str) -> np.ndarray:
        """A_ii per head couple of a per-head pair, or per kernel tap (flat row-major
        order) of a pair with ``tap = "all"``: float64 [T_done, H, k_p] (H = 1: the
        diagonal itself)."""
        name = self.find_pair(pair)
        path = layout.heads_path(name)
        if path not in self._store.file:
            return self.diagonal(name)[:, None, :]
        return self._store.section_rows("alignment", path)

    def matrix(self, pair: str) -> np.ndarray:
        """The whole alignment matrix of one pair: float64 [T_done, k_p, k_p].

        Raises:
            StoreError: the store was analysed without --full-matrices.
        """
        return self._store.full_matrix("alignment", self.find_pair(pair))

    def score(self, pair: str | None = None, top: int | None = None) -> np.ndarray:
        """The alignment score a(t): the mean of the first `top` diagonal entries.

        Args:
            pair: exact name or unique substring; None for every pair.
            top: entries averaged (None: the store's `score_top`, default 10).

        Returns:
            float64 [T_done] for one pair, [T_done, P] for all (columns in forward order,
            as ``/alignment/score`` in the file).
        """
        store = self._store
        store.need_vectors("alignment")
        if top is None:
            data = store.section_rows("alignment", layout.ALIGNMENT_SCORE)  # [T_done, P]
            if pair is None:
                return data
            return data[:, store.pair_column[self.find_pair(pair)]].copy()
        names = list(store.pair_column) if pair is None else [self.find_pair(pair)]
        rows = [vecstore.head_mean(self.diagonal(n), top) for n in names]
        return rows[0] if pair is not None else np.array(rows).reshape(len(names), -1).T.copy()


class RunAgreement:
    """The agreement of each matrix with itself at the reference step (`Run.agreement`):
    per matrix and step the diagonal S_ii of the overlap of its singular vectors with
    those of the reference step.

    Calling it, ``run.agreement(matrix)``, is `diagonal`. Every reader raises
    StoreError for a values-only store. Rows of steps whose agreement is not computed
    yet are NaN.
    """

    def __init__(self, store: OpenStore, values: RunValues) -> None:
        self._store = store
        self._values = values

    @property
    def reference(self) -> int | None:
        """The step the agreement compares against (None for a values-only store)."""
        vl = self._store.vector_layout
        return None if vl is None else vl.reference

    @property
    def steps(self) -> np.ndarray:
        """Steps whose agreement is done: int64 [T_agreement]."""
        return self._store.section_steps("agreement")

    def diagonal(self, matrix: str) -> np.ndarray:
        """The agreement diagonal S_ii of one matrix with the reference step.

        Args:
            matrix: exact name or unique substring.

        Returns:
            float64 [T_done, min(k, R)] aligned with `Run.values.steps` (NaN rows where
            not computed yet).
        """
        self._store.need_vectors("agreement")
        name = self._values.find_matrix(matrix)
        return self._store.section_rows("agreement", layout.diagonal_path("agreement", name))

    def __call__(self, matrix: str) -> np.ndarray:
        """`diagonal`: ``run.agreement(matrix)``."""
        return self.diagonal(matrix)

    def matrix(self, matrix: str) -> np.ndarray:
        """The whole agreement matrix S_ik: float64 [T_done, k_m, k_m].

        Raises:
            StoreError: the store was analysed without --full-matrices.
        """
        self._store.need_vectors("agreement")
        return self._store.full_matrix("agreement", self._values.find_matrix(matrix))

    def score(self, matrix: str | None = None, top: int | None = None) -> np.ndarray:
        """The agreement score s(t), like `RunAlignment.score`: float64 [T_done] for one
        matrix, [T_done, M] for all."""
        store = self._store
        store.need_vectors("agreement")
        if top is None:
            data = store.section_rows("agreement", layout.AGREEMENT_SCORE)
            if matrix is None:
                return data
            return data[:, store.column[self._values.find_matrix(matrix)]].copy()
        names = store.matrices if matrix is None else [self._values.find_matrix(matrix)]
        rows = [vecstore.head_mean(self.diagonal(n), top) for n in names]
        return rows[0] if matrix is not None else np.array(rows).reshape(len(names), -1).T.copy()


class RunVectors:
    """The singular-vector settings of a run and the top-k vectors it kept (`Run.vectors`).

    Calling it, ``run.vectors(matrix, step)``, is `top_k`.
    """

    def __init__(self, store: OpenStore, values: RunValues) -> None:
        self._store = store
        self._values = values

    @property
    def config(self) -> dict[str, Any] | None:
        """The singular-vector settings of the store, None when it holds values only.

        Keys: k, score_top, reference (step), reference_rule ("last"|"given"),
        full_matrices, save_vectors ("all"|"ends"|"none"), pairs_preset.
        """
        vl = self._store.vector_layout
        return None if vl is None else vl.config()

    @property
    def steps(self) -> np.ndarray:
        """Steps whose top-k vectors are kept and written: int64 [S_done].

        Raises:
            StoreError: a values-only store.
        """
        return self._store.section_steps("vectors")

    def top_k(self, matrix: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The kept top-k singular vectors of one matrix at one step.

        Returns:
            (u float32 [out, k_m], v float32 [in, k_m]), columns in descending
            order of σ, signs arbitrary.

        Raises:
            StoreError: no vectors kept for that step (the steps kept are
                listed; ``vectors.save_vectors="all"`` keeps every step).
        """
        store = self._store
        store.need_vectors("vectors")
        name = self._values.find_matrix(matrix)
        kept = self.steps
        slots = np.asarray(store.file[layout.VECTORS_STEP][()], dtype=np.int64)
        if int(step) not in set(kept.tolist()):
            listing = ", ".join(str(s) for s in kept[:10]) or "none"
            raise StoreError(
                f"{store.path}: no singular vectors kept for step {step} (kept: {listing}); "
                f"re-run {_ANALYZE} with {_SAVE_EVERY_STEP} to keep every step",
                file=store.path,
                step=step,
            )
        row = np.flatnonzero(slots == int(step))[:1]
        return (
            store.read_rows(layout.vectors_path("u", name), row)[0],
            store.read_rows(layout.vectors_path("v", name), row)[0],
        )

    def __call__(self, matrix: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        """`top_k`: ``run.vectors(matrix, step)``."""
        return self.top_k(matrix, step)


class RunTraining:
    """The training metrics logged over the run (`Run.training`), at the steps where they
    were logged (not necessarily checkpoint steps).

    Calling it, ``run.training(name)``, is `series`.
    """

    def __init__(self, store: OpenStore) -> None:
        self._store = store

    @property
    def log(self) -> TrainingLog | None:
        """Every training metric stored (`specdyn.types.TrainingLog`: steps int64 [L],
        values name → float64 [L] with NaN where not logged, sources), or None when the
        run has none (no metrics were found beside its checkpoints)."""
        try:
            return trainstore.read(self._store.file)
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise layout.damaged(self._store.path, exc) from None

    @property
    def names(self) -> list[str]:
        """Names of the stored training metrics (empty when there are none)."""
        log = self.log
        return [] if log is None else log.names

    @property
    def kinds(self) -> dict[str, str]:
        """Metric name → ``"training"`` (a curve: losses, accuracies, learning rate) or
        ``"system"`` (runtime, throughput, FLOPs, memory counters: `metric_kind`); every
        metric ``"training"`` in a store written before kinds were stored."""
        try:
            return trainstore.read_kinds(self._store.file)
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise layout.damaged(self._store.path, exc) from None

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One training metric at the steps where it was logged.

        Returns:
            (steps int64 [L_name], values float64 [L_name]); the steps need not be
            checkpoint steps.

        Raises:
            StoreError: no training metrics stored, or no metric `name` (the stored
                ones are listed).
        """
        log = self.log
        path = self._store.path
        if log is None:
            raise StoreError(
                f"{path}: no training metrics stored; re-run {_ANALYZE} with "
                f"{option_ref('metrics_file=LOG', '--metrics LOG')} (a CSV or JSONL with a step "
                "column), or keep the trainer's logs beside the checkpoints",
                file=path,
            )
        if name not in log.values:
            raise StoreError(f"{path}: no training metric {name!r}; stored: {', '.join(log.names)}")
        values = log.values[name]
        have = ~np.isnan(values)
        return log.steps[have].copy(), values[have].copy()

    def __call__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`series`: ``run.training(name)``."""
        return self.series(name)
