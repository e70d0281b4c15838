"""Benchmark of the singular-value engine alone (no loading, no store).

Three sections, each measured in this one process so that ratios compare like
with like (every time is the best of --repeat runs):

- ``speed`` (default): per Pythia-160m matrix shape, fp16 weights as stored,
  the time of the floor (bare fp32 ``torch.linalg.svdvals`` of a float32 copy
  already in memory, in the stored orientation), of the engine's chosen method
  (conversion from fp16 included) and of float64 LAPACK (``torch.linalg.svdvals``
  of a float64 copy, as stored), with ratios
  against the floor; then the total over one checkpoint's matrices (12 layers:
  dense and the Q, K, V split of the fused QKV are 768×768; QKV 2304×768; MLP
  3072×768 and 768×3072; embed_in viewed 768×50304, embed_out 50304×768).
- ``methods``: every method on the shapes of docs/methods.md (768×768 …
  16384×4096): time and max |Δσ|/σ1 against float64 LAPACK (numpy's, the
  accuracy reference of docs/methods.md#accuracy-contract, computed outside the timings).
- ``vectors``: per Pythia-160m matrix shape, values only against all values and the
  top-100 vectors by the engine's Gram route (today's: the top-k eigenvectors only,
  ``_linalg.top_eigh_lapack``; and the route before issue 19: torch's full ``eigh``),
  and float64 LAPACK SVD (``exact=True``), with the ratios to values only and the
  total over one checkpoint's matrices.
- ``accuracy``: constructed matrices (condition numbers 1e2–1e8, rank-deficient,
  repeated values): max |Δσ|/σ1 of the Gram route, its a-posteriori bound, and
  the method the engine records.

    python benchmarks/bench_engine.py                         # speed
    python benchmarks/bench_engine.py --section all --repeat 3
    python benchmarks/bench_engine.py --section vectors --threads 1

Results are recorded in docs/benchmarks.md ("Engine") and docs/methods.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from specdyn import _linalg
from specdyn.engine import SpectrumEngine, _gram_chunk

PYTHIA_160M = [  # (shape, matrices of that shape in one checkpoint)
    ((768, 768), 48),
    ((2304, 768), 12),
    ((3072, 768), 12),
    ((768, 3072), 12),
    ((768, 50304), 1),
    ((50304, 768), 1),
]
METHOD_SHAPES = [
    (768, 768),
    (3072, 768),
    (768, 3072),
    (2304, 768),
    (768, 50304),
    (4096, 4096),
    (16384, 4096),
]


def best_times(fns: Sequence[Callable[[], object]], repeat: int) -> list[float]:
    """Best wall time of each function over `repeat` rounds, in seconds.

    The functions take turns round by round, so that a slow spell of a shared
    machine hits all of them alike; within its turn each runs twice and only the
    second, warm call is timed, so that none pays for the caches another left cold.
    """
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            fn()
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def random_fp16(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Initialisation-like fp16 weights (N(0, 0.02²)), as Pythia checkpoints store them."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 0.02).half()


def lapack(w: torch.Tensor) -> np.ndarray:
    """Reference values: numpy's float64 LAPACK on the same weights (not timed: numpy's
    BLAS threads would compete with torch's for the cores right after)."""
    return np.linalg.svd(w.double().numpy(), compute_uv=False)


def torch_lapack64(w: torch.Tensor) -> torch.Tensor:
    """The timed float64 LAPACK baseline: torch's svdvals on a float64 copy, as stored."""
    return torch.linalg.svdvals(w.double())


def speed_row(engine: SpectrumEngine, shape: tuple[int, int], repeat: int) -> dict[str, object]:
    """Floor, engine and float64 LAPACK times and the engine's error for one shape."""
    w = random_fp16(shape, seed=shape[0] * 7 + shape[1])
    w32 = w.float()
    ref = lapack(w)
    spec = engine.singular_values([w])[0]
    floor, t_engine, t_lapack = best_times(
        [
            lambda: torch.linalg.svdvals(w32),
            lambda: engine.singular_values([w]),
            lambda: torch_lapack64(w),
        ],
        repeat,
    )
    err = float(np.max(np.abs(spec.sigma - ref)) / ref[0])
    return {
        "floor": floor,
        "engine": t_engine,
        "lapack": t_lapack,
        "method": spec.method,
        "err": err,
    }


