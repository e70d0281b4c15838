"""Tests of specdyn.metrics: known answers, independent formulas, batches, degenerate spectra."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from specdyn import metrics
from specdyn.metrics import METRIC_NAMES, spectral_metrics

SINGLE = {
    "normalized_effective_rank": metrics.normalized_effective_rank,
    "effective_rank": metrics.effective_rank,
    "entropy": metrics.entropy,
    "spectral_norm": metrics.spectral_norm,
    "frobenius_norm": metrics.frobenius_norm,
    "nuclear_norm": metrics.nuclear_norm,
    "stable_rank": metrics.stable_rank,
}


def _reference(sigma: list[float]) -> dict[str, float]:
    """The docs/metrics.md#spectral-metrics definitions written out plainly, one spectrum,
    Python floats."""
    total = sum(sigma)
    h = 0.0
    for s in sigma:
        p = s / total
        if p > 0:
            h -= p * math.log(p)
    top = max(sigma)
    sq = sum(s * s for s in sigma)
    return {
        "normalized_effective_rank": math.exp(h) / len(sigma),
        "effective_rank": math.exp(h),
        "entropy": h,
        "spectral_norm": top,
        "frobenius_norm": math.sqrt(sq),
        "nuclear_norm": total,
        "stable_rank": sq / top**2,
    }


def test_names_and_order():
    out = spectral_metrics(np.array([3.0, 1.0]))
    assert tuple(out) == METRIC_NAMES
    assert set(SINGLE) == set(METRIC_NAMES)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_identity_has_full_rank(n):
    out = spectral_metrics(np.ones(n))
    assert out["normalized_effective_rank"] == pytest.approx(1.0, abs=1e-14)
    assert out["effective_rank"] == pytest.approx(n, rel=1e-14)
    assert out["entropy"] == pytest.approx(math.log(n), abs=1e-14)
    assert out["stable_rank"] == pytest.approx(n, rel=1e-14)
    assert out["spectral_norm"] == 1.0
    assert out["frobenius_norm"] == pytest.approx(math.sqrt(n), rel=1e-14)
    assert out["nuclear_norm"] == pytest.approx(n, rel=1e-14)


def test_rank_one():
    out = spectral_metrics(np.array([5.0, 0.0, 0.0, 0.0]))
    assert out["effective_rank"] == pytest.approx(1.0, abs=1e-15)
    assert out["normalized_effective_rank"] == pytest.approx(0.25, abs=1e-15)
    assert out["entropy"] == 0.0
    assert out["stable_rank"] == pytest.approx(1.0)
    assert out["spectral_norm"] == out["frobenius_norm"] == out["nuclear_norm"] == 5.0


def test_two_equal_values():
    out = spectral_metrics(np.array([2.0, 2.0, 0.0]))
    assert out["entropy"] == pytest.approx(math.log(2), abs=1e-15)
    assert out["effective_rank"] == pytest.approx(2.0, rel=1e-14)
    assert out["normalized_effective_rank"] == pytest.approx(2 / 3, rel=1e-14)
    assert out["stable_rank"] == pytest.approx(2.0, rel=1e-14)
    assert out["frobenius_norm"] == pytest.approx(math.sqrt(8), rel=1e-14)
    assert out["nuclear_norm"] == pytest.approx(4.0, rel=1e-14)


def test_against_matrix_norms_of_a_real_matrix():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 25)) @ np.diag(np.linspace(3, 0.01, 25))
    sigma = np.linalg.svd(w, compute_uv=False)
    out = spectral_metrics(sigma)
    assert out["spectral_norm"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-12)
    assert out["frobenius_norm"] == pytest.approx(np.linalg.norm(w, "fro"), rel=1e-12)
    assert out["nuclear_norm"] == pytest.approx(np.linalg.norm(w, "nuc"), rel=1e-12)
    assert out["stable_rank"] == pytest.approx(
        np.linalg.norm(w, "fro") ** 2 / np.linalg.norm(w, 2) ** 2, rel=1e-12
    )
    ref = _reference(sigma.tolist())
    for name in METRIC_NAMES:
        assert out[name] == pytest.approx(ref[name], rel=1e-12), name


def test_random_spectra_match_plain_formulas_and_single_functions():
    rng = np.random.default_rng(1)
    for r in (1, 3, 10, 300):
        sigma = np.sort(rng.exponential(size=r))[::-1]
        sigma[rng.random(r) < 0.2] = 0.0
        sigma[0] = max(sigma[0], 0.5)
        ref = _reference(sigma.tolist())
        out = spectral_metrics(sigma)
        for name in METRIC_NAMES:
            assert out[name] == pytest.approx(ref[name], rel=1e-12), (r, name)
            assert SINGLE[name](sigma) == pytest.approx(ref[name], rel=1e-12), (r, name)
        norm = out["normalized_effective_rank"]
        assert 1 / r - 1e-12 <= norm <= 1 + 1e-12


def test_batch_shapes_and_rows_independent():
    rng = np.random.default_rng(2)
    sigma = np.abs(rng.standard_normal((3, 4, 6)))
    sigma[1, 2] = 0.0
    sigma[2, 0, 3] = np.nan
    out = spectral_metrics(sigma)
    for name in METRIC_NAMES:
        assert out[name].shape == (3, 4)
        assert out[name].dtype == np.float64
        single = SINGLE[name](sigma)
        np.testing.assert_array_equal(single, out[name])
        for i in range(3):
            for j in range(4):
                one = spectral_metrics(sigma[i, j])[name]
                np.testing.assert_array_equal(one, out[name][i, j])
    # the degenerate rows did not spill into their neighbours
    assert np.isfinite(out["entropy"][0]).all()
    assert np.isnan(out["entropy"][1, 2]) and np.isfinite(out["entropy"][1, 1])
    assert np.isnan(out["spectral_norm"][2, 0]) and np.isfinite(out["spectral_norm"][2, 1])


def test_order_does_not_matter():
    sigma = np.array([0.1, 4.0, 2.0, 0.0, 1.0])
    a = spectral_metrics(sigma)
    b = spectral_metrics(np.sort(sigma)[::-1])
    for name in METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], rel=1e-15)


def _no_warnings(fn, *args):
    """Call fn with every warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def test_all_zero_spectrum():
    out = _no_warnings(spectral_metrics, np.zeros(5))
    for name in ("normalized_effective_rank", "effective_rank", "entropy", "stable_rank"):
        assert np.isnan(out[name]), name
    for name in ("spectral_norm", "frobenius_norm", "nuclear_norm"):
        assert out[name] == 0.0, name
    for name, fn in SINGLE.items():
        value = _no_warnings(fn, np.zeros(5))
        assert (np.isnan(value) and np.isnan(out[name])) or value == out[name]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0])
