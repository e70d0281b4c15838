"""`export`: runs' sections written as parquet, CSV or netCDF files, chunk by chunk.

Tables (parquet, CSV) hold the rows of `_tables.table_chunks`, several runs one after the
other with their ``run`` column; a parquet file gets one row group per chunk, a CSV file
is appended to. netCDF keeps each run's section in its own group ``<run>/<section>`` (the
runs' step axes differ), laid out as `Run.to_xarray` gives it; the large variables (σ,
diagonals) are filled one matrix or pair and one step chunk at a time. No section is
ever held whole in memory. Every file is written beside its place and renamed over it.
A comparison store's tables (`Comparison.to_pandas`) are written the same way.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, option_ref
from ..extras import require_extra
from ..files import atomic_output, fsync_dir, fsync_path
from . import _comparison_tables as cmptables
from . import _tables as tables
from ._comparison import Comparison, open_comparison
from ._reader import Run, open_run

__all__ = [
    "EXPORT_CHUNK_ROWS",
    "EXPORT_FORMATS",
    "PARQUET_GROUPS_PER_FILE",
    "ExportFile",
    "ExportReport",
    "export",
]

EXPORT_FORMATS = ("parquet", "csv", "netcdf")
# Rows per chunk (and parquet row group) of a table export. A chunk's columns are ~28 bytes
# a row (the CSV writer's text ~57): 1.8 MB at 65 536 rows, over the memory target of
# benchmarks/bench_export.py (resident growth under 2× the largest dataset, 1.26 MB); at
# 8192 rows its σ section grew resident memory 0.07–0.16 MB (parquet) and 0.6–0.7 MB (CSV).
# CSV runs no slower; parquet 1.9× slower than at 65 536 rows (docs/benchmarks.md, export).
EXPORT_CHUNK_ROWS = 1 << 13
# Row groups per parquet file. pyarrow's writer keeps ~4.2 KB of metadata per row group
# (its footer's builders; 312–460 bytes once serialised) until the file is closed, so one
# file of a Pythia-12b σ section (3600 row groups) would hold 15 MB, growing with the store.
# A larger table is a folder of part files (read as one table by pandas, pyarrow, DuckDB,
# Spark; benchmarks/bench_export.py): ≤ 270 KB of metadata, whatever the store's size.
PARQUET_GROUPS_PER_FILE = 64
_SUFFIX = {"parquet": ".parquet", "csv": ".csv", "netcdf": ".nc"}
_SECTION = option_ref("section")
_OUT = option_ref("out")


@dataclass
class ExportFile:
    """One file written: path, the sections in it, rows (table rows, or values for
    netCDF), size in bytes and parts: 1, or for a parquet table of more than
    `PARQUET_GROUPS_PER_FILE` row groups the number of ``part-NNNNN.parquet`` files in
    the folder `path` (bytes: of them all)."""

    path: str
    sections: list[str]
    rows: int
    bytes: int
    parts: int = 1


@dataclass
class ExportReport:
    """What `export` wrote: format, out (the file or folder given), runs (names, in
    order; a comparison's run labels), sections, files (`ExportFile`), seconds,
    chunk_rows, comparison (its name, or None)."""

    format: str
    out: str
    runs: list[str]
    sections: list[str]
    files: list[ExportFile] = field(default_factory=list)
    seconds: float = 0.0
    chunk_rows: int = tables.DEFAULT_CHUNK_ROWS
    comparison: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data (``specdyn export --json``)."""
        return asdict(self)


def export(
    runs: str | os.PathLike[str] | Run | Sequence[str | os.PathLike[str] | Run] = (),
    *,
    out: str | os.PathLike[str],
    format: str = "parquet",
    section: str | Sequence[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    chunk_rows: int | None = None,
    comparison: str | os.PathLike[str] | Comparison | None = None,
) -> ExportReport:
    """Write the sections of one or several runs, or of a comparison, as parquet, CSV or
    netCDF files.

    The tables are those of `Run.to_pandas` (done rows only; columns in docs/store.md,
    "Tidy tables"), several runs in one table with their ``run`` column. They are read
    and written `chunk_rows` rows at a time, so memory holds one chunk, never a section.
    A comparison's are those of `Comparison.to_pandas` (docs/compare.md), its netCDF
    groups ``<comparison>/<section>`` those of `Comparison.to_xarray`.

    Args:
        runs: run names in the workspace, store paths or open `Run`s (one or several;
            names must differ); none with `comparison`.
        out: parquet or CSV: with one section, the file (or an existing folder, which
            gets ``<section>.parquet``); with several, a folder (created) with one file
            per section. netCDF: the file, one group ``<run>/<section>`` per run and
            section (what `Run.to_xarray` gives; ``xarray.open_dataset(out,
            group="run/sigma", engine="h5netcdf")``). Files already there are replaced.
        format: ``"parquet"``, ``"csv"`` (both through pyarrow) or ``"netcdf"`` (xarray,
            h5netcdf).
        section: one of ``metrics``, ``sigma``, ``alignment``, ``agreement``,
            ``training``, or several; None: every section all the runs have.
        home: the workspace of run names (default ``$SPECDYN_HOME``, else
            ``./specdyn-runs``).
        chunk_rows: table rows read and written at once (parquet: rows per row group);
            None: `EXPORT_CHUNK_ROWS` (8192) for parquet and CSV, `DEFAULT_CHUNK_ROWS`
            (65 536) for netCDF.
        comparison: instead of runs, a comparison store: its name in
            ``<home>/comparisons``, its path or an open `Comparison`; `section` one of
            `Comparison.sections` (netCDF: of runs, metrics, agreement, split, barrier),
            None: all it has. A comparison is small: its tables are written a run or a
            pair at a time, whatever `chunk_rows`.

    Returns:
        `ExportReport` (files with their rows and sizes; ``to_dict()`` for JSON).

    Raises:
        MissingExtraError: the format's library is not installed (the pip extra is named).
        StoreError: unknown format or section, a section some run lacks, two runs of one
            name, or `out` not writable.
        RunNotFoundError, StoreDamagedError: as `open_run` and the readers.
    """
    start = time.perf_counter()
    if format not in EXPORT_FORMATS:
        raise StoreError(
            f"{option_ref('format')} {format!r}: not a format; use one of "
            f"{', '.join(EXPORT_FORMATS)}",
            option="format",
        )
    _need_libraries(format)
    if chunk_rows is None:
        chunk_rows = tables.DEFAULT_CHUNK_ROWS if format == "netcdf" else EXPORT_CHUNK_ROWS
    items = [runs] if isinstance(runs, (str, os.PathLike, Run)) else list(runs)
    if comparison is not None:
        if items:
            raise StoreError(
                f"give runs or {option_ref('comparison')}, not both", option="comparison"
            )
        report = _export_comparison(comparison, out, format, section, home)
        report.chunk_rows = chunk_rows
        report.seconds = time.perf_counter() - start
        return report
    if not items:
        raise StoreError(
            f"no run to export; name one or more runs, or give {option_ref('comparison')}",
            option="runs",
        )
    with ExitStack() as stack:
        opened = [_opened(stack, item, home) for item in items]
        names = [r.name for r in opened]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise StoreError(
                f"two runs named {twice[0]!r} ({', '.join(str(r.path) for r in opened if r.name == twice[0])}); "
                "export them one at a time",
                option="runs",
            )
        sections = _sections(opened, section)
        report = ExportReport(format, os.fspath(out), names, sections, chunk_rows=chunk_rows)
        if format == "netcdf":
            report.files.append(_write_netcdf(Path(out), opened, sections, chunk_rows))
        else:
            for path, name in _table_paths(Path(out), format, sections):
                chunks, empty = _run_tables(opened, name, names, chunk_rows)
                report.files.append(_write_table(path, format, name, chunks, empty))
    report.seconds = time.perf_counter() - start
    return report


def _export_comparison(
    comparison: Any, out: Any, format: str, section: Any, home: Any
) -> ExportReport:
    """`export` of a comparison store's sections (small: each section in one chunk per
    run or pair)."""
    with ExitStack() as stack:
        cmp = comparison
        if not isinstance(cmp, Comparison):
            cmp = stack.enter_context(open_comparison(comparison, home))
        known = cmptables.XARRAY_SECTIONS if format == "netcdf" else cmptables.COMPARISON_SECTIONS
        have = [s for s in cmp.sections if s in known]
        asked = (
            have if section is None else [section] if isinstance(section, str) else list(section)
        )
        for name in asked:
            cmptables.check_section(cmp, name, known)
        asked = list(dict.fromkeys(asked))
        report = ExportReport(format, os.fspath(out), list(cmp.labels), asked, comparison=cmp.name)
        if format == "netcdf":
            report.files.append(_comparison_netcdf(Path(out), cmp, asked))
        else:
            for path, name in _table_paths(Path(out), format, asked):
                chunks = cmptables.comparison_chunks(cmp, name)
                empty = partial(cmptables.empty_comparison_chunk, cmp, name)
                report.files.append(_write_table(path, format, name, chunks, empty))
    return report


def _comparison_netcdf(out: Path, cmp: Comparison, sections: list[str]) -> ExportFile:
    """A comparison's sections as groups ``<name>/<section>`` of one netCDF-4 file."""
    if not out.parent.is_dir():
        raise StoreError(f"{_OUT} {out}: its folder does not exist; create it first", file=out)
    values = 0
    try:
        with atomic_output(out) as tmp:
            for i, section in enumerate(sections):
                data = cmp.to_xarray(section)
                mode = "a" if i else "w"
                data.to_netcdf(tmp, mode=mode, group=f"{cmp.name}/{section}", engine="h5netcdf")
                values += int(sum(v.size for v in data.data_vars.values()))
    except OSError as exc:
        raise StoreError(f"{_OUT} {out}: cannot write ({exc.strerror or exc})", file=out) from None
    return ExportFile(str(out), list(sections), values, out.stat().st_size)


def _need_libraries(format: str) -> None:
    """One line naming the extra when a format's library is missing."""
    if format == "parquet":
        require_extra("pyarrow", "pandas", "export to parquet")
    elif format == "csv":
        require_extra("pyarrow", "pandas", "export to CSV")
    else:
        require_extra("xarray", "xarray", "export to netCDF")
        require_extra("h5netcdf", "xarray", "export to netCDF")


def _opened(stack: ExitStack, item: Any, home: Any) -> Run:
    """An open run: `item` itself, or the store it names (closed on exit)."""
    if isinstance(item, Run):
        return item
    return stack.enter_context(open_run(item, home=home))


def _sections(runs: list[Run], section: str | Sequence[str] | None) -> list[str]:
    """The sections asked for (checked against every run), or those all runs have."""
    if section is None:
        have = [set(tables.run_sections(r)) for r in runs]
        return [s for s in tables.SECTIONS if all(s in h for h in have)]
    asked = [section] if isinstance(section, str) else list(section)
    for name in asked:
        if name not in tables.SECTIONS:
            raise StoreError(
                f"{_SECTION} {name!r}: no such section; sections: {', '.join(tables.SECTIONS)}",
                option="section",
            )
        for run in runs:
            if name not in tables.run_sections(run):
                raise StoreError(
                    f"{run.path}: run {run.name!r} has no {name} section (its sections: "
                    f"{', '.join(tables.run_sections(run))}); leave it out of {_SECTION}",
                    file=run.path,
                    option="section",
                )
    return list(dict.fromkeys(asked))


def _table_paths(out: Path, format: str, sections: list[str]) -> Iterator[tuple[Path, str]]:
    """(file, section) of each table: `out` itself for one section, else files in it.
    A folder given as `out` is where the tables go, unless it is a parquet table written
    as part files (an earlier export of one section), which is replaced."""
    earlier_table = format == "parquet" and out.suffix == ".parquet" and _is_part_folder(out)
    folder = out if (len(sections) > 1 or (out.is_dir() and not earlier_table)) else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{_OUT} {out}: cannot create the folder ({exc.strerror or exc})", file=out
            ) from None
        for name in sections:
            yield folder / f"{name}{_SUFFIX[format]}", name
    else:
        if not out.parent.is_dir():
            raise StoreError(f"{_OUT} {out}: its folder does not exist; create it first", file=out)
        yield out, sections[0]


def _chunks(runs: list[Run], section: str, names: list[str], chunk_rows: int):
    """The chunks of every run's section, in run order (sharing the run categories)."""
    for run in runs:
        yield from tables.table_chunks(run, section, chunk_rows=chunk_rows, runs=names)


def _write_table(
    path: Path, format: str, section: str, chunks: Iterable[Any], empty: Callable[[], Any]
) -> ExportFile:
    """Table chunks into one CSV file, or one parquet file (a folder of part files past
    `PARQUET_GROUPS_PER_FILE` row groups); `empty`: the chunk of no rows that gives the
    columns when there is none."""
    try:
        if format == "parquet":
            rows, parts = _write_parquet_output(path, chunks, empty)
        else:
            parts = 1
            with atomic_output(path) as tmp:
                rows = _write_csv(tmp, chunks, empty)
    except OSError as exc:
        raise StoreError(
            f"{_OUT} {path}: cannot write ({exc.strerror or exc})", file=path
        ) from None
    size = sum(p.stat().st_size for p in path.iterdir()) if parts > 1 else path.stat().st_size
    return ExportFile(str(path), [section], rows, size, parts)


def _write_parquet_output(
    path: Path, chunks: Iterable[Any], empty: Callable[[], Any]
) -> tuple[int, int]:
    """(rows, parts): the chunks as parquet part files in a hidden folder beside `path`,
    then put in its place: the one part as the file `path`, several as the folder `path`.
    On any error the folder is removed and `path` keeps what it held."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)  # a leftover of a killed export of this process id
    temp.mkdir()
    try:
        rows, files = _write_parquet(temp, chunks, empty)
        for file in files:
            fsync_path(file)
        _put_in_place(files, temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    return rows, len(files)


def _put_in_place(files: list[Path], temp: Path, path: Path) -> None:
    """The finished part files at `path` (one: the file itself; several: the folder
    `temp` renamed), replacing a file or an earlier export's part folder there."""
    old = None
    if path.is_dir() and not path.is_symlink():
        if not _is_part_folder(path):
            raise StoreError(
                f"{_OUT} {path}: a folder that is not a parquet export is in the way; move "
                "it away or choose another out",
                file=path,
            )
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)  # a folder cannot be renamed over, nor a file over a folder
    elif len(files) > 1 and (path.exists() or path.is_symlink()):
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    if len(files) == 1:
        os.replace(files[0], path)
        temp.rmdir()
    else:
        os.replace(temp, path)
    # a process killed between the two renames leaves `path` missing and the earlier
    # export hidden beside it as `old`: the run to do again is the same command
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


