"""Figures of the spectral dynamics, drawn from a run's store only (never checkpoints).

    import specdyn
    ax = specdyn.plot_rank("mlp-wd")                       # matrix × step heatmap
    ax = specdyn.plot_sv("mlp-wd", "layers.1")             # one line per singular value
    ax.figure.savefig("sv.png")

Every function takes a run (an open `specdyn.Run`, or a run name / store path with
`home`), draws into `ax` when given (else a new headless Figure) and returns the
Axes (`plot_alignment_matrix`, which draws several panels, returns the Figure).
Heatmaps put training steps on x (true step values: unevenly spaced checkpoints
keep their place; ``log_x`` uses a symmetric log axis that shows step 0), rows in
the store's forward-depth order, and a colour bar that says what it encodes.
Steps flagged in the store (duplicates, failed revisions) are marked with a red
tick above the axes. A store that lacks what a figure needs raises
`PlotError` naming the ``specdyn analyze`` option that adds it.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import SpecdynError, StoreError
from ..steps import select_steps
from ..store import Run, open_run
from ._compare import COMPARISON_KINDS, plot_branch_agreement, plot_side_by_side, plot_split
from ._dynamics import plot_dynamics
from ._names import PLOT_NAMES
from ._prune import plot_prune

__all__ = [*PLOT_NAMES, "FIGURE_KINDS", "default_output", "short_names"]

RUN_KINDS = (
    "rank", "sv", "alignment", "agreement", "alignment-matrix", "metric", "dynamics", "all",
)  # fmt: skip
FIGURE_KINDS = (*RUN_KINDS, *COMPARISON_KINDS, "prune")
FORMATS = ("png", "pdf", "svg")

# Labels of the stored metrics, for colour bars.
_METRIC_LABELS = {
    "normalized_effective_rank": "normalised effective rank exp(H)/R",
    "effective_rank": "effective rank exp(H)",
    "entropy": "spectral entropy H (nats)",
    "spectral_norm": "spectral norm σ₁",
    "frobenius_norm": "Frobenius norm",
    "nuclear_norm": "nuclear norm Σσ",
    "stable_rank": "stable rank Σσ²/σ₁²",
}

_DEFAULT_SIZE = (7.0, 4.5)

_SINGULAR = {"matrices": "matrix", "pairs": "pair"}


class PlotError(SpecdynError):
    """A figure cannot be drawn from this store (say which analyze option adds what is missing)."""


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _opened(run: Run | str | os.PathLike | None, home) -> Iterator[Run]:
    """The run itself, or the store opened by name/path (and closed afterwards)."""
    if isinstance(run, Run):
        yield run
        return
    with open_run(run, home=home) as opened:
        yield opened


def _axes(ax: Axes | None, size: tuple[float, float] | None) -> Axes:
    """`ax`, or the single Axes of a new headless Figure."""
    if ax is not None:
        return ax
    fig = Figure(figsize=size or _DEFAULT_SIZE, layout="constrained")
    return fig.add_subplot()


def _step_columns(run: Run, steps: str | None) -> np.ndarray:
    """Column indices of the done steps selected by a SPEC §7 ``--steps`` value."""
    done = run.steps
    if not done.size:
        raise PlotError(f"{run.path}: no step is done yet; run specdyn analyze first")
    if steps is None:
        return np.arange(done.size)
    chosen = set(select_steps(done.tolist(), steps))
    return np.array([i for i, s in enumerate(done.tolist()) if s in chosen], dtype=np.int64)


def _step_label(run: Run) -> str:
    """The x-axis label: training step, or epoch when that is all the run knows."""
    return "epoch" if run.step_unit == "epoch" else "training step"


def _edges(ax: Axes, x: np.ndarray, log_x: bool) -> np.ndarray:
    """Cell edges around each x value, midway in the axis' own scale."""
    _set_x_scale(ax, x, log_x)
    transform = ax.xaxis.get_transform()
    t = transform.transform(np.asarray(x, dtype=np.float64))
    if t.size == 1:
        mid = np.array([t[0] - 0.5, t[0] + 0.5])
    else:
        inner = (t[1:] + t[:-1]) / 2
        mid = np.concatenate([[t[0] - (inner[0] - t[0])], inner, [t[-1] + (t[-1] - inner[-1])]])
    return transform.inverted().transform(mid)


