"""Eigenvalue spectra (ESDs) of one matrix at a few steps, and WeightWatcher's heavy-tailed
metrics computed from the stored σ (docs/metrics.md#heavy-tailed-metrics-weightwatcher).

    ax = specdyn.plot_esd("mlp-wd", "layers.1", steps="0,500,4000")

The ESD is drawn as WeightWatcher draws it (its "Log-Log ESD"): the density of λ = σ² on
logarithmic bins, log-log axes, each step's fitted power law p(λ) ∝ λ^−α dashed from xmin
on, xmin marked by a dotted vertical line, α in the legend. The stores do not hold the
heavy-tailed metrics yet: `_heavy_tail_rows` computes them from σ for `plot_metric`.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from ..errors import command_ref, option_ref
from ..metrics import EVALS_THRESHOLD, PowerLawFit, heavy_tail_metrics, power_law_fit
from ..steps import select_steps
from ..store import Run
from ._common import (
    PlotError,
    _axes,
    _done_steps,
    _few,
    _opened,
    _resolve,
    _Steps,
    short_names,
)

__all__ = ["DEFAULT_ESD_STEPS", "plot_esd"]

DEFAULT_ESD_STEPS = "log:5"
"""The steps `plot_esd` draws by default: five done steps spread in log(1 + step), the
first and the last among them."""

# fitted power-law lines are drawn through this many points (straight on log-log axes,
# but a curve keeps its shape when the y axis turns linear)
_FIT_POINTS = 50


def plot_esd(
    run: Run | str | os.PathLike | None,
    matrix: str,
    *,
    home: str | os.PathLike | None = None,
    ax: Axes | None = None,
    steps: str | None = None,
    cmap: str = "viridis",
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Axes:
    """Log-log ESDs (density of λ = σ²) of one matrix at a few steps, each with its
    fitted power-law tail (dashed) and xmin (dotted), as WeightWatcher draws them.

    Args:
        run: a `Run`, or a run name / store path (None: the workspace's only run).
        matrix: exact name or unique substring (an ambiguous one lists candidates).
        home: workspace for a run given by name.
        ax: Axes to draw into (default: a new Figure).
        steps: ``--steps`` (docs/runs.md#steps-grammar) among the run's steps; every
            step chosen must be analysed. Default `DEFAULT_ESD_STEPS` among the done steps.
        cmap: colour map of the steps (earliest at its start); title: instead of the
            default (the run and the matrix); size: (w, h) inches of a new Figure.

    Returns:
        The Axes. Per step, in step order: one ESD line (gid ``esd-<step>``: the density,
        per unit λ, of the λ > 1e-5 that `specdyn.metrics.power_law_fit` fits, on shared
        logarithmic bins, empty bins left out) whose legend entry gives α to 3 decimals;
        where the fit succeeds, the fitted law (gid ``fit-<step>``: the tail's share of
        the λ times the continuous power-law density (α − 1)/xmin · (λ/xmin)^−α, from
        xmin to λ_max) and xmin (gid ``xmin-<step>``, a vertical line).

    Raises:
        PlotError: an unknown or ambiguous matrix, or a chosen step not analysed yet.
        StepSpecError: a step that is not in the store, or a spec that does not parse.
    """
    from matplotlib import colormaps

    with _opened(run, home) as r:
        name = _resolve(r.find_matrix, matrix)
        chosen, cols = _esd_steps(r, steps)
        lam = r.values.sigma(name)[cols] ** 2  # [S, R]: the ESD of each chosen step
        fits = [power_law_fit(row) for row in lam]
        edges = _log_bins(lam)
        ax = _axes(ax, size)
        colour_map = colormaps[cmap]
        for i, (step, row, fit) in enumerate(zip(chosen, lam, fits, strict=True)):
            colour = colour_map(0.85 * i / max(len(chosen) - 1, 1))
            _draw_step(ax, r, step, row, fit, edges, colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ = σ²")
        ax.set_ylabel("density p(λ)")
        styles = [
            Line2D([], [], color="0.4", linestyle="--", label="power-law fit"),
            Line2D([], [], color="0.4", linestyle=":", label="xmin"),
        ]
        handles = [line for line in ax.get_lines() if str(line.get_gid()).startswith("esd-")]
        ax.legend(handles=handles + styles, fontsize=7, loc="best")
        shape = "×".join(str(n) for n in r.values.matrix_info(name)["shape"])
        default = f"{r.name}: ESD of {short_names([name], 60)[0]} ({shape})"
        ax.set_title(title if title is not None else default, fontsize=10)
        return ax


def _esd_steps(r: Run, steps: str | None) -> tuple[list[int], np.ndarray]:
    """The chosen steps and their columns among the done steps; PlotError naming those
    chosen but not analysed yet (StepSpecError for a step the store does not hold)."""
    done = _done_steps(r).tolist()
    if steps is None:
        chosen = select_steps(done, DEFAULT_ESD_STEPS)
    else:
        chosen = select_steps(r.values.all_steps.tolist(), steps)
    column = {s: i for i, s in enumerate(done)}
    pending = [s for s in chosen if s not in column]
    if pending:
        raise PlotError(
            f"{r.path}: {option_ref('steps')}: {r.step_unit} {_few(pending)} "
            f"{'is' if len(pending) == 1 else 'are'} not analysed yet (done: {_few(done)}); "
            f"run {command_ref('analyze')} to finish the run, or choose done steps",
            file=r.path,
            option="steps",
        )
    return chosen, np.array([column[s] for s in chosen], dtype=np.int64)


def _log_bins(lam: np.ndarray) -> np.ndarray:
    """Logarithmic bin edges shared by every ESD of `lam` [S, R] (the fitted λ only)."""
    fitted = lam[np.isfinite(lam) & (lam > EVALS_THRESHOLD)]
    if not fitted.size:
        return np.geomspace(EVALS_THRESHOLD, 1.0, 11)
    low, high = float(fitted.min()), float(fitted.max())
    if high <= low * (1 + 1e-9):  # one value: a bin around it
        low, high = low / 2, high * 2
    count = int(np.clip(round(2 * np.sqrt(lam.shape[-1])), 10, 60))
    # widened by a hair, so that the extreme values fall inside the outer bins
    return np.geomspace(low * (1 - 1e-9), high * (1 + 1e-9), count + 1)


def _draw_step(
    ax: Axes, r: Run, step: int, lam: np.ndarray, fit: PowerLawFit, edges: np.ndarray, colour
) -> None:
    """One step's ESD line, labelled with its α, and its fitted law and xmin when fitted."""
    fitted = lam[np.isfinite(lam) & (lam > EVALS_THRESHOLD)]
    counts, _ = np.histogram(fitted, bins=edges)
    density = counts / max(fitted.size, 1) / np.diff(edges)
    centres = np.sqrt(edges[:-1] * edges[1:])  # the geometric middle of each log bin
    keep = counts > 0
    if fit.reason:
        label = f"{r.step_unit} {step}: no fit ({fit.reason})"
    else:
        label = f"{r.step_unit} {step}: α = {fit.alpha:.3f}"
    ax.plot(centres[keep], density[keep], color=colour, marker="o", markersize=3,
            linewidth=1.2, label=label, gid=f"esd-{step}")  # fmt: skip
    if fit.reason:
        return
    x = np.geomspace(fit.xmin, float(fitted.max()), _FIT_POINTS)
    # the tail's share of the fitted λ, so the law lies on the ESD it was fitted to
    share = np.count_nonzero(fitted >= fit.xmin) / fitted.size
    y = share * (fit.alpha - 1.0) / fit.xmin * (x / fit.xmin) ** -fit.alpha
    ax.plot(x, y, color=colour, linestyle="--", linewidth=1.0, gid=f"fit-{step}")
    ax.axvline(fit.xmin, color=colour, linestyle=":", linewidth=0.9, gid=f"xmin-{step}")


def _heavy_tail_rows(
    r: Run, metric: str, rows: list[int], shown: _Steps
) -> tuple[np.ndarray, Counter]:
    """A heavy-tailed `metric` of the matrices `rows` computed from σ at the done steps
    `shown` (`heavy_tail_metrics`, shapes from the matrix table): float64 [rows, T_done],
    NaN at the other steps, and the count of each reason a shown value is NaN."""
    cols = shown.cols[shown.done]
    out = np.full((len(rows), r.values.steps.size), np.nan)
    reasons: Counter = Counter()
    for i, j in enumerate(rows):
        name = r.matrices[j]
        shape = tuple(r.values.matrix_info(name)["shape"])
        values, why = heavy_tail_metrics(r.values.sigma(name)[cols], shape, return_reasons=True)
        out[i, cols] = values[metric]
        reasons.update(w or "undefined" for w in why[np.isnan(values[metric])].tolist())
    return out, reasons
