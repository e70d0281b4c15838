"""Figures (`specdyn.plot_*`, `specdyn.draw`, `specdyn plot`) drawn from fixture stores.

The tests read the figures as a reader would: the colours of a heatmap are the
stored values themselves (compared exactly with what `open_run` reads), rows in
the store's forward-depth order with the first on top, labelled axes and colour
bar, one line per singular value asked for, darker for larger.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from _stores import reseal
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.image import AxesImage

import specdyn
from specdyn.cli import main
from specdyn.metrics import STORED_METRIC_NAMES
from specdyn.plots import short_names

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace holding the fixture stores the figures are drawn from.

    mlp-wd and neox-trainer (per-head pairs) with vectors and whole k×k matrices,
    cnn-lightning with vectors but no whole matrices, mlp-nowd values only.
    """
    home = tmp_path_factory.mktemp("plots-ws")
    full = specdyn.VectorOptions(full_matrices=True, k=20)
    specdyn.analyze(FIXTURES / "mlp-wd", home=home, vectors=full)
    specdyn.analyze(FIXTURES / "neox-trainer", home=home, vectors=full)
    specdyn.analyze(FIXTURES / "cnn-lightning", home=home, vectors=specdyn.VectorOptions(k=8))
    specdyn.analyze(FIXTURES / "mlp-nowd", home=home, vectors=None)
    return home


@pytest.fixture(scope="module")
def altered(ws, tmp_path_factory):
    """Copies of the mlp-wd store: one with step 50 flagged, one counted in epochs."""
    folder = tmp_path_factory.mktemp("plots-altered")
    flagged, epochs = folder / "flagged.h5", folder / "epochs.h5"
    shutil.copy(ws / "mlp-wd.h5", flagged)
    shutil.copy(ws / "mlp-wd.h5", epochs)
    with h5py.File(flagged, "r+", locking=False) as f:
        row = int(np.flatnonzero(f["steps/step"][()] == 50)[0])
        f["steps/flag"][row] = b"duplicate of step 20"
    with h5py.File(epochs, "r+", locking=False) as f:
        f.attrs["step_unit"] = "epoch"
    reseal(flagged)  # edited by hand: the checksums are written again
    reseal(epochs)
    return {"flagged": flagged, "epochs": epochs}


# ----------------------------------------------------------------------------- readers


def _mesh(ax) -> QuadMesh:
    """The one heatmap of an Axes."""
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1, f"expected one heatmap, found {len(meshes)}"
    return meshes[0]


def _assert_same(shown, stored) -> None:
    """The drawn array holds exactly the stored values (NaN where masked)."""
    shown = np.ma.asarray(shown)
    stored = np.asarray(stored)
    assert shown.shape == stored.shape, (shown.shape, stored.shape)
    values = np.where(np.ma.getmaskarray(shown), np.nan, np.ma.getdata(shown))
    np.testing.assert_array_equal(values, stored)


def _colorbar_label(fig, main_axes) -> str:
    """The label of the figure's one colour bar (an Axes besides the plotted ones)."""
    others = [a for a in fig.axes if a not in list(main_axes)]
    assert len(others) == 1, f"expected one colour bar, found {len(others)} extra Axes"
    label = others[0].get_ylabel() or others[0].get_xlabel()
    assert label.strip(), "the colour bar has no label"
    return label


def _row_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def _assert_first_row_on_top(ax, rows: int) -> None:
    bottom, top = ax.get_ylim()
    assert bottom > top, "the y axis is not inverted: the first row is not on top"
    assert (top, bottom) == (-0.5, rows - 0.5)


def _assert_steps_in_cells(ax, steps: np.ndarray) -> None:
    """Each column's cell contains its true step value (uneven steps keep their place), and
    the columns span exactly [first, last] step: the edge cells are half-width."""
    edges = _mesh(ax).get_coordinates()[0, :, 0]
    assert edges.size == steps.size + 1
    assert edges[0] == steps[0] and edges[-1] == steps[-1]
    assert np.all(edges[1:-1] > steps[:-1]) and np.all(edges[1:-1] < steps[1:])
    assert ax.get_xlim() == (steps[0], steps[-1])