def _is_part_folder(path: Path) -> bool:
    """Whether `path` is a folder of parquet part files (and nothing else)."""
    if not path.is_dir() or path.is_symlink():
        return False
    entries = list(path.iterdir())
    return bool(entries) and all(_is_part(p) for p in entries)


def _is_part(path: Path) -> bool:
    """Whether `path` is a part file of a parquet export."""
    return path.is_file() and path.name.startswith("part-") and path.suffix == ".parquet"


def _run_tables(runs: list[Run], section: str, names: list[str], chunk_rows: int):
    """(chunks, empty) of one section of every run, for `_write_table`."""

    def empty() -> tables.TableChunk:
        chunk = tables.empty_chunk(runs[0], section)
        chunk.categories["run"] = list(names)
        return chunk

    return _chunks(runs, section, names, chunk_rows), empty


def _arrow_table(
    pa: Any, chunk: tables.TableChunk, *, strings: bool = False, pool: Any = None
) -> Any:
    """A pyarrow table of one chunk (its buffers from `pool`, default pyarrow's):
    categorical columns dictionary-encoded (str), or plain strings with `strings`."""
    arrays = {}
    for name, column in chunk.columns.items():
        if name in chunk.categories:
            codes = pa.array(column, type=pa.int32(), memory_pool=pool)
            values = pa.array(chunk.categories[name], pa.string(), memory_pool=pool)
            if strings:
                arrays[name] = pa.compute.take(values, codes, memory_pool=pool)
            else:
                arrays[name] = pa.DictionaryArray.from_arrays(codes, values, memory_pool=pool)
        else:
            arrays[name] = pa.array(column, memory_pool=pool)
    return pa.table(arrays)


