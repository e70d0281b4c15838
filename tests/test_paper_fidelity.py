"""Paper fidelity (issue 23): every statistic a store holds, recomputed from the raw
checkpoints with the paper's own definitions in float64 numpy, agrees with the store.

The reimplementation here shares no code with specdyn: checkpoints are read with
``torch.load``, each matrix is decomposed with ``np.linalg.svd`` in float64, and the
formulas are written out from the paper (docs/metrics.md and the paper's appendix D):

- a linear layer is its (out, in) weight; a convolution (c_out, c_in, *k) is its kernel
  flattened to (c_out, c_in·∏k) (appendix D.1); a ConvTranspose, stored (c_in, c_out, *k),
  is first transposed to (c_out, c_in, *k) (appendix D.2);
- σ: the singular values; with p = σ/Σσ, entropy H = −Σ p log p, effective rank exp(H),
  normalised effective rank exp(H)/R; spectral σ_1, Frobenius √Σσ², nuclear Σσ, stable
  rank Σσ²/σ_1²;
- alignment of a pair (W_i → W_{i+1}): A = |V'ᵀU| with U the left singular vectors of
  W_i and V' the right singular vectors of W_{i+1}; for a convolution W_{i+1} each right
  singular vector of the flattened kernel is reshaped to (c_in, *k) and cut to the centre
  tap [:, k//2, …] ("position (1,1)" of a 3×3 kernel), not renormalised;
- agreement with a reference step T: S = |U_tᵀU_T| ∘ |V_tᵀV_T| (Eq. 5), against the final
  checkpoint and against a chosen one;
- scores: the mean of the first 10 diagonal entries.

Tolerance: 1e-9 relative. σ and the metrics are compared entry by entry relative to
their own size (σ relative to σ_1, the scale the engine's accuracy is stated in);
alignment and agreement entries are |cosines| in [0, 1] and are compared to 1e-9 of
that unit scale. Singular vectors are defined only up to the spectral gap (and sign,
which every statistic removes with |·|): an entry built from vector i is compared only
when σ_i is at least `GAP`·σ_1 away from every other singular value (and from 0 in a
rectangular matrix); every skip is counted and most entries must be compared.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import specdyn
from specdyn import MatrixSelection, VectorOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]

RTOL = 1e-9  # the acceptance tolerance
GAP = 1e-4  # relative spectral gap below which singular vector i counts as ill-defined
COVERAGE = 0.9  # share of diagonal entries that must be well-defined and compared
K = 100  # vectors per matrix (VectorOptions default)
TOP = 10  # entries a score averages


# ------------------------------------------------------------------ the reimplementation


@dataclass(frozen=True)
class Layer:
    """One weight of a model as the paper reads it."""

    name: str
    kind: str  # "linear", "conv" (c_out, c_in, *k) or "convT" (c_in, c_out, *k)


def paper_matrix(w: np.ndarray, kind: str) -> np.ndarray:
    """The matrix whose SVD the paper takes (appendix D.1, D.2)."""
    if kind == "convT":
        w = np.swapaxes(w, 0, 1)
    return w.reshape(w.shape[0], -1)


@dataclass
class Decomposition:
    """float64 SVD of one matrix, with the vectors that are well defined."""

    sigma: np.ndarray  # [R]
    u: np.ndarray  # [m, R]
    v: np.ndarray  # [n, R]
    defined: np.ndarray  # bool [R]: σ_i separated from the rest by ≥ GAP·σ_1

    @classmethod
    def of(cls, m: np.ndarray) -> Decomposition:
        u, s, vt = np.linalg.svd(np.asarray(m, dtype=np.float64), full_matrices=False)
        others = np.abs(s[:, None] - s[None, :])
        np.fill_diagonal(others, np.inf)
        gap = others.min(axis=1)
        if m.shape[0] != m.shape[1]:
            gap = np.minimum(gap, s)  # the long side also holds σ = 0
        return cls(s, u, vt.T, gap >= GAP * s[0])


def paper_metrics(sigma: np.ndarray) -> dict[str, float]:
    """The spectral statistics of docs/metrics.md#spectral-metrics, from the singular values
    alone."""
    p = sigma / sigma.sum()
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum())
    return {
        "entropy": h,
        "effective_rank": float(np.exp(h)),
        "normalized_effective_rank": float(np.exp(h) / sigma.size),
        "spectral_norm": float(sigma[0]),
        "frobenius_norm": float(np.sqrt((sigma**2).sum())),
        "nuclear_norm": float(sigma.sum()),
        "stable_rank": float((sigma**2).sum() / sigma[0] ** 2),
    }


def centre_tap_v(d: Decomposition, w: np.ndarray, kind: str) -> np.ndarray:
    """The right singular vectors of the flattened kernel, each reshaped to (c_in, *k) and
    cut to the centre tap (k//2 in every spatial dim), not renormalised: [c_in, R]."""
    kernel = w.shape[2:]
    c_in = w.shape[1] if kind == "conv" else w.shape[0]
    centre = tuple(k // 2 for k in kernel)
    return d.v.reshape(c_in, *kernel, -1)[(slice(None), *centre)]


# ------------------------------------------------------------------ bookkeeping


@dataclass
class Tally:
    """What was compared, what was skipped as ill-defined, and the largest error seen."""

    checked: int = 0
    skipped: int = 0
    worst: dict[str, float] = field(default_factory=dict)

    def close(self, what: str, got, want, scale, use=None) -> None:
        """Assert |got − want| ≤ RTOL·scale where `use` (default: everywhere)."""
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        assert got.shape == want.shape, f"{what}: stored shape {got.shape}, expected {want.shape}"
        use = np.ones(got.shape, bool) if use is None else np.broadcast_to(use, got.shape)
        err = np.abs(got - want) / np.broadcast_to(scale, got.shape)
        bad = use & ~(err <= RTOL)  # NaN fails
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            raise AssertionError(
                f"{what} at {i}: store {got[i]!r}, paper float64 {want[i]!r} "
                f"(relative error {err[i]:.3g} > {RTOL}; {int(bad.sum())} entries off)"
            )
        kind = what.split(" ")[0]
        if use.any():
            self.worst[kind] = max(self.worst.get(kind, 0.0), float(err[use].max()))

    def count(self, use: np.ndarray) -> None:
        self.checked += int(np.count_nonzero(use))
        self.skipped += int(use.size - np.count_nonzero(use))

    def assert_coverage(self, what: str) -> None:
        total = self.checked + self.skipped
        assert total > 0 and self.checked >= COVERAGE * total, (
            f"{what}: only {self.checked} of {total} vector entries were well-defined "
            f"(gap ≥ {GAP}·σ_1) and compared; {self.skipped} skipped"
        )


# ------------------------------------------------------------------ one model, checked


@dataclass
class Model:
    """A trajectory: its checkpoint per step, its layers and the pairs the paper aligns."""

    folder: Path
    files: dict[int, Path]
    layers: list[Layer]
    pairs: list[tuple[str, str]]
    reference: int  # the chosen (non-final) reference step
    matrices: MatrixSelection = field(default_factory=MatrixSelection)

    def weights(self, step: int) -> dict[str, np.ndarray]:
        raw = _load(self.files[step])
        return {layer.name: raw[layer.name] for layer in self.layers}


def _load(path: Path) -> dict[str, np.ndarray]:
    """float64 numpy weights of a checkpoint, unwrapped from its training-loop dict."""
    allowed = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]
    with torch.serialization.safe_globals(allowed):
        raw = torch.load(path, map_location="cpu", weights_only=True)
    raw = raw.get("model_state_dict", raw.get("state_dict", raw))
    return {k.removeprefix("model."): v.double().numpy() for k, v in raw.items()}


def _check(model: Model, home: Path, reference: int | None) -> Tally:
    """Analyse `model` with specdyn, then recompute and compare every stored statistic."""
    options = VectorOptions(k=K, reference=reference, full_matrices=True, save_vectors="none")
    result = specdyn.analyze(
        model.folder, home=home, name="run", matrices=model.matrices, vectors=options
    )
    tally = Tally()
    kinds = {layer.name: layer.kind for layer in model.layers}
    with specdyn.open_run(result.runs[0].store_path) as run:
        steps = run.steps.tolist()
        assert steps == sorted(model.files)
        assert run.matrices == [layer.name for layer in model.layers]
        assert [(p["first"], p["second"]) for p in run.pairs] == model.pairs
        weights = {s: model.weights(s) for s in steps}
        svd = {
            (s, n): Decomposition.of(paper_matrix(w, kinds[n]))
            for s in steps
            for n, w in weights[s].items()
        }
        final = steps[-1] if reference is None else reference
        assert run.reference == final

        for name in run.matrices:
            sigma = run.sigma(name)
            for t, s in enumerate(steps):
                want = svd[s, name].sigma
                tally.close(f"sigma {name} step {s}", sigma[t], want, want[0])
                for metric, value in paper_metrics(want).items():
                    got = run.metric(metric, name)[t]
                    tally.close(f"{metric} {name} step {s}", got, value, abs(value))

            # agreement with the reference step (Eq. 5)
            ref = svd[final, name]
            k = min(K, ref.sigma.size)
            diag, full, score = (
                run.agreement(name),
                run.agreement_matrix(name),
                run.agreement_score(name),
            )
            for t, s in enumerate(steps):
                now = svd[s, name]
                uu = np.abs(now.u[:, :k].T @ ref.u[:, :k])
                vv = np.abs(now.v[:, :k].T @ ref.v[:, :k])
                ok = now.defined[:k, None] & ref.defined[None, :k]
                tally.close(f"agreement {name} step {s}", full[t], uu * vv, 1.0, ok)
                tally.close(
                    f"agreement {name} step {s}", diag[t], np.diag(uu * vv), 1.0, ok.diagonal()
                )
                tally.count(ok.diagonal())
                if ok.diagonal()[:TOP].all():
                    tally.close(
                        f"score {name} step {s}", score[t], np.diag(uu * vv)[:TOP].mean(), 1.0
                    )

        for p in run.pairs:
            first, second = p["first"], p["second"]
            diag = run.alignment(p["name"])
            full = run.alignment_matrix(p["name"])
            score = run.alignment_score(p["name"])
            for t, s in enumerate(steps):
                a, b = svd[s, first], svd[s, second]
                if kinds[second] == "linear":
                    v = b.v
                else:  # the paper's conv definition
                    v = centre_tap_v(b, weights[s][second], kinds[second])
                k = min(K, a.sigma.size, b.sigma.size)
                assert p["k"] == k and p["dim"] == a.u.shape[0] == v.shape[0], p
                want = np.abs(v[:, :k].T @ a.u[:, :k]).T  # A_jk = |⟨u_j, v'_k⟩|
                ok = a.defined[:k, None] & b.defined[None, :k]
                what = f"alignment {p['name']} step {s}"
                tally.close(what, full[t], want, 1.0, ok)
                tally.close(what, diag[t], np.diag(want), 1.0, ok.diagonal())
                tally.count(ok.diagonal())
                if ok.diagonal()[:TOP].all():
                    tally.close(
                        f"score {p['name']} step {s}", score[t], np.diag(want)[:TOP].mean(), 1.0
                    )
    return tally


# ------------------------------------------------------------------ the models


def _fixture(name: str) -> dict[int, Path]:
    spec = MANIFEST[name]
    dup = spec.get("duplicates") or {}
    folder = FIXTURES / spec["folder"]
    return {int(s): folder / f for f, s in spec["files"].items() if f not in dup}


def mlp_model() -> Model:
    layers = [Layer(f"layers.{i}.weight", "linear") for i in range(4)]
    pairs = [(f"layers.{i}.weight", f"layers.{i + 1}.weight") for i in range(3)]
    return Model(FIXTURES / "mlp-wd", _fixture("mlp-wd"), layers, pairs, reference=500)


def cnn_model() -> Model:
    layers = [Layer(f"conv{i}.weight", "conv") for i in (1, 2, 3)]
    layers += [Layer("fc1.weight", "linear"), Layer("fc2.weight", "linear")]
    # conv3 → fc1 flattens 3×3 positions (16 channels vs 144 inputs): no pair in the paper
    pairs = [("conv1.weight", "conv2.weight"), ("conv2.weight", "conv3.weight")]
    pairs.append(("fc1.weight", "fc2.weight"))
    return Model(FIXTURES / "cnn-lightning", _fixture("cnn-lightning"), layers, pairs, 80)


UNET_STEPS = (0, 5, 10, 20)


def unet_model(folder: Path) -> Model:
    """A tiny UNet-like encoder/decoder with a ConvTranspose (even 4×4 kernels, stride 2)
    and a pooled head, trained a few Adam steps on a denoising-style target; one
    ``torch.save(state_dict)`` per step in `UNET_STEPS`."""
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv_in=nn.Conv2d(1, 8, 3, padding=1),
            act1=nn.SiLU(),
            down=nn.Conv2d(8, 12, 4, stride=2, padding=1),
            act2=nn.SiLU(),
            up_conv=nn.ConvTranspose2d(12, 6, 4, stride=2, padding=1),
            act3=nn.SiLU(),
            conv_out=nn.Conv2d(6, 5, 3, padding=1),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(5, 3),
        )
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(32, 1, 8, 8)
    y = torch.randn(32, 3)
    files = {}
    folder.mkdir(parents=True, exist_ok=True)
    for step in range(max(UNET_STEPS) + 1):
        if step in UNET_STEPS:
            files[step] = folder / f"step_{step:03d}.pt"
            torch.save(net.state_dict(), files[step])
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
    layers = [
        Layer("conv_in.weight", "conv"),
        Layer("down.weight", "conv"),
        Layer("up_conv.weight", "convT"),
        Layer("conv_out.weight", "conv"),
        Layer("head.weight", "linear"),
    ]
    pairs = [(a.name, b.name) for a, b in zip(layers, layers[1:], strict=False)]
    return Model(folder, files, layers, pairs, reference=5)


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("reference", ["final", "chosen"])
def test_mlp_linear_to_linear(tmp_path, reference):
    model = mlp_model()
    tally = _check(model, tmp_path, None if reference == "final" else model.reference)
    tally.assert_coverage(f"mlp-wd, {reference} reference")


