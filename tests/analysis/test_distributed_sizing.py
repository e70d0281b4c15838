"""The default ``--max-inflight`` (issue 16, item 2): a step's estimated result size from the
run's plan, the client's available memory, and the bound taken from them. No cluster."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import torch

from specdyn.analysis import (
    MEMORY_SHARE,
    ComputeOptions,
    LocalSteps,
    MatrixSelection,
    VectorOptions,
    available_memory,
    default_max_inflight,
    result_bytes,
)
from specdyn.analysis._run import StepPlan, _AnalysisRun, compute_step
from specdyn.engine import SpectrumEngine
from specdyn.metrics import STORED_METRIC_NAMES
from specdyn.sources import discover
from specdyn.store import PairRecord, VectorLayout

M = len(STORED_METRIC_NAMES)


def _plan(shapes, k, pairs=(), full=False) -> StepPlan:
    """A StepPlan of matrices with `shapes` (only what the size estimate reads)."""
    views = tuple(SimpleNamespace(name=f"m{i}", shape=s) for i, s in enumerate(shapes))
    layout = VectorLayout(k=k, score_top=10, reference=0, reference_rule="last",
                          full_matrices=full, save_vectors="ends", pairs=tuple(pairs))  # fmt: skip
    return StepPlan(views=views, infos={}, k=k, sliced={}, layout=layout, pairs=(),
                    ranks={v.name: min(v.shape) for v in views}, pair_sides={})  # fmt: skip


def test_result_bytes_from_constructed_plans():
    plan = _plan([(40, 24), (12, 40)], k=10)
    # values: σ R·8, metrics 8 each, 64 for the method
    assert result_bytes(plan, {"values"}) == ((24 + 12) * 8 + 2 * (8 * M + 64), 0)
    # agreement diagonals min(k, R): 10 and 10
    assert result_bytes(plan, {"agreement"}) == (20 * 8, 0)
    # kept vectors float32: (m + n)·k'·4 per matrix, streamable
    assert result_bytes(plan, {"vectors"}) == (0, (64 * 10 + 52 * 10) * 4)
    # the reference pass's full vectors, float64, and their σ
    assert result_bytes(plan, {"tops"}) == (0, (24 + 12) * 8 + (64 * 10 + 52 * 10) * 8)
    small_k = _plan([(40, 24), (12, 40)], k=100)  # k' = R
    assert result_bytes(small_k, {"vectors"})[1] == (64 * 24 + 52 * 12) * 4
    heads = PairRecord("m0~m1", "m0", "m1", "u", "v", "chain", blocks=4, k=10, dim=40)
    one = PairRecord("m1~m0", "m1", "m0", "u", "v", "chain", k=7, dim=12)
    plain = _plan([(40, 24), (12, 40)], k=10, pairs=[heads, one])
    assert result_bytes(plain, {"alignment"}) == ((10 + 4 * 10 + 7) * 8, 0)
    full = _plan([(40, 24), (12, 40)], k=10, pairs=[heads, one], full=True)
    assert result_bytes(full, {"alignment"}) == ((10 + 40 + 100 + 7 + 49) * 8, 0)
    assert result_bytes(full, {"agreement"}) == ((10 + 100) * 2 * 8, 0)


def test_result_bytes_matches_a_computed_step(tmp_path):
    """The estimate against the arrays a real step's result holds."""
    folder = tmp_path / "run"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for step in (0, 100):
        state = {f"layers.{i}.weight": torch.randn(s, generator=g)
                 for i, s in enumerate([(40, 24), (40, 40), (12, 40)])}  # fmt: skip
        torch.save({"model_state_dict": state, "step": step}, folder / f"step_{step}.pt")
    (source,) = discover(folder).runs
    vectors = VectorOptions(k=16, full_matrices=True).resolved(None)
    run = _AnalysisRun(LocalSteps(source), tmp_path / "s.h5", run_name="run",
                       matrices=MatrixSelection(), compute=ComputeOptions(), vectors=vectors,
                       engine=SpectrumEngine(), on_progress=None)  # fmt: skip
    run._select_steps(None)
    run._plan_views()
    run._plan_pairs()
    plan = run.step_plan
    assert plan.pairs  # an MLP chain: alignment is estimated too
    wanted = {"values", "alignment", "agreement", "vectors", "tops"}
    result = compute_step(source.checkpoints[0], plan, wanted, SpectrumEngine(), None)
    sigma = sum(s.nbytes for s, _ in result.spectra.values())
    metrics = 8 * sum(len(m) for m in result.metrics.values())
    aligned = sum(a.diagonal.nbytes + a.matrix.nbytes + (0 if a.heads is None else a.heads.nbytes)
                  for a in result.vectors.alignment.values())  # fmt: skip
    agreed = sum(a.diagonal.nbytes + a.matrix.nbytes for a in result.vectors.agreement.values())
    kept = sum(u.nbytes + v.nbytes for u, v in result.vectors.vectors.values())
    tops = sum(t.sigma.nbytes + t.u.nbytes + t.v.nbytes for t in result.tops.values())
    whole, streamed = result_bytes(plan, wanted)
    assert streamed == kept + tops
    assert whole == sigma + metrics + 64 * len(plan.views) + aligned + agreed


def test_default_max_inflight_from_memory():
    sizes = [100] * 10
    assert default_max_inflight(sizes, 3, None) == 6  # memory unknown: two per worker
    assert default_max_inflight(sizes, 3, 10_000, share=0.25) == 6  # 2500 B: all six fit
    assert default_max_inflight(sizes, 3, 1_000, share=0.25) == 2  # 250 B: two fit
    assert default_max_inflight(sizes, 3, 100, share=0.25) == 1  # none fits: still one
    assert default_max_inflight(sizes, 0, 10_000) == 2  # no worker seen yet: as one
    # the largest results count first: any n of the steps must fit
    mixed = [10, 1000, 10, 10, 10, 10]
    assert default_max_inflight(mixed, 4, 1030, share=1.0) == 4  # 1000 + 3 × 10
    assert default_max_inflight(mixed, 4, 999, share=1.0) == 1
    assert default_max_inflight([], 2, 1) == 4
    assert 0 < MEMORY_SHARE <= 1


def test_available_memory_reads_meminfo_else_sysconf(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:     100 kB\nMemAvailable:    2048 kB\n")
    assert available_memory(meminfo) == 2048 * 1024
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pages = None
    meminfo.write_text("MemTotal:       16384 kB\n")  # no MemAvailable line
    for fallback in (available_memory(meminfo), available_memory(tmp_path / "missing")):
        if pages is None:
            assert fallback is None
        else:  # the free pages move a little between two reads
            assert abs(fallback - pages) < 2**30
    if Path("/proc/meminfo").exists():
        assert available_memory() > 0
