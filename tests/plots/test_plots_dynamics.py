"""`specdyn plot dynamics`: training curves above the rank heatmap, from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import specdyn
from specdyn.cli import main
from specdyn.plots import PlotError, plot_dynamics

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    specdyn.analyze(FIXTURES / "mlp-wd", home=home)
    return home


def _curves(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


# the legend of each stored training metric of mlp-wd
LEGENDS = {
    "train_loss": "train loss",
    "train_acc": "train accuracy",
    "val_acc": "validation accuracy",
}


def test_curves_are_the_stored_training_metrics(home):
    fig = plot_dynamics("mlp-wd", home=home)
    loss_ax, acc_ax, rank_ax = fig.axes[:3]
    with specdyn.open_run("mlp-wd", home) as run:
        for ax, names in ((loss_ax, ["train_loss"]), (acc_ax, ["train_acc", "val_acc"])):
            curves = _curves(ax)
            assert sorted(curves) == sorted(LEGENDS[n] for n in names)
            for name in names:
                steps, values = run.training(name)
                assert np.array_equal(curves[LEGENDS[name]][0], steps)
                assert np.array_equal(curves[LEGENDS[name]][1], values)
        drawn = rank_ax.collections[0].get_array().reshape(len(run.matrices), -1)
        assert np.array_equal(drawn, run.metric("normalized_effective_rank").T)
    assert loss_ax.get_yscale() == "log" and acc_ax.get_ylim()[1] == pytest.approx(1.03)
    # one step axis: every panel spans the heatmap's range
    assert loss_ax.get_xlim() == rank_ax.get_xlim() == acc_ax.get_xlim()
    # aligned: the curve panels are exactly as wide as the heatmap
    assert loss_ax.get_position().x1 == pytest.approx(rank_ax.get_position().x1, abs=0.01)


def test_scores_and_chosen_metrics(home):
    fig = plot_dynamics("mlp-wd", home=home, training=["val_acc"], scores=True, log_x=True)
    curves_ax, rank_ax, align_ax, agree_ax = [a for a in fig.axes if a.get_visible()][:4]
    assert list(_curves(curves_ax)) == ["validation accuracy"]
    assert rank_ax.get_xscale() == "symlog" and curves_ax.get_xscale() == "symlog"
    with specdyn.open_run("mlp-wd", home) as run:
        drawn = align_ax.collections[0].get_array().reshape(len(run.pairs), -1)
        assert np.array_equal(drawn, run.alignment_score().T, equal_nan=True)
        drawn = agree_ax.collections[0].get_array().reshape(len(run.matrices), -1)
        assert np.array_equal(drawn, run.agreement_score().T, equal_nan=True)


def test_errors_name_what_to_do(home, tmp_path):
    with pytest.raises(PlotError, match="no training metric 'nope'; stored: train_loss"):
        plot_dynamics("mlp-wd", home=home, training=["nope"])
    folder = tmp_path / "bare"
    folder.mkdir()
    for step in (0, 1):
        torch.save({"w.weight": torch.randn(4, 3)}, folder / f"step_{step}.pt")
    specdyn.analyze(folder, home=tmp_path / "h", vectors=None)
    with pytest.raises(PlotError, match="metrics_file=LOG") as err:
        plot_dynamics("bare", home=tmp_path / "h")
    # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
    assert "re-run specdyn analyze with --metrics LOG" in err.value.render(cli=True)
    (folder / "log.csv").write_text("step,lr\n0,0.1\n1,0.05\n")
    specdyn.analyze(folder, home=tmp_path / "h", vectors=None)
    with pytest.raises(PlotError, match=r"no loss, error or accuracy .*\(lr\)"):
        plot_dynamics("bare", home=tmp_path / "h")
    assert plot_dynamics("bare", home=tmp_path / "h", training=["lr"]).axes
    with pytest.raises(PlotError, match="values only"):
        plot_dynamics("bare", home=tmp_path / "h", training=["lr"], scores=True)


def test_cli(home, tmp_path, capsys):
    out = tmp_path / "d.png"
    code = main(["plot", "dynamics", "mlp-wd", "--home", str(home), "--training",
                 "train_loss,val_acc", "--scores", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "all", "mlp-wd", "--home", str(home), "--out", str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / "dynamics.png").is_file()
    assert main(["plot", "dynamics", "mlp-wd", "--home", str(home), "--training", "x"]) == 1
    assert "no training metric 'x'" in capsys.readouterr().err


def test_error_draws_one_minus_accuracy(home):
    fig = plot_dynamics("mlp-wd", home=home, training=["val_acc", "train_loss"], error=True)
    curves = {}
    for ax in fig.axes[:2]:
        curves.update(_curves(ax))
    with specdyn.open_run("mlp-wd", home) as run:
        steps, acc = run.training("val_acc")
        x, y = curves["validation error"]
        assert np.array_equal(x, steps) and np.allclose(y, 1.0 - acc)
        assert np.array_equal(curves["train loss"][1], run.training("train_loss")[1])
