"""`specdyn prune PATH`: SVD-pruned checkpoints, or lottery-ticket masks and their SVA."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._options import DeviceOption, HomeOption, JsonOption, QuietOption
from ._output import Output

if TYPE_CHECKING:  # annotations only: the command imports the library when it runs
    from ..prune import MagnitudePruneResult, SvdPruneResult


def prune_command(
    path: Annotated[
        Path,
        typer.Argument(help="A checkpoint (file, *.index.json, model folder) or a folder of them."),
    ],
    svd: Annotated[
        str | None,
        typer.Option(
            "--svd",
            help="Keep part of every matrix's SVD: top-half, bottom-half, rank:K or energy:F.",
        ),
    ] = None,
    magnitude: Annotated[
        float | None,
        typer.Option(
            "--magnitude",
            help="Global magnitude mask keeping this fraction P of the weights (0<P<1), "
            "and the SVA of masked vs unmasked matrices.",
        ),
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(
            help="With --magnitude: 'random', a random mask with the same per-parameter counts."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random control mask.")] = 0,
    vectors: Annotated[
        int, typer.Option("--vectors", min=1, help="Singular vectors compared per matrix (SVA).")
    ] = 100,
    score_top: Annotated[
        int, typer.Option(min=1, help="SVA scores average the top N diagonal entries.")
    ] = 10,
    step: Annotated[
        int | None,
        typer.Option(
            help="With --magnitude on a folder: the step the masks come from (default: last)."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="With --svd on a folder: steps to prune: 0,1000 | start:stop[:stride] | lin:N | log:N."
        ),
    ] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(help="Regex on parameter/matrix names to leave untouched (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output file or folder (default: <home>/pruned/<source>-<mode>/).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing output files.")
    ] = False,
    device: DeviceOption = "auto",
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Prune checkpoints: keep part of each matrix's SVD (--svd) or a global magnitude mask (--magnitude)."""
    if (svd is None) == (magnitude is None):
        raise typer.BadParameter("give exactly one of --svd or --magnitude", param_hint="--svd")
    if control is not None and magnitude is None:
        raise typer.BadParameter("only with --magnitude", param_hint="--control")
    if control not in (None, "random"):
        raise typer.BadParameter(
            f"{control!r}: the only control is 'random'", param_hint="--control"
        )
    if step is not None and magnitude is None:
        raise typer.BadParameter(
            "only with --magnitude (use --steps with --svd)", param_hint="--step"
        )
    if steps is not None and svd is None:
        raise typer.BadParameter(
            "only with --svd (use --step with --magnitude)", param_hint="--steps"
        )
    from ..prune import prune_magnitude, prune_svd  # torch: imported when a command computes

    output = Output(json_mode=json_out, quiet=quiet)
    if svd is not None:
        result = prune_svd(
            path, svd, out=out, keep=tuple(keep or ()), steps=steps, home=home, overwrite=overwrite
        )
        _render_svd(result, output)
    else:
        result = prune_magnitude(
            path,
            magnitude,
            out=out,
            control=control,
            seed=seed,
            k=vectors,
            score_top=score_top,
            step=step,
            keep=tuple(keep or ()),
            home=home,
            overwrite=overwrite,
            device=device,
        )
        _render_magnitude(result, output)
    output.notes(result.notes)


def _render_svd(result: SvdPruneResult, out: Output) -> None:
    """Per matrix: kept singular values (range over checkpoints) and Σσ² kept; then the files."""
    if out.json_mode:
        out.json(result.to_dict())
        return
    rows = []
    for m in result.matrices:
        kept = [c.kept[m.name] for c in result.checkpoints if m.name in c.kept]
        span = f"{min(kept)}–{max(kept)}" if kept and min(kept) != max(kept) else str(m.kept)
        rows.append((m.name, f"{m.shape[0]}×{m.shape[1]}", f"{span} of {m.rank}", _pct(m.energy)))
    title = f"prune --svd {result.mode}: {len(result.checkpoints)} checkpoint(s)"
    out.table(title, ("matrix", "shape", "σ kept", "Σσ² kept (last)"), rows)
    left = [u for u in result.untouched if u.reason in ("final layer", "kept by --keep")]
    left += [u for u in result.untouched if u.reason.startswith(("final layer (", "non-finite"))]
    out.fields(
        "output",
        [
            ("written to", result.out),
            ("untouched matrices", ", ".join(f"{u.name} ({u.reason})" for u in left) or "none"),
            (
                "other parameters",
                f"{len(result.untouched) - len(left)} untouched (1-D, buffers, …)",
            ),
        ],
    )


def _render_magnitude(result: MagnitudePruneResult, out: Output) -> None:
    """Per matrix: kept fraction and SVA score per mask; then totals and the files."""
    if out.json_mode:
        out.json(result.to_dict())
        return
    masks = list(result.diagonals)
    rows = [
        (
            m.name,
            f"{m.shape[0]}×{m.shape[1]}",
            _pct(m.kept_fraction),
            *(_score(m.scores[k]) for k in masks),
        )
        for m in result.matrices
    ]
    step = "" if result.step is None else f" at step {result.step}"
    out.table(
        f"prune --magnitude {result.fraction:g}{step}: SVA score (top {result.score_top}) "
        "of masked vs unmasked",
        ("matrix", "shape", "kept", *(f"SVA {k}" for k in masks)),
        rows,
    )
    out.fields(
        "output",
        [
            (
                "kept",
                f"{result.kept} of {result.total} weights ({_pct(result.kept / result.total)})",
            ),
            *((f"masks ({k})", p) for k, p in result.masks.items()),
            *((f"checkpoint ({k})", p) for k, p in result.checkpoints.items()),
            ("results", result.results),
        ],
    )


def _pct(x: float) -> str:
    """A fraction as a percentage, '-' for NaN."""
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _score(x: float) -> str:
    """A score with 3 decimals, 'nan' when undefined."""
    return "nan" if not math.isfinite(x) else f"{x:.3f}"
