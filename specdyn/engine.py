"""The singular-value engine: all singular values of many matrices, batched, on a device.

    engine = SpectrumEngine()                       # device="auto", float64 accuracy
    spectra = engine.singular_values([w1, w2, w3])  # list[Spectrum], same order
    spectra[0].sigma, spectra[0].method             # float64 [R] descending, "gram-eigvalsh-f64"

Methods (recorded per matrix as ``Spectrum.method``; docs/methods.md derives
their accuracy and gives measured times):

- ``gram-eigvalsh-f64``: the default. For W (m, n) with s = min(m, n), the s×s
  Gram matrix (WᵀW or WWᵀ) is accumulated in float64 over row blocks of the
  long side (each block converted on the fly, never the whole matrix), then
  ``eigvalsh`` gives σ = sqrt(λ). Each result is checked against an a-posteriori
  bound on every |Δσ_i| (rounding analysis in docs/methods.md); a matrix whose
  bound exceeds the tolerance (ill-conditioned with a flat top, or rank-deficient
  with a large Frobenius norm) is recomputed with ``svdvals-f64``.
- ``svdvals-f64``: float64 LAPACK (cuSOLVER on a GPU) on the whole matrix, in
  its tall orientation. Used for ``exact=True`` and as the Gram route's fallback.
- ``svdvals-f32``: float32 solver, for ``precision="float32"`` on a GPU (where
  float64 is slow; a float32 Gram would not meet 1e-4·σ1).
- ``tsqr-svdvals-f64`` / ``tsqr-svdvals-f32``: a QR accumulated over row blocks,
  then the solver on the s×s R factor: the two above when a whole float64
  (float32) copy of the matrix does not fit ``max_memory``.
- ``nonfinite`` (NaN/Inf in the matrix: σ all NaN, nothing computed) and
  ``zero`` (all-zero matrix: σ all 0).

Accuracy contract (SPEC §7), against ``numpy.linalg.svd`` of the same weights
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
from ._types import Note
from .errors import EngineError

__all__ = ["Spectrum", "SpectrumEngine", "singular_values", "METHODS"]

METHODS = (
    "gram-eigvalsh-f64",
    "svdvals-f64",
    "svdvals-f32",
    "tsqr-svdvals-f64",
    "tsqr-svdvals-f32",
    "nonfinite",
    "zero",
)

_TOLERANCE = {"float64": 1e-6, "float32": 1e-4}

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

# float64 sources outside this magnitude range are scaled by a power of two
# (exactly) so that squares in the Gram matrix neither overflow nor underflow.
_SAFE_MAX_EXPONENT = 200


@dataclass(frozen=True, eq=False)
class Spectrum:
    """The singular values of one matrix and how they were computed.

    sigma: float64 numpy array [R], R = min(m, n), descending, ≥ 0 (all NaN for a
    matrix holding NaN/Inf); method: one of ``METHODS``.
    """

    sigma: np.ndarray
    method: str


@dataclass
class _Item:
    """One matrix on its way through the engine: input position, tall view, exact scale."""

    index: int
    tall: torch.Tensor
    scale: float


@dataclass(frozen=True)
class _Plan:
    """How one group is run: method, rows per block, device bytes per matrix, batch size."""

    method: str
    chunk: int
    per_matrix: int
    batch: int


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
                "use --device cpu (or auto)"
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


class SpectrumEngine:
    """Computes all singular values of many matrices, batched by shape, on one device.

    device: "auto" (CUDA when available, else CPU) | "cpu" | "cuda" | "cuda:N";
    precision: "float64" (σ within 1e-6·σ1 of float64 LAPACK) or "float32"
    (within 1e-4·σ1; selects float32 solvers on a GPU, where float64 is slow);
    exact: always float64 LAPACK (``svdvals-f64``); max_memory: bytes the engine
    may hold on the device at once (None: plan against what is free): batches are
    split, and one matrix larger than the bound is read in row blocks where the
    method allows (Gram, QR), else ``EngineError`` names the smallest bound that works.

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
        "svdvals-f32" for precision float32 on a GPU; else "gram-eigvalsh-f64"
        (whose a-posteriori bound may still send an ill-conditioned matrix to
        "svdvals-f64"). A "svdvals-*" whose whole-matrix copy exceeds
        ``max_memory`` becomes the chunked "tsqr-svdvals-*".
        """
        m, n = (int(d) for d in shape)
        if self.exact:
            method = "svdvals-f64"
        elif self.precision == "float32" and self._device.type == "cuda":
            method = "svdvals-f32"
        else:
            # A float64 Gram meets 1e-4·σ1 a priori for any practical shape and
            # 1e-6·σ1 unless the matrix is badly conditioned (checked per matrix).
            method = "gram-eigvalsh-f64"
        src_size = torch.empty(0, dtype=source_dtype).element_size()
        return self._memory_fit(method, max(m, n), min(m, n), src_size)

    def _memory_fit(self, method: str, length: int, s: int, src_size: int) -> str:
        """Swap a whole-matrix solver for its chunked QR form when it cannot fit max_memory."""
        if self.max_memory is None or not method.startswith("svdvals-"):
            return method
        elem = 8 if method.endswith("f64") else 4
        if _linalg.svdvals_bytes(1, length, s, src_size, elem) > self.max_memory:
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
        results: list[Spectrum | None] = [None] * len(matrices)
        groups: dict[tuple, list[_Item]] = {}
        for index, w in enumerate(matrices):
            item = self._admit(index, len(matrices), w, results)
            if item is None:
                continue
            method = self.choose_method(tuple(w.shape), w.dtype)
            transposed = item.tall.stride(0) < item.tall.stride(1)
            key = (method, tuple(item.tall.shape), item.tall.dtype, transposed)
            groups.setdefault(key, []).append(item)
        for (method, _, _, _), items in groups.items():
            for item, sigma, used in self._run_group(method, items):
                results[item.index] = Spectrum(sigma, used)
        missing = [i + 1 for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"internal error: the engine produced no spectrum for {missing}")
        return results  # type: ignore[return-value]

    def _admit(
        self, index: int, count: int, w: object, results: list[Spectrum | None]
    ) -> _Item | None:
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
        rank = min(w.shape)
        if w.numel() == 0:
            results[index] = Spectrum(np.zeros(rank), "zero")
            return None
        # one reduction each; amax/amin propagate NaN, and ±Inf shows in one of them
        top = float(torch.amax(w))
        bottom = float(torch.amin(w))
        if not (math.isfinite(top) and math.isfinite(bottom)):
            results[index] = Spectrum(np.full(rank, np.nan), "nonfinite")
            return None
        if top == 0.0 and bottom == 0.0:
            results[index] = Spectrum(np.zeros(rank), "zero")
            return None
        scale = 1.0
        magnitude = max(abs(top), abs(bottom))
        exponent = math.frexp(magnitude)[1]
        if abs(exponent) > _SAFE_MAX_EXPONENT:
            # clamped so that the scale itself stays finite for subnormal matrices
            scale = math.ldexp(1.0, max(-1000, min(1000, -exponent)))
        return _Item(index, _linalg.oriented(w), scale)

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
        if method.startswith("svdvals-"):
            elem = 8 if method.endswith("f64") else 4
            per = _linalg.svdvals_bytes(1, length, s, src, elem)
            if hard and per > budget:
                return self._plan("tsqr-" + method, item, count, device)
            return _Plan(method, length, per, self._batch(budget, per, count, device))
        if method == "gram-eigvalsh-f64":
            chunk = _gram_chunk(length, device)

            def need(c: int) -> int:
                return _linalg.gram_bytes(1, length, s, c, src)

        else:
            elem = 8 if method.endswith("f64") else 4
            chunk = min(max(1024, 2 * s), length)

            def need(c: int) -> int:
                return _linalg.tsqr_bytes(1, length, s, c, src, elem)

        if budget is not None and need(chunk) > budget and (hard or device.type == "cuda"):
            per_row = need(2) - need(1)
            fitting = (budget - need(1)) // per_row + 1 if per_row > 0 else chunk
            if fitting < 1:
                if hard:
                    raise EngineError(
                        f"matrix {item.index + 1} ({'×'.join(map(str, item.tall.shape))}) needs "
                        f"at least {_mib(need(1))} of device memory for {method}, more than "
                        f"max_memory={budget}; raise --max-memory to at least {need(1)}"
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

    def _run_group(self, method: str, items: list[_Item]) -> list[tuple[_Item, np.ndarray, str]]:
        """Singular values of same-shape items: planned batches, Gram bound checked."""
        plan = self._plan(method, items[0], len(items), self._device)
        out: list[tuple[_Item, np.ndarray, str]] = []
        redo: list[_Item] = []
        for start in range(0, len(items), plan.batch):
            batch = items[start : start + plan.batch]
            for item, sigma, certified, used in self._run(
                plan.method, batch, plan.chunk, self._device
            ):
                if certified:
                    out.append((item, sigma, used))
                else:
                    redo.append(item)
        if redo:
            out.extend(self._run_group("svdvals-f64", redo))
        return out

    def _run(
        self, method: str, items: list[_Item], chunk: int, device: torch.device
    ) -> list[tuple[_Item, np.ndarray, bool, str]]:
        """Run one batch, splitting it (then its blocks) on allocation failure and finally
        falling back from a GPU to the CPU with a Note."""
        try:
            sigmas, certified = self._compute(method, items, chunk, device)
            return [
                (it, sig, ok, method) for it, sig, ok in zip(items, sigmas, certified, strict=True)
            ]
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
        if method.startswith("svdvals-"):
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
            f"out of memory computing the singular values of a {shape} matrix on the CPU "
            f"even in blocks of one row ({method}: {str(failure).splitlines()[0][:120]}); "
            "free memory or use a machine with more"
        )

    def _compute(
        self, method: str, items: list[_Item], chunk: int, device: torch.device
    ) -> tuple[list[np.ndarray], list[bool]]:
        """σ [s] per item (descending, float64, CPU) and whether each meets the tolerance."""
        mats = [it.tall for it in items]
        scales = None
        if any(it.scale != 1.0 for it in items):
            scales = torch.tensor([it.scale for it in items], dtype=torch.float64)
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
                    f"{first} ({str(exc).splitlines()[0][:120]}); retry with --exact or "
                    "another --device"
                ) from exc
            certified = [True] * len(items)
        values = sigma.to(device="cpu", dtype=torch.float64).numpy()
        out = []
        for row, it in zip(values, items, strict=True):
            out.append(np.ascontiguousarray(np.maximum(row, 0.0) / it.scale))
        return out, certified


def singular_values(w: torch.Tensor, **engine_kwargs) -> Spectrum:
    """All singular values of one 2-D tensor: ``SpectrumEngine(**engine_kwargs)`` on [w].

    w: 2-D tensor of any floating dtype. engine_kwargs: device, precision, exact,
    max_memory as for ``SpectrumEngine``. Returns its ``Spectrum``.
    """
    return SpectrumEngine(**engine_kwargs).singular_values([w])[0]
