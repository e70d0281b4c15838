"""Tests of specdyn.metrics' heavy-tailed metrics: WeightWatcher 0.7.7 itself on constructed
heavy-tailed matrices and on the mlp-wd fixture, a plain reference scan of every xmin,
samples of known power laws, the Marchenko-Pastur edge of Gaussian matrices, degenerate
spectra."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from specdyn import metrics
from specdyn.errors import SpecdynError
from specdyn.metrics import (
    FIT_REASONS,
    HEAVY_TAIL_NAMES,
    METRIC_NAMES,
    STORED_METRIC_NAMES,
    fit_nan_note,
    fit_nan_step_notes,
    heavy_tail_metrics,
    matrix_metrics,
    power_law_fit,
    spectral_metrics,
    stable_rank,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# WeightWatcher's column for each specdyn name it also reports (mp_softrank and its
# spike count are fitted differently: docs/metrics.md#differences-from-weightwatcher)
WW_COLUMNS = {
    "alpha": "alpha",
    "alpha_stderr": "sigma",
    "xmin": "xmin",
    "ks_distance": "D",
    "num_tail": "num_pl_spikes",
    "alpha_weighted": "alpha_weighted",
    "log_alpha_norm": "log_alpha_norm",
    "log_norm": "log_norm",
    "log_spectral_norm": "log_spectral_norm",
    "stable_rank": "stable_rank",
}


def _sigma(w: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)


def _weightwatcher(weights: list[np.ndarray]):
    """WeightWatcher 0.7.7's analyze() of a torch model of bias-free nn.Linear layers holding
    the given (out, in) float32 matrices; one row per layer it analysed."""
    import torch
    import weightwatcher
    from torch import nn

    assert weightwatcher.__version__ == "0.7.7"
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    layers = []
    for w in weights:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
        layers.append(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return weightwatcher.WeightWatcher(model=nn.Sequential(*layers)).analyze()


def _compare_with_weightwatcher(weights: list[np.ndarray]) -> int:
    """Assert every layer WeightWatcher fits matches specdyn; the number of fitted layers."""
    details = _weightwatcher(weights)
    assert len(details) == len(weights)
    fitted = 0
    for (_, row), w in zip(details.iterrows(), weights, strict=True):
        w = np.asarray(w, dtype=np.float32)
        ours = heavy_tail_metrics(_sigma(w), w.shape)
        if row["alpha"] == -1:  # WeightWatcher's mark of a failed fit
            assert np.isnan(ours["alpha"])
            continue
        fitted += 1
        # the fit: alpha well inside 0.2 %, xmin and D to float64 precision
        assert float(ours["alpha"]) == pytest.approx(row["alpha"], rel=1e-9, abs=0)
        assert float(ours["xmin"]) == pytest.approx(row["xmin"], rel=1e-9, abs=0)
        assert float(ours["ks_distance"]) == pytest.approx(row["D"], rel=1e-9, abs=1e-15)
        assert int(ours["num_tail"]) == int(row["num_pl_spikes"])
        for name, column in WW_COLUMNS.items():
            assert float(ours[name]) == pytest.approx(float(row[column]), rel=1e-6), name
    return fitted


def _heavy_matrices() -> list[np.ndarray]:
    """Student-t and signed Pareto entries, tall, wide and square, some with fewer than 20
    eigenvalues (WeightWatcher's small-N fit), and a Gaussian control."""
    rng = np.random.default_rng(18)

    def signed_pareto(a, shape):
        return rng.pareto(a, size=shape) * rng.choice([-1.0, 1.0], size=shape)

    return [
        rng.standard_t(2.5, size=(160, 100)),
        rng.standard_t(3.0, size=(48, 200)),
        rng.standard_t(4.0, size=(120, 120)),
        signed_pareto(1.5, (150, 64)),
        signed_pareto(2.5, (64, 90)),
        signed_pareto(3.0, (100, 100)),
        rng.standard_t(3.0, size=(96, 15)),
        signed_pareto(2.0, (12, 80)),
        rng.standard_normal(size=(140, 70)),
    ]


def test_matches_weightwatcher_on_heavy_tailed_matrices():
    weights = _heavy_matrices()
    assert _compare_with_weightwatcher(weights) == len(weights)


@pytest.mark.parametrize(
    ("run", "step"), [("mlp-wd", 0), ("mlp-wd", 200), ("mlp-wd", 4000), ("mlp-nowd", 4000)]
)
def test_matches_weightwatcher_on_the_mlp_fixtures(run, step):
    import torch

    path = FIXTURES / run / f"step_{step:06d}.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = state["model_state_dict"]
    weights = [params[f"layers.{i}.weight"].numpy() for i in range(4)]
    # 96×32, 96×96, 96×96 and 8×96: the last one goes through the small-N fit
    assert _compare_with_weightwatcher(weights) == 4


def _reference_fit(lam: np.ndarray, threshold: float = 1e-5) -> tuple[float, float, float]:
    """Every candidate xmin scanned in a plain loop (the definition of docs/metrics.md):
    (alpha, xmin, D) of the first smallest D."""
    x = sorted(float(v) for v in lam if v > threshold)
    size = len(x)
    small = size < 20
    best = (math.nan, math.nan, math.inf)
    for i in range(size - 1):
        tail = x[i:]
        n = len(tail)
        spread = sum(math.log(v / x[i]) for v in tail)
        if small and (n < 8 or spread <= 1e-12):
            continue
        alpha = 1 + ((n - 1) if small else n) / spread if spread > 0 else math.inf
        d = max(abs(1 - (v / x[i]) ** (1 - alpha) - k / n) for k, v in enumerate(tail))
        if d < best[2]:
            best = (alpha, x[i], d)
    return best


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("seed", range(12))
def test_the_pruned_scan_finds_the_plain_scans_answer(seed, batch, monkeypatch):
    # batches of one candidate: the scan stops on its bound, not after the first batch
    monkeypatch.setattr(metrics, "_EXACT_BATCH", batch)
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(10, 260))
    df = float(rng.uniform(1.5, 6.0))
    w = rng.standard_t(df, size=(rank + int(rng.integers(0, 200)), rank))
    lam = _sigma(w) ** 2
    alpha, xmin, d = _reference_fit(lam)
    fit = power_law_fit(lam)
    assert fit.reason == ""
    assert fit.xmin == pytest.approx(xmin, rel=1e-12)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.ks_distance == pytest.approx(d, rel=1e-9, abs=1e-14)
    assert fit.num_tail == int(np.count_nonzero(lam >= fit.xmin))


