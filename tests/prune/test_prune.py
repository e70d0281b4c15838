"""specdyn.prune: SVD pruning and magnitude masks, checked against float64 numpy.

Every spectrum, mask and agreement is recomputed here independently (numpy SVD, numpy
sorting) from the checkpoint as stored; checkpoints are read back with torch.load
(weights_only=True), safetensors.safe_open and specdyn.sources.open_checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from specdyn.errors import CheckpointError, DiscoveryError
from specdyn.prune import (
    PruneError,
    SvdMode,
    parse_svd_mode,
    prune_magnitude,
    prune_svd,
    read_prune_results,
    singular_vector_agreement,
    svd_truncate,
    view_indices,
)
from specdyn.sources import open_checkpoint
from specdyn.views import plan_views

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ckpt_factory import (  # noqa: E402
    HParams,
    sample_state_dict,
    write_hf_folder,
    write_lightning_like,
    write_safetensors,
    write_sharded,
    write_torch,
    write_trainer_checkpoint,
)
from _fixture_script import make_fixtures  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MLP_FINAL = FIXTURES / "mlp-wd" / "step_004000.pt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sv(w) -> np.ndarray:
    """float64 numpy singular values of a 2-D array or tensor."""
    a = w.detach().double().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, np.float64)
    return np.linalg.svd(a, compute_uv=False)


def _energy_rank(sigma: np.ndarray, fraction: float) -> int:
    """Smallest K with sum(sigma[:K]^2) >= fraction * sum(sigma^2), by a plain loop."""
    total = float(np.sum(sigma.astype(np.float64) ** 2))
    acc = 0.0
    for i, s in enumerate(sigma):
        acc += float(s) ** 2
        if acc >= fraction * total:
            return i + 1
    return len(sigma)


def _assert_spectrum(pruned, original, start: int, stop: int) -> None:
    """σ(pruned) = σ(original)[start:stop] followed by zeros, within 1e-6·σ1 (float32 storage)."""
    s_new, s_old = _sv(pruned), _sv(original)
    tol = 1e-6 * s_old[0] * max(1.0, math.sqrt(max(np.shape(original))) / 4)
    expected = np.zeros_like(s_old)
    expected[: stop - start] = s_old[start:stop]
    assert np.max(np.abs(s_new - expected)) <= tol, (s_new, expected)


# ----------------------------------------------------------------------------- modes and maths


def test_parse_svd_mode_and_errors():
    assert parse_svd_mode("top-half") == SvdMode("top-half")
    assert parse_svd_mode("Bottom-Half").kind == "bottom-half"
    assert parse_svd_mode("rank:7").value == 7 and parse_svd_mode("rank:7").text == "rank:7"
    assert parse_svd_mode("energy:0.9").value == pytest.approx(0.9)
    for bad, words in (
        ("half", "use top-half, bottom-half, rank:K or energy:F"),
        ("rank:0", "K must be"),
        ("rank:x", "K must be"),
        ("energy:0", "F must be"),
        ("energy:1.5", "F must be"),
    ):
        with pytest.raises(PruneError, match="^mode") as info:
            parse_svd_mode(bad)
        assert words in str(info.value) and "\n" not in str(info.value)
        # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
        assert info.value.render(cli=True).startswith("--svd") and info.value.option == "mode"


@pytest.mark.parametrize("shape", [(9, 7), (6, 11), (8, 8), (1, 5)])
def test_truncation_matches_numpy(shape):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    u, s, vt = np.linalg.svd(w.numpy(), full_matrices=False)
    r = len(s)
    top, bottom = math.ceil(r / 2), r // 2

    def rebuild(lo, hi):
        return (u[:, lo:hi] * s[lo:hi]) @ vt[lo:hi]

    np.testing.assert_allclose(svd_truncate(w, "top-half").numpy(), rebuild(0, top), atol=1e-12)
    np.testing.assert_allclose(svd_truncate(w, "bottom-half").numpy(), rebuild(top, r), atol=1e-12)
    # the halves partition the spectrum: they add up to the matrix
    both = svd_truncate(w, "top-half") + svd_truncate(w, "bottom-half")
    np.testing.assert_allclose(both.numpy(), w.numpy(), atol=1e-12)
    assert top + bottom == r
    np.testing.assert_allclose(svd_truncate(w, "rank:2").numpy(), rebuild(0, min(2, r)), atol=1e-12)
    np.testing.assert_allclose(svd_truncate(w, "rank:99").numpy(), w.numpy(), atol=1e-12)
    for f in (0.3, 0.75, 1.0):
        k = _energy_rank(s, f)
        np.testing.assert_allclose(
            svd_truncate(w, f"energy:{f}").numpy(), rebuild(0, k), atol=1e-12
        )


def test_truncation_keeps_dtype_and_spectrum_in_low_precision():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 24, generator=g)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = svd_truncate(w.to(dtype), "top-half")
        assert out.dtype == dtype and out.shape == w.shape
    _assert_spectrum(svd_truncate(w, "top-half"), w, 0, 12)
    _assert_spectrum(svd_truncate(w, "bottom-half"), w, 12, 24)


def test_view_indices_invert_every_recipe():
    """Each view's indices address exactly its elements in the flat parameter."""
    config = {"model_type": "gpt_neox", "num_attention_heads": 4, "hidden_size": 8}
    tensors = {
        "gpt_neox.layers.0.attention.query_key_value.weight": torch.randn(24, 8),
        "deconv.weight": torch.randn(3, 5, 2, 2),
        "conv.weight": torch.randn(4, 3, 3, 3),
        "emb.embed_tokens.weight": torch.randn(10, 8),
        "rnn.weight_ih_l0": torch.randn(12, 5),
        "rnn.weight_hh_l0": torch.randn(12, 4),
    }
    from specdyn.types import TensorInfo

    plan = plan_views(
        {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}, config=config
    )
    kinds = {v.kind for v in plan.matrices}
    assert {"qkv_fused", "qkv_part", "conv_transpose", "conv", "embedding", "rnn_gate"} <= kinds
    for view in plan.matrices:
        t = tensors[view.key]
        idx = view_indices(view)
        assert idx.shape == view.extract(t).shape
        assert torch.equal(t.reshape(-1)[idx], view.extract(t))
        assert idx.unique().numel() == idx.numel()  # a permutation of a subset


