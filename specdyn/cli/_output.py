"""The one output layer of the CLI: progress bars, tables, warnings and `--json`.

Tables and JSON go to stdout; progress, warnings and errors to stderr, so that
`specdyn ... --json | jq` stays clean.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
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
_INFO = {"pairs", "reference", "vectors", "k", "same-run", "not-common", "training"}


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
        with self.sweep_progress(None) as (on_progress, _):
            yield on_progress

    @contextmanager
    def demo_progress(self) -> Iterator[tuple[callable, callable]]:
        """Callbacks (on_train, on_progress) for one live display: a training bar
        (``on_train(step, steps, metrics)``), then the analysis bars."""
        with self.sweep_progress(None, training=True) as (on_progress, _fetched, on_train):
            yield on_train, on_progress

    @contextmanager
    def sweep_progress(
        self, download_bytes: int | None, *, training: bool = False
    ) -> Iterator[tuple[callable, ...]]:
        """Callbacks (on_progress, on_fetch) for one live display: the analysis bars and,
        when `download_bytes` is given, a download bar (bytes, rate) beside them; with
        `training`, a third callback drives a training-steps bar."""
        if self.quiet or self.json_mode:
            quiet = ((lambda event: None), (lambda step, event, nbytes: None))
            yield (*quiet, lambda step, steps, metrics: None) if training else quiet
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        )
        tasks: dict[str, int] = {}
        download = None
        if download_bytes is not None:
            download = progress.add_task("download", total=max(download_bytes, 1), detail="")
        started = time.monotonic()

        def fetched(step: int, event: str, nbytes: int) -> None:
            if download is None:
                return
            if event == "done":
                progress.advance(download, nbytes)
            task = progress.tasks[download]
            rate = task.completed / max(time.monotonic() - started, 1e-9)
            progress.update(
                download,
                detail=f"{task.completed / 1e9:.2f}/{download_bytes / 1e9:.2f} GB, "
                f"{rate / 1e6:.1f} MB/s, step {step}",
            )

        def update(event: ProgressEvent) -> None:
            where = f"step {event.step} ({event.step_index + 1}/{event.n_steps})"
            if event.phase in ("hashing", "reference"):
                key = f"{event.run} ({event.phase})"
                total = event.n_steps if event.phase == "hashing" else event.n_matrices
                if key not in tasks:
                    tasks[key] = progress.add_task(
                        f"{escape(event.run)} {event.phase}", total=total, detail=""
                    )
                done = event.step_index + 1 if event.phase == "hashing" else event.matrices_done
                detail = where if event.phase == "hashing" else f"step {event.step} first"
                progress.update(tasks[key], completed=done, detail=detail)
                return
            total = event.n_steps * event.n_matrices
            if event.run not in tasks:
                tasks[event.run] = progress.add_task(escape(event.run), total=total, detail="")
            completed = event.step_index * event.n_matrices + event.matrices_done
            progress.update(
                tasks[event.run],
                completed=completed,
                total=total,
                detail=f"{completed}/{total} matrices, {where}",
            )

        def trained(step: int, steps: int, metrics) -> None:
            if "training" not in tasks:
                tasks["training"] = progress.add_task("training", total=steps, detail="")
            acc = ", ".join(
                f"{k} {metrics[k]:.2f}" for k in ("train_acc", "val_acc") if k in metrics
            )
            progress.update(tasks["training"], completed=step, detail=f"step {step}/{steps} {acc}")

        with progress:
            yield (update, fetched, trained) if training else (update, fetched)

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