def test_ties_in_the_spectrum_follow_the_plain_scan():
    # repeated eigenvalues (a matrix with a repeated block) give zero-spread candidates
    rng = np.random.default_rng(3)
    lam = np.repeat(rng.pareto(2.0, size=40) + 1.0, 3)
    alpha, xmin, d = _reference_fit(lam)
    fit = power_law_fit(lam)
    assert (fit.alpha, fit.xmin) == (pytest.approx(alpha, rel=1e-9), pytest.approx(xmin))
    assert fit.ks_distance == pytest.approx(d, rel=1e-9)


@pytest.mark.parametrize("exponent", [1.8, 2.5, 3.5, 5.0])
def test_samples_of_a_known_power_law_give_its_exponent(exponent):
    # inverse-CDF samples of p(x) ∝ x^−a on [1, ∞): the MLE is within 3 standard errors
    # (α − 1)/√n of a, and its standard error is what the formula says
    rng = np.random.default_rng(int(exponent * 10))
    samples = rng.uniform(size=4000) ** (-1.0 / (exponent - 1.0))
    fit = power_law_fit(samples)
    assert fit.num_tail >= 100
    assert fit.alpha_stderr == pytest.approx((fit.alpha - 1) / math.sqrt(fit.num_tail))
    assert abs(fit.alpha - exponent) <= 3 * (exponent - 1) / math.sqrt(fit.num_tail)
    assert fit.xmin >= 1.0


def test_a_tail_above_a_bulk_is_found():
    # a uniform bulk on [0.1, 1] below 500 Pareto values of exponent 3 above 2
    rng = np.random.default_rng(7)
    tail = 2.0 * rng.uniform(size=500) ** (-1.0 / 2.0)
    lam = np.concatenate([rng.uniform(0.1, 1.0, size=2000), tail])
    fit = power_law_fit(lam)
    assert 1.0 < fit.xmin <= 2.6
    assert abs(fit.alpha - 3.0) <= 3 * 2.0 / math.sqrt(fit.num_tail)


