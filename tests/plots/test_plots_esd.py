"""ESD figures (`specdyn.plot_esd`, ``specdyn plot esd``) and the heavy-tailed metrics that
``plot metric`` computes from the stored σ (issue 18).

The references are computed here from the σ a store holds, with
`specdyn.metrics.power_law_fit` and `heavy_tail_metrics`, never read off the figure code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh

import specdyn
from specdyn.cli import main
from specdyn.metrics import (
    EVALS_THRESHOLD,
    METRIC_NAMES,
    STORED_METRIC_NAMES,
    heavy_tail_metrics,
    power_law_fit,
)
from specdyn.steps import select_steps

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = [0, 100, 4000]  # three of mlp-wd's ten steps (fixtures/README.md)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """mlp-wd, values only: the σ the ESDs and heavy-tailed metrics come from."""
    home = tmp_path_factory.mktemp("esd-ws")
    specdyn.analyze(FIXTURES / "mlp-wd", home=home, vectors=None)
    return home


@pytest.fixture(scope="module")
def old(ws, tmp_path_factory):
    """mlp-wd's store as specdyn wrote it before the heavy-tailed metrics were stored,
    read-only (so nothing can add them): plot metric computes them from σ."""
    from _stores import reseal

    home = tmp_path_factory.mktemp("esd-old")
    path = home / "mlp-wd.h5"
    shutil.copyfile(ws / "mlp-wd.h5", path)
    with h5py.File(path, "r+", locking=False) as f:
        for name in STORED_METRIC_NAMES[len(METRIC_NAMES) :]:
            ds = f["metrics/" + name]
            ds.dims[0].detach_scale(f["step"])
            ds.dims[1].detach_scale(f["matrix"])
            del f["metrics/" + name]
        f.attrs["metric_names"] = json.dumps(list(METRIC_NAMES))
    reseal(path)
    path.chmod(0o444)
    return home


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """Three steps of a 12×8 matrix, a 5×3 one (R < 8), an all-zero 10×10 one and a
    10×10 identity (a flat ESD: no power law, but its norms are defined)."""
    folder = tmp_path_factory.mktemp("esd-odd") / "odd"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for step in (0, 10, 20):
        state = {
            "a.weight": torch.tensor(rng.standard_t(3, (12, 8)), dtype=torch.float32),
            "small.weight": torch.tensor(rng.standard_normal((5, 3)), dtype=torch.float32),
            "zero.weight": torch.zeros(10, 10),
            "flat.weight": torch.eye(10),
        }
        torch.save(state, folder / f"step_{step}.pt")
    specdyn.analyze(folder, home=folder.parent / "home", vectors=None)
    return folder.parent / "home"


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """mlp-wd whose analysis was interrupted after 2 of 4 steps."""
    home = tmp_path_factory.mktemp("esd-partial")

    def stop(event):
        if event.phase == "analysing" and event.step_index >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        specdyn.analyze(FIXTURES / "mlp-wd", home=home, name="cut", on_progress=stop,
                        vectors=None, steps="0,10,2000,4000")  # fmt: skip
    return home


def _by_gid(ax, prefix: str) -> dict[int, object]:
    """The Axes' lines whose gid is ``<prefix>-<step>``, by step."""
    return {
        int(str(line.get_gid()).split("-", 1)[1]): line
        for line in ax.get_lines()
        if str(line.get_gid()).startswith(f"{prefix}-")
    }


def _mesh_values(ax) -> np.ndarray:
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return np.ma.filled(np.ma.asarray(mesh.get_array(), dtype=float), np.nan)


# ----------------------------------------------------------------------------- plot_esd


def test_one_esd_per_step_with_its_fit_alpha_and_xmin(ws):
    ax = specdyn.plot_esd("mlp-wd", "layers.1", home=ws, steps=",".join(map(str, STEPS)))
    esd, fit_lines, xmin_lines = _by_gid(ax, "esd"), _by_gid(ax, "fit"), _by_gid(ax, "xmin")
    assert list(esd) == STEPS  # one ESD line per step, in step order
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[: len(STEPS)] == [esd[s].get_label() for s in STEPS]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    with specdyn.open_run("mlp-wd", home=ws) as run:
        sigma = run.values.sigma("layers.1.weight")
        done = run.values.steps.tolist()
    for step in STEPS:
        lam = sigma[done.index(step)] ** 2
        fit = power_law_fit(lam)
        assert not fit.reason
        assert esd[step].get_label() == f"step {step}: α = {fit.alpha:.3f}"
        # the dashed law starts at xmin with slope −α on the log-log axes ...
        x, y = (np.asarray(v, dtype=float) for v in fit_lines[step].get_data())
        assert x[0] == pytest.approx(fit.xmin, rel=1e-12)
        assert x[-1] == pytest.approx(lam.max(), rel=1e-12)
        slopes = np.diff(np.log(y)) / np.diff(np.log(x))
        np.testing.assert_allclose(slopes, -fit.alpha, rtol=1e-9)
        # ... at the height of the tail's share of the fitted λ: ∫ from xmin is that share
        fitted = lam[lam > EVALS_THRESHOLD]
        share = np.count_nonzero(fitted >= fit.xmin) / fitted.size
        assert y[0] * fit.xmin / (fit.alpha - 1) == pytest.approx(share, rel=1e-12)
        assert list(xmin_lines[step].get_xdata()) == [fit.xmin, fit.xmin]
        # the ESD's points are a density of the fitted λ: its bins hold every λ once
        centres, density = (np.asarray(v, dtype=float) for v in esd[step].get_data())
        assert centres.min() <= fitted.max() and centres.max() >= fitted.min()
        assert np.all(density > 0)


