"""Runs side by side (docs/compare.md: branch agreement, loss barrier).

    result = compare(["run-a", "run-b"])                  # two runs: agreement at every
    result = compare(["wd0", "wd0.1", "wd1"])              #   shared step + metric differences
    result = compare(branch_folders, by="split")          # LMC: agreement vs split step
    with open_comparison(result.path) as cmp:             # the comparison store
        cmp.difference("normalized_effective_rank")      # [matrices, shared steps]

`compare` takes run names, store paths or checkpoint folders (analysed on the way into
the workspace, a folder of several runs standing for its runs: ``_inputs``), and writes
one comparison store
(``<home>/comparisons/<name>.h5``, layout in ``docs/compare.md``) that
``specdyn plot`` draws:

- every stored metric of every run on one step axis ([runs, matrices, steps]),
  and the alignment/agreement scores when the stores hold them;
- **branch agreement** (SVA between the same matrix in two runs,
  S_ii = |⟨u_i, u'_i⟩|·|⟨v_i, v'_i⟩|): for two runs at every shared step and at
  their endpoints; for N runs each against the first at the endpoints; with
  ``by="split"`` between every two branches of one split step at their
  endpoints, summarised against the split step (paper Fig. 8, 14), branches of
  one trunk apart from branches of different trunks;
- optionally the loss barrier (Eq. 6) along the straight line between endpoints,
  from the user's evaluator.

Singular vectors come from the stores when they keep them at that step (the
endpoints by default), else from the checkpoints the stores record; an endpoint
with neither is an error that says which option keeps them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import SpectrumEngine
from ..errors import CompareError, SpecdynError, StoreError, command_ref, option_ref
from ..matrices import plan_checkpoint, read_matrices
from ..sources import open_checkpoint
from ..steps import select_steps
from ..store import Comparison, Run, comparison_path, open_comparison, write_comparison
from ..types import Note
from ..vectors import agreement_diagonal
from ._barrier import BarrierOptions, BarrierResult, barrier_between
from ._inputs import InputPlan, analyse_folders, plan_inputs, split_step

__all__ = [
    "compare",
    "CompareResult",
    "PairAgreement",
    "SplitSummary",
    "BarrierOptions",
    "BarrierResult",
    "Comparison",
    "open_comparison",
    "COMPARE_MODES",
    "chance_agreement",
]

COMPARE_MODES = ("runs", "split")


@dataclass(frozen=True)
class RunEntry:
    """One compared run: its `label` (unique), store path, split step (None outside
    ``by="split"``), trunk key (runs with equal keys share a trunk) and last done step."""

    label: str
    store: Path
    split: int | None
    trunk: str | None
    last_step: int


@dataclass
class PairAgreement:
    """Branch agreement between runs `a` and `b` (indices into `CompareResult.runs`).

    steps_a, steps_b: int64 [S] the step compared in each run, row by row (shared
    steps ascending, then the endpoints when they are not a shared step: the last
    row is always the endpoints). diagonal: float32 [S, M, k] the S_ii for the common
    matrices, NaN past a matrix's min(k, R) or where it could not be computed.
    score: float64 [S, M] the mean of the first `score_top` entries. source: per row,
    where each side's vectors came from ("vectors" or "checkpoint"), e.g.
    "vectors/checkpoint". same_trunk: True/False in split mode, else None.
    """

    a: int
    b: int
    steps_a: np.ndarray
    steps_b: np.ndarray
    diagonal: np.ndarray
    score: np.ndarray
    source: list[str]
    same_trunk: bool | None = None


@dataclass
class SplitSummary:
    """Branch agreement at the endpoints against the split step (mode "split").

    steps: int64 [G] the split steps, ascending. For branches of one trunk
    (`same_*`) and of different trunks (`other_*`): score float64 [G, M] and
    diagonal float32 [G, M, k], means over the pairs of that split step (NaN when
    there is none), and pairs int64 [G] how many pairs were averaged. barrier:
    float64 [G] mean barrier of the same-trunk pairs (NaN without ``--barrier``).
    """

    steps: np.ndarray
    same_score: np.ndarray
    same_diagonal: np.ndarray
    same_pairs: np.ndarray
    other_score: np.ndarray
    other_diagonal: np.ndarray
    other_pairs: np.ndarray
    barrier: np.ndarray


@dataclass
class CompareResult:
    """What `compare` measured and where it wrote it.

    path: the comparison store. mode: "runs" or "split". runs: the `RunEntry`s in
    input order. matrices: the matrices every run has (forward order of the first
    run); only_in: run label → its matrices missing from some other run.
    metrics: metric name → float64 [R, M, T] on the union step axis `steps`
    (NaN where a run has no such step). pairs: the `PairAgreement`s computed.
    split: the `SplitSummary` (mode "split"), else None. barriers: one
    `BarrierResult` per pair evaluated (``barrier=``). k, score_top: the diagonal
    length and score length used. analysed: checkpoint folders analysed on the way.
    notes: warned skips and observations.
    """

    path: Path
    mode: str
    runs: list[RunEntry]
    matrices: list[str]
    only_in: dict[str, list[str]]
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    pairs: list[PairAgreement]
    split: SplitSummary | None
    barriers: list[BarrierResult]
    k: int
    score_top: int
    analysed: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def final(self, metric: str) -> np.ndarray:
        """float64 [R, M]: each run's value of `metric` at its last done step."""
        data = self.metrics[metric]
        out = np.full(data.shape[:2], np.nan)
        for r, entry in enumerate(self.runs):
            col = int(np.searchsorted(self.steps, entry.last_step))
            out[r] = data[r, :, col]
        return out