def _set_x_scale(ax: Axes, x: np.ndarray, log_x: bool) -> None:
    """Linear, or symmetric-log (linear below the first positive step, so 0 shows)."""
    if not log_x:
        return
    from matplotlib.ticker import FixedLocator

    positive = np.asarray(x)[np.asarray(x) > 0]
    linthresh = float(positive.min()) if positive.size else 1.0
    ax.set_xscale("symlog", linthresh=linthresh)
    # 0, then powers of ten from the linear threshold on (ticks inside the linear
    # part would crowd step 0)
    top = float(np.max(x)) if len(x) else 1.0
    powers = [10.0**e for e in range(0, int(math.log10(max(top, 1.0))) + 2)]
    ax.xaxis.set_major_locator(FixedLocator([0.0, *[p for p in powers if p >= linthresh]]))


def _mark_flags(ax: Axes, run: Run, x: np.ndarray) -> None:
    """Red ticks above the axes at flagged steps (duplicates, failed revisions)."""
    flags = run.step_flags
    if not flags:
        return
    lo, hi = (float(np.min(x)), float(np.max(x))) if len(x) else (0.0, 0.0)
    marked = [s for s in sorted(flags) if lo <= s <= hi]
    if not marked:
        return
    ax.scatter(
        marked,
        [1.0] * len(marked),
        transform=ax.get_xaxis_transform(),
        marker="v",
        color="red",
        s=18,
        clip_on=False,
        zorder=5,
        label="flagged step",
    )
    ax.annotate(
        f"▼ flagged: {len(marked)} step(s)",
        xy=(1.0, -0.02),
        xycoords="axes fraction",
        xytext=(0, -18),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=7,
        color="red",
    )


def short_names(names: Sequence[str], width: int = 48) -> list[str]:
    """Readable labels for long matrix or pair names.

    Drops ``.weight`` before a slice or at the end and, when there are several
    names, the dotted prefix they all share (e.g. ``gpt_neox.``; never up to a
    layer index, so ``layers.3`` stays whole); a pair ``A~B`` becomes ``A → B``
    with B's prefix shared with A dropped. What is still longer than `width`
    characters loses leading components (``…`` marks the cut), keeping the end,
    which tells matrices apart. Labels stay distinct when the names were (else
    the cleaned full names are returned).
    """
    names = list(names)
    if not names:
        return []
    halves = [[_clean_part(h).split(".") for h in n.split("~", 1)] for n in names]
    common = 0
    if len(names) > 1:
        every = [h for pair in halves for h in pair]
        while all(len(h) > common + 1 and h[common] == every[0][common] for h in every):
            common += 1
        if common and any(h[common].isdigit() for h in every):
            common -= 1  # keep the container with its index: "layers.1…"
    labels = []
    for pair in halves:
        first = ".".join(pair[0][common:])
        if len(pair) == 1:
            labels.append(first)
        else:
            labels.append(f"{first} → {_relative(pair[0][common:], pair[1][common:])}")
    # cut at dots from the left first; if that merges names, elide the middle instead
    for fit in (_fit, _elide):
        out = [fit(label, width) for label in labels]
        if len(set(out)) == len(set(names)):
            return out
    return [_clean_name(n) for n in names]


def _clean_part(name: str) -> str:
    """A matrix name without ``.weight`` before a slice or at the end."""
    return re.sub(r"\.weight(?=$|\[)", "", name)


def _relative(first: list[str], second: list[str]) -> str:
    """The second name without the dotted prefix it shares with the first (never
    cutting just before an index: "layers.1.attention…" keeps "layers")."""
    shared = 0
    while shared < min(len(first), len(second)) - 1 and first[shared] == second[shared]:
        shared += 1
    if 0 < shared < len(second) and second[shared].isdigit():
        shared -= 1
    return ".".join(second[shared:])


def _clean_name(name: str) -> str:
    """``.weight`` dropped; a pair ``A~B`` as ``A → B`` (B without the prefix it shares with A)."""
    first, sep, second = name.partition("~")
    first = _clean_part(first)
    if not sep:
        return first
    return f"{first} → {_relative(first.split('.'), _clean_part(second).split('.'))}"


