"""The single writer of one store: `StoreWriter` opens (creates, resumes or grows) a store
under its lock and writes one step at a time, crash-safely.

A store is created with every dataset allocated at full size for its known steps, so that
writing a step only writes raw bytes into space that already exists (no HDF5 metadata
changes); a step counts as done only once its flag in ``/steps/done`` is set, after its
data is durable and read back. Anything that changes the layout is a rebuild
(`specdyn.store._build`). One writer per store is enforced by `WriterLock`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, StoreWriteError
from ..metrics import METRIC_NAMES, fit_nan_note
from ..types import TrainingLog
from . import _checksums as checksums
from . import _hooks as hooks
from . import _layout as layout
from . import _vectors as vecstore
from ._build import BuildReport, remove_partial_builds, replace_with
from ._lock import WriterLock
from ._plan import StorePlan, check_compatible, read_contents, requested_plan, updated_plan
from ._records import CheckpointProblem, MatrixRecord, StepRecord, read_matrix_records
from ._vectors import StepVectors, VectorLayout

__all__ = ["StoreWriter", "integrity_notes", "write_row"]


class StoreWriter:
    """The single writer of one store (use `StoreWriter.open`; a context manager).

    Attributes:
        path: the store file.
        changed_steps: ``(step, old source path, what changed)`` for each
            requested step already in the store whose checkpoint now has another
            size or content hash (or, with no hash on either side, another
            mtime). Its stored numbers are kept, not recomputed or mixed.
        vector_changes: one line per change of the singular-vector layout that
            `open` made (what is recomputed).
        integrity_notes: (kind, line) for what `open` found checking the store's
            checksums: ``"store-damage"`` for rows damaged on disk (marked not done, so
            computed again), ``"store-upgrade"`` when checksums (schema 3) or the
            datasets' attributes and dimension scales (schema 4) were added to a store
            written before them.
        metric_changes: (kind, line) for the metrics `open` added to a store written
            without them, computed from its stored σ (store evolution): one
            ``"store-upgrade"`` line naming them, and one ``"heavy-tail-nan"`` line per
            (matrix, reason) whose power-law fit gave NaN at some of those steps.
        metric_rows, metric_fit_nan: the same as numbers: how many done steps the added
            metrics were computed for, and (matrix, reason) → how many of them gave NaN
            (for a caller that sums them with steps it computes itself).
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
        steps = np.asarray(f[layout.STEPS_STEP][()], dtype=np.int64)
        self._index = {int(s): i for i, s in enumerate(steps)}
        self._done = np.asarray(f[layout.STEPS_DONE][()], dtype=bool)
        self._requested = sorted(set(int(s) for s in requested))
        self._matrices = layout.read_strings(f[layout.MATRICES_NAME])
        self._ranks = [int(r) for r in f[layout.MATRICES_RANK][()]]
        self._metric_names = list(json.loads(layout.attr_str(f, "metric_names")))
        self._sigma = [f[layout.sigma_path(name)] for name in self._matrices]
        self._metrics = [f[layout.metric_path(name)] for name in self._metric_names]
        self._method = f[layout.MATRICES_METHOD]
        self._notes = f[layout.STEPS_NOTES]
        self._invocation = f[layout.STEPS_INVOCATION]
        self._done_ds = f[layout.STEPS_DONE]
        self._slot = layout.INVOCATION_NONE
        self.vector_changes: list[str] = []
        self.integrity_notes: list[tuple[str, str]] = []
        self.metric_changes: list[tuple[str, str]] = []
        self.metric_rows = 0
        self.metric_fit_nan: dict[tuple[str, str], int] = {}
        self._checksum_paths = {
            section: layout.read_strings(f[checksums.table_path(section, "datasets")])
            for section in checksums.ROW_SECTIONS
            if checksums.table_path(section, "datasets") in f
        }
        self._records = read_matrix_records(f)
        self._vl = vecstore.read_layout(f)
        self._section_done: dict[str, np.ndarray] = {}
        self._slot_index: dict[int, int] = {}
        if self._vl is not None:
            for section in layout.VECTOR_SECTIONS:
                done = f[layout.done_path(section)][()]
                self._section_done[section] = np.asarray(done, dtype=bool)
            slots = np.asarray(f[layout.VECTORS_STEP][()], dtype=np.int64)
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
        problems: Sequence[CheckpointProblem] | None = None,
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
            metric_names: the scalar metrics given to `write_step` per matrix. A store
                that lacks some of them, all names of
                `specdyn.metrics.STORED_METRIC_NAMES`, is rebuilt with them computed from
                its stored σ for every done step (`metric_changes`); a store holding
                other metrics is refused.
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
            problems: the run's checkpoints that could not be analysed
                (`CheckpointProblem`: unreadable, unsafe, no step), stored under
                ``/problems`` so that listings do not call the store complete; None
                keeps what the store has. Another list than the stored one rebuilds
                the store (never written in place).

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
        request = requested_plan(
            run_name=run_name,
            source_root=source_root,
            step_unit=step_unit,
            steps=steps,
            matrices=matrices,
            skipped=skipped,
            aliases=aliases,
            options=options,
            metric_names=metric_names,
            vectors=vectors,
            training=training,
            problems=problems,
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the workspace folder {path.parent} ({exc.strerror}); "
                f"use another {layout.HOME}",
                file=path.parent,
                option="home",
            ) from None
        lock = WriterLock.acquire(path)
        try:
            remove_partial_builds(path)
            changed, vector_changes, notes, report = _bring_in_line(path, request, overwrite, lock)
            writer = cls._attach(path, lock, request, changed, vector_changes)
            writer.integrity_notes = notes
            writer.metric_changes = _metric_notes(report, step_unit)
            writer.metric_rows, writer.metric_fit_nan = report.rows, dict(report.fit_nan)
        except BaseException:
            lock.release()
            raise
        try:
            writer._append_provenance(dict(provenance))
        except BaseException:
            writer.close()
            raise
        return writer

    @classmethod
    def _attach(
        cls,
        path: Path,
        lock: WriterLock,
        request: StorePlan,
        changed: list[tuple[int, str, str]],
        vector_changes: list[str],
    ) -> StoreWriter:
        """The writer of the prepared store at `path` (opened for writing)."""
        try:
            f = layout.open_h5(path, "r+")
        except OSError as exc:
            raise StoreError(
                f"cannot open {path} for writing ({layout.h5_reason(exc)}); close other "
                "handles on it in this process (open_run) and check its permissions"
            ) from None
        try:
            writer = cls(path, lock, f, [r.step for r in request.steps], changed)
        except BaseException:
            f.close()
            raise
        writer.vector_changes = vector_changes
        return writer

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
        if section not in layout.VECTOR_SECTIONS:
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
                        f[layout.STEPS_SHA256],
                        i,
                        np.array(
                            layout.fixed_bytes(sha256, layout.SHA256_BYTES), layout.SHA256_DTYPE
                        ),
                    )
                )
        data += [(f[path], row, value) for path, row, value in vector_rows]
        written = ([("values", i)] if value_rows is not None else []) + sections
        data += self._checksum_rows(data, written)
        flags = [(self._done_ds, i, np.uint8(1))] if value_rows is not None else []
        flags += [(f[layout.done_path(section)], row, np.uint8(1)) for section, row in sections]
        # 1. the data, durable and read back from the file; 2. only then the flags,
        # durable and read back: a done flag on disk always has its data beside it
        hold = os.environ.get(hooks.HOLD_WRITE_ENV) if value_rows is not None else None
        self._commit([data, flags], f"write step {step}", hold=hold, resume=True)
        if value_rows is not None:
            self._done[i] = True
        for section, row in sections:
            self._section_done[section][row] = True

    def _checksum_rows(
        self, data: Sequence[tuple[h5py.Dataset, int, Any]], sections: Sequence[tuple[str, int]]
    ) -> list[tuple[h5py.Dataset, int, np.ndarray]]:
        """The checksum-table rows of the sections a write covers (section, row): one digest
        per dataset of the section, of the value written (or, for a dataset the write
        leaves as it is, such as a sha256 known at open, of the stored row)."""
        written = {ds.name.lstrip("/"): value for ds, _, value in data}
        out = []
        for section, row in sections:
            paths = self._checksum_paths[section]
            digests = np.empty(len(paths), dtype=np.uint64)
            for j, path in enumerate(paths):
                ds = self._f[path]
                value = written[path] if path in written else ds[row]
                digests[j] = checksums.value_digest(ds, value)
            out.append((self._f[checksums.table_path(section)], row, digests))
        return out

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
                        hooks.hold_here(hold)
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
        for section in layout.VECTOR_SECTIONS:
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
        i = self._index[int(step)]
        row = (self._f[layout.STEPS_FLAG], i, np.array(data, layout.FLAG_DTYPE))
        (digest,) = self._checksum_rows([row], [("flag", i)])
        cleared = (digest[0], i, np.zeros(1, dtype=np.uint64))
        # digest 0 first ("being rewritten"), then the flag, then its digest: a kill in
        # between leaves a flag readers accept unchecked, never one that reads as damaged
        self._commit([[cleared], [row], [digest]], f"flag step {step}")

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
        used = np.asarray(self._f[layout.PROVENANCE_USED][()], dtype=bool)
        free = np.flatnonzero(~used)
        slot = int(free[0])  # open() rebuilt the file with more slots if none was free
        data = np.array(layout.provenance_bytes(record), dtype=layout.PROVENANCE_DTYPE)
        record_row = (self._f[layout.PROVENANCE_RECORD], slot, data)
        used_row = (self._f[layout.PROVENANCE_USED], slot, np.uint8(1))
        (digest,) = self._checksum_rows([record_row], [("provenance", slot)])
        self._commit([[record_row, digest], [used_row]], "record this run in the store")
        self._slot = slot


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