def section_speed(repeat: int) -> None:
    """Floor vs engine vs float64 LAPACK on Pythia-160m shapes, and one checkpoint's total."""
    engine = SpectrumEngine("cpu")
    print("## speed: Pythia-160m shapes, fp16 weights, CPU")
    print(
        f"{'shape':>12} {'count':>5} {'floor fp32 s':>13} {'engine s':>9} {'method':>18} "
        f"{'engine/floor':>12} {'lapack64 s':>11} {'lapack/floor':>12} {'max|Δσ|/σ1':>11}"
    )
    totals = {"floor": 0.0, "engine": 0.0, "lapack": 0.0}
    for shape, count in PYTHIA_160M:
        row = speed_row(engine, shape, repeat)
        for key in totals:
            totals[key] += count * row[key]
        print(
            f"{'×'.join(map(str, shape)):>12} {count:>5} {row['floor']:>13.4f} "
            f"{row['engine']:>9.4f} {row['method']:>18} {row['engine'] / row['floor']:>12.2f} "
            f"{row['lapack']:>11.4f} {row['lapack'] / row['floor']:>12.2f} {row['err']:>11.1e}"
        )
    print(
        f"{'checkpoint':>12} {'':>5} {totals['floor']:>13.2f} {totals['engine']:>9.2f} "
        f"{'':>18} {totals['engine'] / totals['floor']:>12.2f} {totals['lapack']:>11.2f} "
        f"{totals['lapack'] / totals['floor']:>12.2f}"
    )


def methods_row(shape: tuple[int, int], repeat: int) -> list[str]:
    """'time (error)' cells of every method, then float64 numpy LAPACK's time, for one shape."""
    cpu = torch.device("cpu")
    w = random_fp16(shape, seed=1)
    w32 = w.float()
    tall = [_linalg.oriented(w)]
    qr_chunk = max(1024, 2 * min(shape))
    gram_chunk = _gram_chunk(max(shape), cpu)
    reps = 1 if shape[0] * shape[1] > 10_000_000 else repeat
    ref = lapack(w)
    methods = [
        # the floor: fp32 svdvals in the stored orientation, input already float32
        lambda: torch.linalg.svdvals(w32),
        lambda: _linalg.gram_eigvalsh(tall, cpu, gram_chunk)[0][0],
        lambda: _linalg.svdvals(tall, cpu, torch.float64)[0],
        lambda: _linalg.tsqr_svdvals(tall, cpu, torch.float64, qr_chunk)[0],
    ]
    errors = [float(np.max(np.abs(fn().double().numpy() - ref)) / ref[0]) for fn in methods]
    times = best_times([*methods, lambda: torch_lapack64(w)], reps)
    cells = [f"{t:7.3f} ({e:7.1e})" for t, e in zip(times, errors, strict=False)]
    cells.append(f"{times[-1]:7.3f}")
    return cells


def vectors_row(shape: tuple[int, int], k: int, repeat: int) -> dict[str, float]:
    """Values-only, vectors (top-k route, full-eigh route) and float64 SVD times for one shape."""
    w = random_fp16(shape, seed=shape[0] * 7 + shape[1])
    engine = SpectrumEngine("cpu")
    exact = SpectrumEngine("cpu", exact=True)
    top_min = _linalg.SCIPY_EIGEN_MIN

    def full_eigh() -> object:
        _linalg.SCIPY_EIGEN_MIN = 1 << 62
        try:
            return engine.top_vectors([w], k)
        finally:
            _linalg.SCIPY_EIGEN_MIN = top_min

    method = engine.top_vectors([w], k)[0].method
    values, topk, eigh, svd = best_times(
        [
            lambda: engine.singular_values([w]),
            lambda: engine.top_vectors([w], k),
            full_eigh,
            lambda: exact.top_vectors([w], k),
        ],
        repeat,
    )
    return {"values": values, "topk": topk, "eigh": eigh, "svd": svd, "method": method}


