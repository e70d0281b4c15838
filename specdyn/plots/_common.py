"""What every figure module shares: the error, opening a run, axes, step columns and the
step axis, heatmaps with labelled colour bars, flagged-step marks and short row labels.

Every figure module imports this one, which imports none of them: the package's
layering is `_common` → figures (`_esd` → `_run` → `_dynamics` → `_all`; `_compare`;
`_prune`) → `_table`.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import PlotError, SpecdynError, StoreError, command_ref, option_ref
from ..files import atomic_output
from ..steps import select_steps
from ..store import Run, open_run

__all__ = ["FORMATS", "PlotError", "short_names"]

FORMATS = ("png", "pdf", "svg")

# The stored metrics in words and as a formula (colour bars say both; a short colour bar,
# under a panel title that names the metric, the formula alone). Displayed labels spell
# "normalised" (docs/metrics.md); the stored names keep their spelling.
_METRIC_PARTS = {
    "normalized_effective_rank": ("normalised effective rank", "exp(H)/R"),
    "effective_rank": ("effective rank", "exp(H)"),
    "entropy": ("spectral entropy", "H (nats)"),
    "spectral_norm": ("spectral norm", "σ₁"),
    "frobenius_norm": ("Frobenius norm", "√Σσ²"),
    "nuclear_norm": ("nuclear norm", "Σσ"),
    "stable_rank": ("stable rank", "Σσ²/σ₁²"),
    "agreement_score": ("agreement score", "s(t)"),
    # heavy-tailed metrics of the ESD λ = σ² (docs/metrics.md), computed from σ when drawn
    "alpha": ("power-law exponent α", "of the ESD λ = σ²"),
    "alpha_stderr": ("standard error of α", "(α − 1)/√n"),
    "xmin": ("power-law xmin", "smallest λ of the tail"),
    "ks_distance": ("KS distance", "D of the power-law fit"),
    "num_tail": ("power-law tail size", "n = #λ ≥ xmin"),
    "alpha_weighted": ("weighted alpha", "α·log₁₀ λ_max"),
    "log_alpha_norm": ("log alpha norm", "log₁₀ Σλ^α"),
    "log_norm": ("log norm", "log₁₀ Σλ"),
    "log_spectral_norm": ("log spectral norm", "log₁₀ λ_max"),
    "mp_bulk_max": ("Marchenko–Pastur edge", "λ+"),
    "mp_softrank": ("MP soft rank", "λ+/λ_max"),
    "num_above_mp_edge": ("eigenvalues above the MP edge", "#λ > λ+"),
}
_METRIC_LABELS = {name: f"{words} {formula}" for name, (words, formula) in _METRIC_PARTS.items()}


def _metric_words(metric: str) -> str:
    """A stored metric's name in words ("normalised effective rank")."""
    if metric in _METRIC_PARTS:
        return _METRIC_PARTS[metric][0]
    return metric.replace("_", " ").replace("normalized", "normalised")


def _metric_label(metric: str) -> str:
    """A stored metric's colour-bar label: its name in words and its formula."""
    return _METRIC_LABELS.get(metric, _metric_words(metric))


_DEFAULT_SIZE = (7.0, 4.5)

# Up to this many steps, lines get a marker at every step.
_FEW_STEPS = 20

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
    done = _done_steps(run)
    if steps is None:
        return np.arange(done.size)
    chosen = set(select_steps(done.tolist(), steps))
    return np.array([i for i, s in enumerate(done.tolist()) if s in chosen], dtype=np.int64)


def _done_steps(run: Run) -> np.ndarray:
    """The run's done steps, or PlotError when none is done yet."""
    done = run.values.steps
    if not done.size:
        raise PlotError(
            f"{run.path}: no step is done yet; run {command_ref('analyze')} first", file=run.path
        )
    return done


