"""Benchmark: analysis of Pythia-160m-shaped checkpoints, values only and with vectors.

Makes N checkpoints with Pythia-160m's layout and shapes (fp16
`pytorch_model.bin`, GPT-NeoX names and buffers, random weights: SVD cost does
not depend on training), then runs each method in its own process and prints
wall time and peak RSS, with ratios against the floor measured in the same run:

- specdyn: `specdyn.analyze` values-only, loading and store writing included;
- vectors: `specdyn.analyze` with its defaults (top-100 vectors: alignment of
  every pair, per head where the preset says so, agreement with the last step,
  vectors of the first and last step kept);
- vectors-eigh: the same with every Gram matrix's eigenvectors computed by torch's
  `eigh` (all s of them, the route before issue 19), for a before/after in one run;
- floor: bare fp32 `torch.linalg.svdvals` over the same matrices (the views
  specdyn analyses) already in memory, loading excluded;
- paper loop: full `torch.load` of each checkpoint, full `torch.linalg.svd`
  (vectors included) per weight matrix, as the paper's scripts do;
- paper-vectors: the paper-style loop for alignment and agreement: full
  `torch.load`, full float32 `torch.linalg.svd` of every matrix view, the
  reference (last) step decomposed once up front, and every pair's operands
  (heads, slices) decomposed again for the pair, as per-pair scripts do;
- weightwatcher: `WeightWatcher(model).analyze()` on a GPT-NeoX model built
  from the checkpoint, when `weightwatcher` and `transformers` are installed.

    python benchmarks/bench_analyze.py                  # 2 checkpoints
    python benchmarks/bench_analyze.py --checkpoints 1 --methods specdyn,floor

Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _pythia_layout import write_pythia_checkpoint

HIDDEN, LAYERS, HEADS, INTER, VOCAB, CONTEXT = 768, 12, 12, 3072, 50304, 2048


def make_checkpoints(folder: Path, n: int) -> list[Path]:
    """Write n fp16 Pythia-160m-shaped checkpoints as step{k}/pytorch_model.bin."""
    return [
        write_pythia_checkpoint(
            folder / f"step{1000 * k}",
            hidden=HIDDEN,
            layers=LAYERS,
            heads=HEADS,
            inter=INTER,
            vocab=VOCAB,
            context=CONTEXT,
            seed=k,
        )  # fmt: skip
        for k in range(n)
    ]


def checkpoint_folder(folder: Path | None, n: int) -> tuple[Path, float]:
    """`folder` (a new temporary one when None) holding n checkpoints, written unless some
    are there already, and their size in MB."""
    folder = folder or Path(tempfile.mkdtemp(prefix="bench-160m-"))
    if not any(folder.glob("step*/pytorch_model.bin")):
        print(f"writing {n} Pythia-160m-shaped checkpoints to {folder} …", file=sys.stderr)
        make_checkpoints(folder, n)
    return folder, sum(f.stat().st_size for f in folder.glob("step*/pytorch_model.bin")) / 1e6


def _peak_rss_mb() -> float:
    """Peak resident set of this process, MB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
    fork/exec, so a child would report the benchmark driver's own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_specdyn(folder: Path, vectors=None) -> dict:
    """specdyn values-only (or with `vectors` options), loading and store included."""
    import specdyn

    home = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    start = time.perf_counter()
    result = specdyn.analyze(
        folder, home=home, compute=specdyn.ComputeOptions(device="cpu"), vectors=vectors
    )
    seconds = time.perf_counter() - start
    run = result.runs[0]
    return {
        "seconds": seconds,
        "matrices": run.n_matrices * len(run.steps_computed),
        "methods": run.methods,
    }


def run_specdyn_vectors(folder: Path) -> dict:
    """specdyn with its default vector options (k = 100)."""
    import specdyn

    return run_specdyn(folder, vectors=specdyn.VectorOptions())


def run_specdyn_vectors_eigh(folder: Path) -> dict:
    """specdyn with vectors, torch's full `eigh` for every Gram matrix (the old route)."""
    from specdyn import _linalg

    _linalg.SCIPY_EIGEN_MIN = 1 << 62
    return run_specdyn_vectors(folder)