def test_norm_metrics_from_the_matrix_itself():
    rng = np.random.default_rng(5)
    w = rng.standard_t(3.0, size=(90, 40))
    out = heavy_tail_metrics(_sigma(w), w.shape)
    frob2 = float(np.sum(w * w))
    spec2 = float(np.linalg.norm(w, 2)) ** 2
    lam = np.linalg.eigvalsh(w.T @ w)
    alpha = float(out["alpha"])
    assert out["log_norm"] == pytest.approx(math.log10(frob2), rel=1e-12)
    assert out["log_spectral_norm"] == pytest.approx(math.log10(spec2), rel=1e-12)
    assert out["stable_rank"] == pytest.approx(frob2 / spec2, rel=1e-10)
    assert out["stable_rank"] == pytest.approx(float(stable_rank(_sigma(w))), rel=1e-12)
    assert out["alpha_weighted"] == pytest.approx(alpha * math.log10(spec2), rel=1e-12)
    alpha_norm = math.log10(sum(float(v) ** alpha for v in np.clip(lam, 0, None)))
    assert out["log_alpha_norm"] == pytest.approx(alpha_norm, rel=1e-10)
    edge = frob2 / 40 * (1 + math.sqrt(40 / 90)) ** 2
    assert out["mp_bulk_max"] == pytest.approx(edge, rel=1e-12)
    assert out["mp_softrank"] == pytest.approx(edge / spec2, rel=1e-10)
    assert out["num_above_mp_edge"] == np.count_nonzero(lam > edge)
    # either orientation of the shape is the same matrix's
    again = heavy_tail_metrics(_sigma(w), (40, 90))
    assert all(np.array_equal(out[k], again[k], equal_nan=True) for k in HEAVY_TAIL_NAMES)


def test_log_alpha_norm_does_not_overflow():
    # α·log10 λ_max beyond 308: Σλ^α overflows float64, its logarithm does not
    rng = np.random.default_rng(9)
    sigma = np.sort(1e3 * (1.0 + 0.02 * rng.uniform(size=64)))
    out = heavy_tail_metrics(sigma, (64, 64))
    alpha = float(out["alpha"])
    assert alpha * 6 > 308
    rel = np.sum((sigma**2 / np.max(sigma**2)) ** alpha)
    assert out["log_alpha_norm"] == pytest.approx(
        alpha * math.log10(np.max(sigma) ** 2) + math.log10(rel)
    )
    assert np.isfinite(out["log_alpha_norm"])


@pytest.mark.parametrize("shape", [(400, 200), (300, 300), (100, 500)])
def test_gaussian_matrices_sit_at_the_marchenko_pastur_edge(shape):
    w = np.random.default_rng(sum(shape)).standard_normal(size=shape)
    out = heavy_tail_metrics(_sigma(w), shape)
    # λ_max of a Gaussian matrix is λ+ up to O(M^−2/3) fluctuations
    assert out["mp_softrank"] == pytest.approx(1.0, abs=0.08)
    assert out["num_above_mp_edge"] <= 3


def test_a_planted_spike_is_above_the_edge():
    rng = np.random.default_rng(11)
    w = rng.standard_normal(size=(300, 150))
    u, v = rng.standard_normal(300), rng.standard_normal(150)
    w += 5.0 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v)) * math.sqrt(300)
    out = heavy_tail_metrics(_sigma(w), w.shape)
    assert out["num_above_mp_edge"] == 1
    assert out["mp_softrank"] < 0.5


def test_batches_give_one_value_per_spectrum():
    rng = np.random.default_rng(2)
    sigma = np.stack(
        [[_sigma(rng.standard_t(3.0, size=(50, 30))) for _ in range(3)] for _ in range(2)]
    )
    out = heavy_tail_metrics(sigma, (50, 30))
    assert tuple(out) == HEAVY_TAIL_NAMES
    for t in range(2):
        for j in range(3):
            one = heavy_tail_metrics(sigma[t, j], (30, 50))
            for name in HEAVY_TAIL_NAMES:
                assert out[name].shape == (2, 3)
                assert one[name].shape == ()
                assert out[name][t, j] == one[name]
    # the order of the singular values does not matter
    shuffled = heavy_tail_metrics(rng.permutation(sigma[0, 0]), (50, 30))
    assert all(shuffled[k] == out[k][0, 0] for k in HEAVY_TAIL_NAMES)


