"""What a store file is built from (`StorePlan`), what an existing store holds, and how a
writer's request is checked and reconciled with it: refused, written in place, or
rebuilt with the union of both."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreMismatchError
from ..metrics import STORED_METRIC_NAMES
from ..types import TrainingLog
from . import _layout as layout
from . import _training as trainstore
from . import _vectors as vecstore
from ._records import (
    CheckpointProblem,
    MatrixRecord,
    StepRecord,
    read_matrix_records,
    read_problems,
    read_step_records,
)
from ._vectors import VectorLayout

__all__ = [
    "StoreContents",
    "StorePlan",
    "added_metrics",
    "check_compatible",
    "read_contents",
    "requested_plan",
    "updated_plan",
]


@dataclass
class StorePlan:
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
    # None in a request: keep the store's (a writer that does not discover checkpoints)
    problems: list[CheckpointProblem] | None = field(default_factory=list)


@dataclass
class StoreContents:
    """What an existing store holds, read once when a writer opens it."""

    plan: StorePlan
    schema: int
    done: dict[int, bool]
    provenance_used: int


def requested_plan(
    *,
    run_name: str,
    source_root: str,
    step_unit: str,
    steps: Sequence[StepRecord],
    matrices: Sequence[MatrixRecord],
    skipped: Sequence[tuple[str, str]],
    aliases: Mapping[str, str],
    options: Mapping[str, object],
    metric_names: Sequence[str],
    vectors: VectorLayout | None,
    training: TrainingLog | None,
    problems: Sequence[CheckpointProblem] | None = None,
) -> StorePlan:
    """The plan of a fresh store for a writer's request (`StoreWriter.open`'s arguments),
    checked; `vectors`, `training` and `problems` None mean "keep what the store has".

    Raises:
        ValueError: duplicate steps, duplicate or invalid matrix or metric names, an
            unusable vector layout.
    """
    records = _checked_steps(steps)
    mats = _checked_matrices(matrices)
    metrics = _checked_metric_names(metric_names)
    if vectors is not None:
        _check_vector_layout(vectors, mats)
    return StorePlan(
        run_name=str(run_name),
        source_root=str(source_root),
        step_unit=str(step_unit),
        created=layout.now_iso(),
        options=json.loads(layout.canonical_json(dict(options))),
        metric_names=metrics,
        steps=records,
        matrices=mats,
        skipped=[(str(p), str(r)) for p, r in skipped],
        aliases={str(k): str(v) for k, v in aliases.items()},
        provenance_slots=layout.PROVENANCE_SLOTS,
        vectors=vectors,
        training=training,
        problems=None if problems is None else _checked_problems(problems),
    )


def updated_plan(
    stored: StoreContents, request: StorePlan, force: bool = False
) -> tuple[StorePlan | None, list[tuple[int, str, str]], list[str]]:
    """What an existing (compatible) store becomes for a writer's request (`force`:
    rebuild it even when it could be written in place, to drop rows damaged on disk).

    Returns:
        (the plan to rebuild the store with, or None when it is written in place;
        ``(step, old source, what changed)`` of every requested done step whose
        checkpoint changed; one line per change of the vector layout).
    """
    merged, changed, grow = _merge_steps(stored, request.steps)
    old_vectors = stored.plan.vectors
    wanted = old_vectors if request.vectors is None else request.vectors
    vector_changes = [] if request.vectors is None else vecstore.changes(old_vectors, wanted)
    training = stored.plan.training
    new_training = False
    if request.training is not None:
        training = request.training.over(stored.plan.training)
        new_training = not training.same_as(stored.plan.training)
    problems = stored.plan.problems if request.problems is None else request.problems
    rebuild = (
        force
        or grow
        or bool(added_metrics(stored.plan, request))
        or new_training
        or problems != stored.plan.problems
        or wanted != old_vectors
        or stored.schema < layout.SCHEMA_VERSION
        or stored.provenance_used >= stored.plan.provenance_slots
    )
    if not rebuild:
        return None, changed, vector_changes
    plan = replace(
        request,
        created=stored.plan.created,
        steps=merged,
        vectors=wanted,
        training=training,
        problems=problems,
        provenance_slots=max(layout.PROVENANCE_SLOTS, 2 * stored.provenance_used),
    )
    return plan, changed, vector_changes


def read_contents(f: h5py.File, path: Path) -> StoreContents:
    """The content of an existing store (everything but the per-step numbers).

    Raises:
        StoreError: the store is damaged.
    """
    try:
        steps = read_step_records(f)
        done = np.asarray(f[layout.STEPS_DONE][()], dtype=bool)
        plan = StorePlan(
            run_name=layout.attr_str(f, "run_name"),
            source_root=layout.attr_str(f, "source_root"),
            step_unit=layout.attr_str(f, "step_unit"),
            created=layout.attr_str(f, "created"),
            options=json.loads(layout.attr_str(f, "options", "{}")),
            metric_names=list(json.loads(layout.attr_str(f, "metric_names", "[]"))),
            steps=steps,
            matrices=read_matrix_records(f),
            skipped=layout.read_string_pairs(f, layout.SKIPPED_PARAM, layout.SKIPPED_REASON),
            aliases=dict(layout.read_string_pairs(f, layout.ALIASES_ALIAS, layout.ALIASES_TARGET)),
            provenance_slots=int(f[layout.PROVENANCE_USED].shape[0]),
            vectors=vecstore.read_layout(f),
            training=trainstore.read(f),
            problems=read_problems(f),
        )
        used = np.asarray(f[layout.PROVENANCE_USED][()], dtype=bool)
        schema = int(f.attrs["schema_version"])
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise layout.damaged(path, exc) from None
    return StoreContents(
        plan=plan,
        schema=schema,
        done={r.step: bool(d) for r, d in zip(steps, done, strict=True)},
        provenance_used=int(used.sum()),
    )


def check_compatible(path: Path, stored: StorePlan, request: StorePlan) -> None:
    """StoreMismatchError when the store cannot take these checkpoints without overwrite."""
    if stored.source_root != request.source_root and os.path.realpath(
        stored.source_root
    ) != os.path.realpath(request.source_root):
        raise StoreMismatchError(
            f"store {path} holds run {stored.run_name!r} of {stored.source_root}, not of "
            f"{request.source_root}; use {layout.NAME} to keep both runs or "
            f"{layout.OVERWRITE} to replace it",
            file=path,
        )
    if stored.step_unit != request.step_unit:
        raise StoreMismatchError(
            f"store {path} counts {stored.step_unit}s but these checkpoints count "
            f"{request.step_unit}s; use {layout.OVERWRITE} to recompute or {layout.NAME} "
            "for a separate store",
            file=path,
        )
    if stored.options != request.options:
        keys = sorted(set(stored.options) | set(request.options))
        diffs = [
            f"{k}: {stored.options.get(k, '(unset)')!r} in the store, {request.options.get(k, '(unset)')!r} now"
            for k in keys
            if stored.options.get(k, "(unset)") != request.options.get(k, "(unset)")
        ]
        raise StoreMismatchError(
            f"store {path} was made with other options ({'; '.join(diffs)}); "
            f"use {layout.OVERWRITE} to recompute",
            file=path,
        )
    _check_metrics(path, stored, request)
    moved = _moved_checkpoints(stored.steps, request.steps)
    if moved:
        source, old, new = moved[0]
        more = f" and {len(moved) - 1} more" if len(moved) > 1 else ""
        raise StoreMismatchError(
            f"store {path} holds {source} at {stored.step_unit} {old}, which these checkpoints "
            f"put at {new}{more} (how steps are found: docs/runs.md#step-of-a-checkpoint); use "
            f"{layout.OVERWRITE} to recompute on the new step axis or {layout.NAME} for a "
            "separate store",
            file=path,
        )
    problems = _matrix_differences(stored.matrices, request.matrices)
    if problems:
        raise StoreMismatchError(
            f"store {path} has other matrices than these checkpoints ({'; '.join(problems[:5])}); "
            f"use {layout.OVERWRITE} to recompute or {layout.NAME} for a separate store",
            file=path,
        )


def added_metrics(stored: StorePlan, request: StorePlan) -> list[str]:
    """The metrics a request adds to a compatible store, in the request's order: computed
    from the stored σ when the store is rebuilt (docs/store.md#store-evolution)."""
    have = set(stored.metric_names)
    return [n for n in request.metric_names if n not in have]


def _check_metrics(path: Path, stored: StorePlan, request: StorePlan) -> None:
    """StoreMismatchError unless the store's metrics are the request's, or some of them
    with the rest computable from σ (`STORED_METRIC_NAMES`, added at the rebuild)."""
    wanted = set(request.metric_names)
    extra = [n for n in stored.metric_names if n not in wanted]
    unknown = [n for n in extra if n not in STORED_METRIC_NAMES]
    if unknown:
        raise StoreMismatchError(
            f"store {path} holds metrics this specdyn does not know ({layout.few(unknown)}): "
            f"it was written by a newer specdyn; upgrade specdyn, or use {layout.OVERWRITE} "
            "to recompute it with this one",
            file=path,
        )
    missing = [n for n in added_metrics(stored, request) if n not in STORED_METRIC_NAMES]
    if extra or missing:
        raise StoreMismatchError(
            f"store {path} holds metrics {stored.metric_names}, this writer computes "
            f"{request.metric_names}; use {layout.OVERWRITE} to recompute",
            file=path,
        )


def _moved_checkpoints(
    stored: Sequence[StepRecord], request: Sequence[StepRecord]
) -> list[tuple[str, int, int]]:
    """(source, stored step, requested step) of each checkpoint the store holds at another
    step than the request gives it (the step rule changed, e.g. Accelerate's save indices
    read as steps by an earlier specdyn): extending the store would mix two step axes."""
    now = {r.source: r.step for r in request if r.source}
    return [
        (r.source, r.step, now[r.source]) for r in stored if now.get(r.source, r.step) != r.step
    ]


def _matrix_differences(
    stored: Sequence[MatrixRecord], request: Sequence[MatrixRecord]
) -> list[str]:
    """One line per matrix missing, new or viewed differently now."""
    old = {m.name: m for m in stored}
    new = {m.name: m for m in request}
    problems = []
    gone = [n for n in old if n not in new]
    added = [n for n in new if n not in old]
    if gone:
        problems.append(f"missing now: {layout.few(gone)}")
    if added:
        problems.append(f"new: {layout.few(added)}")
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
    return problems


def _checked_steps(steps: Sequence[StepRecord]) -> list[StepRecord]:
    """The step records sorted by step; ValueError on a duplicate step."""
    records = sorted(steps, key=lambda r: int(r.step))
    seen = Counter(int(r.step) for r in records)
    dupes = sorted(s for s, n in seen.items() if n > 1)
    if dupes:
        raise ValueError(f"steps given more than once: {dupes[:10]}")
    return records


def _checked_problems(problems: Sequence[CheckpointProblem]) -> list[CheckpointProblem]:
    """The problems as records of strings, one per source, in source order."""
    by_source = {}
    for p in problems:
        by_source.setdefault(
            str(p.source), CheckpointProblem(str(p.source), str(p.kind), str(p.message))
        )
    return [by_source[s] for s in sorted(by_source)]


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


def _merge_steps(
    stored: StoreContents, records: Sequence[StepRecord]
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
            elif not old.origin and rec.origin:
                # a store from before step origins were recorded learns them at its next rebuild
                merged[rec.step] = replace(old, origin=rec.origin)
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
