"""Lottery-ticket masks (paper appendix D.9, Fig. 12, 13): a global magnitude mask, its
random control with the same per-parameter counts, and the SVA of every masked matrix
against the unmasked one, written to ``prune.h5`` (docs/prune.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from ..engine import SpectrumEngine
from ..errors import PruneError, option_ref
from ..matrices import read_matrices
from ..sources import plan_output
from ..store import PRUNE_RESULTS_NAME, PruneResults, write_prune_results
from ..types import Note
from ..vectors import agreement_diagonal, agreement_score
from ..version import __version__
from ..views import MatrixView
from ._common import (
    MagnitudePruneResult,
    MaskedMatrix,
    MaskedParameter,
    _check_outputs,
    _compile_keep,
    _default_out,
    _Layout,
    _layout,
    _mask_source,
    view_indices,
)

__all__ = ["MAGNITUDE_KINDS", "MASKS", "prune_magnitude"]

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
# How a message names this pruning: prune_magnitude has no specdyn.<name>() twin for
# command_ref, so both wordings are given.
_PRUNE_MAGNITUDE = option_ref("specdyn.prune.prune_magnitude()", "specdyn prune --magnitude")

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
    Q/K/V parts included), the SVA diagonal S_ii, i ≤ k (docs/metrics.md#agreement, Eq. 5)
    between the masked and the unmasked matrix, and its score (mean of the first `score_top`).

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
    fraction = _check_options(fraction, control, k, score_top)
    keep_res = _compile_keep(keep)
    src = Path(source)
    ckpt, notes = _mask_source(src, step)
    out_dir = _default_out(src, f"magnitude-{fraction:g}", home) if out is None else Path(out)
    mask_names = ["magnitude"] + (["random"] if control else [])
    name = ckpt.path.parent.name if ckpt.path.name.endswith(".index.json") else ckpt.path.name
    outputs = {m: plan_output(ckpt, out_dir / f"masked-{m}" / name) for m in mask_names}
    extra = [out_dir / f"masks-{m}.safetensors" for m in mask_names] + [
        out_dir / PRUNE_RESULTS_NAME
    ]
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

    mask_paths, ckpt_paths = _write_masks(
        out_dir, ckpt, layout, masks, outputs, fraction, seed, notes
    )
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
        results=str(out_dir / PRUNE_RESULTS_NAME),
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


def _check_options(fraction: float, control: str | None, k: int, score_top: int) -> float:
    """P as a float in (0, 1); PruneError naming the option for a bad P, control, k or
    score_top."""
    fraction = _check_fraction(fraction)
    if control not in (None, "random"):
        raise PruneError(
            f"{option_ref('control')} {control!r}: the only control is 'random'",
            option="control",
        )
    for option, flag, value in (("k", "--vectors", k), ("score_top", "--score-top", score_top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PruneError(
                f"{option_ref(option, flag)} {value!r}: give a whole number ≥ 1", option=option
            )
    return fraction


def _check_fraction(fraction: float) -> float:
    """P as a float in (0, 1), or PruneError naming the option (``fraction``, ``--magnitude``)."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fraction, bool) or not 0 < value < 1:
        raise PruneError(
            f"{option_ref('fraction', '--magnitude')} {fraction!r}: give the fraction of "
            "weights kept, between 0 and 1 (exclusive), e.g. 0.05",
            option="fraction",
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


def _write_masks(out_dir, ckpt, layout, masks, outputs, fraction, seed, notes):
    """Write each mask (``masks-<mask>.safetensors``, tied aliases included) and the
    checkpoint with it applied; (mask → masks file, mask → masked checkpoint)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label = str(ckpt.path)
    mask_paths, ckpt_paths = {}, {}
    for m, mask in masks.items():
        full = dict(mask)
        full.update({a: full[t] for a, t in layout.alias_of.items() if t in full})
        path = out_dir / f"masks-{m}.safetensors"
        meta = {"source": label, "step": str(ckpt.step), "fraction": repr(fraction), "mask": m}
        if m == "random":
            meta["seed"] = str(seed)
        safetensors.torch.save_file({k_: v.clone() for k_, v in full.items()}, str(path), meta)
        mask_paths[m] = str(path)
        notes.extend(outputs[m].write(_masker(layout, mask)))
        ckpt_paths[m] = str(outputs[m].target)
    return mask_paths, ckpt_paths


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
    views = [view for key in layout.units for view in layout.views_of[key]]
    with ckpt.open() as reader:
        for group in read_matrices(reader, views):  # one parameter at a time
            for key, tensor in group.tensors.items():
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
                originals = [(v, matrix) for v, matrix in group if v.key == key]
                matrices += _view_agreements(
                    tensor, originals, masks, engine, k, score_top, rows, notes, label
                )
    diagonals = {}
    for m, diags in rows.items():
        table = np.full((len(diags), k), np.nan, dtype=np.float32)
        for i, diag in enumerate(diags):
            table[i, : len(diag)] = diag
        diagonals[m] = table
    return parameters, matrices, diagonals


def _view_agreements(tensor, originals, masks, engine, k, score_top, rows, notes, label):
    """The `MaskedMatrix` of each view of one parameter (`originals`: (view, matrix) pairs),
    its SVA diagonal per mask appended to `rows[mask]`."""
    key = originals[0][0].key
    views = [v for v, _ in originals]
    masked = {m: tensor.masked_fill(~masks[m][key], 0) for m in masks}
    batch = [matrix for _, matrix in originals] + [
        v.extract(masked[m]) for m in masks for v in views
    ]
    tops = engine.top_vectors(batch, k)
    refs = tops[: len(views)]
    finite = bool(torch.isfinite(tensor).all())
    out = []
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
        out.append(
            MaskedMatrix(
                name=view.name,
                param=view.param,
                kind=view.kind,
                shape=tuple(view.shape),
                kept_fraction=float(view_mask.float().mean()),
                scores=scores,
            )
        )
    return out


# ----------------------------------------------------------------------------- results file


def _write_results(result: MagnitudePruneResult) -> None:
    """Write ``prune.h5`` through the store (layout in docs/prune.md), atomically."""
    mats, params = result.matrices, result.parameters
    attrs = {
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
    results = PruneResults(
        attrs=attrs,
        matrices=[m.name for m in mats],
        matrix_param=[m.param for m in mats],
        matrix_kind=[m.kind for m in mats],
        matrix_shape=np.array([m.shape for m in mats], dtype=np.int64).reshape(-1, 2),
        matrix_kept_fraction=np.array([m.kept_fraction for m in mats], np.float64),
        parameters=[p.key for p in params],
        parameter_names=[p.param for p in params],
        parameter_size=np.array([p.size for p in params], np.int64),
        kept=np.array([p.kept for p in params], np.int64),
        kept_fraction=np.array([p.kept_fraction for p in params], np.float64),
        diagonal=dict(result.diagonals),
        score={m: np.array([x.scores[m] for x in mats], np.float64) for m in result.diagonals},
    )
    write_prune_results(result.results, results)
