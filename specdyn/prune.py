"""SVD pruning and lottery-ticket masks of checkpoints (SPEC §5; the paper's Fig. 4, 12, 13).

    from specdyn.prune import prune_svd, prune_magnitude, read_prune_results
    prune_svd("ckpt.pt", "top-half", out="pruned.pt")        # keep σ_1..σ_⌈R/2⌉ of every matrix
    prune_svd("ckpts/", "energy:0.9", out="pruned/")         # every checkpoint of a folder
    r = prune_magnitude("ckpts/", 0.05, control="random", out="tickets/")
    r.matrices[0].scores                                      # {"magnitude": 0.93, "random": 0.21}
    read_prune_results("tickets/prune.h5")

Which matrices: every weight matrix view of `specdyn.views.plan_views` except the final layer
(the last matrix in forward order, e.g. the classifier or ``lm_head``); 1-D parameters and
everything the plan skips are left untouched, and ``keep`` regexes leave more. A parameter
with a whole-parameter view (linear, conv flattened, GPT-2 Conv1D, embedding, fused QKV) is
pruned through that view; one with only part views (LSTM/GRU gate blocks, stacked experts)
part by part. Pruned checkpoints are written in their input format (``specdyn._prune_write``).
User documentation: ``docs/prune.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import safetensors.torch
import torch

from ._prune_write import CheckpointOutput, plan_output
from ._types import Note
from ._version import __version__
from .engine import SpectrumEngine
from .errors import SpecdynError
from .naming import canonicalize, forward_sort
from .sources import Checkpoint, discover, open_checkpoint
from .steps import select_steps
from .vectors import agreement_diagonal, agreement_score
from .views import MatrixView, ViewPlan, compile_patterns, plan_views
from .workspace import resolve_home

__all__ = [
    "MAGNITUDE_KINDS",
    "PruneError",
    "SvdMode",
    "parse_svd_mode",
    "svd_truncate",
    "view_indices",
    "singular_vector_agreement",
    "prune_svd",
    "prune_magnitude",
    "read_prune_results",
    "Untouched",
    "PrunedMatrix",
    "PrunedCheckpoint",
    "SvdPruneResult",
    "MaskedParameter",
    "MaskedMatrix",
    "MagnitudePruneResult",
    "PruneResults",
]

MAGNITUDE_KINDS = (
    "linear",
    "conv",
    "conv_transpose",
    "conv1d_gpt2",
    "rnn_gate",
    "qkv_fused",
    "qkv_part",
    "expert",
)
"""View kinds a magnitude mask covers (the paper's "linear and convolutional weights")."""

MASKS = ("magnitude", "random")
_SVD_USAGE = "--svd: use top-half, bottom-half, rank:K or energy:F"
_RESULTS_NAME = "prune.h5"
_RESULTS_SCHEMA = 1


class PruneError(SpecdynError):
    """A pruning request that cannot be carried out (bad mode, fraction, output path)."""


# ----------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class SvdMode:
    """Which part of each matrix's SVD is kept.

    kind: "top-half" (σ_1..σ_⌈R/2⌉), "bottom-half" (the other ⌊R/2⌋: the two halves
    partition the spectrum), "rank" (the top `value` = K, capped at R) or "energy" (the
    smallest K with Σ_{i≤K} σ_i² ≥ `value`·Σσ²). text: the mode as written canonically.
    """

    kind: str
    value: float | None = None

    @property
    def text(self) -> str:
        """``top-half``, ``bottom-half``, ``rank:K`` or ``energy:F``."""
        if self.kind == "rank":
            return f"rank:{int(self.value)}"
        if self.kind == "energy":
            return f"energy:{self.value:g}"
        return self.kind

    def kept(self, sigma: np.ndarray) -> tuple[int, int]:
        """The kept singular values as a range [start, stop) of the descending `sigma` [R]."""
        r = int(len(sigma))
        if self.kind == "top-half":
            return 0, (r + 1) // 2
        if self.kind == "bottom-half":
            return (r + 1) // 2, r
        if self.kind == "rank":
            return 0, min(int(self.value), r)
        energy = np.cumsum(np.asarray(sigma, dtype=np.float64) ** 2)
        if r == 0:
            return 0, 0
        reached = np.nonzero(energy >= self.value * energy[-1])[0]
        return 0, int(reached[0]) + 1 if reached.size else r


def parse_svd_mode(text: str | SvdMode) -> SvdMode:
    """Parse ``top-half``, ``bottom-half``, ``rank:K`` (K ≥ 1) or ``energy:F`` (0 < F ≤ 1).

    Raises PruneError (one line, naming ``--svd``) for anything else.
    """
    if isinstance(text, SvdMode):
        return text
    spec = str(text).strip().lower()
    if spec in ("top-half", "bottom-half"):
        return SvdMode(spec)
    name, _, value = spec.partition(":")
    if name == "rank" and value:
        if value.isdigit() and int(value) >= 1:
            return SvdMode("rank", int(value))
        raise PruneError(f"--svd {text!r}: K must be a whole number ≥ 1, e.g. rank:16")
    if name == "energy" and value:
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if 0 < fraction <= 1:
            return SvdMode("energy", fraction)
        raise PruneError(f"--svd {text!r}: F must be a fraction in (0, 1], e.g. energy:0.9")
    raise PruneError(f"{_SVD_USAGE} (got {text!r})")


# ----------------------------------------------------------------------------- linear algebra


@dataclass(frozen=True)
class _Truncated:
    """A truncated SVD: the matrix (stored dtype), all σ (float64) and the kept range."""

    matrix: torch.Tensor | None
    sigma: np.ndarray
    start: int
    stop: int

    @property
    def energy(self) -> float:
        """Fraction of Σσ² kept (NaN for a zero matrix)."""
        total = float(np.sum(self.sigma**2))
        kept = float(np.sum(self.sigma[self.start : self.stop] ** 2))
        return kept / total if total > 0 else math.nan


def svd_truncate(w: torch.Tensor, mode: str | SvdMode) -> torch.Tensor:
    """The matrix rebuilt from the part of its SVD that `mode` keeps.

    w: 2-D tensor (m, n), float16/bfloat16/float32/float64, finite. The SVD is float64
    LAPACK (``torch.linalg.svd`` on the CPU) of the exact float64 values; the result
    Σ_{i kept} σ_i u_i v_iᵀ is cast back to w's dtype. Returns a new (m, n) tensor.
    """
    return _truncate(w, parse_svd_mode(mode)).matrix


def _truncate(w: torch.Tensor, mode: SvdMode) -> _Truncated:
    """Float64 SVD of w, keep the range `mode` chooses, rebuild in w's dtype."""
    w64 = w.detach().to(device="cpu", dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    sigma = s.numpy()
    start, stop = mode.kept(sigma)
    rebuilt = (u[:, start:stop] * s[start:stop]) @ vh[start:stop]
    return _Truncated(rebuilt.to(w.dtype), sigma, start, stop)


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
    """The SVA diagonal (SPEC §2, Eq. 5) of `w` against the reference `w_ref`.

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


@dataclass
class PruneResults:
    """The contents of a ``prune.h5`` (layout in docs/prune.md).

    attrs: file attributes (source, checkpoint, step, fraction, seed, k, score_top,
    control, specdyn_version, created); matrices / matrix_param / matrix_kind: [M] names;
    matrix_shape: int64 [M, 2]; matrix_kept_fraction: float64 [M]; parameters /
    parameter_names: [P] raw keys and canonical names; parameter_size, kept: int64 [P];
    kept_fraction: float64 [P]; diagonal: mask → float32 [M, k]; score: mask → float64 [M].
    """

    attrs: dict
    matrices: list[str]
    matrix_param: list[str]
    matrix_kind: list[str]
    matrix_shape: np.ndarray
    matrix_kept_fraction: np.ndarray
    parameters: list[str]
    parameter_names: list[str]
    parameter_size: np.ndarray
    kept: np.ndarray
    kept_fraction: np.ndarray
    diagonal: dict[str, np.ndarray]
    score: dict[str, np.ndarray]


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
    """Compile the --keep regexes (a one-line error naming the option)."""
    return compile_patterns("--keep", keep, PruneError)


def _layout(ckpt: Checkpoint, keep: list[re.Pattern], kinds: Iterable[str] | None) -> _Layout:
    """Plan the views of `ckpt` and pick what is pruned (`kinds`: view kinds allowed, or all)."""
    with ckpt.open() as reader:
        keys = reader.keys()
        infos = {k: reader.info(k) for k in keys}
        unsupported = dict(reader.unsupported)
    plan = plan_views(infos, config=ckpt.config, source_order=keys)
    if not plan.matrices:
        raise PruneError(f"{ckpt.path}: no weight matrix to prune")
    canon = canonicalize(keys, config=ckpt.config)
    raw_of = {c: k for k, c in canon.items()}
    untouched = [Untouched(s.matrix or s.param, s.key, s.reason) for s in plan.skipped]
    untouched += [
        Untouched(key, key, f"unsupported tensor type (built by {g}); not read")
        for key, g in unsupported.items()
    ]
    views_by_param: dict[str, list[MatrixView]] = {}
    for view in plan.matrices:
        views_by_param.setdefault(view.param, []).append(view)
    source_order = [canon[k] for k in keys]
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


# ----------------------------------------------------------------------------- SVD pruning


class _SvdPruner:
    """The write-back transform of `prune_svd` for one checkpoint (ties share one result)."""

    def __init__(self, layout: _Layout, mode: SvdMode, label: str):
        self.layout, self.mode, self.label = layout, mode, label
        self.done: dict[str, torch.Tensor | None] = {}
        self.tied = set(layout.alias_of.values())
        self.truncated: dict[str, _Truncated] = {}
        self.notes: list[Note] = []
        self.untouched: list[Untouched] = []

    def __call__(self, key: str, tensor: torch.Tensor) -> torch.Tensor | None:
        target = self.layout.alias_of.get(key, key)
        if target not in self.layout.units:
            return None
        if target in self.done:
            return self.done[target]
        result = self._prune(self.layout.units[target], tensor)
        if target in self.tied:  # its other names get this same tensor (stays tied)
            self.done[target] = result
        return result

    def _prune(self, views: list[MatrixView], tensor: torch.Tensor) -> torch.Tensor | None:
        """The parameter with each view replaced by its truncated SVD."""
        out = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        flat = out.view(-1)
        changed = False
        for view in views:
            matrix = view.extract(tensor)
            if not bool(torch.isfinite(matrix).all()):
                self.notes.append(
                    Note(
                        "nonfinite",
                        f"{self.label}: matrix {view.name} holds NaN/Inf; left unpruned",
                        view.name,
                    )
                )
                self.untouched.append(Untouched(view.name, view.key, "non-finite weights"))
                continue
            result = _truncate(matrix, self.mode)
            _write_view(flat, view, result.matrix)
            self.truncated[view.name] = replace(result, matrix=None)  # σ and range only
            changed = True
        return out if changed else None


def prune_svd(
    source: str | Path,
    mode: str | SvdMode,
    *,
    out: str | Path | None = None,
    keep: Sequence[str] = (),
    steps: str | None = None,
    home: str | Path | None = None,
    overwrite: bool = False,
) -> SvdPruneResult:
    """Replace every matrix (but the final layer) by a truncated SVD and write the checkpoints.

    Args:
        source: one checkpoint (a ``.pt/.pth/.bin/.ckpt/.safetensors`` file, a sharded
            ``*.index.json``, an HF model or Trainer ``checkpoint-N/`` folder) or a folder
            of checkpoints (every run in it).
        mode: "top-half" (σ_1..σ_⌈R/2⌉), "bottom-half" (σ_⌈R/2⌉+1..σ_R: the two halves
            partition the spectrum), "rank:K" (top K, capped at R) or "energy:F" (the
            smallest K with Σ_{i≤K} σ_i² ≥ F·Σσ²), or an `SvdMode`.
        out: output file (one checkpoint file in) or folder (a folder in: the same
            relative paths and names). Default: ``<workspace>/pruned/<source name>-<mode>/``
            (a single file goes into that folder under its own name).
        keep: regexes (``re.search``) on canonical parameter and matrix names: matching
            matrices are left untouched (a parameter pruned as a whole is kept when its
            name or any of its views' names matches; gate blocks and experts one by one).
        steps: ``--steps`` grammar (SPEC §7), for a folder; default every checkpoint.
        home: the workspace (``resolve_home``), used only for the default `out`.
        overwrite: replace existing output files (never the input).

    Each matrix view is decomposed in float64 LAPACK and rebuilt in its stored dtype; the
    final layer, 1-D parameters and everything the view plan skips are written
    byte-identical. Tied weights are pruned once and stay tied.

    Returns:
        `SvdPruneResult`.

    Raises:
        PruneError: bad mode or --keep regex, output exists (without `overwrite`), output
            is or overwrites the input, no matrix to prune. CheckpointError /
            DiscoveryError / StepSpecError: unreadable source, no checkpoints, bad steps.
    """
    svd_mode = parse_svd_mode(mode)
    keep_res = _compile_keep(keep)
    src = Path(source)
    checkpoints, notes, single = _checkpoints(src, steps)
    tag = svd_mode.text.replace(":", "-")
    out_path = _default_out(src, tag, home) if out is None else Path(out)
    if (
        single
        and checkpoints[0].path.is_file()
        and not checkpoints[0].path.name.endswith(".index.json")
    ):
        target = (
            out_path / checkpoints[0].path.name if out is None or out_path.is_dir() else out_path
        )
        if target.suffix != checkpoints[0].path.suffix:
            raise PruneError(
                f"--out {out_path}: the output keeps the input's format; give a "
                f"{checkpoints[0].path.suffix} file name (or a folder)"
            )
        outputs = [plan_output(checkpoints[0], target)]
    else:
        root = src if src.is_dir() else src.parent
        outputs = [plan_output(c, _relative_target(c, root, out_path)) for c in checkpoints]
        target = out_path
    _check_outputs(src, out_path, outputs, overwrite)

    written: list[PrunedCheckpoint] = []
    untouched: list[Untouched] = []
    last_views: dict[str, tuple[MatrixView, _Truncated]] = {}
    for output in outputs:
        ckpt = output.checkpoint
        layout = _layout(ckpt, keep_res, None)
        pruner = _SvdPruner(layout, svd_mode, str(ckpt.path))
        notes.extend(output.write(pruner))
        notes.extend(pruner.notes)
        untouched = layout.untouched + pruner.untouched
        # forward order (the writer meets tensors in file order)
        last_views = {
            v.name: (v, pruner.truncated[v.name])
            for v in layout.plan.matrices
            if v.name in pruner.truncated
        }
        written.append(
            PrunedCheckpoint(
                source=str(ckpt.path),
                output=str(output.target),
                step=ckpt.step,
                kept={n: t.stop - t.start for n, (_, t) in last_views.items()},
                energy={n: t.energy for n, (_, t) in last_views.items()},
            )
        )
    matrices = [
        PrunedMatrix(
            name=view.name,
            param=view.param,
            kind=view.kind,
            shape=tuple(view.shape),
            rank=len(t.sigma),
            kept=t.stop - t.start,
            kept_range=(t.start + 1, t.stop) if t.stop > t.start else None,
            energy=t.energy,
        )
        for view, t in last_views.values()
    ]
    return SvdPruneResult(
        source=str(src),
        out=str(target),
        mode=svd_mode.text,
        checkpoints=written,
        matrices=matrices,
        untouched=untouched,
        notes=notes,
    )


# ----------------------------------------------------------------------------- magnitude masks


def prune_magnitude(
    source: str | Path,
    fraction: float,
    *,
    out: str | Path | None = None,
    control: str | None = None,
    seed: int = 0,
    k: int = 100,
    score_top: int = 10,
    step: int | None = None,
    keep: Sequence[str] = (),
    home: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> MagnitudePruneResult:
    """Global magnitude mask (and a random control) of one checkpoint, and their SVA.

    The mask of the paper's lottery-ticket experiment (appendix D.9): over all weight
    matrices of kinds `MAGNITUDE_KINDS` except the final layer (no embedding, no output
    head; `keep` excludes more), the |w| of every weight are pooled and exactly
    round(fraction·N) largest kept (half-way rounds up); ties are broken by position
    (parameters in forward order, elements in row-major order, earlier first). With
    ``control="random"``, a random mask (seeded by `seed`) keeps exactly as many weights in
    every parameter. For each mask and each view of a masked parameter (gate blocks and
    Q/K/V parts included), the SVA diagonal S_ii, i ≤ k (SPEC §2, Eq. 5) between the masked
    and the unmasked matrix, and its score (mean of the first `score_top`).

    Args:
        source: a checkpoint or a folder of checkpoints of one run; the masks come from
            the last checkpoint, or from `step`.
        fraction: P, the fraction of weights kept, 0 < P < 1 (the paper: 0.05).
        out: output folder (default ``<workspace>/pruned/<source name>-magnitude-P/``),
            receiving ``masks-magnitude.safetensors`` (bool, keyed by raw parameter keys,
            True = kept; tied aliases included), ``masked-magnitude/<checkpoint>`` (the
            checkpoint with the mask applied, in its input format), the same for
            ``random``, and ``prune.h5`` (see `read_prune_results`).
        control: None or "random".
        seed: seed of the random control.
        k: singular vectors compared per matrix (diagonal length, capped at R).
        score_top: entries averaged into the score.
        step: the checkpoint's step in a folder (default: the last).
        keep: regexes on canonical parameter/matrix names excluded from the mask.
        home: the workspace, for the default `out`.
        overwrite: replace existing output files.
        device: where the engine computes singular vectors ("auto", "cpu", "cuda[:N]").

    Returns:
        `MagnitudePruneResult`.

    Raises:
        PruneError: fraction outside (0, 1), unknown control, k or score_top < 1, a folder
            with several runs, output exists (without `overwrite`) or is the input.
        CheckpointError / DiscoveryError / StepSpecError: unreadable source, unknown step.
    """
    fraction = _check_fraction(fraction)
    if control not in (None, "random"):
        raise PruneError(f"--control {control!r}: the only control is 'random'")
    for option, value in (("--vectors", k), ("--score-top", score_top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PruneError(f"{option} {value!r}: give a whole number ≥ 1")
    keep_res = _compile_keep(keep)
    src = Path(source)
    ckpt, notes = _mask_source(src, step)
    out_dir = _default_out(src, f"magnitude-{fraction:g}", home) if out is None else Path(out)
    mask_names = ["magnitude"] + (["random"] if control else [])
    name = ckpt.path.parent.name if ckpt.path.name.endswith(".index.json") else ckpt.path.name
    outputs = {m: plan_output(ckpt, out_dir / f"masked-{m}" / name) for m in mask_names}
    extra = [out_dir / f"masks-{m}.safetensors" for m in mask_names] + [out_dir / _RESULTS_NAME]
    _check_outputs(src, out_dir, list(outputs.values()), overwrite, extra)

    layout = _layout(ckpt, keep_res, MAGNITUDE_KINDS)
    if not layout.units:
        raise PruneError(
            f"{ckpt.path}: no linear/conv weight matrix to mask besides the final layer"
        )
    label = str(ckpt.path)
    with ckpt.open() as reader:
        pools = {
            key: _pool(views, key, reader.info(key).shape) for key, views in layout.units.items()
        }
        masks = {"magnitude": _magnitude_mask(reader, pools, fraction, notes, label, layout)}
    counts = {
        key: int(mask.sum()) - _outside(pools[key], mask)
        for key, mask in masks["magnitude"].items()
    }
    if control:
        masks["random"] = _random_mask(masks["magnitude"], pools, counts, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    mask_paths, ckpt_paths = {}, {}
    for m in mask_names:
        full = dict(masks[m])
        full.update({a: full[t] for a, t in layout.alias_of.items() if t in full})
        path = out_dir / f"masks-{m}.safetensors"
        meta = {"source": label, "step": str(ckpt.step), "fraction": repr(fraction), "mask": m}
        if m == "random":
            meta["seed"] = str(seed)
        safetensors.torch.save_file({k_: v.clone() for k_, v in full.items()}, str(path), meta)
        mask_paths[m] = str(path)
        notes.extend(outputs[m].write(_masker(layout, masks[m])))
        ckpt_paths[m] = str(outputs[m].target)

    engine = SpectrumEngine(device=device)
    parameters, matrices, diagonals = _agreements(
        ckpt, layout, masks, pools, counts, engine, k, score_top, notes, label
    )
    notes.extend(engine.notes)
    kept, total = sum(p.kept for p in parameters), sum(p.size for p in parameters)
    result = MagnitudePruneResult(
        source=str(src),
        checkpoint=label,
        step=ckpt.step,
        fraction=fraction,
        control=control,
        seed=int(seed),
        k=int(k),
        score_top=int(score_top),
        out=str(out_dir),
        results=str(out_dir / _RESULTS_NAME),
        masks=mask_paths,
        checkpoints=ckpt_paths,
        kept=kept,
        total=total,
        parameters=parameters,
        matrices=matrices,
        diagonals=diagonals,
        untouched=layout.untouched,
        notes=notes,
    )
    _write_results(result)
    return result


def _check_fraction(fraction: float) -> float:
    """P as a float in (0, 1), or PruneError naming --magnitude."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fraction, bool) or not 0 < value < 1:
        raise PruneError(
            f"--magnitude {fraction!r}: give the fraction of weights kept, between 0 and 1 "
            "(exclusive), e.g. 0.05"
        )
    return value


def _pool(views: list[MatrixView], key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Flat indices of the parameter's elements a mask covers (sorted); None = all of them."""
    if any(v.part is None for v in views):
        return None
    index = torch.cat([view_indices(v).reshape(-1) for v in views]).unique(sorted=True)
    return None if index.numel() == math.prod(shape) else index


def _outside(pool: torch.Tensor | None, mask: torch.Tensor) -> int:
    """Elements of a parameter outside its mask's pool (they are always kept)."""
    return 0 if pool is None else mask.numel() - pool.numel()


def _pooled(tensor: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor:
    """The covered elements of a parameter, flat."""
    flat = tensor.reshape(-1)
    return flat if pool is None else flat[pool]


def _magnitude_mask(reader, pools, fraction, notes, label, layout) -> dict[str, torch.Tensor]:
    """The global magnitude mask: exactly round(P·N) largest |w| over every pool."""
    chunks, sizes, shapes = [], [], {}
    wide = any(reader.info(key).dtype == torch.float64 for key in pools)
    dtype = torch.float64 if wide else torch.float32  # exact |w| for every stored dtype
    for key, pool in pools.items():
        tensor = reader.get(key)
        shapes[key] = tensor.shape
        values = _pooled(tensor, pool).abs().to(dtype)
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            values[bad] = -1.0  # never among the kept: a NaN/Inf weight is masked out
            notes.append(
                Note(
                    "nonfinite",
                    f"{label}: {layout.param_of[key]} holds {int(bad.sum())} NaN/Inf weight(s); "
                    "they are masked out and its SVA scores are NaN",
                    key,
                )
            )
        chunks.append(values)
        sizes.append(values.numel())
    values = torch.cat(chunks)
    n = values.numel()
    count = min(n, int(math.floor(fraction * n + 0.5)))
    keep = torch.zeros(n, dtype=torch.bool)
    if count > 0:
        threshold = torch.kthvalue(values, n - count + 1).values
        keep = values > threshold
        ties = torch.nonzero(values == threshold).reshape(-1)
        keep[ties[: count - int(keep.sum())]] = True
    masks, start = {}, 0
    for (key, pool), size in zip(pools.items(), sizes, strict=True):
        mask = torch.ones(shapes[key], dtype=torch.bool)
        flat = mask.view(-1)
        part = keep[start : start + size]
        if pool is None:
            flat.copy_(part)
        else:
            flat[pool] = part
        masks[key] = mask
        start += size
    return masks


def _random_mask(magnitude, pools, counts, seed) -> dict[str, torch.Tensor]:
    """Per parameter, exactly as many kept weights as `magnitude`, at random positions."""
    gen = torch.Generator().manual_seed(int(seed))
    masks = {}
    for key, mask in magnitude.items():
        pool = pools[key]
        size = mask.numel() if pool is None else pool.numel()
        chosen = torch.randperm(size, generator=gen)[: counts[key]]
        part = torch.zeros(size, dtype=torch.bool)
        part[chosen] = True
        new = torch.ones_like(mask)
        if pool is None:
            new.view(-1).copy_(part)
        else:
            new.view(-1)[pool] = part
        masks[key] = new
    return masks


def _masker(layout: _Layout, masks: Mapping[str, torch.Tensor]) -> Callable:
    """The write-back transform applying `masks` (zeros where False); ties share one result."""
    done: dict[str, torch.Tensor] = {}
    tied = set(layout.alias_of.values())

    def transform(key: str, tensor: torch.Tensor) -> torch.Tensor | None:
        target = layout.alias_of.get(key, key)
        if target not in masks:
            return None
        if target in done:
            return done[target]
        result = tensor.detach().to("cpu").masked_fill(~masks[target], 0)
        if target in tied:  # its other names get this same tensor (stays tied)
            done[target] = result
        return result

    return transform


def _agreements(ckpt, layout, masks, pools, counts, engine, k, score_top, notes, label):
    """Per-parameter kept fractions and, per view and mask, the SVA diagonal and score."""
    parameters: list[MaskedParameter] = []
    matrices: list[MaskedMatrix] = []
    rows: dict[str, list[np.ndarray]] = {m: [] for m in masks}
    with ckpt.open() as reader:
        for key in layout.units:
            tensor = reader.get(key)
            pool = pools[key]
            size = tensor.numel() if pool is None else pool.numel()
            parameters.append(
                MaskedParameter(
                    key=key,
                    param=layout.param_of[key],
                    size=size,
                    kept=counts[key],
                    kept_fraction=counts[key] / size if size else math.nan,
                )
            )
            views = layout.views_of[key]
            masked = {m: tensor.masked_fill(~masks[m][key], 0) for m in masks}
            originals = [v.extract(tensor) for v in views]
            batch = originals + [v.extract(masked[m]) for m in masks for v in views]
            tops = engine.top_vectors(batch, k)
            refs = tops[: len(views)]
            finite = bool(torch.isfinite(tensor).all())
            for i, view in enumerate(views):
                scores = {}
                for j, m in enumerate(masks):
                    top, ref = tops[len(views) * (j + 1) + i], refs[i]
                    diag = agreement_diagonal(top.u, top.v, ref.u, ref.v, k)
                    rows[m].append(diag)
                    scores[m] = agreement_score(diag, score_top)
                    if top.method == "zero" and finite:
                        notes.append(
                            Note(
                                "zero-matrix",
                                f"{label}: the {m} mask keeps no weight of {view.name}; its SVA is NaN",
                                view.name,
                            )
                        )
                view_mask = view.extract(masks["magnitude"][key])
                matrices.append(
                    MaskedMatrix(
                        name=view.name,
                        param=view.param,
                        kind=view.kind,
                        shape=tuple(view.shape),
                        kept_fraction=float(view_mask.float().mean()),
                        scores=scores,
                    )
                )
    diagonals = {}
    for m, diags in rows.items():
        table = np.full((len(diags), k), np.nan, dtype=np.float32)
        for i, diag in enumerate(diags):
            table[i, : len(diag)] = diag
        diagonals[m] = table
    return parameters, matrices, diagonals


# ----------------------------------------------------------------------------- results file


def _write_results(result: MagnitudePruneResult) -> None:
    """Write ``prune.h5`` (layout in docs/prune.md), atomically."""
    path = Path(result.results)
    tmp = path.with_name(path.name + ".partial")
    text = h5py.string_dtype("utf-8")
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            attrs = {
                "schema": _RESULTS_SCHEMA,
                "source": result.source,
                "checkpoint": result.checkpoint,
                "step": -1 if result.step is None else int(result.step),
                "fraction": float(result.fraction),
                "seed": int(result.seed),
                "k": int(result.k),
                "score_top": int(result.score_top),
                "control": result.control or "",
                "specdyn_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            f.attrs.update(attrs)
            mats, params = result.matrices, result.parameters
            f.create_dataset("matrices", data=[m.name for m in mats], dtype=text)
            f.create_dataset("matrix_param", data=[m.param for m in mats], dtype=text)
            f.create_dataset("matrix_kind", data=[m.kind for m in mats], dtype=text)
            f.create_dataset(
                "matrix_shape",
                data=np.array([m.shape for m in mats], dtype=np.int64).reshape(-1, 2),
            )
            f.create_dataset(
                "matrix_kept_fraction", data=np.array([m.kept_fraction for m in mats], np.float64)
            )
            f.create_dataset("parameters", data=[p.key for p in params], dtype=text)
            f.create_dataset("parameter_names", data=[p.param for p in params], dtype=text)
            f.create_dataset("parameter_size", data=np.array([p.size for p in params], np.int64))
            f.create_dataset("kept", data=np.array([p.kept for p in params], np.int64))
            f.create_dataset(
                "kept_fraction", data=np.array([p.kept_fraction for p in params], np.float64)
            )
            for m, table in result.diagonals.items():
                group = f.create_group(f"masks/{m}")
                group.create_dataset("diagonal", data=table.astype(np.float32))
                group.create_dataset(
                    "score", data=np.array([x.scores[m] for x in mats], dtype=np.float64)
                )
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_prune_results(path: str | Path) -> PruneResults:
    """Read a ``prune.h5`` written by `prune_magnitude` (layout in docs/prune.md).

    Args:
        path: the file, or the output folder holding it.

    Returns:
        `PruneResults` (numpy arrays, lists of names, the file's attributes).

    Raises:
        PruneError: missing file or not a specdyn prune results file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / _RESULTS_NAME
    if not p.is_file():
        raise PruneError(f"{p}: no such prune results file; run specdyn prune --magnitude first")

    def names(f: h5py.File, key: str) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else str(s) for s in f[key][()]]

    try:
        with h5py.File(p, "r", locking=False) as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            masks = sorted(f["masks"]) if "masks" in f else []
            return PruneResults(
                attrs=attrs,
                matrices=names(f, "matrices"),
                matrix_param=names(f, "matrix_param"),
                matrix_kind=names(f, "matrix_kind"),
                matrix_shape=f["matrix_shape"][()],
                matrix_kept_fraction=f["matrix_kept_fraction"][()],
                parameters=names(f, "parameters"),
                parameter_names=names(f, "parameter_names"),
                parameter_size=f["parameter_size"][()],
                kept=f["kept"][()],
                kept_fraction=f["kept_fraction"][()],
                diagonal={m: f[f"masks/{m}/diagonal"][()] for m in masks},
                score={m: f[f"masks/{m}/score"][()] for m in masks},
            )
    except (OSError, KeyError) as exc:
        raise PruneError(f"{p}: not a readable specdyn prune results file ({exc})") from None


# ----------------------------------------------------------------------------- sources & outputs


def _checkpoints(src: Path, steps: str | None) -> tuple[list[Checkpoint], list[Note], bool]:
    """The checkpoints to prune, discovery notes, and whether `src` is one checkpoint."""
    if src.is_file():
        if steps is not None:
            raise PruneError(f"--steps {steps!r}: {src} is a single checkpoint; give a folder")
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
            raise PruneError(f"--step {step}: {src} is a single checkpoint (step {ckpt.step})")
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
    if out_real == src_real:
        raise PruneError(f"--out {out}: is the input itself; choose another output path")
    files = [p for o in outputs for p in o.outputs()] + list(extra)
    for path in files:
        if path.resolve() in inputs:
            raise PruneError(f"--out {out}: would overwrite the input {path}; choose another --out")
    if src.is_dir() and out_real.is_relative_to(src_real):
        raise PruneError(
            f"--out {out}: lies inside the input folder {src}; the pruned checkpoints would mix "
            "into the run; choose a folder outside it"
        )
    if not overwrite:
        existing = [p for p in files if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise PruneError(
                f"--out {out}: {existing[0]} exists{more}; pass --overwrite or choose another --out"
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
