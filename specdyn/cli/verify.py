"""`specdyn verify [RUN] [--repair]`: check every checksum of a store."""

from __future__ import annotations

from typing import Annotated

import typer

from ..store import verify
from ._options import HomeOption, JsonOption, RunArgument
from ._output import Output


def verify_command(
    run: RunArgument = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Drop the damaged rows: they become not done, and the next analyze of the "
            "run's checkpoints computes them again.",
        ),
    ] = False,
) -> int:
    """Check a store against its checksums: name every damaged step and section.

    Exit 0: intact (or repaired). Exit 1: damaged, or no checksums (schema 2 or older).
    """
    out = Output(json_mode=json_out)
    report = verify(run, home=home, repair=repair)
    if out.json_mode:
        out.json(report.to_dict(), on_failure=True)
        return 0 if report.ok else 1
    if not report.checked:
        out.line(
            f"specdyn: {report.path}: store of schema {report.schema_version} has no checksums "
            "and cannot be verified; run analyze on its checkpoints once to add them",
            err=True,
        )
        return 1
    if report.damage:
        out.table(
            f"damage in {report.path}",
            ("section", "step", "what"),
            ((d.section, "" if d.step is None else d.step, d.what) for d in report.damage[:200]),
        )
        if len(report.damage) > 200:
            out.line(f"... and {len(report.damage) - 200} more damaged rows", err=True)
    for section, step in report.uncommitted:
        out.line(
            f"note: {section} of step {step} was written but never marked done (an interrupted "
            "write, or a done flag damaged); the next analyze computes it again",
            err=True,
        )
    steps = report.damaged_steps
    if report.repaired:
        out.line(
            f"repaired {report.path}: {len(report.dropped)} damaged row(s) dropped"
            + (f" (steps {_few(steps)})" if steps else "")
            + "; run analyze on the run's checkpoints to compute them again",
            err=True,
        )
        return 0
    if report.damage:
        out.line(
            f"specdyn: {report.path}: damaged on disk"
            + (f" at step(s) {_few(steps)}" if steps else "")
            + f"; run `specdyn analyze` on its checkpoints to compute them again, or "
            f"`specdyn verify {report.name} --repair` to drop them",
            err=True,
        )
        return 1
    out.line(f"{report.path}: intact ({report.rows_checked} rows checked)", err=True)
    return 0


def _few(steps: list[int], limit: int = 10) -> str:
    """The first steps, comma-separated."""
    text = ", ".join(str(s) for s in steps[:limit])
    return text + (f" and {len(steps) - limit} more" if len(steps) > limit else "")
