"""The figure table: one entry per kind of figure that `draw` (``specdyn plot``) makes.

    specdyn.draw("sv", "mlp-wd", FigureOptions(matrix="layers.1", top=20, log_x=True))
    specdyn.draw("rank", "mlp-wd", out="rank.pdf")        # options as keywords, the same

An entry (`FigureKind`) says what the figure is drawn from (a run, a comparison, the
results of ``specdyn prune --magnitude``), its drawing function, which `FigureOptions` it
takes, which one it cannot do without and where it goes by default. `draw` looks the kind
up, refuses the options it does not take, opens the subject, draws and saves.
"""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..comparison import Comparison
from ..errors import option_ref
from ..metrics import HEAVY_TAIL_NAMES
from ..store import Run
from ._all import plot_all
from ._common import (
    FORMATS,
    PlotError,
    _find_pair,
    _opened,
    _resolve,
    _step_axis,
    _titled,
    save_figure,
    short_names,
)
from ._compare import _opened as _opened_comparison
from ._compare import plot_branch_agreement, plot_side_by_side, plot_split
from ._dynamics import plot_dynamics
from ._esd import plot_esd
from ._prune import plot_prune
from ._run import (
    plot_agreement,
    plot_agreement_score,
    plot_alignment,
    plot_alignment_matrix,
    plot_alignment_score,
    plot_metric,
    plot_rank,
    plot_sv,
)

__all__ = [
    "COMPARISON_KINDS",
    "FIGURES",
    "FIGURE_KINDS",
    "RUN_KINDS",
    "FigureKind",
    "FigureOptions",
    "default_output",
    "draw",
]


@dataclass(frozen=True)
class FigureOptions:
    """Everything a figure drawn by `draw` can be asked for; each kind takes some of it
    (`FigureKind.options`), and `draw` refuses the others when they are given.

    Where the figure goes (every kind):
        home: the workspace of a run or comparison given by name (default: `resolve_home`).
        out: the file (.png, .pdf or .svg: the extension sets the format) or, for "all",
            the folder; default `default_output` (for a comparison, ``figures/<name>/``
            of its workspace; for "prune", ``sva[-<matrix>].png`` beside the results).
            A default file name carries every option below that is not at its default
            (``dynamics-logx-error.png``), so figures drawn with other options never
            replace each other.
        dpi: resolution of raster files.
    What it shows:
        metric: a stored metric name (stores analysed since issue 18 hold the
            heavy-tailed ones too), or for "metric" a heavy-tailed one a store lacks,
            computed from σ (`specdyn.metrics.HEAVY_TAIL_NAMES`); "side-by-side",
            default the normalised effective rank.
        matrix: a matrix name or unique substring ("sv", "esd", "agreement",
            "branch-agreement", "prune").
        pair: a pair name or unique substring ("alignment", "alignment-matrix"), or
            ``FIRST~`` / ``~SECOND`` / ``FIRST~SECOND`` (``→`` or ``->`` for ``~``): the
            pair by its matrices; for "branch-agreement" the two runs compared,
            ``"RUN_A,RUN_B"``.
        steps: which steps, in the `specdyn.select_steps` grammar ("esd": each must be
            analysed; default ``log:5`` of the done steps).
        matrices: a regex on the heatmap's row names (matrices, or pairs for "alignment").
        top: only the `top` largest singular values / first `top` indices
            ("alignment-matrix": the top-left block, default 20).
        training: the training metrics of "dynamics" (default: every loss, error, accuracy).
        scores: "dynamics" adds the alignment and agreement score heatmaps.
        error: "dynamics" draws accuracies as errors (1 − accuracy).
        fmt: the format of the files "all" writes: png, pdf or svg.
    How it looks:
        cmap: a matplotlib colour map (default: each figure's own); size: (width,
        height) in inches; title: instead of the default (a store with steps not
        analysed yet still adds "partial D/T"); log_x: symmetric-log step
        axis (step 0 kept); log_y: logarithmic σ axis ("sv").
    """

    # the field order is the order in which refused options are named
    home: str | os.PathLike | None = None
    out: str | os.PathLike | None = None
    metric: str | None = None
    matrix: str | None = None
    pair: str | None = None
    steps: str | None = None
    matrices: str | None = None
    top: int | None = None
    cmap: str | None = None
    size: tuple[float, float] | None = None
    title: str | None = None
    log_y: bool = False
    log_x: bool = False
    dpi: int = 150
    fmt: str = "png"
    training: Sequence[str] | None = None
    scores: bool = False
    error: bool = False


