"""Benchmark: what one Pythia revision costs to analyse, and what a full sweep needs.

For each size asked (`--sizes`, default 70m,160m,410m) this writes ONE synthetic
revision with that size's exact Pythia layout: fp16 `pytorch_model.bin` with the
GPT-NeoX parameter names and shapes (docs/pythia.md#catalog: H, layers, heads, I; the vocabulary
of that size's config) and the non-weight buffers `attention.bias` ([1,1,2048,2048]
bool), `attention.masked_bias` and `attention.rotary_emb.inv_freq`, plus its
`config.json`. Weights are random N(0, 0.02²): the cost of an SVD does not depend
on training. It checks that specdyn plans exactly the matrix views enumerated
below, then times, each in its own process (peak RSS = VmHWM of that process,
`import torch` included):

- values: `specdyn.analyze(folder, vectors=None)`: all singular values and metrics;
- vectors: `specdyn.analyze(folder)` with its defaults: top-100 vectors, the
  alignment of every pair (per head for Q↔K and V→O), the agreement with the
  reference (this revision itself), the vectors kept in the store.

Both include reading the file, hashing it (sha256, in a second thread) and writing
the store; neither includes a download. Runs take turns, `--repeat` rounds; the best
and the median are printed.

Then, for every size of `specdyn.pythia.CATALOG`, the needs of a full sweep of
154 revisions (docs/pythia.md#catalog):

- disk: at most two revisions held at once (the one analysed and the next one
  downloading), 2 × revision_gb; 154 × revision_gb downloaded in all;
- time: the measured per-revision time × 154 where the size was measured; else
  an estimate scaled from the largest measured size by the dominant costs. For
  every matrix view W (L × s, s the short side, L the long side) the float64 Gram
  product costs ∝ L·s² and its eigendecomposition ∝ s³, so a revision costs
  t ≈ a·G + b·E with G = Σ L·s² and E = Σ s³ over that size's exact views:
  `embed_in` viewed (H, V); per layer the fused QKV (3H, H), its Q, K, V split
  3 × (H, H), `attention.dense` (H, H), `dense_h_to_4h` (I, H), `dense_4h_to_h`
  (H, I); `embed_out` (V, H). a and b are fitted on the measured sizes (least
  squares on relative error, non-negative); an unmeasured size gets
  t_largest × (a·G + b·E) / (a·G_largest + b·E_largest). The fit's relative error
  on each measured size is printed, and with three or more measured sizes the
  largest is also predicted from a fit on the others (a hold-out check).

    python benchmarks/bench_pythia.py                          # 70m,160m,410m, 2 rounds
    python benchmarks/bench_pythia.py --sizes 70m,160m,410m,1b --vector-sizes 70m,160m,410m

Results are recorded in docs/pythia.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _pythia_layout import write_pythia_checkpoint
from bench_analyze import _peak_rss_mb, run_child

# step0, 10 log-spaced steps 1 … 512, step1000 … step143000 (docs/pythia.md#catalog)
SWEEP_REVISIONS = 154
CONTEXT = 2048
K = 100  # the default number of singular vectors
# The 6.9b and 12b configs pad the vocabulary further than the smaller sizes' 50304.
VOCAB = {"6.9b": 50432, "12b": 50688}
DEFAULT_VOCAB = 50304


def _sizes():
    """The catalogue's sizes (one entry per architecture, deduped variants left out)."""
    from specdyn.pythia import CATALOG

    return {key: m for key, m in CATALOG.items() if not key.endswith("-deduped")}


def vocab_of(size: str) -> int:
    """Vocabulary (rows of embed_in / embed_out) of one size."""
    return VOCAB.get(size, DEFAULT_VOCAB)


def view_shapes(model) -> list[tuple[str, int, int]]:
    """(name, out, in) of every matrix view specdyn analyses in one revision of `model`."""
    h, i, v = model.hidden, model.intermediate, vocab_of(model.size)
    out = [("embed_in", h, v)]
    for _ in range(model.layers):
        out += [("qkv", 3 * h, h), ("q", h, h), ("k", h, h), ("v", h, h), ("dense", h, h)]
        out += [("h_to_4h", i, h), ("4h_to_h", h, i)]
    out.append(("embed_out", v, h))
    return out


def cost_terms(model) -> tuple[float, float]:
    """(G, E) = (Σ L·s², Σ s³) over the views of one revision."""
    g = e = 0.0
    for _, m, n in view_shapes(model):
        long, short = max(m, n), min(m, n)
        g += long * short * short
        e += short**3
    return g, e


def reference_vector_bytes(model, k: int = K) -> int:
    """Bytes of the reference's top-k vectors (u and v, float64) held during a sweep."""
    return sum((m + n) * min(k, m, n) * 8 for _, m, n in view_shapes(model))


