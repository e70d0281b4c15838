"""The spectrum engine: all singular values (and, where asked, the top-k singular vectors)
of many matrices, batched by shape, on a device.

    engine = SpectrumEngine()                       # device="auto", float64 accuracy
    spectra = engine.singular_values([w1, w2, w3])  # list[Spectrum], same order
    spectra[0].sigma, spectra[0].method             # float64 [R] descending, "gram-eigvalsh-f64"
    tops = engine.top_vectors([w1, w2], k=100)      # list[TopK]: sigma [R], u [m, k'], v [n, k']

Methods of ``singular_values`` (recorded per matrix as ``Spectrum.method``;
docs/methods.md derives their accuracy and gives measured times):

- ``gram-eigvalsh-f64``: the default. For W (m, n) with s = min(m, n), the s×s
  Gram matrix (WᵀW or WWᵀ) is accumulated in float64 over row blocks of the
  long side (each block converted on the fly, never the whole matrix), then
  ``eigvalsh`` gives σ = sqrt(λ). Each result is checked against an a-posteriori
  bound on every |Δσ_i| (rounding analysis in docs/methods.md); a matrix whose
  bound exceeds the tolerance (ill-conditioned with a flat top, or rank-deficient
  with a large Frobenius norm) is recomputed with ``svdvals-f64``.
- ``svdvals-f64``: float64 LAPACK (cuSOLVER on a GPU) on the whole matrix, in
  its tall orientation. Used for ``exact=True`` and as the Gram route's fallback.
- ``svdvals-f32``: float32 solver, for ``precision="float32"`` on a GPU whose float64
  is slow (a float32 Gram would not meet 1e-4·σ1); a GPU with full-rate float64
  (``fast_float64``: A100, H100, …) keeps ``gram-eigvalsh-f64``, faster and more accurate.
- ``tsqr-svdvals-f64`` / ``tsqr-svdvals-f32``: a QR accumulated over row blocks,
  then the solver on the s×s R factor: the two above when a whole float64
  (float32) copy of the matrix does not fit ``max_memory``.
- ``nonfinite`` (NaN/Inf in the matrix: σ all NaN, nothing computed) and
  ``zero`` (all-zero matrix: σ all 0).

Methods of ``top_vectors`` (``TopK.method``, one of ``VECTOR_METHODS``; always
float64, whatever the precision):

- ``gram-eigh-f64``: the same float64 Gram matrix, all its eigenvalues and its top-k
  eigenvectors (short side): on a CPU from s = 192 on only those k are computed
  (scipy's LAPACK: tridiagonalisation, inverse iteration, k back-transformations),
  else batched ``eigh`` and the rest dropped; the long side's are A·v_i, formed over
  row blocks and sent to the host block by block. Kept only when an a-posteriori
  check passes (σ bound, measured triplet residuals, orthonormality of both sides),
  else ``svd-f64``.
- ``gram-eigh-svdvals-f64``: the Gram route's vectors with float64 LAPACK's values
  (``svdvals-f64``, as values-only computes them) where the σ bound does not certify
  every value (σ_min near 0, a flat top) but every returned triplet passes the
  residual and orthonormality checks, re-checked against LAPACK's values: the
  fallback of the values alone, not a full SVD.
- ``svd-f64``: float64 LAPACK thin SVD of the whole matrix (``exact=True``, and
  the Gram route's fallback where its triplets fail).
- ``tsqr-svd-f64``: ``svd-f64`` in bounded memory, when a whole float64 copy does
  not fit ``max_memory``: R of a QR over row blocks, SVD of R, long-side vectors
  A·v_i/‖A·v_i‖ over row blocks (their error grows like u·σ1/σ_i).
- ``nonfinite`` and ``zero``: as above, with NaN vectors (none is defined).

Accuracy contract (docs/methods.md#accuracy-contract), against ``numpy.linalg.svd`` of the same
weights
converted to float64: |Δσ_i| ≤ 1e-6·σ1 by default, ≤ 1e-4·σ1 with
``precision="float32"``; ``exact=True`` is float64 LAPACK itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import _linalg
from .errors import EngineError, option_ref
from .types import Note

__all__ = [
    "Spectrum",
    "TopK",
    "SpectrumEngine",
    "singular_values",
    "fast_float64",
    "METHODS",
    "VECTOR_METHODS",
]

METHODS = (
    "gram-eigvalsh-f64",
    "svdvals-f64",
    "svdvals-f32",
    "tsqr-svdvals-f64",
    "tsqr-svdvals-f32",
    "nonfinite",
    "zero",
)

VECTOR_METHODS = (
    "gram-eigh-f64",
    "gram-eigh-svdvals-f64",
    "svd-f64",
    "tsqr-svd-f64",
    "nonfinite",
    "zero",
)

_TOLERANCE = {"float64": 1e-6, "float32": 1e-4}

# Vectors are always computed in float64 and held to the float64 contract: σ and every
# returned triplet's residual within 1e-6·σ1, whatever ``precision`` says.
_VECTOR_TOLERANCE = _TOLERANCE["float64"]

# Whole-matrix solvers; each has a chunked QR form "tsqr-" + name in bounded memory.
_WHOLE_MATRIX = ("svdvals-f64", "svdvals-f32", "svd-f64")

# Where a Gram result that its a-posteriori check rejects is recomputed.
_GRAM_FALLBACK = {"gram-eigvalsh-f64": "svdvals-f64", "gram-eigh-f64": "svd-f64"}

# Rows per block of the Gram accumulation: about √L for L rows, which minimises the
# rounding bound (block + number of blocks additions per entry, docs/methods.md), kept
# within a range where speed is flat (CPU: 32–256 rows measured within 10 %); a GPU
# wants fewer, larger blocks.
_GRAM_CHUNK_RANGE = {"cpu": (32, 256), "cuda": (256, 2048)}

# Matrices per batch on a CPU: stacking same-shape matrices into one bmm/eigvalsh call
# was measured slower there than one at a time (docs/methods.md), so a CPU batch is 1.
_CPU_BATCH = 1

# Without max_memory, a GPU batch is planned against this share of its free memory.
_CUDA_FREE_SHARE = 0.8

# matrices of at most this many elements (512×512) are multiplied on one CPU thread
_SMALL_PRODUCT = 512 * 512

# float64 sources outside this magnitude range are scaled by a power of two
# (exactly) so that squares in the Gram matrix neither overflow nor underflow.
_SAFE_MAX_EXPONENT = 200
# the same for the float32 solvers, whose own range is 2^±126 (a float64 matrix with
# entries near 1e250 became inf, hence σ NaN, on the GPU's float32 route)
_SAFE_MAX_EXPONENT_F32 = 60

# GPUs whose float64 units run at half their float32 rate or better, by compute capability:
# P100 (6.0), V100 (7.0), A100 (8.0), H100/H200 (9.0), B100/B200 (10.0). Others run float64
# at 1/32–1/64 of float32. On the former, precision="float32" keeps the float64 Gram route:
# on an H200 it was 7× faster than float32 svdvals and 100× more accurate (docs/benchmarks.md#gpu).
_FULL_RATE_FP64 = frozenset({(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)})


def fast_float64(device: torch.device) -> bool:
    """Whether a CUDA device runs float64 at half its float32 rate or better
    (``_FULL_RATE_FP64``); False for a CPU or when the capability cannot be read."""
    if device.type != "cuda":
        return False
    try:
        return tuple(torch.cuda.get_device_capability(device)) in _FULL_RATE_FP64
    except (RuntimeError, AssertionError, ValueError):
        return False


@dataclass(frozen=True, eq=False)
class Spectrum:
    """The singular values of one matrix and how they were computed.

    sigma: float64 numpy array [R], R = min(m, n), descending, ≥ 0 (all NaN for a
    matrix holding NaN/Inf); method: one of ``METHODS``.
    """

    sigma: np.ndarray
    method: str


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


@dataclass
class _Item:
    """One matrix on its way through the engine: input position, tall view, exact scale,
    whether the input was wide, and how many vectors it wants (0: values only)."""

    index: int
    tall: torch.Tensor
    scale: float
    wide: bool = False
    k: int = 0


@dataclass(frozen=True)
class _Plan:
    """How one group is run: method, rows per block, device bytes per matrix, batch size."""

    method: str
    chunk: int
    per_matrix: int
    batch: int


@dataclass
class _Pending:
    """A Gram result whose top-k triplets pass the check but whose values the σ bound
    does not certify: it waits for LAPACK's values, against which its triplets are
    checked once more. long [L, k] (normalised), short [s, k], z [s, k], yty [k, k]
    float64 on the CPU, trace(Ĝ) and the block rows as checked."""

    item: _Item
    long: np.ndarray
    short: torch.Tensor
    z: torch.Tensor
    yty: torch.Tensor
    trace: torch.Tensor
    chunk: int


def _resolve_device(device: str) -> torch.device:
    """The torch device for "auto" | "cpu" | "cuda" | "cuda:N", or EngineError."""
    if not isinstance(device, str):
        raise EngineError(f"device {device!r} is not a string; use auto, cpu, cuda or cuda:N")
    spec = device.strip().lower()
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec[5:] if spec.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise EngineError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise EngineError(
                f"device {device!r} asked for, but this torch build sees no CUDA GPU; "
                f"use {option_ref('device')} cpu (or auto)",
                option="device",
            )
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise EngineError(
                f"device {device!r} does not exist: {count} CUDA device(s) visible "
                f"(cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    raise EngineError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N")


def _gram_chunk(length: int, device: torch.device) -> int:
    """Rows per Gram block for L rows: the power of two nearest √L, clamped per device."""
    low, high = _GRAM_CHUNK_RANGE.get(device.type, _GRAM_CHUNK_RANGE["cpu"])
    chunk = 2 ** round(math.log2(max(math.sqrt(length), 1.0)))
    return int(min(max(chunk, low), high, length))


def _is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (CUDA OOM or a failed CPU allocation)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _release_memory(device: torch.device) -> None:
    """Give cached blocks back to the CUDA driver after an allocation failure."""
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _mib(n: int) -> str:
    """Bytes as 'N bytes (x MiB)'."""
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def _elem(method: str) -> int:
    """Bytes per element a method computes in."""
    return 4 if method.endswith("f32") else 8


def _whole_bytes(method: str, length: int, s: int, src: int, k: int) -> int:
    """Device bytes of a whole-matrix solver on one (L, s) matrix."""
    if method == "svd-f64":
        return _linalg.svd_bytes(1, length, s, src, k)
    return _linalg.svdvals_bytes(1, length, s, src, _elem(method))


def _chunked_bytes(method: str, length: int, s: int, src: int, k: int, chunk: int) -> int:
    """Device bytes of a row-block method on one (L, s) matrix read `chunk` rows at a time."""
    if method == "gram-eigvalsh-f64":
        return _linalg.gram_bytes(1, length, s, chunk, src)
    if method == "gram-eigh-f64":
        return _linalg.gram_eigh_bytes(1, length, s, chunk, src, k)
    if method == "tsqr-svd-f64":
        return _linalg.tsqr_svd_bytes(1, length, s, chunk, src, k)
    return _linalg.tsqr_bytes(1, length, s, chunk, src, _elem(method))


def _scales(items: list[_Item]) -> torch.Tensor | None:
    """The items' power-of-two scales as a float64 [B] tensor, or None when all are 1."""
    if all(it.scale == 1.0 for it in items):
        return None
    return torch.tensor([it.scale for it in items], dtype=torch.float64)