def _luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# ----------------------------------------------------------------------------- heatmaps


@pytest.mark.parametrize("store", ["mlp-wd", "neox-trainer"])
def test_rank_heatmap_is_the_stored_metric(ws, store):
    with specdyn.open_run(store, home=ws) as run:
        ax = specdyn.plot_rank(run)
        _assert_same(_mesh(ax).get_array(), run.metric("normalized_effective_rank").T)
        _assert_first_row_on_top(ax, len(run.matrices))
        assert _row_labels(ax) == short_names(run.matrices, 48)
        assert ax.get_xlabel() == "training step"
        assert "matrix" in ax.get_ylabel() and "depth" in ax.get_ylabel()
        assert "effective rank" in _colorbar_label(ax.figure, [ax])
        _assert_steps_in_cells(ax, run.steps)
        assert run.name in ax.get_title()
        run.metric("entropy")  # the Run given stays open


def test_every_stored_metric_draws_itself(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        for metric in run.metric_names:
            ax = specdyn.plot_metric(run, metric)
            _assert_same(_mesh(ax).get_array(), run.metric(metric).T)
            assert _colorbar_label(ax.figure, [ax]), metric


def test_metric_by_name_and_into_a_given_axes(ws):
    from matplotlib.figure import Figure

    fig = Figure()
    mine = fig.add_subplot()
    ax = specdyn.plot_metric("mlp-wd", "stable_rank", home=ws, ax=mine, title="mine")
    assert ax is mine and ax.get_title() == "mine"
    with specdyn.open_run("mlp-wd", home=ws) as run:
        _assert_same(_mesh(ax).get_array(), run.metric("stable_rank").T)
        assert "stable rank" in _colorbar_label(fig, [ax])


def test_steps_select_columns_and_matrices_select_rows(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        ax = specdyn.plot_rank(run, steps="0,100,4000", matrices=r"layers\.[12]\.")
        cols = [0, 4, 9]
        assert run.steps[cols].tolist() == [0, 100, 4000]
        stored = run.metric("normalized_effective_rank")[np.ix_(cols, [1, 2])].T
        _assert_same(_mesh(ax).get_array(), stored)
        assert _row_labels(ax) == ["layers.1", "layers.2"]
        _assert_first_row_on_top(ax, 2)
        _assert_steps_in_cells(ax, np.array([0, 100, 4000]))
        ax = specdyn.plot_rank(run, steps="100:1000")
        _assert_same(_mesh(ax).get_array(), run.metric("normalized_effective_rank")[4:8].T)


def test_log_x_is_symlog_and_keeps_step_zero(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        ax = specdyn.plot_rank(run, log_x=True)
        assert ax.get_xscale() == "symlog"
        assert ax.get_xlim() == (0, 4000)
        edges = _mesh(ax).get_coordinates()[0, :, 0]
        # step 0's half cell is visible: at least 2 % of the axis width on screen
        to_screen = ax.transData.transform
        width = to_screen((edges[1], 0))[0] - to_screen((edges[0], 0))[0]
        assert width > 0.02 * ax.get_window_extent().width, "step 0 has no visible cell"
        _assert_steps_in_cells(ax, run.steps)
        ax = specdyn.plot_sv(run, "layers.3", log_x=True)
        assert ax.get_xscale() == "symlog" and ax.get_xlim() == (0, 4000)


def test_alignment_and_agreement_score_heatmaps(ws):
    with specdyn.open_run("neox-trainer", home=ws) as run:
        names = [p["name"] for p in run.pairs]
        ax = specdyn.plot_alignment_score(run)
        _assert_same(_mesh(ax).get_array(), run.alignment_score().T)
        _assert_first_row_on_top(ax, len(names))
        labels = _row_labels(ax)
        assert labels == short_names(names, 64)
        assert len(set(labels)) == len(names), "shortened pair names collide"
        assert all(len(t) <= 64 for t in labels), [t for t in labels if len(t) > 64]
        assert "pair" in ax.get_ylabel() and ax.get_xlabel() == "training step"
        assert "alignment score" in _colorbar_label(ax.figure, [ax])
        assert _mesh(ax).get_clim() == (0.0, 1.0)

        ax = specdyn.plot_alignment_score(run, pairs=r"\[q\]~\[k\]")
        qk = [i for i, n in enumerate(names) if n.endswith("[q]~[k]")]
        assert len(qk) == 2
        _assert_same(_mesh(ax).get_array(), run.alignment_score()[:, qk].T)

        ax = specdyn.plot_agreement_score(run)
        _assert_same(_mesh(ax).get_array(), run.agreement_score().T)
        _assert_first_row_on_top(ax, len(run.matrices))
        assert "matrix" in ax.get_ylabel() and ax.get_xlabel() == "training step"
        label = _colorbar_label(ax.figure, [ax])
        assert "agreement score" in label and str(run.reference) in label

        ax = specdyn.plot_agreement_score(run, matrices="mlp", steps="0,1500")
        rows = [i for i, n in enumerate(run.matrices) if "mlp" in n]
        cols = [0, len(run.steps) - 1]
        _assert_same(_mesh(ax).get_array(), run.agreement_score()[np.ix_(cols, rows)].T)


def test_alignment_and_agreement_diagonals(ws):
    with specdyn.open_run("neox-trainer", home=ws) as run:
        pair = "gpt_neox.layers.1.attention.query_key_value.weight[q]~[k]"  # per-head pair
        assert pair in [p["name"] for p in run.pairs]
        ax = specdyn.plot_alignment(run, "layers.1.attention.query_key_value.weight[q]")
        diag = run.alignment(pair)
        _assert_same(_mesh(ax).get_array(), diag.T)
        _assert_first_row_on_top(ax, diag.shape[1])
        assert _row_labels(ax)[0] == "1", "index 1 (the largest) is not the top row"
        assert "index" in ax.get_ylabel() and ax.get_xlabel() == "training step"
        assert "alignment" in _colorbar_label(ax.figure, [ax])
        ax = specdyn.plot_alignment(run, pair, top=5, steps="0,1500")
        _assert_same(_mesh(ax).get_array(), diag[[0, -1], :5].T)

        matrix = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
        ax = specdyn.plot_agreement(run, "layers.0.mlp.dense_h_to_4h")
        diag = run.agreement(matrix)
        _assert_same(_mesh(ax).get_array(), diag.T)
        _assert_first_row_on_top(ax, diag.shape[1])
        assert "index" in ax.get_ylabel() and ax.get_xlabel() == "training step"
        label = _colorbar_label(ax.figure, [ax])
        assert "agreement" in label and f"step {run.reference}" in label
        # the reference step agrees with itself
        np.testing.assert_allclose(diag[-1], 1.0, atol=1e-5)


def test_alignment_matrix_panels_are_the_stored_matrices(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        pair = run.pairs[1]["name"]
        full = run.alignment_matrix(pair)
        fig = specdyn.plot_alignment_matrix(run, "layers.1.weight~")
        chosen = specdyn.select_steps(run.steps.tolist(), "lin:4")
        panels = [a for a in fig.axes if a.images]
        assert len(panels) == len(chosen) == 4
        for ax, step in zip(panels, chosen, strict=True):
            assert ax.get_title() == f"step {step}"
            (image,) = [i for i in ax.get_children() if isinstance(i, AxesImage)]
            _assert_same(image.get_array(), full[run.steps.tolist().index(step)])
            bottom, top = ax.get_ylim()
            assert bottom > top, "index 1 is not on top"
            assert ax.get_xlabel().strip()
        assert panels[0].get_ylabel().strip()
        assert "alignment" in _colorbar_label(fig, panels)
        assert fig.get_suptitle()

        fig = specdyn.plot_alignment_matrix(run, pair, steps="0,4000", top=5)
        panels = [a for a in fig.axes if a.images]
        assert [a.get_title() for a in panels] == ["step 0", "step 4000"]
        _assert_same(panels[1].images[0].get_array(), full[-1, :5, :5])


def test_epoch_counted_run_says_epoch(altered):
    with specdyn.open_run(altered["epochs"]) as run:
        assert run.step_unit == "epoch"
        assert specdyn.plot_rank(run).get_xlabel() == "epoch"
        assert specdyn.plot_sv(run, "layers.0").get_xlabel() == "epoch"
        assert specdyn.plot_agreement(run, "layers.0").get_xlabel() == "epoch"


# ----------------------------------------------------------------------------- singular values


def test_sv_one_line_per_value_darker_for_larger(ws):
    with specdyn.open_run("mlp-wd", home=ws) as run:
        sigma = run.sigma("layers.1.weight")
        ax = specdyn.plot_sv(run, "layers.1", top=7)
        lines = ax.get_lines()
        assert len(lines) == 7
        for i, line in enumerate(lines):
            np.testing.assert_array_equal(line.get_xdata(), run.steps)
            np.testing.assert_array_equal(line.get_ydata(), sigma[:, i])
        lum = [_luminance(line.get_color()) for line in lines]
        assert lum[0] < lum[-1], "σ₁'s line is not darker than σ₇'s"
        assert np.all(np.diff(lum) >= -1e-9), "colours do not darken with rank"
        assert ax.get_xlabel() == "training step" and "singular value" in ax.get_ylabel()
        assert "index" in _colorbar_label(ax.figure, [ax])

        rank = min(run.matrix_info("layers.3.weight")["shape"])
        ax = specdyn.plot_sv(run, "layers.3")
        assert len(ax.get_lines()) == rank == run.sigma("layers.3.weight").shape[1]
        assert len(specdyn.plot_sv(run, "layers.3", top=10**6).get_lines()) == rank
        ax = specdyn.plot_sv(run, "layers.3", steps="0,4000", top=2, log_y=True)
        assert ax.get_yscale() == "log"
        last = run.sigma("layers.3.weight")[[0, -1], 1]
        np.testing.assert_array_equal(ax.get_lines()[1].get_ydata(), last)


# ----------------------------------------------------------------------------- names


def test_short_names_shorten_but_stay_distinct():
    long_names = [f"model.encoder.blocks.{i}.attention.output.projection.weight" for i in range(3)]
    short = short_names(long_names, width=30)
    assert len(set(short)) == 3 and all(len(s) <= 30 for s in short)
    assert all(".weight" not in s for s in short)
    # names that differ only where a cut would fall are kept whole (cleaned), not merged
    twins = ["alpha" + ".x" * 40, "beta" + ".x" * 40]
    assert len(set(short_names(twins, width=48))) == 2
    assert short_names(["a.weight~b.weight"]) == ["a → b"]
    assert short_names([]) == []


def test_long_pair_names_in_neox_figures_are_short(ws):
    with specdyn.open_run("neox-trainer", home=ws) as run:
        longest = max((p["name"] for p in run.pairs), key=len)
        assert len(longest) > 64
        ax = specdyn.plot_alignment(run, longest)
        assert len(ax.get_title()) <= len(run.name) + 2 + 70
        labels = _row_labels(specdyn.plot_rank(run))
        assert all(len(t) <= 48 for t in labels) and len(set(labels)) == len(run.matrices)


# ----------------------------------------------------------------------------- flagged steps


def test_flagged_step_is_marked(altered):
    with specdyn.open_run(altered["flagged"]) as run:
        assert run.step_flags == {50: "duplicate of step 20"}
        for ax in (specdyn.plot_rank(run), specdyn.plot_sv(run, "layers.0", top=3)):
            marks = [c for c in ax.collections if isinstance(c, PathCollection)]
            assert len(marks) == 1, "no (or several) flagged-step markers"
            assert marks[0].get_offsets()[:, 0].tolist() == [50.0]
            np.testing.assert_allclose(marks[0].get_facecolor()[0], [1, 0, 0, 1])
            assert any("flagged" in t.get_text() for t in ax.texts)
        # a flagged step outside the steps shown is not marked
        ax = specdyn.plot_rank(run, steps="100:4000")
        assert not [c for c in ax.collections if isinstance(c, PathCollection)]
        assert not any("flagged" in t.get_text() for t in ax.texts)


def test_unflagged_store_has_no_marks(ws):
    ax = specdyn.plot_rank("mlp-wd", home=ws)
    assert not [c for c in ax.collections if isinstance(c, PathCollection)]
    assert not ax.texts


# ----------------------------------------------------------------------------- errors


def test_values_only_store_names_the_option(ws):
    calls = [
        lambda: specdyn.plot_alignment("mlp-nowd", "layers", home=ws),
        lambda: specdyn.plot_alignment_score("mlp-nowd", home=ws),
        lambda: specdyn.plot_agreement("mlp-nowd", "layers.0", home=ws),
        lambda: specdyn.plot_agreement_score("mlp-nowd", home=ws),
        lambda: specdyn.plot_alignment_matrix("mlp-nowd", "layers", home=ws),
    ]
    for call in calls:
        with pytest.raises(specdyn.PlotError, match="without vectors=None") as err:
            call()
        # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
        assert err.value.render(cli=True).endswith("without --values-only")
        assert isinstance(err.value, specdyn.SpecdynError)
        assert "\n" not in str(err.value)
    # values are still drawn
    with specdyn.open_run("mlp-nowd", home=ws) as run:
        ax = specdyn.plot_rank(run)
        _assert_same(_mesh(ax).get_array(), run.metric("normalized_effective_rank").T)


def test_alignment_matrix_needs_full_matrices(ws):
    with pytest.raises(specdyn.PlotError, match=r"vectors\.full_matrices=True$") as err:
        specdyn.plot_alignment_matrix("cnn-lightning", "conv1", home=ws)
    assert err.value.render(cli=True).endswith("specdyn analyze with --full-matrices")
    # the diagonal is there without whole matrices
    with specdyn.open_run("cnn-lightning", home=ws) as run:
        ax = specdyn.plot_alignment(run, "conv1")
        _assert_same(_mesh(ax).get_array(), run.alignment("conv1").T)


def test_ambiguous_or_unknown_names_list_candidates(ws):
    with pytest.raises(specdyn.PlotError) as err:
        specdyn.plot_sv("mlp-wd", "layers", home=ws)
    for i in range(4):
        assert f"layers.{i}.weight" in str(err.value)
    with pytest.raises(specdyn.PlotError) as err:
        specdyn.plot_alignment("neox-trainer", "[q]~[k]", home=ws)
    assert "layers.0.attention.query_key_value.weight[q]~[k]" in str(err.value)
    assert "layers.1.attention.query_key_value.weight[q]~[k]" in str(err.value)
    with pytest.raises(specdyn.PlotError, match="no pair matches"):
        specdyn.plot_alignment("mlp-wd", "nothing-like-this", home=ws)
    with pytest.raises(specdyn.PlotError) as err:
        specdyn.plot_metric("mlp-wd", "rank_of_nothing", home=ws)
    message = str(err.value)
    assert "rank_of_nothing" in message
    for metric in specdyn.METRIC_NAMES:
        assert metric in message, f"stored metric {metric} not listed: {message}"


def test_bad_options_raise_plot_errors(ws, tmp_path):
    with pytest.raises(specdyn.PlotError, match="^matrices 'layers.\\(' is not a valid regular"):
        specdyn.plot_rank("mlp-wd", home=ws, matrices="layers.(")
    with pytest.raises(specdyn.PlotError, match="no matrix matches"):
        specdyn.plot_rank("mlp-wd", home=ws, matrices="^conv")
    with pytest.raises(specdyn.PlotError, match="unknown figure 'heat'"):
        specdyn.draw("heat", "mlp-wd", home=ws)
    with pytest.raises(specdyn.PlotError, match=r"^out .*: give a \.png, \.pdf or \.svg") as err:
        specdyn.draw("rank", "mlp-wd", home=ws, out=tmp_path / "rank.txt")
    assert err.value.render(cli=True).startswith("--out ")
    assert not (tmp_path / "rank.txt").exists()
    with pytest.raises(specdyn.PlotError, match="stable_rank"):
        specdyn.draw("metric", "mlp-wd", home=ws, out=tmp_path / "m.png")
    with pytest.raises(specdyn.PlotError, match="needs matrix=NAME") as err:
        specdyn.draw("sv", "mlp-wd", home=ws, out=tmp_path / "s.png")
    assert "needs --matrix NAME" in err.value.render(cli=True) and err.value.option == "matrix"
    with pytest.raises(
        specdyn.PlotError, match=r"needs pair=NAME \(see run\.alignment\.pairs\)"
    ) as err:
        specdyn.draw("alignment-matrix", "mlp-wd", home=ws, out=tmp_path / "a.png")
    assert "needs --pair NAME (see info --pairs)" in err.value.render(cli=True)
    with pytest.raises(specdyn.PlotError, match="^fmt 'gif': use png, pdf or svg") as err:
        specdyn.plot_all("mlp-wd", tmp_path / "all", home=ws, fmt="gif")
    assert err.value.render(cli=True).startswith("--format 'gif'")


# ----------------------------------------------------------------------------- draw and CLI


def test_cli_pdf_svg_and_png_outputs(ws, tmp_path, capsys):
    pdf = tmp_path / "r.pdf"
    assert main(["plot", "rank", "mlp-wd", "--home", str(ws), "--out", str(pdf)]) == 0
    assert capsys.readouterr().out.strip() == str(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")

    svg = tmp_path / "sub" / "sv.svg"
    args = ["plot", "sv", "mlp-wd", "--home", str(ws), "--matrix", "layers.2", "--top", "5"]
    assert main([*args, "--out", str(svg), "--log-x", "--cmap", "plasma"]) == 0
    capsys.readouterr()
    assert ET.parse(svg).getroot().tag.endswith("svg")

    # png, the default format, under <home>/figures/<run>/; --size and --dpi set the pixels
    args = ["plot", "metric", "stable_rank", "mlp-wd", "--home", str(ws)]
    assert main([*args, "--size", "4x3", "--dpi", "50", "--title", "σ"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.exists() and printed.parent == ws / "figures" / "mlp-wd"
    assert printed.suffix == ".png" and "stable_rank" in printed.name
    head = printed.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (200, 150)


def test_cli_alignment_and_agreement_kinds(ws, tmp_path, capsys):
    home = ["--home", str(ws)]
    runs = [
        ["alignment", "neox-trainer", "--pair", "layers.1.attention.query_key_value.weight[q]"],
        ["alignment", "neox-trainer", "--matrices", "mlp"],
        ["agreement", "neox-trainer", "--matrix", "embed_out", "--top", "4"],
        ["alignment-matrix", "mlp-wd", "--pair", "layers.0", "--steps", "0,4000"],
    ]
    for i, args in enumerate(runs):
        out = tmp_path / f"{i}.png"
        assert main(["plot", *args, *home, "--out", str(out), "--dpi", "30"]) == 0, args
        assert out.read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()


def test_draw_writes_the_file_it_returns(ws, tmp_path):
    out = tmp_path / "a.svg"
    assert specdyn.draw("agreement", "mlp-wd", home=ws, out=out, matrix="layers.1") == [out]
    ET.parse(out)


def test_cli_all_writes_every_figure_the_store_allows(ws, tmp_path, capsys):
    folder = tmp_path / "figs"
    args = ["plot", "all", "mlp-wd", "--home", str(ws), "--out", str(folder), "--dpi", "20"]
    assert main([*args, "--json"]) == 0
    files = [Path(f) for f in json.loads(capsys.readouterr().out)["files"]]
    # every stored metric: the spectral ones and, since issue 18, the heavy-tailed ones
    stored = STORED_METRIC_NAMES
    metrics = [f"metric-{m}" for m in stored if m != "normalized_effective_rank"]
    expected = {"rank", *metrics, "sv", "agreement-score", "agreement"}
    expected |= {"alignment-score", "alignment", "alignment-matrix"}
    expected |= {"dynamics"}  # mlp-wd's checkpoints hold train_loss, train_acc, val_acc
    assert {f.stem for f in files} == expected
    assert all(f.parent == folder and f.suffix == ".png" for f in files)
    assert sorted(folder.iterdir()) == sorted(files)
    assert all(f.read_bytes()[:8] == PNG_MAGIC for f in files)


def test_cli_all_in_svg_and_refusing_single_figure_options(ws, tmp_path, capsys):
    folder = tmp_path / "svg"
    args = ["plot", "all", "mlp-nowd", "--home", str(ws), "--out", str(folder)]
    assert main([*args, "--format", "svg", "--json"]) == 0
    files = [Path(f) for f in json.loads(capsys.readouterr().out)["files"]]
    assert files and all(f.suffix == ".svg" for f in files)
    assert main([*args, "--top", "3", "--cmap", "Greys"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--top, --cmap: not used by 'all'" in err[0]


def test_sv_is_darker_for_larger_whichever_end_of_the_map_is_dark(ws):
    # Greys runs from white to black: σ₁ must still be the darkest line
    ax = specdyn.plot_sv("mlp-wd", "layers.1", home=ws, top=5, cmap="Greys")
    lum = [_luminance(line.get_color()) for line in ax.get_lines()]
    assert lum[0] < 0.2 and np.all(np.diff(lum) >= -1e-9), lum


def test_plot_all_values_only_store(ws, tmp_path):
    files = specdyn.plot_all("mlp-nowd", tmp_path, home=ws, fmt="pdf", dpi=20)
    # every stored metric: the spectral ones and, since issue 18, the heavy-tailed ones
    stored = STORED_METRIC_NAMES
    metrics = [f"metric-{m}" for m in stored if m != "normalized_effective_rank"]
    assert {f.stem for f in files} == {"rank", "sv", "dynamics", *metrics}  # curves, no scores
    assert all(f.suffix == ".pdf" and f.read_bytes().startswith(b"%PDF") for f in files)


def test_cli_usage_errors_exit_2(ws, capsys):
    home = ["--home", str(ws)]
    assert main(["plot", "heat", "mlp-wd", *home]) == 2
    assert main(["plot", "rank", "mlp-wd", *home, "--size", "8by5"]) == 2
    assert main(["plot", "rank", "mlp-wd", *home, "--size", "0x5"]) == 2
    assert main(["plot", "rank", "mlp-wd", *home, "--cmap", "no-such-map"]) == 2
    assert main(["plot", "metric", *home]) == 2
    assert main(["plot", "rank", "mlp-wd", "mlp-nowd", *home]) == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["alignment", "mlp-nowd"], "without --values-only"),
        (["alignment-matrix", "cnn-lightning", "--pair", "conv1"], "--full-matrices"),
        (["sv", "mlp-wd", "--matrix", "layers"], "layers.3.weight"),
        (["alignment", "neox-trainer", "--pair", "[q]~[k]"], "matches 2 pairs"),
        (["metric", "nope", "mlp-wd"], "stored metrics"),
        (["rank", "mlp-wd", "--matrices", "("], "regular expression"),
        (["rank", "mlp-wd", "--out", "x.txt"], ".png, .pdf or .svg"),
    ],
)
def test_cli_plot_errors_exit_1_with_one_line(ws, capsys, args, needle):
    assert main(["plot", *args, "--home", str(ws)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("specdyn: error:") and needle in err
    assert captured.out == ""


def test_the_gallery_script_draws_every_figure_of_the_page(tmp_path):
    # docs/gallery.md's images come from this script: it must keep working
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "gallery"
    proc = subprocess.run(
        [sys.executable, str(root / "docs" / "make_gallery.py"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    committed = sorted(p.name for p in (root / "docs" / "gallery").glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == committed
    page = (root / "docs" / "gallery.md").read_text()
    assert all(f"gallery/{name}" in page for name in committed)
    assert "warning" not in proc.stderr.lower()
