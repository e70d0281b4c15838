"""benchmarks/gpu_check.py in its CPU mode (tiny shapes): every section runs, every engine
route meets the accuracy contract against float64 LAPACK, and the report is complete."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return _load()


@pytest.fixture(scope="module")
def report(gpu_check, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-report")
    rc = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--budget-s", "300"])
    data = json.loads((out / "gpu_check.json").read_text())
    return rc, data, (out / "gpu_check.md").read_text()


def test_cpu_mode_passes_every_check(report):
    rc, data, _ = report
    assert rc == 0, [r for r in data["correctness"]["failed"]]
    for section in ("env", "correctness", "store", "memory", "speed", "routes"):
        assert section in data and "error" not in data[section], (section, data[section])


def test_every_route_is_checked_and_records_its_method(report):
    _, data, _ = report
    rows = data["correctness"]["rows"]
    gaussian = [r for r in rows if r["case"].startswith("gaussian") and "fp16" in r["case"]]
    # on a tall Gaussian matrix each route runs as itself (the QR forms under a tight bound)
    tall = {r["route"]: r["method"] for r in gaussian if r["case"].startswith("gaussian 144")}
    assert tall == {route: route for route in tall}
    assert set(tall) == {
        "gram-eigvalsh-f64", "svdvals-f64", "tsqr-svdvals-f64",
        "gram-eigh-f64", "svd-f64", "tsqr-svd-f64",
    }  # fmt: skip
    by_case = {(r["case"], r["route"]): r for r in rows}
    # the Gram route's a-posteriori check sends an ill-conditioned matrix to LAPACK
    assert by_case[("cond 1e+08 96x48", "gram-eigh-f64")]["method"] == "svd-f64"
    assert by_case[("zero", "gram-eigvalsh-f64")]["method"] == "zero"
    assert by_case[("nan", "gram-eigh-f64")]["method"] == "nonfinite"
    for r in rows:
        if "sigma_err" in r:
            assert r["sigma_err"] <= r["tolerance"], r


def test_residual_check_catches_wrong_vectors(gpu_check):
    # the residual used by the correctness section is not vacuous: swapped vectors fail it
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 20))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    assert gpu_check._residual(w, s, u[:, :5], vt[:5].T) < 1e-13
    assert gpu_check._residual(w, s, u[:, 1:6], vt[:5].T) > 0.1


def test_store_sections_compare_real_stores(report):
    _, data, _ = report
    groups = data["store"]["max_abs_diff_by_group"]
    assert {"sigma", "alignment", "agreement"} <= set(groups)
    assert data["store"]["ok"]


def test_speed_rows_plan_pythia_views_and_pairs(report, gpu_check):
    _, data, md = report
    rows = data["speed"]["rows"]
    assert [r["size"] for r in rows] == list(gpu_check.QUICK)
    hidden, layers, heads, inter, vocab = gpu_check.QUICK["tiny-a"]
    first = rows[0]
    # per layer: fused QKV, its Q, K, V, dense, two MLP matrices; plus the two embeddings
    assert first["matrices"] == 7 * layers + 2
    assert first["values_methods"] == {"gram-eigvalsh-f64": first["matrices"]}
    assert first["pairs"] > 0 and first["diagonals"] > first["pairs"]
    for key in ("values_s", "vectors_s", "loop_values_s", "paper_values_s"):
        assert first[key] > 0
    assert "## Speed per revision" in md and "| tiny-a |" in md


def test_revision_weights_match_the_planned_views(gpu_check):
    rev = gpu_check.make_revision("tiny-a", gpu_check.QUICK["tiny-a"], torch.device("cpu"))
    for view in rev.views:
        tensor = rev.params[view.key]
        assert tuple(tensor.shape) == tuple(view.source_shape)
        assert tensor.dtype == torch.float16
        assert tuple(view.extract(tensor).shape) == tuple(view.shape)


def test_no_cuda_is_one_line(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--out", "unused"]) == 2
    assert "use --device cpu" in capsys.readouterr().err
