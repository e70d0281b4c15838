"""Singular-vector metrics written by `analyze` on the committed fixtures (Eq. 3–5;
docs/metrics.md#vector-metrics).

Every stored alignment diagonal and matrix, agreement diagonal and matrix, score and kept
vector is compared with an independent float64 `np.linalg.svd` of a matrix cut here from
the raw checkpoint tensors, following docs/views.md and docs/pairs.md with no help from
specdyn's slicing code: the pair list in the store only says which pair is meant (rule
and options such as `tap`, `half`, `heads`).

Singular vectors are only determined up to the spectral gap: the engine promises
triplet residuals ≤ 1e-6·σ1, so by Wedin's theorem vector i lies within an angle
sin θ_i ≤ 1e-6·σ1 / gap_i of numpy's (gap_i: distance from σ_i to the other singular
values, and to 0 when the matrix is rectangular). We allow twice that, compare only
entries whose bound is below `CHECKED`, and require that most of the leading entries
are compared, so that no test can pass by checking nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

import specdyn
from specdyn import VectorOptions

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]

# the engine's 1e-6·σ1 triplet residual (docs/methods.md#accuracy-contract), doubled for safety
RESIDUAL = 2e-6
CHECKED = 1e-3  # entries whose perturbation bound exceeds this are not compared
COVERAGE = 0.8  # share of the leading `TOP` diagonal entries that must be compared
TOP = 10  # the score's default number of diagonal entries
K = 100  # VectorOptions.k used for every analysis here

# Token embeddings (vocab, d): their view is the transpose (d, vocab), docs/views.md#view-kinds.
EMBEDDINGS = {"embed.weight", "gpt_neox.embed_in.weight"}
LSTM_GATES = "ifgo"  # PyTorch's stacking order of the LSTM gate blocks
QKV_PARTS = "qkv"  # GPT-NeoX: W.view(heads, 3, head_dim, H), index 0/1/2 = Q/K/V


# ---------------------------------------------------------------- raw weights


def _file_for(fixture: str, step: int) -> Path:
    """The first (non-duplicate) file or folder the manifest lists for a step."""
    spec = MANIFEST[fixture]
    duplicates = spec.get("duplicates") or {}
    for name, s in spec["files"].items():
        if s == step and name not in duplicates:
            return FIXTURES / spec["folder"] / name
    raise AssertionError(f"{fixture}: no file for step {step}")


def _raw_state(fixture: str, step: int) -> dict[str, np.ndarray]:
    """Every weight tensor of one checkpoint as float64 numpy, read without specdyn."""
    path = _file_for(fixture, step)
    if fixture == "neox-trainer":
        tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
        return {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    if fixture == "cnn-lightning":
        # the Lightning files carry numpy scalars among their hyper-parameters
        allowed = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]
        with torch.serialization.safe_globals(allowed):
            raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        raw = {k.removeprefix("model."): v for k, v in raw.items()}
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = raw.get("model_state_dict", raw)
    return {k: v.detach().to(torch.float64).numpy() for k, v in raw.items()}


def _heads(fixture: str) -> int | None:
    """Attention heads from the fixture's config.json (None without one)."""
    config = FIXTURES / MANIFEST[fixture]["folder"] / "config.json"
    if not config.exists():
        return None
    return int(json.loads(config.read_text())["num_attention_heads"])


def _view(state: dict[str, np.ndarray], name: str, heads: int | None) -> np.ndarray:
    """The (out, in) matrix a canonical matrix name stands for (docs/views.md)."""
    base, _, part = name.partition("[")
    part = part.rstrip("]")
    w = state[base]
    if part and base.endswith("query_key_value.weight"):
        hidden = w.shape[1]
        head_dim = w.shape[0] // (3 * heads)
        per_head = w.reshape(heads, 3, head_dim, hidden)[:, QKV_PARTS.index(part)]
        return per_head.reshape(heads * head_dim, hidden)
    if part:
        h = w.shape[0] // len(LSTM_GATES)
        g = LSTM_GATES.index(part)
        return w[g * h : (g + 1) * h]
    if base in EMBEDDINGS:
        return w.T
    if w.ndim > 2:
        return w.reshape(w.shape[0], -1)
    return w


# ---------------------------------------------------------------- reference SVD


@dataclass(frozen=True)
class Svd:
    """numpy float64 SVD of one matrix, with per-vector perturbation bounds."""

    u: np.ndarray  # [m, R]
    s: np.ndarray  # [R], descending
    v: np.ndarray  # [n, R]
    bound: np.ndarray  # [R], bound on sin θ_i between the engine's vector i and ours

    def side(self, which: str) -> np.ndarray:
        """The left (u) or right (v) singular vectors."""
        return self.u if which == "u" else self.v