def _unscaled(sigma: np.ndarray, scale: float) -> np.ndarray:
    """Computed singular values of a scaled matrix back at the matrix's own scale, ≥ 0."""
    return np.ascontiguousarray(np.maximum(sigma, 0.0) / scale)


def _top_k(
    item: _Item, sigma: np.ndarray, long: np.ndarray, short: np.ndarray, method: str
) -> TopK:
    """A TopK from tall-orientation results: long side = rows of the tall matrix."""
    # tall A = W: long side = rows (u), short = columns (v); wide A = Wᵀ: the reverse
    u, v = (short, long) if item.wide else (long, short)
    return TopK(
        _unscaled(sigma, item.scale), np.ascontiguousarray(u), np.ascontiguousarray(v), method
    )


class SpectrumEngine:
    """Computes all singular values (and top-k vectors) of many matrices, batched by shape,
    on one device.

    device: "auto" (CUDA when available, else CPU) | "cpu" | "cuda" | "cuda:N";
    precision: "float64" (σ within 1e-6·σ1 of float64 LAPACK) or "float32"
    (within 1e-4·σ1; selects float32 solvers on a GPU whose float64 is slow;
    vectors stay float64); exact: always float64 LAPACK (``svdvals-f64``,
    ``svd-f64``); max_memory: bytes the engine may hold on the device at once
    (None: plan against what is free): batches are split, and one matrix larger
    than the bound is read in row blocks where the method allows (Gram, QR), else
    ``EngineError`` names the smallest bound that works.

    ``notes`` collects ``Note`` records the caller must show (kind "fallback":
    a GPU allocation failure retried on the CPU); the caller may clear it.
    Raises ``EngineError`` (one line) for an invalid or unavailable device,
    precision or memory bound.
    """

    def __init__(
        self,
        device: str = "auto",
        precision: str = "float64",
        exact: bool = False,
        max_memory: int | None = None,
    ) -> None:
        if precision not in _TOLERANCE:
            raise EngineError(f"precision {precision!r} is not valid; use float64 or float32")
        if max_memory is not None and (
            isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory <= 0
        ):
            raise EngineError(f"max_memory {max_memory!r} is not a positive number of bytes")
        self._device = _resolve_device(device)
        self.precision = precision
        self.exact = bool(exact)
        self.max_memory = max_memory
        self.tolerance = _TOLERANCE[precision]
        self.notes: list[Note] = []

    @property
    def device(self) -> torch.device:
        """The torch device computations run on."""
        return self._device

    @property
    def device_name(self) -> str:
        """The device in words, e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"."""
        if self._device.type != "cuda":
            return "cpu"
        label = f"cuda:{self._device.index or 0}"
        try:
            return f"{label} ({torch.cuda.get_device_name(self._device)})"
        except (RuntimeError, AssertionError):
            return label

    # ----------------------------------------------------------------- choice

    def choose_method(
        self, shape: tuple[int, int], source_dtype: torch.dtype = torch.float32
    ) -> str:
        """The method planned for a matrix of this shape (before its values are seen).

        shape: (m, n); source_dtype: the stored dtype (only its size matters, for
        memory planning). Returns one of ``METHODS``: "svdvals-f64" when exact;
        "svdvals-f32" for precision float32 on a GPU whose float64 is slow (not
        ``fast_float64``); else "gram-eigvalsh-f64"
        (whose a-posteriori bound may still send an ill-conditioned matrix to
        "svdvals-f64"). A "svdvals-*" whose whole-matrix copy exceeds
        ``max_memory`` becomes the chunked "tsqr-svdvals-*".
        """
        m, n = (int(d) for d in shape)
        if self.exact:
            method = "svdvals-f64"
        elif (
            self.precision == "float32"
            and self._device.type == "cuda"
            and not fast_float64(self._device)
        ):
            method = "svdvals-f32"
        else:
            # A float64 Gram meets 1e-4·σ1 a priori for any practical shape and
            # 1e-6·σ1 unless the matrix is badly conditioned (checked per matrix).
            method = "gram-eigvalsh-f64"
        src_size = torch.empty(0, dtype=source_dtype).element_size()
        return self._memory_fit(method, max(m, n), min(m, n), src_size, 0)

    def _memory_fit(self, method: str, length: int, s: int, src_size: int, k: int) -> str:
        """Swap a whole-matrix solver for its chunked QR form when it cannot fit max_memory."""
        if self.max_memory is None or method not in _WHOLE_MATRIX:
            return method
        if _whole_bytes(method, length, s, src_size, k) > self.max_memory:
            return "tsqr-" + method
        return method

    # ---------------------------------------------------------------- compute

    def singular_values(self, matrices: Sequence[torch.Tensor]) -> list[Spectrum]:
        """All singular values of each matrix, in input order.

        matrices: 2-D tensors of any floating dtype (float16, bfloat16, float32,
        float64), any strides, on the CPU (or already on the device). Values are
        computed from the weights converted exactly to float64. Same-shape
        matrices are batched on the device. A matrix with NaN/Inf gives
        σ = NaN (method "nonfinite"), an all-zero one σ = 0 (method "zero"),
        without computing; the caller warns.
        Returns list[Spectrum] of the same length. Raises ``EngineError`` for a
        non-2-D or non-floating tensor, or a memory bound too small for a matrix.
        """
        return self._solve(matrices, 0)  # type: ignore[return-value]

    def top_vectors(self, matrices: Sequence[torch.Tensor], k: int) -> list[TopK]:
        """All singular values and the top-k singular vectors of each matrix, in input order.

        matrices: 2-D tensors (m, n) as for ``singular_values`` (any floating dtype,
        any strides, wide or tall; computed from the values converted exactly to
        float64). k: vectors wanted per matrix (≥ 1; capped at R = min(m, n)).
        Returns list[TopK] of the same length: sigma float64 [R] descending, u [m, k'],
        v [n, k'], k' = min(k, R), numpy float64 on the CPU, signs arbitrary; NaN
        vectors (and σ NaN, resp. 0) for a "nonfinite" (resp. "zero" or empty) matrix,
        settled without computing.

        Same-shape matrices are batched on the device like ``singular_values``
        (Gram accumulated over row blocks, then all eigenvalues and the top-k'
        eigenvectors: on a CPU from s = 192 on only those k' are computed, by scipy's
        LAPACK, else batched ``eigh`` whose other vectors are dropped at once), and the
        long-side vectors A·v_i are formed over row
        blocks and moved to the host block by block, so that device memory per matrix
        is O(block·s + s² + s·k'), whatever k (``_linalg.gram_eigh_bytes``); the
        returned vectors themselves, (m + n)·k' doubles, live on the host.

        Accuracy (methods in ``VECTOR_METHODS``): always float64, and
        ``precision="float32"`` does not change it: σ within 1e-6·σ1 of float64 LAPACK;
        a "gram-eigh-f64" result is kept only if every σ is certified within 1e-6·σ1,
        every returned triplet's measured residual ‖Wv_i − σ_iu_i‖² +
        ‖Wᵀu_i − σ_iv_i‖² is ≤ (1e-6·σ1)² and the vectors of both sides are orthonormal
        within 1e-6, else the matrix is recomputed by "svd-f64" (float64 LAPACK thin
        SVD; ``exact=True`` uses it directly), or "tsqr-svd-f64" when a whole float64
        copy does not fit ``max_memory`` (QR over row blocks, SVD of R, long-side
        vectors A·v_i/‖A·v_i‖ over row blocks: σ and short-side vectors as LAPACK's,
        long-side vectors with an extra error growing like u·σ1/σ_i, hence noise for
        σ_i below about s·u·σ1, and NaN where A·v_i = 0). Where only the σ bound fails
        and the triplets pass, only the values are recomputed, by float64 LAPACK
        ("svdvals-f64", or its chunked form), and each triplet is checked again with
        them: "gram-eigh-svdvals-f64". By Wedin's theorem each
        vector is within angle ≈ 1e-6·σ1/gap_i of the exact one (gap_i: distance from
        σ_i to the other singular values, and to 0 for the long side).

        Raises ``EngineError`` (one line) for a non-2-D or non-floating tensor, k < 1,
        a memory bound too small for one row block, or an SVD that converges in
        neither torch nor numpy. A GPU allocation failure is retried in smaller
        batches and blocks, then on the CPU with a Note in ``notes``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise EngineError(f"k={k!r} is not a positive number of singular vectors")
        return self._solve(matrices, int(k))  # type: ignore[return-value]

    def _solve(self, matrices: Sequence[torch.Tensor], k: int) -> list[Spectrum | TopK]:
        """Values (k = 0) or values and top-k vectors of each matrix, grouped and batched."""
        results: list[Spectrum | TopK | None] = [None] * len(matrices)
        groups: dict[tuple, list[_Item]] = {}
        for index, w in enumerate(matrices):
            admitted = self._admit(index, len(matrices), w, k)
            if not isinstance(admitted, _Item):
                results[index] = admitted
                continue
            length, s = admitted.tall.shape
            key = (
                self._method_for(length, s, admitted),
                (length, s),
                admitted.tall.dtype,
                admitted.tall.stride(0) < admitted.tall.stride(1),
            )
            groups.setdefault(key, []).append(admitted)
        for (method, _, _, _), items in groups.items():
            for item, result in self._run_group(method, items):
                results[item.index] = result
        missing = [i + 1 for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"internal error: the engine produced no result for {missing}")
        return results  # type: ignore[return-value]

    def _method_for(self, length: int, s: int, item: _Item) -> str:
        """The planned method of an admitted item: values per ``choose_method``, vectors float64."""
        if not item.k:
            return self.choose_method((length, s), item.tall.dtype)
        method = "svd-f64" if self.exact else "gram-eigh-f64"
        return self._memory_fit(method, length, s, item.tall.element_size(), item.k)

    def _admit(self, index: int, count: int, w: object, k: int) -> _Item | Spectrum | TopK:
        """Validate one input; settle empty/non-finite/zero matrices at once, else an _Item."""
        if not isinstance(w, torch.Tensor):
            raise EngineError(
                f"matrix {index + 1} of {count} is a {type(w).__name__}, not a torch.Tensor"
            )
        if w.dim() != 2:
            raise EngineError(
                f"matrix {index + 1} of {count} has shape {tuple(w.shape)}; "
                "singular values need a 2-D tensor"
            )
        if not w.is_floating_point():
            raise EngineError(
                f"matrix {index + 1} of {count} has dtype {w.dtype}; "
                "singular values need a real floating dtype"
            )
        m, n = (int(d) for d in w.shape)
        rank = min(m, n)
        settled = None
        if w.numel() == 0:
            settled = (np.zeros(rank), "zero")
        else:
            # one reduction each; amax/amin propagate NaN, and ±Inf shows in one of them
            top = float(torch.amax(w))
            bottom = float(torch.amin(w))
            if not (math.isfinite(top) and math.isfinite(bottom)):
                settled = (np.full(rank, np.nan), "nonfinite")
            elif top == 0.0 and bottom == 0.0:
                settled = (np.zeros(rank), "zero")
        if settled is not None:
            sigma, method = settled
            if not k:
                return Spectrum(sigma, method)
            kk = min(k, rank)
            return TopK(sigma, np.full((m, kk), np.nan), np.full((n, kk), np.nan), method)
        scale = 1.0
        exponent = math.frexp(max(abs(top), abs(bottom)))[1]
        limit = _SAFE_MAX_EXPONENT_F32 if self.precision == "float32" else _SAFE_MAX_EXPONENT
        if abs(exponent) > limit:
            # clamped so that the scale itself stays finite for subnormal matrices
            scale = math.ldexp(1.0, max(-1000, min(1000, -exponent)))
        return _Item(index, _linalg.oriented(w), scale, m < n, min(k, rank))

    def _budget(self, device: torch.device) -> tuple[int | None, bool]:
        """(bytes available for one batch or None, whether that is a hard user bound)."""
        if self.max_memory is not None:
            return self.max_memory, True
        if device.type == "cuda":
            try:
                free, _ = torch.cuda.mem_get_info(device)
            except (RuntimeError, AssertionError):
                return None, False
            return int(free * _CUDA_FREE_SHARE), False
        return None, False

    def _plan(self, method: str, item: _Item, count: int, device: torch.device) -> _Plan:
        """Rows per block and batch size of a group under the memory budget."""
        length, s = item.tall.shape
        src = item.tall.element_size()
        budget, hard = self._budget(device)
        if method in _WHOLE_MATRIX:
            per = _whole_bytes(method, length, s, src, item.k)
            if hard and per > budget:
                return self._plan("tsqr-" + method, item, count, device)
            return _Plan(method, length, per, self._batch(budget, per, count, device))
        if method.startswith("gram-"):
            chunk = _gram_chunk(length, device)
        else:
            chunk = min(max(1024, 2 * s), length)

        def need(c: int) -> int:
            return _chunked_bytes(method, length, s, src, item.k, c)

        if budget is not None and need(chunk) > budget and (hard or device.type == "cuda"):
            per_row = need(2) - need(1)
            fitting = (budget - need(1)) // per_row + 1 if per_row > 0 else chunk
            if fitting < 1:
                if hard:
                    raise EngineError(
                        f"matrix {item.index + 1} ({'×'.join(map(str, item.tall.shape))}) needs "
                        f"at least {_mib(need(1))} of device memory for {method}, more than "
                        f"{option_ref('max_memory')}={budget}; raise {option_ref('max_memory')} to at least "
                        f"{need(1)}",
                        option="max_memory",
                    )
                fitting = 1
            chunk = int(min(chunk, fitting))
        per = need(chunk)
        return _Plan(method, chunk, per, self._batch(budget, per, count, device))

    @staticmethod
    def _batch(budget: int | None, per: int, count: int, device: torch.device) -> int:
        """How many matrices of `per` bytes one batch holds."""
        if device.type == "cpu":
            return _CPU_BATCH
        if budget is None:
            return count
        return int(max(1, min(count, budget // max(per, 1))))

    def _run_group(self, method: str, items: list[_Item]) -> list[tuple[_Item, Spectrum | TopK]]:
        """Results of same-shape items: planned batches, Gram results checked, the
        uncertified recomputed by the Gram route's fallback."""
        plan = self._plan(method, items[0], len(items), self._device)
        out: list[tuple[_Item, Spectrum | TopK]] = []
        redo: list[_Item] = []
        pending: list[_Pending] = []
        for start in range(0, len(items), plan.batch):
            batch = items[start : start + plan.batch]
            for item, result in self._run(plan.method, batch, plan.chunk, self._device):
                if result is None:
                    redo.append(item)
                elif isinstance(result, _Pending):
                    pending.append(result)
                else:
                    out.append((item, result))
        if pending:
            done, failed = self._settle_pending(pending)
            out.extend(done)
            redo.extend(failed)
        if redo:
            out.extend(self._run_group(_GRAM_FALLBACK[plan.method], redo))
        return out

    def _settle_pending(
        self, pending: list[_Pending]
    ) -> tuple[list[tuple[_Item, TopK]], list[_Item]]:
        """LAPACK's values (planned as values-only: ``svdvals-f64``, or its chunked form)
        for Gram vectors whose values were not certified; each kept as
        "gram-eigh-svdvals-f64" if its triplets pass the check with those values, else
        returned for the full fallback."""
        items = [p.item for p in pending]
        length, s = items[0].tall.shape
        values = self._memory_fit("svdvals-f64", length, s, items[0].tall.element_size(), 0)
        plain = [_Item(it.index, it.tall, it.scale, it.wide, 0) for it in items]
        spectra = {it.index: r for it, r in self._run_group(values, plain)}
        done: list[tuple[_Item, TopK]] = []
        failed: list[_Item] = []
        for p in pending:
            sigma = spectra[p.item.index].sigma * p.item.scale  # exact: a power of two
            k = p.item.k
            top = torch.from_numpy(sigma[:k].copy())[None]
            residual, _, _ = _linalg.triplet_check(
                top, p.short[None], p.z[None], p.yty[None], p.trace[None], length, p.chunk
            )
            if bool(residual.amax() <= _VECTOR_TOLERANCE * float(sigma[0])):
                short = p.short.numpy()
                done.append((p.item, _top_k(p.item, sigma, p.long, short, "gram-eigh-svdvals-f64")))
            else:
                failed.append(p.item)
        return done, failed

    def _run(
        self, method: str, items: list[_Item], chunk: int, device: torch.device
    ) -> list[tuple[_Item, Spectrum | TopK | _Pending | None]]:
        """Run one batch, splitting it (then its blocks) on allocation failure and finally
        falling back from a GPU to the CPU with a Note."""
        # products of small matrices, like their factorisations, run faster on one thread
        size = max(int(it.tall.shape[0]) * int(it.tall.shape[1]) for it in items)
        try:
            with _linalg.small_problem_threads(size, device, limit=_SMALL_PRODUCT):
                results = self._compute(method, items, chunk, device)
            return list(zip(items, results, strict=True))
        except Exception as exc:  # only allocation failures are handled here
            if not _is_out_of_memory(exc):
                raise
            failure = exc
        _release_memory(device)
        if len(items) > 1:
            half = len(items) // 2
            return self._run(method, items[:half], chunk, device) + self._run(
                method, items[half:], chunk, device
            )
        if method in _WHOLE_MATRIX:
            plan = self._plan("tsqr-" + method, items[0], 1, device)
            return self._run(plan.method, items, plan.chunk, device)
        if chunk > 1:
            return self._run(method, items, max(1, chunk // 2), device)
        shape = "×".join(str(d) for d in items[0].tall.shape)
        if device.type == "cuda":
            cpu = torch.device("cpu")
            self.notes.append(
                Note(
                    "fallback",
                    f"{device} ran out of memory on a {shape} matrix ({method}) even alone "
                    "and one row at a time; computed on the CPU instead (free GPU memory "
                    "to keep such matrices on the GPU)",
                )
            )
            plan = self._plan(method, items[0], 1, cpu)
            return self._run(plan.method, items, plan.chunk, cpu)
        raise EngineError(
            f"out of memory on the CPU computing {method} of a {shape} matrix even in blocks "
            f"of one row ({str(failure).splitlines()[0][:120]}); free memory or use a "
            "machine with more"
        )

    def _compute(
        self, method: str, items: list[_Item], chunk: int, device: torch.device
    ) -> list[Spectrum | TopK | _Pending | None]:
        """One batch's results (Spectrum, or TopK for a vector method), None for each that
        does not meet the tolerance (only a Gram route's can fail it), a _Pending for Gram
        vectors that wait for LAPACK's values."""
        if method in VECTOR_METHODS:
            return self._compute_vectors(method, items, chunk, device)
        mats = [it.tall for it in items]
        scales = _scales(items)
        if method == "gram-eigvalsh-f64":
            sigma, bound, sigma1_lower = _linalg.gram_eigvalsh(mats, device, chunk, scales)
            certified = (bound.amax(dim=-1) <= self.tolerance * sigma1_lower) & torch.isfinite(
                sigma
            ).all(dim=-1)
            certified = certified.cpu().tolist()
        else:
            dtype = torch.float64 if method.endswith("f64") else torch.float32
            try:
                if method.startswith("tsqr-"):
                    sigma = _linalg.tsqr_svdvals(mats, device, dtype, chunk, scales)
                else:
                    sigma = _linalg.svdvals(mats, device, dtype, scales)
            except torch.linalg.LinAlgError as exc:
                first = items[0].index + 1
                raise EngineError(
                    f"the {method} solver did not converge on a batch starting at matrix "
                    f"{first} ({str(exc).splitlines()[0][:120]}); retry with "
                    f"{option_ref('exact')} or another {option_ref('device')}"
                ) from exc
            certified = [True] * len(items)
        values = sigma.to(device="cpu", dtype=torch.float64).numpy()
        return [
            Spectrum(_unscaled(row, it.scale), method) if ok else None
            for row, it, ok in zip(values, items, certified, strict=True)
        ]

    def _compute_vectors(
        self, method: str, items: list[_Item], chunk: int, device: torch.device
    ) -> list[Spectrum | TopK | _Pending | None]:
        """One batch's TopK by a vector method (None where the Gram route's check fails,
        _Pending where only its σ bound does)."""
        mats = [it.tall for it in items]
        scales = _scales(items)
        length, s = items[0].tall.shape
        k = items[0].k
        if method == "gram-eigh-f64":
            return self._gram_vectors(items, mats, scales, chunk, device)
        # the long-side vectors go to the host: device memory does not grow with L·k
        long = torch.empty(len(items), length, k, dtype=torch.float64)
        try:
            if method == "svd-f64":
                sigma, short = _linalg.svd_vectors(mats, device, k, long, scales)
            else:
                sigma, short = _linalg.tsqr_svd_vectors(mats, device, chunk, k, long, scales)
        except torch.linalg.LinAlgError as exc:
            raise EngineError(
                f"float64 SVD of a {length}×{s} matrix did not converge in torch nor numpy "
                f"({method}, batch from matrix {items[0].index + 1}: "
                f"{str(exc).splitlines()[0][:200]}); the matrix is pathological, check it"
            ) from exc
        sigma_np = sigma.to(device="cpu", dtype=torch.float64).numpy()
        short_np = short.to(device="cpu", dtype=torch.float64).numpy()
        long_np = long.numpy()
        return [
            _top_k(it, sigma_np[b], long_np[b], short_np[b], method) for b, it in enumerate(items)
        ]

    @staticmethod
    def _gram_vectors(
        items: list[_Item],
        mats: list[torch.Tensor],
        scales: torch.Tensor | None,
        chunk: int,
        device: torch.device,
    ) -> list[Spectrum | TopK | _Pending | None]:
        """The Gram route's TopK per item, certified per matrix: None where the triplets
        fail, _Pending where they pass but the σ bound does not certify the values."""
        length, _ = mats[0].shape
        k = items[0].k
        tol = _VECTOR_TOLERANCE
        sigma, bound, sigma1_lower, trace, short = _linalg.gram_eigh(mats, device, chunk, k, scales)
        finite = torch.isfinite(sigma).all(-1)
        values_ok = ((bound.amax(dim=-1) <= tol * sigma1_lower) & finite).cpu().tolist()
        results: list[Spectrum | TopK | _Pending | None] = [None] * len(items)
        keep = [b for b, ok in enumerate(finite.cpu().tolist()) if ok]
        if keep:
            # vectors for every matrix the eigensolver solved: where only the values are
            # uncertified, the triplets may still pass and need LAPACK's values alone
            sel = torch.tensor(keep, device=sigma.device)
            sub_scales = None if scales is None else scales[keep]
            long = torch.empty(len(keep), length, k, dtype=torch.float64)
            z, yty = _linalg.long_side(
                [mats[b] for b in keep], short[sel], device, chunk, long, sub_scales, True
            )
            residual, ortho, norms = _linalg.triplet_check(
                sigma[sel, :k], short[sel], z, yty, trace[sel], length, chunk
            )
            passed = (
                (residual.amax(dim=-1) <= tol * sigma1_lower[sel])
                & (ortho <= tol)
                & (_linalg.orthonormality(short[sel]) <= tol)
                & (norms > 0).all(dim=-1)
            )
            long.div_(norms.cpu()[:, None, :])
            sigma_np = sigma[sel].cpu().numpy()
            short_np = short[sel].cpu().numpy()
            long_np = long.numpy()
            for j, (b, ok) in enumerate(zip(keep, passed.cpu().tolist(), strict=True)):
                if ok and values_ok[b]:
                    results[b] = _top_k(
                        items[b], sigma_np[j], long_np[j], short_np[j], "gram-eigh-f64"
                    )
                elif ok:
                    results[b] = _Pending(
                        items[b],
                        long_np[j],
                        short[sel][j].cpu(),
                        z[j].cpu(),
                        yty[j].cpu(),
                        trace[sel][j].cpu(),
                        chunk,
                    )
        return results


def singular_values(w: torch.Tensor, **engine_kwargs) -> Spectrum:
    """All singular values of one 2-D tensor: ``SpectrumEngine(**engine_kwargs)`` on [w].

    w: 2-D tensor of any floating dtype. engine_kwargs: device, precision, exact,
    max_memory as for ``SpectrumEngine``. Returns its ``Spectrum``.
    """
    return SpectrumEngine(**engine_kwargs).singular_values([w])[0]
