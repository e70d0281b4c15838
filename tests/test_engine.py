"""Tests of specdyn.engine: accuracy against float64 LAPACK, batching, memory bounds, fallbacks.

The CUDA path is exercised on the CPU by a fake device: torch.cuda is made to
report a GPU, and the engine's device compute function is wrapped so that it
can raise allocation failures on demand and otherwise computes on the CPU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from specdyn import _linalg
from specdyn import engine as engine_module
from specdyn.engine import Spectrum, SpectrumEngine, singular_values
from specdyn.errors import EngineError
from specdyn.types import Note

TOL = 1e-6


def lapack(w: torch.Tensor) -> np.ndarray:
    """Reference: numpy's float64 LAPACK on the same weights converted to float64."""
    return np.linalg.svd(w.double().numpy(), compute_uv=False)


def max_error(sigma: np.ndarray, w: torch.Tensor) -> float:
    """max_i |σ_i − σ_i(LAPACK)| / σ_1(LAPACK)."""
    ref = lapack(w)
    assert sigma.shape == ref.shape
    return float(np.max(np.abs(sigma - ref)) / ref[0])


def constructed(m: int, n: int, sigma, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """An m×n matrix U·diag(σ)·Vᵀ with random orthonormal U, V (then cast to dtype)."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    qa, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    qb, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    return ((qa * torch.as_tensor(sigma, dtype=torch.float64)) @ qb.T).to(dtype)


def randn(m: int, n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """A Gaussian m×n matrix in dtype."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g).to(dtype)


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6, 1e8])
@pytest.mark.parametrize("shape", [(160, 96), (96, 160), (128, 128)])
@pytest.mark.parametrize("profile", ["geometric", "half-flat"])
def test_conditioned_matrices_meet_tolerance(cond, shape, profile):
    m, n = shape
    r = min(shape)
    if profile == "geometric":
        sigma = np.logspace(0, -np.log10(cond), r)
    else:
        sigma = np.where(np.arange(r) < r // 2, 1.0, 1.0 / cond)
    w = constructed(m, n, sigma, seed=int(np.log10(cond)))
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.method in ("gram-eigvalsh-f64", "svdvals-f64")
    assert max_error(spec.sigma, w) <= TOL
    assert spec.sigma.dtype == np.float64
    assert np.all(np.diff(spec.sigma) <= 0) and np.all(spec.sigma >= 0)


def test_well_conditioned_matrix_uses_gram_route():
    w = randn(300, 120, seed=1)
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.method == "gram-eigvalsh-f64"
    assert max_error(spec.sigma, w) <= 1e-12


def flat_over_zeros(m: int = 800, n: int = 500, rank: int = 400, seed: int = 3) -> torch.Tensor:
    """Rank `rank` with equal values over exact zeros: ‖W‖_F² = rank·σ1², so the Gram
    bound √η ≈ √(k·u·rank)·σ1 exceeds 1e-6·σ1 at the zeros and cannot certify them."""
    return constructed(m, n, np.r_[np.ones(rank), np.zeros(min(m, n) - rank)], seed=seed)


@pytest.mark.parametrize("shape", [(200, 120), (120, 200)])
@pytest.mark.parametrize("rank", [1, 30, 100])
def test_exactly_rank_deficient(shape, rank):
    sigma = np.r_[np.linspace(2, 1, rank), np.zeros(min(shape) - rank)]
    w = constructed(*shape, sigma, seed=3)
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.method in ("gram-eigvalsh-f64", "svdvals-f64")
    assert max_error(spec.sigma, w) <= TOL
    assert np.all(spec.sigma[rank:] <= TOL * spec.sigma[0])


@pytest.mark.parametrize("shape", [(800, 500), (500, 800)])
def test_uncertifiable_gram_is_recomputed_with_lapack(shape):
    w = flat_over_zeros(*shape)
    chunk = engine_module._gram_chunk(max(shape), torch.device("cpu"))
    _, bound, lower = _linalg.gram_eigvalsh([_linalg.oriented(w)], torch.device("cpu"), chunk)
    assert bound.max().item() > TOL * lower.item()  # the case does what it says
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.method == "svdvals-f64"
    assert max_error(spec.sigma, w) <= 1e-13


def test_exact_low_rank_product_fp32():
    a, b = randn(150, 5, seed=4), randn(5, 90, seed=5)
    w = a @ b  # rank 5, float32
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert max_error(spec.sigma, w) <= TOL
    assert np.all(spec.sigma[5:] <= TOL * spec.sigma[0])


def test_repeated_singular_values():
    sigma = np.repeat([3.0, 1.0, 0.25, 1e-3], 25)
    w = constructed(140, 100, sigma, seed=6)
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert max_error(spec.sigma, w) <= TOL
    np.testing.assert_allclose(spec.sigma, sigma, rtol=0, atol=TOL * 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(90, 60), (60, 90), (70, 70)])