def _svd(m: np.ndarray) -> Svd:
    """SVD in float64 with Wedin bounds min(1, RESIDUAL·σ1/gap_i)."""
    m = np.asarray(m, dtype=np.float64)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    gaps = np.abs(s[:, None] - s[None, :])
    np.fill_diagonal(gaps, np.inf)
    gap = gaps.min(axis=1)
    if m.shape[0] != m.shape[1]:
        gap = np.minimum(gap, s)  # the long side holds a null space (σ = 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(gap > 0, RESIDUAL * s[0] / gap, 1.0)
    return Svd(u=u, s=s, v=vt.T, bound=np.minimum(1.0, bound))


# ---------------------------------------------------------------- comparison


@dataclass
class Coverage:
    """How many of the leading diagonal entries were actually compared."""

    checked: int = 0
    total: int = 0

    def assert_enough(self, what: str) -> None:
        """Fail when too few leading entries were well enough determined to compare."""
        assert self.total > 0, f"{what}: nothing to compare"
        share = self.checked / self.total
        assert share >= COVERAGE, (
            f"{what}: only {self.checked}/{self.total} leading entries were determined to "
            f"{CHECKED} (need {COVERAGE:.0%}); the test would be close to vacuous"
        )


def _compare(got, want, bound, what: str, coverage: Coverage | None = None) -> None:
    """Assert |got − want| ≤ bound + 1e-9 wherever bound < CHECKED (same shapes)."""
    got, want, bound = np.asarray(got), np.asarray(want), np.asarray(bound)
    assert got.shape == want.shape, f"{what}: stored shape {got.shape}, expected {want.shape}"
    use = bound < CHECKED
    err = np.abs(got - want)
    bad = use & ~(err <= bound + 1e-9)  # NaN in got fails too
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"specdyn mismatch in {what} at index {idx}: stored {got[idx]!r}, numpy float64 "
            f"{want[idx]!r}, |diff| {err[idx]:.3g} > allowed {bound[idx]:.3g} "
            f"({int(bad.sum())} entries off)"
        )
    if coverage is not None:
        lead = use[..., :TOP]
        coverage.checked += int(lead.sum())
        coverage.total += int(lead.size)


# ---------------------------------------------------------------- pairs, by hand