def test_nonfinite_or_negative_gives_all_nan(bad):
    sigma = np.array([3.0, 2.0, bad, 0.5])
    out = _no_warnings(spectral_metrics, sigma)
    for name in METRIC_NAMES:
        assert np.isnan(out[name]), name
        assert np.isnan(_no_warnings(SINGLE[name], sigma)), name


def test_empty_spectrum():
    out = _no_warnings(spectral_metrics, np.zeros((2, 0)))
    assert out["spectral_norm"].shape == (2,)
    np.testing.assert_array_equal(out["nuclear_norm"], [0.0, 0.0])
    assert np.isnan(out["normalized_effective_rank"]).all()
    assert np.isnan(out["entropy"]).all()


def test_extreme_magnitudes_do_not_overflow():
    big = spectral_metrics(np.array([1e300, 1e300]))
    assert big["frobenius_norm"] == pytest.approx(math.sqrt(2) * 1e300, rel=1e-14)
    assert big["stable_rank"] == pytest.approx(2.0)
    assert big["effective_rank"] == pytest.approx(2.0)
    tiny = spectral_metrics(np.array([1e-300, 1e-300, 0.0]))
    assert tiny["frobenius_norm"] == pytest.approx(math.sqrt(2) * 1e-300, rel=1e-14)
    assert tiny["normalized_effective_rank"] == pytest.approx(2 / 3)


def test_scale_invariance_of_shape_metrics():
    sigma = np.array([5.0, 3.0, 1.0, 0.2])
    a = spectral_metrics(sigma)
    b = spectral_metrics(sigma * 1e-7)
    for name in ("normalized_effective_rank", "effective_rank", "entropy", "stable_rank"):
        assert a[name] == pytest.approx(b[name], rel=1e-13)
    assert b["nuclear_norm"] == pytest.approx(a["nuclear_norm"] * 1e-7, rel=1e-14)


def test_list_and_scalar_inputs():
    out = spectral_metrics([2.0, 1.0])
    assert out["nuclear_norm"] == 3.0
    scalar = spectral_metrics(4.0)
    assert scalar["effective_rank"] == 1.0 and scalar["spectral_norm"] == 4.0
