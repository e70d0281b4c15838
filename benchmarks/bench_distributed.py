"""Benchmark: `analyze --scheduler` against the local loop, on this machine.

Writes `--checkpoints` (default 8) synthetic checkpoints with a Pythia size's exact layout
(`--shape`, default 70m; fp16 ``pytorch_model.bin``, random weights, one folder a step)
and analyses them (default vectors: top 100, every pair, agreement, ends kept), each
configuration in its own process, taking turns, `--repeat` rounds:

- ``local``: `specdyn.analyze` in the process, as without ``--scheduler`` (torch's
  threads: all cores, the file hash in a second thread);
- ``local-1t``: the same with one torch thread (what one Dask worker thread gets:
  Dask sets ``OMP_NUM_THREADS=1`` in its workers);
- ``2x1``: a `distributed.LocalCluster` of 2 worker processes × 1 thread (= ``local:2``);
- ``1x2``: one worker process with 2 threads (two tasks at once in one process);
- ``1x1``: one worker process, one thread: with ``local-1t`` it gives the per-task
  overhead of going through Dask (scheduling, pickling the plan's share and the
  results, the client's writes after each result) as
  (t(1x1) − t(local-1t)) / checkpoints, and its share of one step's compute
  t(local-1t) / checkpoints.

Cluster start-up and the workers' first import of specdyn are not timed: the child
starts the cluster, imports specdyn on every worker (``Client.run``), then times
`specdyn.analyze(scheduler=<its address>)`. Peak RSS is VmHWM of the client process and
of each worker process (read on the workers at the end).

The cost model printed beside it predicts the cluster wall time from the local
measurements: t(N workers) ≈ t(reference step) + ceil((steps − 1) / N) × t(step) +
steps × overhead, with t(step) = t(local-1t) / steps.

    python benchmarks/bench_distributed.py                       # 8 × 70m, 2 rounds
    python benchmarks/bench_distributed.py --shape 160m --configs local-1t,1x1

Results are recorded in docs/benchmarks.md ("analyze --scheduler").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pythia_layout import write_pythia_checkpoint  # noqa: E402
from bench_analyze import _peak_rss_mb, run_child  # noqa: E402

SHAPES = {  # hidden, layers, heads, MLP width (docs/pythia.md#catalog)
    "70m": (512, 6, 8, 2048),
    "160m": (768, 12, 12, 3072),
}
CONFIGS = ("local", "local-1t", "2x1", "1x2", "1x1")
CLUSTERS = {"2x1": (2, 1), "1x2": (1, 2), "1x1": (1, 1)}


def write_run(folder: Path, shape: str, checkpoints: int) -> None:
    """`checkpoints` synthetic checkpoints, steps 0, 1000, 2000, … (one folder each)."""
    hidden, layers, heads, inter = SHAPES[shape]
    for i in range(checkpoints):
        write_pythia_checkpoint(
            folder / f"step{1000 * i}", hidden=hidden, layers=layers, heads=heads,
            inter=inter, vocab=50304, context=2048, seed=i,
        )  # fmt: skip


def _worker_rss_mb() -> float:
    """Peak RSS of the calling (worker) process, MB."""
    return _peak_rss_mb()


def child(config: str, folder: Path) -> dict:
    """Run one configuration here; the RESULT line of the child process."""
    import specdyn

    home = Path(tempfile.mkdtemp(prefix="bench-dist-ws-"))
    compute = specdyn.ComputeOptions(device="cpu")
    try:
        if config.startswith("local"):
            if config == "local-1t":
                import torch

                torch.set_num_threads(1)
            t0 = time.perf_counter()
            specdyn.analyze(folder, home=home, compute=compute)
            return {"seconds": time.perf_counter() - t0, "client_rss_mb": _peak_rss_mb()}
        from distributed import Client, LocalCluster, get_task_stream

        workers, threads = CLUSTERS[config]
        with LocalCluster(
            n_workers=workers, threads_per_worker=threads, processes=True,
            dashboard_address=None,
        ) as cluster, Client(cluster) as client:  # fmt: skip
            client.run(lambda: __import__("specdyn.analysis").__name__)  # warm the imports
            with get_task_stream(client=client) as stream:
                t0 = time.perf_counter()
                specdyn.analyze(
                    folder, home=home, compute=compute, scheduler=cluster.scheduler_address
                )
                seconds = time.perf_counter() - t0
            workers_rss = sorted(client.run(_worker_rss_mb).values())
        # the step tasks' own compute, as the workers timed it
        compute_s = sum(
            part["stop"] - part["start"]
            for task in stream.data
            if str(task.get("key", "")).startswith("specdyn-step-")
            for part in task.get("startstops", ())
            if part.get("action") == "compute"
        )
        return {
            "seconds": seconds, "client_rss_mb": _peak_rss_mb(), "workers_rss_mb": workers_rss,
            "task_compute_s": compute_s, "slots": workers * threads,
        }  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)


def predict(local_1t: float, steps: int, workers: int, overhead: float) -> float:
    """The cost model's cluster wall time (module docstring)."""
    step = local_1t / steps
    return step + math.ceil((steps - 1) / workers) * step + steps * overhead


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="70m")
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.dir)), flush=True)
        return 0
    configs = args.configs.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    try:
        folder = tmp / "run"
        write_run(folder, args.shape, args.checkpoints)
        size_mb = sum(f.stat().st_size for f in folder.rglob("*.bin")) / 1e6
        print(
            f"{args.checkpoints} × Pythia-{args.shape} shape ({size_mb:.0f} MB fp16), vectors on; "
            f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
        )
        results: dict[str, list[dict]] = {c: [] for c in configs}
        for _ in range(args.repeat):
            for config in configs:
                result, tail = run_child(__file__, config, folder)
                if result is None:
                    print(f"  {config}: did not run ({tail})", file=sys.stderr)
                    continue
                results[config].append(result)
        report(results, args.checkpoints)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(results: dict[str, list[dict]], steps: int) -> None:
    """Print medians, ratios to `local`, the per-task overhead and the model's predictions."""
    med = {
        c: statistics.median(r["seconds"] for r in rs) for c, rs in results.items() if rs
    }
    print(f"median of {max(len(r) for r in results.values())} rounds (best in brackets)")
    print(f"{'config':<9} {'wall s':>8} {'vs local':>9} {'client RSS MB':>14}  workers RSS MB")
    for config, rs in results.items():
        if not rs:
            continue
        best = min(r["seconds"] for r in rs)
        ratio = med[config] / med["local"] if "local" in med else float("nan")
        client = max(r["client_rss_mb"] for r in rs)
        workers = rs[-1].get("workers_rss_mb", [])
        print(
            f"{config:<9} {med[config]:>8.2f} {ratio:>8.2f}× {client:>14.0f}  "
            f"{', '.join(f'{w:.0f}' for w in workers)}   [{best:.2f}]"
        )
    for config, rs in results.items():
        if rs and "task_compute_s" in rs[-1]:
            r = rs[-1]
            idle = r["seconds"] * r["slots"] - r["task_compute_s"]
            print(
                f"{config}: step tasks computed {r['task_compute_s']:.2f} s in {r['seconds']:.2f} s "
                f"on {r['slots']} slot(s): {100 * idle / r['task_compute_s']:.1f} % of the compute "
                "spent outside the tasks' own work (scheduling, transfers, the client's writes, "
                "idle slots)"
            )
    if "1x1" in med and "local-1t" in med:
        overhead = (med["1x1"] - med["local-1t"]) / steps
        step = med["local-1t"] / steps
        print(
            f"per-task overhead: {overhead:.3f} s = {100 * overhead / step:.1f} % of one step's "
            f"compute ({step:.2f} s, one thread)"
        )
        for config, (workers, threads) in CLUSTERS.items():
            if config in med:
                model = predict(med["local-1t"], steps, workers * threads, overhead)
                print(f"model {config}: {model:.2f} s predicted, {med[config]:.2f} s measured")


if __name__ == "__main__":
    raise SystemExit(main())