def compare(
    runs: Sequence[str | os.PathLike[str]],
    *,
    by: str = "runs",
    split: Mapping[str, int] | None = None,
    home: str | os.PathLike[str] | None = None,
    name: str | None = None,
    steps: str | None = None,
    k: int = 100,
    score_top: int = 10,
    barrier: BarrierOptions | None = None,
    device: str = "auto",
    analyze_missing: bool = True,
    overwrite: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_analyze: Callable | None = None,
) -> CompareResult:
    """Compare runs side by side and write a comparison store.

    Args:
        runs: run names (stores in the workspace), store paths, or checkpoint
            folders, analysed on the way (default options; a re-run adds only
            what is missing). A folder holding several runs (a trunk with its
            branches, a sweep) stands for all of them; in split mode its runs
            with no split step (its trunks) are left out with a note. A folder
            run's store is named by its path below the common parent of the
            folders given, as `analyze` names the runs of a folder of runs; a
            name whose store holds another folder's run is not reused: parent
            folder names go in front (``trunk-b-branch-1``). A name that is
            both a run of the workspace and a folder here is the folder unless
            that run was analysed from it. At least two runs in all.
        by: "runs" (two runs: agreement at every shared step; N runs: each
            against the first at the endpoints) or "split" (branches of a
            trunk: every two branches with the same split step).
        split: run label or input string → split step; otherwise (mode
            "split") the step is read from the name (``split500``,
            ``split-500``, ``branch-500``).
        home: the workspace (``--home``).
        name: the comparison's name (default: the run labels joined by
            ``-vs-``, shortened; for one folder of runs its name, with
            ``-split`` in split mode); the store is
            ``<home>/comparisons/<name>.h5``. A store of that name that
            compares other runs is replaced only with `overwrite`.
        steps: in two-run mode, which shared steps to compare besides the
            endpoints (docs/runs.md#steps-grammar on the shared steps; "none" for the
            endpoints only; default every shared step the stores or
            checkpoints allow).
        k: diagonal length (capped by the vectors the stores keep and by R).
        score_top: entries averaged into a score.
        barrier: `BarrierOptions` (the user's loss function and the number of
            interpolation points) to measure the barrier between endpoints of
            every pair; None to skip.
        device: engine device for vectors computed from checkpoints.
        analyze_missing: analyse checkpoint folders (else a folder run must
            have its store already).
        overwrite: rebuild the stores of folder runs that were made with other
            options (`analyze`'s `overwrite`), and replace a comparison store of
            this name that compares other runs.
        on_progress: called as (stage, done, total) while vectors are gathered.
        on_analyze: `specdyn.analyze`'s progress callback, for the folders analysed.

    Returns:
        `CompareResult` (also written to `CompareResult.path`).

    Raises:
        CompareError: fewer than two runs, no matrix in common, an endpoint
            with neither kept vectors nor its checkpoint, a branch without a
            split step, a failing evaluator, a folder run's store made with
            other options or a comparison of other runs under this name
            (without `overwrite`). RunNotFoundError: an input is neither a
            run, a store nor a folder. DiscoveryError: a folder holds no
            checkpoint.
    """
    if by not in COMPARE_MODES:
        raise CompareError(
            f"{option_ref('by')} {by!r}: use one of {', '.join(COMPARE_MODES)}", option="by"
        )
    if not runs:
        raise CompareError("compare needs at least two runs (names, store paths or folders)")
    if k < 1 or score_top < 1:
        raise CompareError(
            f"{option_ref('k', '--vectors')} and {option_ref('score_top')} must be at least 1",
            option="k" if k < 1 else "score_top",
        )
    notes: list[Note] = []
    plan = plan_inputs(runs, home, by=by, split=split or {}, overwrite=overwrite, notes=notes)
    labels = _unique_labels(plan.names, plan.stores)
    cmp_name = name or plan.default_name or _default_name(labels)
    path = comparison_path(cmp_name, home)
    _check_replace(path, plan.stores, overwrite)
    analysed = analyse_folders(
        plan, home, overwrite=overwrite, analyze_missing=analyze_missing, notes=notes,
        on_analyze=on_analyze,
    )  # fmt: skip
    _same_store_notes(plan, notes)
    stores = plan.stores
    opened = [Run(p) for p in stores]
    try:
        return _compare_open(
            opened, labels, plan.given, plan.keys, by=by, split=split or {}, path=path,
            name=cmp_name, steps=steps, k=k, score_top=score_top, barrier=barrier,
            device=device, on_progress=on_progress, analysed=analysed, notes=notes,
        )  # fmt: skip
    finally:
        for run in opened:
            run.close()


