"""Tests of the CPU top-k eigenvector route of the Gram method (``_linalg.top_eigh_lapack``:
tridiagonalisation, all eigenvalues, k eigenvectors by inverse iteration, k back-
transformations): against float64 LAPACK (``np.linalg.svd`` / ``np.linalg.eigh``) on the
fixture weights and on constructed hard cases, and the certificate still rejecting a bad
result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg.lapack
import torch
from test_engine import FakeCuda
from test_vectors import TOL, _built, _check_against_lapack

from specdyn import _linalg
from specdyn.engine import SpectrumEngine

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# small matrices: one torch thread (conftest), so that a busy machine does not slow them 10×
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def lapack_calls(monkeypatch):
    """Counts the engine's calls of the scipy route (and the matrices each one solved)."""
    calls: list[int] = []
    real = _linalg.top_eigh_lapack

    def spy(g, k):
        calls.append(g.shape[0])
        return real(g, k)

    monkeypatch.setattr(_linalg, "top_eigh_lapack", spy)
    return calls


def _top(w: torch.Tensor, k: int):
    """The engine's TopK of one matrix on the CPU."""
    return SpectrumEngine("cpu").top_vectors([w], k)[0]


def _check_clusters(w: torch.Tensor, top, sigma: np.ndarray, groups: list[slice]) -> None:
    """For each group of (nearly) equal singular values inside the top k: the span of the
    returned vectors equals LAPACK's, within 2·1e-6·σ1 / (distance to the other values)."""
    u_ref, s_ref, vh_ref = np.linalg.svd(w.double().numpy(), full_matrices=False)
    for group in groups:
        others = np.delete(s_ref, np.arange(len(s_ref))[group])
        gap = np.abs(others[:, None] - s_ref[group][None, :]).min()
        allowed = 2.0 * TOL * s_ref[0] / gap + 1e-12
        for mine, ref in ((top.u, u_ref), (top.v, vh_ref.T)):
            p_mine = mine[:, group] @ mine[:, group].T
            p_ref = ref[:, group] @ ref[:, group].T
            assert np.linalg.norm(p_mine - p_ref, 2) <= allowed, (group, allowed)


# ---------------------------------------------------------------- the route itself


@pytest.mark.parametrize("k", [1, 37, 200])
def test_top_eigh_lapack_matches_numpy_eigh(k):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((300, 200))
    g = torch.from_numpy(a.T @ a)[None]
    lam_ref, vec_ref = np.linalg.eigh(g[0].numpy())
    # only the upper triangle is read, as gram_upper fills it
    upper = torch.triu(g)
    lam, vecs = _linalg.top_eigh_lapack(upper, k)
    assert lam.shape == (1, 200) and vecs.shape == (1, 200, k)
    assert lam.dtype == vecs.dtype == torch.float64
    np.testing.assert_allclose(lam[0].numpy(), lam_ref, rtol=0, atol=1e-13 * lam_ref[-1])
    # ascending, like eigh's last k columns; signs arbitrary (measured: within 7e-14)
    mine, ref = vecs[0].numpy(), vec_ref[:, 200 - k :]
    signs = np.sign(np.sum(mine * ref, axis=0))
    assert np.linalg.norm(mine * signs - ref, axis=0).max() <= 1e-11
    assert np.abs(vecs[0].numpy().T @ vecs[0].numpy() - np.eye(k)).max() < 1e-12


