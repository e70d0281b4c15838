"""Conv alignment definitions (issue 23): options in the pairs file, what the store records
about them, and what a resume does when the stored definition is not the requested one.

The numbers of the default (the paper's flattened-kernel definition) are checked against
an independent numpy reimplementation in tests/test_paper_fidelity.py; here the concern
is that every option is honoured, recorded and compared, and that `basis = "slice"` is
exactly what specdyn computed before the change.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _stores import strip_checksums
from torch import nn

import specdyn
from specdyn import MatrixSelection, VectorOptions
from specdyn.cli import main
from specdyn.metrics import METRIC_NAMES, STORED_METRIC_NAMES
from specdyn.pairs import PairsFileError, pairs_for

ROOT = Path(__file__).resolve().parents[2]
CNN = ROOT / "fixtures" / "cnn-lightning"
# A store written by specdyn before definitions were recorded (tests/assets/README.md).
OLD_STORE = ROOT / "tests" / "assets" / "cnn-before-conv-definitions.h5"
OLD_STEPS = "0,640"
OLD_MATRICES = MatrixSelection(include=("conv",))
OLD_VECTORS = dict(save_vectors="none")
CONV_PAIRS = ("conv1.weight~conv2.weight", "conv2.weight~conv3.weight")


def _pairs_file(tmp_path: Path, text: str, name: str = "pairs.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _analyze(home: Path, *, pairs_file: Path | None = None, name: str = "cnn", **vectors):
    """cnn-lightning analysed into `home`; returns (RunAnalysis, store path)."""
    options = VectorOptions(pairs_file=str(pairs_file) if pairs_file else None, **vectors)
    result = specdyn.analyze(CNN, home=home, name=name, vectors=options)
    (run,) = result.runs
    return run, Path(run.store_path)


def _sections(path: Path) -> dict[str, np.ndarray]:
    """Every σ, metric, agreement and alignment dataset of a store, by path."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[0] in (
                "sigma",
                "metrics",
                "agreement",
                "alignment",
            ):
                out[name] = obj[()]

        f.visititems(visit)
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN equal to NaN)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _same_as_committed(key: str, committed: np.ndarray, now: np.ndarray) -> bool:
    """Equality with a store committed from another machine: bit for bit, but for the
    metrics through np.exp (effective ranks), whose SIMD kernels differ by an ulp between
    CPUs (AVX-512 vs AVX2): equal within 4 ulps there."""
    if key.split("/")[-1] in ("effective_rank", "normalized_effective_rank"):
        return committed.shape == now.shape and bool(
            np.all(np.abs(committed - now) <= 4 * np.spacing(np.abs(committed)))
        )
    return _same(committed, now)


# ------------------------------------------------------------------ the pairs file


def test_default_definition_recorded_per_conv_pair():
    plan = pairs_for(CNN)
    by_name = {p.name: p for p in plan.pairs}
    for name in CONV_PAIRS:
        pair = by_name[name]
        assert pair.options == {"tap": [1, 1], "basis": "kernel", "normalize": False}
        # the whole kernel is decomposed (no slice), its v cut to the centre tap's rows
        assert pair.second.ops == () and pair.second.cut[0][0] == "rows"
        assert pair.second.dim == pair.first.dim
    assert by_name["fc1.weight~fc2.weight"].options == {}