def test_stored_metrics_hold_both_families_and_one_stable_rank():
    assert not (set(HEAVY_TAIL_NAMES) - {"stable_rank"}) & set(METRIC_NAMES)
    assert STORED_METRIC_NAMES[: len(METRIC_NAMES)] == METRIC_NAMES
    assert set(STORED_METRIC_NAMES) == set(METRIC_NAMES) | set(HEAVY_TAIL_NAMES)
    assert len(STORED_METRIC_NAMES) == len(set(STORED_METRIC_NAMES))
    assert STORED_METRIC_NAMES.count("stable_rank") == 1
    rng = np.random.default_rng(11)
    sigma = np.stack([_sigma(rng.standard_t(3.0, size=(40, 12))) for _ in range(3)])
    sigma[1] = 0.0
    out, reasons = matrix_metrics(sigma, (40, 12), return_reasons=True)
    assert tuple(out) == STORED_METRIC_NAMES and reasons.tolist() == ["", "zero-matrix", ""]
    plain = spectral_metrics(sigma)
    heavy = heavy_tail_metrics(sigma, (12, 40))
    for name in STORED_METRIC_NAMES:
        want = plain[name] if name in METRIC_NAMES else heavy[name]
        assert np.array_equal(out[name], want, equal_nan=True), name
    # a subset: only what is asked for, the heavy-tailed fit skipped without such a name
    only = matrix_metrics(sigma, (40, 12), names=["entropy", "stable_rank"])
    assert list(only) == ["entropy", "stable_rank"]
    with pytest.raises(ValueError, match="unknown metrics"):
        matrix_metrics(sigma, (40, 12), names=["nope"])


@pytest.mark.parametrize("rank", [4, 7, 8, 9, 30, 120])
def test_the_two_stable_ranks_cannot_diverge(rank):
    """heavy_tail_metrics' stable_rank is METRIC_NAMES' bit for bit where R >= 8 (one
    definition, `stable_rank`), NaN below, over spectra of very different scales."""
    rng = np.random.default_rng(rank)
    sigma = np.stack(
        [_sigma(rng.standard_t(2.5, size=(rank + 7, rank))) * 10.0**e for e in (-150, -3, 0, 100)]
    )
    sigma = np.concatenate([sigma, np.zeros((1, rank)), np.full((1, rank), np.nan)])
    heavy = heavy_tail_metrics(sigma, (rank + 7, rank))["stable_rank"]
    plain = spectral_metrics(sigma)["stable_rank"]
    stored = matrix_metrics(sigma, (rank, rank + 7))["stable_rank"]
    assert np.array_equal(stored, plain, equal_nan=True)
    if rank >= metrics.MIN_EVALS:
        assert np.array_equal(heavy, plain, equal_nan=True)
        assert np.isfinite(heavy[:4]).all()
    else:
        assert np.isnan(heavy).all() and np.isfinite(plain[:4]).all()


def test_nan_fit_notes_name_the_matrix_the_reason_and_the_count():
    line = fit_nan_note("head.weight", "too-few-eigenvalues", 12, 154)
    assert line.startswith("head.weight: alpha NaN at 12 of 154 steps: too-few-eigenvalues (")
    assert "fewer than 8 singular values" in line and "\n" not in line
    assert "epochs" in fit_nan_note("w", "flat-spectrum", 1, 2, unit="epoch")
    reasons = {f"m{i}": ("too-few-eigenvalues" if i % 2 else "") for i in range(14)}
    reasons["z"] = "zero-matrix"
    lines = fit_nan_step_notes(reasons)
    assert lines == [
        "alpha NaN (too-few-eigenvalues): m1, m3, m5, m7, m9 and 2 more",
        "alpha NaN (zero-matrix): z",
    ]
    assert fit_nan_step_notes({"a": "", "b": ""}) == []
    assert set(FIT_REASONS) == {"too-few-eigenvalues", "flat-spectrum", "zero-matrix", "nonfinite"}


