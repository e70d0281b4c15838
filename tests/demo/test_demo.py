"""`specdyn demo grokking`: real (shortened) training, analysis and figure, checked from
the store: late generalisation and a rank collapse that weight decay drives."""

from __future__ import annotations

import json

import numpy as np
import pytest

import specdyn
from specdyn.cli import main
from specdyn.demo import grokking_demo


@pytest.fixture(scope="module")
def demos(quick_demos):
    return quick_demos


def _mean_rank(home, name):
    with specdyn.open_run(name, home) as run:
        rank = run.metric("normalized_effective_rank")
        return float(np.mean(rank[0])), float(np.mean(rank[-1]))


def test_validation_accuracy_rises_late(demos):
    home, result, _ = demos
    with specdyn.open_run(result.run_name, home) as run:
        steps, train = run.training("train_acc")
        _, val = run.training("val_acc")
    fit = steps[np.flatnonzero(train >= 0.99)[0]]
    # when the training pairs are fitted, the held-out pairs are far from solved ...
    assert val[steps == fit][0] < 0.7
    # ... and they are solved only much later (grokking), well after training accuracy is 1
    jump = steps[np.flatnonzero(val >= 0.9)[0]]
    assert jump >= 5 * fit
    assert (train[steps >= fit] >= 0.99).all()
    assert result.summary["val_jump_step"] == jump and result.summary["train_fit_step"] == fit


def test_rank_falls_with_weight_decay_and_less_without(demos):
    home, with_wd, without = demos
    first_wd, last_wd = _mean_rank(home, with_wd.run_name)
    first_no, last_no = _mean_rank(home, without.run_name)
    assert first_wd == pytest.approx(first_no)  # same seed: the same initial weights
    assert first_wd - last_wd > 0.3
    assert first_no - last_no < 0.5 * (first_wd - last_wd)
    assert without.summary["val_jump_step"] is None  # no grokking without weight decay


def test_figure_store_and_reuse(demos, capsys):
    home, result, _ = demos
    assert result.figure == home / "figures" / "grokking-quick" / "demo-dynamics.png"
    assert result.figure.read_bytes()[:4] == b"\x89PNG"
    with specdyn.open_run("grokking-quick", home) as run:
        assert set(run.training_names) >= {"train_loss", "val_loss", "train_acc", "val_acc"}
        assert run.vectors_config is not None and run.pairs
    # the same settings again: checkpoints reused, not retrained
    assert main(["demo", "grokking", "--quick", "--home", str(home), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["reused_checkpoints"] is True and payload["training_s"] is None
    assert payload["rank_last"] == result.summary["rank_last"]


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["demo", "grokking", "--modulus", "30", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--modulus 30: must be a prime" in err[0]


def test_out_folder_holds_checkpoints_and_figure(tmp_path):
    out = tmp_path / "mine"
    result = grokking_demo(
        home=tmp_path / "home", out=out, quick=True, overrides={"steps": 40, "checkpoints": 4}
    )
    assert result.figure == out / "grokking-quick-dynamics.png" and result.figure.is_file()
    assert sorted(p.name for p in (out / "grokking-quick").glob("step_*.pt")) == [
        f"step_{s:06d}.pt" for s in result.training.steps_saved
    ]
    assert (tmp_path / "home" / "grokking-quick.h5").is_file()  # the store stays in the workspace
