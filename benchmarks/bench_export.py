"""Benchmark: memory and time of `specdyn export` on a large synthetic store (issue 17).

A values-only store of 154 steps × 200 matrices of 512 × 512 (R = 512, σ section 126 MB,
each σ dataset 0.63 MB) is written through `StoreWriter`; each case then exports its σ
section (15.8 M rows) in a fresh subprocess, which reports:

- tracemalloc peak: the most Python and numpy memory held at once during the export;
- pyarrow pool peak: the most memory pyarrow's allocator held (parquet only);
- VmHWM − VmRSS before: the growth of the process's peak resident memory over what it
  held before the export started (after every import and the store opened).

    python benchmarks/bench_export.py                       # 154 × 200 × 512
    python benchmarks/bench_export.py --steps 40 --matrices 50

Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_verify import _open as open_bench_store

import specdyn
from specdyn.store import MatrixRecord

_CHILD = r"""
import json, sys, time, tracemalloc
import pyarrow as pa, pyarrow.parquet, pandas, h5netcdf, xarray
import specdyn

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0

store, out, fmt, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
run = specdyn.open_run(store)
# a first export (of the small metrics section) loads every module the export uses
specdyn.export(run, out=out, format=fmt, section="metrics", chunk_rows=chunk)
before = vm("VmRSS:")
tracemalloc.start()
start = time.perf_counter()
report = specdyn.export(run, out=out, format=fmt, section="sigma", chunk_rows=chunk)
seconds = time.perf_counter() - start
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({
    "seconds": seconds,
    "rows": report.files[0].rows,
    "bytes": report.files[0].bytes,
    "tracemalloc_peak": peak,
    "arrow_peak": pa.default_memory_pool().max_memory(),
    "hwm_growth": vm("VmHWM:") - before,
}))
"""


def write_store(path: Path, n_steps: int, n_matrices: int, rank: int) -> None:
    """A values-only store of random descending σ (every metric 1.0)."""
    matrices = [
        MatrixRecord(
            f"layers.{j}.weight",
            f"layers.{j}.weight",
            f"k{j}",
            "linear",
            None,
            (rank, rank),
            (rank, rank),
            "float32",
        )
        for j in range(n_matrices)
    ]
    steps = list(range(0, 1000 * n_steps, 1000))
    rng = np.random.default_rng(0)
    with open_bench_store(path, steps, matrices) as w:
        for s in steps:
            spectra = {
                m.name: (np.sort(rng.random(rank))[::-1], "gram-eigvalsh-f64") for m in matrices
            }
            metrics = {m.name: dict.fromkeys(specdyn.METRIC_NAMES, 1.0) for m in matrices}
            w.write_step(s, spectra, metrics)


def measure(store: Path, out: Path, fmt: str, chunk_rows: int) -> dict:
    """One export in a fresh interpreter; what it measured."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), str(out), fmt, str(chunk_rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=154)
    parser.add_argument("--matrices", type=int, default=200)
    parser.add_argument("--rank", type=int, default=512)
    parser.add_argument("--formats", default="parquet,csv,netcdf")
    parser.add_argument("--chunk-rows", default="262144,16384")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        _run(folder, args)
    finally:
        shutil.rmtree(folder)


def _run(folder: Path, args: argparse.Namespace) -> None:
    """Write the store, then measure every format and chunk size."""
    store = folder / "bench.h5"
    t = time.perf_counter()
    write_store(store, args.steps, args.matrices, args.rank)
    dataset = args.steps * args.rank * 8
    section = dataset * args.matrices
    print(
        f"store: {store.stat().st_size / 1e6:.0f} MB written in {time.perf_counter() - t:.0f} s; "
        f"largest dataset (one σ) {dataset / 1e6:.2f} MB, σ section {section / 1e6:.0f} MB, "
        f"{args.steps * args.matrices * args.rank / 1e6:.1f} M rows"
    )
    print(
        "| format | chunk rows | s | tracemalloc peak MB | pyarrow peak MB | VmHWM growth MB "
        "| out MB |\n|---|---|---|---|---|---|---|"
    )
    for fmt in args.formats.split(","):
        for chunk in (int(c) for c in args.chunk_rows.split(",")):
            r = measure(store, folder / f"out-{chunk}.{fmt}", fmt, chunk)
            print(
                f"| {fmt} | {chunk} | {r['seconds']:.1f} | {r['tracemalloc_peak'] / 1e6:.2f} "
                f"| {r['arrow_peak'] / 1e6:.2f} | {r['hwm_growth'] / 1e6:.1f} | {r['bytes'] / 1e6:.0f} |"
            )
            (folder / f"out-{chunk}.{fmt}").unlink()


if __name__ == "__main__":
    main()
