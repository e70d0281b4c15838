"""Batched singular-value and singular-vector kernels and their memory and error models
(private to the engine).

Every kernel takes a list of same-shape matrices already *oriented* tall,
(L, s) with L ≥ s (a wide matrix is passed as its transposed view: σ(W) = σ(Wᵀ)),
reads them in row blocks, converts each block on the target device and returns
singular values [B, s] on that device; the vector kernels also return the top-k'
short-side vectors [B, s, k'] and write the long-side ones, block by block, into a
host tensor [B, L, k'] (so that device memory never holds L·k' of them). The error
models are derived in docs/methods.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch

# unit roundoff of IEEE float64 (round to nearest)
UNIT_ROUNDOFF_F64 = 2.0**-53

# working space of the eigen/QR solvers, in elements per row (an over-estimate)
_EIG_WORK_DOUBLES = 64

# working space of the solvers with vectors, in s×s squares: syevd with vectors needs
# 1 + 6s + 2s² doubles, gesdd (thin) about 3s² + 4s + max(L, …) (LAPACK's LWORK formulas)
_EIGH_WORK_SQUARES = 2
_SVD_WORK_SQUARES = 4


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
    if len(blocks) == 1:
        x = blocks[0].unsqueeze(0).to(device=device)
    elif device.type != "cpu" and blocks[0].device.type == "cpu":
        # stacked on the device, where the copy is free, not on the host: on an H200 a
        # batched revision was slower than a matrix-by-matrix loop (docs/benchmarks.md#gpu)
        x = torch.stack([b.to(device=device) for b in blocks])
    else:
        x = torch.stack(blocks).to(device=device)
    x = x.to(dtype=dtype)
    return x.mT if transposed else x


def scaled_block(
    mats: Sequence[torch.Tensor],
    r0: int,
    r1: int,
    device: torch.device,
    dtype: torch.dtype,
    scales: torch.Tensor | None,
) -> torch.Tensor:
    """`load_block` times the items' scales, scaled before any narrowing to `dtype`: a
    float64 entry near 1e250 overflows float32 unless it is scaled first."""
    if scales is None or dtype == torch.float64:
        return _scaled(load_block(mats, r0, r1, device, dtype), scales)
    return _scaled(load_block(mats, r0, r1, device, torch.float64), scales).to(dtype)


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


def _gram_eigen(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    chunk: int,
    scales: torch.Tensor | None,
    k: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(λ [B, s] ascending or None if the eigensolver failed, the eigenvectors of the k
    largest [B, s, k] ascending or None when k = 0, trace(Ĝ) [B]) of the float64 Gram
    matrices."""
    g = gram_upper(mats, device, chunk, scales)
    trace = g.diagonal(dim1=-2, dim2=-1).sum(-1)
    if k and g.device.type == "cpu" and g.shape[-1] >= SCIPY_EIGEN_MIN:
        solved = top_eigh_lapack(g, k)
        if solved is not None:
            return solved[0], solved[1], trace
    # small eigenproblems of a GPU batch are solved by LAPACK on the host (HOST_EIGEN_RANGE)
    on_host = g.is_cuda and HOST_EIGEN_RANGE[0] <= g.shape[-1] <= HOST_EIGEN_RANGE[1]
    a = g.cpu() if on_host else g
    try:
        with small_problem_threads(a.shape[-1], a.device):
            if k:
                lam, vecs = torch.linalg.eigh(a, UPLO="U")
                vecs = vecs[..., a.shape[-1] - k :]
            else:
                lam, vecs = torch.linalg.eigvalsh(a, UPLO="U"), None
    except torch.linalg.LinAlgError:
        return None, None, trace
    if on_host:
        lam = lam.to(g.device)
        vecs = None if vecs is None else vecs.to(g.device)
    return lam, vecs, trace


# From this size on, a CPU Gram matrix's top-k eigenvectors come from scipy's LAPACK
# (``top_eigh_lapack``): all s eigenvalues and only k eigenvectors, where torch's ``eigh``
# (syevd) computes all s. Measured on 2 shared cores, one thread, k = 100 (docs/methods.md):
# s = 768 36 ms against 93 ms (``eigvalsh`` alone: 45 ms); s = 256 4.1 ms against 6.2 ms;
# s = 192 2.6 ms each; s = 128 1.5 ms against 1.1 ms, hence torch below.
SCIPY_EIGEN_MIN = 192

# scipy's BLAS threads for its eigensolver: one up to this size (two threads on 2 shared
# cores: s = 768 in 170–400 ms against 36–54 ms with one; s = 2048 1.06 s against 0.57 s),
# torch's thread count above it.
_LAPACK_ONE_THREAD = 2048


