"""A comparison store as tables (`Comparison.to_pandas`, `Comparison.to_xarray`), checked
against the values read with plain h5py from the same file (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from _ckpt_factory import write_state_run

import specdyn
from specdyn.comparison import BarrierOptions, compare, open_comparison
from specdyn.errors import StoreError

pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")

# fc3 has rank 6 < k = 8: its diagonals end in padding
SHAPES = {"fc1.weight": (12, 10), "fc2.weight": (10, 12), "fc3.weight": (6, 10)}
K = 8


def _states(seed: int, steps) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {s: {n: rng.standard_normal(shape) for n, shape in SHAPES.items()} for s in steps}


def _loss(state) -> float:
    return -float(sum((t.double() ** 2).sum() for t in state.values()))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(a two-run comparison with unequal steps and a barrier; a split comparison whose
    split step 9 has no pair of different trunks; the first with a NaN value at a step
    run b holds; the first without has_step and length, as written before them)."""
    root = tmp_path_factory.mktemp("cmp-tables")
    home = root / "home"
    a = write_state_run(root / "a", _states(0, (0, 10, 20)))
    b = write_state_run(root / "b", _states(1, (0, 10, 30, 40)))
    runs = compare([a, b], home=home, k=K, barrier=BarrierOptions(_loss, points=3)).path
    folders = []
    for trunk, seed, splits in (("ta", 1, (0, 9)), ("tb", 2, (0,))):
        for split in splits:
            for order in (1, 2):
                base = _states(seed, (split,))[split]
                noise = np.random.default_rng(100 * seed + 10 * split + order)
                end = {n: w + 0.05 * noise.standard_normal(w.shape) for n, w in base.items()}
                folders.append(
                    write_state_run(
                        root / trunk / f"branch-split{split}-order{order}", {split: base, 50: end}
                    )
                )
    split = compare(folders, by="split", home=home, k=K).path
    nan = root / "nan.h5"
    shutil.copyfile(runs, nan)
    with h5py.File(nan, "r+") as f:
        f["metrics/stable_rank"][1, 2, 3] = np.nan  # run b, fc3, step 30: held
    old = root / "old.h5"
    shutil.copyfile(runs, old)
    with h5py.File(old, "r+") as f:
        del f["runs/has_step"], f["matrices/length"]
    return runs, split, nan, old


