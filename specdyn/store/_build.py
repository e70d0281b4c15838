"""Building a whole store file for a plan, and putting it in place of the store atomically.

Anything that changes a store's layout (new steps, a new vector layout, new training
metrics, ``overwrite``) builds a complete new file beside the store, copying the done
rows of the old one, and renames it over the store once it is durable; a reader or a
crash sees the old store or the new one, never a mix (docs/store.md, "Crash safety").
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from ..files import atomic_output
from ..metrics import fit_nan_step_notes, matrix_metrics
from ..version import __version__
from . import _checksums as checksums
from . import _describe as describe
from . import _hooks as hooks
from . import _layout as layout
from . import _training as trainstore
from . import _vectors as vecstore
from ._lock import WriterLock
from ._plan import StorePlan

__all__ = ["BuildReport", "build", "remove_partial_builds", "replace_with"]

# A file being built is hidden beside the store and named after it and the building
# process: `.<store name>.rebuild-<pid>.tmp` (docs/store.md, "Files in the workspace").
_REBUILD_INFIX = ".rebuild-"
_REBUILD_SUFFIX = ".tmp"


def _rebuild_name(path: Path) -> str:
    """The file name this process builds a new version of the store `path` under."""
    return f".{path.name}{_REBUILD_INFIX}{os.getpid()}{_REBUILD_SUFFIX}"


@dataclass
class BuildReport:
    """What a build computed rather than copied (store evolution, docs/store.md).

    added_metrics: the metrics the old store lacked, computed from its stored σ;
    rows: the done steps they were computed for; fit_nan: (matrix, reason) → those
    steps whose power-law fit gave NaN for that reason (`specdyn.metrics.FIT_REASONS`).
    """

    added_metrics: list[str] = field(default_factory=list)
    rows: int = 0
    fit_nan: Counter = field(default_factory=Counter)


def replace_with(
    path: Path,
    plan: StorePlan,
    old: h5py.File | None,
    lock: WriterLock,
    trusted: dict[str, np.ndarray] | None = None,
) -> BuildReport:
    """Build a complete store for `plan` in a temporary file beside `path` (copying the
    done steps of `old`), make it durable, then rename it over `path` atomically, the
    new file locked by `lock` before it appears there.

    trusted: for each row section of `old` ("values", "alignment", "agreement",
    "vectors", "flag", "provenance"), bool [rows]: the rows that may be copied (done and
    matching their checksums, `specdyn.store._checksums.scan`); None trusts the done flags.

    Returns:
        `BuildReport`: the metrics computed from the old store's σ (none for a fresh one).

    Raises:
        StoreError: the file could not be written or put in place (the store keeps
            what it held).
        StoreLockedError: another process created or replaced the store meanwhile.
    """
    try:
        with atomic_output(
            path, temp_name=_rebuild_name(path), replace=lambda new, _store: lock.replace_store(new)
        ) as temp:
            report = build(temp, plan, old, trusted)
    except (OSError, RuntimeError) as exc:
        raise StoreError(
            f"cannot write the store {path} ({layout.write_reason(exc)}); "
            + ("it is unchanged" if path.exists() else "nothing was written")
            + ": free disk space (or raise the file size limit, or make the folder writable) "
            f"and run the same command again, or use another {layout.HOME}",
            file=path,
        ) from None
    return report


def remove_partial_builds(path: Path) -> None:
    """Delete the files left by rebuilds of the store `path` that were killed (the caller
    holds the store's lock, so no build of it is running)."""
    prefix = f".{path.name}{_REBUILD_INFIX}"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(_REBUILD_SUFFIX):
            try:
                entry.unlink()
            except OSError:
                pass  # another leftover handling is not our business; the build uses its own name


@dataclass
class _Carried:
    """What a build takes over from the store it replaces (nothing for a fresh store).

    rows: int64 [N, 2], (new row, old row) of every done step copied; columns: for each
    matrix of the plan its column in the old file (None for a fresh store);
    provenance_used: the old file's provenance records, all kept.
    """

    old: h5py.File | None
    n_steps: int
    rows: np.ndarray
    columns: np.ndarray | None
    provenance_used: int

    def dataset(
        self,
        f: h5py.File,
        path: str,
        dtype: Any,
        fill: Any,
        shape_tail: tuple[int, ...] = (),
        by_matrix: bool = False,
    ) -> h5py.Dataset:
        """A new dataset [n_steps, *shape_tail] filled with `fill`, the done rows copied
        from the old file (columns matched by matrix name when `by_matrix`)."""
        ds = layout.new_dataset(f, path, (self.n_steps, *shape_tail), dtype)
        src = self.old[path] if self.old is not None and len(self.rows) else None
        layout.copy_rows(ds, src, self.rows, fill, self.columns if by_matrix else None)
        return ds


def _carried(
    plan: StorePlan,
    step_values: np.ndarray,
    old: h5py.File | None,
    trusted: dict[str, np.ndarray],
) -> _Carried:
    """What a build of `plan` (steps `step_values`, int64 [T]) copies from `old`."""
    n_steps = len(step_values)
    if old is None:
        return _Carried(None, n_steps, np.zeros((0, 2), dtype=np.int64), None, 0)
    old_steps = np.asarray(old[layout.STEPS_STEP][()], dtype=np.int64)
    old_done = trusted["values"]
    old_row = {int(s): i for i, s in enumerate(old_steps) if old_done[i]}
    rows = np.array(
        [(i, old_row[int(s)]) for i, s in enumerate(step_values) if int(s) in old_row],
        dtype=np.int64,
    ).reshape(-1, 2)
    old_col = {n: j for j, n in enumerate(layout.read_strings(old[layout.MATRICES_NAME]))}
    columns = np.array([old_col[m.name] for m in plan.matrices], dtype=np.int64)
    used = int(np.asarray(old[layout.PROVENANCE_USED][()], dtype=bool).sum())
    return _Carried(old, n_steps, rows, columns, used)


def build(
    target: Path,
    plan: StorePlan,
    old: h5py.File | None,
    trusted: dict[str, np.ndarray] | None = None,
) -> BuildReport:
    """Write a whole store file for `plan` at `target`; rows of `old`'s done steps (and
    its flags, provenance and training metrics) are copied, only those `trusted` allows
    (default: the done flags), metrics `old` lacks are computed from the copied σ, and
    every checksum of the new file is written last. Returns what was computed."""
    step_values = np.array([r.step for r in plan.steps], dtype=np.int64)
    trusted = _trusted_rows(old, trusted)
    carried = _carried(plan, step_values, old, trusted)
    with layout.open_h5(target, "w") as f:
        _write_attributes(f, plan)
        _write_step_table(f, plan, carried, step_values, trusted)
        _write_matrix_table(f, plan, carried)
        added = _write_values(f, plan, carried)
        report = _evolve_metrics(f, plan, carried, added)
        _write_left_out(f, plan)
        _write_provenance(f, plan, carried, trusted)
        # the done flags last: within the new file nothing is visible before the rename,
        # but keeping the order everywhere makes the invariant easy to check
        done = np.zeros(carried.n_steps, dtype=np.uint8)
        done[carried.rows[:, 0]] = 1
        if plan.vectors is not None:
            vecstore.build(
                f, plan.vectors, plan.matrices, step_values, old, done.astype(bool), trusted
            )
        if plan.training is not None:
            trainstore.write(f, plan.training)
        elif old is not None:
            trainstore.copy(old, f)
        layout.new_dataset(f, layout.STEPS_DONE, (carried.n_steps,), np.uint8)[...] = done
        # attributes and dimension scales are metadata: written here, once, and covered
        # by the static checksums like the rest of what the build writes
        describe.describe_file(f, plan.step_unit)
        checksums.seal(f)
        f.flush()
    return report


def _trusted_rows(
    old: h5py.File | None, trusted: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """The rows of each section of `old` a build may copy: `trusted` completed with the
    done flags of the sections it does not name (every flag for "flag")."""
    out: dict[str, np.ndarray] = {}
    if old is None:
        return out
    for section, done_path in checksums.ROW_SECTIONS.items():
        if trusted is not None and section in trusted:
            out[section] = np.asarray(trusted[section], dtype=bool)
        elif done_path is not None and done_path in old:
            out[section] = np.asarray(old[done_path][()]) != 0
        elif section == "flag" and layout.STEPS_FLAG in old:
            out[section] = np.ones(old[layout.STEPS_FLAG].shape[0], dtype=bool)
    return out


def _write_attributes(f: h5py.File, plan: StorePlan) -> None:
    """The root attributes (docs/store.md, "Root attributes"); "vectors" is the vector
    sections' own."""
    f.attrs["format"] = layout.FORMAT
    f.attrs["schema_version"] = layout.SCHEMA_VERSION
    f.attrs["run_name"] = plan.run_name
    f.attrs["source_root"] = layout.clean_text(plan.source_root)
    f.attrs["step_unit"] = plan.step_unit
    f.attrs["created"] = plan.created
    f.attrs["specdyn_version"] = __version__
    f.attrs["options"] = layout.canonical_json(plan.options)
    f.attrs["metric_names"] = json.dumps(plan.metric_names)


def _write_step_table(
    f: h5py.File,
    plan: StorePlan,
    carried: _Carried,
    step_values: np.ndarray,
    trusted: dict[str, np.ndarray],
) -> None:
    """``/steps`` but its done flags: the step records, and the notes, flags and
    invocations of the copied steps."""
    steps, n_steps = plan.steps, carried.n_steps
    f.create_group(layout.STEPS)
    layout.new_dataset(f, layout.STEPS_STEP, (n_steps,), np.int64)[...] = step_values
    epochs = [layout.EPOCH_UNKNOWN if r.epoch is None else int(r.epoch) for r in steps]
    epoch_ds = layout.new_dataset(f, layout.STEPS_EPOCH, (n_steps,), np.int64)
    epoch_ds[...] = np.array(epochs, dtype=np.int64)
    layout.vlen_strings(f, layout.STEPS_SOURCE, [r.source for r in steps])
    layout.vlen_strings(f, layout.STEPS_FORMAT, [r.format for r in steps])
    layout.vlen_strings(f, layout.STEPS_ORIGIN, [r.origin for r in steps])
    layout.new_dataset(f, layout.STEPS_SIZE, (n_steps,), np.int64)[...] = np.array(
        [r.size for r in steps], dtype=np.int64
    )
    layout.new_dataset(f, layout.STEPS_MTIME, (n_steps,), np.float64)[...] = np.array(
        [r.mtime for r in steps], dtype=np.float64
    )
    sha_ds = layout.new_dataset(f, layout.STEPS_SHA256, (n_steps,), layout.SHA256_DTYPE)
    sha_ds[...] = np.array(
        [layout.fixed_bytes(r.sha256, layout.SHA256_BYTES) for r in steps],
        dtype=layout.SHA256_DTYPE,
    )
    carried.dataset(f, layout.STEPS_NOTES, layout.NOTES_DTYPE, b"")
    # flags describe a step whether or not it is done (a failed download): all kept
    flags = np.zeros(n_steps, dtype=layout.FLAG_DTYPE)
    old = carried.old
    if old is not None and layout.STEPS_FLAG in old:
        # a flag damaged on disk is dropped, never carried into the new checksums
        kept = trusted.get("flag", np.ones(old[layout.STEPS_FLAG].shape[0], dtype=bool))
        old_flags = {
            step: flag
            for step, flag, ok in zip(
                old[layout.STEPS_STEP][()].tolist(),
                old[layout.STEPS_FLAG][()].tolist(),
                kept.tolist(),
                strict=True,
            )
            if ok
        }
        for i, step in enumerate(step_values.tolist()):
            flags[i] = old_flags.get(step, b"")
    layout.new_dataset(f, layout.STEPS_FLAG, (n_steps,), layout.FLAG_DTYPE)[...] = flags
    carried.dataset(f, layout.STEPS_INVOCATION, np.int32, layout.INVOCATION_NONE)


def _write_matrix_table(f: h5py.File, plan: StorePlan, carried: _Carried) -> None:
    """``/matrices``: the matrix records, and the methods of the copied steps."""
    mats, n_matrices = plan.matrices, len(plan.matrices)
    f.create_group(layout.MATRICES)
    layout.vlen_strings(f, layout.MATRICES_NAME, [m.name for m in mats])
    layout.vlen_strings(f, layout.MATRICES_PARAM, [m.param for m in mats])
    layout.vlen_strings(f, layout.MATRICES_KEY, [m.key for m in mats])
    layout.vlen_strings(f, layout.MATRICES_KIND, [m.kind for m in mats])
    layout.vlen_strings(f, layout.MATRICES_PART, [m.part or "" for m in mats])
    shape = np.array([tuple(m.shape) for m in mats], dtype=np.int64).reshape(n_matrices, 2)
    layout.new_dataset(f, layout.MATRICES_SHAPE, (n_matrices, 2), np.int64)[...] = shape
    layout.new_dataset(f, layout.MATRICES_RANK, (n_matrices,), np.int64)[...] = np.array(
        [m.rank for m in mats], dtype=np.int64
    )
    layout.vlen_strings(
        f,
        layout.MATRICES_SOURCE_SHAPE,
        [json.dumps([int(d) for d in m.source_shape]) for m in mats],
    )
    layout.vlen_strings(f, layout.MATRICES_SOURCE_DTYPE, [m.source_dtype for m in mats])
    carried.dataset(
        f, layout.MATRICES_METHOD, layout.METHOD_DTYPE, b"", (n_matrices,), by_matrix=True
    )


def _write_values(f: h5py.File, plan: StorePlan, carried: _Carried) -> list[str]:
    """``/sigma`` and ``/metrics``, NaN but for the copied steps; the metrics the old
    store lacks (all NaN here, computed by `_evolve_metrics`)."""
    f.create_group(layout.SIGMA)
    hold = os.environ.get(hooks.HOLD_REBUILD_ENV) if carried.old is not None else None
    for j, m in enumerate(plan.matrices):
        carried.dataset(f, layout.sigma_path(m.name), np.float64, np.nan, (m.rank,))
        if hold and j == 0:
            f.flush()
            hooks.hold_here(hold)
    f.create_group(layout.METRICS)
    n_matrices = len(plan.matrices)
    old = carried.old
    had = set(json.loads(layout.attr_str(old, "metric_names", "[]"))) if old is not None else None
    added = [] if had is None else [n for n in plan.metric_names if n not in had]
    for name in plan.metric_names:
        if name in added:
            shape = (carried.n_steps, n_matrices)
            layout.new_dataset(f, layout.metric_path(name), shape, np.float64, fill=np.nan)
        else:
            carried.dataset(
                f, layout.metric_path(name), np.float64, np.nan, (n_matrices,), by_matrix=True
            )
    return added


def _evolve_metrics(
    f: h5py.File, plan: StorePlan, carried: _Carried, added: list[str]
) -> BuildReport:
    """Fill the `added` metrics of the copied steps from their σ in the new file (no
    checkpoint read, nothing else recomputed); each step's NaN fits join its notes."""
    report = BuildReport(added_metrics=list(added), rows=len(carried.rows) if added else 0)
    if not added or not len(carried.rows):
        return report
    rows = np.sort(carried.rows[:, 0])
    columns = {name: f[layout.metric_path(name)][()] for name in added}  # [T, M], NaN
    reasons = np.full((len(rows), len(plan.matrices)), "", dtype=object)
    for j, m in enumerate(plan.matrices):
        sigma = f[layout.sigma_path(m.name)][()][rows]
        values, why = matrix_metrics(sigma, tuple(m.shape), names=added, return_reasons=True)
        for name in added:
            columns[name][rows, j] = values[name]
        reasons[:, j] = why
    for name in added:
        f[layout.metric_path(name)][...] = columns[name]
    notes = f[layout.STEPS_NOTES]
    names = [m.name for m in plan.matrices]
    for t, row in enumerate(rows.tolist()):
        by_matrix = {n: str(r) for n, r in zip(names, reasons[t], strict=True) if r}
        report.fit_nan.update(by_matrix.items())
        lines = fit_nan_step_notes(by_matrix)
        if lines:
            kept = _stored_notes(bytes(notes[row]))
            notes[row] = np.array(layout.notes_bytes(kept + lines), dtype=layout.NOTES_DTYPE)
    return report


def _stored_notes(raw: bytes) -> list[str]:
    """A notes slot as its list of lines (a slot that is not a JSON list kept as one line)."""
    text = raw.rstrip(b"\0").decode("utf-8", "replace")
    try:
        items = json.loads(text) if text else []
    except ValueError:
        return [text]
    return [str(n) for n in items] if isinstance(items, list) else [text]


def _write_left_out(f: h5py.File, plan: StorePlan) -> None:
    """``/skipped`` (parameters not analysed), ``/aliases`` (tied weights) and
    ``/problems`` (checkpoints not analysed)."""
    f.create_group(layout.SKIPPED)
    layout.vlen_strings(f, layout.SKIPPED_PARAM, [p for p, _ in plan.skipped])
    layout.vlen_strings(f, layout.SKIPPED_REASON, [r for _, r in plan.skipped])
    f.create_group(layout.ALIASES)
    layout.vlen_strings(f, layout.ALIASES_ALIAS, list(plan.aliases))
    layout.vlen_strings(f, layout.ALIASES_TARGET, list(plan.aliases.values()))
    if plan.problems:  # absent when every checkpoint found was analysed
        f.create_group(layout.PROBLEMS)
        layout.vlen_strings(f, layout.PROBLEMS_SOURCE, [p.source for p in plan.problems])
        layout.vlen_strings(f, layout.PROBLEMS_KIND, [p.kind for p in plan.problems])
        layout.vlen_strings(f, layout.PROBLEMS_MESSAGE, [p.message for p in plan.problems])


def _write_provenance(
    f: h5py.File, plan: StorePlan, carried: _Carried, trusted: dict[str, np.ndarray]
) -> None:
    """``/provenance``: the old records kept (one damaged on disk replaced by a record
    saying so), free slots for the writers to come."""
    used_before = carried.provenance_used
    slots = max(plan.provenance_slots, used_before + 1)
    f.create_group(layout.PROVENANCE)
    record = layout.new_dataset(
        f, layout.PROVENANCE_RECORD, (slots,), layout.PROVENANCE_DTYPE, fill=b""
    )
    used = layout.new_dataset(f, layout.PROVENANCE_USED, (slots,), np.uint8, fill=0)
    if used_before:
        records = carried.old[layout.PROVENANCE_RECORD][:used_before]
        kept = trusted.get("provenance", np.ones(used_before, dtype=bool))[:used_before]
        records[~kept] = layout.provenance_bytes(_DAMAGED_RECORD)
        record[:used_before] = records
        used[:used_before] = 1


# What replaces a provenance record that was damaged on disk when the store is rebuilt.
_DAMAGED_RECORD = {"unreadable": "this provenance record was damaged on disk and replaced"}
