"""A re-run never undoes what the user asked for (issue 14, item 1): vector options not
given are the store's, options given evolve the store as documented, and a note never
names an option that was not typed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import specdyn
from specdyn import VectorOptions
from specdyn.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _mlp_run(folder: Path, steps=(0, 10, 20)) -> Path:
    """Three steps of a 12 → 10 → 8 → 6 MLP (plain state dicts)."""
    folder.mkdir(parents=True)
    for step in steps:
        g = torch.Generator().manual_seed(step)
        sd = {
            "layers.0.weight": torch.randn(10, 12, generator=g),
            "layers.1.weight": torch.randn(8, 10, generator=g),
            "layers.2.weight": torch.randn(6, 8, generator=g),
        }
        torch.save({"state_dict": sd, "global_step": step}, folder / f"step_{step}.pt")
    return folder


def _config(home: Path, name: str) -> dict | None:
    with specdyn.open_run(name, home=home) as run:
        return run.vectors.config


# (first options, what the store must keep) for every vector option
CHOSEN = {
    "k": (VectorOptions(k=3), {"k": 3}),
    "reference": (VectorOptions(reference=10), {"reference": 10, "reference_rule": "given"}),
    "full_matrices": (VectorOptions(full_matrices=True), {"full_matrices": True}),
    "save_vectors": (VectorOptions(save_vectors="all"), {"save_vectors": "all"}),
    "score_top": (VectorOptions(score_top=2), {"score_top": 2}),
}


@pytest.mark.parametrize("option", sorted(CHOSEN))
def test_a_plain_rerun_keeps_each_vector_option(tmp_path, option):
    folder, home = _mlp_run(tmp_path / "run"), tmp_path / "ws"
    chosen, kept = CHOSEN[option]
    specdyn.analyze(folder, home=home, vectors=chosen)
    before = _config(home, "run")
    assert {key: before[key] for key in kept} == kept
    again = specdyn.analyze(folder, home=home).runs[0]  # a resume: no option given
    assert _config(home, "run") == before
    assert again.steps_computed == [] and again.steps_with_vectors == []
    assert not [n for n in again.notes if n.kind == "vectors"]


def test_a_given_option_evolves_the_store_and_says_so_without_flag_names(tmp_path):
    folder, home = _mlp_run(tmp_path / "run"), tmp_path / "ws"
    specdyn.analyze(folder, home=home, vectors=VectorOptions(k=3, reference=10))
    result = specdyn.analyze(folder, home=home, vectors=VectorOptions(k=4)).runs[0]
    config = _config(home, "run")
    assert config["k"] == 4 and config["reference"] == 10  # the reference was not given
    changes = [n.message for n in result.notes if n.kind == "vectors"]
    assert changes == ["top-k vectors changed from 3 to 4: alignment and agreement recomputed"]
    assert not any("--" in m for m in changes)


def test_reference_last_goes_back_to_the_last_checkpoint(tmp_path):
    folder, home = _mlp_run(tmp_path / "run"), tmp_path / "ws"
    specdyn.analyze(folder, home=home, vectors=VectorOptions(reference=10))
    specdyn.analyze(folder, home=home, vectors=VectorOptions(reference="last"))
    config = _config(home, "run")
    assert config["reference"] == 20 and config["reference_rule"] == "last"


def test_a_values_only_store_stays_so_until_a_vector_option_is_given(tmp_path):
    folder, home = _mlp_run(tmp_path / "run"), tmp_path / "ws"
    specdyn.analyze(folder, home=home, vectors=None)
    plain = specdyn.analyze(folder, home=home).runs[0]
    assert plain.k is None and _config(home, "run") is None
    grown = specdyn.analyze(folder, home=home, vectors=VectorOptions(k=5)).runs[0]
    assert grown.k == 5 and grown.steps_computed == [] and grown.steps_with_vectors == [0, 10, 20]


def test_a_new_store_takes_the_defaults_and_overwrite_starts_afresh(tmp_path):
    folder, home = _mlp_run(tmp_path / "run"), tmp_path / "ws"
    specdyn.analyze(folder, home=home)
    config = _config(home, "run")
    assert (config["k"], config["score_top"], config["save_vectors"]) == (100, 10, "ends")
    assert config["reference_rule"] == "last" and config["full_matrices"] is False
    specdyn.analyze(folder, home=home, vectors=VectorOptions(k=3))
    specdyn.analyze(folder, home=home, overwrite=True)
    assert _config(home, "run")["k"] == 100


def test_the_pairs_file_is_kept(tmp_path):
    folder, home = _mlp_run(tmp_path / "run"), tmp_path / "ws"
    pairs = tmp_path / "pairs.toml"
    pairs.write_text(
        'replace = true\n[[pair]]\nfirst = "layers.0.weight"\nsecond = "layers.1.weight"\n'
    )
    specdyn.analyze(folder, home=home, vectors=VectorOptions(pairs_file=str(pairs)))
    with specdyn.open_run("run", home=home) as run:
        before = [(p["first"], p["second"]) for p in run.alignment.pairs]
        assert run.vectors.config["pairs_file"] == str(pairs)
    assert before == [("layers.0.weight", "layers.1.weight")]  # the preset has two
    again = specdyn.analyze(folder, home=home).runs[0]
    assert again.steps_with_vectors == [] and not [n for n in again.notes if n.kind == "vectors"]
    with specdyn.open_run("run", home=home) as run:
        assert [(p["first"], p["second"]) for p in run.alignment.pairs] == before


def test_the_gate_is_kept(tmp_path):
    folder = tmp_path / "lstm"
    shutil.copytree(FIXTURES / "lstm", folder)
    home = tmp_path / "ws"
    specdyn.analyze(folder, home=home, steps="lin:2", vectors=VectorOptions(k=4, gate="i"))
    again = specdyn.analyze(folder, home=home, steps="lin:2").runs[0]
    assert again.steps_with_vectors == []
    with specdyn.open_run("lstm", home=home) as run:
        assert {p["options"]["gate"] for p in run.alignment.pairs} == {"i"}


def test_cli_rerun_keeps_options_and_help_says_so(tmp_path, capsys):
    folder, home = _mlp_run(tmp_path / "run"), str(tmp_path / "ws")
    args = ["analyze", str(folder), "--home", home, "-q"]
    assert main([*args, "--vectors", "3", "--reference", "10", "--full-matrices"]) == 0
    before = _config(Path(home), "run")
    assert main(args) == 0
    assert _config(Path(home), "run") == before
    err = capsys.readouterr().err
    assert "--vectors" not in err and "changed" not in err
    assert main([*args, "--no-full-matrices"]) == 0
    assert _config(Path(home), "run")["full_matrices"] is False
    assert main([*args, "--reference", "soon"]) == 2
    assert "give a training step or 'last'" in capsys.readouterr().err