def _csv_pool(pa: Any) -> Any:
    """The allocator of a CSV export: malloc's, whose freed chunks the next chunk reuses
    (with jemalloc's, even released after each chunk, resident memory grew 2.4 MB more on
    the benchmark's small store, and its arenas cost 6 MB to set up)."""
    return pa.system_memory_pool()


def _release(pa: Any) -> None:
    """Give pyarrow's freed memory back to the system after a chunk is written: its
    allocator (jemalloc) otherwise keeps the pages of every chunk's buffers, and the
    resident memory of a long export grows by megabytes (benchmarks/bench_export.py)."""
    pa.default_memory_pool().release_unused()


def _write_parquet(
    folder: Path, chunks: Iterable[Any], empty: Callable[[], Any]
) -> tuple[int, list[Path]]:
    """(rows, files): row group by row group into ``part-00000.parquet``, … in `folder`,
    a new part every `PARQUET_GROUPS_PER_FILE` row groups."""
    pa = require_extra("pyarrow", "pandas", "export to parquet")
    pq = require_extra("pyarrow.parquet", "pandas", "export to parquet")
    rows, groups, files = 0, 0, []
    writer = None
    try:
        for chunk in chunks:
            table = _arrow_table(pa, chunk)
            if writer is not None and groups == PARQUET_GROUPS_PER_FILE:
                writer.close()
                writer = None
            if writer is None:
                files.append(folder / f"part-{len(files):05d}.parquet")
                writer, groups = _parquet_writer(pq, files[-1], table.schema, chunk), 0
            writer.write_table(table, row_group_size=max(chunk.rows, 1))
            rows += chunk.rows
            groups += 1
            del table
            _release(pa)
        if writer is None:  # no row: a file with the columns only
            none = empty()
            table = _arrow_table(pa, none)
            files.append(folder / "part-00000.parquet")
            writer = _parquet_writer(pq, files[-1], table.schema, none)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return rows, files