# ------------------------------------------------------------------ inputs


def _same_store_notes(plan: InputPlan, notes: list[Note]) -> None:
    """A note for each run given twice (the same store)."""
    seen: dict[Path, str] = {}
    for store, given in zip(plan.stores, plan.given, strict=True):
        key = Path(store).resolve()
        if key in seen:
            notes.append(
                Note(
                    "same-run", f"{given} and {seen[key]} are the same store ({store})", str(store)
                )
            )
        seen[key] = given


def _check_replace(path: Path, stores: list[Path], overwrite: bool) -> None:
    """A comparison store of this name that compares other runs is replaced only with
    `overwrite` (a re-run of the same comparison replaces it)."""
    if overwrite or not path.exists():
        return
    wanted = [str(Path(p).absolute()) for p in stores]
    try:
        with open_comparison(path) as old:
            if list(old.stores) == wanted:
                return
            shown = ", ".join(old.labels[:4]) + (", ..." if len(old.labels) > 4 else "")
            what = f"compares other runs ({shown})"
    except StoreError as exc:
        what = f"cannot be read ({exc.message})"
    raise CompareError(
        f"comparison store {path} {what}; pass {option_ref('name')} to keep both or "
        f"{option_ref('overwrite=True', '--overwrite')} to replace it",
        file=path,
        option="name",
    )


def _unique_labels(names: list[str], paths: list[Path]) -> list[str]:
    """Names made unique: a store given again is numbered (``a``, ``a-2``); stores of one
    name in different folders get their parent folders' names in front."""
    labels = list(names)
    seen: dict[tuple[str, Path], int] = {}
    for i, (name, path) in enumerate(zip(names, paths, strict=True)):
        key = (name, Path(path).expanduser().resolve())
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            labels[i] = f"{name}-{seen[key]}"
    base = list(labels)
    for depth in range(1, 6):
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        if all(c == 1 for c in counts.values()):
            return labels
        for i, label in enumerate(labels):
            if counts[label] > 1:
                parents = Path(paths[i]).expanduser().absolute().parts[1:-1]
                prefix = "-".join(parents[-depth:])
                labels[i] = f"{prefix}-{base[i]}" if prefix else f"{base[i]}-{i}"
    return [f"{label}-{i}" for i, label in enumerate(labels)]


# ------------------------------------------------------------------ the comparison