@dataclass(frozen=True)
class _Steps:
    """The steps a figure shows: every selected step of the run, analysed or not.

    x: the steps, ascending (int64 [S]); cols: for each, its column in the arrays a
    `Run` reads (which hold the done steps only), -1 for a step not analysed yet.
    """

    x: np.ndarray
    cols: np.ndarray

    @property
    def done(self) -> np.ndarray:
        """bool [S]: which shown steps are analysed."""
        return self.cols >= 0

    @property
    def partial(self) -> str:
        """ "partial D/T" when some shown steps are not analysed yet, else ""."""
        done = int(self.done.sum())
        return "" if done == self.x.size else f"partial {done}/{self.x.size}"

    def pick(self, data: np.ndarray) -> np.ndarray:
        """`data` [..., T_done] at the shown steps: [..., S], NaN where not analysed."""
        data = np.asarray(data)
        if self.done.all():
            return data[..., self.cols]
        out = np.full((*data.shape[:-1], self.x.size), np.nan)
        out[..., self.done] = data[..., self.cols[self.done]]
        return out


def _step_axis(run: Run, steps: str | None) -> _Steps:
    """The run's steps a figure shows: every step the store knows (done or pending),
    those a ``--steps`` value selects (docs/runs.md#steps-grammar) when given."""
    done = _done_steps(run)
    every = run.values.all_steps
    shown = every if steps is None else np.asarray(select_steps(every.tolist(), steps))
    column = {s: i for i, s in enumerate(done.tolist())}
    cols = np.array([column.get(s, -1) for s in shown.tolist()], dtype=np.int64)
    if not (cols >= 0).any():
        raise PlotError(
            f"{run.path}: no step chosen by {option_ref('steps')} {steps!r} is analysed yet "
            f"(done: {_few(done.tolist())}); run {command_ref('analyze')} to finish the run",
            file=run.path,
            option="steps",
        )
    return _Steps(np.asarray(shown, dtype=np.int64), cols)


def _few(values: Sequence, n: int = 6) -> str:
    """The first `n` values, comma-separated, "…" when there are more."""
    values = list(values)
    head = ", ".join(str(v) for v in values[:n])
    return head + (", …" if len(values) > n else "")


def _titled(title: str, steps: _Steps) -> str:
    """`title` with "partial D/T" added when some shown steps are not analysed yet."""
    if not title or not steps.partial:
        return title
    return f"{title} ({steps.partial})"


def _step_label(store) -> str:
    """The x-axis label of a run or comparison: training step, or epoch when that is all
    it knows."""
    return "epoch" if store.step_unit == "epoch" else "training step"


def _edges(ax: Axes, x: np.ndarray, log_x: bool) -> np.ndarray:
    """Cell edges of steps `x` [S] drawn as columns: midway between neighbours in the
    axis' own scale, and the first and last step themselves, so the columns span exactly
    [first, last] (the two edge columns are half as wide). A single step gets a column
    of width 1 in the axis' scale. Returns float64 [S + 1]."""
    _set_x_scale(ax, x, log_x)
    transform = ax.xaxis.get_transform()
    x = np.asarray(x, dtype=np.float64)
    t = transform.transform(x)
    if t.size == 1:
        return transform.inverted().transform(np.array([t[0] - 0.5, t[0] + 0.5]))
    edges = transform.inverted().transform(np.concatenate([[t[0]], (t[1:] + t[:-1]) / 2, [t[-1]]]))
    edges[0], edges[-1] = x[0], x[-1]  # exact, not through the round trip of the transform
    return edges


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


