"""`specdyn export RUN... --format parquet|csv|netcdf --out PATH`: runs' sections as files
(or a comparison's: `specdyn export --comparison NAME --out PATH`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..store import (
    COMPARISON_SECTIONS,
    DEFAULT_CHUNK_ROWS,
    EXPORT_CHUNK_ROWS,
    EXPORT_FORMATS,
    TABLE_SECTIONS,
    export,
)
from ._options import HomeOption, JsonOption
from ._output import Output


def export_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The file (one section; parquet, CSV or netCDF), or a folder holding one "
            "file per section (parquet, CSV). Files already there are replaced.",
            show_default=False,
        ),
    ],
    runs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Run names in the workspace, or store paths (one or more; none with "
            "--comparison).",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help=f"One of {', '.join(EXPORT_FORMATS)}.")
    ] = "parquet",
    section: Annotated[
        list[str] | None,
        typer.Option(
            "--section",
            help=f"A section: {', '.join(TABLE_SECTIONS)}; of a comparison: "
            f"{', '.join(COMPARISON_SECTIONS)} (repeat it, or separate with commas; "
            "default: every section all the runs have).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            "--chunk-rows",
            min=1,
            help=f"Table rows read and written at once (default {EXPORT_CHUNK_ROWS}, "
            f"{DEFAULT_CHUNK_ROWS} for netCDF).",
            show_default=False,
        ),
    ] = None,
    comparison: Annotated[
        str | None,
        typer.Option(
            "--comparison",
            help="Export this comparison store (a name in <home>/comparisons, or a path) "
            "instead of runs.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the runs' tables (done rows only, one `run` column), or a comparison's, as
    parquet, CSV or netCDF."""
    out_ = Output(json_mode=json_out)
    sections = [s.strip() for item in section or () for s in item.split(",") if s.strip()]
    report = export(
        runs or (),
        out=out,
        format=format,
        section=sections or None,
        home=home,
        chunk_rows=chunk_rows,
        comparison=comparison,
    )
    if out_.json_mode:
        out_.json(report.to_dict())
        return
    out_.table(
        f"exported {report.comparison or ', '.join(report.runs)} ({report.format}, "
        f"{report.seconds:.1f} s)",
        ("file", "sections", "rows", "bytes"),
        ((f.path, ", ".join(f.sections), f.rows, f.bytes) for f in report.files),
    )
