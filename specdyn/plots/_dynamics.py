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
from ._common import (
    _METRIC_PARTS,
    PlotError,
    _checkpoint_tick_style,
    _markers,
    _need_vectors,
    _opened,
    _step_axis,
    _titled,
)
from ._run import plot_agreement_score, plot_alignment_score, plot_metric

__all__ = ["plot_dynamics", "default_training_metrics"]

_CURVE = re.compile(r"loss|err|acc", re.IGNORECASE)
_UNIT_RANGE = re.compile(r"acc|err", re.IGNORECASE)

# the y labels of a panel of values in [0, 1]
_UNIT_LABELS = {"accuracy", "error", "accuracy / error", "error (1 − accuracy)"}

# the titles of the heatmap panels (their colour bars give the formula)
_HEAT_TITLES = {
    "rank": "normalised effective rank",
    "alignment": "alignment score",
    "agreement": "agreement score",
}


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
            name holds "loss", "err" or "acc"; system metrics such as ``eval_runtime`` or
            ``eval_samples_per_second`` only when named). Losses go in one panel (log y), accuracies
            and errors (values in [0, 1]) in another, anything else in a third.
        scores: add the alignment score a(t) and agreement score s(t) heatmaps below
            (a store with singular vectors).
        error: draw accuracies as errors, 1 − accuracy (as the paper's figures do).
        steps: ``--steps`` (docs/runs.md#steps-grammar) for the heatmaps; the curves span
            the same range. Without it the axis spans every checkpoint and every logged
            point of the drawn curves (losses logged before the first checkpoint kept),
            checkpoints marked as minor ticks.
        matrices: regex on the heatmap rows; log_x: symmetric-log step axis (step 0
            kept); cmap: the rank heatmap's colour map; size: (w, h) inches; title.

    Returns:
        The Figure: curve panels, then the heatmaps, x shared.

    Raises:
        PlotError: the run has no training metrics (naming ``metrics_file``), an unknown
            metric name (listing the stored ones), or ``scores`` without vectors.
    """
    with _opened(run, home) as r:
        names = _training_names(r, training)
        if scores:
            _need_vectors(r, "alignment and agreement score")
        groups = _panels(names, error)
        shown = _step_axis(r, steps)
        heat = ["rank"] + (["alignment", "agreement"] if scores and r.pairs else [])
        if scores and not r.pairs:
            heat.append("agreement")
        ratios = [1.1] * len(groups) + [2.4] * len(heat)
        fig = Figure(
            figsize=size or (8.0, 1.6 * len(groups) + 2.6 * len(heat)), layout="constrained"
        )
        axes = np.atleast_1d(fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios))
        _heatmaps(r, axes[len(groups) :], heat, steps, matrices, log_x, cmap)
        lo, hi = int(shown.x[0]), int(shown.x[-1])
        if steps is None:  # every logged point, before the first checkpoint too
            lo, hi = _logged_span(r, names, lo, hi)
        for ax, (label, members) in zip(axes[: len(groups)], groups, strict=True):
            _curves(ax, r, label, members, error, lo, hi)
            # an invisible colour bar keeps the curves' x range aligned with the heatmaps'
            fig.colorbar(ScalarMappable(), ax=ax).ax.set_visible(False)
            _checkpoint_tick_style(ax)
        if hi > lo:
            axes[0].set_xlim(lo, hi)  # shared: every panel spans exactly [first, last]
        default = f"{r.name}: training and spectral dynamics"
        fig.suptitle(_titled(title if title is not None else default, shown))
        return fig


def _training_names(r: Run, training: Sequence[str] | None) -> list[str]:
    """The training metrics to draw (given, else the losses, errors and accuracies), or
    PlotError naming what is stored."""
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
        raise PlotError(f"{r.path}: no training metric {unknown[0]!r}; stored: {', '.join(stored)}")
    return names


def _logged_span(r: Run, names: list[str], lo: int, hi: int) -> tuple[int, int]:
    """[lo, hi] widened to every step at which one of the drawn metrics was logged."""
    for name in names:
        x = r.training(name)[0]
        if x.size:
            lo, hi = min(lo, int(x.min())), max(hi, int(x.max()))
    return lo, hi


def _heatmaps(r: Run, axes, heat: list[str], steps, matrices, log_x: bool, cmap: str) -> None:
    """The rank heatmap and the score heatmaps below the curves: each panel's title names
    what it shows, its colour bar the formula (the long label would not fit)."""
    opts = {"steps": steps, "log_x": log_x, "title": ""}
    plot_metric(r, "normalized_effective_rank", ax=axes[0], matrices=matrices, cmap=cmap, **opts)
    short = {"rank": _METRIC_PARTS["normalized_effective_rank"][1]}
    for ax, kind in zip(axes[1:], heat[1:], strict=True):
        if kind == "alignment":
            plot_alignment_score(r, ax=ax, **opts)
            short[kind] = f"a(t), top {r.vectors.config['score_top']}"
        else:
            plot_agreement_score(r, ax=ax, matrices=matrices, **opts)
            short[kind] = f"s(t) vs {r.step_unit} {r.reference}"
    for ax, kind in zip(axes, heat, strict=True):
        ax.collections[0].colorbar.set_label(short[kind])
        ax.set_title(_HEAT_TITLES[kind], fontsize=9)
    for ax in axes[:-1]:
        ax.set_xlabel("")


def _curves(ax, r: Run, label: str, members: list[str], error: bool, lo: int, hi: int) -> None:
    """One panel of training curves between steps `lo` and `hi`, with readable legends."""
    for name in members:
        x, y = r.training(name)
        keep = (x >= lo) & (x <= hi)
        as_error = error and _is_accuracy(name)
        ax.plot(x[keep], 1.0 - y[keep] if as_error else y[keep], lw=1.2,
                label=_curve_label(name, as_error), **_markers(int(keep.sum())))  # fmt: skip
    ax.set_ylabel(label, fontsize=9)
    if label == "loss" and _positive(r, members):
        ax.set_yscale("log")
    if label in _UNIT_LABELS:
        ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="best", ncol=min(3, len(members)))
    ax.grid(alpha=0.3)


def _panels(names: list[str], error: bool) -> list[tuple[str, list[str]]]:
    """Curves grouped into panels (losses, accuracies/errors, the rest), each with its
    y label: "accuracy", "error" or both, as drawn (with `error`, accuracies are errors)."""
    losses = [n for n in names if "loss" in n.lower()]
    unit = [n for n in names if n not in losses and _UNIT_RANGE.search(n)]
    other = [n for n in names if n not in losses and n not in unit]
    kinds = {"error" if error or not _is_accuracy(n) else "accuracy" for n in unit}
    converted = error and any(_is_accuracy(n) for n in unit)
    unit_label = " / ".join(k for k in ("accuracy", "error") if k in kinds)
    if unit_label == "error" and converted:
        unit_label = "error (1 − accuracy)"
    other_label = _curve_label(other[0], False) if len(other) == 1 else "other"
    panels = [("loss", losses), (unit_label, unit), (other_label, other)]
    return [(label, members) for label, members in panels if members]


def _is_accuracy(name: str) -> bool:
    """Whether a training metric is an accuracy (drawn as 1 − accuracy with `error`)."""
    return "acc" in name.lower()


# words of training metric names, as a legend spells them
_WORDS = {"acc": "accuracy", "val": "validation", "valid": "validation", "err": "error",
          "lr": "learning rate", "eval": "eval"}  # fmt: skip


def _curve_label(name: str, as_error: bool) -> str:
    """A training metric's legend: its words spelled out ("val_acc" → "validation
    accuracy"); drawn as an error, the accuracy word becomes "error" ("validation error"),
    or "1 − …" goes before the name when it has no such word."""
    words = [w for w in re.split(r"[_\-/.\s]+", name) if w]
    spelled = []
    replaced = False
    for word in words:
        low = word.lower()
        if as_error and low in ("acc", "accuracy"):
            spelled.append("error")
            replaced = True
        else:
            spelled.append(_WORDS.get(low, word))
    text = " ".join(spelled) or name
    return text if replaced or not as_error else f"1 − {text}"


def _positive(run: Run, names: list[str]) -> bool:
    """Whether every value of these curves is > 0 (a log axis can show them)."""
    return all(np.all(run.training(n)[1] > 0) for n in names)