def test_split_tridiagonal_uses_bisection_blocks_and_stays_exact(monkeypatch):
    # a block-diagonal Gram matrix (two groups of mutually orthogonal columns, in an
    # interleaved order) makes T split: each eigenvalue's block comes from dstebz
    rng = np.random.default_rng(7)
    q = np.linalg.qr(rng.standard_normal((400, 200)))[0]
    sigma = np.concatenate([np.linspace(5.0, 1.0, 100), np.linspace(4.5, 0.5, 100)])
    a = q * sigma
    a[:, 100:] = np.linalg.qr(rng.standard_normal((400, 100)))[0] * sigma[100:]
    g_np = a.T @ a
    g_np[:100, 100:] = 0.0
    g_np[100:, :100] = 0.0
    splits: list[int] = []
    real = scipy.linalg.lapack.dstebz

    def spy(d, e, rng_, vl, vu, il, iu, tol, order):
        out = real(d, e, rng_, vl, vu, il, iu, tol, order)
        splits.append(int(out[3][0]))
        return out

    monkeypatch.setattr(scipy.linalg.lapack, "dstebz", spy)
    lam, vecs = _linalg.top_eigh_lapack(torch.from_numpy(g_np)[None], 60)
    assert splits and splits[0] < 200  # T did split
    lam_ref, vec_ref = np.linalg.eigh(g_np)
    np.testing.assert_allclose(lam[0].numpy(), lam_ref, rtol=0, atol=1e-13 * lam_ref[-1])
    cos = np.abs(np.sum(vecs[0].numpy() * vec_ref[:, -60:], axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-9)


def test_lapack_failure_or_missing_scipy_falls_back_to_torch_eigh(monkeypatch, lapack_calls):
    rng = np.random.default_rng(8)
    w = torch.from_numpy(rng.standard_normal((260, 200)))
    monkeypatch.setattr(scipy.linalg.lapack, "dstein", lambda *a: (np.zeros((200, 1)), 3))
    top = _top(w, 30)
    assert lapack_calls == [1] and top.method == "gram-eigh-f64"
    _check_against_lapack(w, 30, top)
    monkeypatch.undo()
    import sys

    monkeypatch.setitem(sys.modules, "scipy.linalg", None)  # import fails
    assert _linalg.top_eigh_lapack(torch.eye(200, dtype=torch.float64)[None], 3) is None
    top = _top(w, 30)
    assert top.method == "gram-eigh-f64"
    _check_against_lapack(w, 30, top)


def test_route_by_size_values_only_never(lapack_calls):
    rng = np.random.default_rng(9)
    small = torch.from_numpy(rng.standard_normal((300, _linalg.SCIPY_EIGEN_MIN - 1)))
    large = torch.from_numpy(rng.standard_normal((_linalg.SCIPY_EIGEN_MIN, 300)))
    for w in (small, large):
        top = _top(w, 20)
        assert top.method == "gram-eigh-f64"
        _check_against_lapack(w, 20, top)
    assert lapack_calls == [1]  # only the large one; values-only never
    SpectrumEngine("cpu").singular_values([large])
    assert lapack_calls == [1]


# ------------------------------------------------------------------ against LAPACK


def test_fixture_weights_through_the_route(monkeypatch, lapack_calls):
    # the fixtures' matrices are below SCIPY_EIGEN_MIN: lowered so that they take the route
    monkeypatch.setattr(_linalg, "SCIPY_EIGEN_MIN", 1)
    state = torch.load(sorted((FIXTURES / "mlp-wd").glob("step_*.pt"))[-1], weights_only=True)
    weights = [state["model_state_dict"][f"layers.{i}.weight"] for i in range(4)]
    tops = SpectrumEngine("cpu").top_vectors(weights, 100)
    assert len(lapack_calls) == 4
    for w, top in zip(weights, tops, strict=True):
        assert top.method == "gram-eigh-f64"
        _check_against_lapack(w, 100, top)


@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6, 1e8])
@pytest.mark.parametrize("shape", [(260, 200), (200, 260)])
@pytest.mark.parametrize("profile", ["geometric", "half-flat"])
def test_conditioned_matrices(cond, shape, profile, lapack_calls):
    rng = np.random.default_rng(int(np.log10(cond)))
    if profile == "geometric":
        sigma = np.geomspace(1.0, 1.0 / cond, 200)
    else:  # a flat top, then a cliff: the hardest for a Gram bound
        sigma = np.concatenate([np.linspace(1.0, 0.9, 100), np.linspace(1.0, 0.9, 100) / cond])
    w = torch.from_numpy(_built(rng, *shape, sigma))
    top = _top(w, 100)
    assert lapack_calls == [1]
    # the Gram bound is absolute (≈ √η): whether it certifies the smallest values of the
    # worse-conditioned ones depends on ‖W‖_F; either way the result meets the contract
    assert top.method in (("gram-eigh-f64",) if cond <= 1e4 else ("gram-eigh-f64", "svd-f64"))
    _check_against_lapack(w, 100, top)


