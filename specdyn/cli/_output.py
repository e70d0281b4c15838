"""The one output layer of the CLI: progress bars, tables, warnings and `--json`.

Tables and JSON go to stdout; progress, warnings and errors to stderr, so that
`specdyn ... --json | jq` stays clean.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .._types import Note
from ..analyze import Progress as ProgressEvent

# Notes the user must act on are shown in red, the rest in yellow.
_SERIOUS = {"unsafe-pickle", "corrupt", "unreadable", "changed-source", "nonfinite"}

# Kinds that inform rather than warn (what was decided and why): shown as "note".
_INFO = {"pairs", "reference", "vectors"}


class Output:
    """Renders results for humans (rich) or machines (`--json`)."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.out = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    @contextmanager
    def analysis_progress(self) -> Iterator[callable]:
        """A callback for `analyze(on_progress=...)` that drives one bar per run."""
        if self.quiet or self.json_mode:
            yield lambda event: None
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("step {task.fields[step]} ({task.fields[step_pos]})"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        )
        tasks: dict[str, int] = {}

        def update(event: ProgressEvent) -> None:
            if event.phase == "hashing":
                key = f"{event.run} (hashing)"
                if key not in tasks:
                    tasks[key] = progress.add_task(
                        f"{escape(event.run)} hashing", total=event.n_steps, step="", step_pos=""
                    )
                progress.update(
                    tasks[key],
                    completed=event.step_index + 1,
                    step=event.step,
                    step_pos=f"{event.step_index + 1}/{event.n_steps}",
                )
                return
            if event.phase == "reference":
                key = f"{event.run} (reference)"
                if key not in tasks:
                    tasks[key] = progress.add_task(
                        f"{escape(event.run)} reference",
                        total=event.n_matrices,
                        step="",
                        step_pos="",
                    )
                progress.update(
                    tasks[key], completed=event.matrices_done, step=event.step, step_pos="first"
                )
                return
            total = event.n_steps * event.n_matrices
            if event.run not in tasks:
                tasks[event.run] = progress.add_task(
                    escape(event.run), total=total, step="", step_pos=""
                )
            progress.update(
                tasks[event.run],
                completed=event.step_index * event.n_matrices + event.matrices_done,
                total=total,
                step=event.step,
                step_pos=f"{event.step_index + 1}/{event.n_steps}",
            )

        with progress:
            yield update

    @contextmanager
    def download_progress(self) -> Iterator[callable]:
        """A callback for `pythia(on_fetch=...)`: one line per download start and end."""
        if self.quiet or self.json_mode:
            yield lambda step, event: None
            return

        def update(step: int, event: str) -> None:
            if event == "start":
                self.err.print(f"[dim]downloading step {step} …[/]")
            else:
                self.err.print(f"[dim]downloaded step {step}[/]")

        yield update

    def notes(self, notes: Iterable[Note]) -> None:
        """Warnings, one line each, on stderr (also in JSON mode: they are not data)."""
        if self.quiet and not self.json_mode:
            notes = [n for n in notes if n.kind in _SERIOUS]
        for note in notes:
            if note.kind in _INFO:
                self.err.print(f"[cyan]note[/] [dim]({note.kind})[/] {escape(note.message)}")
                continue
            colour = "red" if note.kind in _SERIOUS else "yellow"
            self.err.print(f"[{colour}]warning[/] [dim]({note.kind})[/] {escape(note.message)}")

    def json(self, payload: object) -> None:
        """The result as JSON on stdout."""
        print(json.dumps(_plain(payload), indent=2, default=str))

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        header: bool = True,
    ) -> None:
        """A rich table on stdout (nothing when quiet)."""
        if self.quiet:
            return
        table = Table(title=title, title_justify="left", show_header=header)
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(escape(str(c)) for c in row))
        self.out.print(table)

    def fields(self, title: str, pairs: Iterable[tuple[str, object]]) -> None:
        """A two-column key/value table."""
        self.table(title, ("", ""), pairs, header=False)


def _plain(obj: object) -> object:
    """Dataclasses and paths to JSON-friendly values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
