"""Figures a paper can print (issue 14): the step axis of heatmaps and curves, partial
stores drawn with gaps, file names that carry the options, readable labels, and the
arguments of ``plot metric`` and ``--pair``.

Every drawn extent is read back from matplotlib (``get_xlim``, the QuadMesh's cell edges,
the minor ticks) and checked against the steps the store itself lists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from matplotlib.patches import Rectangle

import specdyn
from specdyn.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MLP_STEPS = [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 4000]  # fixtures/README.md


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """mlp-wd with whole 24×24 alignment matrices, mlp-nowd, and their comparison under
    the name `compare` makes up."""
    home = tmp_path_factory.mktemp("axes-ws")
    vectors = specdyn.VectorOptions(full_matrices=True, k=24)
    specdyn.analyze(FIXTURES / "mlp-wd", home=home, vectors=vectors)
    specdyn.analyze(FIXTURES / "mlp-nowd", home=home)
    specdyn.compare(["mlp-wd", "mlp-nowd"], home=home)
    return home


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A store whose analysis was interrupted (Ctrl-C) after a few of 8 steps."""
    home = tmp_path_factory.mktemp("axes-partial")

    def stop(event):
        if event.phase == "analysing" and event.step_index >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        specdyn.analyze(FIXTURES / "mlp-wd", home=home, name="cut", on_progress=stop,
                        steps="0,10,50,100,500,1000,2000,4000")  # fmt: skip
    return home


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A values-only run of 25 steps (more than a marker per step can show)."""
    folder = tmp_path_factory.mktemp("axes-many") / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((12, 8))
    for step in range(25):
        weight = torch.tensor(base * (1 + 0.05 * step), dtype=torch.float32)
        torch.save({"w.weight": weight}, folder / f"step_{step * 10}.pt")
    specdyn.analyze(folder, home=folder.parent / "home", vectors=None)
    return folder.parent / "home"


def _mesh(ax) -> QuadMesh:
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh


def _edges(ax) -> np.ndarray:
    return _mesh(ax).get_coordinates()[0, :, 0]


def _minor(ax) -> list[float]:
    return sorted(float(t) for t in ax.xaxis.get_minorticklocs())


def _colorbar_label(ax) -> str:
    return _mesh(ax).colorbar.ax.get_ylabel()


def _texts(fig) -> list[str]:
    """Every text a reader sees: titles, axis labels, tick labels, legends, notes."""
    seen = [fig.get_suptitle()]
    for ax in fig.axes:
        seen += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        seen += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        seen += [t.get_text() for t in ax.texts]
        if ax.get_legend():
            seen += [t.get_text() for t in ax.get_legend().get_texts()]
    return [t for t in seen if t]


# ----------------------------------------------------------------------------- item 2


def test_heatmaps_span_exactly_the_first_to_the_last_step(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        assert run.steps.tolist() == MLP_STEPS
        pair = "layers.1.weight~layers.2.weight"
        for log_x in (False, True):
            axes = [
                specdyn.plot_rank(run, log_x=log_x),
                specdyn.plot_metric(run, "stable_rank", log_x=log_x),
                specdyn.plot_alignment(run, pair, log_x=log_x),
                specdyn.plot_agreement(run, "layers.1", log_x=log_x),
                specdyn.plot_alignment_score(run, log_x=log_x),
                specdyn.plot_agreement_score(run, log_x=log_x),
            ]
            for ax in axes:
                # the axis ends at the last checkpoint, 4000, not at 5000
                assert ax.get_xlim() == (0.0, 4000.0), (ax.get_title(), log_x)
                edges = _edges(ax)
                assert edges[0] == 0 and edges[-1] == 4000 and edges.size == len(MLP_STEPS) + 1
                # every step inside its own cell
                assert np.all(edges[:-1] <= MLP_STEPS) and np.all(MLP_STEPS <= edges[1:])
                assert _minor(ax) == MLP_STEPS, "no tick where the checkpoints are"
        # linear axis: the inner edges are midway between neighbouring steps
        inner = [(a + b) / 2 for a, b in zip(MLP_STEPS, MLP_STEPS[1:], strict=False)]
        np.testing.assert_allclose(_edges(specdyn.plot_rank(run))[1:-1], inner)


def test_dynamics_curves_and_heatmaps_share_one_extent(ws):
    for log_x in (False, True):
        fig = specdyn.plot_dynamics("mlp-wd", home=ws, scores=True, log_x=log_x)
        shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        assert len(shown) == 5  # loss, accuracy, rank, alignment, agreement
        for ax in shown:
            assert ax.get_xlim() == (0.0, 4000.0)
            assert _minor(ax) == MLP_STEPS
        for ax in shown[2:]:
            assert _edges(ax)[-1] == 4000
        with specdyn.open_run("mlp-wd", home=ws) as run:
            steps, _ = run.training("train_loss")
        assert shown[0].get_lines()[0].get_xdata()[-1] == steps[-1] == 4000


def test_singular_value_lines_have_markers_with_few_steps(ws, many):
    ax = specdyn.plot_sv("mlp-wd", "layers.2", home=ws, top=5)
    assert all(line.get_marker() == "o" for line in ax.get_lines())
    assert ax.get_xlim() == (0.0, 4000.0) and _minor(ax) == MLP_STEPS
    with specdyn.open_run("many", home=many) as run:
        assert run.steps.size == 25
        ax = specdyn.plot_sv(run, "w")
        assert all(line.get_marker() in ("None", "", None) for line in ax.get_lines())
        assert ax.get_xlim() == (0.0, 240.0) and _minor(ax) == run.steps.tolist()


def test_a_partial_store_is_drawn_with_gaps(partial):
    with specdyn.open_run("cut", home=partial) as run:
        done, every = run.steps.tolist(), run.all_steps.tolist()
        assert every == [0, 10, 50, 100, 500, 1000, 2000, 4000] and 0 < len(done) < len(every)
        tag = f"partial {len(done)}/{len(every)}"
        pending = [s for s in every if s not in done]
        ax = specdyn.plot_rank(run)
        assert tag in ax.get_title()
        # one column per step of the run, at the cells of the complete run (not stretched)
        edges = _edges(ax)
        assert edges.size == len(every) + 1 and ax.get_xlim() == (0.0, 4000.0)
        inner = [(a + b) / 2 for a, b in zip(every, every[1:], strict=False)]
        np.testing.assert_allclose(edges[1:-1], inner)
        shown = np.ma.getmaskarray(_mesh(ax).get_array()).reshape(len(run.matrices), -1)
        assert [bool(shown[:, i].all()) for i in range(len(every))] == [s in pending for s in every]
        metric = run.metric("normalized_effective_rank").T  # drawn as [matrices, steps]
        data = np.ma.getdata(_mesh(ax).get_array()).reshape(len(run.matrices), -1)
        np.testing.assert_array_equal(data[:, [every.index(s) for s in done]], metric)
        # the pending columns are hatched, and a note says how many
        hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
        covered = [
            s for s in pending if any(h.get_x() <= s <= h.get_x() + h.get_width() for h in hatched)
        ]
        assert covered == pending
        assert any(f"{len(pending)} of {len(every)} steps" in t.get_text() for t in ax.texts)

        ax = specdyn.plot_sv(run, "layers.1", top=3)
        assert tag in ax.get_title()
        line = ax.get_lines()[0]
        assert line.get_xdata().tolist() == every
        assert [bool(np.isnan(v)) for v in line.get_ydata()] == [s in pending for s in every]
        fig = specdyn.plot_dynamics(run, scores=True)
        assert tag in fig.get_suptitle()
        fig = specdyn.draw("alignment", run, out=partial / "a.png", pair="layers.1~")
        assert (partial / "a.png").is_file()


def test_a_complete_store_says_nothing_of_partial(ws):
    ax = specdyn.plot_rank("mlp-wd", home=ws)
    assert "partial" not in ax.get_title() and not ax.texts
    assert not [p for p in ax.patches if p.get_hatch()]


# ----------------------------------------------------------------------------- item 5


def test_figure_names_carry_the_options(ws):
    home = ws / "names"
    home.mkdir()
    shutil.copy(ws / "mlp-wd.h5", home / "mlp-wd.h5")
    figures = home / "figures" / "mlp-wd"
    drawn = {}
    for options in ({}, {"log_x": True}, {"error": True}, {"log_x": True, "error": True}):
        (path,) = specdyn.draw("dynamics", "mlp-wd", home=home, dpi=20, **options)
        drawn[tuple(sorted(options))] = path
    assert {k: p.name for k, p in drawn.items()} == {
        (): "dynamics.png",
        ("log_x",): "dynamics-logx.png",
        ("error",): "dynamics-error.png",
        ("error", "log_x"): "dynamics-logx-error.png",
    }
    assert all(p.parent == figures and p.is_file() for p in drawn.values())
    # the same options: the same file, drawn again
    first = drawn[()].read_bytes()
    assert specdyn.draw("dynamics", "mlp-wd", home=home, dpi=20) == [drawn[()]]
    assert drawn[()].read_bytes() == first
    # values that would read alike in a file name stay apart
    paths = {
        specdyn.draw("rank", "mlp-wd", home=home, dpi=20, steps=steps)[0]
        for steps in ("0,100", "0:100", "0:100:50")
    }
    assert len(paths) == 3
    titled = {specdyn.draw("rank", "mlp-wd", home=home, dpi=20, title=t)[0] for t in "ab"}
    assert len(titled) == 2 and figures / "rank.png" not in titled
    # plot all writes into its own folder: the figures drawn one by one stay
    files = specdyn.draw("all", "mlp-wd", home=home, dpi=20)
    assert {f.parent for f in files} == {figures / "all"}
    assert drawn[()].read_bytes() == first


def test_cli_log_x_does_not_replace_the_error_figure(ws, capsys):
    home = ws / "cli-names"
    home.mkdir()
    shutil.copy(ws / "mlp-wd.h5", home / "mlp-wd.h5")
    printed = []
    for flags in (["--error"], ["--log-x"], ["--log-x", "--error"]):
        args = ["plot", "dynamics", "mlp-wd", "--home", str(home), "--dpi", "20", *flags]
        assert main(args) == 0
        printed.append(Path(capsys.readouterr().out.strip()))
    assert [p.name for p in printed] == [
        "dynamics-error.png",
        "dynamics-logx.png",
        "dynamics-logx-error.png",
    ]
    assert all(p.is_file() for p in printed)
    assert specdyn.plots.default_output(
        specdyn.open_run("mlp-wd", home=home), "sv", "layers.1",
        specdyn.FigureOptions(top=20, log_x=True),
    ).name == "sv-layers.1-top20-logx.png"  # fmt: skip


# ----------------------------------------------------------------------------- item 6


def test_accuracy_panel_says_accuracy_and_legends_are_readable(ws):
    fig = specdyn.plot_dynamics("mlp-wd", home=ws)
    loss_ax, acc_ax = fig.axes[:2]
    assert acc_ax.get_ylabel() == "accuracy"
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        "train accuracy",
        "validation accuracy",
    ]
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train loss"]
    fig = specdyn.plot_dynamics("mlp-wd", home=ws, error=True)
    acc_ax = fig.axes[1]
    assert acc_ax.get_ylabel() == "error (1 − accuracy)"
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        "train error",
        "validation error",
    ]


def test_titles_do_not_repeat_the_colour_bar(ws):
    fig = specdyn.plot_dynamics("mlp-wd", home=ws, scores=True)
    heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.collections]
    assert [ax.get_title() for ax in heat] == [
        "normalised effective rank",
        "alignment score",
        "agreement score",
    ]
    for ax in heat:
        label = _colorbar_label(ax)
        assert label and label not in ax.get_title() and ax.get_title() not in label
    with specdyn.open_run("mlp-wd", home=ws) as run:
        for ax in (
            specdyn.plot_rank(run),
            specdyn.plot_metric(run, "stable_rank"),
            specdyn.plot_alignment_score(run),
            specdyn.plot_agreement_score(run),
        ):
            label = _colorbar_label(ax)
            assert ax.get_title() == "mlp-wd" and ax.get_title() not in label
        ax = specdyn.plot_sv(run, "layers.2")
        assert ax.get_title() == "mlp-wd: singular values of layers.2"


def test_comparison_titles_are_the_runs_not_a_made_up_name(ws):
    cmp = specdyn.open_comparison("mlp-wd-vs-mlp-nowd", ws)
    with cmp:
        assert cmp.name == "mlp-wd-vs-mlp-nowd"  # the name compare made up
        fig = specdyn.plot_side_by_side(cmp)
        assert fig.get_suptitle() == "mlp-wd vs mlp-nowd"
        assert "-vs-" not in " ".join(_texts(fig))


def test_one_spelling_in_every_figure(ws):
    # docs/metrics.md and every label spell "normalised"; the stored names keep theirs
    with specdyn.open_run("mlp-wd", home=ws) as run:
        figures = [specdyn.plot_dynamics(run, scores=True), specdyn.plot_rank(run).figure]
        figures += [specdyn.plot_metric(run, m).figure for m in run.metric_names]
    side = specdyn.plot_side_by_side("mlp-wd-vs-mlp-nowd", home=ws)
    assert side.axes[-1].get_ylabel() == "final normalised effective rank"
    for fig in [*figures, side]:
        texts = _texts(fig) + [ax.get_ylabel() for ax in fig.axes]
        assert not [t for t in texts if "normalized" in t], texts


def test_prune_kept_fraction_on_its_own_axis(tmp_path):
    from specdyn.prune import prune_magnitude, read_prune_results

    out = tmp_path / "out"
    prune_magnitude(FIXTURES / "mlp-wd", 0.05, control="random", out=out)
    res = read_prune_results(out)
    fig = specdyn.plot_prune(out)
    bars = [ax for ax in fig.axes if ax.patches]
    scores = [ax for ax in fig.axes if "agreement score" in ax.get_ylabel()]
    assert len(bars) == 1 and len(scores) == 1
    (bar_ax,), (score_ax,) = bars, scores
    heights = [p.get_height() for p in bar_ax.patches]
    np.testing.assert_allclose(heights, 100 * np.asarray(res.matrix_kept_fraction))
    assert "%" in bar_ax.get_ylabel() and not bar_ax.get_lines()
    # not a second y axis drawn over the scores: its own place in the figure
    fig.canvas.draw()
    a, b = bar_ax.get_position(), score_ax.get_position()
    assert a.y1 <= b.y0 + 1e-6, "the kept fraction overlaps the score panel"
    assert bar_ax.get_ylim()[1] < 2 * 100 * max(res.matrix_kept_fraction)


def test_alignment_matrix_shows_the_top_20_by_default(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        pair = "layers.1.weight~layers.2.weight"
        full = run.alignment_matrix(pair)
        assert full.shape[1:] == (24, 24)
        fig = specdyn.plot_alignment_matrix(run, pair, steps="4000")
        (image,) = [ax for ax in fig.axes if ax.images][0].images
        np.testing.assert_array_equal(image.get_array(), full[-1, :20, :20])
        assert "1–20 of 24" in fig.get_suptitle()
        fig = specdyn.plot_alignment_matrix(run, pair, steps="4000", top=24)
        assert [ax for ax in fig.axes if ax.images][0].images[0].get_array().shape == (24, 24)


# ----------------------------------------------------------------------------- item 8


def test_plot_metric_takes_a_metric_name_not_the_run(ws, tmp_path, capsys):
    home = ["--home", str(ws), "--dpi", "20"]
    assert main(["plot", "metric", "mlp-wd", *home]) == 2
    err = capsys.readouterr().err
    assert "'mlp-wd' is not a metric name" in err
    assert all(m in err for m in specdyn.METRIC_NAMES), err
    for args in (["stable_rank", "mlp-wd"], ["mlp-wd", "stable_rank"]):
        out = tmp_path / f"{args[0]}.png"
        assert main(["plot", "metric", *args, *home, "--out", str(out)]) == 0, args
        assert out.is_file()
    capsys.readouterr()


def test_pair_by_its_first_matrix(ws, capsys):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        with pytest.raises(specdyn.PlotError) as err:
            specdyn.plot_alignment(run, "layers.1")
        message = err.value.render(cli=True)
        assert "matches 2 pairs" in message
        assert "layers.0.weight~layers.1.weight: --pair 'layers.0~'" in message
        assert "layers.1.weight~layers.2.weight: --pair 'layers.1~'" in message
        for spec, pair in (
            ("layers.1~", "layers.1.weight~layers.2.weight"),
            ("layers.1→", "layers.1.weight~layers.2.weight"),
            ("layers.1 -> ", "layers.1.weight~layers.2.weight"),
            ("~layers.1", "layers.0.weight~layers.1.weight"),
            ("layers.0→layers.1", "layers.0.weight~layers.1.weight"),
            ("layers.1.weight~", "layers.1.weight~layers.2.weight"),
        ):
            ax = specdyn.plot_alignment(run, spec)
            stored = run.alignment(pair).T
            np.testing.assert_array_equal(np.ma.getdata(_mesh(ax).get_array()), stored)
    args = ["plot", "alignment", "mlp-wd", "--home", str(ws), "--dpi", "20", "--json"]
    assert main([*args, "--pair", "layers.1"]) == 1
    err = capsys.readouterr().err
    assert "--pair 'layers.1~'" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--pair", "layers.1~"]) == 0
    (written,) = json.loads(capsys.readouterr().out)["files"]
    assert Path(written).name == "alignment-layers.1~.png"
    # the same pair spelled with an arrow is the same figure, in the same file
    assert main([*args, "--pair", "layers.1→"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == [written]


def test_large_steps_are_labelled_in_thousands(tmp_path):
    """A Pythia-like axis (0 … 143 000) had six-digit labels running into each other."""
    folder = tmp_path / "long"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for step in (0, 1000, 64000, 143000):
        weight = torch.tensor(rng.standard_normal((12, 8)), dtype=torch.float32)
        torch.save({"w.weight": weight}, folder / f"step_{step}.pt")
    specdyn.analyze(folder, home=tmp_path / "home", vectors=None)
    fig = specdyn.plot_rank("long", home=tmp_path / "home").figure
    fig.canvas.draw()
    (ax,) = [a for a in fig.axes if a.get_xlabel() == "training step"]
    shown = [(v, t.get_text()) for v, t in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
             if 0 <= v <= 143000]  # fmt: skip
    labels = [text for _, text in shown]
    assert labels == [f"{v / 1000:g}k" if v >= 1e4 else f"{v:g}" for v, _ in shown]
    assert len(labels) >= 4
    assert max(len(label) for label in labels) <= 4 and "k" in labels[-1]
    from specdyn.plots._common import _step_tick_label

    assert [_step_tick_label(v) for v in (0, 950, 9999, 10000, 142500, 1.5e6)] == [
        "0", "950", "9999", "10k", "142.5k", "1.5M"
    ]  # fmt: skip
