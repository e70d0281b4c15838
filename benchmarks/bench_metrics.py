"""Benchmark: specdyn's heavy-tailed metrics vs WeightWatcher 0.7.7 on Pythia-160m's shapes (issue 18).

The 86 matrices of a Pythia-160m checkpoint as specdyn sees them: per block Q, K, V and the
attention output (4 × 768×768), the fused QKV (2304×768), the MLP's 3072×768 and 768×3072;
the input (50304×768) and output (768×50304) embeddings. Entries are Student-t (degrees of
freedom 2.5 … 6, scaled 0.02) so that every ESD has a heavy tail to fit; σ comes from numpy's
float64 SVD of the float32 matrix. Timed, each on the same matrices:

- specdyn: `heavy_tail_metrics(sigma, shape)` of all 86 spectra (σ given, as in a store);
- WW fit: WeightWatcher's own power-law fit (`WW_powerlaw.WWFit`) of the same 86 ESDs;
- WW analyze: `WeightWatcher(model).analyze()` of a torch model of bias-free nn.Linear
  layers holding the matrices (its SVDs included; it drops the two embeddings, N > 50000);
- SVD: torch's float64 singular values of the 86 matrices, each taken tall (what the fit
  must cost less than).

Printed: the median seconds of each, their ratios, and the largest |Δα|, |Δxmin|/xmin
and |ΔD| between specdyn and analyze() over the matrices WeightWatcher fits.

    python benchmarks/bench_metrics.py                  # 12 blocks: 86 matrices
    python benchmarks/bench_metrics.py --blocks 2 --ww-repeats 1

Results are recorded in docs/metrics.md#speed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import numpy as np

from specdyn.metrics import heavy_tail_metrics

HIDDEN, INTER, VOCAB = 768, 3072, 50304


def pythia_160m_shapes(blocks: int) -> list[tuple[int, int]]:
    """(out, in) of every matrix specdyn analyses in a Pythia-160m checkpoint."""
    shapes: list[tuple[int, int]] = [(VOCAB, HIDDEN)]
    for _ in range(blocks):
        shapes += [(HIDDEN, HIDDEN)] * 4  # Q, K, V, attention output
        shapes += [(3 * HIDDEN, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]
    shapes.append((HIDDEN, VOCAB))
    return shapes


def make_matrices(shapes: list[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """Student-t float32 matrices, degrees of freedom cycling through 2.5 … 6."""
    rng = np.random.default_rng(seed)
    dfs = np.linspace(2.5, 6.0, 8)
    return [
        (0.02 * rng.standard_t(dfs[i % 8], size=s)).astype(np.float32) for i, s in enumerate(shapes)
    ]


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _ww_model(matrices: list[np.ndarray]):
    import torch
    from torch import nn

    layers = []
    for w in matrices:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
        layers.append(layer)
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--blocks", type=int, default=12, help="transformer blocks (12: 86 matrices)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="runs of specdyn and WW fit")
    parser.add_argument("--ww-repeats", type=int, default=1, help="runs of WW analyze()")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import weightwatcher
    from weightwatcher.WW_powerlaw import WWFit

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    shapes = pythia_160m_shapes(args.blocks)
    matrices = make_matrices(shapes, args.seed)

    def svds():
        # torch's float64 svdvals (specdyn's engine solver), each matrix taken tall
        return [
            torch.linalg.svdvals(
                torch.from_numpy(w.T if w.shape[1] > w.shape[0] else w).double()
            ).numpy()
            for w in matrices
        ]

    svd_s, sigmas = _median_seconds(svds, 1)

    def ours():
        return [heavy_tail_metrics(s, w.shape) for s, w in zip(sigmas, matrices, strict=True)]

    def ww_fits():
        return [WWFit(s * s) for s in sigmas]

    ours_s, results = _median_seconds(ours, args.repeats)
    fit_s, _ = _median_seconds(ww_fits, args.repeats)

    model = _ww_model(matrices)

    def analyze():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return weightwatcher.WeightWatcher(model=model).analyze()

    ww_s, details = _median_seconds(analyze, args.ww_repeats)

    # WeightWatcher names its layers by their index in the Sequential
    by_index = {int(r["name"]): r for _, r in details.iterrows()}
    d_alpha = d_xmin = d_ks = 0.0
    for i, row in by_index.items():
        m = results[i]
        d_alpha = max(d_alpha, abs(float(m["alpha"]) - row["alpha"]))
        d_xmin = max(d_xmin, abs(float(m["xmin"]) - row["xmin"]) / row["xmin"])
        d_ks = max(d_ks, abs(float(m["ks_distance"]) - row["D"]))

    print(f"weightwatcher {weightwatcher.__version__}, {len(shapes)} matrices (R = {HIDDEN})")
    print(f"specdyn heavy_tail_metrics, all spectra:  {ours_s:8.3f} s  (median of {args.repeats})")
    print(f"WW fit (WWFit) of the same ESDs:          {fit_s:8.3f} s  ({fit_s / ours_s:.1f}x)")
    print(
        f"WW analyze(), the {len(details)} matrices it keeps: {ww_s:8.3f} s  "
        f"({ww_s / ours_s:.0f}x; median of {args.ww_repeats})"
    )
    print(f"torch float64 svdvals of the {len(shapes)} matrices: {svd_s:8.3f} s")
    print(
        f"specdyn vs analyze() on its {len(by_index)} matrices: max |dalpha| {d_alpha:.3g}, "
        f"max |dxmin|/xmin {d_xmin:.3g}, max |dD| {d_ks:.3g}"
    )


if __name__ == "__main__":
    main()
