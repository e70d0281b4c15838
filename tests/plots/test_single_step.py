"""One checkpoint is one step, not a trajectory (issue 24, finding 7): the analysis says so
in an informational note, and every step axis draws the step as one column with one
labelled tick (the integer step), not a stretched axis from 159.6 to 160.4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh

import specdyn
from specdyn.cli._output import is_warning


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """(analysis result, home) of a run of one checkpoint at step 160."""
    root = tmp_path_factory.mktemp("single-step")
    folder = root / "one"
    folder.mkdir()
    rng = np.random.default_rng(0)
    weights = {
        "a.weight": torch.tensor(rng.standard_normal((12, 8)), dtype=torch.float32),
        "b.weight": torch.tensor(rng.standard_normal((6, 12)), dtype=torch.float32),
    }
    torch.save(weights, folder / "step_160.pt")
    result = specdyn.analyze(folder, home=root / "home", vectors=None)
    return result, root / "home"


def _step_axis_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    return [
        t.get_text()
        for v, t in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
        if lo <= v <= hi
    ]


def test_one_checkpoint_gets_a_single_step_note(single):
    result, _ = single
    (run,) = result.runs
    assert run.steps_selected == [160]
    notes = [n for n in run.notes if n.kind == "single-step"]
    assert len(notes) == 1
    assert notes[0].message.startswith("one checkpoint: a single step (step 160), no trajectory")
    assert not is_warning(notes[0])  # printed as a note, not counted as a warning


@pytest.mark.parametrize("log_x", [False, True])
def test_one_step_is_one_labelled_column(single, log_x):
    _, home = single
    for ax in (
        specdyn.plot_rank("one", home=home, log_x=log_x),
        specdyn.plot_metric("one", "stable_rank", home=home, log_x=log_x),
    ):
        assert _step_axis_labels(ax) == ["160"]
        assert list(ax.get_xticks()) == [160.0]
        (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
        cells = mesh.get_coordinates()[0, :, 0]
        assert len(cells) == 2 and cells[0] < 160 < cells[1]  # one column around the step
        assert ax.get_xlim() == pytest.approx((cells[0], cells[1]))


def test_one_step_singular_values_axis(single):
    _, home = single
    ax = specdyn.plot_sv("one", "a.weight", home=home)
    assert _step_axis_labels(ax) == ["160"]