# What every kind takes: `draw` itself uses them, to find the subject and save the figure.
_EVERY_KIND = ("home", "out", "dpi")

# CLI flags whose name is not the option's with "-" for "_"
_FLAGS = {"fmt": "--format"}


@dataclass(frozen=True)
class FigureKind:
    """One kind of figure: what it is drawn from, how, with which options, where it goes.

    Attributes:
        name: the kind, as `draw` and ``specdyn plot`` take it.
        subject: what it is drawn from: "run" (a `Run`, or a run name / store path),
            "comparison" (a `Comparison`, or its name / path) or "prune results" (the
            folder or ``prune.h5`` of ``specdyn prune --magnitude``).
        plot: the drawing function, called with the opened subject and, as keywords,
            those of `options` that are not None; returns the Figure or an Axes of it.
            A kind that `writes_folder` gets the folder second and returns the files.
        options: the `FigureOptions` fields it takes, besides home, out and dpi.
        needs: the option it cannot be drawn without, if any.
        named_by: the option whose value goes into the default file name
            (``sv-layers.1.png``), if any.
        file_stem: the default file name without extension, when not `name`.
        writes_folder: it writes several files into a folder ("all").
    """

    name: str
    subject: str
    plot: Callable[..., Figure | Axes | list[Path]]
    options: tuple[str, ...]
    needs: str | None = None
    named_by: str | None = None
    file_stem: str | None = None
    writes_folder: bool = False


def _alignment_figure(run: Run, *, pair: str | None = None, **options) -> Figure | Axes:
    """The alignment score a(t) of every pair; with `pair`, that pair's A_ii beside it."""
    return _detail_beside_scores(
        run, pair, plot_alignment, plot_alignment_score, "pairs",
        lambda spec: _find_pair(run, spec), "every pair", **options,
    )  # fmt: skip


def _agreement_figure(run: Run, *, matrix: str | None = None, **options) -> Figure | Axes:
    """The agreement score s(t) of every matrix; with `matrix`, its S_ii beside it."""
    return _detail_beside_scores(
        run, matrix, plot_agreement, plot_agreement_score, "matrices", run.find_matrix,
        "every matrix", **options,
    )  # fmt: skip


def _detail_beside_scores(
    run: Run,
    subject: str | None,
    detail: Callable[..., Axes],
    scores: Callable[..., Axes],
    rows_option: str,
    find: Callable[[str], str],
    everything: str,
    *,
    matrices: str | None = None,
    top: int | None = None,
    size: tuple[float, float] | None = None,
    title: str | None = None,
    **shared,
) -> Figure | Axes:
    """The score heatmap of every row alone, or, with `subject`, its diagonal (`detail`)
    on the left of the scores (`shared`: steps, log_x, cmap; `matrices` filters the score
    rows through the figure's `rows_option`)."""
    rows = {rows_option: matrices}
    if not subject:
        return scores(run, size=size, title=title, **rows, **shared)
    fig, (left, right) = _two_panels(size)
    detail(run, subject, ax=left, top=top, title="", **shared)
    scores(run, ax=right, title="", **rows, **shared)
    _title_panels(fig, run, left, _resolve(find, subject), right, everything, title)
    # "partial D/T" when some steps shown are not analysed yet
    fig.suptitle(_titled(fig.get_suptitle(), _step_axis(run, shared.get("steps"))))
    return fig


def _two_panels(size: tuple[float, float] | None) -> tuple[Figure, Sequence[Axes]]:
    """A new Figure with two Axes side by side: one pair or matrix, then all of them."""
    fig = Figure(figsize=size or (13.0, 4.8), layout="constrained")
    return fig, fig.subplots(1, 2)


def _title_panels(
    fig: Figure, run: Run, left: Axes, name: str, right: Axes, every: str, title: str | None
) -> None:
    """The run on top, each panel saying what it shows (long names wrapped)."""
    left.set_title(textwrap.fill(short_names([name], 70)[0], 60), fontsize=9)
    right.set_title(every, fontsize=9)
    fig.suptitle(title if title is not None else run.name)


def _branch_agreement_figure(cmp: Comparison, *, pair: str | None = None, **options) -> Axes:
    """Branch agreement of the two runs `pair` names (``"RUN_A,RUN_B"``; default the
    first pair compared); `options` go to `plot_branch_agreement`."""
    runs: tuple[int | str, int | str] = (0, 1)
    if pair:
        parts = [p.strip() for p in pair.split(",")]
        if len(parts) != 2:
            raise PlotError(
                f"{option_ref('pair')} {pair!r}: for branch-agreement give RUN_A,RUN_B",
                option="pair",
            )
        runs = (parts[0], parts[1])
    elif cmp.pairs:
        runs = (cmp.pairs[0][0], cmp.pairs[0][1])
    return plot_branch_agreement(cmp, runs, **options)


