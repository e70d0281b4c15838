"""`specdyn plot prune`: the SVA of masked against unmasked weights, from prune.h5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specdyn.cli import main
from specdyn.plots import PlotError, plot_prune
from specdyn.prune import prune_magnitude, read_prune_results

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("tickets") / "out"
    prune_magnitude(FIXTURES / "mlp-wd", 0.05, control="random", out=out)
    return out


def test_lines_are_the_stored_agreement(results):
    res = read_prune_results(results)
    fig = plot_prune(results, matrix="layers.1")
    left, right = fig.axes[:2]
    j = res.matrices.index("layers.1.weight")
    for line in left.get_lines():
        mask = line.get_label().split()[0]
        d = res.diagonal[mask][j]
        assert np.array_equal(line.get_ydata(), d[~np.isnan(d)])
    scores = {line.get_label().split()[0]: line.get_ydata() for line in right.get_lines()}
    assert set(scores) == {"magnitude", "random"}
    for mask, drawn in scores.items():
        assert np.array_equal(drawn, res.score[mask])
    assert "layers.1" in left.get_title() and "kept" in left.get_title()


def test_cli_and_errors(results, tmp_path, capsys):
    assert main(["plot", "prune", str(results)]) == 0
    assert Path(capsys.readouterr().out.strip()) == results / "sva.png"
    assert main(["plot", "prune", str(results / "prune.h5"), "--out", str(tmp_path / "s.svg")]) == 0
    assert (tmp_path / "s.svg").is_file()
    capsys.readouterr()
    assert main(["plot", "prune", str(tmp_path / "nothing")]) == 1
    assert "no such prune results file" in capsys.readouterr().err
    with pytest.raises(PlotError, match="matches no masked matrix"):
        plot_prune(results, matrix="conv")
