"""Wall time of `specdyn demo grokking` as a user runs it (fresh process, cold workspace).

    python benchmarks/bench_demo.py                 # default, control and quick settings
    python benchmarks/bench_demo.py --only quick

Each setting runs `python -m specdyn demo grokking [...] --home TMP --json` in a fresh
process and reports the wall time, the training and analysis seconds the demo itself
measured (from its JSON), the rest (imports, figure, store) and the peak RSS of the child.
The ratio `total / training` is the cost of the spectral analysis and the figure on top of
training the network, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

SETTINGS = {
    "default": [],
    "control": ["--no-weight-decay"],
    "quick": ["--quick"],
}


def run(args: list[str], home: str) -> dict:
    """One demo in a fresh process: wall time, the demo's JSON and the child's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "specdyn", "demo", "grokking", *args, "--home", home, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall": wall, "peak_mb": max(peak, before) / 1024, **json.loads(done.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETTINGS), action="append")
    options = parser.parse_args()
    chosen = options.only or list(SETTINGS)
    load = os.getloadavg()[0]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, load average {load:.2f} at start")  # fmt: skip
    print(f"{'setting':10} {'wall s':>7} {'train s':>8} {'analyse s':>9} {'other s':>8} "
          f"{'÷ train':>8} {'peak MB':>8}  val≥0.9 at  rank first→last")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as home:
        for name in chosen:
            r = run(SETTINGS[name], home)
            other = r["wall"] - r["training_s"] - r["analysis_s"]
            print(
                f"{name:10} {r['wall']:7.1f} {r['training_s']:8.1f} {r['analysis_s']:9.1f} "
                f"{other:8.1f} {r['wall'] / r['training_s']:8.2f} {r['peak_mb']:8.0f}  "
                f"{str(r['val_jump_step']):>10}  {r['rank_first']:.3f}→{r['rank_last']:.3f}"
            )


if __name__ == "__main__":
    main()