def test_default_steps_are_first_log_spread_and_last(ws):
    ax = specdyn.plot_esd("mlp-wd", "layers.0", home=ws)
    with specdyn.open_run("mlp-wd", home=ws) as run:
        done = run.values.steps.tolist()
    drawn = list(_by_gid(ax, "esd"))
    assert drawn == select_steps(done, "log:5")
    assert len(drawn) == 5 and drawn[0] == done[0] and drawn[-1] == done[-1]


def test_a_failed_fit_says_why_and_draws_no_law(odd):
    ax = specdyn.plot_esd("odd", "zero", home=odd, steps="0,20")
    assert [line.get_label() for line in _by_gid(ax, "esd").values()] == [
        "step 0: no fit (zero-matrix)",
        "step 20: no fit (zero-matrix)",
    ]
    assert not _by_gid(ax, "fit") and not _by_gid(ax, "xmin")


def test_esd_steps_must_be_in_the_store_and_done(ws, partial):
    with pytest.raises(specdyn.PlotError, match=r"step 2000 is not analysed yet"):
        specdyn.plot_esd("cut", "layers.1", home=partial, steps="0,2000")
    with pytest.raises(specdyn.SpecdynError, match=r"step 7 is not available"):
        specdyn.plot_esd("mlp-wd", "layers.1", home=ws, steps="0,7")
    # without --steps: the done ones only
    ax = specdyn.plot_esd("cut", "layers.1", home=partial)
    assert list(_by_gid(ax, "esd")) == [0, 10]


# ----------------------------------------------------------------------------- plot metric


def _expected(home, metric) -> np.ndarray:
    """`metric` [matrices, steps] computed here from the σ and shapes of mlp-wd's store."""
    with specdyn.open_run("mlp-wd", home=home) as run:
        return np.array([
            heavy_tail_metrics(run.values.sigma(m), tuple(run.values.matrix_info(m)["shape"]))[
                metric
            ]
            for m in run.matrices
        ])  # fmt: skip


