"""Tests of specdyn.vectors: top-k singular vectors against float64 LAPACK (with
Wedin-type, gap-dependent tolerances), and alignment / agreement on constructions with
known answers and on the committed fixture trajectories against an independent numpy
implementation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import FakeCuda, spy_blocks

from specdyn import _linalg
from specdyn.engine import SpectrumEngine
from specdyn.errors import EngineError
from specdyn.sources import open_checkpoint
from specdyn.vectors import (
    VECTOR_METHODS,
    agreement_diagonal,
    agreement_matrix,
    agreement_score,
    alignment_diagonal,
    alignment_matrix,
    alignment_score,
    top_singular_vectors,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# the contract: σ within 1e-6·σ1, triplet residuals within 1e-6·σ1
TOL = 1e-6


def _orthonormal(rng: np.random.Generator, n: int, k: int | None = None) -> np.ndarray:
    """A Haar-random n×k matrix with orthonormal columns (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, k or n)))
    return q * np.sign(np.diag(r))


def _built(rng: np.random.Generator, m: int, n: int, sigma: np.ndarray) -> np.ndarray:
    """U·diag(σ)·Vᵀ with Haar-random U [m, R], V [n, R]."""
    rank = len(sigma)
    return (_orthonormal(rng, m, rank) * sigma) @ _orthonormal(rng, n, rank).T


def _gaps(sigma: np.ndarray, with_zero: bool) -> np.ndarray:
    """Distance of each σ_i to the other singular values (and to 0 for the long side)."""
    diff = np.abs(sigma[:, None] - sigma[None, :])
    np.fill_diagonal(diff, np.inf)
    gap = diff.min(axis=1)
    return np.minimum(gap, sigma) if with_zero else gap


def _sin_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sin of the angle between matching unit columns of a and b."""
    cos = np.clip(np.abs(np.sum(a * b, axis=0)), 0.0, 1.0)
    return np.sqrt(1.0 - cos**2)


def _check_against_lapack(w: torch.Tensor, k: int, top) -> None:
    """σ within 1e-6·σ1 and every vector within the Wedin angle bound of LAPACK's."""
    a = w.double().numpy()
    m, n = a.shape
    u_ref, s_ref, vh_ref = np.linalg.svd(a, full_matrices=False)
    kk = min(k, min(m, n))
    assert top.sigma.dtype == np.float64 and top.sigma.shape == (min(m, n),)
    assert top.u.shape == (m, kk) and top.v.shape == (n, kk)
    assert np.abs(top.sigma - s_ref).max() <= TOL * s_ref[0]
    # Wedin: a triplet with residual ρ is within sin θ ≤ ρ/δ of the exact one; the Gram route
    # guarantees ρ ≤ 1e-6·σ1 (LAPACK itself ≈ 1e-15·σ1), so the two differ by ≤ 2·1e-6·σ1/δ
    for side, mine, ref, long_side in (
        ("u", top.u, u_ref[:, :kk], m > n),
        ("v", top.v, vh_ref[:kk].T, n > m),
    ):
        gap = _gaps(s_ref, long_side)[:kk]
        with np.errstate(divide="ignore"):  # a zero gap (repeated values) allows anything
            allowed = np.minimum(1.0, 2.0 * TOL * s_ref[0] / gap + 1e-12)
        sin = _sin_angles(mine, ref)
        assert (sin <= allowed).all(), (side, (sin / allowed).max())
    # orthonormal columns
    for basis in (top.u, top.v):
        assert np.abs(basis.T @ basis - np.eye(kk)).max() <= 1e-6


# ------------------------------------------------------------ top_singular_vectors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(160, 96), (96, 160), (128, 128)])
def test_top_vectors_match_lapack_every_dtype_and_orientation(dtype, shape):
    rng = np.random.default_rng(hash((str(dtype), shape)) % 2**32)
    w = torch.from_numpy(rng.standard_normal(shape) * 0.02).to(dtype)
    top = top_singular_vectors(w, 40)
    assert top.method == "gram-eigh-f64"
    _check_against_lapack(w, 40, top)


def test_top_vectors_strided_and_trained_like_spectrum():
    rng = np.random.default_rng(1)
    sigma = np.geomspace(10.0, 1e-2, 120)
    a = _built(rng, 300, 120, sigma)
    w = torch.from_numpy(a).T  # a wide, non-contiguous view
    top = top_singular_vectors(w, 100)
    assert top.method == "gram-eigh-f64"
    _check_against_lapack(w, 100, top)
    # W ≈ U_k Σ_k V_kᵀ on the top-k part: residual ≤ σ_{k+1} + errors
    approx = (top.u * top.sigma[:100]) @ top.v.T
    err = np.linalg.norm(w.numpy() - approx, 2)
    assert err <= sigma[100] * (1 + 1e-6) + TOL * sigma[0]