def test_source_dtypes(dtype, shape):
    w = (randn(*shape, seed=7) * 0.02).to(dtype)
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.sigma.shape == (min(shape),)
    # the reference is LAPACK on the same (rounded) weights, so the match is tight
    assert max_error(spec.sigma, w) <= TOL


def test_non_contiguous_inputs():
    base = randn(120, 90, seed=8)
    views = [
        base.T,  # transposed, wide
        base[::2, 1::3],  # strided both ways
        base.T[5:70, ::2],  # transposed and strided
        randn(1, 50, seed=9).expand(40, 50),  # zero stride: rank one
        base.half()[:, 10:60].T,
    ]
    spectra = SpectrumEngine("cpu").singular_values(views)
    for w, spec in zip(views, spectra, strict=True):
        assert not w.is_contiguous()
        assert max_error(spec.sigma, w) <= TOL


def test_float32_precision_meets_its_tolerance():
    w = constructed(120, 80, np.logspace(0, -6, 80), seed=10, dtype=torch.float32)
    spec = SpectrumEngine("cpu", precision="float32").singular_values([w])[0]
    assert max_error(spec.sigma, w) <= 1e-4


def test_exact_is_float64_lapack():
    ws = [randn(70, 40, seed=11), randn(40, 70, seed=12, dtype=torch.float16)]
    for w, spec in zip(ws, SpectrumEngine("cpu", exact=True).singular_values(ws), strict=True):
        assert spec.method == "svdvals-f64"
        assert max_error(spec.sigma, w) <= 1e-13


def test_extreme_float64_magnitudes_are_scaled_exactly():
    base = randn(50, 30, seed=13, dtype=torch.float64)
    for factor in (1e250, 1e-250, 1e-310):  # the last is subnormal
        w = base * factor
        spec = SpectrumEngine("cpu").singular_values([w])[0]
        assert spec.method == "gram-eigvalsh-f64"
        assert np.all(np.isfinite(spec.sigma))
        assert max_error(spec.sigma, w) <= 1e-12
    # the caller's tensor is not modified by the scaling
    w = base * 1e250
    before = w.clone()
    SpectrumEngine("cpu").singular_values([w])
    assert torch.equal(w, before)


def test_larger_pythia_like_matrix():
    w = (randn(768, 3072, seed=14) * 0.02).half()
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.method == "gram-eigvalsh-f64"
    assert max_error(spec.sigma, w) <= 1e-12


# ------------------------------------------------------ the Gram error bound