def run_paper_vectors(folder: Path) -> dict:
    """Full loads, full SVDs of every view and of every pair operand, per step."""
    import torch

    from specdyn.pairs import head_pairs, plan_pairs
    from specdyn.sources import open_checkpoint
    from specdyn.vectors import agreement_diagonal, alignment_diagonal
    from specdyn.views import plan_views

    k = 100
    steps = sorted(p for p in folder.iterdir() if p.is_dir())
    ckpt = open_checkpoint(steps[0])
    with ckpt.open() as reader:
        keys = reader.keys()
        infos = {key: reader.info(key) for key in keys}
    plan = plan_views(infos, config=ckpt.config, source_order=keys)
    pairs = plan_pairs(plan, infos, config=ckpt.config).pairs

    def svd(m):
        u, _, vh = torch.linalg.svd(m.float(), full_matrices=False)
        return u[:, :k].double().numpy(), vh[:k].T.double().numpy()

    def load(step_dir):
        sd = torch.load(step_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {v.name: v.extract(sd[v.key]) for v in plan.matrices}

    start = time.perf_counter()
    reference = {name: svd(m) for name, m in load(steps[-1]).items()}
    count = 0
    for step_dir in steps:
        mats = load(step_dir)
        for name, m in mats.items():
            u, v = svd(m)
            agreement_diagonal(u, v, *reference[name], k)
            count += 1
        for pair in pairs:
            first = [svd(x) for x in pair.first.apply(mats[pair.first.matrix])]
            second = [svd(x) for x in pair.second.apply(mats[pair.second.matrix])]
            for i, j in head_pairs(len(first), len(second)):
                a = first[i][0 if pair.first.side == "u" else 1]
                b = second[j][0 if pair.second.side == "u" else 1]
                alignment_diagonal(a, b, k)
                count += 2
        del mats
    return {"seconds": time.perf_counter() - start, "matrices": count}


def _views_in_memory(step_dir: Path):
    """The matrices specdyn analyses, as fp32 tensors in memory (untimed)."""
    import torch

    from specdyn.sources import open_checkpoint
    from specdyn.views import plan_views

    ckpt = open_checkpoint(step_dir)
    with ckpt.open() as reader:
        keys = reader.keys()
        plan = plan_views({k: reader.info(k) for k in keys}, config=ckpt.config, source_order=keys)
        mats = []
        for view in plan.matrices:
            mats.append(view.extract(reader.get(view.key)).to(torch.float32).contiguous())
    return mats


def run_floor(folder: Path) -> dict:
    """Bare fp32 svdvals over the same matrices already in memory."""
    import torch

    seconds = 0.0
    count = 0
    for step_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        mats = _views_in_memory(step_dir)
        start = time.perf_counter()
        for m in mats:
            torch.linalg.svdvals(m)
        seconds += time.perf_counter() - start
        count += len(mats)
        del mats
    return {"seconds": seconds, "matrices": count}


def run_paper_loop(folder: Path) -> dict:
    """Full torch.load, full torch.linalg.svd per 2-D weight, as the paper's scripts do."""
    import torch

    start = time.perf_counter()
    count = 0
    for step_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        sd = torch.load(step_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        for _name, w in sd.items():
            if w.ndim == 2 and w.is_floating_point():
                torch.linalg.svd(w.float(), full_matrices=False)
                count += 1
        del sd
    return {"seconds": time.perf_counter() - start, "matrices": count}


def run_weightwatcher(folder: Path) -> dict:
    """WeightWatcher's analyze() on a GPT-NeoX model holding each checkpoint."""
    import torch
    import transformers
    import weightwatcher

    start = time.perf_counter()
    for step_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        config = transformers.GPTNeoXConfig.from_pretrained(step_dir)
        model = transformers.GPTNeoXForCausalLM(config)
        sd = torch.load(step_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        model.load_state_dict(sd, strict=False)
        del sd
        weightwatcher.WeightWatcher(model=model).analyze()
        del model
    return {"seconds": time.perf_counter() - start, "version": weightwatcher.__version__}


METHODS = {
    "specdyn": run_specdyn,
    "vectors": run_specdyn_vectors,
    "vectors-eigh": run_specdyn_vectors_eigh,
    "floor": run_floor,
    "paper": run_paper_loop,
    "paper-vectors": run_paper_vectors,
    "weightwatcher": run_weightwatcher,
}


def _child(method: str, folder: Path) -> None:
    """Run one method in this process and print its JSON result."""
    result = METHODS[method](folder)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result))


def run_child(
    script: str, mode: str, folder: Path, env: dict[str, str] | None = None
) -> tuple[dict | None, str]:
    """Run `script --child MODE --dir FOLDER` in its own process (environment `env`, else
    this one's): (its RESULT JSON or None, the last line of its stderr)."""
    proc = subprocess.run(
        [sys.executable, script, "--child", mode, "--dir", str(folder)],
        capture_output=True,
        text=True,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]), ""
    return None, (proc.stderr.strip().splitlines() or ["no output"])[-1]