_HEATMAP = ("steps", "matrices", "log_x", "cmap", "size", "title")

FIGURES: MappingProxyType[str, FigureKind] = MappingProxyType({
    kind.name: kind
    for kind in (
        FigureKind("rank", "run", plot_rank, _HEATMAP),
        FigureKind(
            "sv", "run", plot_sv,
            ("matrix", "steps", "top", "log_x", "log_y", "cmap", "size", "title"),
            needs="matrix", named_by="matrix",
        ),
        FigureKind(
            "esd", "run", plot_esd, ("matrix", "steps", "cmap", "size", "title"),
            needs="matrix", named_by="matrix",
        ),
        FigureKind(
            "alignment", "run", _alignment_figure, ("pair", "top", *_HEATMAP), named_by="pair"
        ),
        FigureKind(
            "agreement", "run", _agreement_figure, ("matrix", "top", *_HEATMAP),
            named_by="matrix",
        ),
        FigureKind(
            "alignment-matrix", "run", plot_alignment_matrix,
            ("pair", "steps", "top", "cmap", "size", "title"), needs="pair", named_by="pair",
        ),
        FigureKind(
            "metric", "run", plot_metric, ("metric", *_HEATMAP), needs="metric",
            named_by="metric",
        ),
        FigureKind(
            "dynamics", "run", plot_dynamics, ("training", "scores", "error", *_HEATMAP)
        ),
        FigureKind("all", "run", plot_all, ("fmt", "steps", "log_x"), writes_folder=True),
        FigureKind(
            "side-by-side", "comparison", plot_side_by_side, ("metric", *_HEATMAP),
            named_by="metric",
        ),
        FigureKind(
            "branch-agreement", "comparison", _branch_agreement_figure,
            ("pair", "matrix", "matrices", "top", "cmap", "size", "title"), named_by="matrix",
        ),
        FigureKind("split", "comparison", plot_split, ("matrices", "size", "title")),
        FigureKind(
            "prune", "prune results", plot_prune, ("matrix", "top", "size", "title"),
            named_by="matrix", file_stem="sva",
        ),
    )
})  # fmt: skip

FIGURE_KINDS = tuple(FIGURES)
RUN_KINDS = tuple(k for k, entry in FIGURES.items() if entry.subject == "run")
COMPARISON_KINDS = tuple(k for k, entry in FIGURES.items() if entry.subject == "comparison")


@contextmanager
def _prune_results(results: str | os.PathLike | None, home) -> Iterator[str | os.PathLike]:
    """The results as given (`plot_prune` reads them); a folder on disk, so `home` plays no part."""
    if results is None:
        # the magnitude pruning has no specdyn.<command>() twin: both wordings given
        pruning = option_ref("specdyn.prune.prune_magnitude()", "specdyn prune --magnitude")
        raise PlotError(f"the prune figure needs the folder (or prune.h5) of {pruning}")
    yield results


def _run_figures(run: Run) -> Path:
    """``<workspace>/figures/<run>/``: the workspace is the store's folder."""
    return run.path.parent / "figures" / run.name


def _comparison_figures(cmp: Comparison) -> Path:
    """``<workspace>/figures/<comparison>/``: the store is in ``<workspace>/comparisons/``."""
    return cmp.path.parent.parent / "figures" / cmp.name


def _beside_results(results: str | os.PathLike) -> Path:
    """The folder of the prune results (given as the folder or its prune.h5)."""
    path = Path(results)
    return path.parent if path.suffix == ".h5" else path


# per subject: how `draw` opens it, and the folder its figures go to by default
_SUBJECTS = {
    "run": (_opened, _run_figures),
    "comparison": (_opened_comparison, _comparison_figures),
    "prune results": (_prune_results, _beside_results),
}


# The options a default file name carries, in this order, after the figure's subject
# (`FigureKind.named_by`): what is shown, then how. dpi (the same figure at another
# resolution), out, home and fmt (the extension says it) are not in the name.
_NAMED_OPTIONS = (
    "metric", "matrix", "pair", "steps", "matrices", "top", "log_x", "log_y", "training",
    "scores", "error", "cmap", "size", "title",
)  # fmt: skip

