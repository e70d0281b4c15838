"""Every checkpoint format gives back the same tensors, bit for bit, with the right metadata."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from _ckpt_factory import (
    SIDE_EFFECTS,
    HParams,
    sample_state_dict,
    write_hf_folder,
    write_lightning_like,
    write_safetensors,
    write_sharded,
    write_torch,
    write_trainer_checkpoint,
)

from specdyn.sources import Checkpoint, Fingerprint, TensorReader, open_checkpoint

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SD = sample_state_dict(seed=3)


def _write(kind: str, tmp: Path) -> Path:
    """One checkpoint of SD in the format `kind`; returns what open_checkpoint takes."""
    if kind == "torch":
        return write_torch(tmp / "step_10.pt", SD)
    if kind == "torch-nested":
        return write_torch(tmp / "step_10.pth", SD, nest="model_state_dict",
                           extra={"optimizer_state_dict": {"state": {0: {"m": torch.ones(3)}}}})
    if kind == "torch-deep":
        return write_torch(tmp / "step_10.bin", SD, nest=("model", "module"))
    if kind == "torch-legacy":
        return write_torch(tmp / "step_10.pt", SD, legacy=True)
    if kind == "torch-legacy-nested":
        return write_torch(tmp / "step_10.ckpt", SD, nest="state_dict", legacy=True)
    if kind == "safetensors":
        return write_safetensors(tmp / "step_10.safetensors", SD)
    if kind == "safetensors-sharded":
        return write_sharded(tmp / "ckpt", SD, "safetensors", n_shards=3)
    if kind == "torch-sharded":
        return write_sharded(tmp / "ckpt", SD, "bin", n_shards=2)
    if kind == "hf-safetensors":
        return write_hf_folder(tmp / "model", SD)
    if kind == "hf-bin":
        return write_hf_folder(tmp / "model", SD, fmt="bin")
    if kind == "hf-sharded":
        return write_hf_folder(tmp / "model", SD, n_shards=4)
    if kind == "trainer":
        return write_trainer_checkpoint(tmp / "out", 10, SD, fmt="bin")
    raise AssertionError(kind)


FORMATS = {
    "torch": "torch", "torch-nested": "torch", "torch-deep": "torch",
    "torch-legacy": "torch-legacy", "torch-legacy-nested": "torch-legacy",
    "safetensors": "safetensors", "safetensors-sharded": "safetensors-sharded",
    "torch-sharded": "torch-sharded", "hf-safetensors": "safetensors", "hf-bin": "torch",
    "hf-sharded": "safetensors-sharded", "trainer": "torch",
}


@pytest.fixture(scope="module")
def reference_digest(tmp_path_factory) -> str:
    return open_checkpoint(_write("torch", tmp_path_factory.mktemp("ref"))).weights_digest()


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_reads_identical_tensors(kind, tmp_path, reference_digest):
    ckpt = open_checkpoint(_write(kind, tmp_path))
    assert ckpt.format == FORMATS[kind]
    with ckpt.open() as reader:
        assert isinstance(reader, TensorReader)
        keys = reader.keys()
        if ckpt.format.startswith("torch") and "sharded" not in ckpt.format:
            assert keys == list(SD)  # source order
        assert sorted(keys) == sorted(SD)
        for key in keys:
            info = reader.info(key)
            tensor = reader.get(key)
            expected = SD[key]
            assert info.shape == tuple(expected.shape) and info.dtype == expected.dtype
            assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
            assert tensor.is_contiguous() and tensor.device.type == "cpu"
            assert torch.equal(tensor, expected), key
    # the weights digest does not depend on the format
    assert ckpt.weights_digest() == reference_digest


def test_digest_differs_for_other_weights(tmp_path, reference_digest):
    other = dict(SD)
    other["fc2.weight"] = SD["fc2.weight"].clone()
    other["fc2.weight"][0, 0] += 1e-6
    assert open_checkpoint(write_torch(tmp_path / "a.pt", other)).weights_digest() != reference_digest
    renamed = {("x." + k): v for k, v in SD.items()}
    assert open_checkpoint(write_torch(tmp_path / "b.pt", renamed)).weights_digest() != reference_digest


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn,
                                   torch.float8_e5m2])
@pytest.mark.parametrize("fmt", ["torch", "safetensors", "legacy"])
def test_low_and_high_precision_dtypes_round_trip_bitwise(dtype, fmt, tmp_path):
    sd = {"w": torch.randn(7, 5, generator=torch.Generator().manual_seed(1)).to(dtype)}
    if fmt == "safetensors":
        path = write_safetensors(tmp_path / "w.safetensors", sd)
    else:
        path = write_torch(tmp_path / "w.pt", sd, legacy=fmt == "legacy")
    with open_checkpoint(path).open() as reader:
        got = reader.get("w")
    assert got.dtype == dtype
    assert torch.equal(got.view(torch.uint8), sd["w"].view(torch.uint8))


def test_tied_weights_views_and_strides(tmp_path):
    base = torch.arange(48, dtype=torch.float32).reshape(8, 6)
    sd = {
        "embed.weight": base,
        "lm_head.weight": base,  # tied: the same tensor under two names
        "transposed": base.t(),  # same storage, other strides
        "rows": base[2:5],  # same storage, offset
        "strided": base[:, ::2],  # gaps: needs a copy to become contiguous
        "other": base.clone(),
    }
    path = write_torch(tmp_path / "tied.pt", sd)
    with open_checkpoint(path).open() as reader:
        ids = {k: reader.info(k).storage_id for k in sd}
        for key, expected in sd.items():
            got = reader.get(key)
            assert got.is_contiguous() and torch.equal(got, expected), key
    assert ids["embed.weight"] == ids["lm_head.weight"]
    assert len({ids[k] for k in ("embed.weight", "transposed", "rows", "strided", "other")}) == 5
    assert all(v is not None for v in ids.values())
    # a tensor read twice is an independent copy (writing one does not touch the other)
    with open_checkpoint(path).open() as reader:
        a, b = reader.get("embed.weight"), reader.get("lm_head.weight")
        a += 1
        assert torch.equal(b, base)
    with open_checkpoint(write_safetensors(tmp_path / "t.safetensors", {"a": base})).open() as r:
        assert r.info("a").storage_id is None


def test_empty_and_zero_dim_tensors(tmp_path):
    sd = {"empty": torch.empty(0, 3), "scalar": torch.tensor(2.5), "w": torch.ones(2, 2)}
    for path in (write_torch(tmp_path / "a.pt", sd), write_safetensors(tmp_path / "a.safetensors", sd),
                 write_torch(tmp_path / "b.pt", sd, legacy=True)):
        with open_checkpoint(path).open() as reader:
            assert reader.get("empty").shape == (0, 3)
            assert reader.get("scalar").shape == () and reader.get("scalar").item() == 2.5
            assert torch.equal(reader.get("w"), sd["w"])


def test_conjugate_and_negative_bits(tmp_path):
    z = torch.complex(torch.arange(4.0), torch.arange(4.0) + 10)
    sd = {"conj": z.conj(), "neg": torch._neg_view(z)}
    assert sd["conj"].is_conj() and sd["neg"].is_neg()
    with open_checkpoint(write_torch(tmp_path / "c.pt", sd)).open() as reader:
        assert torch.equal(reader.get("conj"), z.conj().resolve_conj())
        assert torch.equal(reader.get("neg"), -z)


def _rewrite_zip(src: Path, dst: Path, *, compress: bool = False, big_endian: bool = False,
                 dtypes: dict[str, torch.dtype] | None = None) -> Path:
    """Copy a torch zip with Python's zipfile (other entry layout), optionally deflated, or
    converted to a big-endian file (byteorder record 'big', every storage byte-swapped)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(
            dst, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            name = info.filename
            if big_endian and name.endswith("/byteorder"):
                data = b"big"
            if big_endian and "/data/" in name:
                item = dtypes[name.rsplit("/", 1)[1]].itemsize
                data = np.frombuffer(data, np.uint8).reshape(-1, item)[:, ::-1].tobytes()
            zout.writestr(name, data)
    return dst


def test_compressed_zip_entries_fall_back(tmp_path):
    src = write_torch(tmp_path / "src.pt", SD)
    path = _rewrite_zip(src, tmp_path / "deflated.pt", compress=True)
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(path).infolist())
    with open_checkpoint(path).open() as reader:
        for key, expected in SD.items():
            assert torch.equal(reader.get(key), expected)


