"""Benchmark of ``specdyn plot rank`` on a Pythia-sized store (154 steps × 200 matrices).

Builds a synthetic values-only store with `specdyn.store.StoreWriter`: the 154
steps of a Pythia run (0, 1, 2, 4, …, 512, then every 1000 up to 143000), 40
GPT-NeoX layers × 5 matrices with R = 512 (``query_key_value`` 1536×512, its
``[q]`` block 512×512, ``attention.dense`` 512×512, ``mlp.dense_h_to_4h``
2048×512, ``mlp.dense_4h_to_h`` 512×2048), synthetic spectra whose tail decays
over training, their metrics from `specdyn.metrics.spectral_metrics`, and two
steps flagged as duplicates (as the Pythia preset flags them). Then measures,
the methods taking turns, best and median of --repeat rounds:

- ``import``: ``python -c "from specdyn.plots import draw"`` in a fresh process, the
  floor every command pays (interpreter, numpy, h5py, matplotlib);
- ``cli``: ``python -m specdyn plot rank RUN --home WS --out FILE`` in a fresh
  process, what a user waits for (imports, opening the store, drawing, PNG at
  the default 150 dpi);
- ``cli --log-x``: the same with the symmetric-log step axis;
- ``in-process``: `specdyn.plot_rank` + ``savefig`` in this process with
  everything already imported, split into drawing and writing the PNG.

Each time is printed with its ratio to the ``import`` floor measured in the
same run. The issue 4 target: ``specdyn plot rank`` under 10 s on the CI machine.

    python benchmarks/bench_plot.py
    python benchmarks/bench_plot.py --repeat 5 --home /tmp/ws   # keep (and reuse) the store

Results are recorded in docs/benchmarks.md ("plot rank").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RUN = "pythia-like"
LAYERS = 40
RANK = 512
SHAPES = [  # (name inside a layer, kind, part, shape, source shape)
    ("attention.query_key_value.weight", "linear", None, (1536, 512), (1536, 512)),
    ("attention.query_key_value.weight[q]", "qkv_part", "q", (512, 512), (1536, 512)),
    ("attention.dense.weight", "linear", None, (512, 512), (512, 512)),
    ("mlp.dense_h_to_4h.weight", "linear", None, (2048, 512), (2048, 512)),
    ("mlp.dense_4h_to_h.weight", "linear", None, (512, 2048), (512, 2048)),
]
FLAGGED = {2: "duplicate of step 1", 64000: "duplicate of step 63000"}


def pythia_steps() -> list[int]:
    """The 154 checkpoint steps of a Pythia run."""
    return [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))


def matrix_records() -> list:
    """200 MatrixRecords in forward order, each with R = 512."""
    from specdyn.store import MatrixRecord

    records = []
    for layer in range(LAYERS):
        for name, kind, part, shape, source_shape in SHAPES:
            full = f"gpt_neox.layers.{layer}.{name}"
            param = full.split("[")[0]
            records.append(
                MatrixRecord(
                    name=full,
                    param=param,
                    key=param,
                    kind=kind,
                    part=part,
                    shape=shape,
                    source_shape=source_shape,
                    source_dtype="float16",
                )
            )
    return records


def step_records(steps: list[int]) -> list:
    """StepRecords as if every step were a Hugging Face revision folder."""
    from specdyn.store import StepRecord

    return [
        StepRecord(
            step=s,
            epoch=None,
            source=f"/hf/pythia/step{s}",
            format="safetensors",
            size=400_000_000,
            mtime=1.7e9 + s,
            sha256=hashlib.sha256(f"step {s}".encode()).hexdigest(),
        )
        for s in steps
    ]


def build_store(home: Path) -> tuple[Path, float]:
    """Write the synthetic store into `home` (reused when complete); its path and build seconds."""
    from specdyn.metrics import METRIC_NAMES, spectral_metrics
    from specdyn.store import StoreWriter

    path = home / f"{RUN}.h5"
    started = time.perf_counter()
    steps = pythia_steps()
    matrices = matrix_records()
    rng = np.random.default_rng(0)
    # a quarter-circle-like bulk, whose tail decays with training (so the rank falls)
    bulk = np.sqrt(np.linspace(1.0, 1e-3, RANK))
    with StoreWriter.open(
        path,
        run_name=RUN,
        source_root="/hf/pythia",
        step_unit="step",
        steps=step_records(steps),
        matrices=matrices,
        skipped=[],
        aliases={},
        options={"precision": "float64", "exact": False, "include": [], "exclude": []},
        provenance={"specdyn_version": "bench", "argv": sys.argv[1:], "pid": os.getpid()},
        metric_names=METRIC_NAMES,
    ) as writer:
        for step in steps:
            if step not in writer.pending_steps:
                continue
            progress = np.log1p(step) / np.log1p(steps[-1])  # rank moves on a log clock
            decay = np.linspace(0.0, 1.0, RANK) ** 2 * progress
            spectra, metrics = {}, {}
            for j, m in enumerate(matrices):
                depth = 0.5 + j / len(matrices)
                sigma = np.sort(bulk * np.exp(-3.0 * depth * decay) * rng.uniform(0.9, 1.1, RANK))
                sigma = sigma[::-1].copy()
                spectra[m.name] = (sigma, "gram-eigvalsh-f64")
                metrics[m.name] = {k: float(v) for k, v in spectral_metrics(sigma).items()}
            writer.write_step(step, spectra, metrics)
        for step, flag in FLAGGED.items():
            writer.flag_step(step, flag)
    return path, time.perf_counter() - started


def timed_process(argv: list[str]) -> float:
    """Wall seconds of one fresh process (which must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.strip()}")
    return elapsed


