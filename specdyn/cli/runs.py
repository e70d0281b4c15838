"""`specdyn runs`: the runs in the workspace."""

from __future__ import annotations

import os

from ..store import list_runs, resolve_home
from ._options import HomeOption, JsonOption
from ._output import Output


def runs_command(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """List the runs (stores) in the workspace."""
    out = Output(json_mode=json_out)
    runs = list_runs(home)
    if out.json_mode:
        out.json(runs)
        return
    folder = resolve_home(home)
    if not runs:
        out.line(
            f"no runs in {folder}; create one with: specdyn analyze PATH --home {folder}", err=True
        )
        return
    out.table(
        f"runs in {folder}",
        ("name", "steps", "matrices", "vectors", "status", "modified", "path"),
        ((r.name, _steps(r), r.matrices, r.vectors, r.status, r.modified, r.path) for r in runs),
    )


def _short_path(path) -> str:
    """The path relative to the current folder when that is shorter."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def _steps(r) -> str:
    """'done/total' steps of a run summary."""
    return f"{r.steps_done}/{r.steps_total}"
