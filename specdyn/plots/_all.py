"""Every figure a run's store allows, written into one folder (``specdyn plot all``)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from ..errors import option_ref
from ..store import Run
from ._common import FORMATS, PlotError, _opened, save_figure
from ._dynamics import default_training_metrics, plot_dynamics
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

__all__ = ["plot_all"]


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

    The rank heatmap and every other stored metric; the training curves (when the
    store holds a loss, error or accuracy); the singular values of the middle matrix
    (top 50); with vectors, the alignment score and agreement score heatmaps, the
    alignment diagonal of the middle pair, the agreement diagonal of the middle
    matrix, and with full matrices the alignment matrix of the middle pair. Each
    figure picks its own subject, so only the options common to all are taken.

    Args:
        run: a `Run`, or a run name / store path (None: the workspace's only run).
        out: the folder (created when missing); files are named ``<figure>.<fmt>``.
        home: workspace for a run given by name.
        fmt: png, pdf or svg; dpi: resolution of raster files.
        steps: which done steps (the `specdyn.select_steps` grammar); log_x: symmetric-log
            step axis.

    Returns:
        The files written, in drawing order.

    Raises:
        PlotError: an unknown `fmt`, or a store lacking what a figure needs.
    """
    if fmt not in FORMATS:
        raise PlotError(
            f"{option_ref('fmt', '--format')} {fmt!r}: use png, pdf or svg", option="fmt"
        )
    folder = Path(out)  # created by save_figure (a one-line error if it cannot be)
    written: list[Path] = []

    def save(fig: Figure, stem: str) -> None:
        written.append(save_figure(fig, folder / f"{stem}.{fmt}", dpi))

    opts = {"steps": steps, "log_x": log_x}
    with _opened(run, home) as r:
        save(plot_rank(r, **opts).figure, "rank")
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