@pytest.mark.parametrize("reference", ["final", "chosen"])
def test_cnn_conv_to_conv_at_the_centre_tap_of_the_flattened_kernel(tmp_path, reference):
    model = cnn_model()
    tally = _check(model, tmp_path, None if reference == "final" else model.reference)
    tally.assert_coverage(f"cnn-lightning, {reference} reference")
    assert {"alignment", "agreement", "sigma", "entropy"} <= set(tally.worst)


@pytest.mark.parametrize("reference", ["final", "chosen"])
def test_unet_conv_transpose_even_kernels_and_conv_to_linear(tmp_path, reference):
    model = unet_model(tmp_path / "unet")
    tally = _check(model, tmp_path / "ws", None if reference == "final" else model.reference)
    tally.assert_coverage(f"unet, {reference} reference")


def test_unet_views_and_taps(tmp_path):
    """specdyn recognises the ConvTranspose by its name, transposes it, and cuts even
    4×4 kernels at index 2 (the upper of the two central taps)."""
    model = unet_model(tmp_path / "unet")
    specdyn.analyze(model.folder, home=tmp_path / "ws", name="run", steps="0")
    with specdyn.open_run("run", home=tmp_path / "ws") as run:
        assert run.matrix_info("up_conv.weight")["kind"] == "conv_transpose"
        assert run.matrix_info("up_conv.weight")["shape"] == [6, 12 * 16]
        taps = {p["second"]: p["definition"] for p in run.pairs}
    assert taps["down.weight"] == {"basis": "kernel", "tap": [2, 2], "normalize": False}
    assert taps["up_conv.weight"]["tap"] == [2, 2] and taps["head.weight"] is None


def test_an_unnamed_conv_transpose_needs_transposed(tmp_path):
    """Without a telling name a ConvTranspose weight cannot be told from a conv one by its
    shape: `MatrixSelection(transposed=…)` (``--transposed``) says which it is."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 4), nn.Conv2d(4, 2, 3))
    folder = tmp_path / "plain"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "step_0.pt")
    torch.save(net.state_dict(), folder / "step_1.pt")
    layers = [Layer("0.weight", "conv"), Layer("1.weight", "convT"), Layer("2.weight", "conv")]
    model = Model(
        folder,
        {0: folder / "step_0.pt", 1: folder / "step_1.pt"},
        layers,
        [("0.weight", "1.weight"), ("1.weight", "2.weight")],
        reference=0,
        matrices=MatrixSelection(transposed=r"^1\.weight$"),
    )
    _check(model, tmp_path / "ws", None).assert_coverage("unnamed ConvTranspose")