def _bring_in_line(
    path: Path, request: StorePlan, overwrite: bool, lock: WriterLock
) -> tuple[list[tuple[int, str, str]], list[str], list[tuple[str, str]], BuildReport]:
    """Create, check or rebuild the store at `path` so that it can take `request` (the
    lock is held): (the changed done steps, the changes of the vector layout, what the
    checksums showed, what the rebuild computed from σ). Rows damaged on disk are left
    out of the rebuilt file, so that they are computed again; damaged built content is
    refused (only overwrite helps)."""
    if overwrite or not path.exists():
        if path.exists():
            _refuse_foreign(path)
        replace_with(path, request, old=None, lock=lock)
        return [], [], [], BuildReport()
    with _open_existing(path) as old:
        found = _scan(old, path)
        stored = read_contents(old, path)
        trusted_values = found.trusted.get("values")
        if trusted_values is not None:
            stored.done = {
                r.step: bool(t) for r, t in zip(stored.plan.steps, trusted_values, strict=False)
            }
        check_compatible(path, stored.plan, request)
        plan, changed, vector_changes = updated_plan(stored, request, force=bool(found.damage))
        report = BuildReport()
        if plan is not None:
            report = replace_with(path, plan, old=old, lock=lock, trusted=found.trusted)
    return changed, vector_changes, integrity_notes(found, stored.schema), report