# how a flag reads in a file name
_NAME_FLAGS = {"log_x": "logx", "log_y": "logy", "scores": "scores", "error": "error"}

# characters of option values kept as they are in file names; "," and ":" (the --steps
# grammar) are spelled "+" and "="; "→" and "->" are the "~" of a pair spec
_SAFE = re.compile(r"[A-Za-z0-9._~]")
_SPELLED = {",": "+", ":": "="}


def _safe(value: str, *, pair: bool = False) -> str:
    """`value` as a file-name part: kept characters as they are, "," and ":" spelled out;
    when anything else had to be replaced, a short hash of the value keeps the name
    apart from a value that differs only there. A `pair` spec's "→" and "->" are its
    "~" (they pick the same pair, so the same figure)."""
    text = value.replace("→", "~").replace("->", "~") if pair else value
    out, lossy = [], False
    for ch in text:
        if _SAFE.match(ch):
            out.append(ch)
        elif ch in _SPELLED:
            out.append(_SPELLED[ch])
        else:
            out.append("_")
            lossy = True
    part = "".join(out)
    return f"{part}_{_digest(value)}" if lossy else part


def _digest(value: str) -> str:
    """Six hex digits of the SHA-1 of `value` (a tag, not a secret)."""
    return hashlib.sha1(value.encode("utf-8")).hexdigest()[:6]


def _name_part(option: str, value) -> str:
    """One option's part of a file name: ``logx``, ``top20``, ``steps_0+100``,
    ``size8x5``, ``title_3fa2b1``, ``matrix_layers.1``."""
    if option in _NAME_FLAGS:
        return _NAME_FLAGS[option]
    if option == "top":
        return f"top{int(value)}"
    if option == "size":
        return f"size{float(value[0]):g}x{float(value[1]):g}"
    if option == "title":
        return f"title_{_digest(str(value))}"  # any text: its hash alone
    text = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
    return f"{option}_{_safe(text, pair=option == 'pair')}"


def _figure_name(entry: FigureKind, options: FigureOptions) -> str:
    """The default file name without extension: the kind (or `file_stem`), the subject
    (the `named_by` option's value), then a part for each other option it takes that is
    not at its default (``dynamics-logx-error``), so that a figure drawn with other
    options never replaces this one."""
    parts = [entry.file_stem or entry.name]
    defaults = FigureOptions()
    if entry.named_by and getattr(options, entry.named_by):
        subject = str(getattr(options, entry.named_by))
        parts.append(_safe(subject, pair=entry.named_by == "pair"))
    for option in _NAMED_OPTIONS:
        value = getattr(options, option)
        if option == entry.named_by or option not in entry.options:
            continue
        if value is None or value == getattr(defaults, option) or value in ((), []):
            continue
        parts.append(_name_part(option, value))
    stem = "-".join(parts)
    if len(stem) > 120:  # long names cut, their hash keeps them apart
        stem = f"{stem[:110]}-{_digest(stem)}"
    return stem


def default_output(
    run: Run, kind: str, subject: str | None = None, options: FigureOptions | None = None
) -> Path:
    """Where a figure of a run goes without ``--out``:
    ``<workspace>/figures/<run>/<kind>[-<subject>][-<options>].png``, the workspace being
    the store's folder; for kind "all", the folder ``figures/<run>/all[-<options>]/``.

    Args:
        run: the open run.
        kind: a run kind of `FIGURES`.
        subject: the metric, matrix or pair shown (the kind's `FigureKind.named_by`
            option), when not given in `options`.
        options: the figure's options; each that changes the figure and is not at its
            default adds a part to the name (``dynamics-logx-error.png``,
            ``sv-layers.1-top20.png``); dpi does not.

    Returns:
        The file (or, for "all", the folder).
    """
    entry = FIGURES.get(kind)
    if entry is None:
        raise PlotError(f"unknown figure {kind!r}; choose one of {', '.join(FIGURE_KINDS)}")
    options = options if options is not None else FigureOptions()
    if subject is not None and entry.named_by:
        options = replace(options, **{entry.named_by: subject})
    name = _figure_name(entry, options)
    if entry.writes_folder:
        return _run_figures(run) / name
    return _run_figures(run) / f"{name}.png"