def test_big_endian_file_is_byteswapped(tmp_path):
    sd = {"f": torch.linspace(-3, 3, 10), "d": torch.arange(5, dtype=torch.float64) / 3,
          "h": torch.tensor([1.5, -2.25], dtype=torch.bfloat16), "i": torch.arange(4, dtype=torch.int64),
          "b": torch.tensor([1, 2], dtype=torch.uint8)}
    src = write_torch(tmp_path / "little.pt", sd)
    dtypes = {str(i): t.dtype for i, t in enumerate(sd.values())}  # one storage per tensor, in order
    path = _rewrite_zip(src, tmp_path / "big.pt", big_endian=True, dtypes=dtypes)
    with open_checkpoint(path).open() as reader:
        for key, expected in sd.items():
            assert torch.equal(reader.get(key), expected), key


def test_top_level_scalars_and_step_metadata(tmp_path):
    path = write_torch(tmp_path / "run.pt", SD, nest="model", extra={
        "step": 1200, "epoch": 3, "loss": torch.tensor(0.25), "lr": np.float64(1e-3),
        "count": np.int64(4), "flag": True, "name": "x", "history": [1.0, 2.0]})
    ckpt = open_checkpoint(path)
    assert ckpt.scalars == {"step": 1200.0, "epoch": 3.0, "loss": 0.25, "lr": 1e-3, "count": 4.0}
    assert (ckpt.step, ckpt.step_origin, ckpt.epoch) == (1200, "metadata:step", 3)
    # global_step wins over step; metadata wins over the name
    path = write_torch(tmp_path / "step_5.pt", SD, nest="state_dict", extra={"global_step": 7, "step": 9})
    ckpt = open_checkpoint(path)
    assert (ckpt.step, ckpt.step_origin) == (7, "metadata:global_step")
    # a flat state dict's 1-element tensors are weights, not metadata
    assert open_checkpoint(write_torch(tmp_path / "flat.pt", SD)).scalars == {}


