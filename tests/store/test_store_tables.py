"""Tidy tables of a store (`Run.to_pandas`, `Run.to_xarray`, `table_chunks`), checked
against the values read with plain h5py from the same file (issue 17)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import specdyn
from specdyn.errors import MissingExtraError, StoreError
from specdyn.store import table_chunks

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "neox-trainer"
# rows left not done in the second store: values (so every section), alignment, agreement
NOT_DONE, NOT_ALIGNED, NOT_AGREED = 2, 4, 6


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(a complete store of fixtures/neox-trainer with vectors, one with steps not done)."""
    home = tmp_path_factory.mktemp("tables")
    specdyn.analyze(FIXTURE, home=home)
    full = home / "neox-trainer.h5"
    partial = home / "partial.h5"
    shutil.copyfile(full, partial)
    # a writer killed after a step's data and before its flag leaves exactly this
    with h5py.File(partial, "r+", locking=False) as f:
        f["steps/done"][NOT_DONE] = 0
        f["alignment/done"][NOT_ALIGNED] = 0
        f["agreement/done"][NOT_AGREED] = 0
    return full, partial


def _strs(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def _expected(path: Path, section: str) -> list[tuple]:
    """The rows of a section, built with h5py and plain loops (docs/store.md)."""
    rows = []
    with h5py.File(path, "r", locking=False) as f:
        run = f.attrs["run_name"]
        run = run.decode() if isinstance(run, bytes) else str(run)
        steps = f["steps/step"][()]
        done = f["steps/done"][()] == 1
        names = _strs(f["matrices/name"])
        if section == "metrics":
            kinds = _strs(f["matrices/kind"])
            epochs = f["steps/epoch"][()]
            import json

            metrics = json.loads(f.attrs["metric_names"])
            for t in range(len(steps)):
                if done[t]:
                    for metric in metrics:
                        for j, name in enumerate(names):
                            value = f["metrics/" + metric][t, j]
                            rows.append((run, steps[t], epochs[t], name, kinds[j], metric, value))
        elif section in ("sigma", "agreement", "alignment"):
            if section == "alignment":
                keys, prefix = _strs(f["pairs/name"]), "alignment/diagonal/"
            else:
                keys = names
                prefix = "sigma/" if section == "sigma" else "agreement/diagonal/"
            ok = done if section == "sigma" else done & (f[section + "/done"][()] == 1)
            for key in keys:
                data = f[prefix + key][()]
                for t in range(len(steps)):
                    if ok[t]:
                        rows += [(run, key, steps[t], i, v) for i, v in enumerate(data[t])]
        else:
            metrics = _strs(f["training/name"])
            values = f["training/values"][()]
            for n, metric in enumerate(metrics):
                for s, v in zip(f["training/step"][()], values[n], strict=True):
                    if not np.isnan(v):
                        rows.append((run, s, metric, v))
    return rows


def _rows(df) -> list[tuple]:
    return list(df.itertuples(index=False, name=None))


def _same(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a[:-1] == tuple(b[:-1])
        assert a[-1] == b[-1] or (np.isnan(a[-1]) and np.isnan(b[-1]))


@pytest.mark.parametrize("section", ["metrics", "sigma", "alignment", "agreement", "training"])
@pytest.mark.parametrize("which", ["full", "partial"])
def test_to_pandas_equals_the_values_read_with_h5py(stores, section, which):
    path = stores[0] if which == "full" else stores[1]
    with specdyn.open_run(path) as run:
        df = run.to_pandas(section)
    want = _expected(path, section)
    assert want, "the fixture has rows in every section"
    _same(_rows(df), want)
    assert not df.iloc[:, -1].isna().all()


def test_only_done_rows_are_in_the_tables(stores):
    full, partial = stores
    with h5py.File(partial, "r", locking=False) as f:
        steps = f["steps/step"][()]
    with specdyn.open_run(partial) as run:
        metrics, sigma = run.to_pandas("metrics"), run.to_pandas("sigma")
        alignment, agreement = run.to_pandas("alignment"), run.to_pandas("agreement")
    assert steps[NOT_DONE] not in set(metrics["step"]) | set(sigma["step"])
    assert set(alignment["step"]) == set(steps) - {steps[NOT_DONE], steps[NOT_ALIGNED]}
    assert set(agreement["step"]) == set(steps) - {steps[NOT_DONE], steps[NOT_AGREED]}
    with specdyn.open_run(full) as run:
        assert len(run.to_pandas("sigma")) == len(sigma) * len(steps) // (len(steps) - 1)


def test_columns_are_typed_and_strings_are_str(stores):
    with specdyn.open_run(stores[0]) as run:
        df = run.to_pandas("metrics")
        matrices = run.values.matrices
    assert list(df.columns) == ["run", "step", "epoch", "matrix", "kind", "metric", "value"]
    for name in ("run", "matrix", "kind", "metric"):
        assert isinstance(df[name].dtype, pd.CategoricalDtype)
        assert all(type(c) is str for c in df[name].cat.categories)
    # forward order, as in the store's matrix table
    assert list(df["matrix"].cat.categories) == matrices
    assert df["step"].dtype == np.int64 and df["value"].dtype == np.float64


def test_chunks_concatenate_to_the_whole_table(stores):
    with specdyn.open_run(stores[1]) as run:
        whole = run.to_pandas("sigma")
        chunks = list(table_chunks(run, "sigma", chunk_rows=100))
    assert len(chunks) > 10 and max(c.rows for c in chunks) <= 100 + 32
    joined = [
        (c.strings("run")[k], c.strings("matrix")[k], c.columns["step"][k], c.columns["i"][k])
        for c in chunks
        for k in range(c.rows)
    ]
    assert joined == [r[:4] for r in _rows(whole)]
    values = np.concatenate([c.columns["sigma"] for c in chunks])
    np.testing.assert_array_equal(values, whole["sigma"].to_numpy())


def test_to_xarray_has_named_dims_and_coordinates(stores):
    path = stores[1]
    with specdyn.open_run(path) as run:
        metrics, sigma = run.to_xarray("metrics"), run.to_xarray("sigma")
        alignment, agreement = run.to_xarray("alignment"), run.to_xarray("agreement")
        training = run.to_xarray("training")
    with h5py.File(path, "r", locking=False) as f:
        done = f["steps/done"][()] == 1
        steps = f["steps/step"][()]
        names = _strs(f["matrices/name"])
        pairs = _strs(f["pairs/name"])
        rank = f["metrics/normalized_effective_rank"][()][done]
        sig = f["sigma/" + names[3]][()][done]
        aligned = done & (f["alignment/done"][()] == 1)
        diag = f["alignment/diagonal/" + pairs[2]][()][aligned]
        agreed = done & (f["agreement/done"][()] == 1)
        score = f["agreement/score"][()][agreed]
        loss = f["training/values"][()][_strs(f["training/name"]).index("loss")]
    assert metrics["normalized_effective_rank"].dims == ("step", "matrix")
    np.testing.assert_array_equal(metrics["step"].values, steps[done])
    assert list(metrics["matrix"].values) == names
    np.testing.assert_array_equal(metrics["normalized_effective_rank"].values, rank)
    assert sigma["sigma"].dims == ("matrix", "step", "sv")
    np.testing.assert_array_equal(sigma["sigma"].sel(matrix=names[3]).values, sig)
    assert alignment["diagonal"].dims == ("pair", "step", "k")
    np.testing.assert_array_equal(alignment["step"].values, steps[aligned])
    k = int(alignment["length"].sel(pair=pairs[2]))
    got = alignment["diagonal"].sel(pair=pairs[2]).values
    np.testing.assert_array_equal(got[:, :k], diag)
    assert np.isnan(got[:, k:]).all()  # beyond the pair's diagonal length
    np.testing.assert_array_equal(agreement["score"].values, score)
    np.testing.assert_array_equal(agreement["step"].values, steps[agreed])
    assert training["value"].dims == ("metric", "step")
    np.testing.assert_array_equal(training["value"].sel(metric="loss").values, loss)


def test_a_values_only_store_has_no_alignment_table(tmp_path):
    specdyn.analyze(FIXTURE, home=tmp_path, steps="0,1500", vectors=None)
    with specdyn.open_run("neox-trainer", home=tmp_path) as run:
        with pytest.raises(StoreError, match="has no alignment section"):
            run.to_pandas("alignment")
        with pytest.raises(StoreError, match="no section 'loss'"):
            run.to_xarray("loss")
        # 2 steps × every metric × 16 matrices
        assert len(run.to_pandas("metrics")) == 2 * len(run.values.metric_names) * 16
        assert len(run.values.metric_names) >= 7


@pytest.mark.parametrize(("module", "method"), [("pandas", "to_pandas"), ("xarray", "to_xarray")])
def test_a_missing_extra_is_named_in_one_line(stores, monkeypatch, module, method):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with specdyn.open_run(stores[0]) as run:
        with pytest.raises(MissingExtraError) as info:
            getattr(run, method)("metrics")
    assert (info.value.module, info.value.extra) == (module, module)
    text = str(info.value)
    assert f"pip install 'specdyn[{module}]'" in text and "\n" not in text


def test_a_store_with_no_step_done_gives_empty_typed_tables(stores, tmp_path):
    path = tmp_path / "empty.h5"
    shutil.copyfile(stores[0], path)
    with h5py.File(path, "r+", locking=False) as f:
        f["steps/done"][:] = 0
    with specdyn.open_run(path) as run:
        sigma, metrics = run.to_pandas("sigma"), run.to_pandas("metrics")
        assert sigma.empty and list(sigma.columns) == ["run", "matrix", "step", "i", "sigma"]
        assert list(sigma["matrix"].cat.categories) == run.values.matrices
        assert metrics.empty and sigma["step"].dtype == np.int64
        assert dict(run.to_xarray("sigma").sizes) == {"matrix": 16, "step": 0, "sv": 32}
        specdyn.export(run, out=tmp_path / "sigma.parquet", section="sigma")
        assert pd.read_parquet(tmp_path / "sigma.parquet").empty
        assert len(run.to_pandas("training")) > 0  # its own axis, no done flags


def test_to_datatree_holds_every_section_as_to_xarray_gives_it(stores):
    path = stores[1]
    with specdyn.open_run(path) as run:
        tree = run.to_datatree()
        want = {
            s: run.to_xarray(s) for s in ("metrics", "sigma", "alignment", "agreement", "training")
        }
        name = run.name
    assert tree.name == name and sorted(tree.children) == sorted(want)
    for section, data in want.items():
        xr.testing.assert_identical(tree[section].to_dataset(), data)
