"""Training metrics logged beside checkpoints: losses, accuracies, learning rates.

Read, in increasing priority (a metric found in several sources is taken from the
highest one):

1. numeric entries of the checkpoints themselves (``loss``, ``val_acc``, ... in a
   ``torch.save`` dict), at each checkpoint's step;
2. Hugging Face Trainer ``trainer_state.json`` ``log_history`` (the last checkpoint's,
   which holds the whole history);
3. log files found in the run folder (up to three levels down; for a run found in a
   ``checkpoints/`` folder, the folder above it when that one holds the logs, as
   Lightning's ``version_N/``): Lightning's ``metrics.csv`` (CSVLogger), and
   ``metrics.jsonl``, ``log.csv``, ``log.jsonl``, ``train_log.csv/jsonl``,
   ``training_log.csv/jsonl``;
4. the file given with ``--metrics`` (CSV with a header, or JSON lines).

Logs are keyed on a ``step`` column (``global_step``, ``iteration``, ``iter`` and
``_step`` are accepted; ``epoch`` for runs counted in epochs). Rows that share a step
are merged (Lightning writes training and validation metrics on separate rows), the
last value logged winning. Lightning logs one step behind its checkpoints (validation
at step 19 beside ``epoch=0-step=20.ckpt``): in a metrics.csv recognised as Lightning's
(`is_lightning_csv`), a row at step s is moved to s + 1 when s + 1 is a checkpoint's
step and s is not, with a note saying which. Bad lines and non-numeric columns are warned about with
their line or column, never fatal, except that an explicit ``--metrics`` file without
a step column is an error.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import SpecdynError, option_ref
from ..types import Note, TrainingLog
from ._formats import as_float, loads_json, one_line, read_regular_text, resolve_or_none
from ._stepnames import MAX_STEP

__all__ = [
    "read_training_log", "read_metrics_file", "log_root", "is_lightning_csv", "LOG_FILE_NAMES",
]  # fmt: skip

LOG_FILE_NAMES = (
    "metrics.csv", "metrics.jsonl", "log.csv", "log.jsonl", "train_log.csv",
    "train_log.jsonl", "training_log.csv", "training_log.jsonl",
)  # fmt: skip
_STEP_KEYS = ("step", "global_step", "iteration", "iter", "_step")
# counters and settings, not metrics (checkpoint dicts and trainer_state.json carry them)
_BOOKKEEPING = {
    "step", "global_step", "epoch", "iteration", "iter", "_step", "eval_steps",
    "logging_steps", "max_steps", "num_input_tokens_seen", "num_train_epochs", "save_steps",
    "total_flos", "train_batch_size", "best_global_step", "best_metric", "current_flos",
    "_runtime", "_timestamp",
}  # fmt: skip
_MAX_DEPTH = 3
_VERSION = re.compile(r"version_\d+")  # Lightning's log folder per run
# How an error names the log the user gave: metrics_file (Python) or --metrics.
_METRICS_FILE = option_ref("metrics_file", "--metrics")

Series = dict[str, dict[int, float]]  # metric → step → value


def read_training_log(
    run, metrics_file: str | Path | None = None
) -> tuple[TrainingLog | None, list[Note]]:
    """The training metrics of one run, from every source found (see the module doc).

    Args:
        run: a `specdyn.sources.RunSource` (its checkpoints, root and step unit).
        metrics_file: a CSV or JSONL log given by the user (``--metrics``).

    Returns:
        (TrainingLog or None when no metric was found, notes): warnings name the
        file and the line or column at fault; one "training" note says where the
        metrics came from.

    Raises:
        SpecdynError: `metrics_file` is missing, unreadable, or has no step column.
    """
    notes: list[Note] = []
    key = "epoch" if run.step_unit == "epoch" else "step"
    layers: list[tuple[Series, dict[str, str]]] = []
    layers.append(_from_checkpoints(run.checkpoints))
    state = _last_trainer_state(run.checkpoints, Path(run.root))
    if state is not None:
        layers.append(_from_trainer_state(state, key, notes))
    ckpt_steps = {int(c.step) for c in run.checkpoints if c.step is not None}
    for path in _log_files(log_root(Path(run.root)), exclude=metrics_file):
        series = _read_log(path, key, notes, explicit=False)
        if series is not None and key == "step" and is_lightning_csv(path):
            series = _match_lightning_steps(series, ckpt_steps, path, notes)
        if series is not None:
            layers.append((series, dict.fromkeys(series, f"{path.name}: {path}")))
    if metrics_file is not None:
        path = Path(metrics_file).expanduser()
        series = _read_log(path, key, notes, explicit=True)
        layers.append((series, dict.fromkeys(series, f"--metrics {path}")))
    merged: Series = {}
    sources: dict[str, str] = {}
    for series, origin in layers:  # later layers have priority
        for name, values in series.items():
            if values:
                merged[name] = values
                sources[name] = origin[name]
    for name in [n for n in merged if "\0" in n]:  # HDF5 strings end at a NUL
        notes.append(
            Note(
                "training-log",
                f"metric {name!r} from {sources[name]}: its name holds a NUL, which no store "
                "can keep; left out (rename the column)",
            )
        )
        del merged[name], sources[name]
    notes[:] = [_one_line_note(n) for n in notes]  # messages quote columns and lines
    if not merged:
        return None, notes
    steps = np.array(sorted({s for values in merged.values() for s in values}), dtype=np.int64)
    col = {int(s): i for i, s in enumerate(steps)}
    table = {}
    for name, values in merged.items():
        row = np.full(steps.size, np.nan)
        for s, v in values.items():
            row[col[s]] = v
        table[name] = row
    by_source: dict[str, list[str]] = {}
    for name, src in sources.items():
        by_source.setdefault(src, []).append(name)
    notes.append(
        Note(
            "training",
            "training metrics: "
            + "; ".join(f"{', '.join(names)} from {src}" for src, names in by_source.items()),
        )
    )
    return TrainingLog(steps=steps, values=table, sources=sources), notes


# ----------------------------------------------------------------------------- sources


def _one_line_note(note: Note) -> Note:
    """`note` with its message on one line (a column name may hold a newline or NUL)."""
    message = one_line(note.message)
    return note if message == note.message else Note(note.kind, message, note.path)


def _from_checkpoints(checkpoints: Iterable) -> tuple[Series, dict[str, str]]:
    """Numeric entries of each checkpoint (Trainer folders excluded: their numbers are
    trainer_state.json settings, and its log_history is read instead)."""
    series: Series = {}
    for ckpt in checkpoints:
        if ckpt.step is None or ckpt.step_origin == "trainer_state.json":
            continue
        for name, value in ckpt.scalars.items():
            if name in _BOOKKEEPING or not _is_number(value):
                continue
            series.setdefault(name, {})[int(ckpt.step)] = float(value)
    return series, dict.fromkeys(series, "checkpoints")


def _last_trainer_state(checkpoints: list, root: Path) -> tuple[Path, dict] | None:
    """The trainer_state.json with the largest global_step among the run's folders."""
    best = None
    candidates = [Path(c.path) / "trainer_state.json" for c in checkpoints if Path(c.path).is_dir()]
    candidates.append(root / "trainer_state.json")
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = loads_json(read_regular_text(path))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("log_history"), list):
            continue
        step = data.get("global_step") if _is_number(data.get("global_step")) else -1
        if best is None or step > best[0]:
            best = (step, path, data)
    return None if best is None else (best[1], best[2])


