"""Figures of a comparison store (`specdyn compare`): runs side by side, branch agreement,
agreement against the split step (paper Fig. 6–8, 14)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..comparison import Comparison, open_comparison
from ..errors import StoreError, command_ref, option_ref
from ..steps import select_steps
from ._common import (
    PlotError,
    _as_plot_error,
    _checkpoint_ticks,
    _edges,
    _metric_label,
    _metric_words,
    _row_ticks,
    _step_label,
    short_names,
)

__all__ = ["plot_side_by_side", "plot_branch_agreement", "plot_split"]


@contextmanager
def _opened(cmp: Comparison | str | os.PathLike | None, home) -> Iterator[Comparison]:
    """The comparison itself, or opened by name/path (and closed afterwards)."""
    if isinstance(cmp, Comparison):
        yield cmp
        return
    if cmp is None:
        raise PlotError(
            f"name the comparison ({command_ref('compare')} writes <home>/comparisons/NAME.h5)"
        )
    try:
        opened = open_comparison(cmp, home)
    except StoreError as exc:
        raise _as_plot_error(exc) from None
    with opened:
        yield opened


def _rows(cmp: Comparison, pattern: str | None) -> list[int]:
    """Indices of the common matrices matching a regex (all when None)."""
    if pattern is None:
        return list(range(len(cmp.matrices)))
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise PlotError(
            f"{option_ref('matrices')} {pattern!r} is not a valid regular expression ({exc})",
            option="matrices",
        ) from None
    hits = [i for i, m in enumerate(cmp.matrices) if rx.search(m)]
    if not hits:
        raise PlotError(f"{cmp.path}: no common matrix matches {pattern!r}")
    return hits


def plot_side_by_side(
    cmp: Comparison | str | os.PathLike | None = None,
    metric: str = "normalized_effective_rank",
    *,
    home: str | os.PathLike | None = None,
    steps: str | None = None,
    matrices: str | None = None,
    log_x: bool = False,
    cmap: str = "viridis",
    size: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """One matrix × step heatmap of `metric` per run on one colour scale, and the final
    value of every matrix per run (one line per run) — weight-decay sweeps, true vs
    random labels (paper Fig. 6, 7).

    Args:
        cmp: an open `Comparison`, or its name / path (with `home`).
        metric: a stored metric ("normalized_effective_rank", "stable_rank", …, or
            "agreement_score" when every run has vectors).
        steps: ``--steps`` (docs/runs.md#steps-grammar) on the union step axis; matrices:
            regex on rows.

    Returns:
        The Figure (R heatmaps and the final-value panel).
    """
    with _opened(cmp, home) as c:
        try:
            data = c.metric(metric)
        except StoreError as exc:
            raise _as_plot_error(exc) from None
        rows = _rows(c, matrices)
        cols = np.arange(c.steps.size)
        if steps is not None:
            chosen = set(select_steps(c.steps.tolist(), steps))
            cols = np.array([i for i, s in enumerate(c.steps.tolist()) if s in chosen])
        data = data[:, rows][:, :, cols]
        x = c.steps[cols]
        n = len(c.labels)
        ncol = min(n, 3)
        nrow = -(-n // ncol) + 1
        fig = Figure(figsize=size or (4.2 * ncol + 1.0, 3.2 * nrow), layout="constrained")
        grid = fig.add_gridspec(nrow, ncol)
        finite = data[np.isfinite(data)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        names = short_names([c.matrices[i] for i in rows])
        mesh = None
        for r, label in enumerate(c.labels):
            ax = fig.add_subplot(grid[r // ncol, r % ncol])
            have = ~np.isnan(data[r]).all(axis=0)
            if not have.any():
                ax.set_title(f"{label}: no steps", fontsize=9)
                continue
            edges = _edges(ax, x[have], log_x)
            mesh = ax.pcolormesh(
                edges, np.arange(len(rows) + 1) - 0.5, np.ma.masked_invalid(data[r][:, have]),
                cmap=cmap, vmin=vmin, vmax=vmax, shading="flat",
            )  # fmt: skip
            ax.set_ylim(len(rows) - 0.5, -0.5)
            # every run on the union's extent (a shorter run ends before the others), a
            # minor tick at each of its own steps
            if x.size > 1:
                ax.set_xlim(float(x[0]), float(x[-1]))
            _checkpoint_ticks(ax, x[have])
            if r % ncol == 0:
                _row_ticks(ax, names, max_labels=25)
            else:
                ax.set_yticks([])
            ax.set_xlabel(_step_label(c), fontsize=8)
            ax.set_title(label, fontsize=9)
        if mesh is not None:
            fig.colorbar(mesh, ax=fig.axes, label=_metric_label(metric), shrink=0.8)
        ax = fig.add_subplot(grid[nrow - 1, :])
        final = c.final(metric)[:, rows]
        for r, label in enumerate(c.labels):
            ax.plot(np.arange(len(rows)), final[r], marker="o", ms=3, label=label)
        ax.set_xticks(np.arange(len(rows)), names, rotation=30, ha="right", fontsize=7,
                      rotation_mode="anchor")  # fmt: skip
        ax.set_ylabel(f"final {_metric_words(metric)}", fontsize=8)
        ax.legend(fontsize=7, ncol=min(4, n))
        fig.suptitle(title if title is not None else _runs_title(c.labels))
        return fig


def _runs_title(labels: list[str]) -> str:
    """A comparison's default title: its runs (the comparison's name may be one made up
    from them, "a-vs-b", which reads worse than the runs themselves)."""
    if len(labels) <= 3:
        return " vs ".join(labels)
    return f"{len(labels)} runs: {labels[0]}, …, {labels[-1]}"


def plot_branch_agreement(
    cmp: Comparison | str | os.PathLike | None = None,
    runs: tuple[int | str, int | str] = (0, 1),
    *,
    home: str | os.PathLike | None = None,
    matrix: str | None = None,
    matrices: str | None = None,
    top: int | None = None,
    cmap: str = "magma",
    ax: Axes | None = None,
    size: tuple[float, float] | None = None,
    title: str | None = None,
) -> Axes:
    """Branch agreement S_ii between two runs as a heatmap over the index i.

    Without `matrix`: one row per common matrix, at the runs' endpoints. With
    `matrix`: that matrix, one row per compared step (two-run mode), or — in split
    mode — one row per split step, averaged over the branch pairs of one trunk
    (paper Fig. 8, middle row).

    Returns:
        The Axes (colour bar "agreement |⟨uᵢ, u′ᵢ⟩|·|⟨vᵢ, v′ᵢ⟩|").
    """
    with _opened(cmp, home) as c:
        if ax is None:
            fig = Figure(figsize=size or (7.0, 4.5), layout="constrained")
            ax = fig.add_subplot()
        try:
            if matrix is not None:
                j = c.matrices.index(c.find_matrix(matrix))
                if c.mode == "split":
                    summary = c.split_summary()
                    data = summary["same_diagonal"][:, j, :]
                    labels = [f"split {s}" for s in summary["steps"]]
                    what = f"{short_names([c.matrices[j]], 60)[0]}, mean over branch pairs"
                else:
                    agr = c.agreement(*runs)
                    data = agr["diagonal"][:, j, :]
                    labels = [
                        f"{a}" if a == b else f"{a} / {b}"
                        for a, b in zip(agr["step_a"], agr["step_b"], strict=True)
                    ]
                    what = short_names([c.matrices[j]], 60)[0]
                row_label = "split step" if c.mode == "split" else c.step_unit
            else:
                rows = _rows(c, matrices)
                data = c.endpoint_agreement(*runs)[rows]
                labels = short_names([c.matrices[i] for i in rows])
                ia, ib, _same = c.pairs[c.pair_index(*runs)]
                what = f"{c.labels[ia]} vs {c.labels[ib]} at their endpoints"
                row_label = "matrix"
        except StoreError as exc:
            raise _as_plot_error(exc) from None
        finite_cols = np.flatnonzero(np.isfinite(data).any(axis=0))
        data = data[:, : (finite_cols[-1] + 1 if finite_cols.size else 1)]
        if top is not None:
            data = data[:, :top]
        kk = data.shape[1]
        mesh = ax.pcolormesh(
            np.arange(kk + 1) + 0.5, np.arange(len(labels) + 1) - 0.5,
            np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, shading="flat",
        )  # fmt: skip
        ax.set_ylim(len(labels) - 0.5, -0.5)
        _row_ticks(ax, labels)
        ax.set_ylabel(row_label)
        ax.set_xlabel("index i (singular vectors by decreasing σ)")
        ax.figure.colorbar(mesh, ax=ax, label="agreement |⟨uᵢ, u′ᵢ⟩|·|⟨vᵢ, v′ᵢ⟩|")
        ax.set_title(title if title is not None else what, fontsize=10)
        return ax


def plot_split(
    cmp: Comparison | str | os.PathLike | None = None,
    *,
    home: str | os.PathLike | None = None,
    matrices: str | None = None,
    size: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Agreement score at the branch endpoints against the split step (paper Fig. 8, 14,
    bottom rows): one line per matrix for branches of one trunk, the mean over
    matrices for branches of different trunks (dashed), and the barrier above when
    it was measured.

    Returns:
        The Figure.
    """
    with _opened(cmp, home) as c:
        try:
            s = c.split_summary()
        except StoreError as exc:
            raise _as_plot_error(exc) from None
        rows = _rows(c, matrices)
        has_barrier = np.isfinite(s["barrier"]).any()
        fig = Figure(figsize=size or (7.0, 6.0 if has_barrier else 4.5), layout="constrained")
        if has_barrier:
            top_ax, ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 2))
            top_ax.plot(s["steps"], s["barrier"], marker="o", color="black")
            top_ax.set_ylabel("barrier (Eq. 6)")
            top_ax.axhline(0.0, color="grey", lw=0.5)
        else:
            ax = fig.add_subplot()
        names = short_names([c.matrices[i] for i in rows])
        colours = _depth_colours(len(rows))
        for n, j in enumerate(rows):
            ax.plot(s["steps"], s["same_score"][:, j], marker="o", ms=3, color=colours[n],
                    label=names[n])  # fmt: skip
        if (s["other_pairs"] > 0).any():
            other = np.nanmean(s["other_score"][:, rows], axis=1)
            ax.plot(s["steps"], other, ls="--", marker="x", color="grey",
                    label="different trunks (mean)")  # fmt: skip
        ax.set_xlabel(f"split {c.step_unit}")
        ax.set_ylabel(f"agreement score (top {c.score_top})")
        ax.set_ylim(0.0, 1.02)
        ax.legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
        default = f"branch agreement against the split step ({len(c.labels)} runs)"
        fig.suptitle(title if title is not None else default)
        return fig


def _depth_colours(n: int) -> list:
    """Colours ordered by depth (first matrix lightest)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.15 + 0.75 * i / max(1, n - 1)) for i in range(n)]