def _metric_notes(report: BuildReport, unit: str) -> list[tuple[str, str]]:
    """(kind, line) for the metrics a rebuild added (`StoreWriter.metric_changes`)."""
    if not report.added_metrics:
        return []
    lines = [
        (
            "store-upgrade",
            f"{len(report.added_metrics)} metrics added to a store written without them "
            f"({layout.few(report.added_metrics, 4)}), computed from the stored σ of its "
            f"{report.rows} done {unit}(s); no checkpoint read, nothing else recomputed",
        )
    ]
    lines += [
        ("heavy-tail-nan", fit_nan_note(matrix, reason, n, report.rows, unit))
        for (matrix, reason), n in sorted(report.fit_nan.items())
    ]
    return lines


def _scan(old: h5py.File, path: Path) -> checksums.FileScan:
    """The checksums of an existing store checked; StoreDamagedError when content written
    at build is damaged (no re-run can recompute it)."""
    try:
        found = checksums.scan(old)
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise layout.damaged(path, exc) from None
    if found.static_damage:
        raise checksums.damaged_error(path, found.static_damage)
    return found


def integrity_notes(found: checksums.FileScan, schema: int) -> list[tuple[str, str]]:
    """(kind, line) for what a writer's check of the checksums found (see
    `StoreWriter.integrity_notes`)."""
    notes = [
        ("store-damage", f"damaged on disk: {line}; {checksums.fate(first)}")
        for first, line in checksums.damage_by_row(found.damage)
    ]
    if not found.checked:
        notes.append(
            (
                "store-upgrade",
                f"checksums added to a store of schema {schema}: the steps it held are "
                "trusted as they were; from now on damage on disk is detected",
            )
        )
    if schema < layout.DESCRIBED_SCHEMA:
        notes.append(
            (
                "store-upgrade",
                f"a store of schema {schema} upgraded to {layout.SCHEMA_VERSION}: every "
                "dataset now has description, units and dims attributes, and the step, "
                "matrix and pair axes dimension scales (docs/store.md); no value recomputed",
            )
        )
    return notes


def _open_existing(path: Path) -> h5py.File:
    """Open an existing store for a writer, with errors saying how to proceed."""
    try:
        f = layout.open_h5(path, "r")
    except OSError as exc:
        raise StoreError(
            f"{path} exists but is not a readable HDF5 file ({layout.h5_reason(exc)}); "
            f"use {layout.OVERWRITE} to replace it or choose another {layout.NAME}",
            file=path,
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
            f"untouched: move it away or choose another {layout.NAME}",
            file=path,
        )
