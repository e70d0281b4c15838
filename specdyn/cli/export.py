"""`specdyn export RUN... --format parquet|csv|netcdf --out PATH`: runs' sections as files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..store import DEFAULT_CHUNK_ROWS, EXPORT_FORMATS, TABLE_SECTIONS, export
from ._options import HomeOption, JsonOption
from ._output import Output


def export_command(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Run names in the workspace, or store paths (one or more).", show_default=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The file (one section; parquet, CSV or netCDF), or a folder holding one "
            "file per section (parquet, CSV). Files already there are replaced.",
            show_default=False,
        ),
    ],
    format: Annotated[
        str, typer.Option("--format", help=f"One of {', '.join(EXPORT_FORMATS)}.")
    ] = "parquet",
    section: Annotated[
        list[str] | None,
        typer.Option(
            "--section",
            help=f"A section: {', '.join(TABLE_SECTIONS)} (repeat it, or separate with commas; "
            "default: every section all the runs have).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    chunk_rows: Annotated[
        int, typer.Option("--chunk-rows", min=1, help="Table rows read and written at once.")
    ] = DEFAULT_CHUNK_ROWS,
) -> None:
    """Write the runs' tables (done rows only, one `run` column) as parquet, CSV or netCDF."""
    out_ = Output(json_mode=json_out)
    sections = [s.strip() for item in section or () for s in item.split(",") if s.strip()]
    report = export(
        runs, out=out, format=format, section=sections or None, home=home, chunk_rows=chunk_rows
    )
    if out_.json_mode:
        out_.json(report.to_dict())
        return
    out_.table(
        f"exported {', '.join(report.runs)} ({report.format}, {report.seconds:.1f} s)",
        ("file", "sections", "rows", "bytes"),
        ((f.path, ", ".join(f.sections), f.rows, f.bytes) for f in report.files),
    )