def _from_trainer_state(
    state: tuple[Path, dict], key: str, notes: list[Note]
) -> tuple[Series, dict[str, str]]:
    """log_history entries keyed on their step (the end-of-training summary left out:
    its train_loss is an average over the run, not a value at the last step)."""
    path, data = state
    rows = []
    for i, entry in enumerate(data["log_history"]):
        if not isinstance(entry, dict) or "train_runtime" in entry:
            continue
        rows.append((i + 1, entry))
    series = _rows_to_series(rows, path, key, notes, explicit=False, what="log_history entry")
    return series or {}, dict.fromkeys(series or {}, f"trainer_state.json log_history: {path}")


def _log_files(root: Path, exclude: str | Path | None) -> list[Path]:
    """Known log file names under the run folder (depth ≤ 3), sorted by path."""
    if not root.is_dir():
        root = root.parent
    skip = resolve_or_none(Path(exclude).expanduser()) if exclude is not None else None
    found = []
    frontier = [(root, 0)]
    while frontier:
        folder, depth = frontier.pop()
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name in LOG_FILE_NAMES and entry.is_file():
                if skip is None or resolve_or_none(entry) != skip:
                    found.append(entry)
            elif entry.is_dir() and depth < _MAX_DEPTH and not entry.name.startswith("."):
                frontier.append((entry, depth + 1))
    return sorted(found)


def log_root(root: Path) -> Path:
    """The folder whose logs belong to a run found in `root`: `root` itself (a file's
    folder), or the folder above a ``checkpoints/`` folder when that one holds the logs
    (Lightning's ``version_N/checkpoints/`` beside ``version_N/metrics.csv`` and
    ``hparams.yaml``).

    Args:
        root: the run's root (`RunSource.root`), a folder or a checkpoint file.

    Returns:
        The folder to search for log files (up to three levels down).
    """
    folder = root if root.is_dir() else root.parent
    if folder.name == "checkpoints" and _holds_logs(folder.parent):
        return folder.parent
    return folder