def _run_child(method: str, folder: Path) -> dict | None:
    """Run one method as its own process; None when it cannot run here."""
    result, tail = run_child(__file__, method, folder)
    if result is None:
        print(f"  {method}: did not run ({tail})", file=sys.stderr)
    return result


def _baseline_rss() -> float:
    """Peak RSS of a process that only imports torch and specdyn (MB)."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import specdyn, bench_analyze; print(bench_analyze._peak_rss_mb())"
    return float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    )


def main() -> None:
    """Make the checkpoints, run every method, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--methods", default="specdyn,floor,paper,weightwatcher")
    parser.add_argument("--dir", type=Path, default=None, help="reuse/keep checkpoints here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per method, taking turns; best and median reported",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dir)
        return
    folder, size = checkpoint_folder(args.dir, args.checkpoints)
    print(
        f"checkpoints: {args.checkpoints} × Pythia-160m shape, {size:.0f} MB fp16 on disk; "
        f"cores: {os.cpu_count()}, torch threads: default"
    )
    print(f"baseline RSS (import torch + specdyn): {_baseline_rss():.0f} MB")
    methods = [m.strip() for m in args.methods.split(",")]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(args.repeat):  # methods take turns, so slow drifts of the machine hit all alike
        for method in methods:
            if runs[method] is None:
                continue
            result = _run_child(method, folder)
            if result is None:
                runs[method] = None
            else:
                runs[method].append(result)
    results = {m: (min(r, key=lambda x: x["seconds"]) if r else None) for m, r in runs.items()}
    floor = results.get("floor")
    print(f"best of {args.repeat} runs (median in brackets)")
    print(f"{'method':<15}{'wall s':>16}{'× floor':>16}{'peak RSS MB':>13}")
    for method in methods:
        r = results[method]
        if r is None:
            print(f"{method:<15}{'—':>16}{'—':>16}{'—':>13}")
            continue
        med = statistics.median(x["seconds"] for x in runs[method])
        if floor:
            floor_med = statistics.median(x["seconds"] for x in runs["floor"])
            ratio = f"{r['seconds'] / floor['seconds']:.2f} ({med / floor_med:.2f})"
        else:
            ratio = "—"
        rss = max(x["peak_rss_mb"] for x in runs[method])
        print(f"{method:<15}{r['seconds']:>8.2f} ({med:>5.2f}){ratio:>16}{rss:>13.0f}")
    for name in ("specdyn", "vectors"):
        if results.get(name):
            print(f"{name} methods: {results[name].get('methods')}")
    pairs = [
        ("vectors", "specdyn"),
        ("vectors-eigh", "specdyn"),
        ("vectors-eigh", "vectors"),
        ("paper-vectors", "vectors"),
        ("specdyn", "floor"),
    ]
    for slow, fast in pairs:
        if runs.get(slow) and runs.get(fast):
            best = results[slow]["seconds"] / results[fast]["seconds"]
            med = statistics.median(x["seconds"] for x in runs[slow]) / statistics.median(
                x["seconds"] for x in runs[fast]
            )
            # per round: the two ran minutes apart at most, under the same load
            rounds = [
                a["seconds"] / b["seconds"] for a, b in zip(runs[slow], runs[fast], strict=False)
            ]
            print(
                f"{slow} / {fast}: {best:.2f}× best, {med:.2f}× medians, "
                f"{statistics.median(rounds):.2f}× median of per-round ratios"
            )


if __name__ == "__main__":
    main()
