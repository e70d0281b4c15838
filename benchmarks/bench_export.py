"""Benchmark: memory and time of `specdyn export` on a large synthetic store (issue 17).

A values-only store of 154 steps × 200 matrices of 512 × 512 (R = 512, σ section 126 MB,
each σ dataset 0.63 MB) is written through `StoreWriter`, and a second one with fewer
matrices (``--small-matrices``, default 50: a quarter of the rows, the same largest
dataset); each case then exports a store's σ section in a fresh subprocess, which reports:

- import: resident memory the imports add (pyarrow, pandas, xarray, h5netcdf, specdyn) to a
  bare interpreter;
- init: what a first, tiny export of the same format (the metrics section) adds on top:
  the one-off cost of initialising the format's library (allocator, thread pools, code
  pages touched), which does not depend on the store;
- data growth: the peak resident memory during the σ export over the resident memory just
  before it (the peak is reset first, ``/proc/self/clear_refs``), the figure the target is
  about: under 2× the largest single dataset;
- tracemalloc peak: the most Python and numpy memory held at once during the export;
- pyarrow pool peak: the most memory the pyarrow allocator the export uses held (its
  ``max_memory()``).

A variant sets pyarrow's allocator before the export: ``default`` (the library as it is:
parquet through jemalloc with ``pool.release_unused()`` after every chunk written, CSV
through ``pa.system_memory_pool()``), ``keep`` (jemalloc for both and no release, as the
export was first written), ``system`` (``pa.set_memory_pool(pa.system_memory_pool())``
for everything), ``decay0`` (``pa.jemalloc_set_decay_ms(0)``, no release). netCDF does
not use pyarrow (default only).

    python benchmarks/bench_export.py                       # 154 × 200 × 512, and × 50
    python benchmarks/bench_export.py --steps 40 --matrices 50 --small-matrices 10
    python benchmarks/bench_export.py --repeat 3            # medians of 3 subprocesses

Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
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

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0

bare = vm("VmRSS:")
import pyarrow as pa, pyarrow.parquet, pyarrow.csv, pandas, h5netcdf, xarray
import specdyn
import specdyn.store._export as export_module

store, out, fmt, chunk, variant = sys.argv[1:6]
chunk = int(chunk)
if variant == "system":
    pa.set_memory_pool(pa.system_memory_pool())
elif variant == "decay0":
    pa.jemalloc_set_decay_ms(0)
    export_module._release = lambda pa: None
    export_module._csv_pool = lambda pa: pa.default_memory_pool()
elif variant == "keep":  # the export as first written: jemalloc for all, no release
    export_module._release = lambda pa: None
    export_module._csv_pool = lambda pa: pa.default_memory_pool()
run = specdyn.open_run(store)
imported = vm("VmRSS:")
# a first export (of the small metrics section) initialises the format's library
specdyn.export(run, out=out, format=fmt, section="metrics", chunk_rows=chunk)
before = vm("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
    f.write("5")
reset = vm("VmHWM:") <= before + 65536
# the pool the export allocates from (max_memory: its peak since the process started)
pool = export_module._csv_pool(pa) if fmt == "csv" else pa.default_memory_pool()
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
    "arrow_peak": (pool.max_memory() or 0) if fmt != "netcdf" else 0,
    "import": imported - bare,
    "init": before - imported,
    "growth": vm("VmHWM:") - before,
    "hwm_reset": reset,
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


def measure(store: Path, out: Path, fmt: str, chunk_rows: int, variant: str) -> dict:
    """One export in a fresh interpreter; what it measured."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), str(out), fmt, str(chunk_rows), variant],
        check=True,
        capture_output=True,
        text=True,
    )
    if out.is_dir():  # a parquet table of more than PARQUET_GROUPS_PER_FILE row groups
        shutil.rmtree(out)
    out.unlink(missing_ok=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """Each measure's median over repeated subprocesses."""
    return {
        key: statistics.median(r[key] for r in runs)
        if key != "hwm_reset"
        else all(r[key] for r in runs)
        for key in runs[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=154)
    parser.add_argument("--matrices", type=int, default=200)
    parser.add_argument("--small-matrices", type=int, default=50, help="0: no second store")
    parser.add_argument("--rank", type=int, default=512)
    parser.add_argument("--formats", default="parquet,csv,netcdf")
    parser.add_argument("--variants", default="default,keep,system,decay0")
    parser.add_argument("--chunk-rows", default="65536,8192")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        _run(folder, args)
    finally:
        shutil.rmtree(folder)


def _run(folder: Path, args: argparse.Namespace) -> None:
    """Write the stores, then measure every format, variant and chunk size."""
    dataset = args.steps * args.rank * 8
    target = 2 * dataset
    stores = []
    for n in [args.matrices] + ([args.small_matrices] if args.small_matrices else []):
        store = folder / f"bench-{n}.h5"
        t = time.perf_counter()
        write_store(store, args.steps, n, args.rank)
        stores.append((n, store))
        print(
            f"store {args.steps} × {n} × R={args.rank}: {store.stat().st_size / 1e6:.0f} MB "
            f"written in {time.perf_counter() - t:.0f} s; σ section {dataset * n / 1e6:.0f} MB, "
            f"{args.steps * n * args.rank / 1e6:.1f} M rows"
        )
    print(
        f"largest dataset (one σ) {dataset / 1e6:.2f} MB; target: data growth under "
        f"{target / 1e6:.2f} MB; medians of {args.repeat} subprocesses\n"
    )
    print(
        "| format | variant | matrices | chunk rows | s | tracemalloc peak MB | pyarrow peak MB "
        "| import MB | init MB | data growth MB | target met | out MB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for fmt in args.formats.split(","):
        variants = args.variants.split(",") if fmt != "netcdf" else ["default"]
        for variant in variants:
            for chunk in (int(c) for c in args.chunk_rows.split(",")):
                for n, store in stores:
                    out = folder / f"out.{fmt}"
                    r = median_of(
                        [measure(store, out, fmt, chunk, variant) for _ in range(args.repeat)]
                    )
                    met = "yes" if r["growth"] < target else "no"
                    reset = "" if r["hwm_reset"] else " (peak not reset)"
                    print(
                        f"| {fmt} | {variant} | {n} | {chunk} | {r['seconds']:.1f} "
                        f"| {r['tracemalloc_peak'] / 1e6:.2f} | {r['arrow_peak'] / 1e6:.2f} "
                        f"| {r['import'] / 1e6:.1f} | {r['init'] / 1e6:.1f} "
                        f"| {r['growth'] / 1e6:.2f}{reset} | {met} | {r['bytes'] / 1e6:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
