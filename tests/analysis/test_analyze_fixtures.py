"""`analyze` on the committed real training trajectories in fixtures/, and on
the same weights re-written in every supported format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _ckpt_factory import write_sharded
from safetensors.torch import save_file

import specdyn

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One workspace shared by the fixture analyses of this module."""
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def mlp_runs(home):
    """Both MLP fixture runs analysed."""
    return {
        name: specdyn.analyze(FIXTURES / name, home=home).runs[0] for name in ("mlp-wd", "mlp-nowd")
    }


def test_mlp_ranks_match_the_fixture_script(mlp_runs, home):
    for name in ("mlp-wd", "mlp-nowd"):
        expected = MANIFEST[name]
        with specdyn.open_run(name, home=home) as run:
            assert list(run.steps) == expected["steps"]
            for matrix, series in expected["normalised_effective_rank_by_step"].items():
                got = run.metric("normalized_effective_rank", matrix)
                assert np.allclose(got, series, rtol=1e-7, atol=1e-9), matrix


def test_weight_decay_lowers_final_hidden_rank(mlp_runs, home):
    with (
        specdyn.open_run("mlp-wd", home=home) as wd,
        specdyn.open_run("mlp-nowd", home=home) as nowd,
    ):
        for matrix in MANIFEST["mlp-wd"]["hidden_matrices"]:
            r_wd = wd.metric("normalized_effective_rank", matrix)
            r_nowd = nowd.metric("normalized_effective_rank", matrix)
            assert r_wd[0] == pytest.approx(r_nowd[0])  # same initialisation
            assert r_wd[-1] < r_nowd[-1] - 0.1
            assert r_wd[-1] < r_wd[0] - 0.3  # a real drop over training


def test_lightning_fixture_analyses_once_per_step(home):
    result = specdyn.analyze(FIXTURES / "cnn-lightning", home=home)
    (run,) = result.runs
    assert run.steps_computed == MANIFEST["cnn-lightning"]["steps"]
    assert any(n.kind == "duplicate" and "last.ckpt" in n.message for n in result.notes)
    with specdyn.open_run("cnn-lightning", home=home) as store:
        kinds = {store.matrix_info(m)["kind"] for m in store.matrices}
        assert "conv" in kinds and "linear" in kinds
        # Lightning's `model.` wrapper is stripped from every name
        assert not any(m.startswith("model.") for m in store.matrices)


def test_trainer_fixture_with_final_model_beside_checkpoints(home):
    result = specdyn.analyze(FIXTURES / "neox-trainer", home=home)
    (run,) = result.runs
    assert run.steps_computed == MANIFEST["neox-trainer"]["steps"]
    assert any(n.kind == "duplicate" for n in result.notes)
    cfg = json.loads((FIXTURES / "neox-trainer" / "config.json").read_text())
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    with specdyn.open_run("neox-trainer", home=home) as store:
        names = store.matrices
        qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
        assert [n for n in names if n.startswith(qkv)] == [
            qkv,
            qkv + "[q]",
            qkv + "[k]",
            qkv + "[v]",
        ]
        assert names[0] == "gpt_neox.embed_in.weight"
        assert names[-1] == "embed_out.weight"
        assert tuple(store.matrix_info(names[0])["shape"]) == (hidden, vocab)


def test_lstm_gates_are_split(home):
    (run,) = specdyn.analyze(FIXTURES / "lstm", home=home).runs
    assert run.steps_computed == MANIFEST["lstm"]["steps"]
    with specdyn.open_run("lstm", home=home) as store:
        gates = [m for m in store.matrices if "weight_ih_l0[" in m and "reverse" not in m]
        assert [g.rsplit("[", 1)[1] for g in gates] == ["i]", "f]", "g]", "o]"]


# -- every format gives the same singular values -------------------------------------------


def _final_mlp_state() -> dict[str, torch.Tensor]:
    """The final weights of the mlp-wd fixture (float32)."""
    last = max(MANIFEST["mlp-wd"]["files"], key=MANIFEST["mlp-wd"]["files"].get)
    ckpt = torch.load(FIXTURES / "mlp-wd" / last, weights_only=True)
    return {k: v.contiguous() for k, v in ckpt["model_state_dict"].items()}


def _write_formats(root: Path, sd: dict[str, torch.Tensor]) -> dict[str, Path]:
    """The same weights as: plain .pt, nested dicts, safetensors, sharded (both), HF folder."""
    out = {}

    d = root / "plain"
    d.mkdir(parents=True)
    torch.save(sd, d / "step_100.pt")
    out["plain"] = d

    for nest in ("model", "state_dict", "module"):
        d = root / f"nested-{nest}"
        d.mkdir()
        torch.save({nest: sd, "global_step": 100, "optimizer": {"lr": 0.1}}, d / "final.ckpt")
        out[f"nested-{nest}"] = d

    d = root / "safetensors"
    d.mkdir()
    save_file(sd, str(d / "step_100.safetensors"))
    out["safetensors"] = d

    for fmt in ("safetensors", "bin"):
        d = root / f"sharded-{fmt}" / "checkpoint-100"
        write_sharded(d, sd, fmt, n_shards=2)
        out[f"sharded-{fmt}"] = d.parent

    d = root / "hf-folder" / "step_100"
    d.mkdir(parents=True)
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "mlp-test"}))
    out["hf-folder"] = d.parent
    return out


def _sigmas(path: Path, home: Path, name: str) -> dict[str, np.ndarray]:
    """Singular values of the one step analysed under `path`."""
    (run,) = specdyn.analyze(path, home=home, name=name).runs
    assert len(run.steps_selected) == 1, name
    with specdyn.open_run(name, home=home) as store:
        return {m: store.sigma(m)[0] for m in store.matrices}


def test_every_format_gives_the_same_singular_values(tmp_path):
    sd = _final_mlp_state()
    formats = _write_formats(tmp_path / "formats", sd)
    home = tmp_path / "ws"
    reference = {
        k: np.linalg.svd(v.double().numpy(), compute_uv=False) for k, v in sd.items() if v.ndim == 2
    }
    for name, path in formats.items():
        got = _sigmas(path, home, name)
        assert set(got) == set(reference), name
        for matrix, ref in reference.items():
            assert np.max(np.abs(got[matrix] - ref)) <= 1e-6 * ref[0], (name, matrix)


def test_bf16_safetensors_match_the_rounded_weights(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in _final_mlp_state().items()}
    d = tmp_path / "bf16"
    d.mkdir()
    save_file(sd, str(d / "step_7.safetensors"))
    got = _sigmas(d, tmp_path / "ws", "bf16")
    with specdyn.open_run("bf16", home=tmp_path / "ws") as store:
        assert {store.matrix_info(m)["source_dtype"] for m in store.matrices} == {"bfloat16"}
    for matrix, w in sd.items():
        if w.ndim == 2:
            ref = np.linalg.svd(w.double().numpy(), compute_uv=False)
            assert np.max(np.abs(got[matrix] - ref)) <= 1e-6 * ref[0]


def test_copy_of_fixture_folder_is_another_run(tmp_path):
    """A workspace refuses to mix two source folders under one run name."""
    shutil.copytree(FIXTURES / "lstm", tmp_path / "lstm")
    home = tmp_path / "ws"
    specdyn.analyze(tmp_path / "lstm", home=home, steps="0")
    with pytest.raises(specdyn.SpecdynError):
        specdyn.analyze(FIXTURES / "lstm", home=home, steps="0")