def _holds_logs(folder: Path) -> bool:
    """Whether `folder` directly holds a known log file or Lightning's hparams.yaml."""
    return any((folder / name).is_file() for name in (*LOG_FILE_NAMES, "hparams.yaml"))


def is_lightning_csv(path: Path) -> bool:
    """Whether a log file is Lightning's CSVLogger ``metrics.csv``: that name, a header
    with both ``epoch`` and ``step`` columns (Lightning adds ``epoch`` to every row it
    logs), and ``hparams.yaml`` beside it or a ``version_N`` folder holding it.

    Args:
        path: a log file found beside a run.

    Returns:
        True for a Lightning metrics.csv (its steps are then matched to the
        checkpoints', see `read_training_log`).
    """
    if path.name != "metrics.csv":
        return False
    if not ((path.parent / "hparams.yaml").is_file() or _VERSION.fullmatch(path.parent.name)):
        return False
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader([handle.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    columns = {h.strip() for h in header}
    return {"epoch", "step"} <= columns


def _match_lightning_steps(
    series: Series, ckpt_steps: set[int], path: Path, notes: list[Note]
) -> Series:
    """Lightning's rows at a checkpoint's step − 1 moved to that step, with one note.

    Lightning logs what it logs during a training batch and the validation after it at
    ``_batches_that_stepped``, which it increments only after both, so one step behind
    ``global_step``; ModelCheckpoint saves during that validation at ``global_step``
    (``epoch=E-step=S.ckpt``). A row at s is therefore moved to s + 1 when s + 1 is a
    checkpoint's step and s is not (s a checkpoint step too is ambiguous: kept); a value
    logged at the checkpoint's step itself (epoch-end metrics) is kept over a moved one.
    """
    moved_steps: set[int] = set()
    out: Series = {}
    for name, values in series.items():
        row: dict[int, float] = {}
        for step, value in values.items():
            if step + 1 in ckpt_steps and step not in ckpt_steps:
                moved_steps.add(step)
                if step + 1 not in values:
                    row[step + 1] = value
            else:
                row[step] = value
        out[name] = dict(sorted(row.items()))
    if moved_steps:
        shown = ", ".join(f"{s} → {s + 1}" for s in sorted(moved_steps)[:3])
        more = " ..." if len(moved_steps) > 3 else ""
        notes.append(
            Note(
                "training-log",
                f"{path}: Lightning logs one step behind its checkpoints; the rows of "
                f"{len(moved_steps)} step(s) logged just before a checkpoint moved to its "
                f"step ({shown}{more})",
                str(path),
            )
        )
    return out


# ----------------------------------------------------------------------------- files


def read_metrics_file(path: str | Path, *, key: str = "step") -> tuple[Series, list[Note]]:
    """One CSV (header row) or JSON-lines log: metric → {step: value}, and warnings.

    Raises:
        SpecdynError: the file is missing or unreadable, or has no step column.
    """
    notes: list[Note] = []
    series = _read_log(Path(path), key, notes, explicit=True)
    return series, [_one_line_note(n) for n in notes]


def _read_log(path: Path, key: str, notes: list[Note], *, explicit: bool) -> Series | None:
    """Parse a CSV or JSONL log; None (with a warning) for an unusable auto-found file."""
    try:
        text = read_regular_text(path, "utf-8-sig")
    except FileNotFoundError:
        if explicit:
            raise SpecdynError(
                f"{_METRICS_FILE} {path}: no such file", file=path, option="metrics_file"
            ) from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        message = f"{path}: cannot be read as text ({exc})"
        if explicit:
            raise SpecdynError(
                f"{_METRICS_FILE} {message}", file=path, option="metrics_file"
            ) from None
        notes.append(Note("training-log", f"{message}; left out", str(path)))
        return None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if path.suffix.lower() == ".jsonl" or first.lstrip().startswith("{"):
        rows, bad = [], []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = loads_json(line)
            except ValueError as exc:
                bad.append(f"line {number} ({getattr(exc, 'msg', exc)})")
                continue
            if not isinstance(entry, dict):
                bad.append(f"line {number} (not a JSON object)")
                continue
            rows.append((number, entry))
        if bad:
            notes.append(
                Note(
                    "training-log",
                    f"{path}: {len(bad)} malformed line(s) skipped: {', '.join(bad[:3])}"
                    + (" ..." if len(bad) > 3 else ""),
                    str(path),
                )
            )
    else:
        rows = _csv_rows(path, lines, notes)
    return _rows_to_series(rows, path, key, notes, explicit=explicit, what="line")


def _csv_rows(path: Path, lines: list[str], notes: list[Note]) -> list[tuple[int, dict]]:
    """(line number, {column: cell}) of a CSV with a header; ragged lines warned and skipped."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:  # e.g. a field over csv's size limit: no header to key on
        notes.append(
            Note(
                "training-log",
                f"{path}: its header line does not parse ({exc}); left out",
                str(path),
            )
        )
        return []
    header = [h.strip() for h in header]
    rows, bad, unparsed = [], [], []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # a field over csv's size limit: skipped, as a ragged line
            unparsed.append((reader.line_num, exc))
            continue
        number = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            bad.append(number)
            continue
        rows.append((number, dict(zip(header, cells, strict=True))))
    if bad:
        notes.append(
            Note(
                "training-log",
                f"{path}: {len(bad)} line(s) with a number of fields other than the header's "
                f"{len(header)} skipped (line {', '.join(map(str, bad[:5]))}"
                + (" ..." if len(bad) > 5 else "")
                + ")",
                str(path),
            )
        )
    if unparsed:
        where = ", ".join(str(n) for n, _ in unparsed[:5]) + (" ..." if len(unparsed) > 5 else "")
        notes.append(
            Note(
                "training-log",
                f"{path}: {len(unparsed)} line(s) that do not parse as CSV skipped "
                f"(line {where}: {unparsed[0][1]})",
                str(path),
            )
        )
    return rows


def _rows_to_series(
    rows: list[tuple[int, dict]], path: Path, key: str, notes: list[Note], *,
    explicit: bool, what: str,
) -> Series:  # fmt: skip
    """Numeric columns keyed on the step column; non-numeric cells and columns warned."""
    columns = list(dict.fromkeys(c for _, row in rows for c in row))
    keys = ("epoch",) if key == "epoch" else _STEP_KEYS
    step_key = next((k for k in keys if k in columns), None)
    if step_key is None:
        found = ", ".join(columns[:8]) or "none"
        if key == "epoch" and any(k in columns for k in _STEP_KEYS):
            # the run's checkpoints only know epochs, so its axis is epochs, not steps
            message = (
                f"{path}: this run's checkpoints give epochs, not steps, so its log is read "
                f"by epoch, and the log has no epoch column (columns: {found}); add an epoch "
                "column, or save the checkpoints with their step"
            )
        else:
            message = (
                f"{path}: no {' / '.join(keys)} column (columns: {found}); a training log "
                "needs the step of each row"
            )
        if explicit:
            raise SpecdynError(
                f"{_METRICS_FILE} {one_line(message)}", file=path, option="metrics_file"
            )
        if rows:
            notes.append(Note("training-log", f"{message}; left out", str(path)))
        return {}
    series: Series = {}
    bad_step: list[int] = []
    out_of_range: list[int] = []
    odd: dict[str, list[tuple[int, str]]] = {}
    numeric: dict[str, int] = {}
    for number, row in rows:
        step = _number(row.get(step_key))
        if step is None or math.isnan(step) or (math.isfinite(step) and step != int(step)):
            bad_step.append(number)
            continue
        if not 0 <= step <= MAX_STEP:
            out_of_range.append(number)
            continue
        for name, cell in row.items():
            if name == step_key or name in _BOOKKEEPING or name.startswith("_"):
                continue
            value = _number(cell)
            if value is None:
                if _is_blank(cell):
                    continue
                odd.setdefault(name, []).append((number, str(cell)[:20]))
                continue
            numeric[name] = numeric.get(name, 0) + 1
            series.setdefault(name, {})[int(step)] = value
    if bad_step:
        notes.append(
            Note(
                "training-log",
                f"{path}: {len(bad_step)} {what}(s) without an integer {step_key!r} skipped "
                f"({what} {', '.join(map(str, bad_step[:5]))})",
                str(path),
            )
        )
    if out_of_range:
        notes.append(
            Note(
                "training-log",
                f"{path}: {len(out_of_range)} {what}(s) with {step_key!r} out of range "
                f"(negative or above {MAX_STEP}) skipped "
                f"({what} {', '.join(map(str, out_of_range[:5]))})",
                str(path),
            )
        )
    for name, cells in odd.items():
        number, cell = cells[0]
        if name not in numeric:
            notes.append(
                Note(
                    "training-log",
                    f"{path}: column {name!r} is not numeric (e.g. {cell!r} at {what} {number}); "
                    "left out",
                    str(path),
                )
            )
        else:
            notes.append(
                Note(
                    "training-log",
                    f"{path}: column {name!r}: {len(cells)} non-numeric value(s) read as missing "
                    f"(first {cell!r} at {what} {number})",
                    str(path),
                )
            )
    return series


def _number(cell) -> float | None:
    """A cell as a float, None when blank or not a number (booleans are not numbers)."""
    if isinstance(cell, bool) or cell is None:
        return None
    if isinstance(cell, (int, float)):
        return as_float(cell)
    if isinstance(cell, str):
        text = cell.strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _is_blank(cell) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
