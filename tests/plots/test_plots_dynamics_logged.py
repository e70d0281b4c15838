"""`plot dynamics` keeps every logged point of its curves, those before the first
checkpoint included, and leaves system metrics out unless named (issue 24, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import specdyn
from specdyn.plots import plot_dynamics

CKPT_STEPS = (10, 20, 30)
LOGGED = np.arange(1, 31)  # a loss every step from step 1, before the first checkpoint


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn")
    run = root / "logged"
    run.mkdir()
    for step in CKPT_STEPS:
        g = torch.Generator().manual_seed(step)
        weights = {
            "fc1.weight": torch.randn(8, 5, generator=g),
            "fc2.weight": torch.randn(3, 8, generator=g),
        }
        torch.save({"model_state_dict": weights, "step": step}, run / f"step_{step}.pt")
    lines = ["step,loss,eval_runtime,eval_samples_per_second"]
    lines += [f"{s},{1.0 / s},{0.1 * s},{100 + s}" for s in LOGGED]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    home = root / "home"
    specdyn.analyze(run, home=home, vectors=None)
    return home


def _lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_xdata()) for line in ax.get_lines()}


def test_losses_before_the_first_checkpoint_are_drawn_and_the_axis_spans_them(home):
    fig = plot_dynamics("logged", home=home)
    loss_ax, rank_ax = fig.axes[0], [a for a in fig.axes if a.collections][0]
    curves = _lines(loss_ax)
    assert list(curves) == ["loss"]  # eval_runtime and samples/s: system metrics, not drawn
    assert curves["loss"].tolist() == LOGGED.tolist()
    assert loss_ax.get_xlim() == rank_ax.get_xlim() == (1.0, 30.0)


def test_steps_limit_the_curves_to_the_chosen_range(home):
    fig = plot_dynamics("logged", home=home, steps="20:30")
    curves = _lines(fig.axes[0])
    assert curves["loss"].tolist() == list(range(20, 31))
    assert fig.axes[0].get_xlim() == (20.0, 30.0)


def test_a_system_metric_is_drawn_when_named(home):
    fig = plot_dynamics("logged", home=home, training=["loss", "eval_runtime"])
    drawn = {label for ax in fig.axes for label in _lines(ax)}
    assert drawn == {"loss", "eval runtime"}