def _refuse_unused(entry: FigureKind, options: FigureOptions) -> None:
    """PlotError naming the options given (not at their defaults) that `entry` does not take."""
    takes = {*_EVERY_KIND, *entry.options}
    unused = [
        f.name
        for f in fields(options)
        if f.name not in takes and getattr(options, f.name) != f.default
    ]
    if not unused:
        return
    named = ", ".join(option_ref(name, _FLAGS.get(name)) for name in unused)
    if entry.writes_folder:
        raise PlotError(
            f"{named}: not used by '{entry.name}', which picks each figure's subject; "
            "draw that figure on its own",
            option=unused[0],
        )
    raise PlotError(f"{named}: not used by the {entry.name} figure", option=unused[0])


def _missing(kind: str, option: str, run: Run) -> str:
    """What a figure of a run cannot be drawn without, with names to choose from."""
    if option == "metric":
        names = ", ".join(dict.fromkeys([*run.metric_names, *HEAVY_TAIL_NAMES]))
        return f"the {kind} figure needs a metric name: {names}"
    if option == "matrix":
        needed = option_ref("matrix=NAME", "--matrix NAME")
        return f"the {kind} figure needs {needed} (e.g. {', '.join(run.matrices[:3])})"
    # the listing of pairs has no specdyn.<command>() twin: both wordings given
    listing = option_ref("run.alignment.pairs", "info --pairs")
    return f"the {kind} figure needs {option_ref('pair=NAME', '--pair NAME')} (see {listing})"


def draw(
    kind: str,
    subject: Run | Comparison | str | os.PathLike | None = None,
    options: FigureOptions | None = None,
    **option_values,
) -> list[Path]:
    """Draw one kind of figure and save it; what ``specdyn plot`` does.

    Args:
        kind: a name of `FIGURES` (in `FIGURE_KINDS`): for a run, "rank", "metric"
            (needs `metric`), "sv" (needs `matrix`), "esd" (log-log ESDs of `matrix` at
            a few steps with their power-law fits), "alignment" (the a(t) heatmap of
            every pair; with `pair`, that pair's A_ii beside it), "agreement" (the s(t)
            heatmap; with `matrix`, its S_ii beside it), "alignment-matrix" (needs
            `pair`; a store analysed with ``--full-matrices``), "dynamics" (training
            curves over the rank heatmap), "all" (every figure the store allows, into a
            folder); for a comparison store, "side-by-side", "branch-agreement", "split";
            "prune" (the SVA of masked against unmasked weights).
        subject: what the kind is drawn from (`FigureKind.subject`): a `Run`, or a run
            name / store path (None: the workspace's only run); a `Comparison`, or its
            name / path; the folder or prune.h5 of ``specdyn prune --magnitude``.
        options: what to draw and where (default: `FigureOptions()`).
        **option_values: `FigureOptions` fields, replacing those of `options`
            (``draw("rank", "mlp-wd", out="rank.pdf", log_x=True)``).

    Returns:
        The files written: the figure's, or those "all" wrote.

    Raises:
        PlotError: an unknown kind, an option the kind does not take, a missing or
            unusable option, a store lacking what the figure needs (naming the
            analyze option that adds it).
        TypeError: a keyword that is no `FigureOptions` field.
    """
    entry = FIGURES.get(kind)
    if entry is None:
        raise PlotError(f"unknown figure {kind!r}; choose one of {', '.join(FIGURE_KINDS)}")
    options = replace(options if options is not None else FigureOptions(), **option_values)
    _refuse_unused(entry, options)
    opened_subject, figures_folder = _SUBJECTS[entry.subject]
    keywords = {n: getattr(options, n) for n in entry.options if getattr(options, n) is not None}
    with opened_subject(subject, options.home) as opened:
        if entry.writes_folder:
            # its own folder (figures/<run>/all/), so that its files never replace those
            # drawn one by one
            default = figures_folder(opened) / _figure_name(entry, options)
            folder = Path(options.out) if options.out is not None else default
            return entry.plot(opened, folder, dpi=options.dpi, **keywords)
        if options.out is not None:
            path = Path(options.out)
        else:
            path = figures_folder(opened) / f"{_figure_name(entry, options)}.png"
        if path.suffix.lower().lstrip(".") not in FORMATS:
            raise PlotError(
                f"{option_ref('out')} {path}: give a .png, .pdf or .svg file name",
                file=path,
                option="out",
            )
        if entry.needs and not getattr(options, entry.needs):
            raise PlotError(_missing(kind, entry.needs, opened), option=entry.needs)
        drawn = entry.plot(opened, **keywords)
        fig = drawn.figure if isinstance(drawn, Axes) else drawn
        return [save_figure(fig, path, options.dpi)]
