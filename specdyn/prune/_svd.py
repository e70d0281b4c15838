"""SVD pruning and lottery-ticket masks of checkpoints (docs/prune.md; the paper's Fig. 4, 12, 13).

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
part by part. Pruned checkpoints are written in their input format (``specdyn.sources._writer``).
SVD pruning lives here; the masks in ``_masks``; what both use (the layout of
a checkpoint's views, result records, output checks) in ``_common``.
User documentation: ``docs/prune.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import PruneError, option_ref
from ..matrices import cut_matrices
from ..sources import plan_output
from ..types import Note
from ..views import MatrixView
from ._common import (
    _OUT,
    PrunedCheckpoint,
    PrunedMatrix,
    SvdPruneResult,
    Untouched,
    _check_outputs,
    _checkpoints,
    _compile_keep,
    _default_out,
    _Layout,
    _layout,
    _relative_target,
    _write_view,
)

__all__ = ["SvdMode", "parse_svd_mode", "prune_svd", "svd_truncate"]

# How a message names the mode: prune_svd's mode (Python) or --svd.
_MODE = option_ref("mode", "--svd")

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

    Raises PruneError (one line, naming the option: ``mode``, ``--svd``) for anything else.
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
        raise PruneError(
            f"{_MODE} {text!r}: K must be a whole number ≥ 1, e.g. rank:16", option="mode"
        )
    if name == "energy" and value:
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if 0 < fraction <= 1:
            return SvdMode("energy", fraction)
        raise PruneError(
            f"{_MODE} {text!r}: F must be a fraction in (0, 1], e.g. energy:0.9", option="mode"
        )
    raise PruneError(
        f"{_MODE}: use top-half, bottom-half, rank:K or energy:F (got {text!r})", option="mode"
    )


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
        for view, matrix in cut_matrices(tensor, views):
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
        steps: ``--steps`` grammar (docs/runs.md#steps-grammar), for a folder; default every
            checkpoint.
        home: the workspace (``resolve_home``), used only for the default `out`.
        overwrite: replace existing output files (never the input).

    Each matrix view is decomposed in float64 LAPACK and rebuilt in its stored dtype; the
    final layer, 1-D parameters and everything the view plan skips are written
    byte-identical. Tied weights are pruned once and stay tied.

    Returns:
        `SvdPruneResult`.

    Raises:
        PruneError: bad mode or `keep` regex, output exists (without `overwrite`), output
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
                f"{_OUT} {out_path}: the output keeps the input's format; give a "
                f"{checkpoints[0].path.suffix} file name (or a folder)",
                file=out_path,
                option="out",
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
