"""One HDF5 store per run: the crash-safe writer and the read API.

The schema (every path, type and shape) and the crash-safety design are in
``docs/store.md``. In short: a store is created with every dataset allocated at
full size for its known steps, so that writing a step only writes raw bytes into
space that already exists (no HDF5 metadata changes); a step counts as done only
once its flag in ``/steps/done`` is set, after its data is flushed. Anything that
changes the layout (new steps, ``overwrite``) builds a new file beside the old one
and renames it over it. One writer per store is enforced by a lock file.

    with StoreWriter.open(path, run_name=..., steps=[...], matrices=[...], ...) as w:
        for step in w.pending_steps:
            w.write_step(step, {name: (sigma, method)}, {name: {metric: value}})

    with open_run("mlp-wd") as run:
        run.steps                                  # int64 [T_done]
        run.sigma("fc1.weight")                    # float64 [T_done, R]
        run.metric("normalized_effective_rank")    # float64 [M, T_done]
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, StoreMismatchError, StoreWriteError
from ..metrics import METRIC_NAMES
from ..types import TrainingLog
from ..version import __version__
from . import _layout as layout
from . import _training as trainstore
from . import _vectors as vecstore
from ._lock import WriterLock
from ._vectors import MatrixAgreement, PairAlignment, PairRecord, StepVectors, VectorLayout
from ._workspace import resolve_run

__all__ = [
    "SCHEMA_VERSION",
    "StepRecord",
    "MatrixRecord",
    "StoreWriter",
    "Run",
    "open_run",
    "VectorLayout",
    "PairRecord",
    "StepVectors",
    "PairAlignment",
    "MatrixAgreement",
]

SCHEMA_VERSION = layout.SCHEMA_VERSION

# Test hooks (used by tests/_store_crash_worker.py): when set to a path, the writer
# creates that file and sleeps at the named point, so a test can kill -9 it there.
HOLD_WRITE_ENV = "SPECDYN_TEST_HOLD_WRITE"  # inside write_step, part of the step's data written
HOLD_REBUILD_ENV = "SPECDYN_TEST_HOLD_REBUILD"  # inside a rebuild, part of the data copied


@dataclass(frozen=True)
class StepRecord:
    """Where one step's checkpoint came from, and its fingerprint.

    step: training step (or epoch when the run only knows epochs); epoch: the
    epoch when known, else None; source: the checkpoint path (file or folder);
    format: the checkpoint format tag; size: total bytes of its weight files;
    mtime: newest modification time of those files (seconds since the epoch);
    sha256: hex content hash ("" when not computed).
    """

    step: int
    epoch: int | None
    source: str
    format: str
    size: int
    mtime: float
    sha256: str


@dataclass(frozen=True)
class MatrixRecord:
    """What the store records about one matrix view (see `specdyn.views.MatrixView`).

    name: canonical matrix name (never contains ``/``); param: canonical
    parameter name; key: raw checkpoint key; kind: view kind; part: slice tag
    or None; shape: (out, in) of the view; source_shape: the stored parameter's
    shape; source_dtype: its dtype ("float16", ...).
    """

    name: str
    param: str
    key: str
    kind: str
    part: str | None
    shape: tuple[int, int]
    source_shape: tuple[int, ...]
    source_dtype: str

    @property
    def rank(self) -> int:
        """R = min(out, in): the number of singular values."""
        return int(min(self.shape))


@dataclass
class _Plan:
    """Everything a store file is built from."""

    run_name: str
    source_root: str
    step_unit: str
    created: str
    options: dict[str, Any]
    metric_names: list[str]
    steps: list[StepRecord]
    matrices: list[MatrixRecord]
    skipped: list[tuple[str, str]]
    aliases: dict[str, str]
    provenance_slots: int
    vectors: VectorLayout | None = None
    training: TrainingLog | None = None


@dataclass
class _Stored:
    """What an existing store holds, read once when a writer opens it."""

    plan: _Plan
    schema: int
    done: dict[int, bool]
    provenance_used: int


# ----------------------------------------------------------------------------- writer


class StoreWriter:
    """The single writer of one store (use `StoreWriter.open`; a context manager).

    Attributes:
        path: the store file.
        changed_steps: ``(step, old source path, what changed)`` for each
            requested step already in the store whose checkpoint now has another
            size or content hash (or, with no hash on either side, another
            mtime). Its stored numbers are kept, not recomputed or mixed.
    """

    def __init__(
        self,
        path: Path,
        lock: WriterLock,
        f: h5py.File,
        requested: Sequence[int],
        changed: list[tuple[int, str, str]],
    ) -> None:
        self.path = path
        self.changed_steps = changed
        self._lock = lock
        self._f = f
        steps = np.asarray(f["steps/step"][()], dtype=np.int64)
        self._index = {int(s): i for i, s in enumerate(steps)}
        self._done = np.asarray(f["steps/done"][()], dtype=bool)
        self._requested = sorted(set(int(s) for s in requested))
        self._matrices = layout.read_strings(f["matrices/name"])
        self._ranks = [int(r) for r in f["matrices/rank"][()]]
        self._metric_names = list(json.loads(layout.attr_str(f, "metric_names")))
        self._sigma = [f["sigma"][name] for name in self._matrices]
        self._metrics = [f["metrics"][name] for name in self._metric_names]
        self._method = f["matrices/method"]
        self._notes = f["steps/notes"]
        self._invocation = f["steps/invocation"]
        self._done_ds = f["steps/done"]
        self._slot = layout.INVOCATION_NONE
        self.vector_changes: list[str] = []
        self._records = _read_matrix_records(f)
        self._vl = vecstore.read_layout(f)
        self._section_done: dict[str, np.ndarray] = {}
        self._slot_index: dict[int, int] = {}
        if self._vl is not None:
            for section in ("alignment", "agreement", "vectors"):
                self._section_done[section] = np.asarray(f[f"{section}/done"][()], dtype=bool)
            slots = np.asarray(f["vectors/step"][()], dtype=np.int64)
            self._slot_index = {int(s): i for i, s in enumerate(slots)}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        run_name: str,
        source_root: str,
        step_unit: str,
        steps: Sequence[StepRecord],
        matrices: Sequence[MatrixRecord],
        skipped: Sequence[tuple[str, str]],
        aliases: Mapping[str, str],
        options: Mapping[str, object],
        provenance: Mapping[str, object],
        overwrite: bool = False,
        metric_names: Sequence[str] = METRIC_NAMES,
        vectors: VectorLayout | None = None,
        training: TrainingLog | None = None,
    ) -> StoreWriter:
        """Open (create, resume or grow) the store at `path` for writing.

        Args:
            path: the store file; its folder is created when missing.
            run_name: the run's name (root attribute ``run_name``).
            source_root: the checkpoint folder of the run; a store from another
                folder is refused.
            step_unit: ``"step"`` or ``"epoch"``: what the step axis counts.
            steps: the steps to analyse now with their sources. Steps already in
                the store are kept (done ones are never recomputed); new ones
                grow the store; stored steps not listed here are kept too.
            matrices: every matrix, in forward order; must equal the store's set.
            skipped: (parameter, reason) for every parameter left out.
            aliases: tied-weight alias → the parameter analysed in its place.
            options: the options that change numbers (precision, exact,
                include/exclude, views); must equal the store's.
            provenance: this invocation's record (version, command line,
                device, time...); one record is appended per open.
            overwrite: rebuild the store from scratch (new file, then an
                atomic rename over the old one), whatever it holds.
            metric_names: the scalar metrics given to `write_step` per matrix.
            vectors: the singular-vector sections wanted (k, reference, pairs,
                full matrices, saved vectors); None keeps what the store has
                (nothing for a values-only store). A layout that differs from
                the stored one rebuilds the store keeping every section that
                stays valid (values always; alignment when k, full matrices
                and pairs are unchanged; agreement when k, full matrices and
                the reference are); `vector_changes` says what changed.
            training: the run's training metrics (`specdyn.types.TrainingLog`);
                None keeps what the store has. Different metrics than the stored
                ones rebuild the store with them (never written in place).

        Returns:
            The writer, holding the store's lock until `close`.

        Raises:
            StoreLockedError: another process is writing this store.
            StoreMismatchError: the store belongs to another run, or was made
                with other options, matrices, metrics or step unit (without
                `overwrite`).
            StoreError: the file is not a readable specdyn store (without
                `overwrite`), is of a newer schema, cannot be locked or written.
            ValueError: duplicate steps, duplicate or invalid matrix names.
        """
        path = Path(path)
        records = _checked_steps(steps)
        mats = _checked_matrices(matrices)
        fresh = _Plan(
            run_name=str(run_name),
            source_root=str(source_root),
            step_unit=str(step_unit),
            created=layout.now_iso(),
            options=json.loads(layout.canonical_json(dict(options))),
            metric_names=_checked_metric_names(metric_names),
            steps=records,
            matrices=mats,
            skipped=[(str(p), str(r)) for p, r in skipped],
            aliases={str(k): str(v) for k, v in aliases.items()},
            provenance_slots=layout.PROVENANCE_SLOTS,
            vectors=vectors,
            training=training,
        )
        if vectors is not None:
            _check_vector_layout(vectors, mats)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the workspace folder {path.parent} ({exc.strerror}); use another --home"
            ) from None
        lock = WriterLock.acquire(path)
        try:
            _remove_partial_builds(path)
            changed: list[tuple[int, str, str]] = []
            vector_changes: list[str] = []
            if overwrite or not path.exists():
                if path.exists():
                    _refuse_foreign(path)
                _replace_with(path, fresh, old=None, lock=lock)
            else:
                with _open_existing(path) as old:
                    stored = _read_stored(old, path)
                    _check_compatible(path, stored.plan, fresh)
                    merged, changed, grow = _merge_steps(stored, records)
                    wanted = stored.plan.vectors if vectors is None else vectors
                    if vectors is not None:
                        vector_changes = vecstore.changes(stored.plan.vectors, vectors)
                    if training is not None:
                        training = training.over(stored.plan.training)
                    new_training = training is not None and not training.same_as(
                        stored.plan.training
                    )
                    if (
                        grow
                        or new_training
                        or wanted != stored.plan.vectors
                        or stored.schema < layout.SCHEMA_VERSION
                        or stored.provenance_used >= stored.plan.provenance_slots
                    ):
                        plan = replace(
                            fresh,
                            created=stored.plan.created,
                            steps=merged,
                            vectors=wanted,
                            training=training if training is not None else stored.plan.training,
                            provenance_slots=max(
                                layout.PROVENANCE_SLOTS, 2 * stored.provenance_used
                            ),
                        )
                        _replace_with(path, plan, old=old, lock=lock)
            try:
                f = layout.open_h5(path, "r+")
            except OSError as exc:
                raise StoreError(
                    f"cannot open {path} for writing ({layout.h5_reason(exc)}); close other "
                    "handles on it in this process (open_run) and check its permissions"
                ) from None
            try:
                writer = cls(path, lock, f, [r.step for r in records], changed)
                writer.vector_changes = vector_changes
                writer._append_provenance(dict(provenance))
            except BaseException:
                f.close()
                raise
            return writer
        except BaseException:
            lock.release()
            raise

    @property
    def pending_steps(self) -> list[int]:
        """The requested steps not yet done, ascending."""
        return [s for s in self._requested if not self._done[self._index[s]]]

    @property
    def vector_layout(self) -> VectorLayout | None:
        """The store's singular-vector layout (None for a values-only store)."""
        return self._vl

    def pending(self, section: str) -> list[int]:
        """Requested steps whose `section` is not done yet, ascending.

        section: "values" (`pending_steps`), "alignment", "agreement" or
        "vectors" (only steps whose vectors are kept, `VectorLayout.slots`).
        Empty for a vector section of a values-only store.
        """
        if section == "values":
            return self.pending_steps
        if section not in ("alignment", "agreement", "vectors"):
            raise ValueError(f"unknown store section {section!r}")
        if self._vl is None:
            return []
        done = self._section_done[section]
        if section == "vectors":
            return [
                s
                for s in self._requested
                if s in self._slot_index and not done[self._slot_index[s]]
            ]
        return [s for s in self._requested if not done[self._index[s]]]

    @property
    def done_steps(self) -> set[int]:
        """Every step of the store whose data is complete (requested or not)."""
        return {s for s, i in self._index.items() if self._done[i]}

    def write_step(
        self,
        step: int,
        spectra: Mapping[str, tuple[np.ndarray, str]] | None = None,
        metrics: Mapping[str, Mapping[str, float]] | None = None,
        notes: Sequence[str] = (),
        sha256: str | None = None,
        *,
        vectors: StepVectors | None = None,
    ) -> None:
        """Write one step's results, then mark them done (only once the data is on disk).

        Args:
            step: a step of the store.
            spectra: for every matrix of the store, (sigma float64 [R], method);
                the method name is at most 64 bytes of UTF-8. None when the
                step's values are done already and only vector sections are
                written now.
            metrics: for every matrix, metric name → value, for every name of
                `metric_names` given to `open` (given exactly when `spectra` is).
            notes: one-line notes about this step (kept in ``/steps/notes``; if
                they exceed its 4 KiB slot the rest is counted in a last note);
                written with the values.
            sha256: the source's content hash when it was not known at `open`
                (the pipeline hashes a checkpoint while analysing it); written
                with the step's values, before the done flag.
            vectors: the step's alignment / agreement / kept vectors
                (`StepVectors`; each section not None must cover every pair or
                matrix, and must not be done yet). Scores are computed here
                from the diagonals.

        Raises:
            ValueError: an unknown step, values or a section already done,
                values missing for a step whose values are not done, a missing
                or extra matrix, pair or metric, a wrongly shaped array, a too
                long method, vectors for a values-only store or for a step
                whose vectors are not kept.
            StoreError: the writer is closed.
        """
        if self._f is None:
            raise StoreError(f"{self.path}: the store writer is closed; open it again to write")
        step = int(step)
        if step not in self._index:
            raise ValueError(f"step {step} is not a step of the store {self.path}")
        i = self._index[step]
        if (spectra is None) != (metrics is None):
            raise ValueError("spectra and metrics are written together: give both or neither")
        if spectra is None and not self._done[i]:
            raise ValueError(f"step {step}: its values are not done; write spectra and metrics")
        if spectra is not None and self._done[i]:
            raise ValueError(f"step {step} is already done in the store {self.path}")
        if spectra is None and vectors is None:
            raise ValueError(f"step {step}: nothing to write")
        value_rows = None if spectra is None else self._value_rows(step, spectra, metrics)
        vector_rows, sections = self._vector_rows(step, i, vectors)
        note_data = np.array(layout.notes_bytes([str(n) for n in notes]), dtype=layout.NOTES_DTYPE)

        f = self._f
        data: list[tuple[h5py.Dataset, int, np.ndarray]] = []  # (dataset, row, value)
        if value_rows is not None:
            sigmas, rows, methods = value_rows
            data += [(ds, i, sigmas[j]) for j, ds in enumerate(self._sigma)]
            data += [(ds, i, rows[k]) for k, ds in enumerate(self._metrics)]
            data += [(self._method, i, methods), (self._notes, i, note_data)]
            data.append((self._invocation, i, np.int32(self._slot)))
            if sha256 is not None:
                data.append(
                    (
                        f["steps/sha256"],
                        i,
                        np.array(
                            layout.fixed_bytes(sha256, layout.SHA256_BYTES), layout.SHA256_DTYPE
                        ),
                    )
                )
        data += [(f[path], row, value) for path, row, value in vector_rows]
        flags = [(self._done_ds, i, np.uint8(1))] if value_rows is not None else []
        flags += [(f[f"{section}/done"], row, np.uint8(1)) for section, row in sections]
        # 1. the data, durable and read back from the file; 2. only then the flags,
        # durable and read back: a done flag on disk always has its data beside it
        hold = os.environ.get(HOLD_WRITE_ENV) if value_rows is not None else None
        self._commit([data, flags], f"write step {step}", hold=hold, resume=True)
        if value_rows is not None:
            self._done[i] = True
        for section, row in sections:
            self._section_done[section][row] = True

    def _commit(
        self,
        batches: Sequence[Sequence[tuple[h5py.Dataset, int, Any]]],
        what: str,
        *,
        hold: str | None = None,
        resume: bool = False,
    ) -> None:
        """Write each batch of (dataset, row, value), make it durable and read it back
        before the next one starts; any failure closes the writer and raises
        StoreWriteError naming `what` (`hold`: the test hook after the first row)."""
        f = self._f
        try:
            for batch in batches:
                for n, (ds, row, value) in enumerate(batch):
                    write_row(ds, row, value)
                    if hold and n == 0:
                        f.flush()
                        _hold_here(hold)
                hold = None
                layout.fsync_file(f)
                _verify_rows(batch)
        except (OSError, RuntimeError, _LostWrite) as exc:
            self._abandon()
            kept = (
                " the step stays not done and the store keeps every finished step:"
                if resume
                else ""
            )
            raise StoreWriteError(
                f"{self.path}: could not {what} ({layout.write_reason(exc)});{kept} free disk "
                "space (or fix the disk) and run the same command again"
                + (" to resume" if resume else "")
            ) from None

    def _abandon(self) -> None:
        """Close the file after a failed write without letting HDF5's errors escape, and
        release the lock: the writer is unusable, the store on disk keeps its done steps."""
        f, self._f = self._f, None
        try:
            if f is not None:
                f.close()
        except (OSError, RuntimeError):
            pass  # what HDF5 could not flush belongs to steps that are not marked done
        finally:
            self._lock.release()

    def _value_rows(
        self,
        step: int,
        spectra: Mapping[str, tuple[np.ndarray, str]],
        metrics: Mapping[str, Mapping[str, float]],
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Validated (sigmas, metric rows [metrics, M], methods [M]) of one step."""
        _check_names("spectra", spectra.keys(), self._matrices)
        _check_names("metrics", metrics.keys(), self._matrices)
        sigmas = []
        methods = np.zeros(len(self._matrices), dtype=layout.METHOD_DTYPE)
        for j, name in enumerate(self._matrices):
            sigma, method = spectra[name]
            sigma = np.asarray(sigma, dtype=np.float64)
            if sigma.shape != (self._ranks[j],):
                raise ValueError(
                    f"{name}: sigma has shape {sigma.shape}, expected ({self._ranks[j]},) at step {step}"
                )
            data = layout.clean_text(str(method)).encode("utf-8")
            if len(data) > layout.METHOD_BYTES:
                raise ValueError(
                    f"{name}: method name {method!r} is longer than {layout.METHOD_BYTES} bytes"
                )
            sigmas.append(sigma)
            methods[j] = data
        rows = np.empty((len(self._metric_names), len(self._matrices)), dtype=np.float64)
        for j, name in enumerate(self._matrices):
            values = metrics[name]
            _check_names(f"metrics of {name}", values.keys(), self._metric_names)
            for k, metric in enumerate(self._metric_names):
                rows[k, j] = float(values[metric])
        return sigmas, rows, methods

    def _vector_rows(
        self, step: int, i: int, vectors: StepVectors | None
    ) -> tuple[list[tuple[str, int, np.ndarray]], list[tuple[str, int]]]:
        """Validated (dataset path, row, value) writes and (section, row) flags of a step."""
        if vectors is None:
            return [], []
        if self._vl is None:
            raise ValueError(
                f"{self.path} is a values-only store; open it with a vector layout to add vectors"
            )
        sections = []
        for section in ("alignment", "agreement", "vectors"):
            if getattr(vectors, section) is None:
                continue
            if section == "vectors":
                if step not in self._slot_index:
                    raise ValueError(f"step {step}: its vectors are not kept in {self.path}")
                row = self._slot_index[step]
            else:
                row = i
            if self._section_done[section][row]:
                raise ValueError(f"step {step}: {section} is already done in {self.path}")
            sections.append((section, row))
        rows = dict(sections)
        writes = []
        for path, value in vecstore.checked_rows(vectors, self._vl, self._records, step):
            writes.append((path, rows[path.split("/", 1)[0]], value))
        return writes, sections

    def flag_step(self, step: int, flag: str) -> None:
        """Mark a step (done or not) with a one-line flag, e.g. "duplicate of step 0" or
        "failed: truncated download"; "" clears it. Plots mark flagged steps.

        Raises:
            ValueError: an unknown step or a flag longer than 256 bytes of UTF-8.
            StoreError: the writer is closed.
        """
        if self._f is None:
            raise StoreError(f"{self.path}: the store writer is closed; open it again to write")
        if int(step) not in self._index:
            raise ValueError(f"step {step} is not a step of the store {self.path}")
        data = layout.clean_text(str(flag)).encode("utf-8")
        if len(data) > layout.FLAG_BYTES:
            raise ValueError(f"flag {flag!r} is longer than {layout.FLAG_BYTES} bytes")
        row = (self._f["steps/flag"], self._index[int(step)], np.array(data, layout.FLAG_DTYPE))
        self._commit([[row]], f"flag step {step}")

    def close(self) -> None:
        """Close the file and release the writer lock (idempotent)."""
        f, self._f = self._f, None
        try:
            if f is not None:
                f.close()
        finally:
            self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append_provenance(self, record: dict[str, Any]) -> None:
        """Write this invocation's record into the first free slot, then mark it used."""
        used = np.asarray(self._f["provenance/used"][()], dtype=bool)
        free = np.flatnonzero(~used)
        slot = int(free[0])  # open() rebuilt the file with more slots if none was free
        data = np.array(layout.provenance_bytes(record), dtype=layout.PROVENANCE_DTYPE)
        record_row = (self._f["provenance/record"], slot, data)
        used_row = (self._f["provenance/used"], slot, np.uint8(1))
        self._commit([[record_row], [used_row]], "record this run in the store")
        self._slot = slot


def _check_vector_layout(vl: VectorLayout, matrices: Sequence[MatrixRecord]) -> None:
    """ValueError unless a vector layout is usable with these matrices."""
    if isinstance(vl.k, bool) or not isinstance(vl.k, int) or vl.k < 1:
        raise ValueError(f"vectors k={vl.k!r} must be a positive integer")
    if isinstance(vl.score_top, bool) or not isinstance(vl.score_top, int) or vl.score_top < 1:
        raise ValueError(f"score_top={vl.score_top!r} must be a positive integer")
    if vl.save_vectors not in vecstore.SAVE_MODES:
        raise ValueError(f"save_vectors {vl.save_vectors!r}: use one of {vecstore.SAVE_MODES}")
    if vl.reference_rule not in vecstore.REFERENCE_RULES:
        raise ValueError(
            f"reference_rule {vl.reference_rule!r}: use one of {vecstore.REFERENCE_RULES}"
        )
    names = {m.name for m in matrices}
    seen = set()
    for p in vl.pairs:
        if p.name in seen or not p.name or "/" in p.name:
            raise ValueError(f"pair name {p.name!r} is empty, repeated or contains '/'")
        seen.add(p.name)
        for side_matrix in (p.first, p.second):
            if side_matrix not in names:
                raise ValueError(f"pair {p.name}: {side_matrix!r} is not a matrix of the store")
        if p.k < 0 or p.blocks < 1:
            raise ValueError(f"pair {p.name}: k={p.k}, blocks={p.blocks} are not valid")


class _LostWrite(Exception):
    """A row read back from the file differs from the row just written."""


def write_row(ds: h5py.Dataset, row: int, value: Any) -> None:
    """Write one row of a store dataset (the one place the writer puts step data; tests
    inject faults here)."""
    ds[row] = value


def _verify_rows(writes: Sequence[tuple[h5py.Dataset, int, Any]]) -> None:
    """_LostWrite unless every (dataset, row, value) reads back bit for bit as written."""
    for ds, row, value in writes:
        # both cast to the dataset's type: fixed-length strings read back shorter
        stored = np.asarray(ds[row], dtype=ds.dtype)
        wanted = np.asarray(value, dtype=ds.dtype)
        if stored.size != wanted.size or stored.tobytes() != wanted.tobytes():
            raise _LostWrite(f"{ds.name} row {row} reads back different from what was written")


def _hold_here(flag: str) -> None:
    """Test hook: announce the hold point by creating `flag`, then wait to be killed."""
    Path(flag).write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _check_names(what: str, given: Any, expected: Sequence[str]) -> None:
    """ValueError unless the names given are exactly the names expected."""
    given = set(given)
    missing = [n for n in expected if n not in given]
    extra = sorted(given - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if extra:
            parts.append(f"unknown {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
        raise ValueError(f"{what}: {'; '.join(parts)}")


def _checked_steps(steps: Sequence[StepRecord]) -> list[StepRecord]:
    """The step records sorted by step; ValueError on a duplicate step."""
    records = sorted(steps, key=lambda r: int(r.step))
    seen = Counter(int(r.step) for r in records)
    dupes = sorted(s for s, n in seen.items() if n > 1)
    if dupes:
        raise ValueError(f"steps given more than once: {dupes[:10]}")
    return records


def _checked_matrices(matrices: Sequence[MatrixRecord]) -> list[MatrixRecord]:
    """The matrix records; ValueError on a duplicate or unusable name."""
    names = Counter(m.name for m in matrices)
    dupes = sorted(n for n, c in names.items() if c > 1)
    if dupes:
        raise ValueError(f"matrix names given more than once: {dupes[:10]}")
    for m in matrices:
        if not m.name or "/" in m.name or m.name in (".", ".."):
            raise ValueError(
                f"matrix name {m.name!r} cannot name an HDF5 dataset (empty, '.', '..' or with '/')"
            )
        if len(tuple(m.shape)) != 2:
            raise ValueError(f"{m.name}: shape {m.shape} is not 2-D")
    return list(matrices)


def _checked_metric_names(names: Sequence[str]) -> list[str]:
    """The metric names; ValueError on a duplicate or unusable name."""
    names = [str(n) for n in names]
    if len(set(names)) != len(names) or any(not n or "/" in n or n in (".", "..") for n in names):
        raise ValueError(f"metric names must be distinct dataset names: {names}")
    return names


def _remove_partial_builds(path: Path) -> None:
    """Delete temporary files left by a rebuild that was killed (the lock is held)."""
    prefix = f".{path.name}.rebuild-"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            try:
                entry.unlink()
            except OSError:
                pass  # another leftover handling is not our business; the build uses its own name


def _open_existing(path: Path) -> h5py.File:
    """Open an existing store for a writer, with errors saying how to proceed."""
    try:
        f = layout.open_h5(path, "r")
    except OSError as exc:
        raise StoreError(
            f"{path} exists but is not a readable HDF5 file ({layout.h5_reason(exc)}); "
            "use --overwrite to replace it or choose another --name"
        ) from None
    try:
        layout.check_header(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _refuse_foreign(path: Path) -> None:
    """StoreError when `path` is an HDF5 file that is not a specdyn store (never overwritten)."""
    try:
        f = layout.open_h5(path, "r")
    except OSError:
        return  # not HDF5 at all: a damaged store, which overwrite may replace
    with f:
        fmt = layout.attr_str(f, "format", "")
    if fmt != layout.FORMAT:
        raise StoreError(
            f"{path} is an HDF5 file that specdyn did not write (format {fmt!r}); it was left "
            "untouched: move it away or choose another --name"
        )


def _read_stored(f: h5py.File, path: Path) -> _Stored:
    """The content of an existing store (everything but the per-step numbers)."""
    try:
        steps = _read_step_records(f)
        done = np.asarray(f["steps/done"][()], dtype=bool)
        plan = _Plan(
            run_name=layout.attr_str(f, "run_name"),
            source_root=layout.attr_str(f, "source_root"),
            step_unit=layout.attr_str(f, "step_unit"),
            created=layout.attr_str(f, "created"),
            options=json.loads(layout.attr_str(f, "options", "{}")),
            metric_names=list(json.loads(layout.attr_str(f, "metric_names", "[]"))),
            steps=steps,
            matrices=_read_matrix_records(f),
            skipped=list(
                zip(
                    layout.read_strings(f["skipped/param"]),
                    layout.read_strings(f["skipped/reason"]),
                    strict=True,
                )
            ),
            aliases=dict(
                zip(
                    layout.read_strings(f["aliases/alias"]),
                    layout.read_strings(f["aliases/target"]),
                    strict=True,
                )
            ),
            provenance_slots=int(f["provenance/used"].shape[0]),
            vectors=vecstore.read_layout(f),
            training=trainstore.read(f),
        )
        used = np.asarray(f["provenance/used"][()], dtype=bool)
        schema = int(f.attrs["schema_version"])
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise layout.damaged(path, exc) from None
    return _Stored(
        plan=plan,
        schema=schema,
        done={r.step: bool(d) for r, d in zip(steps, done, strict=True)},
        provenance_used=int(used.sum()),
    )


def _read_step_records(f: h5py.File) -> list[StepRecord]:
    """The step axis of a store as records."""
    g = f["steps"]
    steps = g["step"][()]
    epochs = g["epoch"][()]
    sources = layout.read_strings(g["source"])
    formats = layout.read_strings(g["format"])
    sizes = g["size"][()]
    mtimes = g["mtime"][()]
    hashes = layout.read_strings(g["sha256"])
    return [
        StepRecord(
            step=int(steps[i]),
            epoch=None if int(epochs[i]) == layout.EPOCH_UNKNOWN else int(epochs[i]),
            source=sources[i],
            format=formats[i],
            size=int(sizes[i]),
            mtime=float(mtimes[i]),
            sha256=hashes[i],
        )
        for i in range(len(steps))
    ]


def _read_matrix_records(f: h5py.File) -> list[MatrixRecord]:
    """The matrix table of a store as records, in stored (forward) order."""
    g = f["matrices"]
    names = layout.read_strings(g["name"])
    params = layout.read_strings(g["param"])
    keys = layout.read_strings(g["key"])
    kinds = layout.read_strings(g["kind"])
    parts = layout.read_strings(g["part"])
    shapes = g["shape"][()]
    source_shapes = layout.read_strings(g["source_shape"])
    dtypes = layout.read_strings(g["source_dtype"])
    return [
        MatrixRecord(
            name=names[j],
            param=params[j],
            key=keys[j],
            kind=kinds[j],
            part=parts[j] or None,
            shape=(int(shapes[j][0]), int(shapes[j][1])),
            source_shape=tuple(int(d) for d in json.loads(source_shapes[j])),
            source_dtype=dtypes[j],
        )
        for j in range(len(names))
    ]


def _check_compatible(path: Path, stored: _Plan, fresh: _Plan) -> None:
    """StoreMismatchError when the store cannot take these checkpoints without overwrite."""
    if stored.source_root != fresh.source_root and os.path.realpath(
        stored.source_root
    ) != os.path.realpath(fresh.source_root):
        raise StoreMismatchError(
            f"store {path} holds run {stored.run_name!r} of {stored.source_root}, not of "
            f"{fresh.source_root}; use --name to keep both runs or --overwrite to replace it"
        )
    if stored.step_unit != fresh.step_unit:
        raise StoreMismatchError(
            f"store {path} counts {stored.step_unit}s but these checkpoints count "
            f"{fresh.step_unit}s; use --overwrite to recompute or --name for a separate store"
        )
    if stored.options != fresh.options:
        keys = sorted(set(stored.options) | set(fresh.options))
        diffs = [
            f"{k}: {stored.options.get(k, '(unset)')!r} in the store, {fresh.options.get(k, '(unset)')!r} now"
            for k in keys
            if stored.options.get(k, "(unset)") != fresh.options.get(k, "(unset)")
        ]
        raise StoreMismatchError(
            f"store {path} was made with other options ({'; '.join(diffs)}); "
            "use --overwrite to recompute"
        )
    if sorted(stored.metric_names) != sorted(fresh.metric_names):
        raise StoreMismatchError(
            f"store {path} holds metrics {stored.metric_names}, this specdyn computes "
            f"{fresh.metric_names}; use --overwrite to recompute"
        )
    old = {m.name: m for m in stored.matrices}
    new = {m.name: m for m in fresh.matrices}
    problems = []
    gone = [n for n in old if n not in new]
    added = [n for n in new if n not in old]
    if gone:
        problems.append(f"missing now: {_few(gone)}")
    if added:
        problems.append(f"new: {_few(added)}")
    for name in old.keys() & new.keys():
        a, b = old[name], new[name]
        if (a.shape, a.source_shape, a.kind, a.part, a.param) != (
            b.shape,
            b.source_shape,
            b.kind,
            b.part,
            b.param,
        ):
            problems.append(
                f"{name} was {a.kind} {'x'.join(map(str, a.shape))} of {a.param} "
                f"{'x'.join(map(str, a.source_shape))}, now {b.kind} {'x'.join(map(str, b.shape))} "
                f"of {b.param} {'x'.join(map(str, b.source_shape))}"
            )
    if problems:
        raise StoreMismatchError(
            f"store {path} has other matrices than these checkpoints ({'; '.join(problems[:5])}); "
            "use --overwrite to recompute or --name for a separate store"
        )


def _few(names: Sequence[str], limit: int = 5) -> str:
    """The first few names, comma-separated."""
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _merge_steps(
    stored: _Stored, records: Sequence[StepRecord]
) -> tuple[list[StepRecord], list[tuple[int, str, str]], bool]:
    """The union of stored and requested steps, the changed done steps, and whether
    the file must be rebuilt (a new step, or a pending step whose source changed)."""
    merged = {r.step: r for r in stored.plan.steps}
    changed = []
    rebuild = False
    for rec in records:
        old = merged.get(rec.step)
        if old is None:
            merged[rec.step] = rec
            rebuild = True
        elif stored.done.get(rec.step, False):
            what = _fingerprint_change(old, rec)
            if what:
                changed.append((rec.step, old.source, what))
        elif old != rec:
            merged[rec.step] = rec
            rebuild = True
    return [merged[s] for s in sorted(merged)], changed, rebuild


def _fingerprint_change(old: StepRecord, new: StepRecord) -> str:
    """How a step's checkpoint differs from what was analysed ("" if the content is the same).

    Size and content hash decide; the mtime only when a side has no hash (a file
    that was only touched has the same numbers).
    """
    parts = []
    if old.size != new.size:
        parts.append(f"size {old.size} -> {new.size} bytes")
    if old.sha256 and new.sha256:
        if old.sha256 != new.sha256:
            parts.append(f"content sha256 {old.sha256[:12]}... -> {new.sha256[:12]}...")
    elif old.mtime != new.mtime:
        parts.append(f"modified {_when(old.mtime)} -> {_when(new.mtime)}")
    return ", ".join(parts)


def _when(mtime: float) -> str:
    """A modification time for messages."""
    try:
        return datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(mtime)


def _replace_with(path: Path, plan: _Plan, old: h5py.File | None, lock: WriterLock) -> None:
    """Build a complete store for `plan` in a temporary file beside `path` (copying the
    done steps of `old`), make it durable, then rename it over `path` atomically."""
    tmp = path.with_name(f".{path.name}.rebuild-{os.getpid()}.tmp")
    try:
        _build(tmp, plan, old)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        lock.replace_store(tmp)  # the new file is locked before it appears at `path`
    except (OSError, RuntimeError) as exc:
        _unlink_quietly(tmp)
        raise StoreError(
            f"cannot write the store {path} ({layout.write_reason(exc)}); check free disk space and "
            "permissions, or use another --home"
        ) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    layout.fsync_dir(path.parent)


def _unlink_quietly(path: Path) -> None:
    """Remove a temporary file if it is there."""
    try:
        path.unlink()
    except OSError:
        pass


def _build(target: Path, plan: _Plan, old: h5py.File | None) -> None:
    """Write a whole store file for `plan`; rows of `old`'s done steps are copied."""
    steps = plan.steps
    n_steps, n_matrices = len(steps), len(plan.matrices)
    step_values = np.array([r.step for r in steps], dtype=np.int64)
    pairs = np.zeros((0, 2), dtype=np.int64)  # (new row, old row) of each done step copied
    col_src = None
    used_prov = 0
    if old is not None:
        old_steps = np.asarray(old["steps/step"][()], dtype=np.int64)
        old_done = np.asarray(old["steps/done"][()], dtype=bool)
        old_row = {int(s): i for i, s in enumerate(old_steps) if old_done[i]}
        pairs = np.array(
            [(i, old_row[int(s)]) for i, s in enumerate(step_values) if int(s) in old_row],
            dtype=np.int64,
        ).reshape(-1, 2)
        old_names = layout.read_strings(old["matrices/name"])
        old_col = {n: j for j, n in enumerate(old_names)}
        col_src = np.array([old_col[m.name] for m in plan.matrices], dtype=np.int64)
        used_prov = int(np.asarray(old["provenance/used"][()], dtype=bool).sum())

    def copy(
        name: str, dtype: Any, fill: Any, shape_tail: tuple[int, ...] = (), cols: bool = False
    ) -> h5py.Dataset:
        """A new dataset [n_steps, *shape_tail] with `fill`, done rows copied from `old`."""
        ds = layout.new_dataset(f, name, (n_steps, *shape_tail), dtype)
        src = old[name] if old is not None and len(pairs) else None
        layout.copy_rows(ds, src, pairs, fill, col_src if cols else None)
        return ds

    with layout.open_h5(target, "w") as f:
        f.attrs["format"] = layout.FORMAT
        f.attrs["schema_version"] = layout.SCHEMA_VERSION
        f.attrs["run_name"] = plan.run_name
        f.attrs["source_root"] = layout.clean_text(plan.source_root)
        f.attrs["step_unit"] = plan.step_unit
        f.attrs["created"] = plan.created
        f.attrs["specdyn_version"] = __version__
        f.attrs["options"] = layout.canonical_json(plan.options)
        f.attrs["metric_names"] = json.dumps(plan.metric_names)

        g = f.create_group("steps")
        layout.new_dataset(g, "step", (n_steps,), np.int64)[...] = step_values
        epochs = [layout.EPOCH_UNKNOWN if r.epoch is None else int(r.epoch) for r in steps]
        layout.new_dataset(g, "epoch", (n_steps,), np.int64)[...] = np.array(epochs, dtype=np.int64)
        layout.vlen_strings(g, "source", [r.source for r in steps])
        layout.vlen_strings(g, "format", [r.format for r in steps])
        layout.new_dataset(g, "size", (n_steps,), np.int64)[...] = np.array(
            [r.size for r in steps], dtype=np.int64
        )
        layout.new_dataset(g, "mtime", (n_steps,), np.float64)[...] = np.array(
            [r.mtime for r in steps], dtype=np.float64
        )
        layout.new_dataset(g, "sha256", (n_steps,), layout.SHA256_DTYPE)[...] = np.array(
            [layout.fixed_bytes(r.sha256, layout.SHA256_BYTES) for r in steps],
            dtype=layout.SHA256_DTYPE,
        )
        copy("steps/notes", layout.NOTES_DTYPE, b"")
        # flags describe a step whether or not it is done (a failed download): all kept
        flags = np.zeros(n_steps, dtype=layout.FLAG_DTYPE)
        if old is not None and "steps/flag" in old:
            old_flags = dict(
                zip(old["steps/step"][()].tolist(), old["steps/flag"][()].tolist(), strict=True)
            )
            for i, step in enumerate(step_values.tolist()):
                flags[i] = old_flags.get(step, b"")
        layout.new_dataset(g, "flag", (n_steps,), layout.FLAG_DTYPE)[...] = flags
        copy("steps/invocation", np.int32, layout.INVOCATION_NONE)

        g = f.create_group("matrices")
        mats = plan.matrices
        layout.vlen_strings(g, "name", [m.name for m in mats])
        layout.vlen_strings(g, "param", [m.param for m in mats])
        layout.vlen_strings(g, "key", [m.key for m in mats])
        layout.vlen_strings(g, "kind", [m.kind for m in mats])
        layout.vlen_strings(g, "part", [m.part or "" for m in mats])
        shape = np.array([tuple(m.shape) for m in mats], dtype=np.int64).reshape(n_matrices, 2)
        layout.new_dataset(g, "shape", (n_matrices, 2), np.int64)[...] = shape
        layout.new_dataset(g, "rank", (n_matrices,), np.int64)[...] = np.array(
            [m.rank for m in mats], dtype=np.int64
        )
        layout.vlen_strings(
            g, "source_shape", [json.dumps([int(d) for d in m.source_shape]) for m in mats]
        )
        layout.vlen_strings(g, "source_dtype", [m.source_dtype for m in mats])
        copy("matrices/method", layout.METHOD_DTYPE, b"", (n_matrices,), cols=True)

        f.create_group("sigma")
        hold = os.environ.get(HOLD_REBUILD_ENV) if old is not None else None
        for j, m in enumerate(mats):
            copy(f"sigma/{m.name}", np.float64, np.nan, (m.rank,))
            if hold and j == 0:
                f.flush()
                _hold_here(hold)
        f.create_group("metrics")
        for name in plan.metric_names:
            copy(f"metrics/{name}", np.float64, np.nan, (n_matrices,), cols=True)

        g = f.create_group("skipped")
        layout.vlen_strings(g, "param", [p for p, _ in plan.skipped])
        layout.vlen_strings(g, "reason", [r for _, r in plan.skipped])
        g = f.create_group("aliases")
        layout.vlen_strings(g, "alias", list(plan.aliases))
        layout.vlen_strings(g, "target", list(plan.aliases.values()))

        g = f.create_group("provenance")
        slots = max(plan.provenance_slots, used_prov + 1)
        record = layout.new_dataset(g, "record", (slots,), layout.PROVENANCE_DTYPE, fill=b"")
        used = layout.new_dataset(g, "used", (slots,), np.uint8, fill=0)
        if used_prov:
            record[:used_prov] = old["provenance/record"][:used_prov]
            used[:used_prov] = 1

        # the done flags last: within the new file nothing is visible before the rename,
        # but keeping the order everywhere makes the invariant easy to check
        done = np.zeros(n_steps, dtype=np.uint8)
        done[pairs[:, 0]] = 1
        if plan.vectors is not None:
            vecstore.build(f, plan.vectors, plan.matrices, step_values, old, done.astype(bool))
        if plan.training is not None:
            trainstore.write(f, plan.training)
        elif old is not None:
            trainstore.copy(old, f)
        layout.new_dataset(f["steps"], "done", (n_steps,), np.uint8)[...] = done
        f.flush()


# ----------------------------------------------------------------------------- reader


class Run:
    """A store opened for reading (read-only, no HDF5 file lock; a context manager).

    Only steps whose done flag is set are visible through `steps`, `sigma` and
    `metric` (a store being written, or interrupted, shows its finished steps).
    The done flags are read once, when the run is opened.

    Attributes:
        path: the store file; name: the run name; step_unit: ``"step"`` or
        ``"epoch"``; schema_version: the store's schema version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f: h5py.File | None = layout.open_checked(self.path)
        try:
            self._load()
        except (KeyError, OSError, ValueError, TypeError) as exc:
            self.close()
            raise layout.damaged(self.path, exc) from None

    def _load(self) -> None:
        """Read the step axis, the done flags and the matrix table."""
        f = self._f
        self.name = layout.attr_str(f, "run_name") or self.path.stem
        self.step_unit = layout.attr_str(f, "step_unit", "step")
        self.schema_version = int(f.attrs["schema_version"])
        self._all_steps = np.asarray(f["steps/step"][()], dtype=np.int64)
        done = np.asarray(f["steps/done"][()], dtype=bool)
        if done.shape != self._all_steps.shape:
            raise ValueError("steps/done and steps/step differ in length")
        self._done_rows = np.flatnonzero(done)
        self._records = _read_matrix_records(f)
        self._matrices = [m.name for m in self._records]
        self._col = {n: j for j, n in enumerate(self._matrices)}
        self._metric_names = list(json.loads(layout.attr_str(f, "metric_names", "[]")))
        self._vl = vecstore.read_layout(f)
        self._pair_col = {p.name: j for j, p in enumerate(self._vl.pairs)} if self._vl else {}

    @property
    def _file(self) -> h5py.File:
        """The open file, or StoreError when closed."""
        if self._f is None:
            raise StoreError(f"{self.path}: the run is closed; open it again with open_run")
        return self._f

    @property
    def steps(self) -> np.ndarray:
        """The done steps, ascending: int64 [T_done]."""
        return self._all_steps[self._done_rows].copy()

    @property
    def all_steps(self) -> np.ndarray:
        """Every step the store knows, done or pending, ascending: int64 [T]."""
        return self._all_steps.copy()

    @property
    def matrices(self) -> list[str]:
        """Matrix names in forward order."""
        return list(self._matrices)

    @property
    def metric_names(self) -> list[str]:
        """Names of the scalar metrics stored per matrix and step."""
        return list(self._metric_names)

    def find_matrix(self, pattern: str) -> str:
        """The matrix named `pattern`, else the only one containing it as a substring.

        Raises:
            StoreError: several matrices contain `pattern` (they are listed), or
                none does (a few names are listed).
        """
        if pattern in self._col:
            return pattern
        hits = [n for n in self._matrices if pattern in n]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise StoreError(
                f"{self.path}: {pattern!r} matches {len(hits)} matrices ({_few(hits, 8)}); "
                "give the exact name or a longer part of it"
            )
        raise StoreError(
            f"{self.path}: no matrix matches {pattern!r} (matrices include {_few(self._matrices, 5)}); "
            "list them with specdyn info RUN --matrices"
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
        data = self._file["sigma"][name][()]
        return data[self._done_rows]

    def metric(self, name: str, matrix: str | None = None) -> np.ndarray:
        """One scalar metric at every done step.

        Args:
            name: a metric of `metric_names` (e.g. ``"normalized_effective_rank"``).
            matrix: exact name or unique substring; None for every matrix.

        Returns:
            float64 [T_done] for one matrix, [M, T_done] for all (forward order).

        Raises:
            StoreError: unknown metric or matrix.
        """
        if name not in self._metric_names:
            raise StoreError(
                f"{self.path}: no metric {name!r}; stored metrics: {', '.join(self._metric_names)}"
            )
        data = self._file["metrics"][name][()][self._done_rows]  # [T_done, M]
        if matrix is None:
            return np.ascontiguousarray(data.T)
        return data[:, self._col[self.find_matrix(matrix)]].copy()

    def matrix_info(self, matrix: str) -> dict[str, Any]:
        """What the store records about one matrix (JSON-serialisable).

        Returns:
            name, index (forward position), param, key, kind, part, shape
            [out, in], rank R, source_shape, source_dtype, methods (method →
            number of done steps) and method (the most used one, "" if none).
        """
        name = self.find_matrix(matrix)
        j = self._col[name]
        rec = self._records[j]
        methods = self._methods_of(j)
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

    def _methods_of(self, column: int | None) -> Counter[str]:
        """Methods used over done steps, for one matrix column or all of them."""
        if not len(self._done_rows):
            return Counter()
        table = self._file["matrices/method"][()][self._done_rows]
        if column is not None:
            table = table[:, column]
        return Counter(v.decode("utf-8", "replace") for v in table.reshape(-1) if v)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(parameter, reason) of every parameter that was not analysed."""
        g = self._file["skipped"]
        return list(
            zip(layout.read_strings(g["param"]), layout.read_strings(g["reason"]), strict=True)
        )

    @property
    def aliases(self) -> dict[str, str]:
        """Tied-weight alias → the parameter analysed in its place."""
        g = self._file["aliases"]
        return dict(
            zip(layout.read_strings(g["alias"]), layout.read_strings(g["target"]), strict=True)
        )

    @property
    def step_sources(self) -> list[dict[str, Any]]:
        """One dict per known step (done or not): step, epoch, source, format, size,
        mtime, sha256, done, invocation (index into `provenance`, -1 if not done)."""
        f = self._file
        done = set(self._done_rows.tolist())
        invocation = f["steps/invocation"][()]
        return [
            {
                "step": r.step,
                "epoch": r.epoch,
                "source": r.source,
                "format": r.format,
                "size": r.size,
                "mtime": r.mtime,
                "sha256": r.sha256,
                "done": i in done,
                "invocation": int(invocation[i]) if i in done else layout.INVOCATION_NONE,
            }
            for i, r in enumerate(_read_step_records(f))
        ]

    @property
    def notes(self) -> dict[int, list[str]]:
        """Notes recorded while analysing each done step (steps without notes left out)."""
        data = self._file["steps/notes"][()]
        out = {}
        for i in self._done_rows:
            raw = data[i]
            if raw:
                items = json.loads(raw.decode("utf-8", "replace"))
                if items:
                    out[int(self._all_steps[i])] = [str(n) for n in items]
        return out

    @property
    def step_flags(self) -> dict[int, str]:
        """Flagged steps (done or not) → their flag ("duplicate of …", "failed: …")."""
        f = self._file
        if "steps/flag" not in f:
            return {}
        flags = layout.read_strings(f["steps/flag"])
        return {int(s): flag for s, flag in zip(self._all_steps, flags, strict=True) if flag}

    @property
    def provenance(self) -> list[dict[str, Any]]:
        """One record per invocation that wrote this store, oldest first."""
        g = self._file["provenance"]
        used = np.asarray(g["used"][()], dtype=bool)
        records = g["record"][()]
        out = []
        for i in np.flatnonzero(used):
            try:
                out.append(json.loads(records[i].decode("utf-8", "replace")))
            except json.JSONDecodeError:
                out.append({"unreadable": records[i][:200].decode("utf-8", "replace")})
        return out

    @property
    def options(self) -> dict[str, Any]:
        """The options that determine the stored numbers (precision, exact, include, ...)."""
        return json.loads(layout.attr_str(self._file, "options", "{}"))

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable summary of the store.

        Keys: name, path, source_root, step_unit, created, schema_version,
        steps_done, steps_total, first_step, last_step (of done steps; None if
        none), matrices (count), metrics, skipped (reason → count), aliases
        (count), methods (method → matrix-steps computed with it), options,
        size_bytes, notes (count), provenance (records).
        """
        steps = self.steps
        try:
            size = self.path.stat().st_size
        except OSError:
            size = None
        return {
            "name": self.name,
            "path": str(self.path),
            "source_root": layout.attr_str(self._file, "source_root"),
            "step_unit": self.step_unit,
            "created": layout.attr_str(self._file, "created"),
            "schema_version": self.schema_version,
            "steps_done": int(steps.size),
            "steps_total": int(self._all_steps.size),
            "first_step": int(steps[0]) if steps.size else None,
            "last_step": int(steps[-1]) if steps.size else None,
            "matrices": len(self._matrices),
            "metrics": self.metric_names,
            "skipped": dict(Counter(reason for _, reason in self.skipped)),
            "aliases": len(self.aliases),
            "methods": dict(self._methods_of(None)),
            "options": self.options,
            "size_bytes": size,
            "notes": sum(len(v) for v in self.notes.values()),
            "provenance": self.provenance,
            "vectors": self.vectors_config,
            "pairs": len(self._pair_col),
            "alignment_steps": int(self.section_steps("alignment").size) if self._vl else 0,
            "agreement_steps": int(self.section_steps("agreement").size) if self._vl else 0,
            "vector_steps": self.section_steps("vectors").tolist() if self._vl else [],
            "training_metrics": self.training_names,
        }

    # ------------------------------------------------------------- singular vectors

    @property
    def vectors_config(self) -> dict[str, Any] | None:
        """The singular-vector settings of the store, None when it holds values only.

        Keys: k, score_top, reference (step), reference_rule ("last"|"given"),
        full_matrices, save_vectors ("all"|"ends"|"none"), pairs_preset.
        """
        return None if self._vl is None else self._vl.config()

    @property
    def reference(self) -> int | None:
        """The step the agreement compares against (None for a values-only store)."""
        return None if self._vl is None else self._vl.reference

    @property
    def pairs(self) -> list[dict[str, Any]]:
        """One dict per pair, in forward order: name, first, second, first_side,
        second_side, rule, options, definition, blocks (head couples, or kernel
        taps with ``tap = "all"``, stored one by one), k (diagonal length), dim
        (vector length). definition: ``{"basis", "tap", "normalize"}`` for a pair
        whose conv operand is compared on v (a store written before definitions
        were recorded reads as basis "slice"), None for other pairs. Empty for a
        values-only store."""
        if self._vl is None:
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
            for p in self._vl.pairs
        ]

    @property
    def skipped_pairs(self) -> list[tuple[str, str]]:
        """(pair, reason) of every pair a rule wanted but could not make."""
        return [] if self._vl is None else list(self._vl.skipped_pairs)

    def find_pair(self, pattern: str) -> str:
        """The pair named `pattern`, else the only one containing it as a substring.

        Raises:
            StoreError: the store has no pairs, or `pattern` matches none or several.
        """
        self._need_vectors("alignment")
        if pattern in self._pair_col:
            return pattern
        names = list(self._pair_col)
        hits = [n for n in names if pattern in n]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise StoreError(
                f"{self.path}: {pattern!r} matches {len(hits)} pairs ({_few(hits, 8)}); "
                "give the exact name or a longer part of it"
            )
        listing = f"pairs include {_few(names, 5)}" if names else "the store has no pairs"
        raise StoreError(
            f"{self.path}: no pair matches {pattern!r} ({listing}); "
            "list them with specdyn info RUN --pairs"
        )

    def section_steps(self, section: str) -> np.ndarray:
        """Steps whose `section` ("alignment", "agreement" or "vectors") is done: int64."""
        self._need_vectors(section)
        done = np.asarray(self._file[f"{section}/done"][()], dtype=bool)
        if section == "vectors":
            return np.asarray(self._file["vectors/step"][()], dtype=np.int64)[done]
        values_done = np.zeros_like(done)
        values_done[self._done_rows] = True
        return self._all_steps[done & values_done].copy()

    def alignment(self, pair: str) -> np.ndarray:
        """The alignment diagonal A_ii of one pair (averaged over its head couples).

        Args:
            pair: exact pair name or unique substring (see `find_pair`).

        Returns:
            float64 [T_done, k_p] aligned with `steps`; rows of steps whose
            alignment is not computed yet are NaN (`section_steps`).
        """
        name = self.find_pair(pair)
        return self._section_rows("alignment", f"alignment/diagonal/{name}")

    def alignment_heads(self, pair: str) -> np.ndarray:
        """A_ii per head couple of a per-head pair, or per kernel tap (flat row-major
        order) of a pair with ``tap = "all"``: float64 [T_done, H, k_p] (H = 1: the
        diagonal itself)."""
        name = self.find_pair(pair)
        path = f"alignment/heads/{name}"
        if path not in self._file:
            return self.alignment(name)[:, None, :]
        return self._section_rows("alignment", path)

    def alignment_matrix(self, pair: str) -> np.ndarray:
        """The whole alignment matrix of one pair: float64 [T_done, k_p, k_p].

        Raises:
            StoreError: the store was analysed without --full-matrices.
        """
        name = self.find_pair(pair)
        return self._section_rows("alignment", self._full_path("alignment", name))

    def alignment_score(self, pair: str | None = None, top: int | None = None) -> np.ndarray:
        """The alignment score a(t): the mean of the first `top` diagonal entries.

        Args:
            pair: exact name or unique substring; None for every pair.
            top: entries averaged (None: the store's `score_top`, default 10).

        Returns:
            float64 [T_done] for one pair, [P, T_done] for all (forward order).
        """
        self._need_vectors("alignment")
        if top is None:
            data = self._section_rows("alignment", "alignment/score")  # [T_done, P]
            if pair is None:
                return np.ascontiguousarray(data.T)
            return data[:, self._pair_col[self.find_pair(pair)]].copy()
        names = list(self._pair_col) if pair is None else [self.find_pair(pair)]
        rows = [vecstore.head_mean(self.alignment(n), top) for n in names]
        return rows[0] if pair is not None else np.array(rows).reshape(len(names), -1)

    def agreement(self, matrix: str) -> np.ndarray:
        """The agreement diagonal S_ii of one matrix with the reference step.

        Args:
            matrix: exact name or unique substring.

        Returns:
            float64 [T_done, min(k, R)] aligned with `steps` (NaN rows where not
            computed yet).
        """
        self._need_vectors("agreement")
        name = self.find_matrix(matrix)
        return self._section_rows("agreement", f"agreement/diagonal/{name}")

    def agreement_matrix(self, matrix: str) -> np.ndarray:
        """The whole agreement matrix S_ik: float64 [T_done, k_m, k_m].

        Raises:
            StoreError: the store was analysed without --full-matrices.
        """
        self._need_vectors("agreement")
        name = self.find_matrix(matrix)
        return self._section_rows("agreement", self._full_path("agreement", name))

    def agreement_score(self, matrix: str | None = None, top: int | None = None) -> np.ndarray:
        """The agreement score s(t), like `alignment_score`: float64 [T_done] for one
        matrix, [M, T_done] for all."""
        self._need_vectors("agreement")
        if top is None:
            data = self._section_rows("agreement", "agreement/score")
            if matrix is None:
                return np.ascontiguousarray(data.T)
            return data[:, self._col[self.find_matrix(matrix)]].copy()
        names = self._matrices if matrix is None else [self.find_matrix(matrix)]
        rows = [vecstore.head_mean(self.agreement(n), top) for n in names]
        return rows[0] if matrix is not None else np.array(rows).reshape(len(names), -1)

    @property
    def training_log(self) -> TrainingLog | None:
        """Every training metric stored (`specdyn.types.TrainingLog`: steps int64 [L],
        values name → float64 [L] with NaN where not logged, sources), or None when the
        run has none (no metrics were found beside its checkpoints)."""
        try:
            return trainstore.read(self._file)
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise layout.damaged(self.path, exc) from None

    @property
    def training_names(self) -> list[str]:
        """Names of the stored training metrics (empty when there are none)."""
        log = self.training_log
        return [] if log is None else log.names

    def training(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One training metric at the steps where it was logged.

        Returns:
            (steps int64 [L_name], values float64 [L_name]); the steps need not be
            checkpoint steps.

        Raises:
            StoreError: no training metrics stored, or no metric `name` (the stored
                ones are listed).
        """
        log = self.training_log
        if log is None:
            raise StoreError(
                f"{self.path}: no training metrics stored; re-run specdyn analyze with "
                "--metrics LOG (a CSV or JSONL with a step column), or keep the trainer's "
                "logs beside the checkpoints"
            )
        if name not in log.values:
            raise StoreError(
                f"{self.path}: no training metric {name!r}; stored: {', '.join(log.names)}"
            )
        values = log.values[name]
        have = ~np.isnan(values)
        return log.steps[have].copy(), values[have].copy()

    def vectors(self, matrix: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The kept top-k singular vectors of one matrix at one step.

        Returns:
            (u float32 [out, k_m], v float32 [in, k_m]), columns in descending
            order of σ, signs arbitrary.

        Raises:
            StoreError: no vectors kept for that step (the steps kept are
                listed; `--save-vectors all` keeps every step).
        """
        self._need_vectors("vectors")
        name = self.find_matrix(matrix)
        kept = self.section_steps("vectors")
        slots = np.asarray(self._file["vectors/step"][()], dtype=np.int64)
        if int(step) not in set(kept.tolist()):
            listing = ", ".join(str(s) for s in kept[:10]) or "none"
            raise StoreError(
                f"{self.path}: no singular vectors kept for step {step} (kept: {listing}); "
                "re-run specdyn analyze with --save-vectors all to keep every step"
            )
        row = int(np.flatnonzero(slots == int(step))[0])
        return (
            self._file[f"vectors/u/{name}"][row],
            self._file[f"vectors/v/{name}"][row],
        )

    def _need_vectors(self, what: str) -> None:
        """StoreError when the store has no singular-vector sections."""
        if self._vl is None:
            raise StoreError(
                f"{self.path}: the store has no {what} (analysed with --values-only, or by "
                "an older specdyn); re-run specdyn analyze on its checkpoints without "
                "--values-only to add it (values are kept)"
            )

    def _full_path(self, section: str, name: str) -> str:
        """The path of a whole k×k matrix, or StoreError when not stored."""
        path = f"{section}/matrix/{name}"
        if path not in self._file:
            raise StoreError(
                f"{self.path}: whole {section} matrices are not stored; re-run specdyn "
                "analyze with --full-matrices"
            )
        return path

    def _section_rows(self, section: str, path: str) -> np.ndarray:
        """Rows of a per-step dataset for the done steps, NaN where `section` is not done."""
        done = np.asarray(self._file[f"{section}/done"][()], dtype=bool)[self._done_rows]
        data = self._file[path][()][self._done_rows]
        if not done.all():
            data = data.astype(np.float64, copy=True)
            data[~done] = np.nan
        return data

    def close(self) -> None:
        """Close the file (idempotent)."""
        f, self._f = self._f, None
        if f is not None:
            f.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {len(self._done_rows)}/{len(self._all_steps)} steps, {len(self._matrices)} matrices, {str(self.path)!r})"


def open_run(
    name_or_path: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Run:
    """Open a run's store for reading.

    Args:
        name_or_path: a run name in the workspace, or a store path; None for
            the workspace's only run (see `specdyn.workspace.resolve_run`).
        home: the workspace (``--home``; default ``$SPECDYN_HOME``, else
            ``./specdyn-runs``).

    Returns:
        The open `Run` (close it, or use it as a context manager).

    Raises:
        RunNotFoundError: no such run.
        StoreError: not an HDF5 file, not a specdyn store, a newer schema
            (upgrade specdyn or re-run analyze), or damaged.
    """
    return Run(resolve_run(name_or_path, home))
