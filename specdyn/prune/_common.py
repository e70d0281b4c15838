"""What SVD pruning and magnitude masks share: the result records, which views of a
checkpoint are touched, writing a view back, and input/output checks."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine import SpectrumEngine
from ..errors import PruneError, option_ref
from ..matrices import plan_checkpoint
from ..naming import canonicalize, forward_sort
from ..sources import Checkpoint, CheckpointOutput, discover, open_checkpoint
from ..steps import select_steps
from ..store import resolve_home
from ..types import Note
from ..vectors import agreement_diagonal
from ..views import MatrixView, ViewPlan, compile_patterns

__all__ = [
    "view_indices",
    "singular_vector_agreement",
    "Untouched",
    "PrunedMatrix",
    "PrunedCheckpoint",
    "SvdPruneResult",
    "MaskedParameter",
    "MaskedMatrix",
    "MagnitudePruneResult",
]

# How a message names the output path: out (Python) or --out.
_OUT = option_ref("out")


def view_indices(view: MatrixView) -> torch.Tensor:
    """Flat (row-major) indices into the parameter of every element of a view.

    The view recipes only select and permute elements, so applying the same recipe to
    ``arange(numel).reshape(source_shape)`` gives, for each entry (i, j) of the (out, in)
    matrix, where it lives in the flattened parameter. Returns int64 [out, in]; writing a
    new matrix back is ``flat[idx.reshape(-1)] = matrix.reshape(-1)``.
    """
    numel = math.prod(view.source_shape)
    return view.extract(torch.arange(numel, dtype=torch.int64).reshape(view.source_shape))


def _write_view(flat: torch.Tensor, view: MatrixView, matrix: torch.Tensor) -> None:
    """Scatter `matrix` into the flattened parameter `flat` at the view's positions."""
    if not view.ops:  # the view is the parameter itself
        flat.copy_(matrix.reshape(-1))
        return
    flat[view_indices(view).reshape(-1)] = matrix.reshape(-1).to(flat.dtype)


def singular_vector_agreement(
    w: torch.Tensor,
    w_ref: torch.Tensor,
    k: int = 100,
    *,
    engine: SpectrumEngine | None = None,
) -> np.ndarray:
    """The SVA diagonal (docs/metrics.md#agreement, Eq. 5) of `w` against the reference `w_ref`.

    S_ii = |⟨u_i, u_i^ref⟩|·|⟨v_i, v_i^ref⟩| for i ≤ min(k, R), from the top-k singular
    vectors of both (``SpectrumEngine.top_vectors``, float64). w, w_ref: 2-D tensors of one
    shape (m, n). Returns float64 [min(k, R)]; NaN entries when either matrix is non-finite
    or zero. A matrix against itself gives 1 wherever its singular values are distinct.
    """
    engine = engine or SpectrumEngine(device="cpu")
    top, ref = engine.top_vectors([w, w_ref], k)
    return agreement_diagonal(top.u, top.v, ref.u, ref.v, k)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Untouched:
    """A parameter (or a view of it) left as it is, and why.

    name: canonical matrix or parameter name; key: the raw checkpoint key; reason: "final
    layer", "kept by --keep", "embedding (not masked)", a view-plan skip reason such as
    "1-D parameter (bias/norm)", "non-finite weights", …
    """

    name: str
    key: str
    reason: str


@dataclass
class PrunedMatrix:
    """One pruned matrix view.

    name, param, kind: as in `MatrixView`; shape: (out, in); rank: R = min(out, in);
    kept: singular values kept (at the last pruned checkpoint; the same everywhere except
    for ``energy:F``); kept_range: (first, last) kept σ index, 1-based inclusive, or None
    when nothing is kept; energy: fraction of Σσ² kept, last checkpoint (NaN if zero).
    """

    name: str
    param: str
    kind: str
    shape: tuple[int, int]
    rank: int
    kept: int
    kept_range: tuple[int, int] | None
    energy: float


@dataclass
class PrunedCheckpoint:
    """One checkpoint written: `source` and `output` paths, its `step` (None if unknown),
    singular values kept per matrix (`kept`) and the fraction of Σσ² kept (`energy`)."""

    source: str
    output: str
    step: int | None
    kept: dict[str, int]
    energy: dict[str, float]