def _compare_open(
    opened: list[Run], labels: list[str], inputs: list[str], keys: list[tuple[str, ...]], *,
    by: str, split: Mapping[str, int], path: Path, name: str, steps: str | None, k: int,
    score_top: int, barrier: BarrierOptions | None, device: str,
    on_progress, analysed: list[str], notes: list[Note],
) -> CompareResult:  # fmt: skip
    """`compare` once the stores are open."""
    for run in opened:
        if len(run.steps) == 0:
            raise CompareError(
                f"{run.path}: no analysed steps yet; run {command_ref('analyze')} first",
                file=run.path,
            )
    units = {run.step_unit for run in opened}
    if len(units) > 1:
        which = ", ".join(
            f"{label} ({run.step_unit})" for label, run in zip(labels, opened, strict=True)
        )
        raise CompareError(
            f"the runs count training in different units ({which}); one step axis needs one "
            "unit: re-analyse the epoch-counted runs from checkpoints that record their step"
        )
    matrices, only_in = _common_matrices(opened, labels, notes)
    entries = _entries(opened, labels, inputs, keys, by, split)
    union = np.unique(np.concatenate([run.steps for run in opened]))
    metrics = _side_by_side(opened, matrices, union)
    k = _usable_k(opened, k, notes)
    pair_plan = _pair_plan(entries, by)
    gather = _VectorSource(opened, matrices, k, device, notes)
    pairs: list[PairAgreement] = []
    for n, (a, b, same) in enumerate(pair_plan):
        if on_progress:
            on_progress("agreement", n, len(pair_plan))
        rows = _rows(opened[a], opened[b], steps if (by == "runs" and len(opened) == 2) else "none")
        pairs.append(_pair_agreement(gather, a, b, rows, k, score_top, same, notes))
    if on_progress:
        on_progress("agreement", len(pair_plan), len(pair_plan))
    barriers = []
    if barrier is not None:
        for n, pair in enumerate(pairs):
            if on_progress:
                on_progress("barrier", n, len(pairs))
            barriers.append(
                barrier_between(
                    _endpoint_source(opened[pair.a]),
                    _endpoint_source(opened[pair.b]),
                    barrier,
                    pair=(pair.a, pair.b),
                )  # fmt: skip
            )
    summary = _split_summary(entries, pairs, barriers, len(matrices), k) if by == "split" else None
    result = CompareResult(
        path=path, mode=by, runs=entries, matrices=matrices, only_in=only_in, steps=union,
        metrics=metrics, pairs=pairs, split=summary, barriers=barriers, k=k,
        score_top=score_top, analysed=analysed, notes=notes,
    )  # fmt: skip
    write_comparison(path, result, opened, name=name)
    return result


def _common_matrices(
    opened: list[Run], labels: list[str], notes: list[Note]
) -> tuple[list[str], dict[str, list[str]]]:
    """Matrices every run has with the same shape (first run's order) and the rest per run."""
    shapes = [{m: tuple(run.matrix_info(m)["shape"]) for m in run.matrices} for run in opened]
    common = [m for m in opened[0].matrices if all(m in s and s[m] == shapes[0][m] for s in shapes)]
    if not common:
        raise CompareError(
            f"{labels[0]} and {', '.join(labels[1:])} have no matrix in common "
            "(same canonical name and shape); are these runs of one model?"
        )
    only_in = {}
    common_set = set(common)
    for label, run in zip(labels, opened, strict=True):
        rest = [m for m in run.matrices if m not in common_set]
        if rest:
            only_in[label] = rest
            reshaped = [m for m in rest if all(m in t for t in shapes)]
            detail = f" ({len(reshaped)} with other shapes elsewhere)" if reshaped else ""
            notes.append(
                Note(
                    "not-common",
                    f"{label}: {len(rest)} matrices not in every run{detail}, left out "
                    f"(e.g. {rest[0]})",
                    str(run.path),
                )
            )
    return common, only_in