def test_exact_uses_lapack_and_k_is_capped_at_rank():
    rng = np.random.default_rng(2)
    w = torch.from_numpy(rng.standard_normal((50, 20)))
    top = top_singular_vectors(w, 100, exact=True)
    assert top.method == "svd-f64"
    assert top.u.shape == (50, 20) and top.v.shape == (20, 20)
    _check_against_lapack(w, 100, top)


def test_rank_deficient_with_k_beyond_rank_falls_back_to_lapack():
    # 30 of 80 singular values are nonzero: the long-side vectors A·v_i/σ_i of the zero
    # ones are undefined, the residual check must reject the Gram route
    rng = np.random.default_rng(3)
    sigma = np.linspace(3.0, 1.0, 30)
    w = torch.from_numpy(_built(rng, 200, 80, sigma))
    top = top_singular_vectors(w, 50)
    assert top.method == "svd-f64"
    _check_against_lapack(w, 50, top)
    # with k inside the numerical rank the Gram route is fine
    top = top_singular_vectors(w, 20)
    assert top.method == "gram-eigh-f64"
    _check_against_lapack(w, 20, top)


def test_ill_conditioned_flat_top_falls_back(one_torch_thread):
    # half the values ≈ 1, half 1e-8: ‖W‖_F² = 256·σ1², so the engine's σ bound (≈ √η ≈
    # 1.4e-6·σ1 at the bottom) cannot certify the Gram route's values; its top-10
    # triplets pass, so only the values come from LAPACK (svdvals), not a full SVD
    rng = np.random.default_rng(4)
    sigma = np.concatenate([np.linspace(1.0, 0.99, 256), np.full(256, 1e-8)])
    w = torch.from_numpy(_built(rng, 1024, 512, sigma))
    top = top_singular_vectors(w, 10)
    assert top.method == "gram-eigh-svdvals-f64"
    _check_against_lapack(w, 10, top)


def test_extreme_float64_magnitudes_are_scaled_exactly():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((60, 40))
    for factor in (2.0**-600, 2.0**600):
        top = top_singular_vectors(torch.from_numpy(base * factor), 10)
        ref = top_singular_vectors(torch.from_numpy(base), 10)
        assert top.method == ref.method == "gram-eigh-f64"
        np.testing.assert_allclose(top.sigma / factor, ref.sigma, rtol=1e-12)
        np.testing.assert_allclose(np.abs(np.sum(top.u * ref.u, 0)), 1.0, atol=1e-10)


def test_nonfinite_zero_and_empty_inputs():
    w = torch.randn(12, 7)
    w[3, 4] = math.nan
    top = top_singular_vectors(w, 5)
    assert top.method == "nonfinite"
    assert np.isnan(top.sigma).all() and top.sigma.shape == (7,)
    assert top.u.shape == (12, 5) and np.isnan(top.u).all() and np.isnan(top.v).all()
    w[3, 4] = -math.inf
    assert top_singular_vectors(w, 5).method == "nonfinite"
    zero = top_singular_vectors(torch.zeros(6, 9, dtype=torch.bfloat16), 4)
    assert zero.method == "zero" and (zero.sigma == 0).all() and zero.sigma.shape == (6,)
    assert zero.v.shape == (9, 4) and np.isnan(zero.v).all()
    empty = top_singular_vectors(torch.zeros(0, 5), 3)
    assert empty.method == "zero" and empty.sigma.shape == (0,) and empty.u.shape == (0, 0)
    assert set(VECTOR_METHODS) >= {top.method, zero.method}


def test_invalid_inputs_raise_engine_error():
    with pytest.raises(EngineError, match="2-D"):
        top_singular_vectors(torch.zeros(3, 4, 5), 2)
    with pytest.raises(EngineError, match="floating"):
        top_singular_vectors(torch.zeros(3, 4, dtype=torch.int64), 2)
    with pytest.raises(EngineError, match="k=0"):
        top_singular_vectors(torch.randn(3, 4), 0)
    with pytest.raises(EngineError, match="device"):
        top_singular_vectors(torch.randn(3, 4), 2, device="tpu")


# ------------------------------------------------------------ alignment


def test_balanced_pair_is_perfectly_aligned():
    # W2 = U2 Σ2 U1ᵀ: the right vectors of W2 are the left vectors of W1 (V_{i+1} = U_i)
    rng = np.random.default_rng(6)
    d, rank = 64, 24
    u1 = _orthonormal(rng, d, rank)
    w1 = (u1 * np.linspace(5.0, 1.0, rank)) @ _orthonormal(rng, 48, rank).T  # (64, 48)
    w2 = (_orthonormal(rng, 80, rank) * np.linspace(4.0, 0.5, rank)) @ u1.T  # (80, 64)
    t1 = top_singular_vectors(torch.from_numpy(w1), rank)
    t2 = top_singular_vectors(torch.from_numpy(w2), rank)
    diag = alignment_diagonal(t1.u, t2.v)
    assert diag.shape == (rank,)
    np.testing.assert_allclose(diag, 1.0, atol=1e-9)
    assert alignment_score(diag) == pytest.approx(1.0, abs=1e-9)
    full = alignment_matrix(t1.u, t2.v)
    off = full[~np.eye(rank, dtype=bool)]
    assert off.max() < 1e-9  # and orthogonal to every other vector


