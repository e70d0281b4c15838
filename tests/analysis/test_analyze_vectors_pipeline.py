"""`analyze` with singular vectors, end to end on checkpoints built with known answers:
a balanced pair, a trajectory whose top vectors stay fixed, sign flips; store evolution
(vectors added to a values-only store, a changed or moved reference); flat memory in
the number of steps; the CLI options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import specdyn
from specdyn import VectorOptions
from specdyn.cli import main
from specdyn.errors import StepSpecError
from specdyn.store import StoreWriter


def _orthonormal(rng: np.random.Generator, n: int, k: int | None = None) -> np.ndarray:
    """A Haar-random n×k matrix with orthonormal columns."""
    q, r = np.linalg.qr(rng.standard_normal((n, k or n)))
    return q * np.sign(np.diag(r))


def _save(folder: Path, step: int, state: dict[str, np.ndarray]) -> None:
    """One nested-dict checkpoint of float64 weights."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    torch.save({"state_dict": sd, "global_step": step}, folder / f"step_{step:04d}.pt")


def _balanced_run(folder: Path, steps=(0, 1, 2)) -> None:
    """A 12 → 10 → 8 MLP whose second layer's right vectors are the first's left ones."""
    rng = np.random.default_rng(0)
    for step in steps:
        u1 = _orthonormal(rng, 10)
        w1 = (u1 * np.linspace(5, 1, 10)) @ _orthonormal(rng, 12, 10).T
        w2 = (_orthonormal(rng, 8) * np.linspace(3, 0.5, 8)) @ u1[:, :8].T
        _save(folder, step, {"layers.0.weight": w1, "layers.1.weight": w2})


def test_a_balanced_pair_has_alignment_one(tmp_path):
    _balanced_run(tmp_path / "balanced")
    result = specdyn.analyze(tmp_path / "balanced", home=tmp_path / "ws")
    (run_result,) = result.runs
    assert run_result.pairs == 1 and run_result.pairs_preset == "sequential"
    with specdyn.open_run("balanced", home=tmp_path / "ws") as run:
        (pair,) = run.pairs
        assert pair["rule"] == "sequential" and pair["k"] == 8
        diag = run.alignment(pair["name"])
        assert diag.shape == (3, 8)
        assert np.abs(diag - 1).max() < 1e-6
        assert np.allclose(run.alignment_score(pair["name"]), 1, atol=1e-6)