# ----------------------------------------------------------------------------- SVD pruning, fixtures


def _mlp_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_mlp_top_and_bottom_half_against_numpy(tmp_path):
    original = torch.load(MLP_FINAL, weights_only=True)
    top = prune_svd(MLP_FINAL, "top-half", out=tmp_path / "top.pt")
    bottom = prune_svd(MLP_FINAL, "bottom-half", out=tmp_path / "bottom.pt")
    assert Path(top.out) == tmp_path / "top.pt" and top.mode == "top-half"
    assert [m.name for m in top.matrices] == [
        "layers.0.weight",
        "layers.1.weight",
        "layers.2.weight",
    ]
    assert {u.name: u.reason for u in top.untouched}["layers.3.weight"] == "final layer"
    for path in (tmp_path / "top.pt", tmp_path / "bottom.pt"):
        loaded = torch.load(path, weights_only=True)
        # where training stood survives; the metrics and optimizer state of the unpruned
        # weights do not (they would describe the copy wrongly), and the copy is marked
        for key in ("step", "epoch"):
            assert loaded[key] == original[key]
        stale = {"train_loss", "train_acc", "val_acc", "optimizer_state_dict"}
        assert stale <= original.keys() and not stale & loaded.keys()
        assert loaded.keys() - {"specdyn_pruned"} == original.keys() - stale
        assert loaded["specdyn_pruned"] == {"source": str(MLP_FINAL)}
        sd, ref = loaded["model_state_dict"], original["model_state_dict"]
        for key in (
            "layers.3.weight",
            "layers.0.bias",
            "layers.1.bias",
            "layers.2.bias",
            "layers.3.bias",
        ):
            assert sd[key].dtype == ref[key].dtype
            assert sd[key].numpy().tobytes() == ref[key].numpy().tobytes()
    for key in ("layers.0.weight", "layers.1.weight", "layers.2.weight"):
        w = original["model_state_dict"][key]
        r = min(w.shape)
        _assert_spectrum(_mlp_weights(tmp_path / "top.pt")[key], w, 0, (r + 1) // 2)
        _assert_spectrum(_mlp_weights(tmp_path / "bottom.pt")[key], w, (r + 1) // 2, r)
    kept = {m.name: (m.kept, m.rank, m.kept_range) for m in bottom.matrices}
    assert kept["layers.0.weight"] == (16, 32, (17, 32))


def test_pruned_copy_says_what_it_left_out(tmp_path):
    top = prune_svd(MLP_FINAL, "top-half", out=tmp_path / "top.pt")
    (note,) = [n for n in top.notes if n.kind == "pruned-metadata"]
    assert "val_acc" in note.message and "optimizer_state_dict" in note.message


def test_mlp_rank_and_energy(tmp_path):
    original = _mlp_weights(MLP_FINAL)
    prune_svd(MLP_FINAL, "rank:5", out=tmp_path / "r.pt")
    res = prune_svd(MLP_FINAL, "energy:0.9", out=tmp_path / "e.pt")
    for key in ("layers.0.weight", "layers.1.weight", "layers.2.weight"):
        w = original[key]
        _assert_spectrum(_mlp_weights(tmp_path / "r.pt")[key], w, 0, 5)
        k = _energy_rank(_sv(w), 0.9)
        assert res.checkpoints[0].kept[key] == k
        _assert_spectrum(_mlp_weights(tmp_path / "e.pt")[key], w, 0, k)
        s = _sv(w)
        assert res.checkpoints[0].energy[key] == pytest.approx(np.sum(s[:k] ** 2) / np.sum(s**2))


def test_pruned_mlp_top_half_is_closer_to_the_full_model(tmp_path):
    """Fig. 4: keeping the top half of every SVD (not the final layer) barely changes the loss."""
    mf = make_fixtures()
    x_train, y_train, x_val, y_val = mf.teacher_data()
    losses = {}
    for mode in ("top-half", "bottom-half", None):
        path = MLP_FINAL if mode is None else tmp_path / f"{mode}.pt"
        if mode is not None:
            prune_svd(MLP_FINAL, mode, out=path)
        model = mf.MLP()
        model.load_state_dict(_mlp_weights(path))
        with torch.no_grad():
            losses[mode] = [
                torch.nn.functional.cross_entropy(model(x), y).item()
                for x, y in ((x_train, y_train), (x_val, y_val))
            ]
    for i in (0, 1):  # train and held-out
        full, top, bottom = losses[None][i], losses["top-half"][i], losses["bottom-half"][i]
        assert abs(top - full) < abs(bottom - full)
        assert bottom > 1.0 > top  # bottom half: near chance (ln 8 ≈ 2.08)


def test_lstm_gate_blocks_keep_and_embedding(tmp_path):
    src = FIXTURES / "lstm" / "iter_02000.pth"
    res = prune_svd(src, "top-half", out=tmp_path / "o.pth", keep=[r"weight_hh_l0\[g\]"])
    sd, ref = torch.load(tmp_path / "o.pth", weights_only=True), torch.load(src, weights_only=True)
    assert sd.keys() == ref.keys()
    h = 24
    for gate, block in zip("ifgo", range(4), strict=True):
        rows = slice(block * h, (block + 1) * h)
        hh, hh_ref = sd["lstm.weight_hh_l0"][rows], ref["lstm.weight_hh_l0"][rows]
        if gate == "g":
            assert torch.equal(hh, hh_ref)
        else:
            _assert_spectrum(hh, hh_ref, 0, 12)
        _assert_spectrum(sd["lstm.weight_ih_l1"][rows], ref["lstm.weight_ih_l1"][rows], 0, 12)
    # the embedding (4, 16) is pruned through its (16, 4) view: rank 2 of 4
    _assert_spectrum(sd["embed.weight"].T, ref["embed.weight"].T, 0, 2)
    assert torch.equal(sd["head.weight"], ref["head.weight"])
    assert all(torch.equal(sd[k], ref[k]) for k in ref if "bias" in k)
    reasons = {u.name: u.reason for u in res.untouched}
    assert reasons["lstm.weight_hh_l0[g]"] == "kept by --keep"
    assert reasons["head.weight"] == "final layer"
    assert "lstm.weight_hh_l0[g]" not in {m.name for m in res.matrices}
    # keeping a whole parameter by name
    res = prune_svd(src, "top-half", out=tmp_path / "k.pth", keep=["^embed", r"ih_l1"])
    sd = torch.load(tmp_path / "k.pth", weights_only=True)
    assert torch.equal(sd["embed.weight"], ref["embed.weight"])
    assert torch.equal(sd["lstm.weight_ih_l1"], ref["lstm.weight_ih_l1"])
    assert not torch.equal(sd["lstm.weight_ih_l0"], ref["lstm.weight_ih_l0"])


def test_lightning_folder_conv_views_and_numpy_hparams(tmp_path):
    src = FIXTURES / "cnn-lightning"
    res = prune_svd(src, "top-half", out=tmp_path / "out", steps="320,640")
    assert [c.step for c in res.checkpoints] == [320, 640]
    assert any(n.kind == "duplicate" for n in res.notes)  # last.ckpt = step 640, pruned once
    out = tmp_path / "out" / "epoch=19-step=640.ckpt"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "epoch=19-step=640.ckpt",
        "epoch=9-step=320.ckpt",
    ]
    allowed = [np._core.multiarray.scalar, np.dtype, *vars(np.dtypes).values()]
    allowed = [a for a in allowed if isinstance(a, type) or callable(a)]
    with torch.serialization.safe_globals(allowed):
        got = torch.load(out, weights_only=True)
        ref = torch.load(src / "epoch=19-step=640.ckpt", weights_only=True)
    assert got.keys() - {"specdyn_pruned"} == ref.keys() - {"optimizer_states", "lr_schedulers"}
    assert got["hyper_parameters"] == ref["hyper_parameters"]
    assert got["global_step"] == 640 and got["loops"] == ref["loops"]
    sd, rsd = got["state_dict"], ref["state_dict"]
    for key, c_out in (
        ("model.conv1.weight", 8),
        ("model.conv2.weight", 16),
        ("model.conv3.weight", 16),
    ):
        r = min(c_out, rsd[key][0].numel())
        _assert_spectrum(sd[key].reshape(c_out, -1), rsd[key].reshape(c_out, -1), 0, (r + 1) // 2)
    assert torch.equal(sd["model.fc2.weight"], rsd["model.fc2.weight"])
    assert open_checkpoint(out).step == 640


def test_neox_trainer_checkpoint_folder(tmp_path):
    src = FIXTURES / "neox-trainer" / "checkpoint-1500"
    res = prune_svd(src, "top-half", out=tmp_path / "ck")
    out = tmp_path / "ck"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "trainer_state.json",
    ]
    assert any(n.kind == "not-copied" and "training_args.bin" in n.message for n in res.notes)
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    with (
        safe_open(out / "model.safetensors", "pt") as a,
        safe_open(src / "model.safetensors", "pt") as b,
    ):
        assert a.metadata() == b.metadata() and set(a.keys()) == set(b.keys())
        qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
        _assert_spectrum(a.get_tensor(qkv), b.get_tensor(qkv), 0, 16)  # fused (96, 32): one matrix
        emb = "gpt_neox.embed_in.weight"
        _assert_spectrum(a.get_tensor(emb).T, b.get_tensor(emb).T, 0, 16)
        for key in b.keys():
            if key.endswith("bias") or "layernorm" in key or key == "embed_out.weight":
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    ckpt = open_checkpoint(out)
    assert ckpt.step == 1500 and ckpt.config["num_attention_heads"] == 4
    assert res.matrices[0].name == "gpt_neox.embed_in.weight"  # forward order


# ----------------------------------------------------------------------------- formats


def _check_pruned_state(tensors: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """sample_state_dict pruned top-half: embed/conv/fc1 halved, everything else identical."""
    assert set(tensors) == set(ref)
    _assert_spectrum(tensors["embed.weight"].T, ref["embed.weight"].T, 0, 3)
    _assert_spectrum(tensors["conv.weight"].reshape(4, -1), ref["conv.weight"].reshape(4, -1), 0, 2)
    _assert_spectrum(tensors["fc1.weight"], ref["fc1.weight"], 0, 3)
    for key in ref:
        if key not in ("embed.weight", "conv.weight", "fc1.weight"):
            assert tensors[key].dtype == ref[key].dtype
            assert torch.equal(tensors[key], ref[key]), key


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(path).open() as reader:
        return {k: reader.get(k) for k in reader.keys()}


@pytest.mark.parametrize(
    "kind",
    ["nested", "legacy", "safetensors", "shard-st", "shard-bin", "hf-bin", "trainer", "lightning"],
)
def test_every_format_round_trips(tmp_path, kind):
    sd = sample_state_dict(seed=4)
    src_dir = tmp_path / "in"
    if kind == "nested":
        src = write_torch(
            src_dir / "s.pt", sd, nest=("model", "module"), extra={"step": 100, "note": "x"}
        )
    elif kind == "legacy":
        src = write_torch(src_dir / "s.pt", sd, legacy=True)
    elif kind == "safetensors":
        src = write_safetensors(
            src_dir / "s.safetensors", sd, metadata={"step": "100", "format": "pt"}
        )
    elif kind == "shard-st":
        src = write_sharded(src_dir, sd, "safetensors", n_shards=3)
    elif kind == "shard-bin":
        src = write_sharded(src_dir, sd, "bin", n_shards=2)
    elif kind == "hf-bin":
        src = write_hf_folder(src_dir / "model", sd, fmt="bin", trainer_extras=True)
    elif kind == "trainer":
        src = write_trainer_checkpoint(src_dir, 500, sd, fmt="safetensors")
    else:
        src = write_lightning_like(src_dir / "epoch=1-step=10.ckpt", sd, global_step=10, epoch=1)
    out = tmp_path / ("out.pt" if kind in ("nested", "legacy", "lightning") else "out")
    if kind in ("safetensors", "lightning"):
        out = tmp_path / ("out.safetensors" if kind == "safetensors" else "out.ckpt")
    res = prune_svd(src, "top-half", out=out)
    got = _read_all(out if not str(src).endswith(".index.json") else out / src.name)
    if kind == "lightning":
        got = {k.removeprefix("model."): v for k, v in got.items()}
    _check_pruned_state(got, sd)
    if kind == "nested":
        loaded = torch.load(out, weights_only=True)
        assert loaded["step"] == 100 and loaded["note"] == "x"
        _check_pruned_state(dict(loaded["model"]["module"]), sd)
    elif kind == "legacy":
        _check_pruned_state(torch.load(out, weights_only=True), sd)
    elif kind == "safetensors":
        with safe_open(out, "pt") as f, safe_open(src, "pt") as g:
            assert f.metadata() == {"step": "100", "format": "pt"}
            assert list(f.keys()) == list(g.keys())
        assert out.stat().st_size == src.stat().st_size
    elif kind in ("shard-st", "shard-bin"):
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src_dir.iterdir())
        assert json.loads((out / src.name).read_text()) == json.loads(src.read_text())
        if kind == "shard-st":
            for shard in src_dir.glob("*.safetensors"):
                with safe_open(out / shard.name, "pt") as f:
                    assert set(f.keys()) == set(safe_open(shard, "pt").keys())
    elif kind == "hf-bin":
        names = sorted(p.name for p in out.iterdir())
        assert names == ["config.json", "pytorch_model.bin"]
        note = next(n for n in res.notes if n.kind == "not-copied")
        for extra in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
            assert extra in note.message
    elif kind == "trainer":
        assert open_checkpoint(out).step == 500 and (out / "trainer_state.json").is_file()
    else:  # numpy scalars and arrays in hyper_parameters: loaded with numpy globals allowed
        assert not [n for n in res.notes if n.kind == "dropped-entries"]
        assert open_checkpoint(out).step == 10


def test_lightning_hparams_object_writes_weights_alone_with_a_note(tmp_path):
    """A checkpoint whose extra entries need a real class: never unpickled; weights kept."""
    sd = sample_state_dict(seed=5)
    src = write_lightning_like(
        tmp_path / "epoch=2-step=30.ckpt",
        sd,
        global_step=30,
        epoch=2,
        hparams_object=HParams(lr=1.0),
    )
    res = prune_svd(src, "top-half", out=tmp_path / "o.ckpt")
    note = next(n for n in res.notes if n.kind == "dropped-entries")
    assert "_ckpt_factory.HParams" in note.message and "state_dict" in note.message
    loaded = torch.load(tmp_path / "o.ckpt", weights_only=True)
    assert loaded["global_step"] == 30 and loaded["epoch"] == 2
    _check_pruned_state({k.removeprefix("model."): v for k, v in loaded["state_dict"].items()}, sd)
    assert open_checkpoint(tmp_path / "o.ckpt").step == 30


def test_tied_weights_stay_tied(tmp_path):
    g = torch.Generator().manual_seed(1)
    shared = torch.randn(8, 8, generator=g)
    sd = {
        "enc.weight": shared,
        "dec.weight": shared,  # one storage under two names
        "mid.weight": torch.randn(8, 8, generator=g),
        "out.weight": torch.randn(3, 8, generator=g),
    }
    src = write_torch(tmp_path / "tied.pt", sd)
    res = prune_svd(src, "top-half", out=tmp_path / "o.pt")
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)
    assert (
        loaded["enc.weight"].untyped_storage().data_ptr()
        == loaded["dec.weight"].untyped_storage().data_ptr()
    )
    _assert_spectrum(loaded["enc.weight"], shared, 0, 4)
    assert torch.equal(loaded["out.weight"], sd["out.weight"])
    assert [m.name for m in res.matrices] == ["enc.weight", "mid.weight"]
    # a tied output head: the final layer, so its embedding stays untouched as well
    emb = torch.randn(10, 8, generator=g)
    sd = {"wte.weight": emb, "h.0.weight": torch.randn(8, 8, generator=g), "lm_head.weight": emb}
    src = write_torch(tmp_path / "lm.pt", sd)
    res = prune_svd(src, "top-half", out=tmp_path / "lm-o.pt")
    loaded = torch.load(tmp_path / "lm-o.pt", weights_only=True)
    assert torch.equal(loaded["wte.weight"], emb) and torch.equal(loaded["lm_head.weight"], emb)
    assert {u.name: u.reason for u in res.untouched}[
        "wte.weight"
    ] == "final layer (tied to lm_head.weight)"