def test_global_conv_table_and_per_pair_override(tmp_path):
    f = _pairs_file(
        tmp_path,
        '[conv]\nbasis = "slice"\n\n[[pair]]\nfirst = "conv2.weight"\nsecond = "conv3.weight"\n'
        'basis = "kernel"\ntap = "all"\nnormalize = true\n',
    )
    plan = pairs_for(CNN, pairs_file=f)
    by_name = {p.name: p for p in plan.pairs}
    first = by_name["conv1.weight~conv2.weight"]  # a preset pair, under [conv]
    assert first.options == {"tap": [1, 1], "basis": "slice", "normalize": False}
    assert first.second.ops == (("cols", 4, 72, 9),) and first.second.cut == ()
    second = by_name["conv2.weight~conv3.weight"]  # replaced by the [[pair]] entry
    assert second.rule == "file"
    assert second.options == {"tap": "all", "basis": "kernel", "normalize": True}
    assert second.second.cut == (("row_taps", 9),) and second.second.blocks == 9
    assert second.kept_blocks == 9 and second.second.normalize


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[conv]\nbasis = "paper"', "basis 'paper': use \"kernel\""),
        ('[conv]\nbasis = "slice"\nnormalize = true', "normalize = true applies to basis"),
        ("[conv]\nnormalize = 1", "normalize must be true or false"),
        ('[conv]\ntap = "edge"', 'tap \'edge\': write "centre", "all", "mean"'),
        ("[conv]\ntap = [1, 1, 1]", "does not fit kernel 3×3 of conv2.weight"),
        ("[conv]\nstride = 2", "unknown option 'stride'"),
        ("conv = 3", "'conv' must be a table"),
        (
            '[[pair]]\nfirst = "fc1.weight"\nsecond = "fc2.weight"\nbasis = "slice"',
            "basis: neither operand is a convolution",
        ),
        (
            '[[pair]]\nfirst = "conv2.weight"\nsecond = "conv3.weight"\ntap = "mean"\nheads = 2',
            'tap = "mean" cannot be combined with half or heads',
        ),
    ],
)
def test_bad_conv_options_are_one_line_errors(tmp_path, text, message):
    f = _pairs_file(tmp_path, text)
    with pytest.raises(PairsFileError) as info:
        pairs_for(CNN, pairs_file=f)
    err = str(info.value)
    assert message in err and str(f) in err and "\n" not in err


def test_half_of_a_conv_operand_counts_the_tapped_columns(tmp_path):
    """`half` splits what is left after the tap (c_in columns), not the whole view."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(8, 5, 3))
    torch.save(net.state_dict(), folder / "s.pt")
    f = _pairs_file(
        tmp_path,
        'replace = true\n[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\nhalf = "reverse"\n'
        '[conv]\nbasis = "slice"\n',
    )
    (pair,) = pairs_for(folder, pairs_file=f).pairs
    assert pair.second.ops == (("cols", 4, 72, 9), ("cols", 4, 8, 1))
    assert pair.second.dim == pair.first.dim == 4


# ------------------------------------------------------------------ taps and normalisation


@pytest.fixture(scope="module")
def cnn_default(tmp_path_factory):
    home = tmp_path_factory.mktemp("conv-default")
    run, path = _analyze(home, save_vectors="all")
    with specdyn.open_run(path) as store:
        yield store


def test_tap_all_keeps_every_tap_and_mean_keeps_their_mean(tmp_path, cnn_default):
    all_run, all_path = _analyze(
        tmp_path / "all", pairs_file=_pairs_file(tmp_path, '[conv]\ntap = "all"\n')
    )
    mean_run, mean_path = _analyze(
        tmp_path / "mean", pairs_file=_pairs_file(tmp_path, '[conv]\ntap = "mean"\n', "m.toml")
    )
    with specdyn.open_run(all_path) as every, specdyn.open_run(mean_path) as mean:
        blocks = {p["name"]: p["blocks"] for p in every.pairs}
        mean_blocks = {p["name"]: p["blocks"] for p in mean.pairs}
        for name in CONV_PAIRS:
            assert blocks[name] == 9 and mean_blocks[name] == 1
            heads = every.alignment_heads(name)  # [T, 9 taps, k]
            assert heads.shape[1] == 9
            np.testing.assert_allclose(
                every.alignment(name), heads.mean(axis=1), rtol=0, atol=1e-15
            )
            # tap 4 (flat row-major index of (1, 1) in a 3×3 kernel) is the default's centre
            np.testing.assert_allclose(heads[:, 4], cnn_default.alignment(name), rtol=0, atol=1e-15)
            # "mean" stores only the mean, the same numbers as "all"'s diagonal
            with h5py.File(mean_path, "r", locking=False) as f:
                assert f"alignment/heads/{name}" not in f
            np.testing.assert_allclose(
                mean.alignment(name), every.alignment(name), rtol=0, atol=1e-15
            )
            np.testing.assert_allclose(
                every.alignment_score(name),
                heads[:, :, :10].mean(axis=(1, 2)),
                rtol=0,
                atol=1e-15,
            )


def test_normalize_divides_by_the_cut_vectors_norm(tmp_path, cnn_default):
    run, path = _analyze(
        tmp_path / "n", pairs_file=_pairs_file(tmp_path, "[conv]\nnormalize = true\n")
    )
    with specdyn.open_run(path) as normalized:
        steps = normalized.steps.tolist()
        for name in CONV_PAIRS:
            second = name.split("~")[1]
            plain = cnn_default.alignment(name)
            got = normalized.alignment(name)
            k = got.shape[1]
            for t, step in enumerate(steps):
                # the kept float32 v of the flattened kernel, reshaped (c_in, 3, 3), centre tap
                _, v = cnn_default.vectors(second, step)
                c_in = v.shape[0] // 9
                norms = np.linalg.norm(v.reshape(c_in, 3, 3, -1)[:, 1, 1, :k], axis=0)
                assert np.all(norms < 1)
                np.testing.assert_allclose(got[t] * norms, plain[t], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ stores and resumes


def test_slice_basis_reproduces_the_pre_change_store_bit_for_bit(tmp_path):
    slice_file = _pairs_file(tmp_path, '[conv]\nbasis = "slice"\n')
    result = specdyn.analyze(
        CNN,
        home=tmp_path,
        name="again",
        steps=OLD_STEPS,
        matrices=OLD_MATRICES,
        vectors=VectorOptions(pairs_file=str(slice_file), **OLD_VECTORS),
    )
    new = _sections(Path(result.runs[0].store_path))
    old = _sections(OLD_STORE)
    assert any(k.startswith("alignment/diagonal/") for k in old)
    # the heavy-tailed metrics are stored since the committed store was made
    added = {f"metrics/{name}" for name in STORED_METRIC_NAMES if name not in METRIC_NAMES}
    assert set(new) == set(old) | added and not added & set(old)
    different = [k for k in old if not _same_as_committed(k, old[k], new[k])]
    assert different == []


def _resumable_copy(src: Path, home: Path, name: str) -> Path:
    """`src` copied into `home` as run `name`, its source folder set to this checkout's."""
    home.mkdir(parents=True, exist_ok=True)
    dst = home / f"{name}.h5"
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        f.attrs["source_root"] = str(CNN)
        f.attrs["run_name"] = name
    return dst