def revision_bytes(model) -> int:
    """Bytes of one fp16 revision's tensors: every parameter, plus the bool causal masks."""
    h, i, v = model.hidden, model.intermediate, vocab_of(model.size)
    per_layer = 4 * h + 3 * h * h + 3 * h + h * h + h + i * h + i + h * i + h
    params = 2 * v * h + model.layers * per_layer + 2 * h
    return 2 * params + model.layers * CONTEXT * CONTEXT


def make_revision(folder: Path, model, seed: int = 0) -> Path:
    """Write one fp16 revision of `model`'s Pythia layout as folder/step143000/."""
    return write_pythia_checkpoint(
        folder / "step143000", hidden=model.hidden, layers=model.layers, heads=model.heads,
        inter=model.intermediate, vocab=vocab_of(model.size), context=CONTEXT, seed=seed,
    )  # fmt: skip


def check_views(step_dir: Path, model) -> int:
    """Number of views specdyn plans; exits when their shapes differ from `view_shapes`."""
    from specdyn.sources import open_checkpoint
    from specdyn.views import plan_views

    ckpt = open_checkpoint(step_dir)
    with ckpt.open() as reader:
        keys = reader.keys()
        infos = {k: reader.info(k) for k in keys}
    plan = plan_views(infos, config=ckpt.config, source_order=keys)
    planned = sorted(tuple(view.shape) for view in plan.matrices)
    expected = sorted((m, n) for _, m, n in view_shapes(model))
    if planned != expected:
        sys.exit(f"{model.size}: specdyn plans other views than the cost model enumerates")
    return len(planned)