def test_nonfinite_matrix_is_left_and_warned(tmp_path):
    sd = sample_state_dict(seed=6)
    sd["conv.weight"][0, 0, 0, 0] = float("nan")
    src = write_torch(tmp_path / "nan.pt", sd)
    res = prune_svd(src, "top-half", out=tmp_path / "o.pt")
    assert any(n.kind == "nonfinite" and "conv.weight" in n.message for n in res.notes)
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)
    assert torch.equal(loaded["conv.weight"].nan_to_num(), sd["conv.weight"].nan_to_num())
    _assert_spectrum(loaded["fc1.weight"], sd["fc1.weight"], 0, 3)


def test_output_checks(tmp_path):
    src = write_torch(tmp_path / "in" / "s.pt", sample_state_dict())
    with pytest.raises(PruneError, match="is the input itself"):
        prune_svd(src, "top-half", out=src)
    with pytest.raises(PruneError, match="inside the input folder"):
        prune_svd(tmp_path / "in", "top-half", out=tmp_path / "in" / "pruned")
    prune_svd(src, "top-half", out=tmp_path / "o.pt")
    with pytest.raises(PruneError, match=r"^out .*exists.*overwrite=True") as info:
        prune_svd(src, "top-half", out=tmp_path / "o.pt")
    assert re.search(r"^--out .*exists.*--overwrite", info.value.render(cli=True))
    assert info.value.option == "out"
    prune_svd(src, "bottom-half", out=tmp_path / "o.pt", overwrite=True)
    _assert_spectrum(
        torch.load(tmp_path / "o.pt", weights_only=True)["fc1.weight"],
        sample_state_dict()["fc1.weight"],
        3,
        6,
    )
    # an existing folder as --out for one file: the file goes inside, under its name
    (tmp_path / "dir").mkdir()
    res = prune_svd(src, "top-half", out=tmp_path / "dir")
    assert Path(res.out) == tmp_path / "dir" / "s.pt" and (tmp_path / "dir" / "s.pt").is_file()
    # default output: <home>/pruned/<name>-<mode>/<file>
    res = prune_svd(src, "rank:2", home=tmp_path / "ws")
    assert Path(res.out) == tmp_path / "ws" / "pruned" / "s-rank-2" / "s.pt"
    with pytest.raises(DiscoveryError, match="does not exist"):
        prune_svd(tmp_path / "missing", "top-half", out=tmp_path / "x")
    with pytest.raises(DiscoveryError, match="does not exist"):
        prune_svd(tmp_path / "missing.pt", "top-half", out=tmp_path / "x.pt")
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError):
        prune_svd(corrupt, "top-half", out=tmp_path / "y.pt")
    with pytest.raises(PruneError, match="keeps the input's format; give a .pt file name"):
        prune_svd(src, "top-half", out=tmp_path / "o.safetensors")
    with pytest.raises(PruneError, match="^keep: invalid regular expression") as info:
        prune_svd(src, "top-half", out=tmp_path / "z.pt", keep=["("])
    assert info.value.render(cli=True).startswith("--keep: ") and info.value.option == "keep"
    assert not list(tmp_path.rglob("*.partial"))