def test_pre_change_store_reads_as_slice_and_resumes_to_the_new_default(tmp_path):
    path = _resumable_copy(OLD_STORE, tmp_path / "ws", "cnn-old")
    with specdyn.open_run(path) as before:
        definitions = {p["name"]: p["definition"] for p in before.pairs}
    assert definitions == {
        name: {"basis": "slice", "tap": [1, 1], "normalize": False} for name in CONV_PAIRS
    }
    old = _sections(path)
    result = specdyn.analyze(
        CNN,
        home=tmp_path / "ws",
        name="cnn-old",
        steps=OLD_STEPS,
        matrices=OLD_MATRICES,
        vectors=VectorOptions(**OLD_VECTORS),
    )
    (run,) = result.runs
    lines = [n.message for n in run.notes if "conv alignment definition" in n.message]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "predates recorded definitions, read as basis slice" in lines[0]
    assert "basis slice, tap [1, 1] → basis kernel, tap [1, 1]" in lines[0]
    assert run.steps_computed == [] and sorted(run.steps_with_vectors) == [0, 640]
    resumed = _sections(path)
    fresh = specdyn.analyze(
        CNN,
        home=tmp_path / "fresh",
        name="cnn-old",
        steps=OLD_STEPS,
        matrices=OLD_MATRICES,
        vectors=VectorOptions(**OLD_VECTORS),
    )
    expected = _sections(Path(fresh.runs[0].store_path))
    for key in old:
        if key.startswith("alignment/"):
            assert _same(resumed[key], expected[key]), key  # the new definition ...
        else:
            assert _same_as_committed(key, old[key], resumed[key]), key  # ... nothing else
    assert not _same(resumed["alignment/score"], old["alignment/score"])
    with specdyn.open_run(path) as after:
        assert {p["name"]: p["definition"]["basis"] for p in after.pairs} == dict.fromkeys(
            CONV_PAIRS, "kernel"
        )


