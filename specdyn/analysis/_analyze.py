"""`analyze`: every run found under a folder (or one checkpoint) into its store.

It discovers the runs, reads each one's training log, and hands each run's checkpoints
(`LocalSteps`) to `analyze_stream`, which plans the matrix views, streams every pending
step through the engine and writes the store. Re-running adds only what is missing
(docs/store.md#store-evolution).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from ..engine import SpectrumEngine
from ..errors import SpecdynError, option_ref
from ..sources import Discovery, RunSource, discover, read_training_log
from ..store import CheckpointProblem, resolve_home, store_path_for
from ..types import Note
from ._distributed import DaskSteps, client_engine, cluster_spec, connect
from ._records import (
    AnalyzeResult,
    ComputeOptions,
    MatrixSelection,
    Progress,
    RunAnalysis,
    RunFailure,
)
from ._run import analyze_stream
from ._stepstream import LocalSteps
from ._vector_step import VectorOptions

__all__ = ["analyze"]

# Discovery note kinds that mean "a checkpoint was found and could not be analysed"
# (specdyn.sources): kept in the store's /problems and counted as such by `runs`.
PROBLEM_KINDS = frozenset(
    {"missing", "unreadable", "corrupt", "unsafe-index", "unsafe-pickle", "bad-step", "no-step"}
)


def analyze(
    path: str | Path,
    *,
    home: str | Path | None = None,
    name: str | None = None,
    run: str | None = None,
    steps: str | None = None,
    matrices: MatrixSelection | None = None,
    compute: ComputeOptions | None = None,
    vectors: VectorOptions | None = VectorOptions(),
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    metrics_file: str | Path | None = None,
    scheduler: str | None = None,
    max_inflight: int | None = None,
    ignore: Sequence[str] = (),
) -> AnalyzeResult:
    """Analyse every checkpoint under `path` and write (or extend) each run's store.

    Args:
        path: a directory of checkpoints (searched recursively) or one checkpoint.
        home: the workspace folder (default `SPECDYN_HOME`, else ./specdyn-runs).
        name: the store name for the run (default: the run folder's name). With
            several runs in `path`, a prefix: stores are named `<name>-<run>`.
        run: when `path` holds several runs, analyse only those whose name matches
            this glob (``runA``, ``run*``, ``*-unet``).
        steps: the `--steps` grammar (docs/runs.md#steps-grammar) (training steps, not indices).
        matrices: which matrices to analyse (regexes on canonical names).
        compute: device, precision, exactness and memory bound of the engine.
        vectors: singular-vector analysis (alignment of every pair, agreement
            of every matrix with the reference step, kept vectors); None for
            values only (``--values-only``). Re-running adds what is missing: a
            values-only store gets its vectors without recomputing values; a
            changed reference (or new checkpoints moving the last step)
            recomputes the agreement only.
        overwrite: rebuild stores whose options or matrices differ.
        on_progress: called after every group of matrices with a `Progress`.
        metrics_file: a training log (CSV with a header, or JSON lines) with a
            ``step`` column and numeric columns, stored with the run's training
            metrics. Without it, metrics are still found beside the checkpoints:
            numbers inside checkpoint dicts, a Trainer's ``trainer_state.json``,
            Lightning's ``metrics.csv``, ``metrics.jsonl`` / ``log.csv`` files
            (``specdyn.sources.read_training_log``).
        scheduler: compute the steps on a Dask cluster (docs/distributed.md), one task
            per checkpoint, the store written here as tasks complete (the same store
            as without it): ``"local:N"`` (a LocalCluster of N worker processes with
            one thread each, made and closed here), ``"tcp://HOST:PORT"`` (a running
            scheduler) or the path of a scheduler JSON file (dask-jobqueue,
            dask-mpi). The workers must read the checkpoints at the same paths, and
            use `compute.device` (checked on every worker before any task).
            Needs the extra ``specdyn[dist]``. None: here, one step after the other.
        max_inflight: with `scheduler`, the most tasks submitted and not yet written,
            which bounds the results held in memory (default: two per worker, fewer
            when the steps' estimated results would not fit in a quarter of this
            machine's available memory; docs/distributed.md#backpressure-and-memory).
        ignore: globs of paths under `path` left out (``--ignore``), as
            `specdyn.sources.discover` takes them (``500/*``, ``out/500/*``).

    Returns:
        AnalyzeResult with, per run, the store path, steps computed now and
        before, matrices analysed, skipped parameters by reason, methods used
        (name → number of matrices), warnings (`Note`s: NaN/Inf weights,
        all-zero matrices, duplicates, engine fallbacks, changed sources) and
        `problems`: the run's checkpoints that were found but could not be
        analysed (corrupt, unsafe, unreadable, no step), also written to its store
        (``/problems``) so that ``specdyn runs`` does not call it complete.
        `AnalyzeResult.incomplete` is what ``--strict`` exits 1 on. When `path` holds
        several runs (`run` picking more than one), a run that raises one of the errors
        below is left out of `runs` and kept in `AnalyzeResult.failed` with its
        one-line reason; the other runs are analysed.

    Raises:
        SpecdynError subclasses with one-line messages (no checkpoints, unsafe
        or corrupt files that leave nothing to analyse, a shape that changes
        between steps, a store from another run or made with other options, a
        store locked by another writer, a bad `scheduler`, `distributed` not
        installed, workers that cannot run this specdyn version); with several
        runs, only for what concerns them all (discovery, options, the cluster).
    """
    matrices = matrices or MatrixSelection()
    compute = compute or ComputeOptions()
    if vectors is not None:
        vectors.validate()
    spec = cluster_spec(scheduler, max_inflight)  # before anything is read or started
    discovery = discover(path, ignore=ignore)
    sources = _chosen_runs(discovery, run, path)
    if metrics_file is not None and len(sources) > 1:
        names = ", ".join(r.name for r in sources)
        raise SpecdynError(
            f"{option_ref('metrics_file', '--metrics')} {metrics_file}: {path} holds "
            f"{len(sources)} runs ({names}); name the run the log belongs to with "
            f"{option_ref('run')}",
            file=metrics_file,
            option="metrics_file",
        )
    # one engine for every run (its device is set up once); on a cluster the workers
    # make theirs with `compute.device`
    engine = client_engine(compute, on_cluster=spec is not None)
    with ExitStack() as stack:
        dispatcher = None
        if spec is not None:
            client = stack.enter_context(connect(spec, compute=compute))
            dispatcher = DaskSteps(client, compute, max_inflight=max_inflight)
        results, failed = _analyze_runs(
            sources,
            discovery,
            engine,
            dispatcher,
            home=home,
            name=name,
            steps=steps,
            matrices=matrices,
            compute=compute,
            vectors=vectors,
            overwrite=overwrite,
            on_progress=on_progress,
            metrics_file=metrics_file,
        )
    return AnalyzeResult(runs=results, notes=list(discovery.notes), failed=failed)


def _analyze_runs(
    sources: list[RunSource],
    discovery: Discovery,
    engine: SpectrumEngine,
    dispatcher: DaskSteps | None,
    *,
    home: str | Path | None,
    name: str | None,
    **options,
) -> tuple[list[RunAnalysis], list[RunFailure]]:
    """Each run into its store; with several, a run's error is recorded and the next run
    analysed (one run raises it, as for a single checkpoint folder)."""
    results: list[RunAnalysis] = []
    failed: list[RunFailure] = []
    for position, source in enumerate(sources):
        try:
            results.append(
                _analyze_run(source, discovery, engine, dispatcher, home=home, name=name, **options)
            )
        except SpecdynError as exc:
            if len(sources) == 1:
                raise
            failure = _failure(source, discovery, exc, home=home, name=name)
            failure.position = position
            failed.append(failure)
    return results, failed


def _store_name(source: RunSource, discovery: Discovery, name: str | None) -> str:
    """A run's store name: `name` (or the run's), prefixing the run's with several runs."""
    if len(discovery.runs) > 1:
        return f"{name}-{source.name}" if name else source.name
    return name or source.name


def _failure(
    source: RunSource,
    discovery: Discovery,
    exc: SpecdynError,
    *,
    home: str | Path | None,
    name: str | None,
) -> RunFailure:
    """The record of a run of several that raised `exc` (its one line, both wordings)."""
    store_name = _store_name(source, discovery, name)
    try:
        store = str(store_path_for(store_name, resolve_home(home)))
    except SpecdynError:
        store = ""
    return RunFailure(
        name=source.name,
        source_root=str(source.root),
        store_path=store,
        reason=exc.render(),
        cli_reason=exc.render(cli=True),
        kind=type(exc).__name__,
        file=exc.file,
        step=exc.step,
    )


def _analyze_run(
    source: RunSource,
    discovery: Discovery,
    engine: SpectrumEngine,
    dispatcher: DaskSteps | None,
    *,
    home: str | Path | None,
    name: str | None,
    steps: str | None,
    matrices: MatrixSelection,
    compute: ComputeOptions,
    vectors: VectorOptions | None,
    overwrite: bool,
    on_progress: Callable[[Progress], None] | None,
    metrics_file: str | Path | None,
) -> RunAnalysis:
    """One discovered run into its store."""
    store_name = _store_name(source, discovery, name)
    training, training_notes = read_training_log(source, metrics_file)
    result = analyze_stream(
        LocalSteps(source),
        store_path_for(store_name, resolve_home(home)),
        run_name=store_name,
        steps=steps,
        matrices=matrices,
        compute=compute,
        vectors=vectors,
        engine=engine,
        overwrite=overwrite,
        on_progress=on_progress,
        training=training,
        problems=_problems_of(source, discovery),
        dispatcher=dispatcher,
    )
    result.notes[:0] = training_notes
    single = _single_step_note(source, result)
    if single is not None:
        result.notes.append(single)
    return result


def _single_step_note(source: RunSource, result: RunAnalysis) -> Note | None:
    """The ``single-step`` note when one step was analysed: no trajectory to follow."""
    if len(result.steps_selected) != 1:
        return None
    step, unit = result.steps_selected[0], source.step_unit
    if len(source.checkpoints) == 1:
        what = f"one checkpoint: a single {unit} ({unit} {step}), no trajectory"
    else:
        what = f"one {unit} selected ({unit} {step}) of {len(source.checkpoints)}: no trajectory"
    return Note("single-step", f"{what}; figures draw it as one column")


def _chosen_runs(discovery: Discovery, pattern: str | None, path: str | Path) -> list[RunSource]:
    """The runs whose name matches the ``--run`` glob (all without one)."""
    if pattern is None:
        return list(discovery.runs)
    chosen = [r for r in discovery.runs if fnmatch.fnmatchcase(r.name, pattern)]
    if not chosen:
        names = ", ".join(r.name for r in discovery.runs)
        raise SpecdynError(
            f"{path}: no run matches {option_ref('run')} {pattern!r}; runs found: {names}",
            file=path,
            option="run",
        )
    return chosen


def _problems_of(source: RunSource, discovery: Discovery) -> list[CheckpointProblem]:
    """The checkpoints found in `source`'s folder that no run analyses (unreadable,
    unsafe, no step), from the discovery notes: one in a run's own folder belongs to that
    run, one in a folder shared by several runs (or beside their folders) to each."""
    analysed = {str(c.path) for r in discovery.runs for c in r.checkpoints}
    roots = [Path(r.root) for r in discovery.runs]
    out = []
    for note in discovery.notes:
        if note.kind not in PROBLEM_KINDS or not note.path or note.path in analysed:
            continue
        if note.path.endswith(".json") and not note.path.endswith(".index.json"):
            continue  # a config or trainer-state sidecar: a note, not a lost checkpoint
        # a file in no run's folder (beside the runs' subfolders) belongs to every run
        owners = _owner_roots(Path(note.path), roots) or roots
        if Path(source.root) in owners:
            out.append(CheckpointProblem(note.path, note.kind, note.message))
    return out


def _owner_roots(file: Path, roots: Sequence[Path]) -> list[Path]:
    """The deepest run roots that hold `file` (several when runs share a folder)."""
    holding = [r for r in roots if r == file or _is_below(file, r)]
    if not holding:
        return []
    depth = max(len(r.parts) for r in holding)
    return [r for r in holding if len(r.parts) == depth]


def _is_below(file: Path, root: Path) -> bool:
    """Whether `file` lies inside the folder `root` (by path, without resolving links)."""
    try:
        return os.path.commonpath([str(file), str(root)]) == str(root)
    except ValueError:
        return False
