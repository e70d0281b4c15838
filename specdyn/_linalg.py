"""Batched singular-value kernels and their memory and error models (private to the engine).

Every kernel takes a list of same-shape matrices already *oriented* tall,
(L, s) with L ≥ s (a wide matrix is passed as its transposed view: σ(W) = σ(Wᵀ)),
reads them in row blocks, converts each block on the target device and returns
singular values [B, s] on that device. The error model of the Gram route is
derived in docs/methods.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# unit roundoff of IEEE float64 (round to nearest)
UNIT_ROUNDOFF_F64 = 2.0**-53

# working space of the eigen/QR solvers, in elements per row (an over-estimate)
_EIG_WORK_DOUBLES = 64


def oriented(w: torch.Tensor) -> torch.Tensor:
    """The tall orientation of a 2-D tensor: itself, or its transposed view if wide."""
    return w if w.shape[0] >= w.shape[1] else w.mT


def load_block(
    mats: Sequence[torch.Tensor], r0: int, r1: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Rows r0:r1 of each (L, s) matrix as one [B, r1-r0, s] tensor of `dtype` on `device`.

    Reads each block along its smaller stride, so that a block of a transposed
    (wide) matrix is copied as contiguous row segments of the original.
    """
    blocks = [m[r0:r1] for m in mats]
    transposed = blocks[0].stride(0) < blocks[0].stride(1)
    if transposed:
        blocks = [b.mT for b in blocks]
    x = blocks[0].unsqueeze(0) if len(blocks) == 1 else torch.stack(blocks)
    x = x.to(device=device)
    x = x.to(dtype=dtype)
    return x.mT if transposed else x


