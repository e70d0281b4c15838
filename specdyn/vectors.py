"""Top-k singular vectors and the vector metrics built on them (Eq. 3–5;
docs/metrics.md#vector-metrics).

    top = top_singular_vectors(w, k=100)          # TopK(sigma [R], u [m, k'], v [n, k'], method)
    a = alignment_diagonal(top_i.u, top_next.v)   # A_ii, Eq. 3, for the pair (W_i, W_{i+1})
    alignment_score(a)                            # a(t), Eq. 4: mean of the first 10
    s = agreement_diagonal(t.u, t.v, ref.u, ref.v)  # S_ii, Eq. 5, against a reference step
    agreement_score(s)                            # s(t)

The vectors are computed by the engine, ``SpectrumEngine.top_vectors`` (batched by
shape, within ``max_memory``); ``top_singular_vectors`` is its one-matrix form.
``TopK`` and ``VECTOR_METHODS`` are defined in ``specdyn.engine`` and re-exported here.
Methods (``TopK.method``; accuracy derived in docs/methods.md, "Singular vectors"):
``gram-eigh-f64`` (float64 Gram, all its eigenvalues and its top-k eigenvectors, kept
only when an a-posteriori check of the values, the triplet residuals and the
orthonormality passes), ``gram-eigh-svdvals-f64`` (its vectors with float64 LAPACK's
values, where only the values' bound fails), ``svd-f64`` (float64
LAPACK thin SVD: ``exact=True`` and the fallback), ``tsqr-svd-f64`` (the same in
bounded memory, under a ``max_memory`` too small for a whole copy), ``nonfinite`` and
``zero`` (nothing computed, vectors NaN).

Signs of singular vectors are arbitrary (every metric here takes absolute values).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .engine import VECTOR_METHODS, SpectrumEngine, TopK

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


def top_singular_vectors(
    w: torch.Tensor, k: int, *, device: str = "cpu", exact: bool = False
) -> TopK:
    """All singular values and the top-k singular vectors of a 2-D tensor.

    ``SpectrumEngine(device=device, exact=exact).top_vectors([w], k)[0]``. w: 2-D tensor
    (m, n) of float16, bfloat16, float32 or float64, any strides, wide or tall; computed
    from its values converted exactly to float64. k: number of vectors wanted (≥ 1;
    capped at R = min(m, n)). device: "cpu" | "cuda" | "cuda:N" | "auto". exact: skip
    the Gram route and use float64 LAPACK SVD directly.
    Returns ``TopK`` (numpy float64 on the CPU). Accuracy: σ within 1e-6·σ1 of float64
    LAPACK; each returned triplet (σ_i, u_i, v_i) has residual
    ‖W v_i − σ_i u_i‖² + ‖Wᵀu_i − σ_i v_i‖² ≤ (1e-6·σ1)² (measured, or LAPACK's own),
    so by Wedin's theorem each vector is within angle ≈ 1e-6·σ1/gap_i of the exact one
    (gap_i: distance from σ_i to the other singular values). Raises ``EngineError`` for a
    non-2-D or non-floating tensor, k < 1, or an invalid device.
    """
    return SpectrumEngine(device=device, exact=exact).top_vectors([w], k)[0]


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