def run_analyze(folder: Path, mode: str) -> dict:
    """`specdyn.analyze` on one revision: values only, or with default vectors."""
    import specdyn

    home = Path(tempfile.mkdtemp(prefix="bench-pythia-ws-"))
    try:
        start = time.perf_counter()
        if mode == "values":
            result = specdyn.analyze(folder, home=home, vectors=None)
        else:
            result = specdyn.analyze(folder, home=home)
        seconds = time.perf_counter() - start
        run = result.runs[0]
        return {
            "seconds": seconds,
            "matrices": run.n_matrices,
            "pairs": run.pairs,
            "methods": run.methods,
            "device": run.device,
            "store_mb": Path(run.store_path).stat().st_size / 1e6,
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _child(mode: str, folder: Path) -> None:
    """Run one measurement in this process and print its JSON result."""
    load = os.getloadavg()[0]
    result = run_analyze(folder, mode)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["load"] = max(load, os.getloadavg()[0])  # other work on the machine skews times
    print("RESULT " + json.dumps(result))


def _run_child(mode: str, folder: Path) -> dict:
    """One measurement in its own process."""
    result, tail = run_child(__file__, mode, folder)
    if result is None:
        sys.exit(f"{mode} on {folder}: failed ({tail})")
    return result


def _baseline_rss() -> float:
    """Peak RSS of a process that only imports torch and specdyn (MB)."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import specdyn, bench_analyze; print(bench_analyze._peak_rss_mb())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    return float(out)


def fit(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Non-negative (a, b) minimising Σ ((a·G + b·E)/t − 1)² over (G, E, t) points."""
    import numpy as np

    x = np.array([[g / t, e / t] for g, e, t in points])
    y = np.ones(len(points))
    if len(points) >= 2:
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        if (coef >= 0).all():
            return float(coef[0]), float(coef[1])
    # one term only (fewer points than terms, or a negative coefficient): the better one
    best = None
    for j in (0, 1):
        col = x[:, j]
        c = float(col @ y / (col @ col))
        err = float(((col * c - y) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, (c, 0.0) if j == 0 else (0.0, c))
    return best[1]


def _predict(coef, model) -> float:
    """a·G + b·E for one size."""
    g, e = cost_terms(model)
    return coef[0] * g + coef[1] * e


def _median(runs: list[dict]) -> float:
    """Median wall time of some runs."""
    return statistics.median(r["seconds"] for r in runs)


def main() -> None:
    """Write the revisions, time them, print the per-revision and full-sweep tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="70m,160m,410m", help="sizes to measure")
    parser.add_argument(
        "--vector-sizes",
        default=None,
        help="sizes also measured with vectors (default: all of --sizes)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="rounds; best and median reported")
    parser.add_argument("--dir", type=Path, default=None, help="write (and keep) revisions here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dir)
        return
    import torch

    catalog = _sizes()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    vector_sizes = sizes if args.vector_sizes is None else args.vector_sizes.split(",")
    vector_sizes = [s.strip() for s in vector_sizes if s.strip()]
    for s in [*sizes, *vector_sizes]:
        if s not in catalog:
            sys.exit(f"--sizes: {s!r} is not one of {', '.join(catalog)}")
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-pythia-"))
    keep = args.dir is not None
    print(
        f"# {date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"CUDA {'available' if torch.cuda.is_available() else 'not available'}, "
        f"Python {platform.python_version()}"
    )
    print(f"baseline RSS (import torch + specdyn): {_baseline_rss():.0f} MB")
    folders: dict[str, Path] = {}
    for s in sizes:
        folder = root / s
        model = catalog[s]
        if not any(folder.glob("step*/pytorch_model.bin")):
            start = time.perf_counter()
            make_revision(folder, model)
            print(f"wrote {s} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        step_dir = next(folder.glob("step*"))
        n_views = check_views(step_dir, model)
        file_mb = (step_dir / "pytorch_model.bin").stat().st_size / 1e6
        print(
            f"{s}: {n_views} views, file {file_mb:.0f} MB (computed {revision_bytes(model) / 1e6:.0f}"
            f" MB of tensors; catalogue {model.revision_gb} GB per revision)"
        )
        folders[s] = folder

    jobs = [(s, "values") for s in sizes] + [(s, "vectors") for s in sizes if s in vector_sizes]
    runs: dict[tuple[str, str], list[dict]] = {job: [] for job in jobs}
    for _ in range(args.repeat):  # jobs take turns, so slow drifts of the machine hit all alike
        for s, mode in jobs:
            runs[(s, mode)].append(_run_child(mode, folders[s]))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nper revision, best of {args.repeat} (median in brackets)")
    print(
        f"{'size':<7}{'mode':<9}{'views':>6}{'pairs':>6}{'wall s':>17}"
        f"{'peak RSS MB':>13}{'store MB':>10}{'load':>6}  methods"
    )
    best: dict[tuple[str, str], float] = {}
    for s, mode in jobs:
        r = runs[(s, mode)]
        b = min(r, key=lambda x: x["seconds"])
        best[(s, mode)] = b["seconds"]
        rss = max(x["peak_rss_mb"] for x in r)
        wall = f"{b['seconds']:.2f} ({_median(r):.2f})"
        print(
            f"{s:<7}{mode:<9}{b['matrices']:>6}{b['pairs']:>6}{wall:>17}"
            f"{rss:>13.0f}{b['store_mb']:>10.1f}{b['load']:>6.1f}  {b['methods']}"
        )
    print(
        f"device: {runs[jobs[0]][0]['device']}; load: 1-minute load average (max of start, end) of the best run"
    )

    coefs = {}
    for mode in ("values", "vectors"):
        measured = [s for s, m in jobs if m == mode]
        if not measured:
            continue
        points = [(*cost_terms(catalog[s]), best[(s, mode)]) for s in measured]
        coef = fit(points)
        coefs[mode] = (coef, measured)
        print(
            f"\n{mode}: t ≈ {coef[0] * 1e9:.4f} ns · Σ L·s² + {coef[1] * 1e9:.4f} ns · Σ s³"
            f" (fitted on {', '.join(measured)})"
        )
        for s in measured:
            pred = _predict(coef, catalog[s])
            err = pred / best[(s, mode)] - 1
            print(f"  {s:<6} measured {best[(s, mode)]:8.2f} s, fit {pred:8.2f} s ({err:+.1%})")
        if len(measured) >= 3:
            largest = max(measured, key=lambda s: cost_terms(catalog[s])[1])
            rest = [p for s, p in zip(measured, points, strict=True) if s != largest]
            pred = _predict(fit(rest), catalog[largest])
            err = pred / best[(largest, mode)] - 1
            print(
                f"  hold-out: {largest} predicted from the others {pred:.2f} s, measured "
                f"{best[(largest, mode)]:.2f} s ({err:+.1%})"
            )

    print(f"\nfull sweep: {SWEEP_REVISIONS} revisions; disk from the catalogue's GB per revision")
    print(
        f"{'size':<6}{'G=ΣLs²':>10}{'E=Σs³':>10}{'rev GB':>8}{'peak disk GB':>14}"
        f"{'download GB':>13}{'values h':>10}{'vectors h':>11}{'ref vecs GB':>13}"
    )
    for s, model in catalog.items():
        g, e = cost_terms(model)
        hours = []
        for mode in ("values", "vectors"):
            if mode not in coefs:
                hours.append("—")
                continue
            coef, measured = coefs[mode]
            if s in measured:
                t, tag = best[(s, mode)], ""
            else:
                largest = max(measured, key=lambda m: cost_terms(catalog[m])[1])
                t = best[(largest, mode)] * _predict(coef, model) / _predict(coef, catalog[largest])
                tag = "*"
            hours.append(f"{t * SWEEP_REVISIONS / 3600:.2f}{tag}")
        print(
            f"{s:<6}{g:>10.2e}{e:>10.2e}{model.revision_gb:>8.2f}"
            f"{2 * model.revision_gb:>14.2f}{SWEEP_REVISIONS * model.revision_gb:>13.0f}"
            f"{hours[0]:>10}{hours[1]:>11}{reference_vector_bytes(model) / 1e9:>13.2f}"
        )
    print(
        "* estimated: the largest measured size's time scaled by the fitted a·G + b·E; "
        "time excludes downloads"
    )


if __name__ == "__main__":
    main()