def in_process(path: Path, out: Path) -> tuple[float, float]:
    """(draw, savefig) seconds of `specdyn.plot_rank` on the store, everything imported."""
    import specdyn

    started = time.perf_counter()
    ax = specdyn.plot_rank(path)
    drawn = time.perf_counter()
    ax.figure.savefig(out, dpi=150)
    return drawn - started, time.perf_counter() - drawn


def summary(times: list[float]) -> tuple[float, float]:
    """(best, median)."""
    return min(times), statistics.median(times)


def main() -> None:
    """Build the store, time the methods taking turns, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--home", type=Path, help="workspace to keep (default: a temporary one)")
    options = parser.parse_args()

    import matplotlib

    from specdyn.plots import draw  # noqa: F401 - warm the in-process method's imports outside the timings

    with tempfile.TemporaryDirectory(prefix="specdyn-bench-plot-") as scratch:
        home = options.home or Path(scratch)
        home.mkdir(parents=True, exist_ok=True)
        path, build_s = build_store(home)
        py = sys.executable
        methods: dict[str, Callable[[], float]] = {
            "import": lambda: timed_process([py, "-c", "from specdyn.plots import draw"]),
            "cli": lambda: timed_process(
                [py, "-m", "specdyn", "plot", "rank", RUN, "--home", str(home),
                 "--out", str(Path(scratch) / "cli.png")]
            ),
            "cli --log-x": lambda: timed_process(
                [py, "-m", "specdyn", "plot", "rank", RUN, "--home", str(home), "--log-x",
                 "--out", str(Path(scratch) / "cli-log.png")]
            ),
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in methods}
        draw_s, save_s = [], []
        in_process(path, Path(scratch) / "warm.png")  # first call builds font caches
        for _ in range(options.repeat):
            for name, method in methods.items():
                times[name].append(method())
            d, s = in_process(path, Path(scratch) / "in-process.png")
            draw_s.append(d)
            save_s.append(s)
        times["in-process"] = [d + s for d, s in zip(draw_s, save_s, strict=True)]
        png_kb = (Path(scratch) / "cli.png").stat().st_size / 1024
        store_mb = path.stat().st_size / 2**20

    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"matplotlib {matplotlib.__version__}"
    )
    print(
        f"store: {len(pythia_steps())} steps × {LAYERS * len(SHAPES)} matrices (R = {RANK}), "
        f"{store_mb:.0f} MB, built in {build_s:.1f} s; PNG {png_kb:.0f} kB at 150 dpi"
    )
    print(f"best of {options.repeat} rounds (median in brackets)")
    floor = summary(times["import"])
    print(f"{'method':<14}{'wall s':>16}{'× import':>16}")
    for name, values in times.items():
        best, median = summary(values)
        print(
            f"{name:<14}{best:>7.2f} ({median:>6.2f}){best / floor[0]:>8.2f} "
            f"({median / floor[1]:>5.2f})"
        )
    d, s = summary(draw_s), summary(save_s)
    print(f"in-process split: draw {d[0]:.2f} ({d[1]:.2f}) s, savefig {s[0]:.2f} ({s[1]:.2f}) s")
    cli = summary(times["cli"])
    print(f"cli − import: {cli[0] - floor[0]:.2f} s best; target: cli under 10 s")


if __name__ == "__main__":
    main()