def _parquet_writer(pq: Any, tmp: Path, schema: Any, chunk: tables.TableChunk) -> Any:
    """A writer that dictionary-encodes the categorical columns only (trying it on the
    numbers, all distinct, costs three times the write)."""
    return pq.ParquetWriter(tmp, schema, use_dictionary=sorted(chunk.categories))


def _write_csv(tmp: Path, chunks: Iterable[Any], empty: Callable[[], Any]) -> int:
    """A header, then each chunk appended, through `pyarrow.csv.CSVWriter` (strings
    quoted; floats in their shortest form that reads back exactly)."""
    pa = require_extra("pyarrow", "pandas", "export to CSV")
    pcsv = require_extra("pyarrow.csv", "pandas", "export to CSV")
    require_extra("pyarrow.compute", "pandas", "export to CSV")
    pool = _csv_pool(pa)
    rows = 0
    writer = None
    try:
        for chunk in chunks:
            table = _arrow_table(pa, chunk, strings=True, pool=pool)
            if writer is None:
                writer = pcsv.CSVWriter(tmp, table.schema, memory_pool=pool)
            writer.write_table(table)
            rows += chunk.rows
            del table
            _release(pa)
        if writer is None:  # no row: the header only
            table = _arrow_table(pa, empty(), strings=True, pool=pool)
            writer = pcsv.CSVWriter(tmp, table.schema, memory_pool=pool)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _write_netcdf(out: Path, runs: list[Run], sections: list[str], chunk_rows: int) -> ExportFile:
    """Every run's sections as groups ``<run>/<section>`` of one netCDF-4 file."""
    if not out.parent.is_dir():
        raise StoreError(f"{_OUT} {out}: its folder does not exist; create it first", file=out)
    values = 0
    try:
        with atomic_output(out) as tmp:
            for run in runs:
                for section in sections:
                    values += _netcdf_section(tmp, run, section, chunk_rows)
    except OSError as exc:
        raise StoreError(f"{_OUT} {out}: cannot write ({exc.strerror or exc})", file=out) from None
    return ExportFile(str(out), list(sections), values, out.stat().st_size)


