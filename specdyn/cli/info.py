"""`specdyn info [RUN]`: what one store holds."""

from __future__ import annotations

from typing import Annotated

import typer

from ..store import open_run
from ._options import HomeOption, JsonOption
from ._output import Output


def info_command(
    run: Annotated[
        str | None,
        typer.Argument(help="Run name in the workspace, or a store path (default: the only run)."),
    ] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    matrices: Annotated[bool, typer.Option("--matrices", help="Also list every matrix.")] = False,
) -> None:
    """Show what a store holds: steps, matrices, skipped parameters, provenance."""
    out = Output(json_mode=json_out)
    with open_run(run, home=home) as store:
        summary = store.info()
        rows = []
        if matrices or out.json_mode:
            for name in store.matrices:
                meta = store.matrix_info(name)
                rows.append(meta)
    if out.json_mode:
        if matrices:
            summary = dict(summary, matrices_detail=rows)
        out.json(summary)
        return
    out.fields(
        f"run {summary.get('name')}",
        [(k, _short(v)) for k, v in summary.items() if k not in ("provenance",)],
    )
    if matrices:
        out.table(
            "matrices (forward order)",
            ("name", "kind", "shape", "dtype", "method"),
            (
                (
                    m.get("name"),
                    m.get("kind"),
                    "×".join(map(str, m.get("shape", ()))),
                    m.get("source_dtype"),
                    m.get("method", ""),
                )
                for m in rows
            ),
        )


def _short(value: object) -> str:
    """A compact one-cell rendering of a summary value."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)
