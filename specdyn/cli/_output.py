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
from ..store import open_run
from ..types import Note

__all__ = [
    "Output",
    "finish",
    "interrupted_line",
    "is_warning",
    "literal",
    "literal_table",
    "printable",
]

# Notes the user must act on are shown in red, the rest in yellow.
_SERIOUS = {
    "unsafe-pickle",
    "corrupt",
    "unreadable",
    "changed-source",
    "nonfinite",
    "store-damage",
}

# One policy for every command: `-q` prints errors and warnings only (no tables, no
# progress, no informational notes); `--json` prints one JSON document on stdout, with the
# notes and warnings inside it, and nothing else but errors. The store the running
# analysis writes, for the one line printed on Ctrl-C (`interrupted_line`).
_CURRENT_STORE: list[str] = []
_PENDING_JSON: list[Output] = []
# Whether the running command made an Output in JSON mode: a failure then prints
# {"error", "kind"} on stdout, so `--json | jq` always gets one document.
_JSON_COMMAND: list[bool] = []

# Kinds that inform rather than warn (what was decided and why): shown as "note".
_INFO = {
    "store-upgrade",
    "pairs",
    "reference",
    "vectors",
    "k",
    "same-run",
    "not-common",
    "training",
    "duplicate",
    "several-runs",
    "init-name",
    "training-state",
    "pruned-metadata",
    "not-a-branch",
    "store-name",
    # a power-law fit that is undefined (R < 8, a flat spectrum): expected for small
    # matrices, and the NaN is in the store with its reason
    "heavy-tail-nan",
    # weights found nested under a dict path (dcp_to_torch_save's ['app']['model'])
    "nested-weights",
    # what --ignore left out, counted
    "ignored-paths",
    # one step analysed: no trajectory (figures draw it as one column)
    "single-step",
}


def is_warning(note: Note) -> bool:
    """Whether a note is printed (and counted) as a warning, not an informational note."""
    return note.kind not in _INFO


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
        self._payload: object = None
        self._notes: list[Note] = []
        if json_mode:
            _JSON_COMMAND.append(True)

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
        if self.quiet or self.json_mode or not self.err.is_terminal:
            # no live display off a terminal: it would leave blank lines in logs and pipes
            quiet = (_remember_store, (lambda step, event, nbytes: None))
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
            _remember_store(event)
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
        """Warnings and notes, one line each, on stderr; with `-q` the warnings only; in
        JSON mode kept for the JSON document (under "notes" when its payload has none)."""
        if self.json_mode:
            self._notes.extend(notes)
            return
        if self.quiet:
            notes = [n for n in notes if is_warning(n)]
        for note in notes:
            if note.kind in _INFO:
                self.err.print(
                    f"[cyan]note[/] [dim]({literal(note.kind)})[/] {literal(note.message)}",
                    soft_wrap=True,  # one line each, whatever the terminal's width
                )
                continue
            colour = "red" if note.kind in _SERIOUS else "yellow"
            self.err.print(
                f"[{colour}]warning[/] [dim]({literal(note.kind)})[/] {literal(note.message)}",
                soft_wrap=True,
            )

    def json(self, payload: object, *, on_failure: bool = False) -> None:
        """The result as JSON: printed once the command has succeeded (`finish`), with the
        notes given to `notes` added under "notes" when the payload has no such key;
        `on_failure`: printed too when the command then exits non-zero (a result that is
        itself the reason, such as damage found by `verify`)."""
        self._payload = payload
        self._json_on_failure = on_failure
        if self not in _PENDING_JSON:
            _PENDING_JSON.append(self)

    def _print_json(self) -> None:
        """Print the JSON document."""
        payload = self._payload
        if isinstance(payload, dict) and "notes" not in payload and self._notes:
            payload = {**payload, "notes": [asdict(n) for n in self._notes]}
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


def _remember_store(event: ProgressEvent) -> None:
    """Keep the store the analysis writes, for the Ctrl-C line."""
    if event.store and (not _CURRENT_STORE or _CURRENT_STORE[-1] != event.store):
        _CURRENT_STORE.append(event.store)


def finish(succeeded: bool, error: tuple[str, str] | None = None, json_asked: bool = False) -> None:
    """End of a command: print the JSON documents it prepared (none after an error).

    error: (the one-line message, the error's class name) of a failure; printed as
    ``{"error": …, "kind": …}`` on stdout when the command ran in JSON mode (or
    `json_asked`, for a usage error before any command ran) and printed no document of
    its own on failure (`Output.json` with ``on_failure``).
    """
    pending = list(_PENDING_JSON)
    json_mode = bool(_JSON_COMMAND) or json_asked
    _PENDING_JSON.clear()
    _CURRENT_STORE.clear()
    _JSON_COMMAND.clear()
    printed = False
    for out in pending:
        if succeeded or getattr(out, "_json_on_failure", False):
            out._print_json()
            printed = True
    if not succeeded and error is not None and json_mode and not printed:
        message, kind = error
        print(json.dumps({"error": message, "kind": kind}, indent=2))


def interrupted_line() -> str:
    """The one line printed on Ctrl-C: what the store holds and how to resume."""
    stores = list(_CURRENT_STORE)
    if not stores:
        return "interrupted; run the same command again to resume"
    path = stores[-1]
    try:
        with open_run(path) as run:
            done, total = run.values.steps.size, run.values.all_steps.size
    except Exception:  # noqa: BLE001 - interrupted before the store existed
        return "interrupted; run the same command again to resume"
    return (
        f"interrupted: {done} of {total} steps stored in {printable(path)}; "
        "run the same command to resume"
    )
