"""Figures of the spectral dynamics, drawn from a run's store only (never checkpoints).

    import specdyn
    ax = specdyn.plot_rank("mlp-wd")                       # matrix × step heatmap
    ax = specdyn.plot_sv("mlp-wd", "layers.1")             # one line per singular value
    ax.figure.savefig("sv.png")

Every function takes a run (an open `specdyn.Run`, or a run name / store path with
`home`), draws into `ax` when given (else a new headless Figure) and returns the
Axes (`plot_alignment_matrix`, which draws several panels, returns the Figure).
Heatmaps put training steps on x (true step values: unevenly spaced checkpoints
keep their place; ``log_x`` uses a symmetric log axis that shows step 0), from
exactly the first to the last step shown (the edge columns are half-width), with a
minor tick at each checkpoint; rows in the store's forward-depth order, and a colour
bar that says what it encodes. Steps the store knows but has not analysed yet are
hatched gaps at their own place, and the title says "partial D/T".
Steps flagged in the store (duplicates, failed revisions) are marked with a red
tick above the axes. A store that lacks what a figure needs raises
`PlotError` naming the ``specdyn analyze`` option that adds it.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import StoreError, command_ref, option_ref
from ..metrics import HEAVY_TAIL_NAMES, METRIC_NAMES, heavy_tail_metrics
from ..store import Run
from ._common import (
    PlotError,
    _axes,
    _edges,
    _filtered,
    _find_pair,
    _heatmap,
    _mark_flags,
    _mark_pending,
    _markers,
    _metric_label,
    _need_vectors,
    _opened,
    _resolve,
    _step_axis,
    _step_columns,
    _step_extent,
    _step_label,
    _Steps,
    _titled,
    short_names,
)
from ._esd import _heavy_tail_rows

__all__ = [
    "plot_metric",
    "plot_rank",
    "plot_sv",
    "plot_alignment",
    "plot_agreement",
    "plot_alignment_score",
    "plot_agreement_score",
    "plot_alignment_matrix",
]


# The alignment matrix shows its top-left block of this size by default.
_MATRIX_TOP = 20


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
        metric: a name of `Run.metric_names` (default the normalised effective rank),
            or a heavy-tailed one of `specdyn.metrics.HEAVY_TAIL_NAMES` ("alpha",
            "alpha_weighted", "mp_softrank", …). Stores analysed since these are
            stored hold them and the stored values are drawn; a store that does not
            (written before, and not re-analysed) has them computed from the stored σ
            with `specdyn.metrics.heavy_tail_metrics` (the shapes from the matrix
            table). Either way NaN cells of a heavy-tailed metric (degenerate spectra)
            are drawn as missing and a note counts their reasons.
        home: workspace for a run given by name.
        ax: Axes to draw into (default: a new Figure).
        steps: ``--steps`` (docs/runs.md#steps-grammar) among the run's steps (done or
            not); matrices: regex on names.
        log_x: symmetric-log step axis (step 0 shown); cmap: colour map;
        title: axes title (default: the run; the colour bar names the metric);
        size: (w, h) inches of a new Figure.

    Returns:
        The Axes; its QuadMesh holds exactly the stored (or computed) values (rows ×
        columns), NaN (masked) in the columns of steps not analysed yet.
    """
    with _opened(run, home) as r:
        if metric not in r.metric_names and metric in HEAVY_TAIL_NAMES:
            return _heavy_tail_heatmap(
                r, metric, ax=ax, steps=steps, matrices=matrices, log_x=log_x, cmap=cmap,
                title=title, size=size,
            )  # fmt: skip
        if metric not in r.metric_names:
            raise PlotError(
                f"{r.path}: no metric {metric!r}; stored metrics: {', '.join(r.metric_names)}; "
                f"computed from σ: {', '.join(HEAVY_TAIL_NAMES)}"
            )
        shown = _step_axis(r, steps)
        rows = _filtered(r.matrices, matrices, "matrices", r)
        data = r.values.metric(metric)[:, rows].T  # heatmap rows: matrices
        ax = _heatmap(
            _axes(ax, size),
            r,
            data,
            [r.matrices[i] for i in rows],
            shown,
            log_x=log_x,
            cmap=cmap,
            label=_metric_label(metric),
            row_label="matrix (forward depth)",
            # the colour bar names the metric; the title names the run only
            title=title if title is not None else r.name,
        )
        if metric in HEAVY_TAIL_NAMES and metric not in METRIC_NAMES:
            _heatmap_note(ax, _stored_nan_reasons(r, data, rows, shown))
        return ax