# ----------------------------------------------------------------------------- magnitude masks


def _numpy_mask(values: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """Global top round(P·N) |w| (half up), ties to the earlier position, as numpy does it."""
    flat = np.concatenate([np.abs(v.astype(np.float64)).reshape(-1) for v in values])
    count = int(math.floor(fraction * flat.size + 0.5))
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:count]] = True
    out, start = [], 0
    for v in values:
        out.append(keep[start : start + v.size].reshape(v.shape))
        start += v.size
    return out


def _sva_numpy(w_pruned: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    u1, _, v1 = np.linalg.svd(w_pruned.astype(np.float64), full_matrices=False)
    u0, _, v0 = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    kk = min(k, u0.shape[1])
    return np.abs(np.sum(u1[:, :kk] * u0[:, :kk], 0)) * np.abs(np.sum(v1[:kk] * v0[:kk], 1))


def test_magnitude_mask_on_lightning_against_numpy(tmp_path):
    src = FIXTURES / "cnn-lightning"
    res = prune_magnitude(src, 0.1, control="random", seed=3, out=tmp_path / "m", k=8)
    assert res.step == 640 and res.checkpoint.endswith("epoch=19-step=640.ckpt")
    keys = ["model.conv1.weight", "model.conv2.weight", "model.conv3.weight", "model.fc1.weight"]
    assert [p.key for p in res.parameters] == keys  # no final layer (fc2)
    with open_checkpoint(src / "epoch=19-step=640.ckpt").open() as reader:
        ref = {k: reader.get(k) for k in reader.keys()}
    expected = _numpy_mask([ref[k].numpy() for k in keys], 0.1)
    n = sum(ref[k].numel() for k in keys)
    with safe_open(res.masks["magnitude"], "pt") as f, safe_open(res.masks["random"], "pt") as r:
        assert sorted(f.keys()) == sorted(keys) and f.metadata()["mask"] == "magnitude"
        magnitude = {k: f.get_tensor(k) for k in keys}
        random = {k: r.get_tensor(k) for k in keys}
    assert sum(int(m.sum()) for m in magnitude.values()) == round(0.1 * n) == res.kept
    for key, exp in zip(keys, expected, strict=True):
        assert magnitude[key].dtype == torch.bool
        assert np.array_equal(magnitude[key].numpy(), exp), key
        assert int(random[key].sum()) == int(magnitude[key].sum())
        assert not torch.equal(random[key], magnitude[key])
    kept_abs = torch.cat([ref[k][magnitude[k]].abs() for k in keys])
    dropped_abs = torch.cat([ref[k][~magnitude[k]].abs() for k in keys])
    assert kept_abs.min() >= dropped_abs.max()
    # the masked checkpoints: weights × mask, the rest untouched, in the input's format
    allowed = [np._core.multiarray.scalar, np.dtype, *vars(np.dtypes).values()]
    allowed = [a for a in allowed if isinstance(a, type) or callable(a)]
    with torch.serialization.safe_globals(allowed):
        masked = torch.load(res.checkpoints["random"], weights_only=True)["state_dict"]
    for key in ref:
        exp = ref[key] * random[key] if key in random else ref[key]
        assert torch.equal(masked[key], exp), key
    # per-parameter sparsity reported; SVA diagonal against numpy
    for p in res.parameters:
        assert p.kept == int(magnitude[p.key].sum()) and p.kept_fraction == p.kept / p.size
    for i, m in enumerate(res.matrices):
        w = ref["model." + m.param].reshape(m.shape[0], -1).numpy()
        for mask_name, masks in (("magnitude", magnitude), ("random", random)):
            wm = w * masks["model." + m.param].reshape(m.shape[0], -1).numpy()
            exp = _sva_numpy(wm, w, 8)
            got = res.diagonals[mask_name][i, : len(exp)]
            np.testing.assert_allclose(got, exp, atol=1e-5)
            assert m.scores[mask_name] == pytest.approx(np.mean(exp[:10]), abs=1e-5)


def test_magnitude_exact_count_with_ties_and_lstm_gate_views(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "a.weight": torch.round(torch.randn(6, 5, generator=g) * 2) / 2,  # many equal |w|
        "b.weight": torch.round(torch.randn(7, 6, generator=g) * 2) / 2,
        "head.weight": torch.randn(2, 7, generator=g),
    }
    src = write_torch(tmp_path / "t.pt", sd)
    for p in (0.13, 0.5, 0.77):
        res = prune_magnitude(src, p, out=tmp_path / f"m{p}", k=4, device="cpu")
        exp = _numpy_mask([sd["a.weight"].numpy(), sd["b.weight"].numpy()], p)
        with safe_open(res.masks["magnitude"], "pt") as f:
            assert np.array_equal(f.get_tensor("a.weight").numpy(), exp[0])
            assert np.array_equal(f.get_tensor("b.weight").numpy(), exp[1])
        assert res.kept == int(math.floor(p * 72 + 0.5))
    # LSTM: every gate block of the masked parameters gets an SVA row; embedding not masked
    res = prune_magnitude(FIXTURES / "lstm", 0.25, control="random", out=tmp_path / "lstm", k=5)
    names = [m.name for m in res.matrices]
    assert (
        "lstm.weight_ih_l0[g]" in names
        and "embed.weight" not in names
        and "head.weight" not in names
    )
    assert len(names) == 32 and res.diagonals["random"].shape == (32, 5)
    assert {u.name: u.reason for u in res.untouched}["embed.weight"] == "embedding (not masked)"
    results = read_prune_results(tmp_path / "lstm")
    assert results.matrices == names and results.attrs["control"] == "random"
    assert results.attrs["fraction"] == 0.25 and results.attrs["step"] == 2000
    np.testing.assert_array_equal(results.diagonal["magnitude"], res.diagonals["magnitude"])
    np.testing.assert_array_equal(
        results.score["random"], [m.scores["random"] for m in res.matrices]
    )
    assert results.kept.sum() == res.kept and results.parameter_size.sum() == res.total


def test_sva_of_a_matrix_with_itself_is_one():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(30, 20, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(singular_vector_agreement(w, w, k=20), np.ones(20), atol=1e-10)
    np.testing.assert_allclose(
        singular_vector_agreement(w * 0.5 + 1e-3 * torch.randn(30, 20, generator=g), w, k=20),
        _sva_numpy((w * 0.5).numpy(), w.numpy(), 20),
        atol=0.05,
    )


def test_mlp_fixture_magnitude_preserves_top_vectors_better_than_random(tmp_path):
    """Fig. 12 on the weight-decayed MLP at P = 0.05: the magnitude mask keeps more of the
    top singular vectors than a random mask with the same per-layer sparsity."""
    res = prune_magnitude(FIXTURES / "mlp-wd", 0.05, control="random", out=tmp_path / "m")
    scores = {m.name: m.scores for m in res.matrices}
    assert list(scores) == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    for name in ("layers.1.weight", "layers.2.weight"):  # the hidden layers
        assert scores[name]["magnitude"] > 2 * scores[name]["random"], scores
    # the very top direction survives the magnitude mask far better
    top = {m: res.diagonals[m][1:3, 0] for m in ("magnitude", "random")}
    assert (top["magnitude"] > top["random"]).all(), top
    # diagonals are [matrices, k] NaN-padded beyond R (layers.0 is 96×32: R = 32)
    assert res.diagonals["magnitude"].shape == (3, 100)
    assert np.isnan(res.diagonals["magnitude"][0, 32:]).all()
    assert np.isfinite(res.diagonals["magnitude"][0, :32]).all()


def test_magnitude_errors(tmp_path):
    src = write_torch(tmp_path / "s.pt", sample_state_dict())
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(PruneError, match="^fraction ") as info:
            prune_magnitude(src, bad, out=tmp_path / "m")
        assert info.value.render(cli=True).startswith("--magnitude ")
    with pytest.raises(PruneError, match="^control ") as info:
        prune_magnitude(src, 0.1, control="shuffle", out=tmp_path / "m")
    assert info.value.render(cli=True).startswith("--control ")
    with pytest.raises(PruneError, match="^k 0: ") as info:
        prune_magnitude(src, 0.1, k=0, out=tmp_path / "m")
    assert info.value.render(cli=True).startswith("--vectors 0: ") and info.value.option == "k"
    with pytest.raises(PruneError, match="single checkpoint"):
        prune_magnitude(src, 0.1, step=7, out=tmp_path / "m")
    prune_magnitude(src, 0.1, out=tmp_path / "m", k=3)
    with pytest.raises(PruneError, match="exists"):
        prune_magnitude(src, 0.1, out=tmp_path / "m", k=3)
    with pytest.raises(PruneError, match="no linear/conv"):
        prune_magnitude(src, 0.1, out=tmp_path / "n", keep=["conv", "fc1"])
    # a NaN weight: masked out, warned, NaN scores for its matrix only
    sd = sample_state_dict()
    sd["fc1.weight"][0, 0] = float("nan")
    nan_src = write_torch(tmp_path / "nan.pt", sd)
    res = prune_magnitude(nan_src, 0.5, out=tmp_path / "nan", k=3)
    assert any(n.kind == "nonfinite" and "fc1.weight" in n.message for n in res.notes)
    scores = {m.name: m.scores["magnitude"] for m in res.matrices}
    assert math.isnan(scores["fc1.weight"]) and math.isfinite(scores["conv.weight"])
    with pytest.raises(PruneError, match="no such prune results") as info:
        read_prune_results(tmp_path / "nowhere")
    assert str(info.value).endswith("run specdyn.prune.prune_magnitude() first")
    assert info.value.render(cli=True).endswith("run specdyn prune --magnitude first")