@pytest.mark.parametrize("spread", [0.0, 1e-10, 1e-7])
def test_repeated_and_clustered_values_around_the_kth(spread, lapack_calls):
    # six values straddling k = 50 (indices 47..52) and four inside the top k (10..13),
    # equal (spread 0) or 1e-10 / 1e-7 apart (relative)
    rng = np.random.default_rng(10)
    sigma = np.linspace(2.0, 0.5, 200)
    sigma[10:14] = sigma[10] * (1 - spread * np.arange(4))
    sigma[47:53] = sigma[47] * (1 - spread * np.arange(6))
    w = torch.from_numpy(_built(rng, 260, 200, sigma))
    top = _top(w, 50)
    assert lapack_calls == [1] and top.method == "gram-eigh-f64"
    _check_against_lapack(w, 50, top)
    _check_clusters(w, top, sigma, [slice(10, 14)])
    # the straddling cluster: the returned 47..49 lie in the span of LAPACK's 47..52
    u_ref, _, vh_ref = np.linalg.svd(w.numpy(), full_matrices=False)
    gap = min(sigma[46] - sigma[47], sigma[52] - sigma[53])
    for mine, ref in ((top.u, u_ref), (top.v, vh_ref.T)):
        span = ref[:, 47:53]
        outside = mine[:, 47:50] - span @ (span.T @ mine[:, 47:50])
        assert np.linalg.norm(outside, 2) <= 2.0 * TOL * sigma[0] / gap + 1e-12


@pytest.mark.parametrize("rank", [120, 199])
def test_exact_rank_deficiency(rank, lapack_calls):
    rng = np.random.default_rng(rank)
    w = torch.from_numpy(_built(rng, 260, 200, np.linspace(3.0, 1.0, rank)))
    top = _top(w, 100)  # inside the rank: the Gram route holds
    assert top.method == "gram-eigh-f64"
    _check_against_lapack(w, 100, top)
    top = _top(w, 200)  # beyond it: long-side vectors undefined, the residual check rejects
    assert lapack_calls == [1, 1]
    assert top.method == ("svd-f64" if rank < 200 else "gram-eigh-f64")
    _check_against_lapack(w, 200, top)


@pytest.mark.parametrize("k", [1, 200, 500])
def test_k_one_k_rank_and_k_beyond_rank(k, lapack_calls):
    rng = np.random.default_rng(11)
    w = torch.from_numpy(rng.standard_normal((200, 320)) * 0.02).float()
    top = _top(w, k)
    assert lapack_calls == [1] and top.method == "gram-eigh-f64"
    assert top.u.shape == (200, min(k, 200)) and top.v.shape == (320, min(k, 200))
    _check_against_lapack(w, k, top)


# ------------------------------------------------------------- the certificate


def _corrupt(monkeypatch, how):
    """Make the scipy route return vectors or values spoilt by `how`(lam, vecs)."""
    real = _linalg.top_eigh_lapack

    def spoilt(g, k):
        lam, vecs = real(g, k)
        return how(lam.clone(), vecs.clone())

    monkeypatch.setattr(_linalg, "top_eigh_lapack", spoilt)


def _rotated(lam, vecs):
    """The largest and the k-th eigenvectors rotated into each other by 1e-4 rad (still
    orthonormal; residual ≈ 1e-4·(σ1 − σ_k) = 1e-5·σ1)."""
    c, s = np.cos(1e-4), np.sin(1e-4)
    a, b = vecs[..., -1].clone(), vecs[..., 0].clone()
    vecs[..., -1], vecs[..., 0] = c * a + s * b, c * b - s * a
    return lam, vecs


def _skewed(lam, vecs):
    """The second vector tilted towards the first by 1e-5 (no longer orthogonal)."""
    vecs[..., -2] += 1e-5 * vecs[..., -1]
    return lam, vecs


def _shifted(lam, vecs):
    """The largest eigenvalue 1e-5 too large."""
    lam[..., -1] *= 1 + 1e-5
    return lam, vecs


@pytest.mark.parametrize("how", [_rotated, _skewed, _shifted])
def test_certificate_rejects_a_bad_result(monkeypatch, how):
    rng = np.random.default_rng(12)
    w = torch.from_numpy(_built(rng, 260, 200, np.linspace(2.0, 0.1, 200)))
    assert _top(w, 20).method == "gram-eigh-f64"
    _corrupt(monkeypatch, how)
    top = _top(w, 20)
    assert top.method == "svd-f64"
    _check_against_lapack(w, 20, top)


