"""`specdyn compare RUN RUN...`: runs side by side, branch agreement, split-step summaries."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from ._options import DeviceOption, HomeOption, JsonOption, QuietOption
from ._output import Output

if TYPE_CHECKING:  # annotations only: the command imports the library when it runs
    from ..comparison import CompareResult

_SPLIT = re.compile(r"^(.+)=(\d+)$")
_TABLE_METRICS = ("normalized_effective_rank", "stable_rank")


def compare_command(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Run names, store paths or checkpoint folders (analysed on the way); a "
            "folder of several runs stands for its runs.",
            show_default=False,
        ),
    ],
    by: Annotated[
        str,
        typer.Option(
            help="runs: two runs at every shared step, N runs each against the first; "
            "split: branches of a trunk, every two with the same split step."
        ),
    ] = "runs",
    split: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=STEP: a branch's split step when its name does not say it "
            "(split500, branch-500). Repeatable."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Comparison name (store <home>/comparisons/NAME.h5). Default: the run "
            "labels joined by -vs-, or the folder's name for one folder of runs."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Two runs: shared steps compared besides the endpoints (--steps grammar "
            "on the shared steps; 'none' for the endpoints only). Default: all."
        ),
    ] = None,
    vectors: Annotated[int, typer.Option("--vectors", min=1, help="Diagonal length k.")] = 100,
    score_top: Annotated[
        int, typer.Option(min=1, help="Diagonal entries averaged into a score.")
    ] = 10,
    barrier: Annotated[
        bool,
        typer.Option(
            "--barrier", help="Measure the loss barrier (Eq. 6) between endpoints (needs --eval)."
        ),
    ] = False,
    evaluator: Annotated[
        str | None,
        typer.Option(
            "--eval",
            help="module:function or file.py:function returning the loss of a state dict.",
        ),
    ] = None,
    points: Annotated[
        int, typer.Option("--barrier-points", min=3, help="Interpolation points α in [0, 1].")
    ] = 11,
    device: DeviceOption = "auto",
    home: HomeOption = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Recompute the stores of folder runs made with other options, and replace "
            "a comparison of this name that compares other runs.",
        ),
    ] = False,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Compare runs: agreement of their singular vectors, metrics side by side, LMC splits."""
    # torch: imported when a command computes
    from ..comparison import COMPARE_MODES, BarrierOptions, compare, load_evaluator

    if by not in COMPARE_MODES:
        raise typer.BadParameter(f"use one of {', '.join(COMPARE_MODES)}", param_hint="--by")
    if not runs:
        raise typer.BadParameter("give at least two runs, or a folder of runs", param_hint="RUNS")
    if barrier and evaluator is None:
        raise typer.BadParameter(
            "the barrier needs your loss: --eval module:function", param_hint="--barrier"
        )
    if evaluator is not None and not barrier:
        raise typer.BadParameter("--eval is used by --barrier; add --barrier", param_hint="--eval")
    mapping = {}
    for item in split or []:
        m = _SPLIT.match(item)
        if not m:
            raise typer.BadParameter(f"{item!r}: write NAME=STEP", param_hint="--split")
        mapping[m.group(1)] = int(m.group(2))
    if mapping and by != "split":
        raise typer.BadParameter("--split is for --by split", param_hint="--split")
    options = None
    if barrier:
        options = BarrierOptions(evaluate=load_evaluator(evaluator), points=points, label=evaluator)
    out = Output(json_mode=json_out, quiet=quiet)
    with out.analysis_progress() as on_analyze:
        result = compare(
            runs, by=by, split=mapping, home=home, name=name, steps=steps, k=vectors,
            score_top=score_top, barrier=options, device=device, on_analyze=on_analyze,
            overwrite=overwrite,
        )  # fmt: skip
    out.notes(result.notes)
    if out.json_mode:
        out.json(_payload(result))
        return
    _render(out, result)


def _payload(result: CompareResult) -> dict:
    """JSON form: runs, matrices, endpoint scores, final metrics, split summary, barriers."""
    payload = {
        "comparison": str(result.path),
        "mode": result.mode,
        "runs": [
            {"label": e.label, "store": str(e.store), "split": e.split, "last_step": e.last_step}
            for e in result.runs
        ],
        "matrices": result.matrices,
        "only_in": result.only_in,
        "k": result.k,
        "score_top": result.score_top,
        "analysed": result.analysed,
        "final": {m: _nan_none(result.final(m)) for m in result.metrics},
        "pairs": [
            {
                "a": result.runs[p.a].label,
                "b": result.runs[p.b].label,
                "same_trunk": p.same_trunk,
                "steps_a": p.steps_a.tolist(),
                "steps_b": p.steps_b.tolist(),
                "source": p.source,
                "score": _nan_none(p.score),
            }
            for p in result.pairs
        ],
        "barriers": [
            {
                "a": result.runs[b.pair[0]].label,
                "b": result.runs[b.pair[1]].label,
                "alpha": b.alpha.tolist(),
                "loss": _nan_none(b.loss),
                "barrier": b.barrier,
            }
            for b in result.barriers
        ],  # fmt: skip
    }
    if result.split is not None:
        s = result.split
        payload["split"] = {
            "steps": s.steps.tolist(),
            "same_trunk_score": _nan_none(s.same_score),
            "same_trunk_pairs": s.same_pairs.tolist(),
            "other_trunk_score": _nan_none(s.other_score),
            "other_trunk_pairs": s.other_pairs.tolist(),
            "barrier": _nan_none(s.barrier),
        }
    return payload


