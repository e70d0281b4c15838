"""One-shot check of the engine on a GPU: correctness, the memory bound, speed per Pythia
size, and the solver routes, in one process, written as one JSON and one markdown report.

No download: weights are generated with Pythia's exact shapes (the views and pairs are
planned by specdyn from the same tensor metadata a hub revision has). Sections, in the
order they run (each is time-boxed; what does not fit is listed as skipped, never
dropped):

- ``env``: torch/CUDA versions, the device, float64 and float32 matrix-product rates.
- ``correctness``: every engine route (Gram-eigvalsh, Gram-eigh top-k, the float64 and
  float32 solvers, the QR-over-row-blocks forms, the nonfinite/zero settlements) on
  fixture-shaped matrices and constructed hard cases, against float64 LAPACK on the CPU
  (numpy); the vectors' triplet residuals measured from the matrix.
- ``store``: `specdyn.analyze` of the committed fixture run fixtures/neox-trainer with
  alignment and agreement, on the device and on the CPU; every stored float dataset
  compared.
- ``memory``: ``max_memory`` honoured (``torch.cuda.max_memory_allocated`` against the
  bound) on the largest matrices of 1b, 2.8b, 6.9b and 12b; a bound too small (one
  line naming the smallest that works); a real allocation failure (a per-process memory
  fraction) split into smaller batches and blocks and, on a matrix that fits in no
  block, computed on the CPU with a fallback note.
- ``speed``: per revision of 70m … 12b, values only and with top-100 vectors (plus the
  pair slices, alignment of every pair and agreement of every matrix): specdyn's grouped
  route as `analyze` runs it, the same with one group per revision, a per-matrix engine
  loop and the paper-style loop (a full float32 SVD per matrix); the two loops are timed
  on layer 0 and the embeddings and scaled by the layer count. The host-to-device
  transfer of a revision, pageable and pinned.
- ``routes``: per square size of the Pythia family, the solvers the engine can choose
  from (float64/float32 Gram products, eigvalsh batched and looped, svdvals with each
  cuSOLVER driver), so that the per-shape choice can be made from numbers.

    python benchmarks/gpu_check.py --out gpu-report                 # on a GPU, ≤ 8 min
    python benchmarks/gpu_check.py --device cpu --quick --out r     # tiny shapes (tests)

Results are recorded in docs/benchmarks.md ("GPU").
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _pythia_layout import pythia_config  # noqa: E402

from specdyn import _linalg  # noqa: E402  (a benchmark reaches into the engine's kernels)
from specdyn import engine as engine_module  # noqa: E402
from specdyn.engine import SpectrumEngine  # noqa: E402
from specdyn.errors import EngineError  # noqa: E402
from specdyn.pairs import plan_pairs  # noqa: E402
from specdyn.types import TensorInfo  # noqa: E402
from specdyn.vectors import agreement_diagonal, alignment_diagonal  # noqa: E402
from specdyn.views import plan_views  # noqa: E402

GIB = 2**30

# Pythia sizes: hidden, layers, heads, MLP width, vocabulary rows (as the hub's configs)
# the order the speed section measures them in: the targets (2.8b, 12b) early
SPEED_ORDER = ("70m", "160m", "410m", "1b", "2.8b", "12b", "1.4b", "6.9b")
PYTHIA = {
    "70m": (512, 6, 8, 2048, 50304),
    "160m": (768, 12, 12, 3072, 50304),
    "410m": (1024, 24, 16, 4096, 50304),
    "1b": (2048, 16, 8, 8192, 50304),
    "1.4b": (2048, 24, 16, 8192, 50304),
    "2.8b": (2560, 32, 32, 10240, 50304),
    "6.9b": (4096, 32, 32, 16384, 50432),
    "12b": (5120, 36, 40, 20480, 50688),
}
# tiny stand-ins with the same layout, for --quick (CPU, tests)
QUICK = {
    "tiny-a": (64, 2, 4, 256, 512),
    "tiny-b": (96, 3, 4, 384, 640),
}
# the max_memory bound checked per size (the 12b one is the 16 GB target)
MEMORY_BOUNDS = {"1b": 2 * GIB, "2.8b": 4 * GIB, "6.9b": 8 * GIB, "12b": 16 * 10**9}
TOP_K = 100
TOL = {"float64": 1e-6, "float32": 1e-4}
# stored bytes per group of tensors in `analyze` (specdyn.analysis._run._GROUP_BYTES)
GROUP_BYTES = 64 * 2**20


# ------------------------------------------------------------------ report & budget


@dataclass
class Report:
    """Everything measured, written after every section so a killed run keeps what it had."""

    out: Path
    data: dict = field(default_factory=dict)

    def put(self, section: str, value) -> None:
        """Store a section's results and write the JSON and markdown reports."""
        self.data[section] = value
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(render_markdown(self.data))