def _scaled(x: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """Each batch item times its (power-of-two, hence exact) scale; a new tensor, since
    `x` may be a view of the caller's float64 matrix."""
    if scales is None:
        return x
    return x * scales.to(device=x.device, dtype=x.dtype)[:, None, None]


def panel_bounds(s: int) -> list[tuple[int, int]]:
    """Column panels for accumulating only the upper block triangle of an s×s Gram matrix."""
    width = max(128, -(-s // 8))
    return [(c0, min(c0 + width, s)) for c0 in range(0, s, width)]


def gram_upper(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    chunk: int,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float64 Gram matrices AᵀA [B, s, s] of (L, s) matrices, upper triangle valid.

    Accumulates over row blocks of `chunk` rows (each converted to float64 on the
    device, never the whole matrix) and, per block, only the upper block
    triangle in column panels: about (1/2 + 1/(2·panels)) of the full product.
    """
    length, s = mats[0].shape
    g = torch.zeros(len(mats), s, s, dtype=torch.float64, device=device)
    panels = panel_bounds(s)
    for r0 in range(0, length, chunk):
        c = _scaled(load_block(mats, r0, min(r0 + chunk, length), device, torch.float64), scales)
        for c0, c1 in panels:
            g[:, c0:c1, c0:].baddbmm_(c[:, :, c0:c1].mT, c[:, :, c0:])
    return g


def accumulation_length(length: int, chunk: int) -> int:
    """Longest chain of float64 additions behind one Gram entry: a block of `chunk` rows
    summed in any order, plus one addition per block."""
    chunk = max(1, min(chunk, length))
    return chunk + -(-length // chunk)


def gram_error_bound(
    lam: torch.Tensor, trace: torch.Tensor, length: int, chunk: int, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A-posteriori error bounds of the Gram route, per singular value.

    lam: [B, s] computed eigenvalues of Ĝ (ascending); trace: [B] trace(Ĝ) ≈ ‖W‖_F².
    Returns (bound [B, s] on |σ̂_i − σ_i| for σ̂_i = sqrt(max(λ̂_i, 0)), lower bound
    [B] on σ_1). Derivation (docs/methods.md): forming Ĝ costs |ΔG| ≤ γ_k |W|ᵀ|W|
    elementwise, so ‖ΔG‖₂ ≤ γ_k‖W‖_F²; the eigensolver adds ≤ s·u·‖Ĝ‖₂; by Weyl
    |λ̂_i − λ_i| ≤ η, hence |σ̂_i − σ_i| ≤ min(√η, η / (σ̂_i + √max(λ̂_i − η, 0))).
    """
    u = UNIT_ROUNDOFF_F64
    k = accumulation_length(length, chunk)
    gamma = k * u / (1 - k * u)
    norm_g = lam.abs().amax(dim=-1)
    # trace(Ĝ) itself carries relative error ≤ γ_{k+s}: inflate it so it bounds ‖W‖_F²
    fro2 = trace.clamp(min=0) * (1 + 2 * (k + s) * u)
    # eigensolver: |λ̂_i − λ_i(Ĝ)| ≤ p(s)·u·‖Ĝ‖₂; LAPACK's own estimate takes p = 1, we take p = s
    eta = gamma * fro2 + s * u * norm_g
    eta = eta[:, None]
    sig = lam.clamp(min=0).sqrt()
    lower = (lam - eta).clamp(min=0).sqrt()
    denom = sig + lower
    by_ratio = torch.where(denom > 0, eta / torch.where(denom > 0, denom, 1.0), math.inf)
    bound = torch.minimum(eta.sqrt().expand_as(by_ratio), by_ratio)
    sigma1_lower = (lam[:, -1] - eta[:, 0]).clamp(min=0).sqrt()
    return bound, sigma1_lower


def gram_eigvalsh(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    chunk: int,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singular values by float64 Gram + eigvalsh, with per-value error bounds.

    Returns (sigma [B, s] descending, bound [B, s] on each |σ̂_i − σ_i|,
    sigma1_lower [B]) in float64 on `device`; NaN rows where the eigensolver failed.
    """
    length, s = mats[0].shape
    g = gram_upper(mats, device, chunk, scales)
    trace = g.diagonal(dim1=-2, dim2=-1).sum(-1)
    try:
        lam = torch.linalg.eigvalsh(g, UPLO="U")
    except torch.linalg.LinAlgError:
        nan = torch.full((len(mats), s), math.nan, dtype=torch.float64, device=device)
        return nan, nan.clone(), nan[:, 0].clone()
    del g
    bound, sigma1_lower = gram_error_bound(lam, trace, length, chunk, s)
    sigma = lam.clamp(min=0).sqrt().flip(-1)
    return sigma, bound.flip(-1), sigma1_lower


def svdvals(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """LAPACK/cuSOLVER singular values [B, s] (descending) of whole (L, s) matrices in `dtype`."""
    length = mats[0].shape[0]
    x = _scaled(load_block(mats, 0, length, device, dtype), scales)
    return torch.linalg.svdvals(x)


def tsqr_svdvals(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    chunk: int,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Singular values [B, s] via a chunked QR (R of [R; next block], repeatedly), then
    svdvals(R): backward stable like LAPACK on the whole matrix, in bounded memory."""
    length = mats[0].shape[0]
    r = None
    for r0 in range(0, length, chunk):
        c = _scaled(load_block(mats, r0, min(r0 + chunk, length), device, dtype), scales)
        x = c if r is None else torch.cat([r, c], dim=-2)
        r = torch.linalg.qr(x, mode="r").R
        del x, c
    return torch.linalg.svdvals(r)


def gram_bytes(batch: int, length: int, s: int, chunk: int, src_size: int) -> int:
    """Device bytes of `gram_eigvalsh` on `batch` (L, s) matrices read in `chunk`-row blocks."""
    chunk = min(chunk, length)
    per = chunk * s * (src_size + 8) + 2 * s * s * 8 + _EIG_WORK_DOUBLES * s * 8
    return batch * per


def svdvals_bytes(batch: int, length: int, s: int, src_size: int, elem: int) -> int:
    """Device bytes of `svdvals` on `batch` (L, s) matrices (source copy, converted copy,
    the solver's working copy, its workspace)."""
    per = length * s * (src_size + 2 * elem) + s * s * elem + 8 * (length + s) * elem
    return batch * per


def tsqr_bytes(batch: int, length: int, s: int, chunk: int, src_size: int, elem: int) -> int:
    """Device bytes of `tsqr_svdvals` on `batch` (L, s) matrices read in `chunk`-row blocks."""
    chunk = min(chunk, length)
    rows = min(s, length) + chunk
    per = (
        chunk * s * (src_size + elem)  # the block as read and converted
        + 2 * rows * s * elem  # [R; block] and the QR's working copy
        + 2 * s * s * elem  # R and svdvals' copy of it
        + _EIG_WORK_DOUBLES * (s + rows) * elem
    )
    return batch * per
