"""The lottery-ticket figure of `specdyn prune --magnitude` (paper Fig. 12, 13, columns 2–3):
the agreement of masked with unmasked weights, index by index for one matrix and as a
score for every matrix, magnitude mask beside the random control."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from ..errors import PruneError, option_ref
from ..prune import read_prune_results
from ._common import PlotError, _as_plot_error, short_names

__all__ = ["plot_prune"]

_STYLE = {"magnitude": {"color": "tab:blue"}, "random": {"color": "tab:red", "ls": "--"}}


def plot_prune(
    results: str | os.PathLike,
    *,
    matrix: str | None = None,
    top: int | None = None,
    size: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Agreement (SVA) of each masked matrix with the unmasked one, per mask.

    Args:
        results: a ``prune.h5`` written by ``specdyn prune --magnitude`` or its folder.
        matrix: the matrix of the left panel (exact name or unique substring; default:
            the matrix in the middle of the forward order).
        top: only the first `top` indices in the left panel.
        size: (w, h) inches; title: the figure title.

    Returns:
        The Figure: left, S_ii over i for one matrix, one line per mask; right, the
        score (mean of the first ``score_top`` S_ii) of every matrix in forward order,
        with the fraction of its weights the magnitude mask kept.

    Raises:
        PlotError: no such results file, or an unknown / ambiguous matrix.
    """

    try:
        res = read_prune_results(results)
    except PruneError as exc:
        raise _as_plot_error(exc) from None
    names = res.matrices
    if not names:
        raise PlotError(f"{results}: the results hold no masked matrix")
    if matrix is None:
        j = len(names) // 2
    else:
        hits = [i for i, n in enumerate(names) if n == matrix] or [
            i for i, n in enumerate(names) if matrix in n
        ]
        if len(hits) != 1:
            what = "matches several matrices" if hits else "matches no masked matrix"
            listing = ", ".join(names[i] for i in hits[:6]) if hits else ", ".join(names[:6])
            raise PlotError(f"{option_ref('matrix')} {matrix!r} {what}: {listing}", option="matrix")
        j = hits[0]
    fig = Figure(figsize=size or (12.0, 5.0), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.3), height_ratios=(3, 1))
    left = fig.add_subplot(grid[:, 0])
    right = fig.add_subplot(grid[0, 1])
    kept_ax = fig.add_subplot(grid[1, 1], sharex=right)
    for mask in sorted(res.diagonal):
        d = np.asarray(res.diagonal[mask][j], dtype=np.float64)
        d = d[~np.isnan(d)][:top] if top else d[~np.isnan(d)]
        left.plot(np.arange(1, d.size + 1), d, lw=1.2, label=f"{mask} mask",
                  **_STYLE.get(mask, {}))  # fmt: skip
    left.set_ylim(0.0, 1.02)
    left.set_xlabel("index i (singular vectors by decreasing σ)")
    left.set_ylabel("agreement Sᵢᵢ, masked vs unmasked")
    kept = res.matrix_kept_fraction[j]
    left.set_title(f"{short_names([names[j]], 60)[0]} ({100 * kept:.1f}% of weights kept)",
                   fontsize=9)  # fmt: skip
    left.legend(fontsize=8)
    x = np.arange(len(names))
    for mask in sorted(res.score):
        right.plot(x, res.score[mask], marker="o", ms=3, label=f"{mask} mask",
                   **_STYLE.get(mask, {}))  # fmt: skip
    right.set_ylim(0.0, 1.02)
    top_n = res.attrs.get("score_top", 10)
    right.set_ylabel(f"agreement score (top {top_n})")
    right.legend(fontsize=8, loc="upper right")
    right.set_title("every masked matrix", fontsize=9)
    right.tick_params(axis="x", labelbottom=False)
    # the kept fraction on its own axis below (a few %, unreadable on the scores' 0–1)
    kept_ax.bar(x, 100 * np.asarray(res.matrix_kept_fraction), color="grey", alpha=0.6)
    kept_ax.set_ylabel("weights kept\n(magnitude, %)", fontsize=8)
    kept_ax.set_xticks(x, short_names(names), rotation=30, ha="right", fontsize=7,
                       rotation_mode="anchor")  # fmt: skip
    fraction = res.attrs.get("fraction")
    step = res.attrs.get("step")
    fig.suptitle(
        title if title is not None
        else f"global magnitude mask keeping {100 * float(fraction):g}% of the weights"
        + (f" (step {step})" if step not in (None, -1) else "")
    )  # fmt: skip
    return fig