@pytest.mark.parametrize("metric", ["alpha", "alpha_weighted", "log_alpha_norm", "mp_softrank"])
def test_plot_metric_reads_stored_heavy_tail_metrics(ws, metric, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("computed, not read from the store")

    # the figure code cannot compute them: what it draws is what the store holds
    monkeypatch.setattr("specdyn.plots._run.heavy_tail_metrics", no_fit)
    monkeypatch.setattr("specdyn.plots._esd.heavy_tail_metrics", no_fit)
    ax = specdyn.plot_metric("mlp-wd", metric, home=ws)
    monkeypatch.undo()
    with specdyn.open_run("mlp-wd", home=ws) as run:
        assert metric in run.metric_names
    expected = _expected(ws, metric)
    assert np.all(np.isfinite(expected))
    np.testing.assert_array_equal(_mesh_values(ax), expected)
    assert "(from σ)" not in ax.figure.axes[-1].get_ylabel()
    assert not ax.texts  # nothing degenerate, no note


@pytest.mark.parametrize("metric", ["alpha", "alpha_weighted", "log_alpha_norm", "mp_softrank"])
def test_plot_metric_computes_heavy_tail_metrics_from_sigma(old, metric):
    ax = specdyn.plot_metric("mlp-wd", metric, home=old)
    shown = _mesh_values(ax)
    with specdyn.open_run("mlp-wd", home=old) as run:
        assert metric not in run.metric_names  # not stored: computed
        expected = np.array([
            heavy_tail_metrics(run.values.sigma(m), tuple(run.values.matrix_info(m)["shape"]))[
                metric
            ]
            for m in run.matrices
        ])  # fmt: skip
    assert shown.shape == expected.shape == (4, 10)
    assert np.all(np.isfinite(expected))
    np.testing.assert_array_equal(shown, expected)
    assert "(from σ)" in ax.figure.axes[-1].get_ylabel()  # the colour bar says so
    assert not ax.texts  # nothing degenerate, no note


def test_plot_metric_steps_and_matrices_pick_what_is_computed(old):
    ax = specdyn.plot_metric("mlp-wd", "ks_distance", home=old, steps="0,4000", matrices="layers.3")
    with specdyn.open_run("mlp-wd", home=old) as run:
        sigma = run.values.sigma("layers.3.weight")[[0, -1]]
        expected = heavy_tail_metrics(sigma, (8, 96))["ks_distance"]
    np.testing.assert_array_equal(_mesh_values(ax), expected[None, :])


def test_degenerate_spectra_are_missing_with_their_reasons_counted(odd):
    ax = specdyn.plot_metric("odd", "alpha", home=odd)
    shown = _mesh_values(ax)
    with specdyn.open_run("odd", home=odd) as run:
        rows = {m: i for i, m in enumerate(run.matrices)}
        expected = heavy_tail_metrics(run.values.sigma("a.weight"), (12, 8))["alpha"]
    np.testing.assert_array_equal(shown[rows["a.weight"]], expected)
    for name in ("small.weight", "zero.weight", "flat.weight"):
        assert np.isnan(shown[rows[name]]).all(), name
    (note,) = ax.texts
    assert note.get_text() == (
        "missing (NaN): 3 flat-spectrum, 3 too-few-eigenvalues, 3 zero-matrix"
    )
    # log_norm is defined where only the fit fails: the flat ESD is drawn, not counted
    ax = specdyn.plot_metric("odd", "log_norm", home=odd)
    np.testing.assert_allclose(_mesh_values(ax)[rows["flat.weight"]], np.log10(10.0), rtol=1e-6)
    (note,) = ax.texts
    assert note.get_text() == "missing (NaN): 3 too-few-eigenvalues, 3 zero-matrix"


def test_a_stored_metric_is_still_read_from_the_store(ws):
    # stable_rank is a heavy-tailed name too, but stored: the stored path draws it
    ax = specdyn.plot_metric("mlp-wd", "stable_rank", home=ws)
    assert "(from σ)" not in ax.figure.axes[-1].get_ylabel()


# ----------------------------------------------------------------------------- CLI


def test_cli_plot_esd_and_metric_alpha_write_pngs(ws, tmp_path, capsys):
    home = ["--home", str(ws)]
    out = tmp_path / "esd.png"
    args = ["plot", "esd", "mlp-wd", *home, "--matrix", "layers.2", "--steps", "0,4000"]
    assert main([*args, "--out", str(out), "--dpi", "30"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    # default file name: the kind, the matrix, the steps
    assert main(["plot", "esd", "mlp-wd", *home, "--matrix", "layers.2", "--dpi", "30"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == ws / "figures" / "mlp-wd" / "esd-layers.2.png"
    assert printed.read_bytes()[:8] == PNG_MAGIC
    # plot metric alpha: a heavy-tailed name is a metric name, after the run or alone
    for order in (["mlp-wd", "alpha"], ["alpha"]):
        assert main(["plot", "metric", *order, *home, "--steps", "lin:3", "--dpi", "30"]) == 0
        printed = Path(capsys.readouterr().out.strip())
        assert printed.name == "metric-alpha-steps_lin=3.png", printed
        assert printed.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["esd", "mlp-wd", "--matrix", "nope"], "no matrix matches 'nope'"),
        (["esd", "mlp-wd", "--matrix", "layers"], "matches 4 matrices"),
        (["esd", "mlp-wd", "--matrix", "layers.1", "--steps", "0,7"], "step 7 is not available"),
        (["esd", "mlp-wd"], "needs --matrix NAME"),
        (["esd", "mlp-wd", "--matrix", "layers.1", "--top", "3"], "--top: not used by the esd"),
        (["metric", "nope", "mlp-wd"], "computed from σ: alpha"),
    ],
)
def test_cli_plot_esd_errors_are_one_line(ws, capsys, args, needle):
    assert main(["plot", *args, "--home", str(ws)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("specdyn: error:") and needle in err, err
    assert captured.out == ""


def test_cli_plot_esd_of_a_step_not_analysed_is_one_line(partial, capsys):
    args = ["plot", "esd", "cut", "--matrix", "layers.1", "--steps", "0,2000,4000"]
    assert main([*args, "--home", str(partial)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--steps: step 2000, 4000 are not analysed yet (done: 0, 10)" in err, err