def section_vectors(repeat: int, k: int = 100) -> None:
    """Vectors against values only on Pythia-160m shapes, and one checkpoint's total."""
    print(f"## vectors: Pythia-160m shapes, fp16 weights, CPU, k = {k} (seconds, best)")
    cols = ["values", "topk", "eigh", "svd"]
    print(
        f"{'shape':>12} {'count':>5} {'values':>8} {'vectors':>8} {'full eigh':>9} "
        f"{'svd-f64':>8} {'method':>14} {'vec/val':>8} {'eigh/val':>8}"
    )
    totals = dict.fromkeys(cols, 0.0)
    for shape, count in PYTHIA_160M:
        row = vectors_row(shape, k, repeat)
        for key in cols:
            totals[key] += count * row[key]
        print(
            f"{'×'.join(map(str, shape)):>12} {count:>5} {row['values']:>8.4f} "
            f"{row['topk']:>8.4f} {row['eigh']:>9.4f} {row['svd']:>8.4f} {row['method']:>14} "
            f"{row['topk'] / row['values']:>8.2f} {row['eigh'] / row['values']:>8.2f}",
            flush=True,
        )
    print(
        f"{'checkpoint':>12} {'':>5} {totals['values']:>8.2f} {totals['topk']:>8.2f} "
        f"{totals['eigh']:>9.2f} {totals['svd']:>8.2f} {'':>14} "
        f"{totals['topk'] / totals['values']:>8.2f} {totals['eigh'] / totals['values']:>8.2f}"
    )


def section_methods(repeat: int) -> None:
    """Each method's time and error on the shapes documented in docs/methods.md."""
    print("## methods: time s (max |Δσ|/σ1 vs float64 LAPACK), fp16 weights, CPU")
    names = ["svdvals-f32", "gram-eigvalsh-f64", "svdvals-f64", "tsqr-svdvals-f64"]
    print(f"{'shape':>12} " + " ".join(f"{n:>18}" for n in names) + f" {'torch-lapack-f64':>16}")
    for shape in METHOD_SHAPES:
        cells = methods_row(shape, repeat)
        print(
            f"{'×'.join(map(str, shape)):>12} "
            + " ".join(f"{c:>18}" for c in cells[:-1])
            + f" {cells[-1]:>16}",
            flush=True,
        )


def constructed(m: int, n: int, sigma: np.ndarray, seed: int) -> torch.Tensor:
    """A float64 m×n matrix with exactly these singular values (random orthogonal factors)."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    qa, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    qb, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    return (qa * torch.as_tensor(sigma, dtype=torch.float64)) @ qb.T


def section_accuracy() -> None:
    """Observed Gram error vs its bound on hard constructed matrices, and the method recorded."""
    cpu = torch.device("cpu")
    engine = SpectrumEngine("cpu")
    cases = []
    for cond in (1e2, 1e4, 1e6, 1e8):
        for m, n in ((1024, 512), (512, 1024), (768, 768)):
            r = min(m, n)
            cases.append((f"cond {cond:.0e} geometric", m, n, np.logspace(0, -np.log10(cond), r)))
            flat = np.ones(r)
            flat[r // 2 :] = 1 / cond
            cases.append((f"cond {cond:.0e} half flat", m, n, flat))
    cases.append(("rank 100 of 512", 1024, 512, np.r_[np.ones(100), np.zeros(412)]))
    cases.append(("repeated (4 values)", 768, 768, np.repeat([1.0, 0.5, 0.25, 1e-3], 192)))
    print("## accuracy: float64 constructed matrices, CPU (values as fractions of σ1)")
    print(
        f"{'case':>26} {'shape':>9} {'gram max|Δσ|':>13} {'gram bound':>11} "
        f"{'engine method':>18} {'engine max|Δσ|':>15}"
    )
    for k, (name, m, n, sigma) in enumerate(cases):
        w = constructed(m, n, sigma, seed=k)
        ref = lapack(w)
        chunk = _gram_chunk(max(m, n), cpu)
        sig, bound, _ = _linalg.gram_eigvalsh([_linalg.oriented(w)], cpu, chunk)
        gram_err = float(np.max(np.abs(sig[0].numpy() - ref)) / ref[0])
        spec = engine.singular_values([w])[0]
        err = float(np.max(np.abs(spec.sigma - ref)) / ref[0])
        print(
            f"{name:>26} {m}×{n:<5} {gram_err:>13.1e} {float(bound.max()) / ref[0]:>11.1e} "
            f"{spec.method:>18} {err:>15.1e}"
        )


def main() -> None:
    """Parse arguments and run the sections asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--section", choices=["speed", "methods", "vectors", "accuracy", "all"], default="speed"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (best kept)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    if args.section in ("speed", "all"):
        section_speed(args.repeat)
    if args.section in ("methods", "all"):
        section_methods(args.repeat)
    if args.section in ("vectors", "all"):
        section_vectors(args.repeat)
    if args.section in ("accuracy", "all"):
        section_accuracy()


if __name__ == "__main__":
    main()