def _nan_none(a: np.ndarray) -> list:
    """A nested list with NaN as None (JSON has no NaN)."""
    arr = np.asarray(a, dtype=np.float64)
    return np.where(np.isnan(arr), None, np.round(arr, 6)).tolist()


def _fmt(x: float, signed: bool = False) -> str:
    if not np.isfinite(x):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _render(out: Output, result: CompareResult) -> None:
    """Tables for the mode, then where the comparison store is."""
    labels = [e.label for e in result.runs]
    metrics = [m for m in _TABLE_METRICS if m in result.metrics]
    if result.mode == "split":
        s = result.split
        out.table(
            f"branch agreement at the endpoints vs split step (mean over matrices, top "
            f"{result.score_top})",
            ("split step", "pairs (one trunk)", "agreement", "pairs (other trunks)",
             "agreement", "barrier"),
            [
                (int(step), int(s.same_pairs[g]), _fmt(np.nanmean(s.same_score[g])) if
                 s.same_pairs[g] else "-", int(s.other_pairs[g]),
                 _fmt(np.nanmean(s.other_score[g])) if s.other_pairs[g] else "-",
                 _fmt(s.barrier[g]))
                for g, step in enumerate(s.steps)
            ],
        )  # fmt: skip
        out.table(
            "agreement per matrix (branches of one trunk)",
            ("matrix", *[f"split {int(x)}" for x in s.steps]),
            [
                (m, *[_fmt(s.same_score[g, j]) for g in range(len(s.steps))])
                for j, m in enumerate(result.matrices)
            ],
        )
    elif len(result.runs) == 2:
        pair = result.pairs[0]
        cols = ["matrix", "agreement at end"]
        if len(pair.steps_a) > 1:
            cols.append(f"mean, {len(pair.steps_a)} steps")
        finals = {m: result.final(m) for m in metrics}
        for m in metrics:
            short = "rank" if m == "normalized_effective_rank" else m.replace("_", " ")
            cols += [f"{short} A", f"{short} B", "Δ"]
        rows = []
        for j, m in enumerate(result.matrices):
            row = [m, _fmt(pair.score[-1, j])]
            if len(pair.steps_a) > 1:
                row.append(_fmt(float(np.nanmean(pair.score[:, j]))))
            for metric in metrics:
                a, b = finals[metric][0, j], finals[metric][1, j]
                row += [_fmt(a), _fmt(b), _fmt(b - a, signed=True)]
            rows.append(row)
        out.table(
            f"A = {labels[0]} (step {pair.steps_a[-1]}), B = {labels[1]} "
            f"(step {pair.steps_b[-1]}); agreement: mean of the top {result.score_top} S_ii",
            cols,
            rows,
        )
    else:
        for metric in metrics:
            final = result.final(metric)
            out.table(
                f"final {metric.replace('_', ' ')}",
                ("matrix", *labels),
                [
                    (m, *[_fmt(final[r, j]) for r in range(len(labels))])
                    for j, m in enumerate(result.matrices)
                ]
                + [("mean", *[_fmt(float(np.nanmean(final[r]))) for r in range(len(labels))])],
            )
        out.table(
            f"endpoint agreement with {labels[0]} (mean over matrices, top {result.score_top})",
            ("run", "agreement"),
            [(labels[p.b], _fmt(float(np.nanmean(p.score[-1])))) for p in result.pairs],
        )
    for b in result.barriers:
        out.fields(
            f"barrier {labels[b.pair[0]]} → {labels[b.pair[1]]}",
            [("barrier", _fmt(b.barrier)), ("losses", " ".join(_fmt(x) for x in b.loss))],
        )
    if not out.quiet:
        out.line(f"comparison store: {result.path}")
        out.line(
            "figures: specdyn plot side-by-side|branch-agreement"
            + ("|split" if result.mode == "split" else "")
            + f" {result.path.stem}"
        )