def test_safetensors_metadata_step(tmp_path):
    path = write_safetensors(tmp_path / "final.safetensors", SD,
                             metadata={"global_step": "1500", "format": "pt", "loss": "0.5"})
    ckpt = open_checkpoint(path)
    assert (ckpt.step, ckpt.step_origin) == (1500, "metadata:global_step")
    assert ckpt.scalars == {"global_step": 1500.0, "loss": 0.5}


def test_whole_pickled_module(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    model[1].register_buffer("scratch", torch.ones(1), persistent=False)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    expected = model.state_dict()
    with open_checkpoint(path).open() as reader:
        assert reader.keys() == list(expected)
        for key, value in expected.items():
            assert torch.equal(reader.get(key), value)


def test_hf_folder_and_trainer_metadata(tmp_path):
    config = {"model_type": "gpt_neox", "hidden_size": 6, "num_attention_heads": 2}
    folder = write_hf_folder(tmp_path / "checkpoint-300", SD, config=config,
                             trainer_state={"global_step": 300, "epoch": 2.0, "total_flos": 12.5,
                                            "is_world_process_zero": True},
                             trainer_extras=True)
    ckpt = open_checkpoint(folder)
    assert ckpt.path == folder and ckpt.files == (folder / "model.safetensors",)
    assert ckpt.config == config
    assert (ckpt.step, ckpt.step_origin, ckpt.epoch) == (300, "trainer_state.json", 2)
    assert ckpt.scalars["global_step"] == 300.0 and ckpt.scalars["total_flos"] == 12.5
    assert "is_world_process_zero" not in ckpt.scalars
    # both formats present: safetensors is read, the .bin ignored
    write_torch(folder / "pytorch_model.bin", {"other": torch.zeros(1)})
    with open_checkpoint(folder).open() as reader:
        assert sorted(reader.keys()) == sorted(SD)
    # sharded folder: the shards are the files, in index order
    sharded = write_hf_folder(tmp_path / "sharded", SD, n_shards=3)
    ckpt = open_checkpoint(sharded)
    assert [p.name for p in ckpt.files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert ckpt.step is None and ckpt.scalars["total_size"] > 0


def test_config_beside_a_file(tmp_path):
    write_torch(tmp_path / "step_1.pt", SD)
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 6}))
    assert open_checkpoint(tmp_path / "step_1.pt").config == {"hidden": 6}