def _entries(
    opened: list[Run], labels: list[str], inputs: list[str], keys: list[tuple[str, ...]],
    by: str, split: Mapping[str, int],
) -> list[RunEntry]:  # fmt: skip
    """`RunEntry` per run; split steps and trunk keys in split mode."""
    entries = []
    missing = []
    for run, label, given, more in zip(opened, labels, inputs, keys, strict=True):
        step = None
        trunk = None
        if by == "split":
            step = split_step(label, given, split, more)
            if step is None:
                missing.append(label)
            else:
                trunk = _trunk_key(run, step)
        entries.append(RunEntry(label, run.path, step, trunk, int(run.steps[-1])))
    if missing:
        raise CompareError(
            f"no split step for {', '.join(missing[:5])}: put it in the name (split500, "
            f"branch-500) or pass {option_ref('split={NAME: STEP}', '--split NAME=STEP')}",
            option="split",
        )
    return entries


def _trunk_key(run: Run, split_step: int) -> str:
    """Runs from one trunk share their spectra at the split step bit for bit; without
    that step, the parent folder of the run's checkpoints stands for the trunk."""
    if split_step in set(run.steps.tolist()):
        col = int(np.flatnonzero(run.steps == split_step)[0])
        digest = np.concatenate([run.sigma(m)[col].ravel() for m in run.matrices])
        return "sigma:" + hashlib.sha256(digest.tobytes()).hexdigest()[:16]
    root = run.info().get("source_root") or str(run.path)
    return "folder:" + str(Path(root).parent)


def _side_by_side(opened: list[Run], matrices: list[str], union: np.ndarray) -> dict:
    """Every metric the runs share, plus their scores: [R, M, T] on the union step axis."""
    names = [n for n in opened[0].metric_names if all(n in r.metric_names for r in opened)]
    out: dict[str, np.ndarray] = {}
    for metric in names:
        data = np.full((len(opened), len(matrices), len(union)), np.nan)
        for r, run in enumerate(opened):
            cols = np.searchsorted(union, run.steps)
            values = run.metric(metric)
            rows = [run.matrices.index(m) for m in matrices]
            data[r][:, cols] = values[:, rows].T  # [T, M] read, [M, T] stored here
        out[metric] = data
    if all(r.vectors_config is not None for r in opened):
        data = np.full((len(opened), len(matrices), len(union)), np.nan)
        for r, run in enumerate(opened):
            cols = np.searchsorted(union, run.steps)
            rows = [run.matrices.index(m) for m in matrices]
            data[r][:, cols] = run.agreement_score()[:, rows].T
        out["agreement_score"] = data
    return out


def _usable_k(opened: list[Run], k: int, notes: list[Note]) -> int:
    """`k`, capped by the vectors every store keeps (when they keep any)."""
    kept = [r.vectors_config["k"] for r in opened if r.vectors_config is not None]
    if kept and min(kept) < k:
        notes.append(
            Note(
                "k", f"the stores keep {min(kept)} vectors per matrix: diagonals use k={min(kept)}"
            )
        )
        return int(min(kept))
    return k


def _pair_plan(entries: list[RunEntry], by: str) -> list[tuple[int, int, bool | None]]:
    """(a, b, same trunk) for every pair to compare."""
    if by == "split":
        plan = []
        for a, b in itertools.combinations(range(len(entries)), 2):
            if entries[a].split == entries[b].split:
                plan.append((a, b, entries[a].trunk == entries[b].trunk))
        if not plan:
            raise CompareError(
                "no two branches share a split step; give at least two branches per split step"
            )
        return plan
    return [(0, b, None) for b in range(1, len(entries))]


def _rows(run_a: Run, run_b: Run, steps: str | None) -> list[tuple[int, int]]:
    """(step in a, step in b) rows: chosen shared steps, then the endpoints."""
    shared = sorted(set(run_a.steps.tolist()) & set(run_b.steps.tolist()))
    if steps == "none" or not shared:
        chosen = []
    else:
        chosen = select_steps(shared, steps)
    ends = (int(run_a.steps[-1]), int(run_b.steps[-1]))
    rows = [(s, s) for s in chosen if (s, s) != ends]
    rows.append(ends)
    return rows


def _endpoint_source(run: Run) -> Path:
    """The checkpoint path of a run's last done step."""
    last = int(run.steps[-1])
    for rec in run.step_sources:
        if rec["step"] == last:
            return Path(rec["source"])
    raise CompareError(f"{run.path}: no source recorded for step {last}")