def _step_extent(ax: Axes, x: np.ndarray) -> None:
    """The x range exactly [first, last] step, and a minor tick at every step shown
    (where the checkpoints are); on a linear axis, steps from 10 000 on labelled 20k,
    1.5M (six-digit labels ran into each other on a Pythia run's 0…143 000)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 1:
        _single_step_axis(ax, float(x[0]))
        return
    if x.size > 1:
        ax.set_xlim(float(x[0]), float(x[-1]))
    if ax.get_xscale() == "linear":
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _step_tick_label(v)))
    _checkpoint_ticks(ax, x)


def _single_step_axis(ax: Axes, step: float) -> None:
    """One step: its one column (width 1 in the axis' scale, as `_edges` draws it) and one
    major tick labelled with the integer step, no fractional ticks (159.6 … 160.4)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    transform = ax.xaxis.get_transform()
    t = transform.transform(np.array([step]))[0]
    low, high = transform.inverted().transform(np.array([t - 0.5, t + 0.5]))
    ax.set_xlim(float(low), float(high))
    ax.xaxis.set_major_locator(FixedLocator([step]))
    ax.xaxis.set_major_formatter(FixedFormatter([_step_tick_label(round(step))]))
    ax.xaxis.set_minor_locator(NullLocator())


def _step_tick_label(step: float) -> str:
    """A step axis' tick label: ``"950"``, ``"20k"``, ``"142.5k"``, ``"1.5M"``."""
    size = abs(step)
    if size >= 1e6:
        return f"{step / 1e6:g}M"
    if size >= 1e4:
        return f"{step / 1e3:g}k"
    return f"{step:g}"


def _checkpoint_ticks(ax: Axes, steps: np.ndarray) -> None:
    """A minor x tick at each of `steps`: where the checkpoints are."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    ax.xaxis.set_minor_locator(FixedLocator(np.asarray(steps, dtype=np.float64)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _checkpoint_tick_style(ax)


def _checkpoint_tick_style(ax: Axes) -> None:
    """The minor x ticks drawn as checkpoint marks (also on panels sharing the axis)."""
    ax.xaxis.remove_overlapping_locs = False  # a checkpoint on a labelled tick keeps its mark
    ax.tick_params(axis="x", which="minor", length=4, width=0.8, color="0.35")


def _markers(n: int) -> dict:
    """Line style keywords: a dot at every point when there are few (≤ 20) steps."""
    return {"marker": "o", "ms": 2.5} if n <= _FEW_STEPS else {}


def _mark_pending(ax: Axes, edges: np.ndarray, steps: _Steps) -> None:
    """Hatched columns where steps are not analysed yet, the widest saying so."""
    pending = ~steps.done
    if not pending.any():
        return
    runs, i = [], 0  # (first, last) index of each run of pending steps
    while i < pending.size:
        if pending[i]:
            j = i
            while j + 1 < pending.size and pending[j + 1]:
                j += 1
            runs.append((i, j))
            i = j + 1
        else:
            i += 1
    for first, last in runs:
        ax.axvspan(edges[first], edges[last + 1], facecolor="none", edgecolor="0.6",
                   hatch="///", lw=0, zorder=0.5)  # fmt: skip
    # the note goes in the widest hatched stretch, measured on screen (log axes too)
    screen = ax.xaxis.get_transform().transform(edges)
    first, last = max(runs, key=lambda r: screen[r[1] + 1] - screen[r[0]])
    share = (screen[last + 1] - screen[first]) / max(screen[-1] - screen[0], 1e-12)
    centre = ax.xaxis.get_transform().inverted().transform([(screen[first] + screen[last + 1]) / 2])
    ax.text(
        float(centre[0]),
        0.5,
        f"not analysed yet: {int(pending.sum())} of {pending.size} steps",
        transform=ax.get_xaxis_transform(),
        rotation=0 if share > 0.3 else 90,
        ha="center",
        va="center",
        fontsize=7,
        color="0.3",
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
        clip_on=True,
    )


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
    steps: _Steps,
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
    """Rows × steps heatmap of `data` [rows, T_done] at the shown `steps` (true step
    positions, x exactly [first, last], a minor tick at each step, steps not analysed yet
    hatched) with a labelled colour bar; "partial D/T" joins a non-empty `title`."""
    edges = _edges(ax, steps.x, log_x)
    y = np.arange(len(rows) + 1) - 0.5
    shown = np.ma.masked_invalid(steps.pick(data))
    mesh = ax.pcolormesh(edges, y, shown, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # forward depth downwards, as in the paper
    if row_ticks:
        _row_ticks(ax, short_names(rows, width=64 if any("~" in n for n in rows) else 48))
    ax.set_ylabel(row_label)
    ax.set_xlabel(_step_label(run))
    ax.figure.colorbar(mesh, ax=ax, label=label)
    if title:
        ax.set_title(_titled(title, steps), fontsize=10)
    _step_extent(ax, steps.x)
    _mark_pending(ax, edges, steps)
    _mark_flags(ax, run, steps.x)
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


# "FIRST~", "FIRST→" or "FIRST->": a pair by its matrices (either side may be empty)
_PAIR_SIDES = re.compile(r"\s*(?:~|→|->)\s*")


def _find_pair(run: Run, spec: str) -> str:
    """The pair `spec` names: an exact pair name; ``FIRST~`` / ``~SECOND`` /
    ``FIRST~SECOND`` (``→`` or ``->`` for ``~``), the pair by its first and/or second
    matrix (exact name, name without ``.weight``, else a substring); else a substring of
    one pair name. PlotError when none or several match; the several are listed, each with
    a `spec` that picks it."""
    pairs = run.alignment.pairs
    names = [p["name"] for p in pairs]
    if spec in names:
        return spec
    hits: list[int] = []
    if _PAIR_SIDES.search(spec):
        first, second = _PAIR_SIDES.split(spec, maxsplit=1)
        hits = _pairs_by_sides(pairs, first, second)
    if not hits:
        hits = [i for i, n in enumerate(names) if spec in n]
    if len(hits) == 1:
        return names[hits[0]]
    if not hits:
        listing = f"pairs include {_few(short_names(names), 4)}" if names else "no pairs stored"
        # the listing of pairs has no specdyn.<command>() twin: both wordings given
        where = option_ref("run.alignment.pairs", "specdyn info RUN --pairs")
        raise PlotError(
            f"{run.path}: no pair matches {spec!r} ({listing}; list them with {where})",
            file=run.path,
            option="pair",
        )
    choices = "; ".join(
        f"{names[i]}: {option_ref(f'pair={p!r}', f'--pair {shlex.quote(p)}')}"
        for i, p in ((i, _pair_pick(pairs, i)) for i in hits[:6])
    )
    more = f" (and {len(hits) - 6} more)" if len(hits) > 6 else ""
    raise PlotError(
        f"{run.path}: {option_ref('pair')} {spec!r} matches {len(hits)} pairs{more}; pick one "
        f"by its first matrix (FIRST~) or by both (FIRST~SECOND): {choices}",
        file=run.path,
        option="pair",
    )


def _side_rank(part: str, matrix: str) -> int:
    """How well one side of a pair spec names `matrix`: 2 exactly (with or without
    ``.weight``), 1 as a substring, 0 not at all; an empty side names any matrix (1)."""
    if not part:
        return 1
    if part in (matrix, _clean_part(matrix)):
        return 2
    return 1 if part in matrix or part in _clean_part(matrix) else 0


def _pairs_by_sides(pairs: list[dict], first: str, second: str) -> list[int]:
    """Indices of the pairs whose first and second matrices the two sides name, the
    best-named only (an exact name wins over substrings)."""
    ranks = [(_side_rank(first, p["first"]), _side_rank(second, p["second"])) for p in pairs]
    hits = [i for i, (a, b) in enumerate(ranks) if a and b]
    if not hits:
        return []
    best = max(sum(ranks[i]) for i in hits)
    return [i for i in hits if sum(ranks[i]) == best]


def _pair_pick(pairs: list[dict], i: int) -> str:
    """The shortest spec that picks pair `i` alone: ``FIRST~``, else ``FIRST~SECOND``,
    else its name."""
    first, second = _clean_part(pairs[i]["first"]), _clean_part(pairs[i]["second"])
    for spec in (f"{first}~", f"{first}~{second}"):
        if _pairs_by_sides(pairs, *_PAIR_SIDES.split(spec, maxsplit=1)) == [i]:
            return spec
    return pairs[i]["name"]


_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded: free some space and run the same command again",
    errno.EFBIG: "the file size limit is exceeded (ulimit -f): raise it or choose a smaller figure",
    errno.EROFS: f"the folder is on a read-only filesystem: choose another {option_ref('out')}",
    errno.EACCES: f"the folder is not writable: choose another {option_ref('out')}",
    errno.EPERM: f"the folder is not writable: choose another {option_ref('out')}",
}


def save_figure(fig: Figure, path: Path, dpi: int | None) -> Path:
    """Write `fig` to `path` (format from its suffix) atomically: a figure file is either
    the old one or the whole new one; a full disk or a read-only folder is one PlotError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower())
    except OSError as exc:
        hint = _WRITE_HINTS.get(exc.errno, "check the folder and its free space")
        raise PlotError(
            f"{path}: cannot be written ({exc.strerror or exc}); {hint}; any figure already "
            "there is unchanged",
            file=path,
            option="out",
        ) from None
    return path