FIT_NAMES = ("alpha", "alpha_stderr", "xmin", "ks_distance", "num_tail")
ALPHA_NAMES = FIT_NAMES + ("alpha_weighted", "log_alpha_norm")


@pytest.mark.parametrize(
    ("sigma", "reason", "nan_names"),
    [
        (np.array([3.0, np.nan] + [1.0] * 8), "nonfinite", HEAVY_TAIL_NAMES),
        (np.array([np.inf] + [1.0] * 9), "nonfinite", HEAVY_TAIL_NAMES),
        (np.array([-1.0] + [1.0] * 9), "nonfinite", HEAVY_TAIL_NAMES),
        (np.zeros(10), "zero-matrix", HEAVY_TAIL_NAMES),
        (np.array([3.0, 2.0, 1.0, 0.5]), "too-few-eigenvalues", HEAVY_TAIL_NAMES),
        (np.full(10, 1e-4), "too-few-eigenvalues", ALPHA_NAMES),  # λ = 1e-8 ≤ 1e-5
        (np.array([2.0] + [1e-4] * 9), "too-few-eigenvalues", ALPHA_NAMES),
        (np.full(10, 2.0), "flat-spectrum", ALPHA_NAMES),
        (np.full(40, 2.0), "flat-spectrum", ALPHA_NAMES),
    ],
)
def test_degenerate_spectra_give_nan_and_a_reason(sigma, reason, nan_names):
    shape = (sigma.shape[0] + 5, sigma.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, reasons = heavy_tail_metrics(sigma, shape, return_reasons=True)
    assert str(reasons) == reason
    for name in HEAVY_TAIL_NAMES:
        assert np.isnan(out[name]) == (name in nan_names), name
    if "log_norm" not in nan_names:
        assert out["log_norm"] == pytest.approx(math.log10(np.sum(sigma**2)))


def test_a_batch_carries_one_reason_per_spectrum():
    rng = np.random.default_rng(4)
    good = _sigma(rng.standard_t(3.0, size=(30, 20)))
    sigma = np.stack([good, np.zeros(20), np.full(20, np.nan)])
    out, reasons = heavy_tail_metrics(sigma, (30, 20), return_reasons=True)
    assert reasons.tolist() == ["", "zero-matrix", "nonfinite"]
    assert np.isfinite(out["alpha"][0]) and np.isnan(out["alpha"][1:]).all()


def test_power_law_fit_of_degenerate_data():
    assert power_law_fit([]).reason == "too-few-eigenvalues"
    assert power_law_fit([5.0]).reason == "too-few-eigenvalues"
    assert power_law_fit([0.0, 0.0]).reason == "zero-matrix"
    assert power_law_fit([1.0, np.nan]).reason == "nonfinite"
    assert np.isnan(power_law_fit([1.0, np.nan]).alpha)


def test_a_wrong_shape_is_an_error_naming_the_option():
    with pytest.raises(SpecdynError, match=r"min\(m, n\) = 20") as info:
        heavy_tail_metrics(np.ones(10), (30, 20))
    assert info.value.option == "shape"
    with pytest.raises(SpecdynError, match="shape must be"):
        heavy_tail_metrics(np.ones(10), (10,))


# ------------------------------------------------------------------ WeightWatcher's conv convention


def _conv_weights() -> list[np.ndarray]:
    """Conv2d weights [out, in, kh, kw]: heavy-tailed and Gaussian, 3x3, 5x5, 1x3 and 1x1
    kernels, more outputs than inputs and the other way round, one with few eigenvalues."""
    rng = np.random.default_rng(33)
    return [
        rng.standard_t(2.5, size=(32, 16, 3, 3)),
        rng.standard_t(3.5, size=(12, 24, 3, 3)),
        rng.standard_normal(size=(20, 20, 5, 5)),
        rng.pareto(2.0, size=(40, 8, 1, 3)) * rng.choice([-1.0, 1.0], size=(40, 8, 1, 3)),
        rng.standard_t(3.0, size=(30, 10, 1, 1)),
        rng.standard_t(3.0, size=(6, 4, 3, 3)),  # 36 pooled eigenvalues from 4x6 taps
    ]


def _weightwatcher_conv(weights: list[np.ndarray]):
    """WeightWatcher 0.7.7's analyze() of bias-free nn.Conv2d layers holding `weights`."""
    import torch
    import weightwatcher
    from torch import nn

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    layers = []
    for w in weights:
        out, inp, kh, kw = w.shape
        layer = nn.Conv2d(inp, out, (kh, kw), bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
        layers.append(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return weightwatcher.WeightWatcher(model=nn.ModuleList(layers)).analyze()


def test_conv_metrics_match_weightwatcher_per_tap_convention():
    weights = _conv_weights()
    details = _weightwatcher_conv(weights)
    assert len(details) == len(weights)
    for (_, row), w in zip(details.iterrows(), weights, strict=True):
        w32 = np.asarray(w, dtype=np.float32)
        ours, reason = metrics.conv_heavy_tail_metrics(w32)
        assert reason == "" and row["alpha"] != -1
        assert int(row["num_evals"]) == w.shape[2] * w.shape[3] * min(w.shape[:2])
        # as for dense layers: the fit to float64 precision (measured: 1e-15), the rest 1e-6
        assert ours["alpha"] == pytest.approx(row["alpha"], rel=1e-9, abs=0)
        assert ours["xmin"] == pytest.approx(row["xmin"], rel=1e-9, abs=0)
        assert ours["ks_distance"] == pytest.approx(row["D"], rel=1e-9, abs=1e-15)
        assert int(ours["num_tail"]) == int(row["num_pl_spikes"])
        for name, column in WW_COLUMNS.items():
            assert ours[name] == pytest.approx(float(row[column]), rel=1e-6), name
        # not the flattened view's numbers: a different ESD
        flat = heavy_tail_metrics(_sigma(w32.reshape(w.shape[0], -1)), (w.shape[0], w[0].size))
        assert ours["log_norm"] != pytest.approx(float(flat["log_norm"]), rel=1e-3)


def test_conv_metrics_known_answers_and_degenerate_weights():
    rng = np.random.default_rng(5)
    w = rng.standard_t(3.0, size=(10, 6, 3, 3))
    ours, _ = metrics.conv_heavy_tail_metrics(w, scale=1.0)
    taps = [np.linalg.svd(w[:, :, i, j], compute_uv=False) for i in range(3) for j in range(3)]
    lam = np.sort(np.concatenate(taps) ** 2)
    assert lam.size == 54
    fit = power_law_fit(lam)
    assert ours["alpha"] == fit.alpha and ours["xmin"] == fit.xmin
    assert ours["log_norm"] == pytest.approx(math.log10(np.sum(w**2)), rel=1e-12)
    assert ours["stable_rank"] == pytest.approx(lam.sum() / lam.max(), rel=1e-12)
    edge = lam.mean() * (1 + math.sqrt(6 / 10)) ** 2
    assert ours["mp_bulk_max"] == pytest.approx(edge, rel=1e-12)
    # the default scale √(1/2) halves every eigenvalue: alpha unchanged, norms shifted
    scaled, _ = metrics.conv_heavy_tail_metrics(w)
    assert scaled["alpha"] == pytest.approx(ours["alpha"], rel=1e-9)
    assert scaled["log_norm"] == pytest.approx(ours["log_norm"] - math.log10(2), rel=1e-12)
    # the transposed layout (ConvTranspose2d) gives the same numbers
    swapped, _ = metrics.conv_heavy_tail_metrics(w.transpose(1, 0, 2, 3))
    assert all(swapped[k] == pytest.approx(scaled[k], rel=1e-9) for k in HEAVY_TAIL_NAMES)
    for bad, reason in [
        (np.zeros((4, 4, 3, 3)), "zero-matrix"),
        (np.full((4, 4, 3, 3), np.nan), "nonfinite"),
        (rng.standard_normal((3, 2, 1, 3)), "too-few-eigenvalues"),  # 6 pooled < 8
    ]:
        values, why = metrics.conv_heavy_tail_metrics(bad)
        assert why == reason and all(np.isnan(v) for v in values.values())
    with pytest.raises(SpecdynError, match="out, in, kh, kw"):
        metrics.conv_heavy_tail_metrics(np.ones((4, 4)))
