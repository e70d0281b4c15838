"""The dynamics figure: training curves above the rank heatmap on one step axis (paper
Fig. 2, 19, 22), optionally with the alignment and agreement score heatmaps below."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from ..errors import command_ref, option_ref
from ..store import Run
from ._common import PlotError, _need_vectors, _opened, _step_columns
from ._run import plot_agreement_score, plot_alignment_score, plot_metric

__all__ = ["plot_dynamics", "default_training_metrics"]

_CURVE = re.compile(r"loss|err|acc", re.IGNORECASE)
_UNIT_RANGE = re.compile(r"acc|err", re.IGNORECASE)


def default_training_metrics(names: Sequence[str]) -> list[str]:
    """The losses, errors and accuracies among stored training metric names."""
    return [n for n in names if _CURVE.search(n)]


def plot_dynamics(
    run: Run | str | os.PathLike | None = None,
    *,
    home: str | os.PathLike | None = None,
    training: Sequence[str] | None = None,
    scores: bool = False,
    error: bool = False,
    steps: str | None = None,
    matrices: str | None = None,
    log_x: bool = False,
    cmap: str = "viridis",
    size: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Training curves above the normalised-effective-rank heatmap, sharing the step axis.

    Args:
        run: a `Run`, or a run name / store path (None: the workspace's only run).
        training: training metric names to draw (default: every stored metric whose
            name holds "loss", "err" or "acc"). Losses go in one panel (log y), accuracies
            and errors (values in [0, 1]) in another, anything else in a third.
        scores: add the alignment score a(t) and agreement score s(t) heatmaps below
            (a store with singular vectors).
        error: draw accuracies as errors, 1 − accuracy (as the paper's figures do).
        steps: ``--steps`` (docs/runs.md#steps-grammar) for the heatmaps; the curves span
            the same range.
        matrices: regex on the heatmap rows; log_x: symmetric-log step axis (step 0
            kept); cmap: the rank heatmap's colour map; size: (w, h) inches; title.

    Returns:
        The Figure: curve panels, then the heatmaps, x shared.

    Raises:
        PlotError: the run has no training metrics (naming ``metrics_file``), an unknown
            metric name (listing the stored ones), or ``scores`` without vectors.
    """
    with _opened(run, home) as r:
        stored = r.training_names
        if not stored:
            raise PlotError(
                f"{r.path}: no training metrics stored; re-run {command_ref('analyze')} with "
                f"{option_ref('metrics_file=LOG', '--metrics LOG')} (CSV or JSONL with a step "
                "column), or keep the trainer's logs (metrics.csv, trainer_state.json) or the "
                "loss inside the checkpoints",
                file=r.path,
            )
        names = list(training) if training else default_training_metrics(stored)
        if not names:
            raise PlotError(
                f"{r.path}: no loss, error or accuracy among the training metrics "
                f"({', '.join(stored)}); name the ones to draw ({option_ref('training')})",
                file=r.path,
                option="training",
            )
        unknown = [n for n in names if n not in stored]
        if unknown:
            raise PlotError(
                f"{r.path}: no training metric {unknown[0]!r}; stored: {', '.join(stored)}"
            )
        if scores:
            _need_vectors(r, "alignment and agreement score")
        groups = _panels(names)
        cols = _step_columns(r, steps)
        lo, hi = int(r.steps[cols][0]), int(r.steps[cols][-1])
        heat = ["rank"] + (["alignment", "agreement"] if scores and r.pairs else [])
        if scores and not r.pairs:
            heat.append("agreement")
        ratios = [1.1] * len(groups) + [2.4] * len(heat)
        fig = Figure(
            figsize=size or (8.0, 1.6 * len(groups) + 2.6 * len(heat)), layout="constrained"
        )
        axes = fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios)
        axes = np.atleast_1d(axes)
        heat_axes = axes[len(groups) :]
        opts = {"steps": steps, "log_x": log_x, "title": ""}
        plot_metric(r, "normalized_effective_rank", ax=heat_axes[0], matrices=matrices,
                    cmap=cmap, **opts)  # fmt: skip
        top = r.vectors_config["score_top"] if scores else 0
        for ax, kind in zip(heat_axes[1:], heat[1:], strict=True):
            if kind == "alignment":
                plot_alignment_score(r, ax=ax, **opts)
                short = f"a(t), top {top}"
            else:
                plot_agreement_score(r, ax=ax, matrices=matrices, **opts)
                short = f"s(t) vs {r.step_unit} {r.reference}"
            ax.collections[0].colorbar.set_label(short)  # the long label does not fit
        for ax in heat_axes[:-1]:
            ax.set_xlabel("")
        for ax, (label, members) in zip(axes[: len(groups)], groups, strict=True):
            for name in members:
                x, y = r.training(name)
                keep = (x >= lo) & (x <= hi)
                as_error = error and "acc" in name.lower()
                ax.plot(x[keep], 1.0 - y[keep] if as_error else y[keep], lw=1.2,
                        label=f"{name} → error (1 − acc)" if as_error else name)  # fmt: skip
            ax.set_ylabel(label, fontsize=9)
            if label == "loss" and _positive(r, members):
                ax.set_yscale("log")
            if label == "accuracy / error":
                ax.set_ylim(-0.03, 1.03)
            ax.legend(fontsize=7, loc="best", ncol=min(3, len(members)))
            ax.grid(alpha=0.3)
            # an invisible colour bar keeps the curves' x range aligned with the heatmaps'
            fig.colorbar(ScalarMappable(), ax=ax).ax.set_visible(False)
        heat_axes[0].set_title("normalised effective rank exp(H)/R", fontsize=9)
        if len(heat) > 1:
            for ax, kind in zip(heat_axes[1:], heat[1:], strict=True):
                ax.set_title(f"{kind} score", fontsize=9)
        axes[0].set_xlim(*_limits(heat_axes[0]))
        fig.suptitle(title if title is not None else f"{r.name}: training and spectral dynamics")
        return fig


def _panels(names: list[str]) -> list[tuple[str, list[str]]]:
    """Curves grouped into panels: losses, accuracies/errors, the rest."""
    losses = [n for n in names if "loss" in n.lower()]
    unit = [n for n in names if n not in losses and _UNIT_RANGE.search(n)]
    other = [n for n in names if n not in losses and n not in unit]
    panels = [("loss", losses), ("accuracy / error", unit), ("other", other)]
    return [(label, members) for label, members in panels if members]


def _positive(run: Run, names: list[str]) -> bool:
    """Whether every value of these curves is > 0 (a log axis can show them)."""
    return all(np.all(run.training(n)[1] > 0) for n in names)


def _limits(ax) -> tuple[float, float]:
    """The heatmap's x range (cell edges), which the curves share."""
    return ax.get_xlim()
