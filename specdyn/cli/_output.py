"""The one output layer of the CLI: progress bars, tables, warnings and `--json`.

Tables and JSON go to stdout; progress, warnings and errors to stderr, so that
`specdyn ... --json | jq` stays clean. Every name, path and message printed passes
through `printable` (control characters shown as escapes, so a checkpoint's name cannot
drive the terminal or forge lines) and rich's markup escape (printed literally).
"""

from __future__ import annotations

import json
import time
import unicodedata
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

from ..analysis import Progress as ProgressEvent
from ..types import Note

__all__ = ["Output", "literal", "literal_table", "printable"]

# Notes the user must act on are shown in red, the rest in yellow.
_SERIOUS = {"unsafe-pickle", "corrupt", "unreadable", "changed-source", "nonfinite"}

# Kinds that inform rather than warn (what was decided and why): shown as "note".
_INFO = {"pairs", "reference", "vectors", "k", "same-run", "not-common", "training"}


# Unicode categories a terminal may act on or that hide text: controls (C0, DEL, C1),
# format characters (bidi overrides and isolates, zero-width marks), lone surrogates
# (undecodable bytes of a file name), line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """`text` with every character a terminal could act on written as a visible escape.

    Control characters (C0 including newline, tab and carriage return, DEL, C1 such as
    ``\\x9b``), format characters (bidi overrides U+202A–U+202E and isolates
    U+2066–U+2069, zero-width marks), lone surrogates and line/paragraph separators
    become ``\\n``, ``\\x1b``, ``\\u202e``…; everything else is kept. Use it on
    every user-controlled string before it is printed (`literal` also escapes markup).

    Args:
        text: anything; it is converted with ``str`` first.

    Returns:
        A single-line string that is safe to print.
    """
    text = str(text)
    if text.isprintable():  # fast path: no control, format or separator characters
        return text
    return "".join(_visible(ch) for ch in text)


def _visible(ch: str) -> str:
    """One character, or its escape when a terminal could act on it."""
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def literal(text: object) -> str:
    """`printable(text)` with rich markup escaped: prints exactly as written."""
    return escape(printable(text))


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
                        f"{literal(event.run)} {event.phase}", total=total, detail=""
                    )
                done = event.step_index + 1 if event.phase == "hashing" else event.matrices_done
                detail = where if event.phase == "hashing" else f"step {event.step} first"
                progress.update(tasks[key], completed=done, detail=detail)
                return
            total = event.n_steps * event.n_matrices
            if event.run not in tasks:
                tasks[event.run] = progress.add_task(literal(event.run), total=total, detail="")
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
                self.err.print(
                    f"[cyan]note[/] [dim]({literal(note.kind)})[/] {literal(note.message)}"
                )
                continue
            colour = "red" if note.kind in _SERIOUS else "yellow"
            self.err.print(
                f"[{colour}]warning[/] [dim]({literal(note.kind)})[/] {literal(note.message)}"
            )

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
        self.out.print(literal_table(title, columns, rows, header=header))

    def fields(self, title: str, pairs: Iterable[tuple[str, object]]) -> None:
        """A two-column key/value table."""
        self.table(title, ("", ""), pairs, header=False)

    def line(self, text: object, *, err: bool = False) -> None:
        """One line of plain text (a path, a hint), printed literally, on stdout or stderr."""
        (self.err if err else self.out).print(literal(text), highlight=False, soft_wrap=True)


def literal_table(
    title: str, columns: Sequence[object], rows: Iterable[Sequence[object]], *, header: bool = True
) -> Table:
    """A rich table whose title, headers and cells print literally (long cells fold onto
    more lines instead of being cut with an ellipsis).

    Args:
        title: the table's title (names in it are escaped like the cells).
        columns: the column headers.
        rows: the cells, row by row; anything, converted with ``str``.
        header: whether to show the headers.

    Returns:
        The table, ready for ``Console.print``.
    """
    table = Table(title=literal(title), title_justify="left", show_header=header)
    for col in columns:
        table.add_column(literal(col), overflow="fold")
    for row in rows:
        table.add_row(*(literal(c) for c in row))
    return table


def _plain(obj: object) -> object:
    """Dataclasses and paths to JSON-friendly values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
