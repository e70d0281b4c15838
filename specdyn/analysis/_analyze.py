"""The analysis pipeline: checkpoints → matrix views → singular values → store.

`analyze` walks a directory (or one checkpoint), plans the matrix views from the
first selected checkpoint, and streams every pending step through the engine,
one parameter tensor at a time, writing each finished step to the run's store.
Re-running adds only what is missing (SPEC §7 "Store evolution").
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine import SpectrumEngine
from ..errors import CheckpointError, ShapeChangedError, SpecdynError, StepSpecError, ViewError
from ..metrics import spectral_metrics
from ..pairs import Operand, PairPlan, plan_pairs
from ..pairs import _presets as _pair_presets
from ..sources import Checkpoint, discover, read_training_log
from ..steps import select_steps
from ..store import (
    MatrixAgreement,
    MatrixRecord,
    StepVectors,
    StoreWriter,
    VectorLayout,
    open_run,
    resolve_home,
    store_path_for,
)
from ..store._vectors import SAVE_MODES
from ..types import Note, TrainingLog
from ..vectors import TopK
from ..version import __version__
from ..views import MatrixView, Skipped, ViewPlan, plan_views
from ._stepstream import LocalSteps, StepStream
from ._vector_step import (
    VectorOptions,
    held_sides,
    layout_for,
    matrix_agreement,
    operand_key,
    pair_alignments,
    sliced_operands,
)

__all__ = [
    "ComputeOptions",
    "MatrixSelection",
    "VectorOptions",
    "Progress",
    "RunAnalysis",
    "AnalyzeResult",
    "analyze",
]

# Matrices are sent to the engine in groups of at most this many bytes (as
# stored), so that same-shape matrices batch while memory holds one group.
_GROUP_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ComputeOptions:
    """How singular values are computed.

    device: "auto" | "cpu" | "cuda" | "cuda:N"; precision: "float64" (σ within
    1e-6·σ1 of float64 LAPACK) or "float32" (1e-4·σ1, faster on GPUs with weak
    float64); exact: force float64 LAPACK; max_memory: bytes the engine may hold
    on the device at once (None: no bound beyond what fits).
    """

    device: str = "auto"
    precision: str = "float64"
    exact: bool = False
    max_memory: int | None = None


@dataclass(frozen=True)
class MatrixSelection:
    """Which matrices are analysed: regexes on canonical matrix names (re.search).

    transposed: regex of parameters that are ConvTranspose weights (besides
    those recognised by name).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    transposed: str | None = None


@dataclass(frozen=True)
class Progress:
    """One progress event: `matrices_done` of `n_matrices` at step `step_index` of `n_steps`.

    phase: "hashing" while checkpoint fingerprints are computed (before any
    SVD; `matrices_done` is then 0), "reference" while the agreement's
    reference checkpoint is decomposed (before the other steps), "analysing"
    while steps are computed.
    """

    run: str
    step: int
    step_index: int
    n_steps: int
    matrices_done: int
    n_matrices: int
    phase: str = "analysing"