def _default_name(labels: list[str]) -> str:
    """Run labels joined by -vs-, shortened to a file-name length."""
    text = "-vs-".join(labels)
    if len(text) > 80:
        text = f"{labels[0]}-and-{len(labels) - 1}-more"
    return re.sub(r"[^\w.+-]", "_", text)[:100]


# ------------------------------------------------------------------ vectors


class _VectorSource:
    """Top-k vectors of the common matrices of one run at one step: kept ones from the
    store, else computed from the recorded checkpoint (one step held at a time)."""

    def __init__(self, opened, matrices, k, device, notes):
        self.opened = opened
        self.matrices = matrices
        self.k = k
        self.notes = notes
        self.engine: SpectrumEngine | None = None
        self.device = device
        self._cache: dict[tuple[int, int], tuple[str, list] | None] = {}

    def get(self, r: int, step: int, *, required: bool) -> tuple[str, list] | None:
        """("vectors"|"checkpoint", [(u, v) per matrix]) or None when unavailable."""
        key = (r, step)
        if key not in self._cache:
            if len(self._cache) > 4:  # hold a few steps, not a trajectory
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._load(r, step, required)
        return self._cache[key]

    def _load(self, r: int, step: int, required: bool):
        run = self.opened[r]
        if run.vectors_config is not None and step in set(run.section_steps("vectors").tolist()):
            return "vectors", [run.vectors(m, step) for m in self.matrices]
        source = self._checkpoint_path(run, step)
        problem = None
        remote = [r["source"] for r in run.step_sources if r["step"] == step]
        if source is None and remote and remote[0].startswith("hf://"):
            problem = f"its checkpoint was a hub revision ({remote[0]}), deleted after analysis"
        elif source is None:
            problem = "no checkpoint recorded"
        elif not source[0].exists():
            problem = f"its checkpoint {source[0]} is gone"
        elif _changed(source):
            problem = f"its checkpoint {source[0]} changed since it was analysed"
        if problem is None:
            try:
                return "checkpoint", self._from_checkpoint(run, source[0])
            except SpecdynError as exc:
                if required:  # the inner message keeps its option names for the CLI
                    raise CompareError(
                        _no_vectors(run, step, f"its checkpoint cannot be read ({exc.message})"),
                        file=source[0],
                        step=step,
                    ) from None
                problem = f"its checkpoint cannot be read ({exc})"
        if required:
            raise CompareError(_no_vectors(run, step, problem), file=run.path, step=step)
        # a note is stored in the comparison file as written: its text stays as it was
        self.notes.append(
            Note("no-vectors", _no_vectors(run, step, problem, "--save-vectors"), str(run.path))
        )
        return None

    @staticmethod
    def _checkpoint_path(run: Run, step: int):
        """(path, size, mtime) of the step's recorded checkpoint, or None."""
        for rec in run.step_sources:
            if rec["step"] == step and rec["source"] and not rec["source"].startswith("hf://"):
                return Path(rec["source"]), rec["size"], rec["mtime"]
        return None

    def _from_checkpoint(self, run: Run, path: Path) -> list:
        """The common matrices' top-k vectors computed from one checkpoint."""
        if self.engine is None:
            self.engine = SpectrumEngine(device=self.device)
        ckpt = open_checkpoint(path)
        with ckpt.open() as reader:
            planned = plan_checkpoint(ckpt, transposed=run.options.get("transposed"), reader=reader)
            views = {v.name: v for v in planned.plan.matrices}
            missing = [m for m in self.matrices if m not in views]
            if missing:
                raise CompareError(f"{path}: matrices {missing[:3]} not found in the checkpoint")
            # one parameter read at a time; its views' vectors computed before the next
            found: dict[str, tuple] = {}
            for group in read_matrices(reader, [views[m] for m in self.matrices]):
                tops = self.engine.top_vectors(group.matrices, self.k)
                for view, top in zip(group.views, tops, strict=True):
                    found[view.name] = (top.u, top.v)
        return [found[m] for m in self.matrices]


def _no_vectors(
    run: Run,
    step: int,
    problem: str,
    save_vectors: str = option_ref("vectors.save_vectors", "--save-vectors"),
) -> str:
    """Why `step` of `run` has no vectors to compare, and how to keep them; `save_vectors`
    names that option (an error through `option_ref`, a stored note as the flag)."""
    return (
        f"{run.name}: step {step} has no kept singular vectors and {problem}; re-analyse "
        f"with {save_vectors} ends (the default) or all, or keep the checkpoints where the "
        "store says they are"
    )