def test_mimicked_old_store_resumes_with_one_note(tmp_path):
    """A store made with basis = "slice" whose /pairs/options lose the definition keys (what
    specdyn wrote before them) is read as slice; the default resume recomputes the
    alignment only. (Deleting /pairs/options outright would make it a store no specdyn
    version wrote: schema 2 has always had that column.)"""
    home = tmp_path / "ws"
    _, path = _analyze(home, pairs_file=_pairs_file(tmp_path, '[conv]\nbasis = "slice"\n'))
    with h5py.File(path, "r+") as f:
        options = [json.loads(o) for o in f["pairs/options"].asstr()[()]]
        stripped = [
            json.dumps({k: v for k, v in o.items() if k not in ("basis", "normalize")})
            for o in options
        ]
        f["pairs/options"][...] = np.array(stripped, dtype=object)
        # nor did such a store record its pairs file (so a plain resume keeps it)
        config = json.loads(f.attrs["vectors"])
        del config["pairs_file"]
        f.attrs["vectors"] = json.dumps(config)
    strip_checksums(path)  # nor had it checksums (schema 2)
    with specdyn.open_run(path) as before:
        assert [p["definition"] for p in before.pairs][:2] == [
            {"basis": "slice", "tap": [1, 1], "normalize": False}
        ] * 2
    old = _sections(path)
    run, _ = _analyze(home)
    lines = [n.message for n in run.notes if "conv alignment definition" in n.message]
    assert len(lines) == 1 and "read as basis slice" in lines[0]
    resumed = _sections(path)
    changed = sorted(k for k in old if not _same(old[k], resumed[k]))
    assert changed == [
        "alignment/diagonal/conv1.weight~conv2.weight",
        "alignment/diagonal/conv2.weight~conv3.weight",
        "alignment/score",
    ]
    # an unchanged definition on the next run: nothing is recomputed, no note
    again, _ = _analyze(home)
    assert not [n for n in again.notes if "definition" in n.message]
    assert again.steps_with_vectors == []


def test_changing_the_definition_of_a_current_store_recomputes_alignment(tmp_path):
    home = tmp_path / "ws"
    _analyze(home)
    run, path = _analyze(home, pairs_file=_pairs_file(tmp_path, '[conv]\ntap = "mean"\n'))
    (line,) = [n.message for n in run.notes if "conv alignment definition" in n.message]
    assert "basis kernel, tap [1, 1] → basis kernel, tap mean" in line
    assert "predates" not in line and run.steps_computed == []


def test_info_pairs_shows_the_definition(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per pair
    home = tmp_path / "ws"
    _analyze(home, name="k")
    _analyze(home, name="s", pairs_file=_pairs_file(tmp_path, '[conv]\nbasis = "slice"\n'))
    capsys.readouterr()
    assert main(["info", "k", "--home", str(home), "--pairs"]) == 0
    out = capsys.readouterr().out
    assert "definition" in out and "kernel v at tap (1, 1)" in out
    assert main(["info", "s", "--home", str(home), "--pairs", "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)["pairs_detail"]
    assert [p["definition"] for p in detail] == [
        {"basis": "slice", "tap": [1, 1], "normalize": False},
        {"basis": "slice", "tap": [1, 1], "normalize": False},
        None,
    ]


def test_cut_vectors_normalize_and_zero_cuts():
    """Normalised cuts are unit columns; a cut that is all zero has no direction: NaN."""
    plan = pairs_for(CNN)
    op = plan.pairs[0].second  # conv2: 72 rows (8 channels × 9 taps), centre tap 4
    v = np.zeros((72, 3))
    v[4::9, 0] = [3.0, 4.0, 0, 0, 0, 0, 0, 0]  # a cut of norm 5
    v[0, 1] = 1.0  # tap 0 only: its centre cut is zero
    v[4::9, 2] = 1.0
    (plain,) = op.cut_vectors(v)
    assert plain.shape == (8, 3) and plain[1, 0] == 4.0
    normalized = dataclasses.replace(op, normalize=True)
    (unit,) = normalized.cut_vectors(v)
    np.testing.assert_allclose(unit[:2, 0], [0.6, 0.8])
    assert np.isnan(unit[:, 1]).all()
    np.testing.assert_allclose(np.linalg.norm(unit[:, 2]), 1.0)


def test_cli_pairs_shows_cuts_and_taps(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["pairs", str(CNN)]) == 0
    assert "conv2.weight v cut rows[4:72:9]" in capsys.readouterr().out
    f = _pairs_file(tmp_path, '[conv]\ntap = "all"\nbasis = "slice"\n')
    assert main(["pairs", str(CNN), "--pairs", str(f)]) == 0
    out = capsys.readouterr().out
    assert "conv2.weight v 9 taps" in out and "heads" not in out
