"""Benchmark: what the store's checksums cost (issue 15), as ratios to a plain read of the
same file measured in the same run.

A values-only store with Pythia-160m's matrix shapes (12 layers: q, k, v, dense, h→4h,
4h→h; plus embeddings) and 154 steps is written through `StoreWriter`, then, taking turns:

- floor: every σ dataset read with plain h5py (no checks);
- checked read: every σ through `open_run` (each row hashed and compared);
- verify: `specdyn.verify` of the whole store;
- writer open: `StoreWriter.open` of the complete store (it scans every checksum before
  trusting a done step; no rebuild is needed).

    python benchmarks/bench_verify.py                 # 154 steps, 5 turns
    python benchmarks/bench_verify.py --steps 40 --repeat 3

Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

import specdyn
from specdyn.store import MatrixRecord, StepRecord, StoreWriter, open_run, verify_store

D, FF, VOCAB, LAYERS = 768, 3072, 50304, 12


def _matrices() -> list[MatrixRecord]:
    """Pythia-160m's weight matrices as views (q, k, v split)."""
    out = [
        MatrixRecord(
            "embed_in.weight",
            "embed_in.weight",
            "embed_in.weight",
            "embedding",
            None,
            (VOCAB, D),
            (VOCAB, D),
            "float16",
        )
    ]
    for i in range(LAYERS):
        p = f"layers.{i}"
        for part in "qkv":
            out.append(
                MatrixRecord(
                    f"{p}.attention.query_key_value.weight[{part}]",
                    f"{p}.attention.query_key_value.weight",
                    "k",
                    "qkv_part",
                    part,
                    (D, D),
                    (3 * D, D),
                    "float16",
                )
            )
        out.append(
            MatrixRecord(
                f"{p}.attention.dense.weight",
                f"{p}.attention.dense.weight",
                "k",
                "linear",
                None,
                (D, D),
                (D, D),
                "float16",
            )
        )
        out.append(
            MatrixRecord(
                f"{p}.mlp.dense_h_to_4h.weight",
                f"{p}.mlp.dense_h_to_4h.weight",
                "k",
                "linear",
                None,
                (FF, D),
                (FF, D),
                "float16",
            )
        )
        out.append(
            MatrixRecord(
                f"{p}.mlp.dense_4h_to_h.weight",
                f"{p}.mlp.dense_4h_to_h.weight",
                "k",
                "linear",
                None,
                (D, FF),
                (D, FF),
                "float16",
            )
        )
    out.append(
        MatrixRecord(
            "embed_out.weight",
            "embed_out.weight",
            "embed_out.weight",
            "linear",
            None,
            (VOCAB, D),
            (VOCAB, D),
            "float16",
        )
    )
    return out


def _open(path: Path, steps: list[int], matrices: list[MatrixRecord]) -> StoreWriter:
    """The bench store's writer."""
    return StoreWriter.open(
        path,
        run_name="bench",
        source_root="/bench",
        step_unit="step",
        steps=[StepRecord(s, None, f"/bench/step{s}", "torch", 1, 0.0, "") for s in steps],
        matrices=matrices,
        skipped=[],
        aliases={},
        options={},
        provenance={"bench": True},
        metric_names=specdyn.METRIC_NAMES,
    )


def _write_store(path: Path, n_steps: int) -> list[MatrixRecord]:
    """Write every step of the bench store (random σ, sorted descending)."""
    matrices = _matrices()
    steps = list(range(0, 1000 * n_steps, 1000))
    rng = np.random.default_rng(0)
    with _open(path, steps, matrices) as w:
        for s in steps:
            spectra = {
                m.name: (np.sort(rng.random(m.rank))[::-1], "gram-eigvalsh-f64") for m in matrices
            }
            metrics = {m.name: dict.fromkeys(specdyn.METRIC_NAMES, 1.0) for m in matrices}
            w.write_step(s, spectra, metrics)
    return matrices


def _timed(fn) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=154)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    path = folder / "bench.h5"
    t = _timed(lambda: _write_store(path, args.steps))
    matrices = _matrices()
    steps = list(range(0, 1000 * args.steps, 1000))
    print(
        f"store: {path.stat().st_size / 1e6:.0f} MB, {args.steps} steps, {len(matrices)} matrices; written in {t:.1f} s"
    )

    def floor():
        with h5py.File(path, "r", locking=False) as f:
            for m in matrices:
                f[f"sigma/{m.name}"][()]

    def checked():
        with open_run(path) as run:
            for m in matrices:
                run.values.sigma(m.name)

    def verify():
        assert verify_store(path).ok

    def writer_open():
        _open(path, steps, matrices).close()

    cases = {
        "floor (plain h5py read of every σ)": floor,
        "checked read (open_run, every σ)": checked,
        "verify (whole store)": verify,
        "writer open (scan, no rebuild)": writer_open,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeat):
        for name, fn in cases.items():
            times[name].append(_timed(fn))
    base = statistics.median(times[next(iter(cases))])
    print("| case | median s | ratio to floor | turns |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.2f} | {len(ts)} |")


if __name__ == "__main__":
    main()
