"""`compute.conv_metrics` / ``--conv-metrics weightwatcher`` (issue 18, item 3): the stored
heavy-tailed metrics of Conv2d weights follow WeightWatcher's per-tap ESD; the option is
recorded in the store, and a rerun that changes it is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import specdyn
from specdyn.analysis import ComputeOptions
from specdyn.cli import main
from specdyn.errors import SpecdynError, StoreMismatchError
from specdyn.metrics import (
    HEAVY_TAIL_NAMES,
    METRIC_NAMES,
    conv_heavy_tail_metrics,
    heavy_tail_metrics,
)
from specdyn.sources import discover

CNN = Path(__file__).resolve().parents[2] / "fixtures" / "cnn-lightning"
STEPS = "0,640"
CONV = ("conv1.weight", "conv2.weight", "conv3.weight")
PER_TAP = [n for n in HEAVY_TAIL_NAMES if n not in METRIC_NAMES]


def _analyze(home: Path, conv_metrics: str = "flattened"):
    compute = ComputeOptions(conv_metrics=conv_metrics)
    (run,) = specdyn.analyze(CNN, home=home, steps=STEPS, vectors=None, compute=compute).runs
    return run


def _weights(step: int, key: str) -> np.ndarray:
    """A parameter read from the fixture's checkpoint at `step` (specdyn's safe reader)."""
    (source,) = discover(CNN).runs
    (ckpt,) = [c for c in source.checkpoints if c.step == step]
    with ckpt.open() as reader:
        return reader.get(key).numpy()


def test_weightwatcher_conv_metrics_are_stored_per_tap(tmp_path, one_torch_thread):
    ww = _analyze(tmp_path / "ww", "weightwatcher")
    flat = _analyze(tmp_path / "flat")
    with specdyn.open_run(ww.store_path) as a, specdyn.open_run(flat.store_path) as b:
        assert a.options["conv_metrics"] == "weightwatcher" and "conv_metrics" not in b.options
        assert a.metric_names == b.metric_names
        for j, name in enumerate(a.matrices):
            info = a.values.matrix_info(name)
            for t, step in enumerate(a.steps.tolist()):
                if name in CONV:  # from the 4-D weight itself, tap by tap
                    want, _ = conv_heavy_tail_metrics(_weights(step, info["key"]))
                else:  # dense layers: the flattened (only) matrix, as by default
                    sigma = a.values.sigma(name)[t]
                    want = heavy_tail_metrics(sigma, tuple(info["shape"]))
                for metric in PER_TAP:
                    got = a.values.metric(metric)[t, j]
                    np.testing.assert_allclose(got, want[metric], rtol=1e-12, err_msg=metric)
            # everything else is the default analysis' (σ and the spectral metrics)
            np.testing.assert_array_equal(a.values.sigma(name), b.values.sigma(name))
            for metric in METRIC_NAMES:
                np.testing.assert_array_equal(
                    a.values.metric(metric)[:, j], b.values.metric(metric)[:, j]
                )
        # the two conventions are different objects: the conv numbers differ
        conv = [a.matrices.index(n) for n in CONV]
        assert not np.allclose(
            a.values.metric("log_norm")[:, conv], b.values.metric("log_norm")[:, conv]
        )


def test_changing_the_conv_convention_is_refused(tmp_path, one_torch_thread):
    home = tmp_path / "ws"
    _analyze(home, "weightwatcher")
    with pytest.raises(StoreMismatchError, match="conv_metrics"):
        _analyze(home)
    other = tmp_path / "other"
    _analyze(other)
    with pytest.raises(StoreMismatchError, match="conv_metrics"):
        _analyze(other, "weightwatcher")
    with pytest.raises(SpecdynError, match="conv_metrics 'tap': use flattened or weightwatcher"):
        _analyze(tmp_path / "bad", "tap")


def test_cli_conv_metrics_option(tmp_path, capsys, one_torch_thread):
    home = str(tmp_path / "ws")
    args = ["analyze", str(CNN), "--home", home, "--steps", STEPS, "--values-only", "-q"]
    assert main([*args, "--conv-metrics", "weightwatcher"]) == 0
    with specdyn.open_run("cnn-lightning", home=home) as run:
        assert run.options["conv_metrics"] == "weightwatcher"
    assert main([*args, "--conv-metrics", "taps"]) == 2
    assert "flattened or weightwatcher" in capsys.readouterr().err