def _stored_nan_reasons(r: Run, data: np.ndarray, rows: list[int], shown: _Steps) -> Counter:
    """Why the shown NaN cells of a stored heavy-tailed metric (data [rows, T_done]) are
    NaN: the fit of those spectra only (degenerate ones: quick) gives the reasons."""
    cols = shown.cols[shown.done]
    reasons: Counter = Counter()
    for i, j in enumerate(rows):
        nan = cols[np.isnan(data[i, cols])]
        if nan.size == 0:
            continue
        name = r.matrices[j]
        shape = tuple(r.values.matrix_info(name)["shape"])
        _, why = heavy_tail_metrics(r.values.sigma(name)[nan], shape, return_reasons=True)
        reasons.update(w or "undefined" for w in why.tolist())
    return reasons


def _heatmap_note(ax: Axes, reasons: Counter) -> None:
    """A note in the lower left corner counting why cells are NaN (drawn as missing)."""
    if not reasons:
        return
    counts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
    ax.text(0.01, 0.01, f"missing (NaN): {counts}", transform=ax.transAxes, fontsize=7,
            color="0.2", ha="left", va="bottom",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5})  # fmt: skip


def _heavy_tail_heatmap(
    r: Run,
    metric: str,
    *,
    ax: Axes | None,
    steps: str | None,
    matrices: str | None,
    log_x: bool,
    cmap: str,
    title: str | None,
    size: tuple[float, float] | None,
) -> Axes:
    """`plot_metric` of a heavy-tailed metric the store does not hold: computed from σ."""
    shown = _step_axis(r, steps)
    rows = _filtered(r.matrices, matrices, "matrices", r)
    data, reasons = _heavy_tail_rows(r, metric, rows, shown)
    ax = _heatmap(
        _axes(ax, size),
        r,
        data,
        [r.matrices[i] for i in rows],
        shown,
        log_x=log_x,
        cmap=cmap,
        label=f"{_metric_label(metric)} (from σ)",
        row_label="matrix (forward depth)",
        title=title if title is not None else r.name,
    )
    _heatmap_note(ax, reasons)
    return ax


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
        The Axes, with exactly min(top, R) lines (σ_1 first; a dot at each step when
        there are 20 steps or fewer; NaN at steps not analysed yet, so the lines break
        there) and a colour bar of the index i.
    """
    import matplotlib
    from matplotlib import cm, colors

    with _opened(run, home) as r:
        name = _resolve(r.find_matrix, matrix)
        shown = _step_axis(r, steps)
        sigma = shown.pick(r.values.sigma(name).T).T  # [S, R], NaN where not analysed
        count = sigma.shape[1] if top is None else max(1, min(int(top), sigma.shape[1]))
        x = shown.x
        ax = _axes(ax, size)
        edges = _edges(ax, x, log_x)
        # darker = larger: index 1 at the darker end of the map, whichever end that is
        norm = colors.Normalize(vmin=1, vmax=max(count, 2))
        colour_map = matplotlib.colormaps[cmap]
        if _luminance(colour_map(0.0)) > _luminance(colour_map(1.0)):
            colour_map = colour_map.reversed()
        mapper = cm.ScalarMappable(norm=norm, cmap=colour_map)
        style = _markers(x.size)
        for i in range(count):
            ax.plot(x, sigma[:, i], color=mapper.to_rgba(i + 1), linewidth=0.9, **style)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(_step_label(r))
        ax.set_ylabel("singular value σᵢ")
        from matplotlib.ticker import MaxNLocator

        bar = ax.figure.colorbar(mapper, ax=ax, label="index i (1 = largest)")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        what = short_names([name], 70)[0]
        default = f"{r.name}: singular values of {what}"
        ax.set_title(_titled(title if title is not None else default, shown), fontsize=10)
        _step_extent(ax, x)
        _mark_pending(ax, edges, shown)
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
    diagonal averaged over heads. `pair`: a pair name or unique part of one, or the pair
    by its matrices, ``FIRST~`` / ``~SECOND`` / ``FIRST~SECOND`` (``→`` or ``->`` for
    ``~``); an ambiguous one lists the candidates, each with the spec that picks it.
    `top`: only the first `top` indices.
    Returns the Axes; its QuadMesh holds the stored diagonal (i × step).
    """
    with _opened(run, home) as r:
        _need_vectors(r, "alignment")
        name = _find_pair(r, pair)
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
    shown = _step_axis(r, steps)
    k = diagonal.shape[1] if top is None else max(1, min(int(top), diagonal.shape[1]))
    return _index_heatmap(
        _axes(ax, size),
        r,
        diagonal[:, :k].T,
        shown,
        log_x=log_x,
        cmap=cmap,
        label=label,
        title=title if title is not None else f"{r.name}: {short_names([name], 70)[0]}",
    )


