"""docs/notebook.md: every Python block runs, in order, on a store of fixtures/mlp-wd in
./specdyn-runs, and gives what the page says (issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import specdyn

pytest.importorskip("pandas")
pytest.importorskip("xarray")
pytest.importorskip("pyarrow")
pytest.importorskip("h5netcdf")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "notebook.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_notebook_page_runs(tmp_path, monkeypatch):
    blocks = _blocks()
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECDYN_HOME", raising=False)
    specdyn.analyze(ROOT / "fixtures" / "mlp-wd")  # into ./specdyn-runs, as the page says
    specdyn.analyze(ROOT / "fixtures" / "mlp-nowd")  # the comparison's second run
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), ns)  # noqa: S102 - the page's own examples
    with specdyn.open_run("mlp-wd") as run:
        steps = run.values.steps
        rank = run.values.metric("normalized_effective_rank")  # [T, M]
        matrices = run.values.matrices
        want = run.to_pandas("metrics")
    from_file = ns["rank_from_file"]  # the store opened by xarray, without specdyn
    assert from_file.dims == ("step", "matrix")
    assert from_file["step"].values.tolist() == steps.tolist()
    assert from_file["matrix"].values.tolist() == matrices
    np.testing.assert_array_equal(from_file.values, rank)
    assert ns["table"].shape == (len(steps), len(matrices))
    np.testing.assert_array_equal(ns["table"][matrices].to_numpy(), rank)
    assert ns["sigma1"].shape == (len(steps), len(matrices))
    assert list(ns["score"].columns) == [
        "layers.0.weight~layers.1.weight",
        "layers.1.weight~layers.2.weight",
        "layers.2.weight~layers.3.weight",
    ]
    assert len(ns["loss"]) > 0 and (tmp_path / "rank.png").stat().st_size > 0
    np.testing.assert_array_equal(ns["layer0"].values, rank[:, 0])
    assert ns["last"].dims == ("matrix", "sv") and ns["reference"] == steps[-1]
    assert ns["back"].equals(want)
    assert ns["nc_sigma"]["sigma"].dims == ("matrix", "step", "sv")
    with specdyn.open_run("mlp-nowd") as other:
        last_nowd = other.values.metric("normalized_effective_rank")[-1]
    final_rank = ns["final_rank"]  # runs × matrices, from the comparison's long table
    assert final_rank.index.tolist() == ["mlp-wd", "mlp-nowd"]
    np.testing.assert_array_equal(final_rank.loc["mlp-wd", matrices].to_numpy(), rank[-1])
    np.testing.assert_array_equal(final_rank.loc["mlp-nowd", matrices].to_numpy(), last_nowd)
    assert ns["top10"].index.tolist() == matrices and ns["top10"].between(0, 1).all()
    assert ns["side_by_side"].dims == ("run", "step", "matrix")
