"""`specdyn pairs` on the fixtures and on a pairs file."""

from __future__ import annotations

import json

from torch import nn

from specdyn.cli import main


def test_pairs_json_on_neox_fixture(capsys):
    assert main(["pairs", "fixtures/neox-trainer", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["preset"] == "gpt-neox"
    rules = [p["rule"] for p in data["pairs"]]
    assert rules.count("parallel-residual:o-to-next-qkv") == 1  # 2 blocks: one block-to-block
    qk = next(p for p in data["pairs"] if p["rule"] == "q-k-per-head")
    assert qk["first"]["ops"] == [["row_blocks", 4]] and qk["first"]["side"] == "u"
    assert qk["options"] == {"heads": 4, "kv_heads": 4}


def test_pairs_table_lists_skipped_and_rules(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: no cell folds
    assert main(["pairs", "fixtures/cnn-lightning"]) == 0
    out = capsys.readouterr().out
    assert "preset: sequential" in out and "conv-centre-tap" in out
    assert "skipped pairs" in out and "flatten" in out
    assert "tap=[1, 1]" in out


def test_pairs_gate_and_pairs_file(tmp_path, capsys):
    assert main(["pairs", "fixtures/lstm", "--gate", "i", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {p["options"]["gate"] for p in data["pairs"]} == {"i"}
    f = tmp_path / "p.toml"
    f.write_text('replace = true\n[[pair]]\nfirst = "embed.weight"\nsecond = "lstm.weight_ih_l0"\n')
    assert main(["pairs", "fixtures/lstm", "--pairs", str(f), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in data["pairs"]] == ["embed.weight~lstm.weight_ih_l0[g]"]
    assert data["preset"] == "lstm+file"


def test_pairs_errors_are_one_line(tmp_path, capsys):
    torch_dir = tmp_path / "run"
    torch_dir.mkdir()
    import torch

    torch.save(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).state_dict(), torch_dir / "s.pt")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[pair]]\nfirst = "0.weight"\nsecond = "3.weight"\n')
    assert main(["pairs", str(torch_dir), "--pairs", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("specdyn: error:") and "unknown matrix '3.weight'" in err
    assert len(err.splitlines()) == 1
    assert main(["pairs", str(torch_dir), "--gate", "x"]) == 2
    assert main(["pairs", str(torch_dir), "--pairs", str(tmp_path / "missing.toml")]) == 2