@pytest.mark.parametrize("case", range(6))
def test_gram_bound_covers_observed_error(case):
    shapes = [(200, 100), (100, 200), (150, 150)]
    m, n = shapes[case % 3]
    r = min(m, n)
    if case < 3:
        sigma = np.logspace(0, -8, r)
    else:
        sigma = np.r_[np.ones(r // 2), np.zeros(r - r // 2)]
    w = constructed(m, n, sigma, seed=case)
    got, bound, sigma1_lower = _linalg.gram_eigvalsh(
        [_linalg.oriented(w)], torch.device("cpu"), chunk=32
    )
    ref = lapack(w)
    err = np.abs(got[0].numpy() - ref)
    assert np.all(err <= bound[0].numpy())
    assert sigma1_lower.item() <= ref[0]


def test_gram_bound_formula():
    # λ = [0, 1e-10, 1]: trace 1, s = 3, L = 100 rows in chunks of 10 → k = 10 + 10
    lam = torch.tensor([[0.0, 1e-10, 1.0]], dtype=torch.float64)
    trace = lam.sum(-1)
    bound, lower = _linalg.gram_error_bound(lam, trace, length=100, chunk=10, s=3)
    u = 2.0**-53
    k = 20
    eta = k * u / (1 - k * u) * (1 + 2 * (k + 3) * u) + 3 * u
    assert bound[0, 0].item() == pytest.approx(np.sqrt(eta), rel=1e-12)
    assert bound[0, 1].item() == pytest.approx(eta / (1e-5 + np.sqrt(1e-10 - eta)), rel=1e-9)
    assert bound[0, 2].item() == pytest.approx(eta / (1 + np.sqrt(1 - eta)), rel=1e-12)
    assert lower.item() == pytest.approx(np.sqrt(1 - eta), rel=1e-15)
    assert _linalg.accumulation_length(100, 10) == 20
    assert _linalg.accumulation_length(100, 1000) == 101


def test_chunked_gram_equals_unchunked():
    w = randn(257, 40, seed=15, dtype=torch.float16)
    tall = [_linalg.oriented(w)]
    cpu = torch.device("cpu")
    whole = _linalg.gram_upper(tall, cpu, chunk=257)[0]
    for chunk in (1, 7, 64, 256):
        part = _linalg.gram_upper(tall, cpu, chunk=chunk)[0]
        assert torch.allclose(torch.triu(part), torch.triu(whole), rtol=1e-13, atol=1e-13)
    # and the upper triangle is the true Gram matrix
    w64 = w.double()
    assert torch.allclose(torch.triu(whole), torch.triu(w64.T @ w64), rtol=1e-13, atol=1e-13)


def spy_blocks(monkeypatch) -> list[tuple[int, int]]:
    """Record the row ranges (r0, r1) the kernels read, in order."""
    blocks: list[tuple[int, int]] = []
    real = _linalg.load_block

    def spy(mats, r0, r1, device, dtype):
        blocks.append((r0, r1))
        return real(mats, r0, r1, device, dtype)

    monkeypatch.setattr(_linalg, "load_block", spy)
    return blocks


def test_max_memory_reads_in_blocks_with_same_values(monkeypatch):
    w = randn(60, 2000, seed=16, dtype=torch.float16)  # wide: blocks are column slices
    blocks = spy_blocks(monkeypatch)
    free = SpectrumEngine("cpu").singular_values([w])[0]
    n_free = len(blocks)
    bound = _linalg.gram_bytes(1, 2000, 60, 8, 2)
    tight = SpectrumEngine("cpu", max_memory=bound).singular_values([w])[0]
    tight_blocks = blocks[n_free:]
    assert max(r1 - r0 for r0, r1 in tight_blocks) == 8 < max(r1 - r0 for r0, r1 in blocks[:n_free])
    assert tight.method == free.method == "gram-eigvalsh-f64"
    np.testing.assert_allclose(tight.sigma, free.sigma, rtol=0, atol=1e-12 * free.sigma[0])
    assert max_error(tight.sigma, w) <= 1e-12


def test_too_small_memory_bound_names_the_smallest_that_works():
    w = randn(300, 200, seed=17)
    with pytest.raises(EngineError) as info:
        SpectrumEngine("cpu", max_memory=1000).singular_values([w])
    message = str(info.value)
    # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
    assert "\n" not in message and "raise max_memory to" in message
    assert "raise --max-memory to" in info.value.render(cli=True)
    assert info.value.option == "max_memory"
    smallest = int(re.search(r"at least (\d+)\s*$", message).group(1))
    spec = SpectrumEngine("cpu", max_memory=smallest).singular_values([w])[0]
    assert max_error(spec.sigma, w) <= TOL
    with pytest.raises(EngineError):
        SpectrumEngine("cpu", max_memory=smallest - 1).singular_values([w])


def test_exact_under_tight_bound_uses_chunked_qr():
    w = randn(400, 50, seed=18, dtype=torch.bfloat16)
    full = _linalg.svdvals_bytes(1, 400, 50, 2, 8)
    engine = SpectrumEngine("cpu", exact=True, max_memory=full // 3)
    assert engine.choose_method((400, 50), torch.bfloat16) == "tsqr-svdvals-f64"
    spec = engine.singular_values([w])[0]
    assert spec.method == "tsqr-svdvals-f64"
    assert max_error(spec.sigma, w) <= 1e-12


def test_rank_deficient_fallback_under_tight_bound_uses_chunked_qr():
    w = flat_over_zeros(4000, 200, rank=150, seed=19)
    bound = _linalg.tsqr_bytes(1, 4000, 200, 256, 8, 8)
    assert bound < _linalg.svdvals_bytes(1, 4000, 200, 8, 8)
    spec = SpectrumEngine("cpu", max_memory=bound).singular_values([w])[0]
    assert spec.method == "tsqr-svdvals-f64"
    assert max_error(spec.sigma, w) <= TOL


# ------------------------------------------------- batches, order, degenerates


def test_mixed_batch_keeps_order():
    ws = [
        randn(30, 20, seed=20),
        randn(20, 30, seed=21, dtype=torch.float16),
        torch.zeros(8, 5),
        randn(30, 20, seed=22),
        torch.full((4, 6), float("nan")),
        randn(10, 10, seed=23, dtype=torch.float64),
        randn(30, 20, seed=24, dtype=torch.bfloat16),
        torch.empty(0, 7),
        randn(20, 30, seed=25).T,
    ]
    spectra = SpectrumEngine("cpu").singular_values(ws)
    assert len(spectra) == len(ws)
    for w, spec in zip(ws, spectra, strict=True):
        assert isinstance(spec, Spectrum)
        assert spec.sigma.shape == (min(w.shape),)
        if w.numel() == 0 or not torch.any(w != 0):
            assert spec.method == "zero"
            assert np.all(spec.sigma == 0)
        elif torch.isnan(w).any():
            assert spec.method == "nonfinite"
        else:
            assert spec.method == "gram-eigvalsh-f64"
            assert max_error(spec.sigma, w) <= 1e-12


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_nonfinite_is_nan_without_computing(monkeypatch, bad, dtype):
    calls = []
    monkeypatch.setattr(SpectrumEngine, "_compute", lambda *a: calls.append(a))
    w = randn(12, 9, seed=26).to(dtype)
    w[3, 4] = bad
    spec = SpectrumEngine("cpu").singular_values([w])[0]
    assert spec.method == "nonfinite"
    assert spec.sigma.shape == (9,) and np.isnan(spec.sigma).all()
    zero = SpectrumEngine("cpu").singular_values([torch.zeros(5, 7, dtype=dtype)])[0]
    assert zero.method == "zero" and zero.sigma.shape == (5,) and not zero.sigma.any()
    assert calls == []


def test_module_function_single_matrix():
    w = randn(25, 40, seed=27)
    spec = singular_values(w, device="cpu", exact=True)
    assert spec.method == "svdvals-f64"
    assert max_error(spec.sigma, w) <= 1e-13
    assert singular_values(w).method == "gram-eigvalsh-f64"


@pytest.mark.parametrize(
    "bad", [torch.arange(6.0), torch.ones(2, 3, 4), torch.ones(3, 3, dtype=torch.int64), "w"]
)
def test_invalid_inputs_raise_one_line(bad):
    with pytest.raises(EngineError) as info:
        SpectrumEngine("cpu").singular_values([randn(3, 3), bad])
    assert "matrix 2 of 2" in str(info.value) and "\n" not in str(info.value)


def test_complex_input_is_refused():
    with pytest.raises(EngineError):
        SpectrumEngine("cpu").singular_values([torch.ones(3, 3, dtype=torch.complex64)])


# ------------------------------------------------------------ device choice


def test_device_and_option_validation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert SpectrumEngine("auto").device_name == "cpu"
    assert SpectrumEngine(" CPU ").device.type == "cpu"
    for bad in ("cuda", "cuda:0", "tpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(EngineError) as info:
            SpectrumEngine(bad)
        assert "\n" not in str(info.value)
    for kwargs in (
        {"precision": "float16"},
        {"max_memory": 0},
        {"max_memory": -5},
        {"max_memory": "1GB"},
    ):
        with pytest.raises(EngineError):
            SpectrumEngine("cpu", **kwargs)


# ------------------------------------------- the CUDA path, on a fake device


class FakeCuda:
    """Makes torch report one GPU; the engine's compute runs on the CPU unless told to fail."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, int, int, str]] = []
        self.fail = lambda method, n_items, chunk, device: False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**34, 2**35))
        real = SpectrumEngine._compute
        fake = self

        def compute(engine, method, items, chunk, device):
            fake.calls.append((method, len(items), chunk, device.type))
            if fake.fail(method, len(items), chunk, device.type):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate (fake)")
            return real(engine, method, items, chunk, torch.device("cpu"))

        monkeypatch.setattr(SpectrumEngine, "_compute", compute)


@pytest.fixture
def fake_cuda(monkeypatch):
    return FakeCuda(monkeypatch)


def test_fake_cuda_device_resolution(fake_cuda):
    assert SpectrumEngine("auto").device == torch.device("cuda", 0)
    assert SpectrumEngine("cuda:0").device == torch.device("cuda", 0)
    assert SpectrumEngine("cuda").device_name.startswith("cuda:0")
    with pytest.raises(EngineError, match="cuda:1"):
        SpectrumEngine("cuda:1")


def test_choose_method_per_device_and_options(fake_cuda):
    shape = (3072, 768)
    assert SpectrumEngine("cpu").choose_method(shape) == "gram-eigvalsh-f64"
    assert SpectrumEngine("cpu", precision="float32").choose_method(shape) == "gram-eigvalsh-f64"
    assert SpectrumEngine("cuda").choose_method(shape) == "gram-eigvalsh-f64"
    assert SpectrumEngine("cuda", precision="float32").choose_method(shape) == "svdvals-f32"
    assert SpectrumEngine("cpu", exact=True).choose_method(shape) == "svdvals-f64"
    small = SpectrumEngine("cuda", precision="float32", max_memory=2**20)
    assert small.choose_method(shape) == "tsqr-svdvals-f32"


def test_gpu_batches_split_by_max_memory(fake_cuda):
    ws = [randn(64, 48, seed=30 + i) for i in range(5)] + [randn(48, 64, seed=40)]
    per = _linalg.gram_bytes(1, 64, 48, 1024, 4)
    engine = SpectrumEngine("cuda", max_memory=int(2.5 * per))
    spectra = engine.singular_values(ws)
    batches = [n for method, n, chunk, dev in fake_cuda.calls if dev == "cuda"]
    assert sorted(batches[:3]) == [1, 2, 2] and sum(batches) == 6
    for w, spec in zip(ws, spectra, strict=True):
        assert spec.method == "gram-eigvalsh-f64"
        assert max_error(spec.sigma, w) <= 1e-12
    assert engine.notes == []


def test_gpu_float32_uses_f32_solver(fake_cuda):
    ws = [randn(80, 50, seed=50 + i, dtype=torch.float16) for i in range(3)]
    spectra = SpectrumEngine("cuda", precision="float32").singular_values(ws)
    assert [c[:2] for c in fake_cuda.calls] == [("svdvals-f32", 3)]
    for w, spec in zip(ws, spectra, strict=True):
        assert spec.method == "svdvals-f32"
        assert max_error(spec.sigma, w) <= 1e-4


def test_gpu_oom_splits_batch_before_anything_else(fake_cuda):
    fake_cuda.fail = lambda method, n, chunk, dev: n > 1
    ws = [randn(40, 30, seed=60 + i) for i in range(4)]
    engine = SpectrumEngine("cuda")
    spectra = engine.singular_values(ws)
    sizes = [n for _, n, _, _ in fake_cuda.calls]
    assert sizes[0] == 4 and sizes.count(1) == 4
    assert all(dev == "cuda" for *_, dev in fake_cuda.calls)
    assert engine.notes == []
    for w, spec in zip(ws, spectra, strict=True):
        assert max_error(spec.sigma, w) <= 1e-12


def test_gpu_oom_shrinks_blocks_then_falls_back_to_cpu_with_note(fake_cuda):
    fake_cuda.fail = lambda method, n, chunk, dev: dev == "cuda"
    ws = [randn(300, 40, seed=70), randn(300, 40, seed=71)]
    engine = SpectrumEngine("cuda")
    spectra = engine.singular_values(ws)
    cuda_chunks = [chunk for _, n, chunk, dev in fake_cuda.calls if dev == "cuda" and n == 1]
    halving = [256, 128, 64, 32, 16, 8, 4, 2, 1]  # blocks halved down to one row
    assert cuda_chunks == halving * 2
    assert any(dev == "cpu" for *_, dev in fake_cuda.calls)
    assert len(engine.notes) == 2
    assert all(isinstance(n, Note) and n.kind == "fallback" for n in engine.notes)
    assert "CPU" in engine.notes[0].message and "\n" not in engine.notes[0].message
    for w, spec in zip(ws, spectra, strict=True):
        assert spec.method == "gram-eigvalsh-f64"
        assert max_error(spec.sigma, w) <= 1e-12


def test_gpu_oom_in_whole_matrix_solver_switches_to_chunked_qr(fake_cuda):
    fake_cuda.fail = lambda method, n, chunk, dev: method == "svdvals-f32"
    w = randn(200, 30, seed=80)
    engine = SpectrumEngine("cuda", precision="float32")
    spec = engine.singular_values([w])[0]
    assert spec.method == "tsqr-svdvals-f32"
    assert max_error(spec.sigma, w) <= 1e-4
    assert engine.notes == []


def test_gpu_uncertified_gram_recomputed_accurately(fake_cuda):
    w = flat_over_zeros(seed=81)
    spec = SpectrumEngine("cuda").singular_values([w])[0]
    methods = [c[0] for c in fake_cuda.calls]
    assert methods == ["gram-eigvalsh-f64", "svdvals-f64"]
    assert spec.method == "svdvals-f64"
    assert max_error(spec.sigma, w) <= TOL


def test_cpu_oom_at_one_row_raises_engine_error(monkeypatch):
    def oom(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(SpectrumEngine, "_compute", oom)
    with pytest.raises(EngineError) as info:
        SpectrumEngine("cpu").singular_values([randn(20, 10)])
    assert "out of memory" in str(info.value) and "\n" not in str(info.value)


def test_other_errors_propagate(monkeypatch):
    def broken(*args):
        raise ValueError("a bug, not an allocation failure")

    monkeypatch.setattr(SpectrumEngine, "_compute", broken)
    with pytest.raises(ValueError):
        SpectrumEngine("cpu").singular_values([randn(20, 10)])


def test_module_constants_are_consistent():
    assert set(engine_module.METHODS) >= {"gram-eigvalsh-f64", "svdvals-f64", "nonfinite", "zero"}


def test_small_cpu_problems_run_on_one_thread_and_restore_the_count():
    from specdyn._linalg import small_problem_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with small_problem_threads(96, torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with small_problem_threads(1024, torch.device("cpu")):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with small_problem_threads(8, torch.device("cpu")):
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ------------------------------------------- routes chosen from the GPU check (issue 20)


@pytest.mark.parametrize(
    ("capability", "method"),
    [((9, 0), "gram-eigvalsh-f64"), ((8, 0), "gram-eigvalsh-f64"), ((8, 6), "svdvals-f32"),
     ((8, 9), "svdvals-f32"), ((7, 5), "svdvals-f32")],
)  # fmt: skip
def test_float32_precision_keeps_the_float64_gram_on_full_rate_fp64_gpus(
    fake_cuda, monkeypatch, capability, method
):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    engine = SpectrumEngine("cuda", precision="float32")
    assert engine.choose_method((3072, 768)) == method
    w = torch.randn(300, 120, dtype=torch.float64)
    spec = engine.singular_values([w])[0]
    assert spec.method == method
    ref = np.linalg.svd(w.numpy(), compute_uv=False)
    assert np.abs(spec.sigma - ref).max() <= 1e-4 * ref[0]


def test_fast_float64_is_false_without_a_readable_gpu(monkeypatch):
    from specdyn.engine import fast_float64

    assert not fast_float64(torch.device("cpu"))

    def broken(device=None):
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(torch.cuda, "get_device_capability", broken)
    assert not fast_float64(torch.device("cuda", 0))


@pytest.mark.parametrize("scale", [1e250, 1e-250, 1e80, 1e-80])
def test_float32_solvers_scale_before_narrowing(scale):
    # a float64 matrix far outside float32's range became inf (σ NaN) on the GPU's float32
    # route: the engine's power-of-two scale must be applied before the cast
    w = torch.randn(90, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = w * scale
    engine = SpectrumEngine("cpu", precision="float32")
    item = engine._admit(0, 1, w, 0)
    assert item.scale != 1.0 and 0.5 <= float(w.abs().max()) * item.scale <= 1.0
    scales = torch.tensor([item.scale], dtype=torch.float64)
    ref = np.linalg.svd(w.numpy(), compute_uv=False)
    for sigma in (
        _linalg.svdvals([item.tall], torch.device("cpu"), torch.float32, scales),
        _linalg.tsqr_svdvals([item.tall], torch.device("cpu"), torch.float32, 32, scales),
    ):
        got = sigma[0].double().numpy() / item.scale
        assert np.isfinite(got).all()
        assert np.abs(got - ref).max() <= 1e-4 * ref[0]


def test_load_block_stacks_the_same_rows_whatever_the_path():
    g = torch.Generator().manual_seed(2)
    mats = [torch.randn(50, 20, generator=g).half() for _ in range(3)]
    wide = [torch.randn(20, 50, generator=g).half().mT for _ in range(3)]
    for group in (mats, wide):
        got = _linalg.load_block(group, 10, 30, torch.device("cpu"), torch.float64)
        want = torch.stack([m[10:30].double() for m in group])
        assert torch.equal(got, want)
