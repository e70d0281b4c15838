"""`specdyn plot KIND [RUN]`: figures from a store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ._options import HomeOption, JsonOption
from ._output import Output

_KINDS_HELP = (
    "rank | sv | esd | alignment | agreement | alignment-matrix | metric NAME | dynamics | "
    "all, then the run (name or store path; default: the workspace's only run; metric takes "
    "NAME RUN or RUN NAME, NAME a stored metric, heavy-tailed ones included: "
    "alpha, alpha_weighted, log_alpha_norm, ks_distance, mp_softrank, …); "
    "side-by-side | branch-agreement | split, then a comparison (specdyn compare); "
    "prune, then the folder of specdyn prune --magnitude."
)


def plot_command(
    kind: Annotated[str, typer.Argument(help=_KINDS_HELP, show_default=False)],
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="[RUN], or for metric NAME [RUN] (RUN NAME also works): the metric, the run."
        ),
    ] = None,
    home: HomeOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Figure file (.png, .pdf, .svg) or, for 'all', a folder (default: "
            "<home>/figures/<run>/<kind>[-<subject>][-<options>].png, e.g. "
            "dynamics-logx-error.png; for 'all', <home>/figures/<run>/all[-<options>]/)."
        ),
    ] = None,
    matrix: Annotated[
        str | None, typer.Option(help="Matrix name or unique substring (sv, esd, agreement).")
    ] = None,
    pair: Annotated[
        str | None,
        typer.Option(
            help="Pair name or unique substring (alignment, alignment-matrix); FIRST~ picks "
            "the pair by its first matrix, FIRST~SECOND by both (→ or -> for ~)."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Steps shown: 0,1000,5000 | start:stop | start:stop:stride | lin:N | log:N "
            "(esd: analysed steps only, default log:5)."
        ),
    ] = None,
    matrices: Annotated[
        str | None, typer.Option(help="Regex on the heatmap's row names (matrices or pairs).")
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only the N largest singular values / first N indices "
            "(alignment-matrix: the top-left N × N block, default 20).",
        ),
    ] = None,
    log_x: Annotated[
        bool, typer.Option("--log-x", help="Logarithmic step axis (step 0 kept).")
    ] = False,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic σ axis (sv only).")] = False,
    cmap: Annotated[str | None, typer.Option(help="Matplotlib colour map.")] = None,
    size: Annotated[
        str | None, typer.Option(help="Figure size in inches, WIDTHxHEIGHT, e.g. 8x5.")
    ] = None,
    dpi: Annotated[int, typer.Option(min=10, max=2400, help="Resolution of raster files.")] = 150,
    title: Annotated[str | None, typer.Option(help="Title instead of the default.")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="File format of 'all': png, pdf or svg.")
    ] = "png",
    training: Annotated[
        str | None,
        typer.Option(
            "--training",
            help="dynamics: training metrics to draw, comma-separated "
            "(default: every loss, error and accuracy stored).",
        ),
    ] = None,
    scores: Annotated[
        bool,
        typer.Option("--scores", help="dynamics: add the alignment and agreement score heatmaps."),
    ] = False,
    error: Annotated[
        bool, typer.Option("--error", help="dynamics: draw accuracies as errors (1 − accuracy).")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Draw a figure of a run's spectral dynamics from its store (never from checkpoints)."""
    from ..plots import FIGURE_KINDS, FigureOptions, draw  # matplotlib only for this command

    if kind not in FIGURE_KINDS:
        raise typer.BadParameter(f"choose one of {', '.join(FIGURE_KINDS)}", param_hint="KIND")
    args = list(args or [])
    metric = _metric_argument(args) if kind == "metric" else None
    if len(args) > 1:
        raise typer.BadParameter(f"one run at a time, got {' '.join(args)}", param_hint="RUN")
    if cmap is not None:
        import matplotlib

        if cmap not in matplotlib.colormaps:
            raise typer.BadParameter(
                f"{cmap!r} is not a matplotlib colour map", param_hint="--cmap"
            )
    options = FigureOptions(
        home=home,
        out=out,
        metric=metric,
        matrix=matrix,
        pair=pair,
        steps=steps,
        matrices=matrices,
        top=top,
        log_x=log_x,
        log_y=log_y,
        cmap=cmap,
        size=_parse_size(size),
        dpi=dpi,
        title=title,
        fmt=fmt,
        training=[t.strip() for t in training.split(",") if t.strip()] if training else None,
        scores=scores,
        error=error,
    )
    files = draw(kind, args[0] if args else None, options)
    output = Output(json_mode=json_out)
    if output.json_mode:
        output.json({"files": [str(f) for f in files]})
        return
    for f in files:
        output.line(f)


def _metric_argument(args: list[str]) -> str:
    """The metric of ``plot metric``, taken out of `args`: the one argument that is a
    metric name (stored or heavy-tailed), in either order (``NAME RUN`` or ``RUN NAME``);
    with two names neither known, the first (a store may hold other metrics); a lone
    argument must be a metric."""
    from ..metrics import STORED_METRIC_NAMES

    # every name an analysis stores; `plot_metric` computes the heavy-tailed ones from σ
    # for a store written before they were stored
    names = list(STORED_METRIC_NAMES)
    known = [a for a in args if a in names]
    choose = f"give one of {', '.join(names)} (plot metric NAME [RUN])"
    if not args:
        raise typer.BadParameter(f"no metric name; {choose}", param_hint="NAME")
    if len(args) == 1 and not known:
        raise typer.BadParameter(f"{args[0]!r} is not a metric name; {choose}", param_hint="NAME")
    metric = known[0] if known else args[0]
    args.remove(metric)
    return metric


def _parse_size(text: str | None) -> tuple[float, float] | None:
    """(width, height) in inches from 'WxH'."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[x×]\s*(\d+(?:\.\d+)?)\s*", text)
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
        raise typer.BadParameter(
            f"{text!r}: write WIDTHxHEIGHT in inches, e.g. 8x5", param_hint="--size"
        )
    return float(m.group(1)), float(m.group(2))
