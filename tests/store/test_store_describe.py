"""A store that describes itself (schema 4, issue 17 item 1): every dataset has a
description, its axes' names (and units where it has them), the step, matrix and pair
axes are HDF5 dimension scales, all of it covered by the static checksums; xarray opens
the spectral sections with named dims; a schema 3 store is read as before and upgraded
by the next writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import specdyn
from specdyn import VectorOptions
from specdyn.errors import StoreDamagedError
from specdyn.store import SCHEMA_VERSION, verify_store
from tests._stores import as_schema_3, store_contents

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mlp-wd"
STEPS = (0, 1000, 4000)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """Three checkpoints of the MLP fixture."""
    folder = tmp_path_factory.mktemp("ckpts") / "mlp"
    folder.mkdir()
    for step in STEPS:
        shutil.copy(FIXTURE / f"step_{step:06d}.pt", folder)
    return folder


@pytest.fixture(scope="module")
def store(run_folder, tmp_path_factory) -> Path:
    """A store with values, alignment, agreement and kept vectors."""
    home = tmp_path_factory.mktemp("home")
    specdyn.analyze(run_folder, home=home, vectors=VectorOptions(k=4, save_vectors="all"))
    return home / "mlp.h5"


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    out: dict[str, h5py.Dataset] = {}
    f.visititems(lambda n, o: out.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None)
    return out


def test_every_dataset_has_a_description_and_dims_and_the_root_names_the_docs(store):
    with h5py.File(store, "r", locking=False) as f:
        assert f.attrs["docs"] == "docs/store.md"
        assert int(f.attrs["schema_version"]) == SCHEMA_VERSION == 4
        datasets = _datasets(f)
        assert len(datasets) > 40
        for name, ds in datasets.items():
            assert isinstance(ds.attrs["description"], str) and ds.attrs["description"], name
            dims = [str(d) for d in ds.attrs["dims"]]
            assert len(dims) == ds.ndim and len(set(dims)) == ds.ndim, name
        assert list(f["metrics/entropy"].attrs["dims"]) == ["step", "matrix"]
        assert list(f["sigma/layers.0.weight"].attrs["dims"]) == ["step", "sv"]
        assert f["metrics/entropy"].attrs["units"] == "nat"
        assert f["steps/size"].attrs["units"] == "bytes"
        assert f["steps/step"].attrs["units"] == "step"
        assert "units" not in f["metrics/stable_rank"].attrs


def test_step_matrix_and_pair_axes_are_dimension_scales_of_the_stored_values(store):
    with h5py.File(store, "r", locking=False) as f:
        assert f["step"][()].tolist() == f["steps/step"][()].tolist() == list(STEPS)
        assert f["matrix"].asstr()[()].tolist() == f["matrices/name"].asstr()[()].tolist()
        assert f["pair"].asstr()[()].tolist() == f["pairs/name"].asstr()[()].tolist()
        for name in ("step", "matrix", "pair"):
            assert f[name].is_scale
        expected = {
            "metrics/entropy": ["/step", "/matrix"],
            "matrices/method": ["/step", "/matrix"],
            "alignment/score": ["/step", "/pair"],
            "agreement/score": ["/step", "/matrix"],
            "steps/done": ["/step"],
            "matrices/rank": ["/matrix"],
            "pairs/first": ["/pair"],
        }
        for path, scales in expected.items():
            ds = f[path]
            assert [ds.dims[i][0].name for i in range(ds.ndim)] == scales, path
        # an axis without a coordinate leaves the whole dataset unscaled (h5netcdf
        # refuses a mix), so σ keeps its plain axes
        assert all(len(d) == 0 for d in f["sigma/layers.0.weight"].dims)
        assert all(len(d) == 0 for d in f["matrices/shape"].dims)


def test_xarray_opens_the_spectral_sections_with_named_dims_and_coordinates(store, tmp_path):
    with specdyn.open_run(store) as run:
        steps, matrices = run.all_steps.tolist(), run.matrices
        pairs = [p["name"] for p in run.alignment.pairs]
        entropy = run.values.metric("entropy")  # done steps only: every step here
    with h5py.File(store, "r", locking=False) as f:
        stored_entropy = f["metrics/entropy"][()]
        stored_score = f["alignment/score"][()]
    # xarray opens files with HDF5's file locking, which a process cannot mix with the
    # lock-free opens of specdyn on one file (docs/store.md): it reads a copy
    store = Path(shutil.copy(store, tmp_path / "copy.h5"))
    coords = xr.open_dataset(store, engine="h5netcdf")
    assert coords["step"].values.tolist() == steps == list(STEPS)
    assert coords["matrix"].values.tolist() == matrices
    assert coords["pair"].values.tolist() == pairs
    metrics = xr.open_dataset(store, group="metrics", engine="h5netcdf")
    assert metrics["entropy"].dims == ("step", "matrix")
    assert set(metrics.data_vars) == set(run.metric_names)
    np.testing.assert_array_equal(metrics["entropy"].values, stored_entropy)
    labelled = metrics.assign_coords(coords.coords)
    one = labelled["entropy"].sel(step=1000, matrix=matrices[2])
    assert float(one) == stored_entropy[1, 2] == entropy[1, 2]
    alignment = xr.open_dataset(store, group="alignment", engine="h5netcdf")
    assert alignment["score"].dims == ("step", "pair") and alignment["done"].dims == ("step",)
    np.testing.assert_array_equal(alignment["score"].values, stored_score)
    agreement = xr.open_dataset(store, group="agreement", engine="h5netcdf")
    assert agreement["score"].dims == ("step", "matrix")
    # /steps/step names its own group's axis: that group gets its coordinate directly
    table = xr.open_dataset(store, group="steps", engine="h5netcdf")
    assert table["step"].values.tolist() == steps and table["done"].dims == ("step",)
    # σ has another R per matrix: no shared named axis, phony dims as before
    sigma = xr.open_dataset(store, group="sigma", engine="h5netcdf", phony_dims="sort")
    assert sigma["layers.0.weight"].dims[0].startswith("phony_dim_")
    for ds in (coords, metrics, alignment, agreement, table, sigma):
        ds.close()


def test_a_values_only_store_opens_as_a_tree_whose_groups_inherit_the_coordinates(
    run_folder, tmp_path
):
    # (a store with vectors has groups named matrix, /alignment/matrix and
    # /agreement/matrix, which a tree refuses beside the matrix coordinate: docs/store.md)
    specdyn.analyze(run_folder, home=tmp_path, vectors=None)
    path = tmp_path / "mlp.h5"
    with specdyn.open_run(path) as run:
        steps, matrices = run.all_steps.tolist(), run.matrices
        rank = run.values.metric("normalized_effective_rank")
    copy = shutil.copy(path, tmp_path / "copy.h5")
    tree = xr.open_datatree(copy, engine="h5netcdf", phony_dims="sort")
    metrics = tree["metrics"].to_dataset()
    assert metrics["step"].values.tolist() == steps == list(STEPS)
    assert metrics["matrix"].values.tolist() == matrices
    got = metrics["normalized_effective_rank"].sel(matrix=matrices[1]).values
    np.testing.assert_array_equal(got, rank[:, 1])
    tree.close()


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (
            lambda f: f["metrics/entropy"].attrs.__setitem__("description", "x"),
            "description does not match",
        ),
        (lambda f: f["steps/size"].attrs.__setitem__("units", "kB"), "units does not match"),
        (
            lambda f: f["sigma/layers.1.weight"].attrs.__setitem__("dims", ["sv", "step"]),
            "dims does not match",
        ),
        (lambda f: f.attrs.__setitem__("docs", "elsewhere.md"), "@/:docs does not match"),
        (lambda f: f["metrics/entropy"].attrs.__delitem__("description"), "description is missing"),
        (
            lambda f: f["checksums/static/digest"].attrs.__setitem__("description", "x"),
            "digest:description",
        ),
        (lambda f: f["metrics/entropy"].dims[1].detach_scale(f["matrix"]), "DIMENSION_LIST"),
        (lambda f: f["step"].__setitem__(1, 999), "step does not match"),
    ],
)
def test_a_damaged_attribute_or_scale_is_detected_like_other_built_content(
    store, tmp_path, edit, found
):
    path = tmp_path / "mlp.h5"
    shutil.copy(store, path)
    with h5py.File(path, "r+", locking=False) as f:
        edit(f)
    with pytest.raises(StoreDamagedError, match="damaged on disk") as caught:
        specdyn.open_run(path)
    assert found in str(caught.value) or any(found in d.what for d in verify_store(path).damage), (
        str(caught.value)
    )
    report = verify_store(path)
    assert not report.ok and any(found in d.what for d in report.damage)


def test_an_intact_store_verifies(store):
    assert verify_store(store).ok


def test_a_schema_3_store_is_read_as_before_and_upgraded_by_the_next_writer(
    store, run_folder, tmp_path
):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "mlp.h5"
    shutil.copy(store, path)
    as_schema_3(path)
    with h5py.File(path, "r", locking=False) as f:
        assert "step" not in f and "description" not in f["metrics/entropy"].attrs
    assert verify_store(path).ok
    with specdyn.open_run(path) as old, specdyn.open_run(store) as new:
        assert old.schema_version == 3
        for name in new.metric_names:
            np.testing.assert_array_equal(old.values.metric(name), new.values.metric(name))
        for m in new.matrices:
            np.testing.assert_array_equal(old.values.sigma(m), new.values.sigma(m))
        np.testing.assert_array_equal(old.alignment.score(), new.alignment.score())
    result = specdyn.analyze(run_folder, home=home)
    upgrade = [n.message for r in result.runs for n in r.notes if n.kind == "store-upgrade"]
    assert len(upgrade) == 1 and "schema 3 upgraded to 4" in upgrade[0], upgrade
    assert result.runs[0].steps_computed == []
    assert verify_store(path).ok
    assert store_contents(path) == store_contents(store)