def _index_heatmap(
    ax: Axes,
    run: Run,
    data: np.ndarray,
    shown: _Steps,
    *,
    log_x: bool,
    cmap: str,
    label: str,
    title: str,
) -> Axes:
    """Index i (1 on top) × steps heatmap of a diagonal [k, T_done], values in [0, 1]."""
    k = data.shape[0]
    _heatmap(
        ax,
        run,
        data,
        [str(i + 1) for i in range(k)],
        shown,
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
                f"{r.path}: the store has no pairs; give {command_ref('analyze')} a pairs file "
                f"({option_ref('vectors.pairs_file', '--pairs FILE')})",
                file=r.path,
            )
        rows = _filtered(names, pairs, "pairs", r)
        shown = _step_axis(r, steps)
        top = r.vectors.config["score_top"]
        return _heatmap(
            _axes(ax, size),
            r,
            r.alignment.score()[:, rows].T,
            [names[i] for i in rows],
            shown,
            log_x=log_x,
            cmap=cmap,
            label=f"alignment score a(t): mean Aᵢᵢ, i ≤ {top}",
            row_label="pair (forward depth)",
            title=title if title is not None else r.name,
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
        shown = _step_axis(r, steps)
        top = r.vectors.config["score_top"]
        return _heatmap(
            _axes(ax, size),
            r,
            r.agreement.score()[:, rows].T,
            [r.matrices[i] for i in rows],
            shown,
            log_x=log_x,
            cmap=cmap,
            label=f"agreement score s(t) with {r.step_unit} {r.reference}: mean Sᵢᵢ, i ≤ {top}",
            row_label="matrix (forward depth)",
            title=title if title is not None else r.name,
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
        top: show only the top-left `top`×`top` block (default 20, where the
            structure is; the whole k×k matrix with ``top=k``).

    Returns:
        The Figure: one Axes per step (image i × j) and a shared colour bar.
    """
    from matplotlib.ticker import MaxNLocator

    with _opened(run, home) as r:
        _need_vectors(r, "alignment-matrix")
        name = _find_pair(r, pair)
        try:
            full = r.alignment.matrix(name)
        except StoreError:
            raise PlotError(
                f"{r.path}: whole alignment matrices are not stored; re-run "
                f"{command_ref('analyze')} with "
                f"{option_ref('vectors.full_matrices=True', '--full-matrices')}",
                file=r.path,
            ) from None
        cols = _step_columns(r, steps if steps is not None else "lin:4")
        k = max(1, min(int(_MATRIX_TOP if top is None else top), full.shape[1]))
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
            for axis in (ax.xaxis, ax.yaxis):  # indices are whole numbers
                axis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("index i (first matrix, uᵢ)")
        fig.colorbar(image, ax=list(axes), label="alignment |⟨uᵢ, v′ⱼ⟩|")
        crop = f", indices 1–{k} of {full.shape[1]}" if k < full.shape[1] else ""
        default = f"{r.name}: {short_names([name], 70)[0]}{crop}"
        fig.suptitle(title if title is not None else default)
        return fig
