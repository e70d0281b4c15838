"""`specdyn prune`: exit codes, one-line errors, tables and --json."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from specdyn.cli import main
from specdyn.prune import read_prune_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ckpt_factory import sample_state_dict, write_torch  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MLP_FINAL = FIXTURES / "mlp-wd" / "step_004000.pt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_svd_json_and_file_output(tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(MLP_FINAL), "--svd", "top-half", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "top-half" and data["out"] == str(out)
    assert [(m["name"], m["kept"], m["rank"]) for m in data["matrices"]] == [
        ("layers.0.weight", 16, 32),
        ("layers.1.weight", 48, 96),
        ("layers.2.weight", 48, 96),
    ]
    assert data["checkpoints"][0]["step"] == 4000
    sd = torch.load(out, weights_only=True)["model_state_dict"]
    sigma = np.linalg.svd(sd["layers.1.weight"].double().numpy(), compute_uv=False)
    assert sigma[48] < 1e-5 * sigma[0]


def test_svd_table_and_default_output_in_home(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    home = tmp_path / "ws"
    code = main(
        [
            "prune",
            str(FIXTURES / "lstm"),
            "--svd",
            "rank:4",
            "--steps",
            "1500:",
            "--home",
            str(home),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "prune --svd rank:4: 2 checkpoint(s)" in out
    assert "lstm.weight_ih_l0[g]" in out and "4 of 16" in out
    assert "head.weight (final layer)" in out
    folder = home / "pruned" / "lstm-rank-4"
    assert sorted(p.name for p in folder.iterdir()) == ["iter_01500.pth", "iter_02000.pth"]


def test_magnitude_json_table_and_results_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "m"
    args = ["prune", str(FIXTURES / "mlp-wd"), "--magnitude", "0.05", "--control", "random"]
    assert main([*args, "--out", str(out), "--vectors", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["step"] == 4000 and data["fraction"] == 0.05 and data["k"] == 20
    assert data["kept"] == round(0.05 * data["total"])
    scores = {m["name"]: m["scores"] for m in data["matrices"]}
    assert scores["layers.2.weight"]["magnitude"] > scores["layers.2.weight"]["random"]
    assert len(data["diagonals"]["magnitude"]) == 3 and len(data["diagonals"]["magnitude"][0]) == 20
    assert data["diagonals"]["magnitude"][0][19] is not None  # R = 32 ≥ 20: no padding
    res = read_prune_results(out / "prune.h5")
    assert res.attrs["k"] == 20 and res.diagonal["random"].shape == (3, 20)
    assert sorted(p.name for p in out.iterdir()) == [
        "masked-magnitude",
        "masked-random",
        "masks-magnitude.safetensors",
        "masks-random.safetensors",
        "prune.h5",
    ]
    # the table, at an earlier step
    assert main([*args, "--step", "2000", "--out", str(tmp_path / "t"), "--vectors", "5"]) == 0
    text = capsys.readouterr().out
    assert "prune --magnitude 0.05 at step 2000" in text
    assert "SVA magnitude" in text and "SVA random" in text and "layers.1.weight" in text
    assert math.isclose(read_prune_results(tmp_path / "t").attrs["step"], 2000)


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "exactly one of --svd or --magnitude"),
        (["--svd", "top-half", "--magnitude", "0.1"], "exactly one of --svd or --magnitude"),
        (["--svd", "top-half", "--control", "random"], "only with --magnitude"),
        (["--magnitude", "0.1", "--control", "bogus"], "the only control is 'random'"),
        (["--svd", "top-half", "--step", "10"], "only with --magnitude"),
        (["--magnitude", "0.1", "--steps", "10"], "only with --svd"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, args, words):
    src = write_torch(tmp_path / "s.pt", sample_state_dict())
    assert main(["prune", str(src), *args]) == 2
    assert words in capsys.readouterr().err


def test_errors_are_one_line_exit_1(tmp_path, capsys):
    src = write_torch(tmp_path / "in" / "s.pt", sample_state_dict())
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"\x80\x02 definitely not a checkpoint")
    cases = [
        (["prune", str(tmp_path / "missing"), "--svd", "top-half"], "does not exist"),
        (["prune", str(corrupt), "--svd", "top-half", "--out", str(tmp_path / "o.pt")], "bad.pt"),
        (
            ["prune", str(src), "--svd", "middle"],
            "--svd: use top-half, bottom-half, rank:K or energy:F",
        ),
        (["prune", str(src), "--magnitude", "1.5"], "between 0 and 1"),
        (["prune", str(src), "--svd", "top-half", "--out", str(src)], "is the input itself"),
        (
            ["prune", str(src), "--svd", "top-half", "--keep", "("],
            "--keep: invalid regular expression",
        ),
    ]
    for argv, words in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("specdyn: error:") and words in err, (argv, err)
        assert len(err.splitlines()) == 1
    out = tmp_path / "o2.pt"
    assert main(["prune", str(src), "--svd", "top-half", "--out", str(out), "--quiet"]) == 0
    assert main(["prune", str(src), "--svd", "top-half", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prune", str(src), "--svd", "bottom-half", "--out", str(out), "--overwrite"]) == 0


def test_nonfinite_warning_in_the_json(tmp_path, capsys):
    sd = sample_state_dict()
    sd["fc1.weight"][1, 2] = float("inf")
    src = write_torch(tmp_path / "s.pt", sd)
    argv = ["prune", str(src), "--svd", "top-half", "--out", str(tmp_path / "o.pt"), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --json: one document, its warnings inside
    data = json.loads(captured.out)
    assert any("fc1.weight holds NaN/Inf; left unpruned" in n["message"] for n in data["notes"])
    assert "fc1.weight" not in [m["name"] for m in data["matrices"]]