@dataclass
class SvdPruneResult:
    """What `prune_svd` did.

    source: the input path; out: the output file (one checkpoint file in) or folder;
    mode: the mode's canonical text; checkpoints: one entry per checkpoint written, in
    step order; matrices: the pruned views (last checkpoint); untouched: what was left as
    it is and why; notes: warnings (non-finite matrices, dropped entries, duplicates, …).
    """

    source: str
    out: str
    mode: str
    checkpoints: list[PrunedCheckpoint]
    matrices: list[PrunedMatrix]
    untouched: list[Untouched]
    notes: list[Note] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly dict (NaN → None)."""
        return _jsonable(self)


@dataclass
class MaskedParameter:
    """One masked parameter: `key` (raw) and `param` (canonical); `size`: weights the mask
    covers; `kept`: weights kept (equal for the magnitude and the random mask);
    `kept_fraction`: kept / size (1 − sparsity)."""

    key: str
    param: str
    size: int
    kept: int
    kept_fraction: float


@dataclass
class MaskedMatrix:
    """One matrix view of a masked parameter.

    name, param, kind, shape: as in `MatrixView`; kept_fraction: fraction of this view's
    weights the magnitude mask keeps; scores: mask name ("magnitude", "random") → SVA score
    (mean of the first `score_top` diagonal entries; NaN for a non-finite or emptied matrix).
    """

    name: str
    param: str
    kind: str
    shape: tuple[int, int]
    kept_fraction: float
    scores: dict[str, float]


@dataclass
class MagnitudePruneResult:
    """What `prune_magnitude` did.

    source: the input; checkpoint: the checkpoint the masks come from, `step` its step;
    fraction, control, seed, k, score_top: the options; out: the output folder; results:
    the ``prune.h5`` path; masks: mask name → masks file; checkpoints: mask name → masked
    checkpoint; kept / total: weights kept / covered over all masked parameters;
    parameters, matrices: per parameter and per view; diagonals: mask name → float32
    [matrices, k] SVA diagonals, NaN-padded; untouched; notes.
    """

    source: str
    checkpoint: str
    step: int | None
    fraction: float
    control: str | None
    seed: int
    k: int
    score_top: int
    out: str
    results: str
    masks: dict[str, str]
    checkpoints: dict[str, str]
    kept: int
    total: int
    parameters: list[MaskedParameter]
    matrices: list[MaskedMatrix]
    diagonals: dict[str, np.ndarray]
    untouched: list[Untouched]
    notes: list[Note] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly dict (arrays as lists, NaN → None)."""
        return _jsonable(self)


# ----------------------------------------------------------------------------- layout


@dataclass
class _Layout:
    """A checkpoint's views and which of them are modified.

    units: raw key → the views written back, keys in forward order; views_of: raw key →
    all its views; alias_of: raw alias key → raw key of the tensor it is tied to.
    """

    plan: ViewPlan
    param_of: dict[str, str]
    units: dict[str, list[MatrixView]]
    views_of: dict[str, list[MatrixView]]
    alias_of: dict[str, str]
    untouched: list[Untouched]


def _compile_keep(keep: Sequence[str] | str) -> list[re.Pattern]:
    """Compile the `keep` regexes (a one-line error naming the option)."""
    return compile_patterns("keep", keep, PruneError)


def _layout(ckpt: Checkpoint, keep: list[re.Pattern], kinds: Iterable[str] | None) -> _Layout:
    """Plan the views of `ckpt` and pick what is pruned (`kinds`: view kinds allowed, or all)."""
    planned = plan_checkpoint(ckpt)
    plan = planned.plan
    if not plan.matrices:
        raise PruneError(f"{ckpt.path}: no weight matrix to prune")
    canon = canonicalize(planned.keys, config=ckpt.config)
    raw_of = {c: k for k, c in canon.items()}
    # unsupported tensors (never read) are among the plan's skipped entries
    untouched = [Untouched(s.matrix or s.param, s.key, s.reason) for s in plan.skipped]
    views_by_param: dict[str, list[MatrixView]] = {}
    for view in plan.matrices:
        views_by_param.setdefault(view.param, []).append(view)
    source_order = [canon[k] for k in planned.keys]
    last = forward_sort([*views_by_param, *plan.aliases], source_order)[-1]
    final = plan.aliases.get(last, last)
    allowed = set(kinds) if kinds is not None else None

    def kept_by_user(*names: str) -> bool:
        return any(r.search(n) for r in keep for n in names)

    units: dict[str, list[MatrixView]] = {}
    for param, views in views_by_param.items():
        key = views[0].key
        if param == final:
            tied = [a for a, t in plan.aliases.items() if t == param]
            why = "final layer" + (f" (tied to {', '.join(tied)})" if last != final else "")
            untouched.append(Untouched(param, key, why))
            continue
        whole = [v for v in views if v.part is None]
        if whole:
            if kept_by_user(param, *(v.name for v in views)):
                untouched.append(Untouched(param, key, "kept by --keep"))
                continue
            chosen = whole[:1]
        else:
            chosen = []
            for view in views:
                if kept_by_user(param, view.name):
                    untouched.append(Untouched(view.name, key, "kept by --keep"))
                else:
                    chosen.append(view)
        if allowed is not None:
            for view in [v for v in chosen if v.kind not in allowed]:
                untouched.append(Untouched(view.name, key, f"{view.kind} (not masked)"))
            chosen = [v for v in chosen if v.kind in allowed]
        if chosen:
            units[key] = chosen
    alias_of = {raw_of[a]: raw_of[t] for a, t in plan.aliases.items()}
    return _Layout(
        plan=plan,
        param_of=canon,
        units=units,
        views_of={views[0].key: views for views in views_by_param.values()},
        alias_of=alias_of,
        untouched=untouched,
    )


