"""`specdyn analyze PATH`: checkpoints → store."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from ..analysis import AnalyzeResult, ComputeOptions, MatrixSelection
from ._options import (
    DeviceOption,
    ExactOption,
    FullMatricesOption,
    GateOption,
    HomeOption,
    JsonOption,
    MaxMemoryOption,
    PairsOption,
    PrecisionOption,
    QuietOption,
    ReferenceOption,
    SaveVectorsOption,
    ScoreTopOption,
    ValuesOnlyOption,
    VectorsOption,
    compute_options,
    vector_options_from,
)
from ._output import Output, is_warning

_ConvMetricsOption = Annotated[
    str,
    typer.Option(
        "--conv-metrics",
        help="Heavy-tailed metrics (alpha, ...) of Conv2d weights: 'flattened' (of the "
        "flattened out x in*kh*kw matrix, like every metric) or 'weightwatcher' "
        "(WeightWatcher's per-tap ESD, to reproduce its numbers); docs/metrics.md.",
    ),
]

_IgnoreOption = Annotated[
    list[str] | None,
    typer.Option(
        "--ignore",
        help="Glob of files or folders under PATH to leave out (repeatable), matched "
        "against the path relative to PATH ('version_3', '500/*') or starting with PATH "
        "as given ('out/500/*'); what it leaves out is counted in a note.",
    ),
]


def _with_conv_metrics(compute: ComputeOptions, conv_metrics: str) -> ComputeOptions:
    """`compute` with ``--conv-metrics`` (a usage error for another value)."""
    if conv_metrics not in ("flattened", "weightwatcher"):
        raise typer.BadParameter("choose flattened or weightwatcher", param_hint="--conv-metrics")
    return dataclasses.replace(compute, conv_metrics=conv_metrics)


def analyze_command(
    path: Annotated[
        Path,
        typer.Argument(help="A directory of checkpoints (searched recursively) or one checkpoint."),
    ],
    home: HomeOption = None,
    name: Annotated[
        str | None, typer.Option(help="Store name (default: the run folder's name).")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            help="When PATH holds several runs, analyse only those whose name matches this "
            "glob (runA, 'run*', '*-unet')."
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Training steps to analyse: 0,1000,5000 | start:stop | start:stop:stride | lin:N | log:N."
        ),
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Regex on matrix names to keep (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Regex on matrix names to drop (repeatable).")
    ] = None,
    ignore: _IgnoreOption = None,
    transposed: Annotated[
        str | None, typer.Option(help="Regex of parameters that are ConvTranspose weights.")
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "float64",
    exact: ExactOption = False,
    max_memory: MaxMemoryOption = None,
    conv_metrics: _ConvMetricsOption = "flattened",
    values_only: ValuesOnlyOption = False,
    vectors: VectorsOption = None,
    reference: ReferenceOption = None,
    full_matrices: FullMatricesOption = None,
    save_vectors: SaveVectorsOption = None,
    score_top: ScoreTopOption = None,
    pairs: PairsOption = None,
    gate: GateOption = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Recompute a store made with other options or matrices."),
    ] = False,
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            help="Training log (CSV with a header, or JSON lines) with a step column; "
            "stored beside the spectra. Logs next to the checkpoints are found without it.",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with status 1 when any checkpoint found could not be analysed "
            "(corrupt, unsafe, unreadable, no step); the others are still analysed.",
        ),
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Compute the steps on a Dask cluster, one task per checkpoint (same store): "
            "local:N (N worker processes), tcp://HOST:PORT (a running scheduler) or a "
            "scheduler JSON file. Needs pip install 'specdyn\\[dist]'; docs/distributed.md.",
        ),
    ] = None,
    max_inflight: Annotated[
        int | None,
        typer.Option(
            "--max-inflight",
            help="With --scheduler: the most steps computed and not yet written at once, which "
            "bounds the results held in memory (default: 2 per worker, fewer when their "
            "estimated results would not fit in a quarter of this machine's available memory).",
        ),
    ] = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> int:
    """Analyse a directory of checkpoints: singular values and spectral metrics of every matrix at every step."""
    compute = compute_options(device, precision, exact, max_memory)
    vector_options = vector_options_from(
        values_only, vectors, reference, full_matrices, save_vectors, score_top, pairs, gate
    )
    selection = MatrixSelection(tuple(include or ()), tuple(exclude or ()), transposed)
    out = Output(json_mode=json_out, quiet=quiet)
    from ..analysis import analyze  # torch: imported when a command computes

    with out.analysis_progress() as on_progress:
        result = analyze(
            path,
            home=home,
            name=name,
            run=run,
            steps=steps,
            matrices=selection,
            compute=_with_conv_metrics(compute, conv_metrics),
            vectors=vector_options,
            overwrite=overwrite,
            on_progress=on_progress,
            metrics_file=metrics,
            scheduler=scheduler,
            max_inflight=max_inflight,
            ignore=tuple(ignore or ()),
        )
    _render(result, out)
    return _exit_code(result, out, path, strict=strict)


def _exit_code(result: AnalyzeResult, out: Output, path: Path, *, strict: bool) -> int:
    """1 when a run of several failed (each named), or with --strict when a checkpoint
    could not be analysed; else 0."""
    if result.failed:
        _report_failures(result, out, path)
        return 1
    if strict and result.incomplete:
        lost = sum(len(r.problems) + len(r.steps_failed) for r in result.runs)
        out.line(
            f"specdyn: error: {lost} checkpoint{'s' if lost > 1 else ''} could not be analysed "
            "(see the warnings above; the stores record them); exit 1 (--strict)",
            err=True,
        )
        return 1
    return 0


def _render(result: AnalyzeResult, out: Output) -> None:
    """A summary table per run on stdout, then the warnings and notes on stderr; or one
    JSON document (its notes inside)."""
    if out.json_mode:
        # printed even though the command then exits 1 when a run failed: it lists them
        out.json(result.to_dict(), on_failure=bool(result.failed))
        return
    _render_tables(result, out)
    out.notes(result.notes)
    for run in result.runs:
        out.notes(run.notes)


def _report_failures(result: AnalyzeResult, out: Output, path: Path) -> None:
    """The failed runs' reasons and the closing error line, with the --ignore glob that
    leaves the first failed run out."""
    for f in result.failed:  # on stderr too: they survive -q, --json and a redirected stdout
        out.line(f"specdyn: run {f.name} failed: {f.cli_reason}", err=True)
    names = ", ".join(f.name for f in result.failed)
    total = len(result.failed) + len(result.runs)
    failed = len(result.failed)
    out.line(
        f"specdyn: error: {failed} of {total} run{'s' if total > 1 else ''} could not be "
        f"analysed ({names}; the reasons are above), the other {len(result.runs)} were; leave "
        f"a run out with --ignore {_ignore_glob(result.failed[0].source_root, path)!r} "
        "or pick runs with --run; exit 1",
        err=True,
    )


def _ignore_glob(run_root: str, path: Path) -> str:
    """The ``--ignore`` glob that leaves the folder `run_root` under `path` out."""
    try:
        rel = Path(run_root).relative_to(path).as_posix()
    except ValueError:
        return run_root
    return rel if rel != "." else run_root


def _run_table(result: AnalyzeResult, out: Output) -> None:
    """Which runs of a folder of several ran and which failed, one row each."""
    rows = [(r.name, "analysed", r.store_path) for r in result.runs]
    for f in sorted(result.failed, key=lambda f: f.position):  # back in discovery order
        rows.insert(f.position, (f.name, "failed", f.cli_reason))
    out.table(
        f"{len(rows)} runs: {len(result.runs)} analysed, {len(result.failed)} failed",
        ("run", "result", "store / reason"),
        rows,
    )


def _render_tables(result: AnalyzeResult, out: Output) -> None:
    """One summary table per run, then, for several runs, which ran and which failed."""
    if len(result.runs) + len(result.failed) > 1:
        names = [r.name for r in result.runs]
        for f in sorted(result.failed, key=lambda f: f.position):  # in discovery order
            names.insert(f.position, f.name)
        out.line(f"{len(names)} runs found: {', '.join(names)}", err=True)
    for run in result.runs:
        found = [n for n in result.notes if _under(n.path, run.source_root)]
        duplicates = [n for n in found if n.kind == "duplicate"]
        # counted as printed: warnings and notes by the same rule as the lines on stderr
        warnings = [n for n in found + run.notes if is_warning(n)]
        notes = [n for n in found + run.notes if not is_warning(n)]
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(run.skipped.items())) or "none"
        unit = run.step_unit + ("s" if not run.step_unit.endswith("s") else "")
        selected = run.steps_selected
        span = f"{selected[0]} … {selected[-1]}" if selected else "-"
        out.fields(
            f"run {run.name}",
            [
                (
                    unit,
                    f"{len(selected)} ({span}): {len(run.steps_computed)} analysed now, "
                    f"{len(run.steps_already_done)} already in the store",
                ),
                ("matrices", run.n_matrices),
                ("singular vectors", _vector_summary(run)),
                ("skipped parameters", skipped),
                ("tied weights", ", ".join(f"{a} → {b}" for a, b in run.aliases.items()) or "none"),
                ("duplicates", len(duplicates)),
                ("unreadable", _unreadable_summary(run)),
                (
                    "store changes",
                    "; ".join(n.message for n in run.notes if n.kind == "vectors") or "none",
                ),
                ("warnings", len(warnings)),
                ("notes", len(notes)),
                ("methods", ", ".join(f"{m} ×{n}" for m, n in sorted(run.methods.items())) or "-"),
                ("device", run.device),
                ("time", f"{run.seconds:.1f} s"),
                ("store", run.store_path),
            ],
        )
    if len(result.runs) + len(result.failed) > 1:
        _run_table(result, out)


def _unreadable_summary(run) -> str:
    """The run's checkpoints not analysed, by kind (kept in its store), and failed steps."""
    if not run.incomplete:
        return "none"
    kinds = Counter(p.kind for p in run.problems)
    parts = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    if run.steps_failed:
        parts.append(
            f"{len(run.steps_failed)} failed while read ({run.step_unit}s "
            f"{', '.join(map(str, run.steps_failed[:5]))})"
        )
    return ", ".join(parts)


def _vector_summary(run) -> str:
    """One line on the vector analysis of a run."""
    if run.k is None:
        return "not computed (--values-only)"
    return (
        f"top {run.k}; {run.pairs} pairs ({run.pairs_preset}); agreement against "
        f"{run.step_unit} {run.reference}; {len(run.steps_with_vectors)} steps computed now"
    )


def _under(path: str | None, root: str) -> bool:
    """Whether `path` lies in the folder `root`."""
    if path is None:
        return False
    # realpath, not Path.resolve: a note may name a symlink loop, which resolve() raises on
    return Path(os.path.realpath(path)).is_relative_to(Path(root))
