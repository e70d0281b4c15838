"""Listing the workspace: one `RunSummary` per store, read through `Run` (the listing
names no path inside a store)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import _layout as layout
from ._lock import is_being_written
from ._reader import Run
from ._workspace import STORE_SUFFIX, resolve_home, store_files

__all__ = ["RunSummary", "list_runs"]


@dataclass(frozen=True)
class RunSummary:
    """One store of the workspace, as `list_runs` sees it.

    name: the run name (file name without ``.h5``); path: the store file;
    steps_done / steps_total: finished and known steps; matrices: number of
    matrices; schema_version: the store's schema (None when unreadable);
    modified: the file's last modification, local time ``YYYY-MM-DD HH:MM:SS``;
    status: ``"complete"``, ``"partial"`` (steps still pending, e.g. after an
    interrupted analyze), ``"N unreadable checkpoint(s)"`` (every step found is done
    but N checkpoints of the run could not be analysed: `Run.problems`; ``"partial, N
    unreadable checkpoint(s)"`` when both), ``"being
    written"`` (a specdyn process holds its writer lock now) or ``"unreadable:
    <why>"`` (the store itself); problems: the number of checkpoints not analysed;
    vectors: ``"values only"``,
    ``"top K"`` (alignment and agreement done for every done step) or ``"top K,
    partial"`` (some done steps still lack them; re-run analyze), "" when unreadable.
    """

    name: str
    path: str
    steps_done: int
    steps_total: int
    matrices: int
    schema_version: int | None
    modified: str
    status: str
    vectors: str = ""
    problems: int = 0


def list_runs(home: str | os.PathLike[str] | None = None) -> list[RunSummary]:
    """Every store in the workspace, sorted by name; never raises for one bad file.

    Args:
        home: the workspace (see `resolve_home`); a missing folder gives [].

    Returns:
        One `RunSummary` per ``*.h5`` file directly in the workspace; a file
        that cannot be read as a specdyn store gets status ``"unreadable: …"``.
    """
    return [_summarize(p) for p in store_files(resolve_home(home))]


def _summarize(path: Path) -> RunSummary:
    """A `RunSummary` of one store file (unreadable files included)."""
    name = path.name[: -len(STORE_SUFFIX)]
    try:
        modified = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    except OSError:
        modified = ""
    try:
        with Run(path) as run:
            try:
                steps_done, steps_total = run.values.steps.size, run.values.all_steps.size
                n_matrices = len(run.values.matrices)
                vectors = _vectors_state(run)
                problems = len(run.problems)
            except (KeyError, OSError, ValueError, TypeError) as exc:
                raise layout.damaged(path, exc) from None
    except Exception as exc:  # StoreError, or anything else: list_runs lists every file
        return RunSummary(name, str(path), 0, 0, 0, None, modified, f"unreadable: {exc}")
    if is_being_written(path):
        status = "being written"
    else:
        status = "complete" if steps_done == steps_total else "partial"
        if problems:
            lost = f"{problems} unreadable checkpoint{'s' if problems > 1 else ''}"
            status = lost if status == "complete" else f"{status}, {lost}"
    return RunSummary(
        name=name,
        path=str(path),
        steps_done=int(steps_done),
        steps_total=int(steps_total),
        matrices=n_matrices,
        schema_version=run.schema_version,
        modified=modified,
        status=status,
        vectors=vectors,
        problems=problems,
    )


def _vectors_state(run: Run) -> str:
    """ "values only", "top K" or "top K, partial" for an open run."""
    config = run.vectors.config
    if config is None:
        return "values only"
    done = run.values.steps.size
    complete = run.alignment.steps.size == done and run.agreement.steps.size == done
    return f"top {int(config['k'])}" + ("" if complete else ", partial")