class Budget:
    """Wall-clock seconds left for the whole script."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        """Seconds left."""
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    """Wait for the device (timings of asynchronous CUDA work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - t0, value


def median_time(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up."""
    fn()
    return float(np.median([timed(fn, device)[0] for _ in range(repeat)]))


# ------------------------------------------------------------------ env


def section_env(device: torch.device, quick: bool) -> dict:
    """Versions, the device, and float64/float32 matrix-product rates."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
        env["multiprocessors"] = props.multi_processor_count
        env["driver_cusolver"] = str(torch.backends.cuda.preferred_linalg_library())
    n = 512 if quick else 8192
    rates = {}
    for dtype in (torch.float64, torch.float32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        seconds = median_time(lambda a=a: a @ a, device, 3)
        rates[str(dtype).removeprefix("torch.")] = round(2 * n**3 / seconds / 1e12, 2)
    env["matmul_tflops"] = rates
    env["fp64_to_fp32_rate"] = round(rates["float64"] / rates["float32"], 3)
    return env


# ------------------------------------------------------------------ correctness


def _with_spectrum(m: int, n: int, sigma: np.ndarray, seed: int) -> np.ndarray:
    """An m×n float64 matrix with exactly the singular values `sigma` (random bases)."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * sigma[:r]) @ v.T


def correctness_cases(quick: bool) -> list[tuple[str, torch.Tensor]]:
    """(name, matrix) pairs: fixture shapes in their stored dtypes and constructed hard cases."""
    big, mid = (96, 48) if quick else (3072, 768)
    g = torch.Generator().manual_seed(20)

    def rand(m, n, dtype):
        return (torch.randn(m, n, generator=g, dtype=torch.float64) * 0.02).to(dtype)

    s = mid
    cases = [
        (f"gaussian {mid}x{mid} fp32", rand(mid, mid, torch.float32)),
        (f"gaussian {big}x{mid} fp16", rand(big, mid, torch.float16)),
        (f"gaussian {mid}x{big} bf16 (wide)", rand(mid, big, torch.bfloat16)),
        (f"gaussian {3 * mid}x{mid} fp16", rand(3 * mid, mid, torch.float16)),
    ]
    for cond in (1e2, 1e5, 1e8):
        sig = np.geomspace(1.0, 1.0 / cond, s)
        cases.append((f"cond {cond:.0e} {big}x{mid}", torch.from_numpy(_with_spectrum(big, s, sig, 1))))
    deficient = np.concatenate([np.linspace(3.0, 1.0, s // 2), np.zeros(s - s // 2)])
    cases.append((f"rank {s // 2} of {mid}", torch.from_numpy(_with_spectrum(big, s, deficient, 2))))
    repeated = np.concatenate([np.full(s // 4, 2.0), np.linspace(1.0, 0.1, s - s // 4)])
    cases.append(("repeated top values", torch.from_numpy(_with_spectrum(big, s, repeated, 3))))
    base = _with_spectrum(big, s, np.linspace(1.0, 0.01, s), 4)
    cases.append(("scale 1e-250", torch.from_numpy(base * 1e-250)))
    cases.append(("scale 1e+250", torch.from_numpy(base * 1e250)))
    cases.append(("zero", torch.zeros(big, mid)))
    nan = rand(big, mid, torch.float32)
    nan[3, 5] = float("nan")
    cases.append(("nan", nan))
    return cases


def engine_routes(device: torch.device) -> list[tuple[str, dict, int]]:
    """(route label, SpectrumEngine kwargs without max_memory, k) for every route;
    max_memory "tight" means: below the whole-matrix solver's bytes (→ its QR form)."""
    routes = [
        ("gram-eigvalsh-f64", {}, 0),
        ("svdvals-f64", {"exact": True}, 0),
        ("tsqr-svdvals-f64", {"exact": True, "max_memory": "tight"}, 0),
        ("gram-eigh-f64", {}, TOP_K),
        ("svd-f64", {"exact": True}, TOP_K),
        ("tsqr-svd-f64", {"exact": True, "max_memory": "tight"}, TOP_K),
    ]
    if device.type == "cuda":  # on a CPU, float32 precision keeps the Gram route
        # "slow_fp64": as on a GPU without full-rate float64, where float32 precision
        # selects the float32 solvers (`fast_float64` patched to False for the call)
        f32 = {"precision": "float32", "slow_fp64": True}
        routes.insert(1, ("svdvals-f32", f32, 0))
        routes.insert(3, ("tsqr-svdvals-f32", {**f32, "max_memory": "tight"}, 0))
        routes.insert(4, ("precision-f32 (this GPU)", {"precision": "float32"}, 0))
    return routes


def _tight_bound(w: torch.Tensor, kwargs: dict, k: int) -> int:
    """Bytes just below the whole-matrix solver's need for `w` (forces the QR form)."""
    length, s = max(w.shape), min(w.shape)
    src = w.element_size()
    if k:
        return _linalg.svd_bytes(1, length, s, src, k) - 1
    elem = 4 if kwargs.get("precision") == "float32" else 8
    return _linalg.svdvals_bytes(1, length, s, src, elem) - 1


# triplets checked: σ_i above this share of σ1 (below it the long-side vectors of the QR
# route are documented noise, and a zero σ's vectors are not unique)
RESIDUAL_FLOOR = 1e-8


def _residual(w64: np.ndarray, sigma: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """max_i sqrt(‖W v_i − σ_i u_i‖² + ‖Wᵀ u_i − σ_i v_i‖²) / σ_1 over σ_i > floor·σ1,
    computed on W/σ1 (no overflow at any scale)."""
    k = u.shape[1]
    w = w64 / sigma[0]
    s = sigma[:k] / sigma[0]
    keep = s > RESIDUAL_FLOOR
    a = w @ v[:, keep] - u[:, keep] * s[keep]
    b = w.T @ u[:, keep] - v[:, keep] * s[keep]
    return float(np.sqrt((a**2).sum(0) + (b**2).sum(0)).max(initial=0.0))


def check_route(
    label: str, kwargs: dict, k: int, name: str, w: torch.Tensor, ref: np.ndarray | None, device
) -> dict:
    """One route on one matrix against float64 LAPACK's σ `ref` (None for a nonfinite
    matrix): max |Δσ|/σ1, the triplets' residual, the method recorded."""
    kw = dict(kwargs)
    slow_fp64 = kw.pop("slow_fp64", False)
    if kw.get("max_memory") == "tight":
        kw["max_memory"] = _tight_bound(w, kw, k)
    engine = SpectrumEngine(device=str(device), **kw)
    w64 = w.to(torch.float64).numpy()
    real = engine_module.fast_float64
    if slow_fp64:
        engine_module.fast_float64 = lambda device: False
    try:
        seconds, result = timed(
            lambda: engine.top_vectors([w], k)[0] if k else engine.singular_values([w])[0], device
        )
    finally:
        engine_module.fast_float64 = real
    row = {"case": name, "route": label, "method": result.method, "seconds": round(seconds, 4)}
    tol = TOL["float32" if kw.get("precision") == "float32" and not k else "float64"]
    if ref is None:
        row["ok"] = bool(np.isnan(result.sigma).all() and result.method == "nonfinite")
        return row
    sigma1 = ref[0]
    if sigma1 == 0:
        row["ok"] = bool((result.sigma == 0).all() and result.method == "zero")
        return row
    err = float(np.abs(result.sigma - ref).max() / sigma1)
    row["sigma_err"] = err
    ok = err <= tol
    if k:
        row["residual"] = _residual(w64, result.sigma, result.u, result.v)
        # rounding of the residual's own computation in float64 on top of the contract
        ok = ok and row["residual"] <= 2 * tol
    row["tolerance"] = tol
    row["ok"] = bool(ok)
    return row


def section_correctness(device: torch.device, quick: bool, budget: Budget) -> dict:
    """Every route on every case; a failure is a row with ok False, never an exception."""
    rows, skipped = [], []
    for name, w in correctness_cases(quick):
        w64 = w.to(torch.float64).numpy()
        ref = np.linalg.svd(w64, compute_uv=False) if np.isfinite(w64).all() else None
        for label, kwargs, k in engine_routes(device):
            if budget.left() < 30:
                skipped.append(f"{label} on {name}: time budget")
                continue
            try:
                rows.append(check_route(label, kwargs, k, name, w, ref, device))
            except EngineError as exc:
                if kwargs.get("max_memory") == "tight" and "needs at least" in str(exc):
                    # the QR form's row block needs more than the whole matrix on this shape
                    skipped.append(f"{label} on {name}: not applicable ({_line(exc)})")
                else:
                    rows.append({"case": name, "route": label, "ok": False, "error": _line(exc)})
            except Exception as exc:  # a route that raises is a finding, recorded as such
                rows.append({"case": name, "route": label, "ok": False, "error": _line(exc)})
    return {
        "rows": rows,
        "failed": [r for r in rows if not r["ok"]],
        "skipped": skipped,
        "ok": all(r["ok"] for r in rows),
    }


# ------------------------------------------------------------------ store equality


def section_store(device: torch.device, budget: Budget) -> dict:
    """`specdyn.analyze` of fixtures/neox-trainer on the device and on the CPU, compared
    dataset by dataset (max |Δ| of every float dataset)."""
    import h5py

    from specdyn import ComputeOptions, analyze

    fixture = REPO / "fixtures" / "neox-trainer"
    stores = {}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for where in ("cpu", str(device)):
            home = Path(tmp) / where.replace(":", "_")
            t0 = time.perf_counter()
            analyze(fixture, home=home, name="neox", compute=ComputeOptions(device=where))
            seconds[where] = round(time.perf_counter() - t0, 2)
            stores[where] = next(home.glob("*.h5"))
        diffs: dict[str, float] = {}
        with h5py.File(stores["cpu"], "r") as a, h5py.File(stores[str(device)], "r") as b:

            def visit(name, obj):
                if not isinstance(obj, h5py.Dataset) or obj.dtype.kind != "f":
                    return
                if name not in b or name.startswith(("provenance", "checksums")):
                    return
                x, y = np.asarray(obj[()], dtype=np.float64), np.asarray(b[name][()], np.float64)
                if name.startswith("vectors"):
                    # singular vectors are defined up to sign: compare magnitudes
                    x, y = np.abs(x), np.abs(y)
                both = np.isnan(x) & np.isnan(y)
                d = np.where(both, 0.0, np.abs(x - y))
                diffs[name] = float(np.nanmax(d)) if d.size else 0.0

            a.visititems(visit)
    groups: dict[str, float] = {}
    for name, d in diffs.items():
        top = name.split("/")[0]
        groups[top] = max(groups.get(top, 0.0), d)
    worst = {k: v for k, v in sorted(diffs.items(), key=lambda kv: -kv[1])[:8]}
    # σ of the fixture is O(1); vectors: |Δ| of |cos| values, bounded by the angle error
    ok = all(v <= 1e-5 for v in groups.values())
    return {"seconds": seconds, "max_abs_diff_by_group": groups, "worst": worst, "ok": ok}


# ------------------------------------------------------------------ Pythia revisions


def pythia_infos(hidden: int, layers: int, heads: int, inter: int, vocab: int):
    """(raw key → TensorInfo, config) of one Pythia revision, as the hub's files hold it."""
    f16 = torch.float16
    infos = {"gpt_neox.embed_in.weight": TensorInfo((vocab, hidden), f16)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            infos[p + f"{norm}.weight"] = TensorInfo((hidden,), f16)
            infos[p + f"{norm}.bias"] = TensorInfo((hidden,), f16)
        infos[p + "attention.bias"] = TensorInfo((1, 1, 2048, 2048), torch.bool)
        infos[p + "attention.masked_bias"] = TensorInfo((), torch.float32)
        infos[p + "attention.rotary_emb.inv_freq"] = TensorInfo((hidden // heads // 8,), torch.float32)
        infos[p + "attention.query_key_value.weight"] = TensorInfo((3 * hidden, hidden), f16)
        infos[p + "attention.query_key_value.bias"] = TensorInfo((3 * hidden,), f16)
        infos[p + "attention.dense.weight"] = TensorInfo((hidden, hidden), f16)
        infos[p + "attention.dense.bias"] = TensorInfo((hidden,), f16)
        infos[p + "mlp.dense_h_to_4h.weight"] = TensorInfo((inter, hidden), f16)
        infos[p + "mlp.dense_h_to_4h.bias"] = TensorInfo((inter,), f16)
        infos[p + "mlp.dense_4h_to_h.weight"] = TensorInfo((hidden, inter), f16)
        infos[p + "mlp.dense_4h_to_h.bias"] = TensorInfo((hidden,), f16)
    infos["gpt_neox.final_layer_norm.weight"] = TensorInfo((hidden,), f16)
    infos["gpt_neox.final_layer_norm.bias"] = TensorInfo((hidden,), f16)
    infos["embed_out.weight"] = TensorInfo((vocab, hidden), f16)
    config = pythia_config(hidden=hidden, layers=layers, heads=heads, inter=inter, vocab=vocab)
    return infos, config


@dataclass
class Revision:
    """One generated revision: its views, pairs, per-matrix operand slices and weights."""

    size: str
    views: list
    pairs: list
    sliced: dict
    params: dict  # raw key → fp16 CPU tensor (as a reader returns it)

    def stored_bytes(self) -> int:
        """Bytes of the weights the views read."""
        return sum(t.numel() * t.element_size() for t in self.params.values())


def make_revision(size: str, dims, device: torch.device, seed: int = 0) -> Revision:
    """Plan the views and pairs of a revision and generate its weights (N(0, 0.02²) fp16)
    on the device, then move them to host memory, where `analyze` would have read them."""
    infos, config = pythia_infos(*dims)
    plan = plan_views(infos, config=config, source_order=list(infos))
    pairs = plan_pairs(plan, infos, config=config).pairs
    sliced: dict[str, dict] = {}
    for p in pairs:
        for op in (p.first, p.second):
            if op.ops:
                sliced.setdefault(op.matrix, {})[op.ops] = op
    gen = torch.Generator(device=device).manual_seed(seed)
    params = {}
    for key in dict.fromkeys(v.key for v in plan.matrices):
        shape = infos[key].shape
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        params[key] = t.mul_(0.02).to(torch.float16).cpu()
    return Revision(size, plan.matrices, pairs, sliced, params)


def _groups(views, params, group_bytes: float) -> list[list]:
    """Views gathered as `analyze` reads them: whole parameters until `group_bytes`."""
    groups, current, size, seen = [], [], 0, set()
    for view in views:
        current.append(view)
        if view.key not in seen:
            seen.add(view.key)
            size += params[view.key].numel() * params[view.key].element_size()
        if size >= group_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def decompose_revision(rev: Revision, engine: SpectrumEngine, k: int, group_bytes: float):
    """Values (k = 0) or top-k vectors of every view and pair slice, grouped as `analyze`
    groups a checkpoint's tensors. Returns (tops by name, slice tops by (name, ops), methods)."""
    tops, slices, methods = {}, {}, {}
    for group in _groups(rev.views, rev.params, group_bytes):
        mats = [v.extract(rev.params[v.key]) for v in group]
        results = engine.top_vectors(mats, k) if k else engine.singular_values(mats)
        for view, matrix, result in zip(group, mats, results, strict=True):
            methods[result.method] = methods.get(result.method, 0) + 1
            if k:
                tops[view.name] = result
                for ops, op in rev.sliced.get(view.name, {}).items():
                    slices[(view.name, ops)] = engine.top_vectors(op.apply(matrix), k)
    return tops, slices, methods


def vector_metrics(rev: Revision, tops: dict, slices: dict, k: int) -> int:
    """Alignment diagonals of every pair (per slice block) and agreement diagonals of every
    matrix against a reference (the same tops: the same cost); returns diagonals made."""
    made = 0

    def bases(op):
        if op.ops:
            return [(t.u if op.side == "u" else t.v) for t in slices[(op.matrix, op.ops)]]
        t = tops[op.matrix]
        return [t.u if op.side == "u" else t.v]

    for pair in rev.pairs:
        first, second = bases(pair.first), bases(pair.second)
        for i in range(max(len(first), len(second))):
            alignment_diagonal(first[min(i, len(first) - 1)], second[min(i, len(second) - 1)], k)
            made += 1
    for t in tops.values():
        agreement_diagonal(t.u, t.v, t.u, t.v, k)
        made += 1
    return made


def _layer0_subset(rev: Revision) -> Revision:
    """The revision cut to layer 0 and the matrices outside the layers (embeddings)."""
    views = [v for v in rev.views if ".layers." not in v.name or ".layers.0." in v.name]
    keys = {v.key for v in views}
    return Revision(rev.size, views, [], {}, {k: t for k, t in rev.params.items() if k in keys})


def _scaled_time(rev: Revision, layers: int, fn: Callable[[Revision], object], device) -> float:
    """Seconds of `fn` over the whole revision estimated from layer 0 and the rest:
    t(outside) + layers · t(layer 0)."""
    outside = [v for v in rev.views if ".layers." not in v.name]
    layer0 = [v for v in rev.views if ".layers.0." in v.name]
    t_out = timed(lambda: fn(_subset(rev, outside)), device)[0]
    t_l0 = timed(lambda: fn(_subset(rev, layer0)), device)[0]
    return t_out + layers * t_l0


def _subset(rev: Revision, views: list) -> Revision:
    """A revision holding only `views` (and their weights)."""
    keys = {v.key for v in views}
    return Revision(rev.size, views, [], {}, {k: t for k, t in rev.params.items() if k in keys})


def paper_loop(rev: Revision, device: torch.device, k: int) -> None:
    """The paper's loop: each matrix to the device in float32, a full thin SVD."""
    for v in rev.views:
        w = v.extract(rev.params[v.key]).to(device=device, dtype=torch.float32)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        if k:
            u[:, :k].cpu(), vh[:k].cpu()
        s.cpu()


def per_matrix_loop(rev: Revision, engine: SpectrumEngine, k: int) -> None:
    """specdyn's engine called once per matrix (no batching)."""
    for v in rev.views:
        w = v.extract(rev.params[v.key])
        engine.top_vectors([w], k) if k else engine.singular_values([w])


def transfer_rates(rev: Revision, device: torch.device, cap_bytes: int) -> dict:
    """Host-to-device GB/s of the revision's tensors (at most `cap_bytes`), pageable and pinned."""
    if device.type != "cuda":
        return {}
    chosen, total = [], 0
    for t in rev.params.values():
        if total >= cap_bytes:
            break
        chosen.append(t)
        total += t.numel() * t.element_size()
    pageable = timed(lambda: [t.to(device) for t in chosen], device)[0]
    t0 = time.perf_counter()
    pinned_ts = [t.pin_memory() for t in chosen]
    pin_s = time.perf_counter() - t0
    pinned = timed(lambda: [t.to(device, non_blocking=True) for t in pinned_ts], device)[0]
    return {
        "bytes": total,
        "pageable_gb_s": round(total / pageable / 1e9, 2),
        "pinned_gb_s": round(total / pinned / 1e9, 2),
        "pin_memory_gb_s": round(total / pin_s / 1e9, 2),
    }


def _extrapolated(rev: Revision, layers: int, made: int, fn, device, measured: float) -> float:
    """A whole revision's seconds from one of `made` of its `layers` layers: the matrices
    outside the layers timed alone, the layers' share scaled by layers / made."""
    if made >= layers:
        return measured
    outside = _subset(rev, [v for v in rev.views if ".layers." not in v.name])
    t_out = timed(lambda: fn(outside), device)[0]
    return t_out + max(measured - t_out, 0.0) * layers / made


def speed_one(
    size: str, dims, device: torch.device, budget: Budget, baselines: bool, made: int | None = None
) -> dict:
    """All speed measurements of one revision size (the 12b one under ``max_memory`` 16 GB,
    the issue's target; the loops only with `baselines`). With `made` < the size's layer
    count, only that many layers are generated and the ``*_s`` times are extrapolated
    (``_extrapolated``; the measured ones are kept as ``*_measured_s``)."""
    t0 = time.perf_counter()
    layers_total = dims[1]
    made = min(made or layers_total, layers_total)
    dims = (dims[0], made, *dims[2:])
    rev = make_revision(size, dims, device)
    row = {
        "size": size,
        "layers_measured": f"{made} of {layers_total}",
        "matrices": len(rev.views),
        "pairs": len(rev.pairs),
        "slices": sum(len(s) for s in rev.sliced.values()),
        "stored_gb": round(rev.stored_bytes() / 1e9, 2),
        "generate_s": round(time.perf_counter() - t0, 2),
    }
    bound = MEMORY_BOUNDS["12b"] if size == "12b" else None
    row["max_memory"] = bound
    engine = SpectrumEngine(device=str(device), max_memory=bound)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    layers = layers_total

    def values(r):
        return decompose_revision(r, engine, 0, GROUP_BYTES)

    def with_vectors(r):
        return decompose_revision(r, engine, TOP_K, GROUP_BYTES)

    def scaled(key, fn, t):
        if made < layers_total:
            row[key.replace("_s", "_measured_s")] = round(t, 3)
        row[key] = round(_extrapolated(rev, layers_total, made, fn, device, t), 3)

    t, (_, _, methods) = timed(lambda: values(rev), device)
    scaled("values_s", values, t)
    row["values_methods"] = methods
    t = timed(lambda: decompose_revision(rev, engine, 0, math.inf), device)[0]
    scaled("values_one_group_s", lambda r: decompose_revision(r, engine, 0, math.inf), t)
    t, (tops, slices, methods) = timed(lambda: with_vectors(rev), device)
    scaled("vectors_s", with_vectors, t)
    row["vectors_methods"] = methods
    t, diagonals = timed(lambda: vector_metrics(rev, tops, slices, TOP_K), device)
    row["alignment_agreement_s"] = round(t * layers_total / made, 3)
    row["diagonals"] = diagonals
    row["revision_with_vectors_s"] = round(row["vectors_s"] + row["alignment_agreement_s"], 3)
    row["fallback_notes"] = [n.kind for n in engine.notes]
    if device.type == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
    if baselines:
        fn_loop = lambda r: per_matrix_loop(r, engine, 0)  # noqa: E731
        row["loop_values_s"] = round(_scaled_time(rev, layers, fn_loop, device), 3)
        row["paper_values_s"] = round(
            _scaled_time(rev, layers, lambda r: paper_loop(r, device, 0), device), 3
        )
        row["paper_vectors_s"] = round(
            _scaled_time(rev, layers, lambda r: paper_loop(r, device, TOP_K), device), 3
        )
        row["baselines"] = "layer 0 and embeddings timed, layers scaled by count"
    row["transfer"] = transfer_rates(rev, device, 4 * 10**9)
    if row["transfer"]:
        gb = rev.stored_bytes() / 1e9 * layers_total / made  # about: layers dominate
        row["transfer_pageable_s"] = round(gb / row["transfer"]["pageable_gb_s"], 3)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# what the speed section leaves for the sections after it
SPEED_RESERVE_S = 75


def section_speed(device: torch.device, sizes: dict, budget: Budget) -> dict:
    """Speed rows per size in the order given (the issue's target sizes first); a size whose
    projected time does not fit the budget left is listed as skipped. The loops (baselines)
    run for sizes up to 2.8b (hidden ≤ 2560), where they take seconds, not minutes."""
    rows, skipped = [], []
    last = None
    for size, (dims, made) in sizes.items():
        params = sum(int(np.prod(s)) for s in _matrix_shapes(dims)) * (made or dims[1]) / dims[1]
        if last is not None:
            # time grows about as stored elements × short side (Gram and eigensolver work)
            ratio = params * dims[0] / (last[0] * last[1])
            projected = last[2] * ratio
            if projected > budget.left() - SPEED_RESERVE_S:
                skipped.append(f"{size}: projected {projected:.0f} s, {budget.left():.0f} s left")
                continue
        t0 = time.perf_counter()
        try:
            rows.append(speed_one(size, dims, device, budget, dims[0] <= 2560, made))
        except Exception as exc:  # recorded; the next size is still tried
            rows.append({"size": size, "error": _line(exc), "trace": traceback.format_exc()[-2000:]})
        spent = time.perf_counter() - t0
        if "loop_values_s" in rows[-1]:
            spent /= 3  # the loops cost about twice the rest: project without them
        last = (params, dims[0], spent)
    return {"rows": rows, "skipped": skipped, "top_k": TOP_K, "group_bytes": GROUP_BYTES}


def _matrix_shapes(dims) -> list[tuple[int, int]]:
    """The weight matrices' shapes of one revision (for projections)."""
    hidden, layers, _, inter, vocab = dims
    per_layer = [(3 * hidden, hidden), (hidden, hidden), (inter, hidden), (hidden, inter)]
    return per_layer * layers + [(vocab, hidden)] * 2


# ------------------------------------------------------------------ memory


def section_memory(device: torch.device, quick: bool, budget: Budget) -> dict:
    """max_memory honoured on the largest matrices per size; a bound too small; a real
    allocation failure split and, at the end, moved to the CPU."""
    if device.type != "cuda":
        return {"skipped": "needs CUDA (torch.cuda.max_memory_allocated)"}
    rows = []
    g = torch.Generator(device=device).manual_seed(5)
    for size, bound in MEMORY_BOUNDS.items():
        if budget.left() < 90:
            rows.append({"size": size, "skipped": "time budget"})
            continue
        hidden, _, _, inter, vocab = PYTHIA[size]
        mats = [
            (torch.randn(s, generator=g, device=device) * 0.02).half().cpu()
            for s in ((vocab, hidden), (inter, hidden), (inter, hidden), (hidden, inter))
        ]
        for k in (0, TOP_K):
            engine = SpectrumEngine(device=str(device), max_memory=bound)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            t, res = timed(
                lambda e=engine, k=k, m=mats: e.top_vectors(m, k) if k else e.singular_values(m),
                device,
            )
            peak = torch.cuda.max_memory_allocated(device) - base
            rows.append({
                "size": size, "k": k, "bound": bound, "peak_bytes": int(peak),
                "ok": bool(peak <= bound), "seconds": round(t, 3),
                "methods": sorted({r.method for r in res}),
            })  # fmt: skip
    too_small = {}
    try:
        w = torch.zeros(8192, 4096, dtype=torch.float16).normal_()
        SpectrumEngine(device=str(device), max_memory=64 * 2**20).singular_values([w])
        too_small = {"ok": False, "message": "no error for a bound below one Gram matrix"}
    except EngineError as exc:
        too_small = {"ok": "at least" in str(exc), "message": str(exc)}
    return {"rows": rows, "too_small": too_small, "oom": _oom_split(device)}


def _oom_split(device: torch.device) -> dict:
    """A per-process memory fraction the planner does not know about: a batch that does not
    fit is split, and one matrix that fits in no block is computed on the CPU."""
    total = torch.cuda.get_device_properties(device).total_memory
    index = device.index or 0
    out = {}
    g = torch.Generator().manual_seed(6)
    cases = {
        "split": (512 * 2**20, [torch.randn(4096, 4096, generator=g).half() for _ in range(8)]),
        "cpu_fallback": (48 * 2**20, [torch.randn(4096, 4096, generator=g).half()]),
    }
    for label, (limit, mats) in cases.items():
        torch.cuda.empty_cache()
        used = torch.cuda.memory_reserved(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (used + limit) / total), index)
        try:
            engine = SpectrumEngine(device=str(device))
            t, res = timed(lambda e=engine, m=mats: e.singular_values(m), device)
            ref = [np.linalg.svd(m.double().numpy(), compute_uv=False) for m in mats[:2]]
            err = max(float(np.abs(r.sigma - f).max() / f[0]) for r, f in zip(res, ref, strict=False))
            out[label] = {
                "limit_bytes": limit, "seconds": round(t, 3), "sigma_err": err,
                "notes": [n.kind for n in engine.notes], "ok": err <= TOL["float64"],
            }  # fmt: skip
            if label == "cpu_fallback":
                out[label]["ok"] = out[label]["ok"] and "fallback" in out[label]["notes"]
        except Exception as exc:  # a failure to split is the finding
            out[label] = {"limit_bytes": limit, "ok": False, "error": _line(exc)}
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
            torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------ routes


ROUTE_SIZES = (32, 64, 80, 128, 256, 512, 768, 1024, 2048, 2560, 4096, 5120)


def section_routes(device: torch.device, quick: bool, budget: Budget, sizes=None) -> dict:
    """Solver times per square size s: the Gram product of a (4s, s) matrix in float64 and
    float32, eigvalsh/eigh of s×s (batched 4 vs looped), svdvals of (4s, s) per driver."""
    sizes = sizes or ([64, 96] if quick else ROUTE_SIZES)
    drivers = [None, "gesvd", "gesvdj", "gesvda"] if device.type == "cuda" else [None]
    rows = []
    for s in sizes:
        if budget.left() < 20:
            rows.append({"s": s, "skipped": "time budget"})
            continue
        rows.append(_route_row(s, device, drivers, budget))
    return {"rows": rows}


def _route_row(s: int, device: torch.device, drivers: list, budget: Budget) -> dict:
    """The `routes` timings of one square size s."""
    a = torch.randn(4 * s, s, device=device, dtype=torch.float64)
    g = a.mT @ a
    batch = torch.stack([g] * 4)
    rep = 1 if s >= 2048 else 3
    row = {"s": s}
    row["gram_f64_s"] = median_time(lambda: a.mT @ a, device, rep)
    a32 = a.float()
    row["gram_f32_s"] = median_time(lambda: a32.mT @ a32, device, rep)
    row["eigvalsh_f64_s"] = median_time(lambda: torch.linalg.eigvalsh(g), device, rep)
    row["eigvalsh_f32_s"] = median_time(lambda: torch.linalg.eigvalsh(g.float()), device, rep)
    row["eigh_f64_s"] = median_time(lambda: torch.linalg.eigh(g), device, rep)
    row["eigvalsh_batch4_s"] = median_time(lambda: torch.linalg.eigvalsh(batch), device, 1)
    if s <= 512:
        # LAPACK on the host, the transfers included (HOST_EIGEN_RANGE)
        row["eigh_f64_host_s"] = median_time(
            lambda: [t.to(device) for t in torch.linalg.eigh(g.cpu())], device, rep
        )
        small = torch.stack([g] * 32)
        row["eigh_batch32_s"] = median_time(lambda: torch.linalg.eigh(small), device, 1)
        row["eigh_batch32_host_s"] = median_time(
            lambda: [t.to(device) for t in torch.linalg.eigh(small.cpu())], device, 1
        )
    if device.type == "cuda" and s >= 2048:
        row["eigvalsh_4streams_s"] = median_time(lambda: _streams_eigvalsh(batch), device, 1)
    row["eigvalsh_loop4_s"] = median_time(
        lambda: [torch.linalg.eigvalsh(batch[i]) for i in range(4)], device, 1
    )
    for driver in drivers:
        if budget.left() < 20 or (s > 2560 and driver == "gesvdj"):
            continue
        for dtype, aa in (("f64", a), ("f32", a32)):
            key = f"svdvals_{dtype}_{driver or 'default'}_s"
            try:
                row[key] = median_time(
                    lambda aa=aa, d=driver: torch.linalg.svdvals(aa, driver=d), device, 1
                )
            except Exception as exc:  # a driver that fails on a shape is recorded
                row[key] = _line(exc)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}


def _streams_eigvalsh(batch: torch.Tensor) -> None:
    """eigvalsh of each matrix of `batch` in its own thread and CUDA stream (can cuSOLVER
    calls overlap on one GPU?)."""
    from concurrent.futures import ThreadPoolExecutor

    streams = [torch.cuda.Stream(batch.device) for _ in range(len(batch))]

    def work(i: int) -> None:
        with torch.cuda.stream(streams[i]):
            torch.linalg.eigvalsh(batch[i])
        streams[i].synchronize()

    with ThreadPoolExecutor(len(batch)) as pool:
        list(pool.map(work, range(len(batch))))


# ------------------------------------------------------------------ markdown


def render_markdown(data: dict) -> str:
    """The report as markdown tables (what docs/benchmarks.md records)."""
    out = ["# specdyn GPU check", ""]
    env = data.get("env", {})
    if env:
        out.append(
            f"{env.get('gpu', env.get('device'))}; torch {env.get('torch')}, CUDA "
            f"{env.get('cuda')}; matmul TFLOP/s {env.get('matmul_tflops')}"
        )
        out.append("")
    corr = data.get("correctness")
    if corr:
        out += [f"## Correctness: {'all pass' if corr['ok'] else 'FAILURES'} "
                f"({len(corr['rows'])} checks)", "",
                "| case | route | method | max abs dsigma/sigma1 | residual/sigma1 | ok |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for r in corr["rows"]:
            out.append(
                f"| {r['case']} | {r['route']} | {r.get('method', r.get('error', ''))} | "
                f"{_e(r.get('sigma_err'))} | {_e(r.get('residual'))} | {r['ok']} |"
            )
        out.append("")
    store = data.get("store")
    if store:
        out += ["## Store equality (fixtures/neox-trainer, device vs CPU)", "",
                f"max |Δ| by group: {store.get('max_abs_diff_by_group')}; ok {store.get('ok')}; "
                f"seconds {store.get('seconds')}", ""]  # fmt: skip
    mem = data.get("memory")
    if mem and "rows" in mem:
        out += ["## max_memory", "", "| size | k | bound GiB | peak GiB | ok | s | methods |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in mem["rows"]:
            if "skipped" in r:
                out.append(f"| {r['size']} | | | | skipped: {r['skipped']} | | |")
                continue
            out.append(
                f"| {r['size']} | {r['k']} | {r['bound'] / GIB:.2f} | {r['peak_bytes'] / GIB:.2f} "
                f"| {r['ok']} | {r['seconds']} | {', '.join(r['methods'])} |"
            )
        out += ["", f"bound too small: {mem.get('too_small')}", "", f"OOM: {mem.get('oom')}", ""]
    speed = data.get("speed")
    if speed:
        out += ["## Speed per revision (s)", "",
                "| size | matrices | values | values, one group | top-100 + slices | align+agree "
                "| per-matrix loop (values) | paper fp32 SVD (values) | paper (vectors) | transfer pageable |",
                "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in speed["rows"]:
            if "error" in r:
                out.append(f"| {r['size']} | error: {r['error']} |||||||||")
                continue
            out.append(
                f"| {r['size']} | {r['matrices']} | {r['values_s']} | {r['values_one_group_s']} | "
                f"{r['vectors_s']} | {r['alignment_agreement_s']} | {r.get('loop_values_s', '')} | "
                f"{r.get('paper_values_s', '')} | {r.get('paper_vectors_s', '')} | "
                f"{r.get('transfer_pageable_s', '')} |"
            )
        out += ["", f"skipped: {speed['skipped']}", ""]
    routes = data.get("routes")
    if routes:
        out += ["## Routes (s)", "", "```", json.dumps(routes["rows"], indent=0), "```", ""]
    if "elapsed_s" in data:
        out.append(f"elapsed {data['elapsed_s']} s")
    return "\n".join(out) + "\n"


def _e(x) -> str:
    """A float in short scientific notation, or blank."""
    return "" if x is None else f"{x:.1e}"


def _line(exc: BaseException) -> str:
    """An exception as one line."""
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """Run the sections; exit 0 when every check passes (1 if one fails)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu-report"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU, tests)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget")
    parser.add_argument(
        "--sizes", default=None,
        help="comma list of Pythia sizes for speed; SIZE:N generates N layers and extrapolates",
    )  # fmt: skip
    parser.add_argument(
        "--sections", default="env,correctness,store,memory,speed,routes",
        help="comma list of sections to run",
    )  # fmt: skip
    parser.add_argument(
        "--route-sizes", default=None, type=lambda t: [int(x) for x in t.split(",")],
        help="comma list of square sizes for the routes section",
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --device cpu", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    start = time.perf_counter()
    report = Report(args.out)
    table = QUICK if args.quick else PYTHIA
    names = args.sizes.split(",") if args.sizes else list(QUICK if args.quick else SPEED_ORDER)
    sizes = {}  # name → (dims, layers to generate or None for all)
    for item in names:
        name, _, made = item.partition(":")
        sizes[name] = (table[name], int(made) if made else None)
    runners = {
        "env": lambda: section_env(device, args.quick),
        "correctness": lambda: section_correctness(device, args.quick, budget),
        "store": lambda: section_store(device, budget),
        "memory": lambda: section_memory(device, args.quick, budget),
        "speed": lambda: section_speed(device, sizes, budget),
        "routes": lambda: section_routes(device, args.quick, budget, args.route_sizes),
    }
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            value = runners[name]()
        except Exception as exc:  # a section that breaks is reported, the others still run
            value = {"ok": False, "error": _line(exc), "trace": traceback.format_exc()[-3000:]}
        if isinstance(value, dict):
            value["section_s"] = round(time.perf_counter() - t0, 2)
        report.data["elapsed_s"] = round(time.perf_counter() - start, 1)
        report.put(name, value)
        print(f"[gpu_check] {name}: {value.get('section_s')} s, {budget.left():.0f} s left", flush=True)
    ok = all(
        v.get("ok", True) for k, v in report.data.items() if isinstance(v, dict)
    ) and all(r.get("ok", True) for r in report.data.get("memory", {}).get("rows", []))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