def test_lightning_structure_with_hparams_object(tmp_path):
    hp = HParams(lr=np.float64(3e-3), width=np.int64(16), grid=np.arange(3.0), name="mlp")
    path = write_lightning_like(tmp_path / "epoch=2-step=30.ckpt", SD, global_step=30, epoch=2,
                                hparams_object=hp)
    SIDE_EFFECTS.clear()
    ckpt = open_checkpoint(path)
    with ckpt.open() as reader:
        assert reader.keys() == [f"model.{k}" for k in SD]
        for key, value in SD.items():
            assert torch.equal(reader.get(f"model.{key}"), value)
    assert SIDE_EFFECTS == []  # the hparams class was not rebuilt for real
    assert (ckpt.step, ckpt.step_origin, ckpt.epoch) == (30, "metadata:global_step", 2)
    # the same file loaded the unsafe way does run the class's code: the check above can fail
    torch.load(path, weights_only=False)
    assert SIDE_EFFECTS == ["HParams.__setstate__ ran"]
    SIDE_EFFECTS.clear()


def test_real_lightning_fixture_refused_by_weights_only_but_read_here():
    path = FIXTURES / "cnn-lightning" / "last.ckpt"
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)
    expected = torch.load(path, weights_only=False)["state_dict"]
    ckpt = open_checkpoint(path)
    assert ckpt.step == 640 and ckpt.epoch == 19
    with ckpt.open() as reader:
        assert reader.keys() == list(expected)
        for key, value in expected.items():
            assert torch.equal(reader.get(key), value)


def test_real_trainer_fixture_matches_safetensors():
    folder = FIXTURES / "neox-trainer" / "checkpoint-500"
    expected = safetensors.torch.load_file(folder / "model.safetensors")
    ckpt = open_checkpoint(folder)
    assert (ckpt.step, ckpt.step_origin) == (500, "trainer_state.json")
    assert ckpt.config["model_type"] == "gpt_neox"
    with ckpt.open() as reader:
        for key, value in expected.items():
            assert torch.equal(reader.get(key), value)


def test_fingerprint_hashes_the_weight_files(tmp_path):
    path = write_torch(tmp_path / "a.pt", SD)
    ckpt = open_checkpoint(path)
    fp = ckpt.fingerprint()
    assert isinstance(fp, Fingerprint)
    assert fp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fp.size == path.stat().st_size and fp.mtime == path.stat().st_mtime
    assert ckpt.fingerprint() is fp  # cached
    index = write_sharded(tmp_path / "sh", SD, "safetensors", n_shards=2)
    sharded = open_checkpoint(index)
    joined = b"".join(p.read_bytes() for p in sharded.files)
    assert sharded.fingerprint().sha256 == hashlib.sha256(joined).hexdigest()
    assert sharded.fingerprint().size == len(joined)


def test_checkpoint_is_a_plain_record(tmp_path):
    ckpt = open_checkpoint(write_torch(tmp_path / "iter_0000500.pth", SD))
    assert isinstance(ckpt, Checkpoint)
    assert (ckpt.path, ckpt.files, ckpt.step, ckpt.step_origin, ckpt.epoch, ckpt.config) == (
        tmp_path / "iter_0000500.pth", (tmp_path / "iter_0000500.pth",), 500, "name", None, None)