@pytest.mark.parametrize("n", [256, 1024])
def test_random_bases_have_mean_alignment_sqrt_2_over_pi_n(n):
    # A_ii = |⟨q_i, q'_i⟩| with q'_i uniform on the sphere independently of q_i, so A_ii is
    # |x_1| of a uniform unit vector: E = Γ(n/2)/(√π Γ((n+1)/2)) ≈ √(2/(πn)), Var = 1/n − E².
    # The n diagonal entries are exchangeable and (by symmetry) uncorrelated to O(1/n²), so
    # the mean over the diagonal has std ≈ √(Var/n); we allow 5 std plus 1/n² for the rest.
    rng = np.random.default_rng(n)
    q1, q2 = _orthonormal(rng, n), _orthonormal(rng, n)
    diag = alignment_diagonal(q1, q2, k=n)
    expected = math.exp(math.lgamma(n / 2) - math.lgamma((n + 1) / 2)) / math.sqrt(math.pi)
    assert abs(expected - math.sqrt(2 / (math.pi * n))) <= 1.0 / n  # the asymptotic form
    std_of_mean = math.sqrt((1.0 / n - expected**2) / n)
    assert abs(diag.mean() - expected) <= 5 * std_of_mean + 1.0 / n**2
    # and far from the aligned value: the bound is tight enough to fail
    assert diag.mean() < 3 * math.sqrt(2 / (math.pi * n))


def test_alignment_diagonal_equals_matrix_diagonal_and_truncates():
    rng = np.random.default_rng(7)
    u, v = _orthonormal(rng, 30, 12), _orthonormal(rng, 30, 20)
    full = alignment_matrix(u, v)
    assert full.shape == (12, 20)
    np.testing.assert_allclose(alignment_diagonal(u, v, k=100), np.diag(full), atol=1e-15)
    assert alignment_diagonal(u, v, k=5).shape == (5,)
    assert alignment_diagonal(u, v, k=0).shape == (0,)


def test_scores_are_head_means_and_nan_when_empty():
    d = np.arange(1.0, 16.0) / 16
    assert alignment_score(d) == pytest.approx(np.mean(d[:10]))
    assert agreement_score(d, top=3) == pytest.approx(np.mean(d[:3]))
    assert alignment_score(d[:4]) == pytest.approx(np.mean(d[:4]))
    assert math.isnan(alignment_score(np.array([])))
    assert math.isnan(agreement_score(np.array([0.5]), top=0))