def _changed(source: tuple[Path, int, float]) -> bool:
    """Whether a recorded checkpoint's size or mtime differs from what the store saw."""
    path, size, mtime = source
    try:
        if path.is_dir():
            return False  # folder checkpoints: the fingerprint covers several files
        stat = path.stat()
    except OSError:
        return True
    return stat.st_size != size or abs(stat.st_mtime - mtime) > 1e-3


def _pair_agreement(
    gather: _VectorSource, a: int, b: int, rows: list[tuple[int, int]], k: int,
    score_top: int, same: bool | None, notes: list[Note],
) -> PairAgreement:  # fmt: skip
    """The agreement diagonals of one pair of runs, row by row."""
    kept_rows, diagonals, sources = [], [], []
    for i, (sa, sb) in enumerate(rows):
        required = i == len(rows) - 1
        va = gather.get(a, sa, required=required)
        vb = gather.get(b, sb, required=required) if va is not None else None
        if va is None or vb is None:
            continue
        diag = np.full((len(gather.matrices), k), np.nan, dtype=np.float32)
        for j, ((ua, vva), (ub, vvb)) in enumerate(zip(va[1], vb[1], strict=True)):
            d = agreement_diagonal(ua, vva, ub, vvb, k)
            diag[j, : d.size] = d
        kept_rows.append((sa, sb))
        diagonals.append(diag)
        sources.append(f"{va[0]}/{vb[0]}")
    diagonal = np.stack(diagonals)
    with np.errstate(invalid="ignore"):
        head = diagonal[:, :, :score_top].astype(np.float64)
        counts = np.sum(~np.isnan(head), axis=2)
        score = np.where(counts > 0, np.nansum(head, axis=2) / np.maximum(counts, 1), np.nan)
    return PairAgreement(
        a=a, b=b,
        steps_a=np.array([r[0] for r in kept_rows], dtype=np.int64),
        steps_b=np.array([r[1] for r in kept_rows], dtype=np.int64),
        diagonal=diagonal, score=score, source=sources, same_trunk=same,
    )  # fmt: skip


def _split_summary(
    entries: list[RunEntry], pairs: list[PairAgreement], barriers: list[BarrierResult],
    n_matrices: int, k: int,
) -> SplitSummary:  # fmt: skip
    """Endpoint agreement averaged per split step, same trunk and other trunks apart."""
    splits = sorted({entries[p.a].split for p in pairs})
    g = len(splits)
    out = {}
    for which, want in (("same", True), ("other", False)):
        score = np.full((g, n_matrices), np.nan)
        diag = np.full((g, n_matrices, k), np.nan, dtype=np.float32)
        count = np.zeros(g, dtype=np.int64)
        for i, s in enumerate(splits):
            group = [p for p in pairs if entries[p.a].split == s and p.same_trunk is want]
            count[i] = len(group)
            if group:
                score[i] = np.mean([p.score[-1] for p in group], axis=0)
                diag[i] = np.mean([p.diagonal[-1] for p in group], axis=0)
        out[which] = (score, diag, count)
    bar = np.full(g, np.nan)
    by_pair = {b.pair: b.barrier for b in barriers}
    for i, s in enumerate(splits):
        values = [
            by_pair[(p.a, p.b)]
            for p in pairs
            if entries[p.a].split == s and p.same_trunk and (p.a, p.b) in by_pair
        ]
        if values:
            bar[i] = float(np.mean(values))
    return SplitSummary(
        steps=np.array(splits, dtype=np.int64),
        same_score=out["same"][0], same_diagonal=out["same"][1], same_pairs=out["same"][2],
        other_score=out["other"][0], other_diagonal=out["other"][1],
        other_pairs=out["other"][2], barrier=bar,
    )  # fmt: skip


def chance_agreement(m: int, n: int) -> float:
    """Expected S_ii of two independent uniformly random unit-vector pairs in R^m × R^n:
    E|⟨a, b⟩| ≈ sqrt(2/(π·m)) for each side, hence ≈ 2/(π·sqrt(m·n))."""
    return 2.0 / (math.pi * math.sqrt(m * n))