def _strs(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def _expected(path: Path, section: str) -> list[tuple]:
    """The rows of a section, built with h5py and plain loops (docs/compare.md)."""
    rows: list[tuple] = []
    with h5py.File(path, "r") as f:
        labels = _strs(f["runs/label"])
        matrices = _strs(f["matrices/name"])
        steps = f["steps"][()].tolist()
        k = int(f.attrs["k"])
        ranks = {n: min(s) for n, s in SHAPES.items()}
        length = [min(k, ranks[m]) for m in matrices]
        pairs = list(
            zip(f["agreement/pair_a"][()].tolist(), f["agreement/pair_b"][()].tolist(), strict=True)
        )
        if section == "metrics":
            for r, label in enumerate(labels):
                held = set(_run_steps(r))
                for t, step in enumerate(steps):
                    if step not in held:
                        continue
                    for metric in sorted(f["metrics"]):
                        for j, m in enumerate(matrices):
                            rows.append((label, step, m, metric, f["metrics"][metric][r, j, t]))
        elif section in ("agreement", "agreement_score"):
            for q, (a, b) in enumerate(pairs):
                g = f[f"agreement/{q}"]
                sources = _strs(g["source"])
                n = len(g["step_a"])
                for s in range(n):
                    head = (f"{labels[a]}~{labels[b]}", labels[a], labels[b])
                    head += (g["step_a"][s], g["step_b"][s], s == n - 1, sources[s])
                    for j, m in enumerate(matrices):
                        if section == "agreement_score":
                            rows.append(head + (m, g["score"][s, j]))
                        else:
                            rows += [
                                head + (m, i, g["diagonal"][s, j, i]) for i in range(length[j])
                            ]
        elif section in ("split", "split_diagonal"):
            for g, split in enumerate(f["split/steps"][()].tolist()):
                for which in ("same", "other"):
                    n = int(f[f"split/{which}/pairs"][g])
                    if n == 0:
                        continue
                    for j, m in enumerate(matrices):
                        if section == "split":
                            rows.append((split, which, n, m, f[f"split/{which}/score"][g, j]))
                        else:
                            d = f[f"split/{which}/diagonal"]
                            rows += [(split, which, n, m, i, d[g, j, i]) for i in range(length[j])]
        elif section == "barrier":
            alpha = f["barrier/alpha"][()]
            for q, (a, b) in enumerate(f["barrier/pair"][()].tolist()):
                for p, x in enumerate(alpha):
                    name = f"{labels[a]}~{labels[b]}"
                    rows.append(
                        (
                            name,
                            labels[a],
                            labels[b],
                            x,
                            f["barrier/loss"][q, p],
                            f["barrier/barrier"][q],
                        )
                    )
    return rows


def _run_steps(r: int) -> list[int]:
    """The steps the fixture's runs were saved at (both comparisons)."""
    return [[0, 10, 20], [0, 10, 30, 40]][r]


def _rows(frame) -> list[tuple]:
    return [tuple(row) for row in frame.itertuples(index=False)]


def _same(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        for x, y in zip(g, w, strict=True):
            if isinstance(y, float | np.floating):
                assert (np.isnan(x) and np.isnan(y)) or x == y, (g, w)
            else:
                assert x == y, (g, w)


@pytest.mark.parametrize("section", ["metrics", "agreement", "agreement_score", "barrier"])
def test_two_run_tables_equal_h5py(stores, section):
    runs, _split, _nan, old = stores
    want = _expected(runs, section)
    assert want  # the section has rows to compare
    for path in (runs, old):  # an older file: has_step and length inferred
        with open_comparison(path) as cmp:
            frame = cmp.to_pandas(section)
        assert tuple(frame.columns) == specdyn.store.COMPARISON_COLUMNS[section]
        _same(_rows(frame), want)


@pytest.mark.parametrize("section", ["split", "split_diagonal"])
def test_split_tables_equal_h5py_without_empty_groups(stores, section):
    _runs, split, _nan, _old = stores
    with open_comparison(split) as cmp:
        frame = cmp.to_pandas(section)
        summary = cmp.split_summary()
    assert summary["other_pairs"].tolist() == [4, 0]  # split 9: no pair of two trunks
    _same(_rows(frame), _expected(split, section))
    assert not frame[(frame["split"] == 9) & (frame["trunks"] == "other")].shape[0]
    assert frame["score" if section == "split" else "value"].notna().all()


def test_metrics_have_no_padding_rows_but_keep_nan_values(stores):
    runs, _split, nan, _old = stores
    with open_comparison(runs) as cmp:
        frame = cmp.to_pandas("metrics")
        steps = cmp.to_pandas("steps")
        padded = cmp.metric("stable_rank")
    assert np.isnan(padded).any()  # the file pads: step 20 is run a's only, 30, 40 b's
    # 3 + 4 steps held, every metric of every matrix; the heavy-tail metrics of fc3 (R = 6)
    # are NaN values, kept; the other metrics have no NaN
    assert len(frame) == 7 * len(cmp.metric_names) * len(SHAPES)
    assert frame[frame["metric"] == "stable_rank"]["value"].notna().all()
    assert frame[frame["matrix"] != "fc3.weight"]["value"].notna().all()
    held = steps.groupby("run", observed=True)["step"].apply(list).to_dict()
    assert held == {"a": [0, 10, 20], "b": [0, 10, 30, 40]}
    with open_comparison(nan) as cmp:
        with_nan = cmp.to_pandas("metrics")
    holes = with_nan[with_nan["metric"] == "stable_rank"]
    assert len(with_nan) == len(frame) and holes["value"].isna().sum() == 1
    hole = holes[holes["value"].isna()].iloc[0]
    assert (hole["run"], hole["step"], hole["matrix"], hole["metric"]) == (
        "b", 30, "fc3.weight", "stable_rank",
    )  # fmt: skip


def test_dtypes_categories_and_runs_table(stores):
    runs, split, _nan, _old = stores
    with open_comparison(runs) as cmp:
        metrics = cmp.to_pandas("metrics")
        agreement = cmp.to_pandas("agreement")
        table = cmp.to_pandas("runs")
        assert cmp.sections == [
            "runs",
            "steps",
            "metrics",
            "agreement",
            "agreement_score",
            "barrier",
        ]
        with pytest.raises(StoreError, match="has no split section"):
            cmp.to_pandas("split")
        with pytest.raises(StoreError, match="no such section of a comparison"):
            cmp.to_pandas("sigma")
    assert metrics["step"].dtype == np.int64 and metrics["value"].dtype == np.float64
    for name in ("run", "matrix", "metric"):
        assert isinstance(metrics[name].dtype, pd.CategoricalDtype)
    assert list(metrics["matrix"].cat.categories) == list(SHAPES)
    assert agreement["i"].dtype == np.int32 and agreement["endpoint"].dtype == bool
    assert list(agreement["pair"].cat.categories) == ["a~b"]
    # the last row is the endpoints: step 20 of a against step 40 of b
    ends = agreement[agreement["endpoint"]]
    assert set(zip(ends["step_a"], ends["step_b"], strict=True)) == {(20, 40)}
    assert agreement.groupby("matrix", observed=True)["i"].max().to_dict() == {
        "fc1.weight": K - 1, "fc2.weight": K - 1, "fc3.weight": 5,
    }  # fmt: skip
    assert table["run"].tolist() == ["a", "b"] and table["last_step"].tolist() == [20, 40]
    assert table["split"].tolist() == [-1, -1]
    with open_comparison(split) as cmp:
        table = cmp.to_pandas("runs")
    assert sorted(table["split"].tolist()) == [0, 0, 0, 0, 9, 9]


def test_to_xarray_named_dims_and_coords(stores):
    runs, split, _nan, _old = stores
    with open_comparison(runs) as cmp:
        ds = cmp.to_xarray("metrics")
        agr = cmp.to_xarray("agreement")
        bar = cmp.to_xarray("barrier")
        rank = cmp.metric("normalized_effective_rank")
        first = cmp.agreement("a", "b")
        barriers = cmp.barriers()
    assert ds["normalized_effective_rank"].dims == ("run", "step", "matrix")
    assert ds["run"].values.tolist() == ["a", "b"]
    assert ds["step"].values.tolist() == [0, 10, 20, 30, 40]
    assert ds["matrix"].values.tolist() == list(SHAPES)
    np.testing.assert_array_equal(ds["normalized_effective_rank"].values, rank.transpose(0, 2, 1))
    assert ds["has_step"].sel(run="a").values.tolist() == [True, True, True, False, False]
    assert ds["length"].values.tolist() == [K, K, 6]
    assert agr["diagonal"].dims == ("pair", "row", "matrix", "k")
    np.testing.assert_array_equal(agr["diagonal"].sel(pair="a~b").values, first["diagonal"])
    assert agr["step_b"].sel(pair="a~b").values.tolist() == first["step_b"].tolist()
    assert bar["loss"].dims == ("pair", "alpha") and bar["alpha"].values.tolist() == [0, 0.5, 1]
    np.testing.assert_array_equal(bar["barrier"].values, barriers["barrier"])
    with open_comparison(split) as cmp:
        sp = cmp.to_xarray("split")
        summary = cmp.split_summary()
    assert sp["score"].dims == ("trunks", "split", "matrix")
    assert sp["trunks"].values.tolist() == ["same", "other"]
    assert sp["split"].values.tolist() == [0, 9]
    np.testing.assert_array_equal(sp["score"].sel(trunks="other").values, summary["other_score"])
    assert sp["pairs"].sel(trunks="same").values.tolist() == summary["same_pairs"].tolist()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_of_a_comparison_reads_back_equal(stores, tmp_path, fmt):
    runs, _split, _nan, _old = stores
    with open_comparison(runs) as cmp:
        report = specdyn.export(comparison=cmp, out=tmp_path / "tables", format=fmt)
        assert report.comparison == "a-vs-b" and report.sections == cmp.sections
        for entry in report.files:
            section = entry.sections[0]
            want = cmp.to_pandas(section)
            if fmt == "parquet":
                back = pd.read_parquet(entry.path)
                pd.testing.assert_frame_equal(back, want)
            else:
                strings = [
                    n for n in want.columns if isinstance(want[n].dtype, pd.CategoricalDtype)
                ]
                back = pd.read_csv(entry.path, converters=dict.fromkeys(strings, str))  # "" kept
                assert list(back.columns) == list(want.columns) and len(back) == len(want)
                for name in want.columns:
                    got, exp = back[name].to_numpy(), want[name].to_numpy()
                    if isinstance(want[name].dtype, pd.CategoricalDtype):
                        exp = want[name].astype(str).to_numpy()
                        # pandas reads "" (the trunk outside split mode) as NaN
                        column = back[name].astype(object)
                        got = column.where(column.notna(), "").astype(str).to_numpy()
                    np.testing.assert_array_equal(got, exp, err_msg=f"{section}.{name}")
            assert entry.rows == len(want)


def test_export_of_a_comparison_to_netcdf_and_from_the_cli(stores, tmp_path, capsys):
    pytest.importorskip("h5netcdf")
    from specdyn.cli import main

    runs, _split, _nan, _old = stores
    out = tmp_path / "cmp.nc"
    args = ["export", "--comparison", str(runs), "--format", "netcdf", "--out", str(out)]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["comparison"] == "a-vs-b"
    assert summary["sections"] == ["runs", "metrics", "agreement", "barrier"]
    with open_comparison(runs) as cmp:
        want = cmp.to_xarray("metrics")
    with xr.open_dataset(out, group="a-vs-b/metrics", engine="h5netcdf") as back:
        assert back["stable_rank"].dims == ("run", "step", "matrix")
        np.testing.assert_array_equal(back["stable_rank"].values, want["stable_rank"].values)
    # runs and a comparison together: one line, non-zero
    assert main(["export", "a", "--comparison", str(runs), "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "specdyn: error: give runs or --comparison, not both"
    ]


def test_to_datatree_holds_the_labelled_sections(stores):
    runs, split, _nan, _old = stores
    for path, sections in ((runs, {"runs", "metrics", "agreement", "barrier"}), (split, None)):
        with open_comparison(path) as cmp:
            tree = cmp.to_datatree()
            held = [
                s for s in cmp.sections if s in ("runs", "metrics", "agreement", "split", "barrier")
            ]
            assert set(held) == sections if sections else {"metrics", "split"} <= set(held)
            assert tree.name == cmp.name and sorted(tree.children) == sorted(held)
            for section in held:
                xr.testing.assert_identical(tree[section].to_dataset(), cmp.to_xarray(section))