def _fit(text: str, width: int) -> str:
    """`text` cut from the left at dots (then in the middle) to at most `width` characters."""
    if len(text) <= width:
        return text
    head, arrow, tail = text.partition(" → ")
    if arrow:
        half = max(8, (width - 3) // 2)
        return f"{_fit(head, half)} → {_fit(tail, width - 3 - min(len(head), half))}"
    comps = text.split(".")
    while len(comps) > 2 and len(".".join(comps)) + 2 > width:
        comps = comps[1:]
    text2 = "…." + ".".join(comps) if len(comps) < len(text.split(".")) else text
    if len(text2) <= width:
        return text2
    return _elide(text, width)


def _elide(text: str, width: int) -> str:
    """`text` with its middle replaced by "…" to fit `width` characters."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[-(keep - keep // 2) :]


def _row_ticks(ax: Axes, labels: Sequence[str], max_labels: int = 40) -> None:
    """Row labels (every n-th when there are many), first row on top."""
    n = len(labels)
    every = max(1, math.ceil(n / max_labels))
    ticks = list(range(0, n, every))
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7 if n > 12 else 8)


def _heatmap(
    ax: Axes,
    run: Run,
    data: np.ndarray,
    rows: Sequence[str],
    x: np.ndarray,
    *,
    log_x: bool,
    cmap: str,
    label: str,
    row_label: str,
    title: str | None,
    vmin: float | None = None,
    vmax: float | None = None,
    row_ticks: bool = True,
) -> Axes:
    """Rows × steps heatmap with true step positions and a labelled colour bar."""
    edges = _edges(ax, x, log_x)
    y = np.arange(len(rows) + 1) - 0.5
    mesh = ax.pcolormesh(
        edges, y, np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, shading="flat"
    )
    ax.set_ylim(len(rows) - 0.5, -0.5)  # forward depth downwards, as in the paper
    if row_ticks:
        _row_ticks(ax, short_names(rows, width=64 if any("~" in n for n in rows) else 48))
    ax.set_ylabel(row_label)
    ax.set_xlabel(_step_label(run))
    ax.figure.colorbar(mesh, ax=ax, label=label)
    if title:
        ax.set_title(title, fontsize=10)
    _mark_flags(ax, run, x)
    return ax


def _filtered(names: Sequence[str], pattern: str | None, what: str, run: Run) -> list[int]:
    """Indices of names matching a regex (all when None), or PlotError naming a few."""
    if pattern is None:
        return list(range(len(names)))
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise PlotError(f"--{what} {pattern!r} is not a valid regular expression ({exc})") from None
    hits = [i for i, n in enumerate(names) if rx.search(n)]
    if not hits:
        raise PlotError(
            f"{run.path}: no {_SINGULAR.get(what, what)} matches {pattern!r} "
            f"(e.g. {', '.join(list(names)[:3])})"
        )
    return hits


def _need_vectors(run: Run, what: str) -> None:
    """PlotError when the store holds values only."""
    if run.vectors_config is None:
        raise PlotError(
            f"{run.path}: the {what} figure needs singular vectors, but this store holds "
            "values only; re-run specdyn analyze on its checkpoints without --values-only"
        )


def _resolve(call, *args):
    """Turn a store lookup error (ambiguous / unknown name) into a PlotError."""
    try:
        return call(*args)
    except StoreError as exc:
        raise PlotError(str(exc)) from None


# ----------------------------------------------------------------------------- figures


def plot_metric(
    run: Run | str | os.PathLike | None = None,
    metric: str = "normalized_effective_rank",
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    matrices: str | None = None,
    log_x: bool = False,
    cmap: str = "viridis",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """Heatmap of one stored scalar metric: matrices (forward order) × steps.

    Args:
        run: a `Run`, or a run name / store path (None: the workspace's only run).
        metric: a name of `Run.metric_names` (default the normalised effective rank).
        home: workspace for a run given by name.
        ax: Axes to draw into (default: a new Figure).
        steps: SPEC §7 ``--steps`` among the done steps; matrices: regex on names.
        log_x: symmetric-log step axis (step 0 shown); cmap: colour map;
        title: axes title (default: run and metric); size: (w, h) inches of a new Figure.

    Returns:
        The Axes; its QuadMesh holds exactly the stored values (rows × columns).
    """
    with _opened(run, home) as r:
        if metric not in r.metric_names:
            raise PlotError(
                f"{r.path}: no metric {metric!r}; stored metrics: {', '.join(r.metric_names)}"
            )
        cols = _step_columns(r, steps)
        rows = _filtered(r.matrices, matrices, "matrices", r)
        data = r.metric(metric)[np.ix_(rows, cols)]
        ax = _axes(ax, size)
        return _heatmap(
            ax,
            r,
            data,
            [r.matrices[i] for i in rows],
            r.steps[cols],
            log_x=log_x,
            cmap=cmap,
            label=_METRIC_LABELS.get(metric, metric),
            row_label="matrix (forward depth)",
            title=title if title is not None else f"{r.name}: {_METRIC_LABELS.get(metric, metric)}",
        )


def plot_rank(run: Run | str | os.PathLike | None = None, **options) -> Axes:
    """The normalised effective rank exp(H)/R of every matrix over training (paper Fig. 2–3).

    Same options as `plot_metric` (without `metric`); returns the Axes.
    """
    return plot_metric(run, "normalized_effective_rank", **options)


def plot_sv(
    run: Run | str | os.PathLike | None,
    matrix: str,
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    top: int | None = None,
    log_x: bool = False,
    log_y: bool = False,
    cmap: str = "viridis",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """One line per singular value of one matrix over training, coloured by rank
    (darker = larger, as in the paper's Fig. 3).

    Args:
        matrix: exact name or unique substring (an ambiguous one lists candidates).
        top: only the `top` largest singular values (default: all).
        log_y: logarithmic σ axis. Other options as `plot_metric`.

    Returns:
        The Axes, with exactly min(top, R) lines (σ_1 first) and a colour bar of the index i.
    """
    import matplotlib
    from matplotlib import cm, colors

    with _opened(run, home) as r:
        name = _resolve(r.find_matrix, matrix)
        cols = _step_columns(r, steps)
        sigma = r.sigma(name)[cols]
        count = sigma.shape[1] if top is None else max(1, min(int(top), sigma.shape[1]))
        x = r.steps[cols]
        ax = _axes(ax, size)
        _set_x_scale(ax, x, log_x)
        # darker = larger: index 1 at the darker end of the map, whichever end that is
        norm = colors.Normalize(vmin=1, vmax=max(count, 2))
        colour_map = matplotlib.colormaps[cmap]
        if _luminance(colour_map(0.0)) > _luminance(colour_map(1.0)):
            colour_map = colour_map.reversed()
        mapper = cm.ScalarMappable(norm=norm, cmap=colour_map)
        for i in range(count):
            ax.plot(x, sigma[:, i], color=mapper.to_rgba(i + 1), linewidth=0.9)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(_step_label(r))
        ax.set_ylabel("singular value σᵢ")
        from matplotlib.ticker import MaxNLocator

        bar = ax.figure.colorbar(mapper, ax=ax, label="index i (1 = largest)")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        shown = short_names([name], 70)[0]
        ax.set_title(title if title is not None else f"{r.name}: {shown}", fontsize=10)
        _mark_flags(ax, r, x)
        return ax


def _luminance(rgba: Sequence[float]) -> float:
    """Relative luminance of an RGBA colour (Rec. 709 weights)."""
    return 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]


def plot_alignment(
    run: Run | str | os.PathLike | None,
    pair: str,
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    top: int | None = None,
    log_x: bool = False,
    cmap: str = "magma",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """The alignment diagonal A(t)_ii of one pair over training (paper Fig. 2, 5 left).

    Rows are the index i (1 on top), columns the steps; per-head pairs show the
    diagonal averaged over heads. `top`: only the first `top` indices.
    Returns the Axes; its QuadMesh holds the stored diagonal (i × step).
    """
    with _opened(run, home) as r:
        _need_vectors(r, "alignment")
        name = _resolve(r.find_pair, pair)
        label = "alignment Aᵢᵢ = |⟨uᵢ, v′ᵢ⟩|"
        return _diagonal(
            r, r.alignment(name), name, label, ax, size, steps, top, log_x, cmap, title
        )


def plot_agreement(
    run: Run | str | os.PathLike | None,
    matrix: str,
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    top: int | None = None,
    log_x: bool = False,
    cmap: str = "magma",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """The agreement diagonal S(t)_ii of one matrix with the reference step (paper
    Fig. 11 top). Rows are the index i, columns the steps. Returns the Axes."""
    with _opened(run, home) as r:
        _need_vectors(r, "agreement")
        name = _resolve(r.find_matrix, matrix)
        label = f"agreement Sᵢᵢ with {r.step_unit} {r.reference}"
        return _diagonal(
            r, r.agreement(name), name, label, ax, size, steps, top, log_x, cmap, title
        )


def _diagonal(
    r: Run,
    diagonal: np.ndarray,
    name: str,
    label: str,
    ax: Axes | None,
    size: tuple[float, float] | None,
    steps: str | None,
    top: int | None,
    log_x: bool,
    cmap: str,
    title: str | None,
) -> Axes:
    """Index × step heatmap of a stored diagonal [T_done, k] (the first `top` indices)."""
    cols = _step_columns(r, steps)
    diag = diagonal[cols]
    k = diag.shape[1] if top is None else max(1, min(int(top), diag.shape[1]))
    return _index_heatmap(
        _axes(ax, size),
        r,
        diag[:, :k].T,
        r.steps[cols],
        log_x=log_x,
        cmap=cmap,
        label=label,
        title=title if title is not None else f"{r.name}: {short_names([name], 70)[0]}",
    )


def _index_heatmap(
    ax: Axes,
    run: Run,
    data: np.ndarray,
    x: np.ndarray,
    *,
    log_x: bool,
    cmap: str,
    label: str,
    title: str,
) -> Axes:
    """Index i (1 on top) × steps heatmap of a diagonal, values in [0, 1]."""
    k = data.shape[0]
    _heatmap(
        ax,
        run,
        data,
        [str(i + 1) for i in range(k)],
        x,
        log_x=log_x,
        cmap=cmap,
        label=label,
        row_label="index i",
        title=title,
        vmin=0.0,
        vmax=1.0,
        row_ticks=False,
    )
    ticks = sorted({0, *range(9, k, max(10, 10 * math.ceil(k / 100))), k - 1})
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    return ax


def plot_alignment_score(
    run: Run | str | os.PathLike | None = None,
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    pairs: str | None = None,
    log_x: bool = False,
    cmap: str = "magma",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """The alignment score a(t) of every pair (forward order) over training (paper
    Fig. 5 right). `pairs`: regex on pair names. Returns the Axes."""
    with _opened(run, home) as r:
        _need_vectors(r, "alignment")
        names = [p["name"] for p in r.pairs]
        if not names:
            raise PlotError(
                f"{r.path}: the store has no pairs; give analyze a pairs file (--pairs FILE)"
            )
        rows = _filtered(names, pairs, "pairs", r)
        cols = _step_columns(r, steps)
        data = r.alignment_score()[np.ix_(rows, cols)]
        top = r.vectors_config["score_top"]
        return _heatmap(
            _axes(ax, size),
            r,
            data,
            [names[i] for i in rows],
            r.steps[cols],
            log_x=log_x,
            cmap=cmap,
            label=f"alignment score a(t): mean Aᵢᵢ, i ≤ {top}",
            row_label="pair (forward depth)",
            title=title if title is not None else f"{r.name}: alignment score",
            vmin=0.0,
            vmax=1.0,
        )


def plot_agreement_score(
    run: Run | str | os.PathLike | None = None,
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    matrices: str | None = None,
    log_x: bool = False,
    cmap: str = "magma",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """The agreement score s(t) of every matrix with the reference step (paper Fig. 11
    bottom). `matrices`: regex on names. Returns the Axes."""
    with _opened(run, home) as r:
        _need_vectors(r, "agreement")
        rows = _filtered(r.matrices, matrices, "matrices", r)
        cols = _step_columns(r, steps)
        data = r.agreement_score()[np.ix_(rows, cols)]
        top = r.vectors_config["score_top"]
        return _heatmap(
            _axes(ax, size),
            r,
            data,
            [r.matrices[i] for i in rows],
            r.steps[cols],
            log_x=log_x,
            cmap=cmap,
            label=f"agreement score s(t) with {r.step_unit} {r.reference}: mean Sᵢᵢ, i ≤ {top}",
            row_label="matrix (forward depth)",
            title=title if title is not None else f"{r.name}: agreement score",
            vmin=0.0,
            vmax=1.0,
        )


def plot_alignment_matrix(
    run: Run | str | os.PathLike | None,
    pair: str,
    *,
    home: str | os.PathLike | None = None,
    steps: str | None = None,
    top: int | None = None,
    cmap: str = "magma",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """The whole alignment matrix A(t) of one pair at a few steps, side by side (paper
    Fig. 23). Needs a store analysed with ``--full-matrices``.

    Args:
        steps: which steps (default ``lin:4``: four spread over the run).
        top: show only the top-left `top`×`top` block.

    Returns:
        The Figure: one Axes per step (image i × j) and a shared colour bar.
    """
    with _opened(run, home) as r:
        _need_vectors(r, "alignment-matrix")
        name = _resolve(r.find_pair, pair)
        try:
            full = r.alignment_matrix(name)
        except StoreError:
            raise PlotError(
                f"{r.path}: whole alignment matrices are not stored; re-run specdyn analyze "
                "with --full-matrices"
            ) from None
        cols = _step_columns(r, steps if steps is not None else "lin:4")
        k = full.shape[1] if top is None else max(1, min(int(top), full.shape[1]))
        n = len(cols)
        fig = Figure(figsize=size or (3.2 * n + 1.2, 3.4), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        image = None
        for ax, c in zip(axes, cols, strict=True):
            image = ax.imshow(
                full[c, :k, :k],
                cmap=cmap,
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
                extent=(0.5, k + 0.5, k + 0.5, 0.5),
            )
            ax.set_title(f"{r.step_unit} {int(r.steps[c])}", fontsize=9)
            ax.set_xlabel("index j (second matrix, v′ⱼ)")
        axes[0].set_ylabel("index i (first matrix, uᵢ)")
        fig.colorbar(image, ax=list(axes), label="alignment |⟨uᵢ, v′ⱼ⟩|")
        fig.suptitle(title if title is not None else f"{r.name}: {short_names([name], 70)[0]}")
        return fig


def plot_all(
    run: Run | str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    home: str | os.PathLike | None = None,
    fmt: str = "png",
    dpi: int = 150,
    steps: str | None = None,
    log_x: bool = False,
) -> list[Path]:
    """Write every figure the store allows into the folder `out`; returns the files.

    The rank heatmap and every other stored metric; the singular values of the
    middle matrix (top 50); with vectors, the alignment score and agreement score
    heatmaps, the alignment diagonal of the middle pair, the agreement diagonal
    of the middle matrix, and with full matrices the alignment matrix of the
    middle pair. `fmt`: png, pdf or svg.
    """
    if fmt not in FORMATS:
        raise PlotError(f"format {fmt!r}: use png, pdf or svg")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Figure, stem: str) -> None:
        path = folder / f"{stem}.{fmt}"
        fig.savefig(path, dpi=dpi)
        written.append(path)

    opts = {"steps": steps, "log_x": log_x}
    with _opened(run, home) as r:
        save(plot_rank(r, **opts).figure, "rank")
        from ._dynamics import default_training_metrics

        if default_training_metrics(r.training_names):
            save(plot_dynamics(r, scores=r.vectors_config is not None, **opts), "dynamics")
        for metric in r.metric_names:
            if metric != "normalized_effective_rank":
                save(plot_metric(r, metric, **opts).figure, f"metric-{metric}")
        middle = r.matrices[len(r.matrices) // 2]
        save(plot_sv(r, middle, top=50, **opts).figure, "sv")
        if r.vectors_config is not None:
            save(plot_agreement_score(r, **opts).figure, "agreement-score")
            save(plot_agreement(r, middle, **opts).figure, "agreement")
            if r.pairs:
                mid_pair = r.pairs[len(r.pairs) // 2]["name"]
                save(plot_alignment_score(r, **opts).figure, "alignment-score")
                save(plot_alignment(r, mid_pair, **opts).figure, "alignment")
                if r.vectors_config["full_matrices"]:
                    save(plot_alignment_matrix(r, mid_pair, steps=steps), "alignment-matrix")
    return written


def _resolved(run: Run, kind: str, name: str) -> str:
    """The full pair (alignment) or matrix (agreement) name a substring stands for."""
    return _resolve(run.find_pair if kind == "alignment" else run.find_matrix, name)


def default_output(run: Run, kind: str, subject: str | None = None) -> Path:
    """Where a figure goes without ``--out``: ``<workspace>/figures/<run>/<kind>[-<subject>].png``
    (a folder for kind "all"); the workspace is the store's folder."""
    folder = run.path.parent / "figures" / run.name
    if kind == "all":
        return folder
    stem = kind if subject is None else f"{kind}-{re.sub(r'[^A-Za-z0-9_.]+', '_', subject)}"
    return folder / f"{stem[:120]}.png"


def draw(
    kind: str,
    run: Run | str | os.PathLike | None = None,
    *,
    home: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    metric: str | None = None,
    matrix: str | None = None,
    pair: str | None = None,
    steps: str | None = None,
    matrices: str | None = None,
    top: int | None = None,
    log_x: bool = False,
    log_y: bool = False,
    cmap: str | None = None,
    size: tuple[float, float] | None = None,
    dpi: int = 150,
    title: str | None = None,
    fmt: str = "png",
    training: Sequence[str] | None = None,
    scores: bool = False,
    error: bool = False,
) -> list[Path]:
    """Draw one kind of figure of a run and save it; what ``specdyn plot`` does.

    Args:
        kind: one of `FIGURE_KINDS`: "rank", "metric" (needs `metric`), "sv"
            (needs `matrix`), "alignment" (the a(t) heatmap of every pair; with
            `pair`, that pair's A_ii beside it), "agreement" (the s(t) heatmap;
            with `matrix`, its S_ii beside it), "alignment-matrix" (needs `pair`;
            a store analysed with ``--full-matrices``), "all" (every figure the
            store allows, into a folder), "dynamics" (training curves over the
            rank heatmap; `training` names the curves, `scores` adds the
            alignment and agreement score heatmaps, `error` draws 1 − accuracy), for a comparison store
            "side-by-side", "branch-agreement", "split", and "prune" (the SVA of
            masked against unmasked weights; `run` is the folder or prune.h5 of
            ``specdyn prune --magnitude``, the figure goes beside it).
        run: a `Run`, or a run name / store path (None: the workspace's only run).
        out: the file (format from its extension: png, pdf, svg) or, for "all",
            the folder; default `default_output`.
        fmt: the format of the files "all" writes (png, pdf, svg); "all" takes
            `steps`, `log_x` and `dpi` only (each figure picks its own subject).
        Other options as the ``plot_*`` functions (`matrices`: regex on row names
        of heatmaps; `top`: singular values / diagonal entries shown; `log_y`:
        the sv figure's σ axis).

    Returns:
        The files written.

    Raises:
        PlotError: an unknown kind, a missing or unusable option, a store lacking
            what the figure needs (naming the analyze option that adds it).
    """
    if kind not in FIGURE_KINDS:
        raise PlotError(f"unknown figure {kind!r}; choose one of {', '.join(FIGURE_KINDS)}")
    if kind == "prune":
        if run is None:
            raise PlotError(
                "the prune figure needs the folder (or prune.h5) of specdyn prune --magnitude"
            )
        folder = Path(run).parent if Path(run).suffix == ".h5" else Path(run)
        path = Path(out) if out is not None else folder / "sva.png"
        if path.suffix.lower().lstrip(".") not in FORMATS:
            raise PlotError(f"--out {path}: give a .png, .pdf or .svg file name")
        fig = plot_prune(run, matrix=matrix, top=top, size=size, title=title)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return [path]
    if kind in COMPARISON_KINDS:
        return _draw_comparison(
            kind, run, home=home, out=out, metric=metric, matrix=matrix, pair=pair,
            steps=steps, matrices=matrices, top=top, log_x=log_x, cmap=cmap, size=size,
            dpi=dpi, title=title,
        )  # fmt: skip
    with _opened(run, home) as r:
        if kind == "all":
            unused = [
                f"--{n}"
                for n, v in (("matrix", matrix), ("pair", pair), ("matrices", matrices),
                             ("top", top), ("cmap", cmap), ("size", size), ("title", title),
                             ("log-y", log_y or None))
                if v is not None
            ]  # fmt: skip
            if unused:
                raise PlotError(
                    f"{', '.join(unused)}: not used by 'all', which picks each figure's "
                    "subject; draw that figure on its own"
                )
            folder = Path(out) if out is not None else default_output(r, "all")
            return plot_all(r, folder, fmt=fmt, dpi=dpi, steps=steps, log_x=log_x)
        subject = {"metric": metric, "sv": matrix, "alignment-matrix": pair}.get(kind)
        subject = subject or {"alignment": pair, "agreement": matrix}.get(kind)
        path = Path(out) if out is not None else default_output(r, kind, subject)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in FORMATS:
            raise PlotError(f"--out {path}: give a .png, .pdf or .svg file name")
        common = {"steps": steps, "log_x": log_x, "title": title}
        if cmap is not None:
            common["cmap"] = cmap
        if kind == "dynamics":
            fig = plot_dynamics(
                r, training=training, scores=scores, error=error, steps=steps, matrices=matrices,
                log_x=log_x, size=size, title=title, **({"cmap": cmap} if cmap else {}),
            )  # fmt: skip
        elif kind in ("rank", "metric"):
            if kind == "metric" and not metric:
                raise PlotError(
                    f"the metric figure needs a metric name: {', '.join(r.metric_names)}"
                )
            fig = plot_metric(
                r, metric or "normalized_effective_rank", matrices=matrices, size=size, **common
            ).figure
        elif kind == "sv":
            if not matrix:
                raise PlotError(
                    f"the sv figure needs --matrix NAME (e.g. {', '.join(r.matrices[:3])})"
                )
            fig = plot_sv(r, matrix, top=top, log_y=log_y, size=size, **common).figure
        elif kind == "alignment-matrix":
            if not pair:
                raise PlotError("the alignment-matrix figure needs --pair NAME (see info --pairs)")
            fig = plot_alignment_matrix(
                r,
                pair,
                steps=steps,
                top=top,
                size=size,
                title=title,
                **({"cmap": cmap} if cmap else {}),
            )
        else:
            detail = pair if kind == "alignment" else matrix
            score = plot_alignment_score if kind == "alignment" else plot_agreement_score
            one = plot_alignment if kind == "alignment" else plot_agreement
            row_filter = {"pairs" if kind == "alignment" else "matrices": matrices}
            if detail:
                fig = Figure(figsize=size or (13.0, 4.8), layout="constrained")
                left, right = fig.subplots(1, 2)
                one(r, detail, ax=left, top=top, **dict(common, title=""))
                score(r, ax=right, **row_filter, **dict(common, title=""))
                # the run on top, each panel saying what it shows (long names wrapped)
                label = short_names([_resolved(r, kind, detail)], 70)[0]
                left.set_title(textwrap.fill(label, 60), fontsize=9)
                right.set_title(
                    "every " + ("pair" if kind == "alignment" else "matrix"), fontsize=9
                )
                fig.suptitle(title if title is not None else r.name)
            else:
                fig = score(r, size=size, **row_filter, **common).figure
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return [path]


def _draw_comparison(kind: str, name, *, home, out, metric, matrix, pair, steps, matrices,
                     top, log_x, cmap, size, dpi, title) -> list[Path]:  # fmt: skip
    """`draw` for the figures of a comparison store (`specdyn compare`)."""
    from ._compare import _opened as _opened_comparison

    with _opened_comparison(name, home) as c:
        subject = metric if kind == "side-by-side" else matrix
        folder = c.path.parent.parent / "figures" / c.name
        stem = kind if subject is None else f"{kind}-{re.sub(r'[^A-Za-z0-9_.]+', '_', subject)}"
        path = Path(out) if out is not None else folder / f"{stem[:120]}.png"
        if path.suffix.lower().lstrip(".") not in FORMATS:
            raise PlotError(f"--out {path}: give a .png, .pdf or .svg file name")
        style = {"cmap": cmap} if cmap else {}
        if kind == "side-by-side":
            fig = plot_side_by_side(
                c, metric or "normalized_effective_rank", steps=steps, matrices=matrices,
                log_x=log_x, size=size, title=title, **style,
            )  # fmt: skip
        elif kind == "branch-agreement":
            runs = (0, 1)
            if pair:
                parts = [p.strip() for p in pair.split(",")]
                if len(parts) != 2:
                    raise PlotError(f"--pair {pair!r}: for branch-agreement give RUN_A,RUN_B")
                runs = (parts[0], parts[1])
            elif c.pairs:
                runs = (c.pairs[0][0], c.pairs[0][1])
            fig = plot_branch_agreement(
                c, runs, matrix=matrix, matrices=matrices, top=top, size=size, title=title,
                **style,
            ).figure  # fmt: skip
        else:
            fig = plot_split(c, matrices=matrices, size=size, title=title)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        return [path]
