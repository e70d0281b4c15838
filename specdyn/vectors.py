"""Top-k singular vectors and the vector metrics built on them (SPEC §2, Eq. 3–5).

    top = top_singular_vectors(w, k=100)          # TopK(sigma [R], u [m, k'], v [n, k'], method)
    a = alignment_diagonal(top_i.u, top_next.v)   # A_ii, Eq. 3, for the pair (W_i, W_{i+1})
    alignment_score(a)                            # a(t), Eq. 4: mean of the first 10
    s = agreement_diagonal(t.u, t.v, ref.u, ref.v)  # S_ii, Eq. 5, against a reference step
    agreement_score(s)                            # s(t)

Methods of ``top_singular_vectors`` (recorded as ``TopK.method``; accuracy derived
in docs/methods.md, "Singular vectors"):

- ``gram-eigh-f64``: the float64 Gram matrix of the short side (accumulated over
  row blocks like the values-only engine), ``eigh`` for all eigenvalues and
  eigenvectors; the short side's top-k vectors are eigenvectors, the long side's
  are A·v_i normalised. Accepted only when an a-posteriori check passes: the
  engine's bound certifies every σ within 1e-6·σ1, the measured residual of every
  returned triplet is ≤ 1e-6·σ1 and the returned long-side vectors are orthonormal
  within 1e-6.
- ``svd-f64``: float64 ``torch.linalg.svd(full_matrices=False)`` of the tall
  orientation: ``exact=True`` and the Gram route's fallback.
- ``nonfinite`` (NaN/Inf in the matrix: everything NaN) and ``zero`` (all-zero
  or empty matrix: σ = 0, vectors NaN since none is defined).

Signs of singular vectors are arbitrary (every metric here takes absolute values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import _linalg
from .engine import _gram_chunk, _resolve_device
from .errors import EngineError

__all__ = [
    "TopK",
    "VECTOR_METHODS",
    "top_singular_vectors",
    "alignment_matrix",
    "alignment_diagonal",
    "alignment_score",
    "agreement_matrix",
    "agreement_diagonal",
    "agreement_score",
]

VECTOR_METHODS = ("gram-eigh-f64", "svd-f64", "nonfinite", "zero")

# Backward-error tolerance of the Gram route, relative to σ1 (SPEC §7's value accuracy).
_TOLERANCE = 1e-6

# float64 sources beyond 2^±200 are scaled by a power of two (exact) before squaring.
_SAFE_MAX_EXPONENT = 200


@dataclass(frozen=True, eq=False)
class TopK:
    """All singular values and the top-k singular vectors of one matrix W (m, n).

    sigma: float64 [R], R = min(m, n), descending (NaN for a nonfinite matrix, 0 for a
    zero one); u: float64 [m, k'] left singular vectors (columns), v: float64 [n, k']
    right singular vectors, k' = min(k, R), so that W ≈ Σ_i sigma[i]·u[:, i]·v[:, i]ᵀ;
    signs arbitrary; NaN for "nonfinite" and "zero". method: one of ``VECTOR_METHODS``.
    """

    sigma: np.ndarray
    u: np.ndarray
    v: np.ndarray
    method: str


def top_singular_vectors(
    w: torch.Tensor, k: int, *, device: str = "cpu", exact: bool = False
) -> TopK:
    """All singular values and the top-k singular vectors of a 2-D tensor.

    w: 2-D tensor (m, n) of float16, bfloat16, float32 or float64, any strides, wide or
    tall; computed from its values converted exactly to float64. k: number of vectors
    wanted (≥ 1; capped at R = min(m, n)). device: "cpu" | "cuda" | "cuda:N" | "auto".
    exact: skip the Gram route and use float64 LAPACK SVD directly.
    Returns ``TopK`` (numpy float64 on the CPU). Accuracy: σ within 1e-6·σ1 of float64
    LAPACK; each returned triplet (σ_i, u_i, v_i) has residual
    ‖W v_i − σ_i u_i‖² + ‖Wᵀu_i − σ_i v_i‖² ≤ (1e-6·σ1)² (measured, or LAPACK's own),
    so by Wedin's theorem each vector is within angle ≈ 1e-6·σ1/gap_i of the exact one
    (gap_i: distance from σ_i to the other singular values). Raises ``EngineError`` for a
    non-2-D or non-floating tensor, k < 1, or an invalid device.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise EngineError(
            f"singular vectors need a 2-D floating torch.Tensor, got {shape}"
            + (f" of {w.dtype}" if isinstance(w, torch.Tensor) else "")
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EngineError(f"k={k!r} is not a positive number of singular vectors")
    dev = _resolve_device(device)
    m, n = (int(d) for d in w.shape)
    rank = min(m, n)
    kk = min(k, rank)
    if w.numel() == 0:
        return _undefined(m, n, kk, np.zeros(rank), "zero")
    top = float(torch.amax(w))
    bottom = float(torch.amin(w))
    if not (math.isfinite(top) and math.isfinite(bottom)):
        return _undefined(m, n, kk, np.full(rank, np.nan), "nonfinite")
    if top == 0.0 and bottom == 0.0:
        return _undefined(m, n, kk, np.zeros(rank), "zero")
    scale = 1.0
    exponent = math.frexp(max(abs(top), abs(bottom)))[1]
    if abs(exponent) > _SAFE_MAX_EXPONENT:
        scale = math.ldexp(1.0, max(-1000, min(1000, -exponent)))
    tall = _linalg.oriented(w)
    wide = m < n
    result = None if exact else _gram_vectors(tall, kk, dev, scale)
    method = "gram-eigh-f64"
    if result is None:
        result = _svd_vectors(tall, kk, dev, scale)
        method = "svd-f64"
    sigma, long_vecs, short_vecs = result
    sigma = np.ascontiguousarray(np.maximum(sigma, 0.0) / scale)
    # tall A = W: long side = rows (u), short = columns (v); wide A = Wᵀ: the reverse
    u, v = (short_vecs, long_vecs) if wide else (long_vecs, short_vecs)
    return TopK(sigma, np.ascontiguousarray(u), np.ascontiguousarray(v), method)


def _undefined(m: int, n: int, kk: int, sigma: np.ndarray, method: str) -> TopK:
    """A TopK with the given values and NaN vectors (no vector is defined)."""
    return TopK(sigma, np.full((m, kk), np.nan), np.full((n, kk), np.nan), method)


def _gram_vectors(
    tall: torch.Tensor, kk: int, device: torch.device, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(σ [s], long-side vectors [L, k'], short-side vectors [s, k']) by the float64 Gram
    route, or None when its a-posteriori check fails."""
    length, s = tall.shape
    chunk = _gram_chunk(length, device)
    scales = None if scale == 1.0 else torch.tensor([scale], dtype=torch.float64)
    g = _linalg.gram_upper([tall], device, chunk, scales)
    trace = g.diagonal(dim1=-2, dim2=-1).sum(-1)
    try:
        lam, vecs = torch.linalg.eigh(g, UPLO="U")
    except torch.linalg.LinAlgError:
        return None
    del g
    bound, sigma1_lower = _linalg.gram_error_bound(lam, trace, length, chunk, s)
    sigma1_low = float(sigma1_lower[0])
    if not bool(torch.isfinite(lam).all()) or float(bound.amax()) > _TOLERANCE * sigma1_low:
        return None
    sigma = lam[0].clamp(min=0).sqrt().flip(0)
    short = vecs[0].flip(-1)[:, :kk].contiguous()  # top-k eigenvectors, descending
    # One pass over row blocks: Y = A·V (long side, unnormalised) and Z = Aᵀ·Y.
    y = torch.empty(length, kk, dtype=torch.float64, device=device)
    z = torch.zeros(s, kk, dtype=torch.float64, device=device)
    for r0 in range(0, length, chunk):
        r1 = min(r0 + chunk, length)
        block = _float64_rows(tall, r0, r1, device, scales)
        y[r0:r1] = block @ short
        z.addmm_(block.mT, y[r0:r1])
    norms = torch.linalg.vector_norm(y, dim=0)
    if bool((norms <= 0).any()):
        return None
    long_vecs = y / norms
    top_sigma = sigma[:kk]
    # residuals of (σ̂_i, û_i = y_i/‖y_i‖, v̂_i): A v̂ − σ̂ û = (‖y‖ − σ̂)·û; Aᵀû − σ̂ v̂ = z/‖y‖ − σ̂ v̂
    r_long = (norms - top_sigma).abs()
    r_short = torch.linalg.vector_norm(z / norms - short * top_sigma, dim=0)
    residual = torch.sqrt(r_long**2 + r_short**2)
    # rounding of the check itself: Y = A·V̂ carries ≤ γ_s·‖A‖_F per column, Z = AᵀY
    # (block-accumulated) ≤ γ_k·‖A‖_F·‖y‖ + ‖A‖_F·γ_s·‖A‖_F; divided by ‖y‖ for û
    u64 = _linalg.UNIT_ROUNDOFF_F64
    fro2 = float(trace[0]) * (1 + 2 * (length + s) * u64)
    k_acc = _linalg.accumulation_length(length, chunk)
    check_error = 1.01 * u64 * (k_acc * math.sqrt(fro2) + s * math.sqrt(fro2) + s * fro2 / norms)
    limit = _TOLERANCE * sigma1_low
    if float((residual + check_error).amax()) > limit:
        return None
    gram_u = long_vecs.mT @ long_vecs
    gram_u.diagonal().sub_(1.0)
    if float(gram_u.abs().amax()) > _TOLERANCE:
        return None
    return (
        sigma.cpu().numpy(),
        long_vecs.cpu().numpy(),
        short.cpu().numpy(),
    )


def _float64_rows(
    tall: torch.Tensor, r0: int, r1: int, device: torch.device, scales: torch.Tensor | None
) -> torch.Tensor:
    """Rows r0:r1 of the tall matrix as a float64 [r1-r0, s] tensor on `device`, scaled."""
    return _linalg._scaled(_linalg.load_block([tall], r0, r1, device, torch.float64), scales)[0]


def _svd_vectors(
    tall: torch.Tensor, kk: int, device: torch.device, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(σ [s], long-side vectors [L, k'], short-side vectors [s, k']) by float64 LAPACK SVD."""
    scales = None if scale == 1.0 else torch.tensor([scale], dtype=torch.float64)
    a = _float64_rows(tall, 0, tall.shape[0], device, scales)
    # MKL's divide-and-conquer (gesdd) can fail to converge on large clusters of tiny
    # repeated values in one orientation and not the other (measured: 1024×512 with 256
    # values at 1e-8); numpy's LAPACK is the last resort.
    failure = ""
    try:
        left, sigma, right_h = torch.linalg.svd(a, full_matrices=False)
        return (
            sigma.cpu().numpy(),
            left[:, :kk].cpu().numpy(),
            right_h[:kk].mT.cpu().numpy(),
        )
    except torch.linalg.LinAlgError as exc:
        failure = str(exc).splitlines()[0][:120]
    try:
        left_t, sigma, right_th = torch.linalg.svd(a.mT, full_matrices=False)
        return (
            sigma.cpu().numpy(),
            right_th[:kk].mT.cpu().numpy(),
            left_t[:, :kk].cpu().numpy(),
        )
    except torch.linalg.LinAlgError:
        pass
    try:
        left_np, sigma_np, right_h_np = np.linalg.svd(a.cpu().numpy(), full_matrices=False)
    except np.linalg.LinAlgError as exc:
        raise EngineError(
            f"float64 SVD of a {tall.shape[0]}×{tall.shape[1]} matrix did not converge in "
            f"torch ({failure}) nor numpy ({exc}); the matrix is pathological, check it"
        ) from exc
    return sigma_np, left_np[:, :kk], right_h_np[:kk].T


# ------------------------------------------------------------------ metrics


def _as_basis(name: str, x: np.ndarray) -> np.ndarray:
    """A 2-D float64 array of column vectors, or ValueError naming the argument."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of column vectors, got shape {arr.shape}")
    return arr


def _same_space(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """ValueError unless the two bases live in the same space (same number of rows)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} has shape {a.shape} and {name_b} has shape {b.shape}: "
            "their vectors must have the same length (rows)"
        )


def alignment_matrix(u_first: np.ndarray, v_second: np.ndarray) -> np.ndarray:
    """The alignment matrix of a pair (Eq. 3): A_jk = |⟨u_j, v'_k⟩|.

    u_first: float [d, k1], left singular vectors of the first matrix W_i (columns);
    v_second: float [d, k2], right singular vectors of the second W_{i+1}, in the same
    d-dimensional space. Returns float64 [k1, k2]. Raises ValueError when not 2-D or d
    differs.
    """
    u = _as_basis("u_first", u_first)
    v = _as_basis("v_second", v_second)
    _same_space("u_first", u, "v_second", v)
    return np.abs(u.T @ v)


def alignment_diagonal(u_first: np.ndarray, v_second: np.ndarray, k: int = 100) -> np.ndarray:
    """The diagonal A_ii of the alignment matrix for i ≤ min(k, k1, k2).

    Shapes as for ``alignment_matrix``. Returns float64 [min(k, k1, k2)], computed
    without forming the whole matrix.
    """
    u = _as_basis("u_first", u_first)
    v = _as_basis("v_second", v_second)
    _same_space("u_first", u, "v_second", v)
    kk = max(0, min(k, u.shape[1], v.shape[1]))
    return np.abs(np.einsum("dk,dk->k", u[:, :kk], v[:, :kk]))


def alignment_score(diagonal: np.ndarray, top: int = 10) -> float:
    """The alignment score (Eq. 4): mean of the first `top` diagonal entries.

    diagonal: float [k]; fewer than `top` entries: the mean of those there are. Returns
    NaN for an empty diagonal (or when an entry is NaN).
    """
    return _head_mean(diagonal, top)


def agreement_matrix(
    u_t: np.ndarray, v_t: np.ndarray, u_ref: np.ndarray, v_ref: np.ndarray
) -> np.ndarray:
    """The agreement matrix against a reference (Eq. 5): S_ik = |⟨u_i(t), u_k(T)⟩|·|⟨v_i(t), v_k(T)⟩|.

    This equals |⟨u_i(t) v_i(t)ᵀ, u_k(T) v_k(T)ᵀ⟩_F|. u_t: [m, k1], v_t: [n, k1] top
    vectors of W at step t; u_ref: [m, k2], v_ref: [n, k2] those of the same matrix at
    the reference step T (or in another run, for branch agreement). Returns float64
    [k1, k2]. Raises ValueError for mismatched shapes.
    """
    u_t, v_t, u_ref, v_ref = _agreement_inputs(u_t, v_t, u_ref, v_ref)
    return np.abs(u_t.T @ u_ref) * np.abs(v_t.T @ v_ref)


def agreement_diagonal(
    u_t: np.ndarray, v_t: np.ndarray, u_ref: np.ndarray, v_ref: np.ndarray, k: int = 100
) -> np.ndarray:
    """The diagonal S_ii of the agreement matrix for i ≤ min(k, k1, k2).

    Shapes as for ``agreement_matrix``. Returns float64 [min(k, k1, k2)].
    """
    u_t, v_t, u_ref, v_ref = _agreement_inputs(u_t, v_t, u_ref, v_ref)
    kk = max(0, min(k, u_t.shape[1], u_ref.shape[1]))
    left = np.einsum("mk,mk->k", u_t[:, :kk], u_ref[:, :kk])
    right = np.einsum("nk,nk->k", v_t[:, :kk], v_ref[:, :kk])
    return np.abs(left) * np.abs(right)


def agreement_score(diagonal: np.ndarray, top: int = 10) -> float:
    """The agreement score s(t): mean of the first `top` entries of S_ii (NaN if empty)."""
    return _head_mean(diagonal, top)


def _agreement_inputs(
    u_t: np.ndarray, v_t: np.ndarray, u_ref: np.ndarray, v_ref: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated float64 bases for the agreement: same spaces, paired column counts."""
    u_t = _as_basis("u_t", u_t)
    v_t = _as_basis("v_t", v_t)
    u_ref = _as_basis("u_ref", u_ref)
    v_ref = _as_basis("v_ref", v_ref)
    _same_space("u_t", u_t, "u_ref", u_ref)
    _same_space("v_t", v_t, "v_ref", v_ref)
    for name_u, a, name_v, b in (("u_t", u_t, "v_t", v_t), ("u_ref", u_ref, "v_ref", v_ref)):
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"{name_u} has shape {a.shape} and {name_v} has shape {b.shape}: "
                "they must hold the same number of vectors (columns)"
            )
    return u_t, v_t, u_ref, v_ref


def _head_mean(diagonal: np.ndarray, top: int) -> float:
    """Mean of the first `top` entries of a 1-D array; NaN when there are none."""
    d = np.asarray(diagonal, dtype=np.float64).reshape(-1)[: max(0, int(top))]
    if d.size == 0:
        return math.nan
    return float(d.mean())