def test_mismatched_dimensions_raise_value_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(6, 3\)"):
        alignment_matrix(np.zeros((5, 3)), np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(6, 2\)"):
        alignment_diagonal(np.zeros((5, 3)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match=r"u_t has shape \(5, 3\).*u_ref has shape \(4, 3\)"):
        agreement_matrix(np.zeros((5, 3)), np.zeros((7, 3)), np.zeros((4, 3)), np.zeros((7, 3)))
    with pytest.raises(ValueError, match=r"v_t has shape \(7, 3\).*v_ref has shape \(8, 3\)"):
        agreement_diagonal(np.zeros((5, 3)), np.zeros((7, 3)), np.zeros((5, 3)), np.zeros((8, 3)))
    with pytest.raises(ValueError, match=r"u_t has shape \(5, 3\).*v_t has shape \(7, 2\)"):
        agreement_matrix(np.zeros((5, 3)), np.zeros((7, 2)), np.zeros((5, 3)), np.zeros((7, 3)))
    with pytest.raises(ValueError, match="2-D"):
        alignment_matrix(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError) as info:
        alignment_matrix(np.zeros((5, 3)), np.zeros((6, 3)))
    assert "\n" not in str(info.value)  # one line


# ------------------------------------------------------------ agreement


def test_agreement_is_the_frobenius_product_of_rank_one_terms():
    rng = np.random.default_rng(8)
    u_t, v_t = _orthonormal(rng, 9, 4), _orthonormal(rng, 7, 4)
    u_r, v_r = _orthonormal(rng, 9, 4), _orthonormal(rng, 7, 4)
    s = agreement_matrix(u_t, v_t, u_r, v_r)
    explicit = np.array(
        [
            [
                abs(np.sum(np.outer(u_t[:, i], v_t[:, i]) * np.outer(u_r[:, k], v_r[:, k])))
                for k in range(4)
            ]
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(s, explicit, atol=1e-14)
    np.testing.assert_allclose(agreement_diagonal(u_t, v_t, u_r, v_r), np.diag(s), atol=1e-15)
    assert agreement_diagonal(u_t, v_t, u_r, v_r, k=2).shape == (2,)


def _rotating_trajectory(rng, m, n, fixed, steps):
    """Matrices W(t) = U(t) Σ V(t)ᵀ whose top `fixed` singular pairs never move while the
    bottom ones rotate (within their own subspace) by an angle growing with t."""
    rank = min(m, n)
    u0, v0 = _orthonormal(rng, m, rank), _orthonormal(rng, n, rank)
    sigma = np.linspace(10.0, 1.0, rank)
    bottom = rank - fixed
    generator = rng.standard_normal((bottom, bottom))
    generator = generator - generator.T  # skew: exp(θ·G) is a rotation
    evals, evecs = np.linalg.eig(generator)
    mats = []
    for t in range(steps):
        angle = 0.4 * (steps - 1 - t)  # the last step (the reference) has angle 0
        rot = (evecs @ np.diag(np.exp(angle * evals)) @ np.linalg.inv(evecs)).real
        u = u0.copy()
        v = v0.copy()
        u[:, fixed:] = u0[:, fixed:] @ rot
        v[:, fixed:] = v0[:, fixed:] @ rot.T
        mats.append((u * sigma) @ v.T)
    return mats


def test_fixed_top_rotating_bottom_trajectory():
    rng = np.random.default_rng(9)
    fixed = 6
    mats = _rotating_trajectory(rng, 40, 30, fixed, steps=5)
    tops = [top_singular_vectors(torch.from_numpy(w), 30) for w in mats]
    ref = tops[-1]
    for step, top in enumerate(tops):
        diag = agreement_diagonal(top.u, top.v, ref.u, ref.v)
        assert diag.shape == (30,)
        np.testing.assert_allclose(diag[:fixed], 1.0, atol=1e-9)
        if step == len(tops) - 1:
            np.testing.assert_allclose(diag, 1.0, atol=1e-9)  # the reference against itself
            assert agreement_score(diag) == pytest.approx(1.0, abs=1e-9)
        else:
            assert (diag[fixed:] < 1 - 1e-3).all(), (step, diag[fixed:].max())
            assert agreement_score(diag) < 1 - 1e-4


def test_metrics_invariant_to_sign_flips_of_singular_vectors():
    rng = np.random.default_rng(10)
    w1, w2 = rng.standard_normal((24, 16)), rng.standard_normal((20, 24))
    t1 = top_singular_vectors(torch.from_numpy(w1), 16)
    t2 = top_singular_vectors(torch.from_numpy(w2), 16)
    w1b = w1 + 0.1 * rng.standard_normal(w1.shape)
    t1b = top_singular_vectors(torch.from_numpy(w1b), 16)
    align = alignment_matrix(t1.u, t2.v)
    agree = agreement_matrix(t1.u, t1.v, t1b.u, t1b.v)
    align_diag = alignment_diagonal(t1.u, t2.v)
    agree_diag = agreement_diagonal(t1.u, t1.v, t1b.u, t1b.v)
    np.testing.assert_allclose(align_diag, np.diag(align), atol=1e-15)
    np.testing.assert_allclose(agree_diag, np.diag(agree), atol=1e-15)
    for _ in range(5):
        f1 = rng.choice([-1.0, 1.0], 16)  # a valid SVD flips u_i and v_i together
        f2 = rng.choice([-1.0, 1.0], 16)
        f3 = rng.choice([-1.0, 1.0], 16)
        np.testing.assert_array_equal(alignment_matrix(t1.u * f1, t2.v * f2), align)
        np.testing.assert_array_equal(
            agreement_matrix(t1.u * f1, t1.v * f1, t1b.u * f3, t1b.v * f3), agree
        )
        np.testing.assert_array_equal(
            agreement_diagonal(t1.u * f1, t1.v * f1, t1b.u * f3, t1b.v * f3), agree_diag
        )
        np.testing.assert_array_equal(alignment_diagonal(t1.u * f2, t2.v * f1), align_diag)


# ------------------------------------------------------------ fixtures vs numpy


def _numpy_svd(w: np.ndarray):
    """Independent float64 reference: (U, σ, V) from numpy's LAPACK."""
    u, s, vh = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    return u, s, vh.T


def _vector_error(s: np.ndarray, long_side: bool, k: int) -> np.ndarray:
    """Per-vector angle bound allowed by the contract (Wedin, both methods), capped at 1."""
    return np.minimum(1.0, 2.0 * TOL * s[0] / _gaps(s, long_side)[:k] + 1e-12)


def _mlp_states() -> list[dict[str, torch.Tensor]]:
    """The mlp-wd trajectory's weights, step order."""
    files = sorted((FIXTURES / "mlp-wd").glob("step_*.pt"))
    assert len(files) == 10
    return [torch.load(f, weights_only=True)["model_state_dict"] for f in files]


def test_mlp_fixture_alignment_and_agreement_match_numpy():
    states = _mlp_states()
    names = [f"layers.{i}.weight" for i in range(4)]
    k = 100
    tight = 0
    tops = [{name: top_singular_vectors(st[name], k) for name in names} for st in states]
    refs = [{name: _numpy_svd(st[name].numpy()) for name in names} for st in states]
    for top, ref, st in zip(tops, refs, states, strict=True):
        for first, second in zip(names, names[1:], strict=False):
            diag = alignment_diagonal(top[first].u, top[second].v, k=k)
            u_np, s1, _ = ref[first]
            _, s2, v_np = ref[second]
            kk = min(k, u_np.shape[1], v_np.shape[1])
            expected = np.abs(np.sum(u_np[:, :kk] * v_np[:, :kk], axis=0))
            m1, n1 = st[first].shape
            m2, n2 = st[second].shape
            allowed = _vector_error(s1, m1 > n1, kk) + _vector_error(s2, n2 > m2, kk)
            assert diag.shape == (kk,)
            assert (np.abs(diag - expected) <= allowed).all()
            tight += int((allowed < 1e-3).sum())
            a_mine = alignment_matrix(top[first].u, top[second].v)
            a_np = np.abs(u_np.T @ v_np[:, : a_mine.shape[1]])[: a_mine.shape[0]]
            assert a_mine.shape == a_np.shape
    # agreement of every step with the last
    for name in names:
        u_r, s_r, v_r = refs[-1][name]
        ref_top = tops[-1][name]
        m, n = states[-1][name].shape
        for top, ref in zip(tops, refs, strict=True):
            diag = agreement_diagonal(top[name].u, top[name].v, ref_top.u, ref_top.v, k=k)
            u_t, s_t, v_t = ref[name]
            kk = min(k, m, n)
            expected = np.abs(np.sum(u_t[:, :kk] * u_r[:, :kk], 0)) * np.abs(
                np.sum(v_t[:, :kk] * v_r[:, :kk], 0)
            )
            allowed = (
                _vector_error(s_t, m > n, kk)
                + _vector_error(s_t, n > m, kk)
                + _vector_error(s_r, m > n, kk)
                + _vector_error(s_r, n > m, kk)
            )
            assert (np.abs(diag - expected) <= allowed).all()
            tight += int((allowed < 1e-3).sum())
            assert agreement_score(diag) == pytest.approx(np.mean(diag[:10]))
        last = agreement_diagonal(ref_top.u, ref_top.v, ref_top.u, ref_top.v, k=k)
        np.testing.assert_allclose(last, 1.0, atol=1e-12)
    # the comparisons above must mostly be sharp, not vacuous
    assert tight > 1000


def test_cnn_fixture_centre_tap_alignment_matches_numpy():
    files = sorted((FIXTURES / "cnn-lightning").glob("epoch=*.ckpt"))
    assert len(files) == 10
    tight = 0
    for path in files:
        with open_checkpoint(path).open() as reader:
            convs = [reader.get(f"model.conv{i}.weight") for i in (1, 2, 3)]
        for w1, w2 in zip(convs, convs[1:], strict=False):
            flat = w1.reshape(w1.shape[0], -1)  # (c_out, c_in·kh·kw)
            kh, kw = w2.shape[2], w2.shape[3]
            tap = w2[:, :, kh // 2, kw // 2]  # (c_out', c_in'), c_in' = c_out
            t1 = top_singular_vectors(flat, 100)
            t2 = top_singular_vectors(tap, 100)
            diag = alignment_diagonal(t1.u, t2.v)
            u_np, s1, _ = _numpy_svd(flat.numpy())
            _, s2, v_np = _numpy_svd(w2.numpy()[:, :, kh // 2, kw // 2])
            kk = min(u_np.shape[1], v_np.shape[1])
            expected = np.abs(np.sum(u_np[:, :kk] * v_np[:, :kk], 0))
            allowed = _vector_error(s1, flat.shape[0] > flat.shape[1], kk) + _vector_error(
                s2, tap.shape[1] > tap.shape[0], kk
            )
            assert diag.shape == (kk,)
            assert (np.abs(diag - expected) <= allowed).all()
            tight += int((allowed < 1e-3).sum())
    assert tight > 200


def test_lapack_fallback_chain_when_torch_svd_does_not_converge(monkeypatch):
    rng = np.random.default_rng(11)
    w = torch.from_numpy(rng.standard_normal((40, 25)))

    def failing_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    top = top_singular_vectors(w, 10, exact=True)  # torch fails both ways: numpy's LAPACK
    assert top.method == "svd-f64"
    _check_against_lapack(w, 10, top)

    def failing_numpy_svd(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", failing_numpy_svd)
    with pytest.raises(EngineError, match="40×25 matrix did not converge"):
        top_singular_vectors(w, 10, exact=True)


# ------------------------------------------------------------ the engine's batched route


def _same_top(a, b, atol: float = 1e-12) -> None:
    """Two TopK of one matrix agree: σ, and every vector up to its sign."""
    assert a.method == b.method and a.u.shape == b.u.shape and a.v.shape == b.v.shape
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=0, atol=atol * max(b.sigma[0], 1e-300))
    for x, y in ((a.u, b.u), (a.v, b.v)):
        np.testing.assert_allclose(np.abs(np.sum(x * y, axis=0)), 1.0, atol=1e-9)


def _mixed_batch() -> list[torch.Tensor]:
    """Tall, wide, square, strided; fp16/bf16/fp32/fp64; a NaN, a zero and an empty one;
    several matrices sharing a shape and dtype; one that the Gram check must reject."""
    rng = np.random.default_rng(12)

    def gauss(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal((m, n)) * 0.02).to(dtype)

    nan = gauss(12, 7, torch.float32)
    nan[2, 3] = math.nan
    rank_deficient = torch.from_numpy(_built(rng, 90, 60, np.linspace(3.0, 1.0, 10)))
    return [
        gauss(90, 60, torch.float32),
        gauss(60, 90, torch.float16),
        gauss(70, 70, torch.bfloat16),
        gauss(90, 60, torch.float64),
        nan,
        gauss(90, 60, torch.float32),
        torch.zeros(6, 9, dtype=torch.bfloat16),
        rank_deficient,  # rank 10 < k: the long-side vectors fail the residual check
        gauss(60, 90, torch.float32).T,  # tall, transposed view
        torch.zeros(0, 5),
        gauss(15, 10, torch.float64),  # k > R: capped
        gauss(90, 60, torch.float32),
    ]


def _check_batch(ws: list[torch.Tensor], tops: list, k: int) -> None:
    """Each result against LAPACK (Wedin) and against the matrix computed alone."""
    assert len(tops) == len(ws)
    for i, (w, top) in enumerate(zip(ws, tops, strict=True)):
        m, n = w.shape
        kk = min(k, m, n)
        assert top.u.shape == (m, kk) and top.v.shape == (n, kk), i
        if w.numel() == 0 or not torch.any(w != 0):
            assert top.method == "zero" and (top.sigma == 0).all()
            assert np.isnan(top.u).all() and np.isnan(top.v).all()
        elif torch.isnan(w).any():
            assert top.method == "nonfinite" and np.isnan(top.sigma).all()
        else:
            assert top.method == ("svd-f64" if i == 7 else "gram-eigh-f64"), i
            _check_against_lapack(w, k, top)
            _same_top(top, top_singular_vectors(w, k))


def test_engine_top_vectors_mixed_batch_matches_one_at_a_time_and_lapack():
    ws = _mixed_batch()
    tops = SpectrumEngine("cpu", precision="float32").top_vectors(ws, 20)
    _check_batch(ws, tops, 20)  # float32 precision changes nothing for vectors


def test_engine_top_vectors_validates_k_and_inputs():
    engine = SpectrumEngine("cpu")
    for bad in (0, -3, True, 2.5, "10"):
        with pytest.raises(EngineError, match="k="):
            engine.top_vectors([torch.randn(4, 3)], bad)
    with pytest.raises(EngineError, match="matrix 2 of 2") as info:
        engine.top_vectors([torch.randn(4, 3), torch.zeros(3, dtype=torch.int32)], 2)
    assert "\n" not in str(info.value)
    assert engine.top_vectors([torch.randn(4, 3)], np.int64(2))[0].u.shape == (4, 2)


def test_memory_model_of_vectors_does_not_grow_with_length_or_k_beyond_s():
    # the long side only ever appears as one block: L enters through the block, k ≤ s
    small = _linalg.gram_eigh_bytes(1, 1000, 200, 64, 2, 200)
    assert _linalg.gram_eigh_bytes(1, 10**7, 200, 64, 2, 200) == small
    assert _linalg.gram_eigh_bytes(1, 1000, 200, 64, 2, 10**6) == small
    assert _linalg.gram_eigh_bytes(3, 1000, 200, 64, 2, 200) == 3 * small
    assert _linalg.tsqr_svd_bytes(1, 10**7, 200, 64, 2, 200) == _linalg.tsqr_svd_bytes(
        1, 1000, 200, 64, 2, 200
    )
    assert _linalg.svd_bytes(1, 10**4, 200, 2, 10) > 10**4 * 200 * 26


def test_small_max_memory_reads_small_blocks_with_same_vectors(monkeypatch):
    rng = np.random.default_rng(13)
    w = torch.from_numpy(rng.standard_normal((2000, 120)) * 0.02).half()
    free = SpectrumEngine("cpu").top_vectors([w], 30)[0]
    blocks = spy_blocks(monkeypatch)
    bound = _linalg.gram_eigh_bytes(1, 2000, 120, 8, 2, 30)
    tight = SpectrumEngine("cpu", max_memory=bound).top_vectors([w], 30)[0]
    assert {r1 - r0 for r0, r1 in blocks} == {8}  # Gram and long-side passes alike
    assert len(blocks) == 2 * 2000 // 8
    assert tight.method == free.method == "gram-eigh-f64"
    _same_top(tight, free)
    _check_against_lapack(w, 30, tight)


def test_uncertified_gram_under_tight_bound_uses_chunked_qr_vectors(
    monkeypatch, one_torch_thread, computed
):
    # 150 values in [0.9, 1] over 50 zeros: ‖W‖_F² ≈ 135·σ1², so the σ bound at the zeros
    # (≈ √(k_acc·135·u)·σ1) exceeds 1e-6·σ1; a whole float64 copy does not fit the bound
    sigma = np.r_[np.linspace(1.0, 0.9, 150), np.zeros(50)]
    w = torch.from_numpy(_built(np.random.default_rng(14), 4000, 200, sigma))
    bound = _linalg.tsqr_svd_bytes(1, 4000, 200, 64, 8, 10)
    assert bound < _linalg.svd_bytes(1, 4000, 200, 8, 10)
    calls = computed
    # the top-10 triplets pass: the Gram route's vectors are kept, and only the values
    # come from LAPACK, by the chunked QR (a whole float64 copy does not fit)
    top = SpectrumEngine("cpu", max_memory=bound).top_vectors([w], 10)[0]
    assert top.method == "gram-eigh-svdvals-f64"
    assert calls == ["gram-eigh-f64", "tsqr-svdvals-f64"]
    _check_against_lapack(w, 10, top)
    # k = 200 reaches the zeros, whose triplets fail: the chunked QR's vectors
    calls.clear()
    blocks = spy_blocks(monkeypatch)
    wide = SpectrumEngine("cpu", max_memory=bound).top_vectors([w], 200)[0]
    assert wide.method == "tsqr-svd-f64" and calls == ["gram-eigh-f64", "tsqr-svd-f64"]
    assert max(r1 - r0 for r0, r1 in blocks) <= 64
    np.testing.assert_allclose(wide.sigma, top.sigma, rtol=0, atol=1e-13)
    for x, y in ((wide.u[:, :10], top.u), (wide.v[:, :10], top.v)):
        np.testing.assert_allclose(np.abs(np.sum(x * y, axis=0)), 1.0, atol=1e-9)
    exact = SpectrumEngine("cpu", exact=True, max_memory=bound).top_vectors([w], 10)[0]
    assert exact.method == "tsqr-svd-f64"
    _check_against_lapack(w, 10, exact)  # well-separated top values: within Wedin's bound
    # and its long-side vectors are as good as LAPACK's for σ_i ≈ σ1: error ≈ u·σ1/σ_i
    u_ref = np.linalg.svd(w.numpy(), full_matrices=False)[0][:, :10]
    signs = np.sign(np.sum(exact.u * u_ref, axis=0))
    assert np.linalg.norm(exact.u * signs - u_ref, axis=0).max() <= 1e-9


def test_max_memory_too_small_for_one_row_names_the_smallest_that_works():
    w = torch.from_numpy(np.random.default_rng(15).standard_normal((300, 200)))
    with pytest.raises(EngineError) as info:
        SpectrumEngine("cpu", max_memory=1000).top_vectors([w], 5)
    message = str(info.value)
    assert "\n" not in message and "raise max_memory to" in message and "gram-eigh-f64" in message
    assert "raise --max-memory to" in info.value.render(cli=True)  # the CLI's wording
    smallest = int(re.search(r"at least (\d+)\s*$", message).group(1))
    assert smallest == _linalg.gram_eigh_bytes(1, 300, 200, 1, 8, 5)
    top = SpectrumEngine("cpu", max_memory=smallest).top_vectors([w], 5)[0]
    assert top.method == "gram-eigh-f64"
    _check_against_lapack(w, 5, top)
    with pytest.raises(EngineError):
        SpectrumEngine("cpu", max_memory=smallest - 1).top_vectors([w], 5)


@pytest.fixture
def fake_cuda(monkeypatch):
    return FakeCuda(monkeypatch)


def test_gpu_batches_vectors_under_max_memory(fake_cuda):
    ws = _mixed_batch()
    per = _linalg.gram_eigh_bytes(1, 90, 60, 256, 4, 20)
    engine = SpectrumEngine("cuda", max_memory=int(2.5 * per))
    tops = engine.top_vectors(ws, 20)
    # three 90×60 float32 matrices in batches of 2 + 1; the float64 pair is one batch of 2
    # in which the rank-deficient matrix fails its check and alone is recomputed
    sizes = [n for method, n, _, dev in fake_cuda.calls if method == "gram-eigh-f64"]
    assert sorted(sizes) == [1, 1, 1, 1, 1, 2, 2] and all(
        dev == "cuda" for *_, dev in fake_cuda.calls
    )
    assert [c[:2] for c in fake_cuda.calls if c[0] != "gram-eigh-f64"] == [("svd-f64", 1)]
    _check_batch(ws, tops, 20)
    assert engine.notes == []


def test_gpu_vectors_oom_splits_then_shrinks_then_falls_back_to_cpu(fake_cuda):
    rng = np.random.default_rng(16)
    ws = [torch.from_numpy(rng.standard_normal((300, 40))).float() for _ in range(3)]
    fake_cuda.fail = lambda method, n, chunk, dev: n > 1
    engine = SpectrumEngine("cuda")
    split = engine.top_vectors(ws, 8)
    sizes = [n for _, n, _, _ in fake_cuda.calls]
    assert sizes[0] == 3 and sizes.count(1) == 3 and engine.notes == []
    fake_cuda.calls.clear()
    fake_cuda.fail = lambda method, n, chunk, dev: dev == "cuda"
    moved = engine.top_vectors(ws[:1], 8)
    cuda_chunks = [chunk for _, _, chunk, dev in fake_cuda.calls if dev == "cuda"]
    assert cuda_chunks == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert fake_cuda.calls[-1][0] == "gram-eigh-f64" and fake_cuda.calls[-1][3] == "cpu"
    assert len(engine.notes) == 1 and engine.notes[0].kind == "fallback"
    assert "gram-eigh-f64" in engine.notes[0].message
    for w, top in zip(ws, split, strict=True):
        assert top.method == "gram-eigh-f64"
        _check_against_lapack(w, 8, top)
    _same_top(moved[0], split[0])


def test_gpu_oom_in_whole_matrix_svd_switches_to_chunked_qr_vectors(fake_cuda):
    fake_cuda.fail = lambda method, n, chunk, dev: method == "svd-f64"
    w = torch.from_numpy(np.random.default_rng(17).standard_normal((200, 30)))
    engine = SpectrumEngine("cuda", exact=True)
    top = engine.top_vectors([w], 12)[0]
    assert [c[0] for c in fake_cuda.calls] == ["svd-f64", "tsqr-svd-f64"]
    assert top.method == "tsqr-svd-f64" and engine.notes == []
    _check_against_lapack(w, 12, top)


def test_triplet_check_measures_the_residual_and_orthogonality():
    # perturbed vectors V̂ = V + E: the check must report ρ_i = √(‖Av̂ − σ̂û‖² + ‖Aᵀû − σ̂v̂‖²)
    # with û = Av̂/‖Av̂‖, and max |ÛᵀÛ − I|, as computed here directly in numpy
    rng = np.random.default_rng(18)
    a = _built(rng, 300, 40, np.linspace(2.0, 1.0, 40))
    _, s_ref, vh = np.linalg.svd(a, full_matrices=False)
    k = 6
    v_hat = vh[:k].T + 1e-4 * rng.standard_normal((40, k))
    sigma = s_ref[:k] * (1 + 1e-5)
    y = a @ v_hat
    u_hat = y / np.linalg.norm(y, axis=0)
    expected = np.sqrt(
        np.linalg.norm(a @ v_hat - sigma * u_hat, axis=0) ** 2
        + np.linalg.norm(a.T @ u_hat - sigma * v_hat, axis=0) ** 2
    )
    cpu = torch.device("cpu")
    tall = [torch.from_numpy(a)]
    out = torch.empty(1, 300, k, dtype=torch.float64)
    short = torch.from_numpy(v_hat)[None]
    z, yty = _linalg.long_side(tall, short, cpu, 32, out, residual=True)
    residual, ortho, norms = _linalg.triplet_check(
        torch.from_numpy(sigma)[None], short, z, yty, torch.tensor([np.sum(a * a)]), 300, 32
    )
    np.testing.assert_allclose(out[0].numpy(), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(norms[0].numpy(), np.linalg.norm(y, axis=0), rtol=1e-13)
    assert (residual[0].numpy() >= expected).all()  # the rounding allowance is added
    np.testing.assert_allclose(residual[0].numpy(), expected, rtol=1e-6, atol=1e-11)
    assert expected.min() > 1e-5  # the perturbation is visible
    off = np.abs(u_hat.T @ u_hat - np.eye(k)).max()
    assert ortho.item() == pytest.approx(off, rel=1e-6, abs=1e-14) and off > 1e-6
