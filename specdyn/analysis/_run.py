"""One run's analysis: a stream of steps → matrix views → singular values (and vectors) →
the run's store.

`analyze_stream` is the entry point for any step source (`LocalSteps` for a folder,
`specdyn.pythia.HubSteps` for the hub). It plans the matrix views from one checkpoint,
opens (or extends) the store, orders the pending steps reference-first and analyses
each step one parameter tensor at a time, writing each finished step to the store.
Re-running adds only what is missing (docs/store.md#store-evolution).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..engine import SpectrumEngine
from ..errors import (
    CheckpointError,
    ShapeChangedError,
    SpecdynError,
    StepSpecError,
    ViewError,
    option_ref,
)
from ..matrices import MatrixGroup, plan_checkpoint, read_matrices, views_by_parameter
from ..metrics import (
    HEAVY_TAIL_NAMES,
    METRIC_NAMES,
    STORED_METRIC_NAMES,
    conv_heavy_tail_metrics,
    fit_nan_note,
    fit_nan_step_notes,
    matrix_metrics,
)
from ..pairs import Operand, Pair, PairPlan, plan_pairs
from ..sources import Checkpoint, TensorReader
from ..steps import select_steps
from ..store import (
    CheckpointProblem,
    MatrixRecord,
    StepRecord,
    StepVectors,
    StoreWriter,
    VectorLayout,
    open_run,
)
from ..types import Note, TrainingLog
from ..vectors import TopK
from ..version import __version__
from ..views import MatrixView, ViewPlan
from ._records import ComputeOptions, MatrixSelection, Progress, RunAnalysis
from ._stepstream import StepStream
from ._vector_step import (
    StepTops,
    VectorOptions,
    layout_for,
    operand_key,
    pair_alignments,
    sliced_operands,
    whole_matrix_sides,
)

__all__ = [
    "STEP_FAILURES",
    "StepDispatcher",
    "StepPlan",
    "StepResult",
    "analyze_stream",
    "compute_step",
    "settled_vectors",
]

# What a step's checkpoint raises when it cannot be analysed (the step fails, not the run,
# for a stream with tolerate_failures).
STEP_FAILURES = (CheckpointError, ViewError, ShapeChangedError)

# Matrices are sent to the engine in groups of at most this many bytes (as
# stored), so that same-shape matrices batch while memory holds one group.
_GROUP_BYTES = 64 * 2**20

# How a message names the agreement's reference: vectors.reference (Python) or --reference.
_REFERENCE = option_ref("vectors.reference", "--reference")

# compute.conv_metrics: the heavy-tailed metrics of a Conv2d weight from its flattened view
# (the default, like every metric) or WeightWatcher's per-tap ESD (docs/metrics.md#convolutions)
CONV_METRICS = ("flattened", "weightwatcher")
_CONV_KINDS = ("conv", "conv_transpose")


def analyze_stream(
    source: StepStream,
    store_path: str | Path,
    *,
    run_name: str,
    steps: str | Sequence[int] | None = None,
    matrices: MatrixSelection | None = None,
    compute: ComputeOptions | None = None,
    vectors: VectorOptions | None = VectorOptions(),
    engine: SpectrumEngine | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    flags: dict[int, str] | None = None,
    training: TrainingLog | None = None,
    problems: Sequence[CheckpointProblem] | None = None,
    dispatcher: StepDispatcher | None = None,
) -> RunAnalysis:
    """Analyse the steps of one run, as `source` provides them, into the store at `store_path`.

    The views are planned from one checkpoint; the steps still to compute are visited
    in order (the agreement's reference first when some step's agreement is missing),
    each `acquire`d from `source`, analysed one parameter tensor at a time, written to
    the store and `release`d. `specdyn.analyze` calls it once per local run,
    `specdyn.pythia` once per sweep.

    Args:
        source: the run's steps (`LocalSteps`, `specdyn.pythia.HubSteps`, or another
            `StepStream`). A stream with ``tolerate_failures`` has an unreadable
            checkpoint flagged in the store and skipped; otherwise the error stops
            the run.
        store_path: the run's store (created, resumed or extended).
        run_name: the name recorded in the store and in progress events.
        steps: a ``--steps`` value (docs/runs.md#steps-grammar) over `source.available`, or
            the exact
            steps to analyse (a remote stream that already chose them); None: all.
        matrices: which matrices to analyse (default: all).
        compute: precision and exactness recorded in the store, and the engine's
            options when `engine` is None.
        vectors: singular-vector analysis, as in `specdyn.analyze`; None for values only.
            Fields left None are taken from the store (`settled_vectors`).
        engine: a `SpectrumEngine` to reuse across runs (default: one made from `compute`).
        overwrite: rebuild a store whose options or matrices differ.
        on_progress: called with a `Progress` while steps are hashed and after every
            group of matrices.
        flags: step → a short text the store keeps for plots to mark (a duplicate, a
            suspect revision).
        training: training metrics stored with the run.
        problems: the run's checkpoints that were found but cannot be analysed, kept in
            the store (``/problems``) so that it is not listed as complete; None keeps
            what the store has (a stream that does not discover checkpoints).
        dispatcher: where the steps are computed (`specdyn.analyze`'s ``scheduler``: one
            Dask task per step, docs/distributed.md); None: here, one after the other.
            This process stays the store's only writer either way.

    Returns:
        `RunAnalysis`: steps computed now and before, matrices, skips, methods used,
        the vector layout's k, reference and pairs, and warnings.

    Raises:
        SpecdynError subclasses with one-line messages (bad options, a reference step
        that is not a checkpoint, nothing to analyse, a shape that changes between
        steps, a store from another run or made with other options, a locked store).
    """
    matrices = matrices or MatrixSelection()
    compute = compute or ComputeOptions()
    if compute.conv_metrics not in CONV_METRICS:
        raise SpecdynError(
            f"{option_ref('compute.conv_metrics', '--conv-metrics')} "
            f"{compute.conv_metrics!r}: use flattened or weightwatcher",
            option="compute.conv_metrics",
        )
    if vectors is not None:
        vectors.validate()
    if engine is None:
        engine = SpectrumEngine(
            device=compute.device,
            precision=compute.precision,
            exact=compute.exact,
            max_memory=compute.max_memory,
        )
    vectors = settled_vectors(vectors, Path(store_path), overwrite=overwrite)
    run = _AnalysisRun(
        source,
        Path(store_path),
        run_name=run_name,
        matrices=matrices,
        compute=compute,
        vectors=vectors,
        engine=engine,
        on_progress=on_progress,
    )
    problems = None if problems is None else list(problems)
    run.problems = problems
    run.dispatcher = dispatcher
    return run.run(steps, overwrite=overwrite, flags=flags or {}, training=training)


@dataclass(frozen=True)
class StepPlan:
    """What computing any step of a run needs, the same for every step; picklable (it is
    shipped once to every worker of a cluster).

    views: the planned matrix views; infos: raw key → TensorInfo of the checkpoint the
    views were planned from; k: top singular vectors per matrix (0 for values only);
    sliced: matrix name → the pair operands that need slices of it decomposed; layout:
    the store's vector layout (None for values only); pairs: the pairs whose alignment is
    measured; ranks: matrix name → R = min(shape); pair_sides: matrix name → the sides of
    the whole matrix that pairs compare; conv_taps: the Conv2d matrices whose heavy-tailed
    metrics follow WeightWatcher's per-tap convention (compute.conv_metrics).
    """

    views: tuple[MatrixView, ...]
    infos: dict
    k: int
    sliced: dict[str, list[Operand]]
    layout: VectorLayout | None
    pairs: tuple[Pair, ...]
    ranks: dict[str, int]
    pair_sides: dict[str, set[str]]
    conv_taps: frozenset[str] = frozenset()


@dataclass
class StepResult:
    """One step's results, ready for `StoreWriter.write_step` (computed without the store).

    spectra: name → (σ float64 [R], method), None when the step's values are not wanted;
    metrics: name → metric → value (with spectra; every name of `STORED_METRIC_NAMES`);
    notes: the step's warnings (with spectra); sha256: the checkpoint's content hash when
    it was computed now; vectors: the alignment / agreement / kept vectors wanted (None:
    no vector section); tops: name → full TopK (only on the reference pass, else {});
    fit_reasons: name → why its power-law fit is NaN (a key of
    `specdyn.metrics.FIT_REASONS`), only for matrices whose fit failed.
    """

    step: int
    spectra: dict[str, tuple[np.ndarray, str]] | None
    metrics: dict[str, dict[str, float]] | None
    notes: list[Note]
    sha256: str | None
    vectors: StepVectors | None
    tops: dict[str, TopK]
    fit_reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class _Decomposed:
    """What one checkpoint gave: name → (σ float64 [R], method), the top-k vectors of
    pair-operand slices (`operand_key` → one TopK per slice; None without vectors), its
    warnings, and the per-tap heavy-tailed metrics of `StepPlan.conv_taps` (name →
    (metrics, reason))."""

    spectra: dict[str, tuple[np.ndarray, str]]
    slices: dict[tuple, list[TopK]] | None
    notes: list[Note]
    conv: dict[str, tuple[dict[str, float], str]] = field(default_factory=dict)


class StepDispatcher(Protocol):
    """Runs a run's pending steps elsewhere (a Dask cluster, `specdyn.analysis._distributed`)
    instead of the local loop; the run stays the only store writer."""

    def analyse(self, run: _AnalysisRun, work: list[int]) -> None:
        """Compute every step of `work` (the reference first when `run.reference_first`)
        and hand each result to `run.write_result`."""


class _AnalysisRun:
    """One run's analysis, in named steps that `run` takes in order.

    The inputs are set in `__init__`. Each step sets the state it produces:

    - `_select_steps`: selected (the steps asked for, with the reference) and reference
      (the agreement's reference step; None without vectors).
    - `_plan_views`: plan_step (the checkpoint the views are planned from), plan (its
      `ViewPlan`), infos (raw key → TensorInfo of that checkpoint) and config.
    - `_plan_pairs`: pair_plan, layout (the store's `VectorLayout`), and step_plan (the
      `StepPlan` every step's work needs).
    - `_open_store`: step_records, unhashed (steps whose sha256 is computed while they
      are analysed), store_options.
    - `_take_store_state`: writer, sections (step → the sections still to compute) and
      done_before.
    - `_order_steps`: reference_first (the reference is analysed before the others).
    - `_analyse_reference`: reference_tops (the reference's top-k vectors, name → TopK).

    Accumulated while steps are analysed: notes, methods (method → matrices), computed,
    with_vectors and failed (steps), fit_nan ((matrix, reason) → steps whose power-law
    fit gave NaN for that reason, with fit_nan_steps the steps the store evolution
    computed the metrics of).
    """

    def __init__(
        self,
        source: StepStream,
        store_path: Path,
        *,
        run_name: str,
        matrices: MatrixSelection,
        compute: ComputeOptions,
        vectors: VectorOptions | None,
        engine: SpectrumEngine,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self.source = source
        self.store_path = store_path
        self.run_name = run_name
        self.matrices = matrices
        self.compute = compute
        self.vectors = vectors
        self.engine = engine
        self.on_progress = on_progress
        self.k = vectors.k if vectors is not None else 0
        self.notes: list[Note] = []
        self.methods: Counter[str] = Counter()
        self.computed: list[int] = []
        self.with_vectors: list[int] = []
        self.failed: list[int] = []
        self.fit_nan: Counter[tuple[str, str]] = Counter()
        self.fit_nan_steps = 0  # steps whose metrics the store gained from its σ
        self.problems: list[CheckpointProblem] | None = None
        self.reference_tops: dict[str, TopK] | None = None
        self.hasher: ThreadPoolExecutor | None = None  # set while steps are analysed
        self.dispatcher: StepDispatcher | None = None  # set: the steps run elsewhere
        self.device: str | None = None  # where the steps ran, when not on `engine`

    def run(
        self,
        steps: str | Sequence[int] | None,
        *,
        overwrite: bool,
        flags: dict[int, str],
        training: TrainingLog | None,
    ) -> RunAnalysis:
        """Take every step of the analysis in order; the record of what was done."""
        started = time.perf_counter()
        self._select_steps(steps)
        self._plan_views()
        self._plan_pairs()
        with self._open_store(overwrite, training) as writer:
            self._take_store_state(writer, flags)
            work = self._order_steps()
            if self.dispatcher is not None:
                self.dispatcher.analyse(self, work)
            else:
                self._analyse_here(work)
        self.notes.extend(self.engine.notes)
        self.engine.notes.clear()
        return self._record(time.perf_counter() - started)

    def _analyse_here(self, work: list[int]) -> None:
        """Analyse the steps with work left in this process, one after the other."""
        # A checkpoint is hashed in a second thread while its SVDs run (hashlib and
        # file reads release the GIL; both threads read the same pages once).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="specdyn-hash") as hasher:
            self.hasher = hasher
            if self.reference_first:
                self._analyse_reference(len(work))
                work = [s for s in work if s != self.reference]
            for index, step in enumerate(work):
                self._visit(step, index, len(work), "analysing", self.sections[step])
        self.hasher = None

    # ------------------------------------------------------------------ planning

    def _select_steps(self, steps: str | Sequence[int] | None) -> None:
        """The steps to analyse and the agreement's reference (added when left out)."""
        source = self.source
        available = list(source.available)
        if isinstance(steps, str) or steps is None:
            self.selected = select_steps(available, steps)
        else:
            self.selected = sorted(int(s) for s in steps)
        self.reference: int | None = None
        if self.vectors is None:
            return
        self.reference = _reference_step(self.vectors.reference, available, source)
        if self.reference not in self.selected:
            # the agreement needs it anyway; stored, its row is the S_ii = 1 check
            self.selected = sorted([*self.selected, self.reference])
            self.notes.append(
                Note(
                    "reference",
                    f"{source.step_unit} {self.reference}, the agreement's reference, is "
                    "analysed too (--steps left it out)",
                )
            )

    def _plan_views(self) -> None:
        """Plan the matrix views from one checkpoint's metadata: the first selected, or,
        when steps are fetched, one that has work left (the reference first: it is
        needed first anyway)."""
        source, reference = self.source, self.reference
        self.plan_step = self.selected[0]
        if source.tolerate_failures:
            self.plan_step = _step_with_work(
                self.store_path, reference, self.selected, self.vectors is not None
            )
        try:
            plan_ckpt = source.acquire(self.plan_step)
            planned = plan_checkpoint(
                plan_ckpt,
                include=self.matrices.include,
                exclude=self.matrices.exclude,
                transposed=self.matrices.transposed,
            )
        except CheckpointError as exc:
            if not source.tolerate_failures:
                raise
            source.release(self.plan_step)
            first = self.plan_step == reference
            what = "the agreement's reference" if first else "the first revision"
            raise SpecdynError(
                f"{what} ({source.step_unit} {self.plan_step}) cannot be read ({exc.message}); "
                + (f"choose another {_REFERENCE}" if first else "check that revision"),
                file=exc.file,
                step=self.plan_step,
                option="vectors.reference" if first else None,
            ) from None
        self.config = plan_ckpt.config
        self.infos = planned.infos
        self.plan = planned.plan
        if not self.plan.matrices:
            raise SpecdynError(
                f"{plan_ckpt.path}: no weight matrix to analyse ({_skip_summary(self.plan)}); "
                f"check {option_ref('matrices.include', '--include')}/"
                f"{option_ref('matrices.exclude', '--exclude')}",
                file=plan_ckpt.path,
                option="matrices.include",
            )

    def _plan_pairs(self) -> None:
        """The pairs whose alignment is measured and the store's vector layout."""
        self.pair_plan: PairPlan | None = None
        self.layout: VectorLayout | None = None
        vectors = self.vectors
        if vectors is not None and self.reference is not None:
            self.pair_plan = plan_pairs(
                self.plan,
                self.infos,
                config=self.config,
                pairs_file=vectors.pairs_file,
                gate=vectors.gate,
            )
            rule = "last" if vectors.reference is None else "given"
            self.layout = layout_for(
                self.pair_plan, self.plan.matrices, vectors, self.reference, rule
            )
            self.notes.extend(Note("pairs", n) for n in self.pair_plan.notes)
        pairs = self.pair_plan.pairs if self.pair_plan is not None else []
        self.step_plan = StepPlan(
            views=tuple(self.plan.matrices),
            infos=self.infos,
            k=self.k,
            sliced=sliced_operands(pairs),
            layout=self.layout,
            pairs=tuple(pairs),
            ranks={m.name: int(min(m.shape)) for m in self.plan.matrices},
            pair_sides=whole_matrix_sides(pairs),
            conv_taps=frozenset(
                m.name
                for m in self.plan.matrices
                if self.compute.conv_metrics == "weightwatcher"
                and m.kind in _CONV_KINDS
                and len(m.source_shape) == 4
            ),
        )

    # ------------------------------------------------------------------ the store

    def _open_store(self, overwrite: bool, training: TrainingLog | None) -> StoreWriter:
        """Open (create, resume or grow) the run's store for the selected steps."""
        plan, source = self.plan, self.source

        def hashed(index: int, step: int) -> None:
            if self.on_progress is not None:
                n = len(plan.matrices)
                self.on_progress(
                    Progress(
                        self.run_name,
                        step,
                        index,
                        len(self.selected),
                        0,
                        n,
                        "hashing",
                        store=str(self.store_path),
                    )  # fmt: skip
                )

        self.step_records: list[StepRecord] = source.records(
            self.selected, self.store_path, on_hashed=hashed
        )
        self.unhashed = {r.step for r in self.step_records if not r.sha256}
        self.store_options = {
            "precision": self.compute.precision,
            "exact": self.compute.exact,
            "include": list(self.matrices.include),
            "exclude": list(self.matrices.exclude),
            "transposed": self.matrices.transposed,
        }
        if self.compute.conv_metrics != "flattened":
            # only when set: stores written before the option keep matching the default
            self.store_options["conv_metrics"] = self.compute.conv_metrics
        return StoreWriter.open(
            self.store_path,
            run_name=self.run_name,
            source_root=source.root,
            step_unit=source.step_unit,
            steps=self.step_records,
            matrices=[_matrix_record(m) for m in plan.matrices],
            skipped=[(s.param, s.reason) for s in plan.skipped],
            aliases=plan.aliases,
            options=self.store_options,
            provenance=self._provenance(),
            overwrite=overwrite,
            metric_names=STORED_METRIC_NAMES,
            vectors=self.layout,
            training=training,
            problems=self.problems,
        )

    def _provenance(self) -> dict:
        """This invocation's provenance record (version, command line, options, device)."""
        return {
            "specdyn_version": __version__,
            "argv": list(sys.argv),
            "options": self.store_options,
            "vectors": None if self.layout is None else self.layout.config(),
            "device": self.engine.device_name,
            "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
        }

    def _take_store_state(self, writer: StoreWriter, flags: dict[int, str]) -> None:
        """What the open store holds already: notes on changes, the flags written, and per
        step the sections still to compute."""
        self.writer = writer
        for step, old_source, what in writer.changed_steps:
            self.notes.append(
                Note(
                    "changed-source",
                    f"step {step}: {old_source} changed since it was analysed ({what}); "
                    "kept the stored numbers; use --overwrite to recompute",
                    path=str(old_source),
                )
            )
        self.notes.extend(Note("vectors", line) for line in writer.vector_changes)
        # metrics a store written before them gained from its σ (no checkpoint read); its
        # NaN fits are summed with those of the steps computed now (_fit_nan_notes)
        self.notes.extend(
            Note(kind, line, path=str(writer.path))
            for kind, line in writer.metric_changes
            if kind != "heavy-tail-nan"
        )
        self.fit_nan.update(writer.metric_fit_nan)
        self.fit_nan_steps = writer.metric_rows
        # rows damaged on disk were marked not done by the writer: computed again below
        self.notes.extend(
            Note(kind, line, path=str(writer.path)) for kind, line in writer.integrity_notes
        )
        for step, flag in flags.items():
            if step in self.selected:
                writer.flag_step(step, flag)
        pending = set(writer.pending_steps)
        self.done_before = sorted(set(self.selected) - pending)
        self.sections = {s: ({"values"} if s in pending else set()) for s in self.selected}
        if self.layout is not None:
            for section in ("alignment", "agreement", "vectors"):
                for step in writer.pending(section):
                    self.sections[step].add(section)
        elif writer.vector_layout is not None and pending:
            self.notes.append(
                Note(
                    "vectors-pending",
                    f"{len(pending)} step(s) analysed without singular vectors (--values-only) "
                    "in a store that has them; re-run without --values-only to add them",
                )
            )

    # ------------------------------------------------------------------ the steps

    def _order_steps(self) -> list[int]:
        """The steps with work left, in order; tells the stream the visiting order (the
        reference first when some step's agreement is missing)."""
        work = [s for s in self.selected if self.sections[s]]
        reference = self.reference
        self.reference_first = reference is not None and any(
            "agreement" in self.sections[s] for s in work
        )
        order = ([reference] if self.reference_first else []) + [s for s in work if s != reference]
        if not self.reference_first and self.plan_step not in order:
            self.source.release(self.plan_step)
        self.source.schedule(order)
        return work

    def _analyse_reference(self, n_steps: int) -> None:
        """Analyse the reference first: only its top-k vectors are held while the rest
        streams."""
        self.take_reference(self.visit_reference(n_steps))

    def visit_reference(self, n_steps: int) -> dict[str, TopK] | None:
        """The reference pass in this process (its results written): its full top-k
        vectors, None when it failed."""
        return self._visit(self.reference, 0, n_steps, "reference", self.reference_wanted())

    def on_done(self, step: int, index: int, n_steps: int, phase: str) -> None:
        """The progress event of a step computed elsewhere, once its results are written."""
        if self.on_progress is not None:
            n = len(self.step_plan.views)
            self.on_progress(
                Progress(
                    self.run_name, step, index, n_steps, n, n, phase, store=str(self.store_path)
                )
            )

    def reference_wanted(self) -> set[str]:
        """The sections computed on the reference pass: its own pending ones and "tops"."""
        return set(self.sections.get(self.reference, set())) | {"tops"}

    def take_reference(self, tops: dict[str, TopK] | None) -> None:
        """Keep the reference's top-k vectors (None: it failed, an error); warn about
        matrices whose agreement is undefined."""
        reference, unit = self.reference, self.source.step_unit
        self.reference_tops = tops
        if self.reference_tops is None:
            raise SpecdynError(
                f"the agreement's reference ({unit} {reference}) could "
                f"not be read; choose another {_REFERENCE}",
                step=reference,
                option="vectors.reference",
            )
        undefined = [n for n, t in self.reference_tops.items() if t.method in ("nonfinite", "zero")]
        if undefined:
            self.notes.append(
                Note(
                    "reference-undefined",
                    f"at the reference {unit} {reference}, "
                    f"{_few(undefined)} hold NaN/Inf or only zeros: their agreement is "
                    "NaN at every step; choose another --reference",
                )
            )

    def _visit(
        self, step: int, index: int, n_steps: int, phase: str, wanted: set[str]
    ) -> dict[str, TopK] | None:
        """Acquire, analyse and release one step; a remote stream's unreadable checkpoint
        is flagged in the store and skipped (None)."""
        source = self.source
        try:
            ckpt = source.acquire(step)
            return self._analyse_step(ckpt, index, n_steps, phase, wanted)
        except STEP_FAILURES as exc:
            self.step_failed(step, exc)
            return None
        finally:
            source.release(step)

    def step_failed(self, step: int, exc: SpecdynError) -> None:
        """A step whose checkpoint cannot be analysed: the error for a local folder; for a
        remote stream, flagged "failed" in the store and skipped with a note."""
        source = self.source
        if not source.tolerate_failures:
            raise exc
        self.writer.flag_step(step, f"failed: {str(exc)[:230]}")
        self.failed.append(step)
        self.notes.append(Note("failed", f"{source.step_unit} {step}: {exc}; skipped"))

    def _analyse_step(
        self, ckpt: Checkpoint, index: int, n_steps: int, phase: str, wanted: set[str]
    ) -> dict[str, TopK]:
        """Analyse one checkpoint and write what `wanted` asks; its full top-k vectors
        when `wanted` holds "tops" (the reference pass), else {}."""

        def on_group(done: int, n_views: int) -> None:
            if self.on_progress is not None:
                self.on_progress(
                    Progress(
                        self.run_name,
                        ckpt.step,
                        index,
                        n_steps,
                        done,
                        n_views,
                        phase,
                        store=str(self.store_path),
                    )  # fmt: skip
                )

        result = compute_step(
            ckpt,
            self.step_plan,
            wanted,
            self.engine,
            self.reference_tops,
            hash_source=self.needs_hash(ckpt.step, wanted),
            hasher=self.hasher,
            on_group=on_group,
        )
        self.write_result(result)
        return result.tops

    def needs_hash(self, step: int, wanted: set[str]) -> bool:
        """Whether the checkpoint is hashed while `wanted` is computed (no sha256 yet)."""
        return step in self.unhashed and "values" in wanted

    def write_result(self, result: StepResult) -> None:
        """Write one computed step's sections to the store and record what was done."""
        if result.spectra is not None:
            for _sigma, method in result.spectra.values():
                self.methods[method] += 1
        # the store keeps each step's NaN fits; the summary counts them over steps (_record)
        fits = fit_nan_step_notes(result.fit_reasons) if result.spectra is not None else []
        if result.spectra is not None or result.vectors is not None:
            self.writer.write_step(
                result.step,
                result.spectra,
                result.metrics,
                notes=[n.message for n in result.notes] + fits,
                sha256=result.sha256,
                vectors=result.vectors,
            )
        if result.spectra is not None:
            self.notes.extend(result.notes)
            self.computed.append(result.step)
            self.fit_nan.update(result.fit_reasons.items())
        if result.vectors is not None:
            self.with_vectors.append(result.step)

    def _record(self, seconds: float) -> RunAnalysis:
        """What was done, for the caller."""
        plan, layout, pair_plan = self.plan, self.layout, self.pair_plan
        return RunAnalysis(
            name=self.run_name,
            source_root=self.source.root,
            store_path=str(self.store_path),
            step_unit=self.source.step_unit,
            steps_selected=list(self.selected),
            steps_computed=sorted(self.computed),
            steps_already_done=self.done_before,
            n_matrices=len(plan.matrices),
            skipped=_skip_counts(plan),
            aliases=dict(plan.aliases),
            methods=dict(self.methods),
            device=self.device or self.engine.device_name,
            seconds=seconds,
            notes=self.notes + self._fit_nan_notes(),
            k=None if layout is None else layout.k,
            reference=self.reference,
            pairs=0 if pair_plan is None else len(pair_plan.pairs),
            pairs_preset="" if pair_plan is None else pair_plan.preset,
            steps_with_vectors=sorted(self.with_vectors),
            steps_failed=sorted(self.failed),
            problems=list(self.problems or []),
        )

    def _fit_nan_notes(self) -> list[Note]:
        """One note per (matrix, reason) of the power-law fits that gave NaN, over the
        steps whose metrics were written now (computed, or gained from the stored σ)."""
        total, unit = len(self.computed) + self.fit_nan_steps, self.source.step_unit
        return [
            Note("heavy-tail-nan", fit_nan_note(matrix, reason, n, total, unit), path=matrix)
            for (matrix, reason), n in sorted(self.fit_nan.items())
        ]


def compute_step(
    ckpt: Checkpoint,
    plan: StepPlan,
    wanted: set[str],
    engine: SpectrumEngine,
    reference_tops: dict[str, TopK] | None,
    *,
    hash_source: bool = False,
    hasher: ThreadPoolExecutor | None = None,
    on_group: Callable[[int, int], None] | None = None,
) -> StepResult:
    """One checkpoint's results for the sections in `wanted`, without touching the store
    (the local loop writes them at once; a cluster worker returns them to the client).

    Args:
        ckpt: the checkpoint (local files).
        plan: the run's `StepPlan`.
        wanted: the sections to compute: "values", "alignment", "agreement", "vectors",
            and "tops" on the reference pass (the full top-k vectors are returned).
        engine: the SVD engine.
        reference_tops: the reference step's vectors, name → TopK (None on the
            reference pass: each matrix is then its own reference).
        hash_source: also compute the checkpoint's sha256 (in a second thread).
        hasher: the thread to hash in (default: one made for this step).
        on_group: called with (matrices done, matrices) after every group of matrices.

    Returns:
        `StepResult`.

    Raises:
        CheckpointError, ViewError, ShapeChangedError: the checkpoint cannot be analysed.
    """
    hashing: Future | None = None
    own = None
    if hash_source:
        if hasher is None:
            hasher = own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specdyn-hash")
        hashing = hasher.submit(ckpt.fingerprint)
    try:
        tops = StepTops(wanted, plan.layout, reference_tops, plan.ranks, plan.pair_sides)
        result = _decompose(
            ckpt,
            plan,
            engine,
            k=plan.k if wanted - {"values"} else 0,  # "tops": the reference's vectors only
            sliced=plan.sliced if "alignment" in wanted else {},
            take=tops.take,
            on_group=on_group,
            conv_taps=plan.conv_taps if "values" in wanted else frozenset(),
        )
        sha256 = hashing.result().sha256 if hashing is not None else None
    finally:
        if own is not None:
            own.shutdown(wait=False)
    return _step_result(ckpt.step, plan, wanted, result, tops, sha256)


def _step_result(
    step: int,
    plan: StepPlan,
    wanted: set[str],
    result: _Decomposed,
    tops: StepTops,
    sha256: str | None,
) -> StepResult:
    """The wanted sections (values, metrics, vectors) of one decomposed step."""
    spectra = result.spectra if "values" in wanted else None
    metrics = None
    fit_reasons: dict[str, str] = {}
    if spectra is not None:
        shapes = {view.name: tuple(view.shape) for view in plan.views}
        metrics = {}
        for matrix, (sigma, _method) in spectra.items():
            values, reason = matrix_metrics(sigma, shapes[matrix], return_reasons=True)
            metrics[matrix] = {k: float(v) for k, v in values.items()}
            reason = str(reason)
            if matrix in result.conv:  # WeightWatcher's per-tap ESD; one stable_rank
                conv, reason = result.conv[matrix]
                metrics[matrix].update((k, conv[k]) for k in _CONV_NAMES)
            if reason:
                fit_reasons[matrix] = reason
    step_vec = None
    if wanted & {"alignment", "agreement", "vectors"} and plan.layout is not None:
        alignment = None
        if "alignment" in wanted:
            alignment = pair_alignments(plan.pairs, plan.layout, tops.held, result.slices or {})
        step_vec = StepVectors(
            alignment=alignment,
            agreement=tops.agreement if "agreement" in wanted else None,
            vectors=tops.kept if "vectors" in wanted else None,
        )
    return StepResult(
        step=int(step),
        spectra=spectra,
        metrics=metrics,
        notes=result.notes if spectra is not None else [],
        sha256=sha256,
        vectors=step_vec,
        tops=tops.full,
        fit_reasons=fit_reasons,
    )


def _decompose(
    ckpt: Checkpoint,
    plan: StepPlan,
    engine: SpectrumEngine,
    *,
    k: int,
    sliced: dict[str, list[Operand]],
    take: Callable[[str, TopK], None],
    on_group: Callable[[int, int], None] | None,
    conv_taps: frozenset[str] = frozenset(),
) -> _Decomposed:
    """Singular values of one checkpoint, reading one group of tensors at a time; with
    k ≥ 1 the top-k vectors of every matrix (handed to `take(name, top)` as they are
    computed) and of every pair-operand slice in `sliced` (returned); the per-tap
    heavy-tailed metrics of the conv matrices `conv_taps`."""
    views = plan.views
    out = _Decomposed(spectra={}, slices={} if k else None, notes=[])
    with ckpt.open() as reader:
        _check_same_parameters(ckpt, reader, views, plan.infos, out.notes)
        for group in read_matrices(reader, views, group_bytes=_GROUP_BYTES):
            _decompose_group(engine, group, ckpt, out, k=k, sliced=sliced, take=take)
            for view, matrix in group:
                if view.name in conv_taps:
                    out.conv[view.name] = _conv_taps_metrics(view, matrix)
            if on_group is not None:
                on_group(len(out.spectra), len(views))  # matrices of this step done so far
    return out


def _decompose_group(
    engine: SpectrumEngine,
    group: MatrixGroup,
    ckpt: Checkpoint,
    out: _Decomposed,
    *,
    k: int,
    sliced: dict[str, list[Operand]],
    take: Callable[[str, TopK], None],
) -> None:
    """Send one group of matrices to the engine (one batch) and add what it gives to `out`."""
    if k:
        results = [(t.sigma, t.method, t) for t in engine.top_vectors(group.matrices, k)]
    else:
        results = [(r.sigma, r.method, None) for r in engine.singular_values(group.matrices)]
    for (view, matrix), (sigma, method, top) in zip(group, results, strict=True):
        out.spectra[view.name] = (sigma, method)
        if top is not None and out.slices is not None:
            take(view.name, top)
            for op in sliced.get(view.name, []):
                out.slices[operand_key(op)] = engine.top_vectors(op.apply(matrix), k)
        note = _degenerate_note(view, method, ckpt)
        if note is not None:
            out.notes.append(note)


# the heavy-tailed metrics a per-tap conv ESD replaces (stable_rank stays the stored one)
_CONV_NAMES = tuple(n for n in HEAVY_TAIL_NAMES if n not in METRIC_NAMES)


def _conv_taps_metrics(view: MatrixView, matrix: torch.Tensor) -> tuple[dict[str, float], str]:
    """WeightWatcher's per-tap heavy-tailed metrics of a Conv2d view (out, in·kh·kw)."""
    out = int(view.shape[0])
    kernel = tuple(int(d) for d in view.source_shape[2:])
    weight = matrix.detach().to("cpu", torch.float64).reshape(out, -1, *kernel).numpy()
    return conv_heavy_tail_metrics(weight)


def settled_vectors(
    vectors: VectorOptions | None, store_path: Path, *, overwrite: bool = False
) -> VectorOptions | None:
    """The vector options a run is analysed with: given fields as given, the others as
    the existing store has them (a values-only store stays values only unless a vector
    option is given), else the defaults; with `overwrite`, given fields and defaults.

    Returns:
        Concrete `VectorOptions` (every field set; reference None = the last
        checkpoint), or None for values only.
    """
    if vectors is None:
        return None
    stored = None if overwrite else _stored_vector_settings(store_path)
    if stored is None:
        return vectors.resolved(None)
    if stored == {} and not vectors.given():
        return None  # a values-only store, and no vector option asked for: it stays so
    return vectors.resolved(stored)


def _stored_vector_settings(store_path: Path) -> dict | None:
    """The store's vector settings with its pairs' gate ({} for values only), or None
    when there is no readable store (the writer reports a bad one)."""
    if not store_path.exists():
        return None
    try:
        with open_run(store_path) as run:
            config = run.vectors.config
            if config is None:
                return {}
            gates = [p["options"].get("gate") for p in run.alignment.pairs]
    except SpecdynError:
        return None
    settings = dict(config)
    gate = next((g for g in gates if g), None)
    if gate is not None:
        settings["gate"] = gate
    return settings


# ------------------------------------------------------------------ helpers


def _reference_step(given: int | None, available: Sequence[int], source: StepStream) -> int:
    """The agreement's reference step: `given`, checked to be a checkpoint, else the last."""
    if given is None:
        return int(available[-1])
    if given in available:
        return int(given)
    below = [s for s in available if s < given]
    above = [s for s in available if s > given]
    nearest = ", ".join(str(s) for s in (below[-1:] + above[:1]))
    raise StepSpecError(
        f"{_REFERENCE} {given}: {source.root} has no checkpoint at {source.step_unit} {given} "
        f"(nearest: {nearest}); give one of its steps",
        file=source.root,
        step=given,
        option="vectors.reference",
    )


def _step_with_work(
    store_path: Path, reference: int | None, selected: Sequence[int], vectors: bool
) -> int:
    """The step to plan the views from when steps are fetched: the reference when the
    agreement of some step is missing (it is fetched first anyway), else the first step
    the store does not hold completely, else the first."""
    done: set[int] = set()
    agreed: set[int] = set()
    if store_path.exists():
        try:
            with open_run(store_path) as run:
                done = set(run.steps.tolist())
                if run.vectors_config is not None:
                    agreed = set(run.section_steps("agreement").tolist())
                    done &= agreed & set(run.section_steps("alignment").tolist())
                elif vectors:
                    done = set()
        except SpecdynError:
            done, agreed = set(), set()
    if vectors and reference is not None and not set(selected) <= agreed:
        return reference
    return next((s for s in selected if s not in done), selected[0])


def _check_same_parameters(
    ckpt: Checkpoint,
    reader: TensorReader,
    views: Sequence[MatrixView],
    first_infos: dict,
    notes: list[Note],
) -> None:
    """ShapeChangedError for a planned parameter that is missing or reshaped at this
    step; a Note for parameters the first analysed step did not have."""
    available = set(reader.keys())
    extra = sorted(available - set(first_infos))
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        notes.append(
            Note(
                "new-parameter",
                f"step {ckpt.step} has parameters the first analysed step lacks ({shown}); "
                "they are not analysed (analyse those steps as a run of their own)",
                path=str(ckpt.path),
            )
        )
    for key, key_views in views_by_parameter(views).items():
        if key not in available:
            raise ShapeChangedError(
                f"{ckpt.path}: parameter {key_views[0].param!r} (step {ckpt.step}) is missing, "
                "but the first analysed step has it; analyse the runs separately or "
                f"select matching steps with {option_ref('steps')}",
                file=ckpt.path,
                step=ckpt.step,
            )
        info = reader.info(key)
        planned = key_views[0]
        if tuple(info.shape) != tuple(planned.source_shape):
            raise ShapeChangedError(
                f"{ckpt.path}: parameter {planned.param!r} has shape {tuple(info.shape)} at "
                f"step {ckpt.step} but {tuple(planned.source_shape)} at the first analysed "
                f"step; a run must keep its shapes (exclude it with "
                f"{option_ref('matrices.exclude', '--exclude')})",
                file=ckpt.path,
                step=ckpt.step,
            )


def _degenerate_note(view: MatrixView, method: str, ckpt: Checkpoint) -> Note | None:
    """The warning for a matrix with NaN/Inf weights or all zeros, else None."""
    if method == "nonfinite":
        return Note(
            "nonfinite",
            f"{view.name} at step {ckpt.step} has NaN/Inf weights; its metrics are NaN",
            path=str(ckpt.path),
        )
    if method == "zero":
        return Note(
            "zero-matrix",
            f"{view.name} at step {ckpt.step} is all zeros; "
            "its normalised spectrum (entropy, ranks) is NaN",
            path=str(ckpt.path),
        )
    return None


def _matrix_record(view: MatrixView) -> MatrixRecord:
    """The store's description of one matrix view."""
    return MatrixRecord(
        name=view.name,
        param=view.param,
        key=view.key,
        kind=view.kind,
        part=view.part,
        shape=tuple(view.shape),
        source_shape=tuple(view.source_shape),
        source_dtype=view.source_dtype,
    )


def _skip_counts(plan: ViewPlan) -> dict[str, int]:
    """Skipped parameters counted by reason."""
    return dict(Counter(s.reason for s in plan.skipped))


def _skip_summary(plan: ViewPlan) -> str:
    """One-line summary of why parameters were skipped."""
    counts = _skip_counts(plan)
    if not counts:
        return "no parameters"
    return "; ".join(f"{n} {reason}" for reason, n in counts.items())


def _few(names: Sequence[str], limit: int = 3) -> str:
    """The first few names, comma-separated, with how many more."""
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")