def top_eigh_lapack(g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All eigenvalues and the top-k eigenvectors of CPU Gram matrices by scipy's LAPACK.

    g: float64 [B, s, s] on the CPU, upper triangle valid (``gram_upper``); k ≤ s.
    Returns (λ [B, s] ascending, eigenvectors of the k largest eigenvalues [B, s, k] in
    ascending order), float64 on the CPU, or None when scipy is missing or LAPACK reports
    a failure (the caller then uses torch's ``eigh``). Per matrix: one Householder
    tridiagonalisation Q·T·Qᵀ (dsytrd, backward stable like syevd), all eigenvalues of T
    (dsterf), the k eigenvectors of T by inverse iteration (dstein, reorthogonalised
    within clusters), and Q applied to those k only (dormqr): ``eigvalsh``'s work plus
    O(s²k), where ``eigh`` adds O(s³).
    """
    try:
        from scipy.linalg import lapack
    except ImportError:
        return None
    s = g.shape[-1]
    lams, vecs = [], []
    with lapack_threads(s):
        for b in range(g.shape[0]):
            # the row-major upper triangle is, read column-major, a lower one: no copy
            solved = _top_eigh_one(lapack, g[b].numpy().T, k)
            if solved is None:
                return None
            lams.append(solved[0])
            vecs.append(solved[1])
    return torch.from_numpy(np.stack(lams)), torch.from_numpy(np.stack(vecs))


def _top_eigh_one(lapack, a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(λ [s] ascending, top-k eigenvectors [s, k] ascending) of one matrix whose lower
    triangle (column-major) holds it, or None on a LAPACK failure."""
    s = a.shape[0]
    lwork = int(lapack.dsytrd_lwork(s, lower=1)[0])
    c, d, e, tau, info = lapack.dsytrd(a, lower=1, lwork=max(lwork, 1))
    if info != 0:
        return None
    lam, info = lapack.dsterf(d, e)
    if info != 0:
        return None
    # where T splits into blocks, dstein needs each eigenvalue's block: bisection gives
    # them (dstebz); else the top k of dsterf's values serve directly
    _, _, _, isplit, info = lapack.dstebz(d, e, 3, 0.0, 0.0, s, s, 0.0, "B")
    if info != 0:
        return None
    if int(isplit[0]) == s:
        w = np.ascontiguousarray(lam[s - k :])
        iblock = np.ones(s, dtype=np.int32)
    else:
        m, w, iblock, isplit, info = lapack.dstebz(d, e, 3, 0.0, 0.0, s - k + 1, s, 0.0, "B")
        if info != 0 or m < k:
            return None
        w, iblock = w[:m], iblock
    z, info = lapack.dstein(d, e, w, iblock, isplit)
    if info != 0:
        return None
    if len(w) != k or np.any(np.diff(w) < 0):
        # by block, not by value: sort, and keep the k largest
        z = z[:, np.argsort(w, kind="stable")[len(w) - k :]]
    if s > 1:
        # x = Q·z with Q = H(1)…H(s−1) held below the subdiagonal, as dormtr (UPLO=L) does
        z = np.asfortranarray(z)
        top, _, info = lapack.dormqr("L", "N", c[1:, : s - 1], tau, z[1:], 64 * k + 4160)
        if info != 0:
            return None
        z[1:] = top
    return lam, z


_CONTROLLER: list = []


@contextlib.contextmanager
def lapack_threads(size: int):
    """scipy's BLAS/LAPACK on one thread for a problem of this size (≤ ``_LAPACK_ONE_THREAD``),
    else on ``torch.get_num_threads()``; unchanged when threadpoolctl is missing."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        yield
        return
    if not _CONTROLLER:
        # created once scipy is loaded, so that it finds scipy's BLAS (≈ 3 ms a time)
        _CONTROLLER.append(ThreadpoolController())
    threads = 1 if size <= _LAPACK_ONE_THREAD else torch.get_num_threads()
    with _CONTROLLER[0].limit(limits=threads, user_api="blas"):
        yield


# cuSOLVER's batched eigensolver is a Jacobi kernel up to n = 32 and a loop of syevd
# above it, whose launches and host round trips dwarf the work on small matrices (pytorch
# #86234). Measured on an H200 (docs/benchmarks.md#gpu), a batch of 32: n = 32 on the GPU
# 0.3 ms (host 3.1 ms); n = 64 22 ms (host 10 ms); n = 80 33 ms (host 15 ms); n = 128
# 49 ms (host 45 ms); n = 256 64 ms (host 160 ms). Gram matrices in this range (per-head
# slices, small layers) are moved to the host, solved by LAPACK and moved back.
HOST_EIGEN_RANGE = (33, 128)


# LAPACK on a few hundred rows gains nothing from threads, and on a busy machine the
# threads' spin-waiting costs far more than the work (measured, 2 cores under load:
# batched eigh of 8 matrices 96×96 in 158 ms with 2 threads, 6 ms with 1).
_SMALL_PROBLEM = 256


@contextlib.contextmanager
def small_problem_threads(size: int, device: torch.device, limit: int = _SMALL_PROBLEM):
    """One CPU thread for the duration when the problem is small (`size` ≤ `limit`: the
    short side for a factorisation, the element count of a matrix for products)."""
    if device.type != "cpu" or size > limit or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _nan(device: torch.device, *shape: int) -> torch.Tensor:
    """A float64 NaN tensor: the result rows of a failed eigensolver."""
    return torch.full(shape, math.nan, dtype=torch.float64, device=device)


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
    lam, _, trace = _gram_eigen(mats, device, chunk, scales, 0)
    if lam is None:
        return _nan(device, len(mats), s), _nan(device, len(mats), s), _nan(device, len(mats))
    bound, sigma1_lower = gram_error_bound(lam, trace, length, chunk, s)
    sigma = lam.clamp(min=0).sqrt().flip(-1)
    return sigma, bound.flip(-1), sigma1_lower


def gram_eigh(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    chunk: int,
    k: int,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singular values and top-k short-side vectors by float64 Gram + a symmetric eigensolver.

    Returns (sigma [B, s] descending, bound [B, s] on each |σ̂_i − σ_i|,
    sigma1_lower [B], trace(Ĝ) [B], short [B, s, k] the eigenvectors of the k
    largest eigenvalues, descending), float64 on `device`; NaN rows where the
    eigensolver failed. On a CPU from s = ``SCIPY_EIGEN_MIN`` on, only those k
    eigenvectors are computed (``top_eigh_lapack``); else torch's ``eigh`` computes
    all and the other s − k are dropped at once.
    """
    length, s = mats[0].shape
    lam, vecs, trace = _gram_eigen(mats, device, chunk, scales, k)
    if lam is None or vecs is None:
        nan = _nan(device, len(mats), s)
        return nan, nan.clone(), nan[:, 0].clone(), trace, _nan(device, len(mats), s, k)
    short = vecs.flip(-1).contiguous()
    del vecs
    bound, sigma1_lower = gram_error_bound(lam, trace, length, chunk, s)
    return lam.clamp(min=0).sqrt().flip(-1), bound.flip(-1), sigma1_lower, trace, short


def long_side(
    mats: Sequence[torch.Tensor],
    short: torch.Tensor,
    device: torch.device,
    chunk: int,
    out: torch.Tensor,
    scales: torch.Tensor | None = None,
    residual: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Y = A·V of (L, s) matrices and short-side vectors V [B, s, k] (on `device`), written
    row block by row block into `out` [B, L, k] (float64, any device: the host keeps
    device memory at O(chunk·k)). With `residual`, also returns Z = AᵀY [B, s, k] and
    YᵀY [B, k, k] accumulated in the same pass (float64, on `device`), else (None, None)."""
    length, s = mats[0].shape
    k = short.shape[-1]
    z = yty = None
    if residual:
        z = torch.zeros(len(mats), s, k, dtype=torch.float64, device=device)
        yty = torch.zeros(len(mats), k, k, dtype=torch.float64, device=device)
    for r0 in range(0, length, chunk):
        r1 = min(r0 + chunk, length)
        c = _scaled(load_block(mats, r0, r1, device, torch.float64), scales)
        y = torch.bmm(c, short)
        if z is not None and yty is not None:
            z.baddbmm_(c.mT, y)
            yty.baddbmm_(y.mT, y)
        out[:, r0:r1].copy_(y)
        del c, y
    return z, yty


def triplet_check(
    sigma: torch.Tensor,
    short: torch.Tensor,
    z: torch.Tensor,
    yty: torch.Tensor,
    trace: torch.Tensor,
    length: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A-posteriori check of the Gram route's top-k triplets (σ̂_i, û_i = y_i/‖y_i‖, v̂_i).

    sigma: [B, k] σ̂ of the returned vectors; short: [B, s, k] v̂; z, yty: from
    ``long_side``; trace: [B] trace(Ĝ). Returns (residual [B, k]: √(‖Av̂ − σ̂û‖² +
    ‖Aᵀû − σ̂v̂‖²) plus the rounding of computing it, max |ÛᵀÛ − I| [B], ‖y_i‖ [B, k]);
    NaN where some ‖y_i‖ = 0. Av̂ − σ̂û = (‖y‖ − σ̂)·û and Aᵀû − σ̂v̂ = z/‖y‖ − σ̂v̂; the
    check's own rounding (Y = AV̂: ≤ γ_s‖A‖_F per column; Z = AᵀY, block-accumulated:
    ≤ γ_k‖A‖_F‖y‖ + γ_s‖A‖_F², divided by ‖y‖ for û) is added (docs/methods.md).
    """
    s = short.shape[-2]
    norms = yty.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
    safe = torch.where(norms > 0, norms, math.nan)
    r_long = (norms - sigma).abs()
    r_short = torch.linalg.vector_norm(z / safe[:, None, :] - short * sigma[:, None, :], dim=-2)
    u = UNIT_ROUNDOFF_F64
    fro2 = (trace.clamp(min=0) * (1 + 2 * (length + s) * u))[:, None]
    k_acc = accumulation_length(length, chunk)
    check = 1.01 * u * (k_acc * fro2.sqrt() + s * fro2.sqrt() + s * fro2 / safe)
    residual = torch.sqrt(r_long**2 + r_short**2) + check
    gram_u = yty / (safe[:, :, None] * safe[:, None, :])
    gram_u.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    return residual, gram_u.abs().amax(dim=(-2, -1)), norms


def orthonormality(v: torch.Tensor) -> torch.Tensor:
    """max |VᵀV − I| [B] of column blocks v [B, n, k] (float64): how far the returned
    short-side vectors are from orthonormal (an eigensolver's own guarantee, checked)."""
    gram = v.mT @ v
    gram.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    return gram.abs().amax(dim=(-2, -1))


def svdvals(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """LAPACK/cuSOLVER singular values [B, s] (descending) of whole (L, s) matrices in `dtype`."""
    length = mats[0].shape[0]
    x = scaled_block(mats, 0, length, device, dtype, scales)
    with small_problem_threads(x.shape[-1], device):
        return solver_svdvals(x)


def solver_svdvals(x: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.svdvals`` of x [B, L, s], with cuSOLVER's QR-iteration driver for float32.

    cuSOLVER's default route (Jacobi, gesvdj) stops at a tolerance that left float32
    values up to 2.1e-4·σ1 off on an H200 (docs/benchmarks.md#gpu), above the float32
    contract, and was 1.5× slower than gesvd (backward stable QR iteration) in float64
    on 10240×2560; gesvd is used for both.
    """
    if x.is_cuda:
        return torch.linalg.svdvals(x, driver="gesvd")
    return torch.linalg.svdvals(x)


def tsqr_r(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    chunk: int,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """The R factor [B, s, s] of (L, s) matrices by a chunked QR (R of [R; next block],
    repeatedly): backward stable like a QR of the whole matrix, in bounded memory."""
    length = mats[0].shape[0]
    first = scaled_block(mats, 0, min(chunk, length), device, dtype, scales)
    r = torch.linalg.qr(first, mode="r").R
    del first
    for r0 in range(chunk, length, chunk):
        c = scaled_block(mats, r0, min(r0 + chunk, length), device, dtype, scales)
        x = torch.cat([r, c], dim=-2)
        del c
        r = torch.linalg.qr(x, mode="r").R
        del x
    return r


def tsqr_svdvals(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    chunk: int,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Singular values [B, s] via a chunked QR (``tsqr_r``), then svdvals(R): backward
    stable like LAPACK on the whole matrix, in bounded memory."""
    return solver_svdvals(tsqr_r(mats, device, dtype, chunk, scales))


def svd_chain(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin float64 SVD (U [B, L, s], σ [B, s], Vᴴ [B, s, s]) of x [B, L, s], robust to
    non-convergence.

    MKL's divide-and-conquer (gesdd) can fail to converge on large clusters of tiny
    repeated values in one orientation and not the other (measured: 1024×512 with 256
    values at 1e-8), so a failed batch is retried matrix by matrix: as is (if the batch
    held several), transposed, then with numpy's LAPACK. Results are on x's device, or
    on the CPU after a retry. Raises ``torch.linalg.LinAlgError`` naming both failures
    when numpy fails too.
    """
    try:
        with small_problem_threads(min(x.shape[-2:]), x.device):
            left, sigma, right_h = torch.linalg.svd(x, full_matrices=False)
        return left, sigma, right_h
    except torch.linalg.LinAlgError as exc:
        failure = str(exc).splitlines()[0][:120]
    parts = [_svd_retry(a, failure, retry_as_is=len(x) > 1) for a in x]
    left, sigma, right_h = (torch.stack(p) for p in zip(*parts, strict=True))
    return left, sigma, right_h


def _svd_retry(
    a: torch.Tensor, failure: str, retry_as_is: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of one matrix after a failure: torch (as is, then transposed), then numpy."""
    if retry_as_is:
        try:
            left, sigma, right_h = torch.linalg.svd(a, full_matrices=False)
            return left.cpu(), sigma.cpu(), right_h.cpu()
        except torch.linalg.LinAlgError:
            pass
    try:
        left_t, sigma, right_th = torch.linalg.svd(a.mT, full_matrices=False)
        return right_th.mT.cpu(), sigma.cpu(), left_t.mT.cpu()
    except torch.linalg.LinAlgError:
        pass
    try:
        left_np, sigma_np, right_h_np = np.linalg.svd(a.cpu().numpy(), full_matrices=False)
    except np.linalg.LinAlgError as exc:
        raise torch.linalg.LinAlgError(
            f"torch: {failure}; numpy: {str(exc).splitlines()[0][:120]}"
        ) from exc
    return torch.from_numpy(left_np), torch.from_numpy(sigma_np), torch.from_numpy(right_h_np)


def svd_vectors(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    k: int,
    out: torch.Tensor,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and top-k vectors by float64 LAPACK (cuSOLVER) thin SVD of whole
    (L, s) matrices (``svd_chain``). Returns (sigma [B, s] descending, short [B, s, k]);
    writes the long-side vectors into `out` [B, L, k]."""
    length = mats[0].shape[0]
    x = _scaled(load_block(mats, 0, length, device, torch.float64), scales)
    left, sigma, right_h = svd_chain(x)
    del x
    out.copy_(left[..., :k])
    return sigma, right_h[..., :k, :].mT


def tsqr_svd_vectors(
    mats: Sequence[torch.Tensor],
    device: torch.device,
    chunk: int,
    k: int,
    out: torch.Tensor,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and top-k vectors in bounded memory: R by a chunked QR, the SVD of
    R (σ and the short-side vectors v_i, backward stable), then the long-side vectors
    A·v_i/‖A·v_i‖ over row blocks into `out` [B, L, k]. Returns (sigma [B, s], short
    [B, s, k]). A long-side vector's error grows like u·σ1/σ_i (docs/methods.md); one
    with A·v_i = 0 exactly is NaN."""
    r = tsqr_r(mats, device, torch.float64, chunk, scales)
    _, sigma, right_h = svd_chain(r)
    del r
    short = right_h[..., :k, :].mT.to(device).contiguous()
    long_side(mats, short, device, chunk, out, scales)
    out.div_(torch.linalg.vector_norm(out, dim=-2, keepdim=True))
    return sigma, short


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


def gram_eigh_bytes(batch: int, length: int, s: int, chunk: int, src_size: int, k: int) -> int:
    """Device bytes of ``gram_eigh`` + ``long_side`` on `batch` (L, s) matrices read in
    `chunk`-row blocks, keeping k vectors: independent of L beyond one block."""
    chunk = min(chunk, length)
    k = min(k, s)
    per = (
        chunk * s * (src_size + 8)  # the block as read and converted
        + (2 + _EIGH_WORK_SQUARES) * s * s * 8  # Ĝ, its eigenvectors, eigh's workspace
        + _EIG_WORK_DOUBLES * s * 8
        + (2 * s * k + k * k + chunk * k) * 8  # top-k eigenvectors, Z = AᵀY, YᵀY, a block of Y
    )
    return batch * per


def svd_bytes(batch: int, length: int, s: int, src_size: int, k: int) -> int:
    """Device bytes of ``svd_vectors`` on `batch` (L, s) matrices (source copy, float64
    copy, the solver's working copy and U, the top k of U on their way to the host,
    Vᴴ and the solver's workspace)."""
    k = min(k, s)
    per = (
        length * s * (src_size + 3 * 8)
        + length * k * 8
        + (1 + _SVD_WORK_SQUARES) * s * s * 8
        + 8 * (length + s) * 8
    )
    return batch * per


def tsqr_svd_bytes(batch: int, length: int, s: int, chunk: int, src_size: int, k: int) -> int:
    """Device bytes of ``tsqr_svd_vectors`` on `batch` (L, s) matrices read in `chunk`-row
    blocks: the chunked QR, the SVD of R (U, Vᴴ, workspace) and the long-side pass."""
    chunk = min(chunk, length)
    k = min(k, s)
    per = (
        tsqr_bytes(1, length, s, chunk, src_size, 8)
        + ((2 + _SVD_WORK_SQUARES) * s * s + s * k + chunk * k) * 8
    )
    return batch * per