def _fixed_top_run(folder: Path, n_top: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """W(t) = U·diag(σ)·[V_top, V_bottom·R_t]ᵀ: the top right vectors stay, the bottom
    ones rotate (R_3 = I: the last step is the reference). Step 4 is −W(3)."""
    rng = np.random.default_rng(1)
    m, n = 16, 12
    u = _orthonormal(rng, m, n)
    v = _orthonormal(rng, n)
    sigma = np.geomspace(10, 1, n)
    for step in range(4):
        rot = np.eye(n - n_top) if step == 3 else _orthonormal(rng, n - n_top)
        v_t = np.concatenate([v[:, :n_top], v[:, n_top:] @ rot], axis=1)
        _save(folder, step, {"fc.weight": (u * sigma) @ v_t.T})
    return u, sigma


def test_agreement_is_one_on_fixed_top_vectors_and_below_one_on_rotating_ones(tmp_path):
    _fixed_top_run(tmp_path / "fixed")
    specdyn.analyze(tmp_path / "fixed", home=tmp_path / "ws", steps="0:3")
    with specdyn.open_run("fixed", home=tmp_path / "ws") as run:
        assert run.reference == 3
        s = run.agreement("fc.weight")  # [4, 12]
        assert np.abs(s[:, :3] - 1).max() < 1e-6  # top vectors never move
        assert (s[:3, 3:] < 0.999).any(axis=1).all()  # every earlier step has moved bottoms
        assert np.abs(s[3] - 1).max() < 1e-9  # the reference step against itself
        assert run.agreement_score("fc.weight").shape == (4,)


def test_agreement_does_not_see_sign_flips(tmp_path):
    folder = tmp_path / "flip"
    rng = np.random.default_rng(2)
    w = rng.standard_normal((9, 7))
    # flipping the sign of the weights flips the sign of every u_i (or v_i): same S
    _save(folder, 0, {"fc.weight": -w})
    _save(folder, 1, {"fc.weight": w})
    specdyn.analyze(folder, home=tmp_path / "ws")
    with specdyn.open_run("flip", home=tmp_path / "ws") as run:
        assert np.abs(run.agreement("fc.weight") - 1).max() < 1e-6


class _Spy:
    """Records which sections every `StoreWriter.write_step` call writes."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[int, set[str]]] = []
        original = StoreWriter.write_step

        def write_step(writer, step, spectra=None, metrics=None, *args, vectors=None, **kw):
            sections = {"values"} if spectra is not None else set()
            if vectors is not None:
                sections |= {
                    s for s in ("alignment", "agreement", "vectors") if getattr(vectors, s)
                }
            self.calls.append((int(step), sections))
            return original(writer, step, spectra, metrics, *args, vectors=vectors, **kw)

        monkeypatch.setattr(StoreWriter, "write_step", write_step)

    def take(self) -> dict[int, set[str]]:
        out = dict(self.calls)
        self.calls.clear()
        return out


def test_store_evolution_computes_only_what_is_missing(tmp_path, monkeypatch):
    folder = tmp_path / "evo"
    _balanced_run(folder, steps=(0, 10, 20))
    home = tmp_path / "ws"
    spy = _Spy(monkeypatch)

    first = specdyn.analyze(folder, home=home, vectors=None).runs[0]
    assert first.k is None and first.steps_computed == [0, 10, 20]
    assert spy.take() == {0: {"values"}, 10: {"values"}, 20: {"values"}}
    with specdyn.open_run("evo", home=home) as run:
        sigma = run.sigma("layers.0.weight")
        assert run.vectors_config is None

    # a plain re-run keeps it values-only; a vector option adds vectors, values not recomputed
    assert specdyn.analyze(folder, home=home).runs[0].k is None
    assert spy.take() == {}
    added = specdyn.analyze(folder, home=home, vectors=VectorOptions(k=100)).runs[0]
    assert added.steps_computed == [] and added.steps_with_vectors == [0, 10, 20]
    assert spy.take() == {
        20: {"alignment", "agreement", "vectors"},  # the reference, first
        0: {"alignment", "agreement", "vectors"},
        10: {"alignment", "agreement"},
    }
    with specdyn.open_run("evo", home=home) as run:
        assert np.array_equal(run.sigma("layers.0.weight"), sigma)
        alignment = run.alignment(run.pairs[0]["name"])

    # nothing missing: nothing computed
    again = specdyn.analyze(folder, home=home).runs[0]
    assert again.steps_computed == [] and again.steps_with_vectors == [] and not spy.take()

    # another reference: the agreement only
    moved = specdyn.analyze(folder, home=home, vectors=VectorOptions(reference=10)).runs[0]
    assert spy.take() == {0: {"agreement"}, 10: {"agreement"}, 20: {"agreement"}}
    assert any("reference changed from step 20 to 10" in n.message for n in moved.notes)
    with specdyn.open_run("evo", home=home) as run:
        assert run.reference == 10
        assert np.array_equal(run.alignment(run.pairs[0]["name"]), alignment)
        assert np.abs(run.agreement("layers.1.weight")[1] - 1).max() < 1e-9

    # a plain re-run keeps the given reference; "last" goes back to the default, then a
    # new checkpoint moves the last step
    assert specdyn.analyze(folder, home=home).runs[0].reference == 10
    assert spy.take() == {}
    specdyn.analyze(folder, home=home, vectors=VectorOptions(reference="last"))
    spy.take()
    _balanced_run(tmp_path / "more", steps=(0, 10, 20, 30))
    (tmp_path / "more" / "step_0030.pt").rename(folder / "step_0030.pt")
    grown = specdyn.analyze(folder, home=home).runs[0]
    assert grown.steps_computed == [30] and grown.reference == 30
    assert any("moved the last step from 20 to 30" in n.message for n in grown.notes)
    calls = spy.take()
    assert calls[30] == {"values", "alignment", "agreement", "vectors"}
    assert calls[0] == {"agreement", "vectors"} or calls[0] == {"agreement"}
    assert calls[10] == {"agreement"} and calls[20] == {"agreement"}


def test_the_reference_is_decomposed_first(tmp_path):
    _balanced_run(tmp_path / "order", steps=(0, 10, 20))
    events: list[specdyn.Progress] = []
    specdyn.analyze(tmp_path / "order", home=tmp_path / "ws", on_progress=events.append)
    phases = [(e.phase, e.step) for e in events if e.phase != "hashing"]
    assert phases[0] == ("reference", 20)
    assert [s for p, s in phases if p == "analysing"] == [0, 10]
    last = [e for e in events if e.phase == "reference"][-1]
    assert last.matrices_done == last.n_matrices == 2


def test_the_reference_is_analysed_even_outside_steps(tmp_path):
    folder = tmp_path / "ref"
    _balanced_run(folder, steps=(0, 10, 20))
    result = specdyn.analyze(folder, home=tmp_path / "ws", steps="0,10").runs[0]
    assert result.steps_selected == [0, 10, 20] and result.reference == 20
    assert any(n.kind == "reference" and "step 20" in n.message for n in result.notes)
    with pytest.raises(
        StepSpecError,
        match=r"^vectors\.reference 15: .* no checkpoint at step 15 \(nearest: 10, 20\)",
    ) as err:
        specdyn.analyze(folder, home=tmp_path / "ws2", vectors=VectorOptions(reference=15))
    # a Python caller reads the field, the CLI the flag (errors.option_ref)
    assert err.value.render(cli=True).startswith("--reference 15: ")
    assert (err.value.option, err.value.step) == ("vectors.reference", 15)


def test_full_matrices_hold_the_diagonal(tmp_path):
    _balanced_run(tmp_path / "full")
    specdyn.analyze(
        tmp_path / "full", home=tmp_path / "ws", vectors=VectorOptions(k=5, full_matrices=True)
    )
    with specdyn.open_run("full", home=tmp_path / "ws") as run:
        name = run.pairs[0]["name"]
        full = run.alignment_matrix(name)
        assert full.shape == (3, 5, 5)
        assert np.allclose(np.diagonal(full, axis1=1, axis2=2), run.alignment(name))
        s_full = run.agreement_matrix("layers.0.weight")
        assert np.allclose(np.diagonal(s_full, axis1=1, axis2=2), run.agreement("layers.0.weight"))
        assert run.agreement("layers.0.weight").shape == (3, 5)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, specdyn
    specdyn.analyze(sys.argv[1], home=sys.argv[2], steps=sys.argv[3])
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) * 1024)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_is_flat_in_the_number_of_steps(tmp_path):
    # 12 steps × 4 matrices of 384×384: the top-100 vectors of one step are ~2.5 MB; held
    # for every step they would add ~30 MB by step 12
    folder = tmp_path / "mem"
    rng = np.random.default_rng(3)
    for step in range(12):
        _save(
            folder, step, {f"layers.{i}.weight": rng.standard_normal((384, 384)) for i in range(4)}
        )
    peaks = {}
    for spec in ("0:2", "0:11"):
        home = tmp_path / f"ws-{spec.replace(':', '-')}"
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(folder), str(home), spec],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        peaks[spec] = int(out.stdout.split()[-1])
    growth = peaks["0:11"] - peaks["0:2"]
    assert growth < 12 * 2**20, f"peak grew by {growth / 2**20:.1f} MiB from 3 to 12 steps"


def test_cli_vector_options(tmp_path, capsys):
    folder = tmp_path / "cli"
    _balanced_run(folder, steps=(0, 10))
    home = str(tmp_path / "ws")
    assert main(["analyze", str(folder), "--home", home, "--values-only", "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["k"] is None and run["pairs"] == 0
    assert main(["info", "cli", "--home", home, "--pairs"]) == 0
    assert "values only" in capsys.readouterr().err

    assert main(["analyze", str(folder), "--home", home, "--vectors", "4", "--reference", "0"]) == 0
    out = capsys.readouterr()
    assert "top 4; 1 pairs (sequential); agreement against step 0" in " ".join(out.out.split())
    assert main(["info", "cli", "--home", home, "--pairs", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vectors"]["k"] == 4 and info["vectors"]["reference"] == 0
    (pair,) = info["pairs_detail"]
    assert pair["rule"] == "sequential" and pair["last_score"] == pytest.approx(1, abs=1e-6)

    assert main(["analyze", str(folder), "--home", home, "--save-vectors", "some"]) == 2
    assert "--save-vectors" in capsys.readouterr().err
    assert main(["analyze", str(folder), "--home", home, "--reference", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint at step 5" in err[0]


def _preset_models():
    """Tiny random-initialised models built with the real code, one per preset."""
    import transformers
    from torch import nn

    torch.manual_seed(5)

    class Rnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 5, num_layers=3, bidirectional=True)

    vgg = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 4),
    )  # fmt: skip
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=40, n_positions=16)
    )
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            vocab_size=40,
            max_position_embeddings=16,
        )  # fmt: skip
    )
    neox = transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=40,
            max_position_embeddings=16,
        )  # fmt: skip
    )
    return {"vgg": vgg, "lstm": Rnn(), "gpt2": gpt2, "llama": llama, "neox": neox}


@pytest.mark.parametrize("kind", ["vgg", "lstm", "gpt2", "llama", "neox"])
def test_every_preset_model_is_analysed_with_its_pairs(tmp_path, kind):
    from specdyn.pairs import pairs_for

    model = _preset_models()[kind]
    folder = tmp_path / kind
    for step in (0, 1):
        if step:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder / f"checkpoint-{step}")
        else:
            folder.mkdir(exist_ok=True)
            torch.save(model.state_dict(), folder / f"step_{step}.pt")
    expected = pairs_for(folder)
    assert expected.pairs
    specdyn.analyze(folder, home=tmp_path / "ws", vectors=VectorOptions(k=8))
    with specdyn.open_run(kind, home=tmp_path / "ws") as run:
        assert [(p["name"], p["rule"]) for p in run.pairs] == [
            (p.name, p.rule) for p in expected.pairs
        ]
        scores = run.alignment_score()
        assert scores.shape == (2, len(expected.pairs))
        assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1 + 1e-9).all()
        assert np.abs(run.agreement_score()[-1] - 1).max() < 1e-9
        if kind == "llama":
            # grouped-query attention: query head h meets key head h // 2
            q = model.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()
            k = model.model.layers[0].self_attn.k_proj.weight.detach().double().numpy()
            pair = run.find_pair("layers.0.self_attn.q_proj.weight~")
            heads = run.alignment_heads(pair)[-1]  # last step: the model as it is now
            assert heads.shape == (4, 8)
            for h in range(4):
                uq = np.linalg.svd(q[8 * h : 8 * h + 8])[0]
                uk = np.linalg.svd(k[8 * (h // 2) : 8 * (h // 2) + 8])[0]
                want = np.abs(np.sum(uq * uk, axis=0))
                # compare entries whose vectors are well determined (gap ≥ 1e-3 both sides)
                ok = np.ones(8, dtype=bool)
                for block in (q[8 * h : 8 * h + 8], k[8 * (h // 2) : 8 * (h // 2) + 8]):
                    sig = np.linalg.svd(block, compute_uv=False)
                    gap = np.abs(sig[:, None] - sig[None, :]) + np.eye(8)
                    ok &= gap.min(axis=1) > 1e-3
                assert ok.sum() >= 6
                assert np.allclose(heads[h][ok], want[ok], atol=1e-5)


def test_nan_and_zero_matrices_give_nan_vectors_metrics_and_a_warning(tmp_path):
    folder = tmp_path / "bad"
    rng = np.random.default_rng(4)
    for step in range(3):
        a, b = rng.standard_normal((6, 4)), rng.standard_normal((3, 6))
        if step == 1:
            a[0, 0] = np.nan
        if step == 2:
            b[:] = 0.0  # all zeros at the reference step
        _save(folder, step, {"a.weight": a, "b.weight": b})
    result = specdyn.analyze(folder, home=tmp_path / "ws").runs[0]
    kinds = {n.kind for n in result.notes}
    assert {"nonfinite", "zero-matrix", "reference-undefined"} <= kinds
    (note,) = [n for n in result.notes if n.kind == "reference-undefined"]
    assert "b.weight" in note.message and "--reference" in note.message
    with specdyn.open_run("bad", home=tmp_path / "ws") as run:
        align = run.alignment_score()[:, 0]
        assert np.isfinite(align[0]) and np.isnan(align[1:]).all()
        assert np.isnan(run.agreement("b.weight")).all()
        agree_a = run.agreement_score("a.weight")
        assert np.isfinite(agree_a[[0, 2]]).all() and np.isnan(agree_a[1])


def test_runs_say_whether_a_store_has_its_vectors(tmp_path):
    folder = tmp_path / "state"
    _balanced_run(folder, steps=(0, 10))
    home = tmp_path / "ws"
    specdyn.analyze(folder, home=home, vectors=None)
    assert [r.vectors for r in specdyn.list_runs(home)] == ["values only"]
    specdyn.analyze(folder, home=home, vectors=VectorOptions(k=4))
    assert [r.vectors for r in specdyn.list_runs(home)] == ["top 4"]
    _balanced_run(tmp_path / "more", steps=(0, 10, 20))
    (tmp_path / "more" / "step_0020.pt").rename(folder / "step_0020.pt")
    result = specdyn.analyze(folder, home=home, vectors=None).runs[0]
    assert any(n.kind == "vectors-pending" for n in result.notes)
    assert [r.vectors for r in specdyn.list_runs(home)] == ["top 4, partial"]