def _netcdf_section(path: Path, run: Run, section: str, chunk_rows: int) -> int:
    """One group of the netCDF file: the small variables through xarray, the large one
    (if any) written matrix by matrix, step chunk by step chunk; the values written."""
    h5netcdf = require_extra("h5netcdf", "xarray", "export to netCDF")

    group = f"{run.name}/{section}"
    mode = "a" if path.exists() and path.stat().st_size else "w"
    if section not in tables.STACKED:
        data = run.to_xarray(section)
        data.to_netcdf(path, mode=mode, group=group, engine="h5netcdf")
        return int(sum(v.size for v in data.data_vars.values()))
    skeleton, rows, paths = tables.xarray_skeleton(run, section)
    skeleton.to_netcdf(path, mode=mode, group=group, engine="h5netcdf")
    variable, stacked, last = tables.STACKED[section]
    store = run._store
    width = skeleton.sizes[last]
    written = int(sum(v.size for v in skeleton.data_vars.values()))
    # steps per HDF5 chunk, evened out so that the last chunk is not mostly empty
    # (a chunk is allocated whole: 154 steps in chunks of 128 would take 256)
    steps = max(1, min(len(rows), chunk_rows // max(1, width)))
    steps = -(-len(rows) // -(-len(rows) // steps)) if len(rows) else 1
    with h5netcdf.File(path, "a") as nc:
        v = nc[group].create_variable(
            variable,
            (stacked, "step", last),
            dtype="f8",
            fillvalue=np.nan,
            chunks=(1, steps, width) if len(rows) and width else None,
        )
        for j, dataset in enumerate(paths):
            n = int(store.file[dataset].shape[1])
            for a in range(0, len(rows), steps):
                part = rows[a : a + steps]
                v[j, a : a + len(part), :n] = store.read_rows(dataset, part)
                written += len(part) * n
    return written
