"""Start-up of the command line: fresh processes, beside the interpreter's own floor.

Issue 19's targets: ``specdyn --help`` ≤ 0.5 s; ``specdyn plot rank`` on the 154-step ×
200-matrix store ≤ 1.2 s; ``runs`` and ``info`` ≤ 0.8 s. Each command is run in a fresh
process, the commands taking turns, and reported as the median (and best) of --repeat
rounds, with two baselines measured in the same rounds: ``python -c pass`` (the
interpreter) and ``python -c "import torch"`` (what every command paid before torch was
imported lazily). The store is bench_plot.py's synthetic Pythia-sized one.

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeat 9 --home /tmp/ws   # keep (and reuse) the store

Results are recorded in docs/benchmarks.md ("Start-up").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_plot import RUN, build_store, timed_process  # noqa: E402

TARGETS = {"--help": 0.5, "runs": 0.8, "info": 0.8, "plot rank": 1.2}


def commands(home: Path, out: Path) -> dict[str, list[str]]:
    """Label → argv of each measured process."""
    py = sys.executable
    cli = [py, "-m", "specdyn"]
    return {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "--help": [*cli, "--help"],
        "runs": [*cli, "runs", "--home", str(home)],
        "info": [*cli, "info", RUN, "--home", str(home)],
        "plot rank": [*cli, "plot", "rank", RUN, "--home", str(home), "--out", str(out)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--home", type=Path, help="workspace to keep (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        path, built = build_store(home)
        print(f"store {path} ({path.stat().st_size / 1e6:.0f} MB, built in {built:.1f} s)")
        argvs = commands(home, Path(tmp) / "rank.png")
        times: dict[str, list[float]] = {label: [] for label in argvs}
        for _ in range(args.repeat):
            for label, argv in argvs.items():
                times[label].append(timed_process(argv))
        floor = statistics.median(times["python -c pass"])
        print(f"\nmedians of {args.repeat} fresh processes (the commands taking turns)\n")
        print("| process | median s | best s | × interpreter | target s | met |")
        print("|---|---|---|---|---|---|")
        for label, values in times.items():
            median = statistics.median(values)
            target = TARGETS.get(label)
            met = "" if target is None else ("yes" if median <= target else "no")
            print(
                f"| {label} | {median:.3f} | {min(values):.3f} | {median / floor:.1f} | "
                f"{'' if target is None else target} | {met} |"
            )


if __name__ == "__main__":
    main()
