"""`specdyn compare` and the comparison figures of `specdyn plot`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specdyn.cli import main
from specdyn.comparison import open_comparison

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _run(folder: Path, seed: int, steps=(0, 5)) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = {"a.weight": rng.standard_normal((24, 16)), "b.weight": rng.standard_normal((8, 24))}
    for i, step in enumerate(steps):
        sd = {k: torch.tensor(v * (1 + 0.1 * i), dtype=torch.float32) for k, v in base.items()}
        torch.save(sd, folder / f"step_{step}.pt")
    return folder


@pytest.fixture()
def home(tmp_path):
    return tmp_path / "home"


def test_two_runs_table_and_json(tmp_path, home, capsys):
    a, b = _run(tmp_path / "a", 0), _run(tmp_path / "b", 1)
    assert main(["compare", str(a), str(b), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "A = a (step 5), B = b (step 5)" in out and "comparison store:" in out
    assert main(["compare", "a", "b", "--home", str(home), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["mode"] == "runs"
    assert [r["label"] for r in payload["runs"]] == ["a", "b"]
    assert payload["pairs"][0]["steps_a"] == [0, 5]
    assert len(payload["final"]["normalized_effective_rank"]) == 2
    assert Path(payload["comparison"]).is_file()


def test_usage_errors_exit_2(tmp_path, home, capsys):
    a = _run(tmp_path / "a", 0)
    assert main(["compare", "--home", str(home)]) == 2
    # one folder may hold several runs: one that holds a single run is too few (exit 1)
    assert main(["compare", str(a), "--home", str(home)]) == 1
    assert "at least two runs" in capsys.readouterr().err
    assert main(["compare", "x", "y", "--barrier", "--home", str(home)]) == 2
    assert "--eval" in capsys.readouterr().err
    assert main(["compare", "x", "y", "--eval", "m:f", "--home", str(home)]) == 2
    assert main(["compare", "x", "y", "--by", "nope", "--home", str(home)]) == 2
    assert main(["compare", "x", "y", "--split", "x=1", "--home", str(home)]) == 2


def test_errors_exit_1_with_one_line(tmp_path, home, capsys):
    a, b = _run(tmp_path / "a", 0), _run(tmp_path / "b", 1)
    code = main(["compare", str(a), str(b), "--barrier", "--eval", "no_such_module_x:f",
                 "--home", str(home)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "importing no_such_module_x failed" in err[0]
    code = main(["compare", "nope", str(b), "--home", str(home)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no run named 'nope'" in err[0]


def test_barrier_with_an_evaluator_file(tmp_path, home, capsys):
    a, b = _run(tmp_path / "a", 0), _run(tmp_path / "b", 1)
    evaluator = tmp_path / "my_eval.py"
    evaluator.write_text(
        "def loss(state):\n    return -sum(float((t.double() ** 2).sum()) for t in state.values())\n"
    )
    code = main(["compare", str(a), str(b), "--barrier", "--eval", f"{evaluator}:loss",
                 "--barrier-points", "5", "--home", str(home), "--json"])  # fmt: skip
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    bar = payload["barriers"][0]
    assert bar["alpha"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bar["barrier"] > 0


def test_split_mode_and_its_figures(tmp_path, home, capsys):
    folders = [
        _run(tmp_path / "trunk" / f"branch-split{s}-order{o}", 10 * s + o, steps=(s, 50))
        for s in (5, 20)
        for o in (1, 2)
    ]
    code = main(["compare", *map(str, folders), "--by", "split", "--home", str(home),
                 "--name", "lmc"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "vs split step" in out
    for kind in ("split", "branch-agreement", "side-by-side"):
        assert main(["plot", kind, "lmc", "--home", str(home)]) == 0
        written = Path(capsys.readouterr().out.strip())
        assert written.is_file() and written.stat().st_size > 1000
        assert written.parent == home / "figures" / "lmc"
    assert main(["plot", "branch-agreement", "lmc", "--matrix", "a.weight", "--home",
                 str(home), "--out", str(tmp_path / "m.svg")]) == 0  # fmt: skip
    assert (tmp_path / "m.svg").read_text().startswith("<?xml")


def test_branch_agreement_figure_draws_the_stored_diagonal(tmp_path, home):
    from specdyn.plots import plot_branch_agreement

    a, b = _run(tmp_path / "a", 0), _run(tmp_path / "b", 1)
    main(["compare", str(a), str(b), "--home", str(home), "--name", "ab"])
    with open_comparison("ab", home) as cmp:
        ax = plot_branch_agreement(cmp)
        drawn = np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(2, -1)
        want = cmp.endpoint_agreement()
        assert np.array_equal(drawn, want[:, : drawn.shape[1]], equal_nan=True)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]


def test_plot_unknown_comparison(home, capsys):
    assert main(["plot", "split", "nothing", "--home", str(home)]) == 1
    assert "no comparison named 'nothing'" in capsys.readouterr().err