def _operand_couples(pair: dict, state: dict, heads: int | None) -> list[tuple[Svd, Svd]]:
    """The (first, second) matrices a pair compares, one couple per head, decomposed."""
    rule, opts = pair["rule"], pair["options"]
    a = _view(state, pair["first"], heads)
    b = _view(state, pair["second"], heads)
    if rule == "conv-centre-tap":
        kernel = state[pair["second"]]  # raw (c_out, c_in, kh, kw)
        centre = [k // 2 for k in kernel.shape[2:]]
        assert opts["tap"] == centre, f"{pair['name']}: tap {opts['tap']} is not the centre"
        if opts["basis"] == "slice":
            b = kernel[(slice(None), slice(None), *centre)]
        else:  # the paper's: v of the flattened kernel, reshaped (c_in, kh, kw), cut to the tap
            assert opts == {"tap": centre, "basis": "kernel", "normalize": False}, opts
            whole = _svd(b)
            cut = whole.v.reshape(*kernel.shape[1:], -1)[(slice(None), *centre)]
            # a cut moves no more than the whole vector: the bounds carry over
            return [(_svd(a), replace(whole, v=cut))]
    if "half" in opts:
        # the direction of the first operand decides which half of layer l+1's input it feeds
        expected = "reverse" if "_reverse" in pair["first"] else "forward"
        assert opts["half"] == expected, f"{pair['name']}: half {opts['half']}"
        h = b.shape[1] // 2
        b = b[:, :h] if opts["half"] == "forward" else b[:, h:]
    if rule in ("q-k-per-head", "v-o-per-head"):
        n = opts["heads"]
        assert opts.get("kv_heads", n) == n == heads, f"{pair['name']}: {opts}"
        d = a.shape[0] // n
        if rule == "q-k-per-head":  # Q_h and K_h rows, both compared on u
            couples = [(a[i * d : (i + 1) * d], b[i * d : (i + 1) * d]) for i in range(n)]
        else:  # V_h rows (u) against the head's columns of attention.dense (v)
            couples = [(a[i * d : (i + 1) * d], b[:, i * d : (i + 1) * d]) for i in range(n)]
        return [(_svd(x), _svd(y)) for x, y in couples]
    return [(_svd(a), _svd(b))]


def _expected_alignment(pair: dict, couples: list[tuple[Svd, Svd]]):
    """Per head: diagonal [k], its bound, matrix [k, k] and its bound (Eq. 3)."""
    out = []
    k = pair["k"]
    for sa, sb in couples:
        x = sa.side(pair["first_side"])[:, :k]
        y = sb.side(pair["second_side"])[:, :k]
        ba, bb = sa.bound[:k], sb.bound[:k]
        full = np.abs(x.T @ y)
        out.append((np.diag(full).copy(), ba + bb, full, ba[:, None] + bb[None, :]))
    return out


# ---------------------------------------------------------------- analyses


@dataclass
class Case:
    """One fixture analysed with vectors, its open store and the raw weights."""

    fixture: str
    run: specdyn.Run
    heads: int | None
    states: dict[int, dict[str, np.ndarray]]
    svds: dict[tuple[int, str], Svd]

    def svd(self, step: int, matrix: str) -> Svd:
        """numpy SVD of a whole matrix view at a step (cached)."""
        key = (step, matrix)
        if key not in self.svds:
            self.svds[key] = _svd(_view(self.states[step], matrix, self.heads))
        return self.svds[key]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One workspace for every analysis of this module."""
    return tmp_path_factory.mktemp("vectors-ws")


def _case(home: Path, fixture: str, steps: str | None, reference: int | None = None):
    """Analyse `fixture` once with k = 100, full matrices and every step's vectors kept."""
    options = VectorOptions(k=K, full_matrices=True, save_vectors="all", reference=reference)
    result = specdyn.analyze(FIXTURES / fixture, home=home, steps=steps, vectors=options)
    (analysis,) = result.runs
    run = specdyn.open_run(analysis.name, home=home)
    states = {int(s): _raw_state(fixture, int(s)) for s in run.steps}
    return Case(fixture, run, _heads(fixture), states, {})


@pytest.fixture(scope="module")
def mlp(home):
    case = _case(home, "mlp-wd", None)
    yield case
    case.run.close()


@pytest.fixture(scope="module")
def cnn(home):
    # a reference in the middle of the run, given explicitly
    case = _case(home, "cnn-lightning", "0,80,640", reference=80)
    yield case
    case.run.close()


@pytest.fixture(scope="module")
def lstm(home):
    case = _case(home, "lstm", "0,50,500,2000")
    yield case
    case.run.close()


@pytest.fixture(scope="module")
def neox(home):
    case = _case(home, "neox-trainer", "0,20,200,1500")
    yield case
    case.run.close()


# ---------------------------------------------------------------- generic checks


def _check_pair(case: Case, pair: dict, coverage: Coverage) -> None:
    """Stored diagonal, per-head diagonals and whole matrix of one pair vs numpy."""
    run, name = case.run, pair["name"]
    diag, heads, full = run.alignment(name), run.alignment_heads(name), run.alignment_matrix(name)
    for t, step in enumerate(run.steps.tolist()):
        couples = _operand_couples(pair, case.states[step], case.heads)
        k = min([K] + [min(sa.s.size, sb.s.size) for sa, sb in couples])
        assert pair["k"] == k, f"{name}: diagonal length {pair['k']}, expected {k}"
        per_head = _expected_alignment(pair, couples)
        dim = couples[0][0].side(pair["first_side"]).shape[0]
        assert pair["dim"] == dim, f"{name}: vector length {pair['dim']}, expected {dim}"
        assert pair["blocks"] == len(per_head), f"{name}: {pair['blocks']} head couples"
        assert heads.shape[1] == len(per_head), f"{name}: alignment_heads {heads.shape}"
        for h, (d, bd, _, _) in enumerate(per_head):
            _compare(heads[t, h], d, bd, f"{name} head {h} step {step}")
        mean_diag = np.mean([p[0] for p in per_head], axis=0)
        mean_bound = np.mean([p[1] for p in per_head], axis=0)
        _compare(diag[t], mean_diag, mean_bound, f"{name} step {step}", coverage)
        mean_full = np.mean([p[2] for p in per_head], axis=0)
        mean_full_bound = np.mean([p[3] for p in per_head], axis=0)
        _compare(full[t], mean_full, mean_full_bound, f"{name} matrix step {step}")
        # the stored matrix's diagonal is the stored diagonal itself
        np.testing.assert_allclose(np.diag(full[t]), diag[t], rtol=0, atol=1e-12, err_msg=name)


def _check_agreement(case: Case, matrix: str, coverage: Coverage) -> None:
    """Stored agreement diagonal and matrix of one matrix vs numpy (Eq. 5)."""
    run = case.run
    ref = run.reference
    diag, full = run.agreement(matrix), run.agreement_matrix(matrix)
    sr = case.svd(ref, matrix)
    k = min(K, sr.s.size)
    assert diag.shape == (run.steps.size, k), f"{matrix}: agreement shape {diag.shape}"
    for t, step in enumerate(run.steps.tolist()):
        st = case.svd(step, matrix)
        fu = np.abs(st.u[:, :k].T @ sr.u[:, :k])
        fv = np.abs(st.v[:, :k].T @ sr.v[:, :k])
        # each factor moves by at most the sum of its two vectors' bounds, and a
        # product of two numbers in [0, 1] by at most the sum of its factors' moves
        bound = 2 * (st.bound[:k, None] + sr.bound[None, :k])
        _compare(
            diag[t], np.diag(fu * fv), np.diag(bound), f"agreement {matrix} step {step}", coverage
        )
        _compare(full[t], fu * fv, bound, f"agreement matrix {matrix} step {step}")
        np.testing.assert_allclose(np.diag(full[t]), diag[t], rtol=0, atol=1e-12, err_msg=matrix)
        if step == ref:
            defined = ~np.isnan(diag[t])
            assert defined.any(), f"{matrix}: reference row all NaN"
            np.testing.assert_allclose(diag[t][defined], 1.0, rtol=0, atol=1e-9, err_msg=matrix)


def _check_scores(run: specdyn.Run) -> None:
    """Scores are the mean of the first 10 (or `top`) stored diagonal entries."""
    pairs = [p["name"] for p in run.pairs]
    scores = run.alignment_score()
    assert scores.shape == (run.steps.size, len(pairs))
    for j, name in enumerate(pairs):
        d = run.alignment(name)
        np.testing.assert_allclose(scores[:, j], d[:, :TOP].mean(axis=1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(run.alignment_score(name), scores[:, j], rtol=0, atol=0)
        np.testing.assert_allclose(
            run.alignment_score(name, top=3), d[:, :3].mean(axis=1), rtol=0, atol=1e-12
        )
    scores = run.agreement_score()
    assert scores.shape == (run.steps.size, len(run.matrices))
    for j, matrix in enumerate(run.matrices):
        d = run.agreement(matrix)
        np.testing.assert_allclose(scores[:, j], d[:, :TOP].mean(axis=1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            run.agreement_score(matrix, top=3), d[:, :3].mean(axis=1), rtol=0, atol=1e-12
        )


def _check_vectors(case: Case, matrices: list[str], coverage: Coverage) -> None:
    """Kept float32 vectors equal numpy's up to one sign per triplet."""
    run = case.run
    np.testing.assert_array_equal(run.section_steps("vectors"), run.steps)
    for matrix in matrices:
        for step in run.steps.tolist():
            u, v = run.vectors(matrix, step)
            ref = case.svd(step, matrix)
            k = min(K, ref.s.size)
            assert u.dtype == np.float32 and v.dtype == np.float32
            assert u.shape == (ref.u.shape[0], k) and v.shape == (ref.v.shape[0], k)
            sign = np.sign(np.einsum("mk,mk->k", u.astype(np.float64), ref.u[:, :k]))
            sign[sign == 0] = 1.0
            # u_i and v_i flip together: the stored pair is a valid triplet
            err_u = np.abs(u * sign - ref.u[:, :k]).max(axis=0)
            err_v = np.abs(v * sign - ref.v[:, :k]).max(axis=0)
            allowed = 1e-5 + ref.bound[:k]
            what = f"max |kept − numpy| of the vectors of {matrix} step {step}"
            _compare(np.maximum(err_u, err_v), np.zeros(k), allowed, what, coverage)


# ---------------------------------------------------------------- tests


def test_values_only_store_has_no_vector_sections(home):
    specdyn.analyze(FIXTURES / "mlp-wd", home=home, name="plain", steps="0,4000", vectors=None)
    with specdyn.open_run("plain", home=home) as run:
        assert run.vectors_config is None and run.reference is None and run.pairs == []
        with pytest.raises(specdyn.SpecdynError, match="analysed with vectors=None") as err:
            run.agreement("layers.1.weight")
        # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
        assert "analysed with --values-only" in err.value.render(cli=True)


def test_mlp_every_sequential_pair(mlp):
    run = mlp.run
    names = run.matrices
    assert [(p["first"], p["second"]) for p in run.pairs] == list(
        zip(names[:-1], names[1:], strict=True)
    )
    assert {p["rule"] for p in run.pairs} == {"sequential"}
    assert list(run.steps) == MANIFEST["mlp-wd"]["steps"]
    coverage = Coverage()
    for pair in run.pairs:
        _check_pair(mlp, pair, coverage)
    coverage.assert_enough("mlp-wd alignment")


def test_mlp_agreement_of_every_matrix(mlp):
    run = mlp.run
    assert run.reference == run.steps[-1] == 4000
    coverage = Coverage()
    for matrix in run.matrices:
        _check_agreement(mlp, matrix, coverage)
    coverage.assert_enough("mlp-wd agreement")


def test_mlp_scores_and_kept_vectors(mlp):
    _check_scores(mlp.run)
    coverage = Coverage()
    _check_vectors(mlp, mlp.run.matrices, coverage)
    coverage.assert_enough("mlp-wd kept vectors")


def test_cnn_centre_tap_pairs_and_given_reference(cnn):
    run = cnn.run
    assert run.reference == 80 and run.vectors_config["reference_rule"] == "given"
    taps = [p for p in run.pairs if p["rule"] == "conv-centre-tap"]
    assert {(p["first"], p["second"]) for p in taps} == {
        ("conv1.weight", "conv2.weight"),
        ("conv2.weight", "conv3.weight"),
    }
    coverage = Coverage()
    for pair in run.pairs:
        _check_pair(cnn, pair, coverage)
    coverage.assert_enough("cnn alignment")
    coverage = Coverage()
    for matrix in run.matrices:
        _check_agreement(cnn, matrix, coverage)
    coverage.assert_enough("cnn agreement")
    _check_scores(run)
    coverage = Coverage()
    _check_vectors(cnn, ["conv2.weight", "fc1.weight"], coverage)
    coverage.assert_enough("cnn kept vectors")


def test_lstm_gate_block_pairs_across_bidirectional_halves(lstm):
    run = lstm.run
    rules = {p["rule"] for p in run.pairs}
    assert {"lstm-ih-to-hh", "lstm-depth", "lstm-hh-to-ih"} <= rules
    assert all(p["options"]["gate"] == "g" for p in run.pairs)
    halves = {p["options"].get("half") for p in run.pairs}
    assert {"forward", "reverse"} <= halves
    coverage = Coverage()
    for pair in run.pairs:
        _check_pair(lstm, pair, coverage)
    coverage.assert_enough("lstm alignment")


def test_lstm_agreement_scores_and_vectors(lstm):
    run = lstm.run
    coverage = Coverage()
    for matrix in run.matrices:
        _check_agreement(lstm, matrix, coverage)
    coverage.assert_enough("lstm agreement")
    _check_scores(run)
    coverage = Coverage()
    _check_vectors(lstm, ["embed.weight", "lstm.weight_ih_l1_reverse[g]"], coverage)
    coverage.assert_enough("lstm kept vectors")


def test_neox_per_head_pairs(neox):
    run = neox.run
    per_head = [p for p in run.pairs if p["rule"] in ("q-k-per-head", "v-o-per-head")]
    assert len(per_head) == 4  # q~k and v~o in each of the two blocks
    for pair in per_head:
        assert pair["blocks"] == neox.heads and pair["k"] == 8
        heads = run.alignment_heads(pair["name"])
        assert heads.shape == (run.steps.size, neox.heads, 8)
        # the stored diagonal is the head average of the stored per-head diagonals
        np.testing.assert_allclose(
            run.alignment(pair["name"]), heads.mean(axis=1), rtol=0, atol=1e-12
        )
    coverage = Coverage()
    for pair in per_head:
        _check_pair(neox, pair, coverage)
    coverage.assert_enough("neox per-head alignment")


def test_neox_embedding_and_block_pairs(neox):
    run = neox.run
    rules = {p["rule"]: p for p in run.pairs}
    assert "embed-to-qkv" in rules
    assert rules["embed-to-qkv"]["first"] == "gpt_neox.embed_in.weight"
    assert any(r.startswith("parallel-residual:") for r in rules)
    coverage = Coverage()
    for pair in run.pairs:
        if pair["rule"] not in ("q-k-per-head", "v-o-per-head"):
            _check_pair(neox, pair, coverage)
    coverage.assert_enough("neox block alignment")


def test_neox_agreement_scores_and_vectors(neox):
    run = neox.run
    coverage = Coverage()
    for matrix in run.matrices:
        _check_agreement(neox, matrix, coverage)
    coverage.assert_enough("neox agreement")
    _check_scores(run)
    coverage = Coverage()
    qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
    _check_vectors(neox, ["gpt_neox.embed_in.weight", qkv, qkv + "[v]"], coverage)
    coverage.assert_enough("neox kept vectors")
