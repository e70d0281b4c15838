"""Benchmark: the cost of the integrity checks (CRC-32 of every torch-zip record read,
the store's read-back before each done flag, no HDF5 sieve buffer) on the Pythia-160m
bench, as a ratio to the code before them.

The baseline is the same analysis run by an older commit of specdyn (default: the last
commit before the checks, 5610314), checked out into a temporary git worktree and put
first on the child's `PYTHONPATH`. Both take turns on the same checkpoints, each run in
its own process, so drifts of a shared machine hit both alike; medians are reported.

    python benchmarks/bench_integrity.py                    # 2 checkpoints, 5 turns each
    python benchmarks/bench_integrity.py --baseline HEAD~3 --repeat 3

Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _baseline import baseline_worktree
from bench_analyze import checkpoint_folder, run_child

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "5610314"  # main before issue 22's checks


def _child(mode: str, folder: Path) -> None:
    """Analyse `folder` in this process (values only, or with the default vectors) and
    print the wall time and the file the `specdyn` package was imported from."""
    import specdyn

    home = Path(tempfile.mkdtemp(prefix="bench-integrity-ws-"))
    vectors = None if mode == "values" else specdyn.VectorOptions()
    start = time.perf_counter()
    specdyn.analyze(
        folder, home=home, compute=specdyn.ComputeOptions(device="cpu"), vectors=vectors
    )
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": seconds, "package": specdyn.__file__}))


def _run(code_root: Path | None, mode: str, folder: Path) -> dict:
    """One analysis in a child process, importing specdyn from `code_root` (None: this tree)."""
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_root), env.get("PYTHONPATH", "")])
    result, tail = run_child(__file__, mode, folder, env)
    if result is None:
        raise SystemExit(f"child failed: {tail}")
    return result


def main() -> None:
    """Make the checkpoints and the baseline worktree, alternate the runs, print ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with")
    parser.add_argument("--modes", default="values,vectors")
    parser.add_argument("--dir", type=Path, default=None, help="reuse/keep checkpoints here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dir)
        return
    folder, size = checkpoint_folder(args.dir, args.checkpoints)
    with baseline_worktree(args.baseline) as worktree:
        modes = [m.strip() for m in args.modes.split(",")]
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for mode in modes:
                for label, root in (("now", None), ("baseline", worktree)):
                    result = _run(root, mode, folder)
                    expected = worktree if root is not None else REPO
                    if not result["package"].startswith(str(expected)):
                        raise SystemExit(f"{label}: specdyn came from {result['package']}")
                    times.setdefault((mode, label), []).append(result["seconds"])
        print(
            f"{args.checkpoints} × Pythia-160m-shaped fp16 checkpoints ({size:.0f} MB), "
            f"{os.cpu_count()} cores; baseline {args.baseline}; median of {args.repeat} turns"
        )
        print(f"{'mode':<10}{'now s':>10}{'baseline s':>12}{'ratio':>8}")
        for mode in modes:
            now = statistics.median(times[(mode, "now")])
            base = statistics.median(times[(mode, "baseline")])
            print(f"{mode:<10}{now:>10.2f}{base:>12.2f}{now / base:>8.3f}")


if __name__ == "__main__":
    main()