# ----------------------------------------------------------------------------- sources & outputs


def _checkpoints(src: Path, steps: str | None) -> tuple[list[Checkpoint], list[Note], bool]:
    """The checkpoints to prune, discovery notes, and whether `src` is one checkpoint."""
    if src.is_file():
        if steps is not None:
            raise PruneError(
                f"{option_ref('steps')} {steps!r}: {src} is a single checkpoint; give a folder",
                file=src,
                option="steps",
            )
        return [open_checkpoint(src)], [], True
    discovery = discover(src)
    notes = list(discovery.notes)
    chosen: list[Checkpoint] = []
    for run in discovery.runs:
        wanted = set(select_steps([c.step for c in run.checkpoints], steps))
        chosen.extend(c for c in run.checkpoints if c.step in wanted)
    single = len(chosen) == 1 and chosen[0].path == src
    return chosen, notes, single


def _mask_source(src: Path, step: int | None) -> tuple[Checkpoint, list[Note]]:
    """The checkpoint the masks are computed from: `src` itself, or a folder's last/`step`."""
    if src.is_file():
        ckpt = open_checkpoint(src)
        if step is not None and ckpt.step != step:
            raise PruneError(
                f"{option_ref('step')} {step}: {src} is a single checkpoint (step {ckpt.step})",
                file=src,
                step=step,
                option="step",
            )
        return ckpt, []
    discovery = discover(src)
    if len(discovery.runs) > 1:
        names = ", ".join(r.name for r in discovery.runs)
        raise PruneError(f"{src} holds {len(discovery.runs)} runs ({names}); give one run's folder")
    run = discovery.runs[0]
    available = [c.step for c in run.checkpoints]
    chosen = select_steps(available, str(step))[0] if step is not None else available[-1]
    ckpt = next(c for c in run.checkpoints if c.step == chosen)
    return ckpt, [n for n in discovery.notes if n.kind not in ("duplicate", "no-step")]


def _default_out(src: Path, tag: str, home: str | Path | None) -> Path:
    """``<workspace>/pruned/<source name>-<tag>``."""
    name = src.resolve().name
    if name.endswith(".index.json"):
        name = src.resolve().parent.name
    elif src.is_file():
        name = src.stem
    return resolve_home(home) / "pruned" / f"{name}-{tag}"


def _relative_target(ckpt: Checkpoint, root: Path, out: Path) -> Path:
    """Where a checkpoint of a folder goes: the same path relative to the folder, under `out`."""
    path = ckpt.path
    if path.name.endswith(".index.json"):
        path = path.parent
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(path.name)
    return out / relative


def _check_outputs(
    src: Path,
    out: Path,
    outputs: list[CheckpointOutput],
    overwrite: bool,
    extra: Sequence[Path] = (),
) -> None:
    """Refuse an output that is or overwrites an input, lies inside the input folder, or
    exists (without `overwrite`)."""
    inputs = {p.resolve() for o in outputs for p in o.inputs()}
    src_real, out_real = src.resolve(), out.resolve()
    named = f"{_OUT} {out}"
    if out_real == src_real:
        raise PruneError(
            f"{named}: is the input itself; choose another output path", file=out, option="out"
        )
    files = [p for o in outputs for p in o.outputs()] + list(extra)
    for path in files:
        if path.resolve() in inputs:
            raise PruneError(
                f"{named}: would overwrite the input {path}; choose another {_OUT}",
                file=path,
                option="out",
            )
    if src.is_dir() and out_real.is_relative_to(src_real):
        raise PruneError(
            f"{named}: lies inside the input folder {src}; the pruned checkpoints would mix "
            "into the run; choose a folder outside it",
            file=out,
            option="out",
        )
    if not overwrite:
        existing = [p for p in files if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise PruneError(
                f"{named}: {existing[0]} exists{more}; pass "
                f"{option_ref('overwrite=True', '--overwrite')} or choose another {_OUT}",
                file=existing[0],
                option="out",
            )


def _jsonable(obj):
    """Dataclasses, arrays, paths and NaN to plain JSON values."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