@dataclass
class RunAnalysis:
    """What `analyze` did for one run."""

    name: str
    source_root: str
    store_path: str
    step_unit: str
    steps_selected: list[int]
    steps_computed: list[int]
    steps_already_done: list[int]
    n_matrices: int
    skipped: dict[str, int]
    aliases: dict[str, str]
    methods: dict[str, int]
    device: str
    seconds: float
    notes: list[Note] = field(default_factory=list)
    k: int | None = None
    reference: int | None = None
    pairs: int = 0
    pairs_preset: str = ""
    steps_with_vectors: list[int] = field(default_factory=list)
    steps_failed: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable form (for `--json`)."""
        d = asdict(self)
        d["notes"] = [asdict(n) for n in self.notes]
        return d


@dataclass
class AnalyzeResult:
    """Result of `analyze`: one `RunAnalysis` per run found, and discovery notes."""

    runs: list[RunAnalysis]
    notes: list[Note]

    def to_dict(self) -> dict:
        """JSON-serialisable form (for `--json`)."""
        return {"runs": [r.to_dict() for r in self.runs], "notes": [asdict(n) for n in self.notes]}


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
) -> AnalyzeResult:
    """Analyse every checkpoint under `path` and write (or extend) each run's store.

    Args:
        path: a directory of checkpoints (searched recursively) or one checkpoint.
        home: the workspace folder (default `SPECDYN_HOME`, else ./specdyn-runs).
        name: the store name for the run (default: the run folder's name). With
            several runs in `path`, a prefix: stores are named `<name>-<run>`.
        run: when `path` holds several runs, analyse only the one of this name.
        steps: the SPEC §7 `--steps` grammar (training steps, not indices).
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

    Returns:
        AnalyzeResult with, per run, the store path, steps computed now and
        before, matrices analysed, skipped parameters by reason, methods used
        (name → number of matrices), and warnings (`Note`s: NaN/Inf weights,
        all-zero matrices, duplicates, engine fallbacks, changed sources).

    Raises:
        SpecdynError subclasses with one-line messages (no checkpoints, unsafe
        or corrupt files that leave nothing to analyse, a shape that changes
        between steps, a store from another run or made with other options, a
        store locked by another writer).
    """
    matrices = matrices or MatrixSelection()
    compute = compute or ComputeOptions()
    if vectors is not None:
        _check_vector_options(vectors)
    discovery = discover(path)
    sources = discovery.runs
    if run is not None:
        sources = [r for r in sources if r.name == run]
        if not sources:
            names = ", ".join(r.name for r in discovery.runs)
            raise SpecdynError(f"{path}: no run named {run!r}; runs found: {names}")
    if metrics_file is not None and len(sources) > 1:
        names = ", ".join(r.name for r in sources)
        raise SpecdynError(
            f"--metrics {metrics_file}: {path} holds {len(sources)} runs ({names}); "
            "name the run the log belongs to with --run"
        )
    engine = SpectrumEngine(
        device=compute.device,
        precision=compute.precision,
        exact=compute.exact,
        max_memory=compute.max_memory,
    )
    results = []
    for source in sources:
        if len(discovery.runs) > 1:
            store_name = f"{name}-{source.name}" if name else source.name
        else:
            store_name = name or source.name
        training, training_notes = read_training_log(source, metrics_file)
        results.append(
            _analyze_run(
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
            )
        )
        results[-1].notes[:0] = training_notes
    return AnalyzeResult(runs=results, notes=list(discovery.notes))


def _check_vector_options(vectors: VectorOptions) -> None:
    """SpecdynError (one line, naming the option) for unusable vector options."""

    def positive(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive(vectors.k):
        raise SpecdynError(f"--vectors {vectors.k!r}: give a positive number of singular vectors")
    if not positive(vectors.score_top):
        raise SpecdynError(f"--score-top {vectors.score_top!r}: give a positive number")
    if vectors.save_vectors not in SAVE_MODES:
        raise SpecdynError(
            f"--save-vectors {vectors.save_vectors!r}: use one of {', '.join(SAVE_MODES)}"
        )
    if vectors.gate not in _pair_presets.GATE_LETTERS:
        raise SpecdynError(
            f"--gate {vectors.gate!r}: not a gate block; use one of "
            f"{', '.join(_pair_presets.GATE_LETTERS)} (LSTM i f g o, GRU r z n)"
        )
    if vectors.reference is not None and (
        isinstance(vectors.reference, bool) or not isinstance(vectors.reference, int)
    ):
        raise SpecdynError(f"--reference {vectors.reference!r}: give a training step")


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
        f"--reference {given}: {source.root} has no checkpoint at {source.step_unit} {given} "
        f"(nearest: {nearest}); give one of its steps"
    )


@dataclass
class _StepResult:
    """What one checkpoint gave: values, and the top-k vectors of pair-operand slices."""

    spectra: dict[str, tuple[np.ndarray, str]]
    slices: dict[tuple, list[TopK]] | None
    notes: list[Note]


def _analyze_run(
    source: StepStream,
    store_path: Path,
    *,
    run_name: str,
    steps: str | None,
    matrices: MatrixSelection,
    compute: ComputeOptions,
    vectors: VectorOptions | None,
    engine: SpectrumEngine,
    overwrite: bool,
    on_progress: Callable[[Progress], None] | None,
    flags: dict[int, str] | None = None,
    training: TrainingLog | None = None,
) -> RunAnalysis:
    """Analyse one run into `store_path`; `steps` is a --steps value, or the exact list of
    steps to analyse (a remote stream that already chose them); `flags` (step → text)
    are written into the store for plots to mark."""
    started = time.perf_counter()
    available = list(source.available)
    if isinstance(steps, str) or steps is None:
        selected = select_steps(available, steps)
    else:
        selected = sorted(int(s) for s in steps)
    notes: list[Note] = []
    reference = None
    if vectors is not None:
        reference = _reference_step(vectors.reference, available, source)
        if reference not in selected:
            # the agreement needs it anyway; stored, its row is the S_ii = 1 check
            selected = sorted([*selected, reference])
            notes.append(
                Note(
                    "reference",
                    f"{source.step_unit} {reference}, the agreement's reference, is analysed "
                    "too (--steps left it out)",
                )
            )
    # the views are planned from one checkpoint: the first, or, when steps are fetched,
    # one that has work left (the reference first: it is needed first anyway)
    plan_step = selected[0]
    if source.tolerate_failures:
        plan_step = _step_with_work(store_path, reference, selected, vectors is not None)
    try:
        plan_ckpt = source.acquire(plan_step)
        with plan_ckpt.open() as reader:
            keys = reader.keys()
            infos = {k: reader.info(k) for k in keys}
            unsupported = dict(getattr(reader, "unsupported", {}))
    except CheckpointError as exc:
        if not source.tolerate_failures:
            raise
        source.release(plan_step)
        what = "the agreement's reference" if plan_step == reference else "the first revision"
        raise SpecdynError(
            f"{what} ({source.step_unit} {plan_step}) cannot be read ({exc}); "
            + ("choose another --reference" if plan_step == reference else "check that revision")
        ) from None
    plan = plan_views(
        infos,
        config=plan_ckpt.config,
        include=matrices.include,
        exclude=matrices.exclude,
        transposed=matrices.transposed,
        source_order=keys,
    )
    for key, built_by in unsupported.items():
        # quantised / sparse / subclass tensors are never read: count them, never drop silently
        plan.skipped.append(
            Skipped(key, key, f"unsupported tensor type (built by {built_by}); not read")
        )
    if not plan.matrices:
        raise SpecdynError(
            f"{plan_ckpt.path}: no weight matrix to analyse "
            f"({_skip_summary(plan)}); check --include/--exclude"
        )
    pair_plan: PairPlan | None = None
    vector_layout: VectorLayout | None = None
    if vectors is not None and reference is not None:
        pair_plan = plan_pairs(
            plan,
            infos,
            config=plan_ckpt.config,
            pairs_file=vectors.pairs_file,
            gate=vectors.gate,
        )
        vector_layout = layout_for(
            pair_plan,
            plan.matrices,
            vectors,
            reference,
            "last" if vectors.reference is None else "given",
        )
        notes.extend(Note("pairs", n) for n in pair_plan.notes)

    def hashed(index: int, step: int) -> None:
        if on_progress is not None:
            on_progress(
                Progress(run_name, step, index, len(selected), 0, len(plan.matrices), "hashing")
            )

    step_records = source.records(selected, store_path, on_hashed=hashed)
    options = {
        "precision": compute.precision,
        "exact": compute.exact,
        "include": list(matrices.include),
        "exclude": list(matrices.exclude),
        "transposed": matrices.transposed,
    }
    provenance = {
        "specdyn_version": __version__,
        "argv": list(sys.argv),
        "options": options,
        "vectors": None if vector_layout is None else vector_layout.config(),
        "device": engine.device_name,
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
    }
    methods: Counter[str] = Counter()
    computed: list[int] = []
    with_vectors: list[int] = []
    with StoreWriter.open(
        store_path,
        run_name=run_name,
        source_root=source.root,
        step_unit=source.step_unit,
        steps=step_records,
        matrices=[_matrix_record(m) for m in plan.matrices],
        skipped=[(s.param, s.reason) for s in plan.skipped],
        aliases=plan.aliases,
        options=options,
        provenance=provenance,
        overwrite=overwrite,
        vectors=vector_layout,
        training=training,
    ) as writer:
        for step, old_source, what in writer.changed_steps:
            notes.append(
                Note(
                    "changed-source",
                    f"step {step}: {old_source} changed since it was analysed ({what}); "
                    "kept the stored numbers; use --overwrite to recompute",
                    path=str(old_source),
                )
            )
        notes.extend(Note("vectors", line) for line in writer.vector_changes)
        for step, flag in (flags or {}).items():
            if step in selected:
                writer.flag_step(step, flag)
        pending = set(writer.pending_steps)
        done_before = sorted(set(selected) - pending)
        sections = {s: ({"values"} if s in pending else set()) for s in selected}
        if vector_layout is not None:
            for section in ("alignment", "agreement", "vectors"):
                for step in writer.pending(section):
                    sections[step].add(section)
        elif writer.vector_layout is not None and pending:
            notes.append(
                Note(
                    "vectors-pending",
                    f"{len(pending)} step(s) analysed without singular vectors (--values-only) "
                    "in a store that has them; re-run without --values-only to add them",
                )
            )
        work = [s for s in selected if sections[s]]
        unhashed = {r.step for r in step_records if not r.sha256}
        ranks = {m.name: int(min(m.shape)) for m in plan.matrices}
        sliced = sliced_operands(pair_plan.pairs) if pair_plan is not None else {}
        k = vectors.k if vectors is not None else 0

        # the sides of whole matrices that pairs compare: only those are held per step
        pair_sides: dict[str, set[str]] = {}
        for pair in pair_plan.pairs if pair_plan is not None else ():
            for operand in (pair.first, pair.second):
                if not operand.ops:
                    pair_sides.setdefault(operand.matrix, set()).add(operand.side)

        def run_step(
            ckpt: Checkpoint, index: int, n: int, phase: str, wanted: set[str], hasher
        ) -> dict[str, TopK]:
            """Analyse one checkpoint, write what `wanted` asks; returns its full top-k
            vectors when `wanted` holds "tops" (the reference pass), else {}."""
            hashing = (
                hasher.submit(ckpt.fingerprint)
                if ckpt.step in unhashed and "values" in wanted
                else None
            )
            full: dict[str, TopK] = {}
            held: dict[str, TopK] = {}
            agreement: dict[str, MatrixAgreement] = {}
            kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}

            def consume(name: str, top: TopK) -> None:
                # each matrix's vectors are used as soon as they exist, then dropped
                # (only what pairs compare is held until the step's end)
                if "tops" in wanted:
                    full[name] = top
                if "agreement" in wanted and vector_layout is not None:
                    ref = ref_tops[name] if ref_tops is not None else top
                    agreement[name] = matrix_agreement(
                        top, ref, min(vector_layout.k, ranks[name]), vector_layout.full_matrices
                    )
                if "vectors" in wanted:
                    kept[name] = (top.u.astype(np.float32), top.v.astype(np.float32))
                if "alignment" in wanted and name in pair_sides:
                    held[name] = held_sides(top, pair_sides[name])

            result = _analyze_checkpoint(
                ckpt,
                plan,
                engine,
                infos,
                run_name,
                index,
                n,
                on_progress,
                k=k if wanted - {"values"} else 0,  # "tops": the reference's vectors only
                sliced=sliced if "alignment" in wanted else {},
                consume=consume,
                phase=phase,
            )
            spectra = result.spectra if "values" in wanted else None
            metrics = None
            if spectra is not None:
                metrics = {}
                for matrix, (sigma, method) in spectra.items():
                    methods[method] += 1
                    metrics[matrix] = {k: float(v) for k, v in spectral_metrics(sigma).items()}
            step_vec = None
            if wanted & {"alignment", "agreement", "vectors"} and vector_layout is not None:
                alignment = None
                if "alignment" in wanted and pair_plan is not None:
                    alignment = pair_alignments(
                        pair_plan.pairs, vector_layout, held, result.slices or {}
                    )
                step_vec = StepVectors(
                    alignment=alignment,
                    agreement=agreement if "agreement" in wanted else None,
                    vectors=kept if "vectors" in wanted else None,
                )
            if spectra is not None or step_vec is not None:
                writer.write_step(
                    ckpt.step,
                    spectra,
                    metrics,
                    notes=[n.message for n in result.notes] if spectra is not None else (),
                    sha256=hashing.result().sha256 if hashing is not None else None,
                    vectors=step_vec,
                )
            if spectra is not None:
                notes.extend(result.notes)
                computed.append(ckpt.step)
            if step_vec is not None:
                with_vectors.append(ckpt.step)
            return full

        ref_tops: dict[str, TopK] | None = None
        reference_first = reference is not None and any("agreement" in sections[s] for s in work)
        order = ([reference] if reference_first else []) + [s for s in work if s != reference]
        if not reference_first and plan_step not in order:
            source.release(plan_step)
        source.schedule(order)

        def visit(step: int, index: int, n: int, phase: str, wanted: set[str], hasher):
            """Acquire, analyse and release one step; a remote stream's unreadable
            checkpoint is flagged in the store and skipped."""
            try:
                ckpt = source.acquire(step)
                return run_step(ckpt, index, n, phase, wanted, hasher)
            except (CheckpointError, ViewError, ShapeChangedError) as exc:
                if not source.tolerate_failures:
                    raise
                writer.flag_step(step, f"failed: {str(exc)[:230]}")
                failed.append(step)
                notes.append(Note("failed", f"{source.step_unit} {step}: {exc}; skipped"))
                return None
            finally:
                source.release(step)

        failed: list[int] = []
        # A checkpoint is hashed in a second thread while its SVDs run (hashlib and
        # file reads release the GIL; both threads read the same pages once).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="specdyn-hash") as hasher:
            if reference_first:
                # the reference first: only its top-k vectors are held while the rest streams
                wanted = set(sections.get(reference, set())) | {"tops"}
                ref_tops = visit(reference, 0, len(work), "reference", wanted, hasher)
                if ref_tops is None:
                    raise SpecdynError(
                        f"the agreement's reference ({source.step_unit} {reference}) could "
                        "not be read; choose another --reference"
                    )
                undefined = [n for n, t in ref_tops.items() if t.method in ("nonfinite", "zero")]
                if undefined:
                    notes.append(
                        Note(
                            "reference-undefined",
                            f"at the reference {source.step_unit} {reference}, "
                            f"{_few(undefined)} hold NaN/Inf or only zeros: their agreement is "
                            "NaN at every step; choose another --reference",
                        )
                    )
                work = [s for s in work if s != reference]
            for index, step in enumerate(work):
                visit(step, index, len(work), "analysing", sections[step], hasher)
    notes.extend(engine.notes)
    engine.notes.clear()
    return RunAnalysis(
        name=run_name,
        source_root=source.root,
        store_path=str(store_path),
        step_unit=source.step_unit,
        steps_selected=list(selected),
        steps_computed=sorted(computed),
        steps_already_done=done_before,
        n_matrices=len(plan.matrices),
        skipped=_skip_counts(plan),
        aliases=dict(plan.aliases),
        methods=dict(methods),
        device=engine.device_name,
        seconds=time.perf_counter() - started,
        notes=notes,
        k=None if vector_layout is None else vector_layout.k,
        reference=reference,
        pairs=0 if pair_plan is None else len(pair_plan.pairs),
        pairs_preset="" if pair_plan is None else pair_plan.preset,
        steps_with_vectors=sorted(with_vectors),
        steps_failed=sorted(failed),
    )


def _analyze_checkpoint(
    ckpt: Checkpoint,
    plan: ViewPlan,
    engine: SpectrumEngine,
    first_infos: dict,
    run_name: str,
    step_index: int,
    n_steps: int,
    on_progress: Callable[[Progress], None] | None,
    *,
    k: int = 0,
    sliced: dict[str, list[Operand]] | None = None,
    consume: Callable[[str, TopK], None] | None = None,
    phase: str = "analysing",
) -> _StepResult:
    """Singular values of one checkpoint, reading one tensor at a time; with k ≥ 1 the
    top-k vectors of every matrix (handed to `consume(name, top)` as they are computed)
    and of every pair-operand slice in `sliced` (returned)."""
    by_key: dict[str, list[MatrixView]] = {}
    for view in plan.matrices:
        by_key.setdefault(view.key, []).append(view)
    sliced = sliced or {}
    spectra: dict[str, tuple[np.ndarray, str]] = {}
    slices: dict[tuple, list[TopK]] | None = {} if k else None
    notes: list[Note] = []
    n_matrices = len(plan.matrices)
    with ckpt.open() as reader:
        _check_same_parameters(ckpt, reader, by_key, first_infos, notes)
        group: list[tuple[MatrixView, torch.Tensor]] = []
        group_bytes = 0

        def flush() -> None:
            nonlocal group, group_bytes
            if not group:
                return
            mats = [m for _, m in group]
            if k:
                results = [(t.sigma, t.method, t) for t in engine.top_vectors(mats, k)]
            else:
                results = [(r.sigma, r.method, None) for r in engine.singular_values(mats)]
            for (view, matrix), (sigma, method, top) in zip(group, results, strict=True):
                spectra[view.name] = (sigma, method)
                if top is not None and slices is not None:
                    if consume is not None:
                        consume(view.name, top)
                    for op in sliced.get(view.name, []):
                        slices[operand_key(op)] = engine.top_vectors(op.apply(matrix), k)
                note = _degenerate_note(view, method, ckpt)
                if note is not None:
                    notes.append(note)
            group = []
            group_bytes = 0
            if on_progress is not None:
                on_progress(
                    Progress(
                        run_name, ckpt.step, step_index, n_steps, len(spectra), n_matrices, phase
                    )
                )

        for key, views in by_key.items():
            tensor = reader.get(key)
            for view in views:
                group.append((view, view.extract(tensor)))
            group_bytes += tensor.numel() * tensor.element_size()
            del tensor
            if group_bytes >= _GROUP_BYTES:
                flush()
        flush()
    return _StepResult(spectra, slices, notes)


def _check_same_parameters(
    ckpt: Checkpoint,
    reader,
    by_key: dict[str, list[MatrixView]],
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
    for key, views in by_key.items():
        if key not in available:
            raise ShapeChangedError(
                f"{ckpt.path}: parameter {views[0].param!r} (step {ckpt.step}) is missing, "
                "but the first analysed step has it; analyse the runs separately or "
                "select matching steps with --steps"
            )
        info = reader.info(key)
        if tuple(info.shape) != tuple(views[0].source_shape):
            raise ShapeChangedError(
                f"{ckpt.path}: parameter {views[0].param!r} has shape {tuple(info.shape)} at "
                f"step {ckpt.step} but {tuple(views[0].source_shape)} at the first analysed "
                "step; a run must keep its shapes (exclude it with --exclude)"
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


def _few(names: Sequence[str], limit: int = 3) -> str:
    """The first few names, comma-separated, with how many more."""
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")
