"""What every figure module shares: the error, opening a run, axes, step columns and the
step axis, heatmaps with labelled colour bars, flagged-step marks and short row labels.

Every figure module imports this one, which imports none of them: the package's
layering is `_common` → figures (`_run` → `_dynamics` → `_all`; `_compare`; `_prune`) →
`_table`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import PlotError, SpecdynError, StoreError, command_ref, option_ref
from ..steps import select_steps
from ..store import Run, open_run

__all__ = ["FORMATS", "PlotError", "short_names"]

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
    """Column indices of the done steps selected by a ``--steps`` value
    (docs/runs.md#steps-grammar)."""
    done = run.steps
    if not done.size:
        raise PlotError(
            f"{run.path}: no step is done yet; run {command_ref('analyze')} first", file=run.path
        )
    if steps is None:
        return np.arange(done.size)
    chosen = set(select_steps(done.tolist(), steps))
    return np.array([i for i, s in enumerate(done.tolist()) if s in chosen], dtype=np.int64)


def _step_label(store) -> str:
    """The x-axis label of a run or comparison: training step, or epoch when that is all
    it knows."""
    return "epoch" if store.step_unit == "epoch" else "training step"


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
        # `what` is the figure's parameter (matrices or pairs); `draw` fills it from --matrices
        raise PlotError(
            f"{option_ref(what, '--matrices')} {pattern!r} is not a valid regular expression "
            f"({exc})",
            option=what,
        ) from None
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
            f"values only; re-run {command_ref('analyze')} on its checkpoints without "
            f"{option_ref('vectors=None', '--values-only')}",
            file=run.path,
        )


def _resolve(call, *args):
    """Turn a store lookup error (ambiguous / unknown name) into a PlotError."""
    try:
        return call(*args)
    except StoreError as exc:
        raise _as_plot_error(exc) from None


def _as_plot_error(exc: SpecdynError) -> PlotError:
    """A PlotError with the message (options still worded per caller) and fields of `exc`."""
    return PlotError(exc.message, file=exc.file, step=exc.step, option=exc.option)