def test_orthonormality_measures_the_short_side():
    rng = np.random.default_rng(13)
    v = np.linalg.qr(rng.standard_normal((50, 6)))[0]
    v[:, 1] += 3e-6 * v[:, 0]
    expected = np.abs(v.T @ v - np.eye(6)).max()
    got = _linalg.orthonormality(torch.from_numpy(v)[None])
    assert got.shape == (1,) and got.item() == pytest.approx(expected, rel=1e-9)
    assert expected > 1e-6


# ------------------------------------------------- the cheaper certified fallback


def _uncertified_values() -> torch.Tensor:
    """150 values in [0.9, 1] over 50 at 1e-9, 2000 rows: ‖W‖_F² = 135·σ1², so the σ bound
    at the bottom (√η ≈ 1.2e-6·σ1) does not certify the Gram route's values."""
    sigma = np.r_[np.linspace(1.0, 0.9, 150), np.full(50, 1e-9)]
    return torch.from_numpy(_built(np.random.default_rng(15), 2000, 200, sigma))


def test_uncertified_values_with_certified_triplets_need_only_lapack_values(computed):
    w = _uncertified_values()
    assert SpectrumEngine("cpu").singular_values([w])[0].method == "svdvals-f64"
    computed.clear()
    top = _top(w, 20)
    assert top.method == "gram-eigh-svdvals-f64"
    assert computed == ["gram-eigh-f64", "svdvals-f64"]  # no SVD with vectors
    _check_against_lapack(w, 20, top)
    # the values are LAPACK's own, all of them
    np.testing.assert_array_equal(top.sigma, SpectrumEngine("cpu").singular_values([w])[0].sigma)
    # the wide orientation: the same, u and v swapped
    top_t = _top(w.T, 20)
    assert top_t.method == "gram-eigh-svdvals-f64"
    _check_against_lapack(w.T, 20, top_t)


def test_triplets_reaching_the_noise_still_take_the_full_svd(computed):
    w = _uncertified_values()
    top = _top(w, 160)  # 10 vectors of σ = 1e-9: their long side is noise
    assert top.method == "svd-f64"
    assert computed == ["gram-eigh-f64", "svd-f64"]
    _check_against_lapack(w, 160, top)


def test_recheck_against_lapack_values_rejects_a_mismatch(monkeypatch, computed):
    # LAPACK's values made 1e-5 too large: the Gram triplets no longer fit them, full SVD
    w = _uncertified_values()
    real = _linalg.svdvals
    monkeypatch.setattr(_linalg, "svdvals", lambda *a, **kw: real(*a, **kw) * (1 + 1e-5))
    top = _top(w, 20)
    assert top.method == "svd-f64"
    assert computed == ["gram-eigh-f64", "svdvals-f64", "svd-f64"]
    _check_against_lapack(w, 20, top)


def test_cheaper_fallback_of_a_scaled_matrix():
    # float64 entries near 2^590 are scaled by a power of two inside the engine: LAPACK's
    # values come back at the matrix's scale and are re-checked at the engine's
    w = _uncertified_values()
    big = _top(w * 2.0**600, 20)
    ref = _top(w, 20)
    assert big.method == ref.method == "gram-eigh-svdvals-f64"
    np.testing.assert_allclose(big.sigma / 2.0**600, ref.sigma, rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(big.u * ref.u, axis=0)), 1.0, atol=1e-10)


def test_cheaper_fallback_on_a_gpu_plan(monkeypatch):
    # the fake GPU (test_engine.FakeCuda) plans and batches as on a GPU, computes on the CPU
    fake = FakeCuda(monkeypatch)
    w = _uncertified_values()
    ws = [w, w * 3.0]
    tops = SpectrumEngine("cuda").top_vectors(ws, 20)
    assert [t.method for t in tops] == ["gram-eigh-svdvals-f64"] * 2
    # one batch of both, then their values together
    assert [c[:2] for c in fake.calls] == [("gram-eigh-f64", 2), ("svdvals-f64", 2)]
    for x, top in zip(ws, tops, strict=True):
        _check_against_lapack(x, 20, top)
