"""Every suffix torch users save weights under, read by content (issue 24, finding 2).

The files are written as the libraries' own loops write them: the PyTorch ImageNet
example / timm's ``torch.save({"epoch", "state_dict", "optimizer"}, "checkpoint_N.pth.tar")``
with ``model_best.pth.tar`` a byte copy of one of them, torch's legacy (non-zip) format,
``pickle.dump`` of numpy arrays; and files that share those suffixes without being weights.
"""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from _ckpt_factory import assert_sigma_is_svd

import specdyn
from specdyn.errors import CheckpointError
from specdyn.sources import discover, open_checkpoint
from specdyn.sources._checkpoint import probe
from specdyn.sources._stepnames import checkpoint_name

# What sentencepiece writes as tokenizer.model: a serialized ModelProto (field 1, pieces).
_SENTENCEPIECE = b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02" * 8


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 5)
    )


def _imagenet_run(folder: Path, epochs=(1, 2, 3), best=2) -> dict[int, dict[str, torch.Tensor]]:
    """The ImageNet example's loop: one SGD step per epoch, checkpoint_<epoch>.pth.tar, and
    model_best.pth.tar copied (shutil.copyfile, as the example does) from the best epoch."""
    folder.mkdir(parents=True)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saved = {}
    for epoch in epochs:
        loss = model(torch.randn(2, 3, 4, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = {
            "epoch": epoch,
            "arch": "tiny",
            "state_dict": model.state_dict(),
            "best_acc1": 0.5,
            "optimizer": opt.state_dict(),
        }
        torch.save(state, folder / f"checkpoint_{epoch}.pth.tar")
        saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        if epoch == best:
            shutil.copyfile(folder / f"checkpoint_{epoch}.pth.tar", folder / "model_best.pth.tar")
    return saved


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("checkpoint_20.pth.tar", "checkpoint_20"),
        ("model_best.pth.tar", "model_best"),
        ("ckpt_3.pt.tar", "ckpt_3"),
        ("step_5.tar", "step_5"),
        ("weights_7.pkl", "weights_7"),
        ("step_9.model", "step_9"),
        ("x.safetensors", "x"),
        ("x.pt", "x"),
    ],
)
def test_checkpoint_name_strips_the_longest_suffix(filename, name):
    assert checkpoint_name(filename) == name


def test_imagenet_pth_tar_folder_is_one_run_with_best_as_a_duplicate(tmp_path):
    saved = _imagenet_run(tmp_path / "run")
    (tmp_path / "run" / "tokenizer.model").write_bytes(_SENTENCEPIECE)
    found = discover(tmp_path / "run")
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == [1, 2, 3]
    assert [c.path.name for c in run.checkpoints] == [f"checkpoint_{e}.pth.tar" for e in (1, 2, 3)]
    assert all(c.format == "torch" and c.epoch in (1, 2, 3) for c in run.checkpoints)
    kinds = {n.kind: n for n in found.notes}
    # model_best: no step in its name, the same bytes as epoch 2: analysed once, said so
    assert "model_best.pth.tar" in kinds["duplicate"].message
    assert "step 2" in kinds["duplicate"].message
    # the sentencepiece model beside them: skipped, named, its content said
    skip = kinds["not-a-checkpoint"]
    assert skip.path == str(tmp_path / "run" / "tokenizer.model")
    assert "first bytes are 0a 0b 0a 05" in skip.message and "skipped" in skip.message
    # the weights read are the model's own state dict, bit for bit
    with run.checkpoints[1].open() as reader:
        assert reader.keys() == list(_model().state_dict())
        for key, value in saved[2].items():
            assert torch.equal(reader.get(key), value)


def test_pth_tar_run_is_analysed_and_sigma_matches_numpy(tmp_path):
    saved = _imagenet_run(tmp_path / "run", epochs=(1, 2), best=2)
    result = specdyn.analyze(tmp_path / "run", home=tmp_path / "ws", vectors=None)
    (analysed,) = result.runs
    assert analysed.steps_computed == [1, 2]
    with specdyn.open_run("run", home=tmp_path / "ws") as store:
        weighted = [f"{n}.weight" for n, m in _model().named_modules() if hasattr(m, "weight")]
        assert sorted(store.matrices) == sorted(weighted)
        sigma = store.sigma("3.weight")
    assert_sigma_is_svd(sigma, [saved[epoch]["3.weight"] for epoch in (1, 2)])


def test_legacy_format_tar_and_pt_tar_are_read_by_content(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "step_4.tar", _use_new_zipfile_serialization=False)
    torch.save({"model": model.state_dict()}, tmp_path / "step_8.pt.tar")
    legacy = open_checkpoint(tmp_path / "step_4.tar")
    zipped = open_checkpoint(tmp_path / "step_8.pt.tar")
    assert (legacy.format, legacy.step) == ("torch-legacy", 4)
    assert (zipped.format, zipped.step) == ("torch", 8)
    for ckpt in (legacy, zipped):
        with ckpt.open() as reader:
            assert reader.keys() == list(model.state_dict())
            assert torch.equal(reader.get("0.weight"), model.state_dict()["0.weight"])


def test_safetensors_under_a_torch_suffix_is_read_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _model().state_dict().items()}
    save_file(sd, str(tmp_path / "step_3.bin"))
    ckpt = open_checkpoint(tmp_path / "step_3.bin")
    assert ckpt.format == "safetensors"
    with ckpt.open() as reader:
        assert torch.equal(reader.get("3.weight"), sd["3.weight"])


def test_a_plain_pickle_without_arrays_is_skipped_with_its_reason(tmp_path):
    with open(tmp_path / "settings_1.pkl", "wb") as fh:
        pickle.dump({"lr": 0.1, "layers": [3, 4]}, fh)
    with pytest.raises(CheckpointError, match="settings_1.pkl: a plain pickle of a dict"):
        open_checkpoint(tmp_path / "settings_1.pkl")
    torch.save(_model().state_dict(), tmp_path / "t.pkl")  # torch.save under .pkl: read
    assert open_checkpoint(tmp_path / "t.pkl").format == "torch"


def test_tar_archives_torch_pre_1_0_refused_and_others_skipped(tmp_path):
    def tar(path: Path, names: list[str]) -> None:
        with tarfile.open(path, "w") as archive:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 4
                archive.addfile(info, io.BytesIO(b"\x89PNG"))

    tar(tmp_path / "old.tar", ["sys_info", "pickle", "storages", "tensors"])
    with pytest.raises(CheckpointError, match="tar format of PyTorch before 1.0") as err:
        open_checkpoint(tmp_path / "old.tar")
    assert err.value.kind == "unreadable" and "\n" not in str(err.value)
    tar(tmp_path / "images.tar", ["a.png", "b.png"])
    with pytest.raises(CheckpointError, match=r"a tar archive of other files \(2 members") as err:
        open_checkpoint(tmp_path / "images.tar")
    assert err.value.kind == "not-a-checkpoint"


def test_non_weight_files_beside_checkpoints_never_stop_the_folder(tmp_path):
    _imagenet_run(tmp_path / "run", epochs=(1, 2), best=1)
    (tmp_path / "run" / "tokenizer.model").write_bytes(_SENTENCEPIECE)
    (tmp_path / "run" / "vocab.model").write_bytes(_SENTENCEPIECE)
    (tmp_path / "run" / "notes.pkl").write_bytes(b"plain text, not a pickle\n")
    with tarfile.open(tmp_path / "run" / "images.tar", "w") as archive:
        archive.addfile(tarfile.TarInfo("empty.png"), io.BytesIO(b""))
    found = discover(tmp_path / "run")
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == [1, 2]
    skipped = [n for n in found.notes if n.kind == "not-a-checkpoint"]
    text = " | ".join(n.message for n in skipped)
    # three files of other content (two sentencepiece models, a text .pkl): counted in one
    # note naming the first; the tar in its own note, named
    assert len(skipped) == 2
    assert (
        f"3 files of other content (tokenizers, images, …) ({tmp_path / 'run' / 'notes.pkl'}"
        in text
    )
    assert "images.tar: a tar archive of other files (1 members, e.g. 'empty.png')" in text
    with pytest.raises(CheckpointError, match="notes.pkl: holds text, not PyTorch or safe"):
        open_checkpoint(tmp_path / "run" / "notes.pkl")


def test_a_plain_pickle_of_numpy_arrays_is_read(tmp_path):
    model = _model()
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    arrays["3.weight"] = arrays["3.weight"].astype(">f8")  # big-endian, as numpy may save
    with open(tmp_path / "weights_7.pkl", "wb") as fh:
        pickle.dump({"epoch": 2, "params": arrays}, fh)
    ckpt, notes = probe(tmp_path / "weights_7.pkl", "file")
    assert (ckpt.format, ckpt.step, ckpt.epoch) == ("pickle", 7, 2)
    assert notes[0].kind == "nested-weights" and "['params']" in notes[0].message
    with ckpt.open() as reader:
        assert reader.keys() == list(arrays)
        got = reader.get("3.weight")
        assert got.dtype == torch.float64
        assert torch.equal(got, model.state_dict()["3.weight"].double())
        assert torch.equal(reader.get("0.weight"), model.state_dict()["0.weight"])


def test_tokenizer_model_in_a_model_folder_is_a_side_file(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in _model().state_dict().items()},
        str(folder / "model.safetensors"),
    )
    (folder / "tokenizer.model").write_bytes(_SENTENCEPIECE)
    found = discover(folder)
    assert [c.step for c in found.runs[0].checkpoints] == [10]
    assert found.notes == []


def test_tensors_pickled_with_pickle_dump_are_refused_as_unreadable(tmp_path):
    with open(tmp_path / "step_1.pkl", "wb") as fh:
        pickle.dump(_model().state_dict(), fh)
    with pytest.raises(CheckpointError, match="pickled with pickle.dump") as err:
        open_checkpoint(tmp_path / "step_1.pkl")
    assert err.value.kind == "unreadable" and "corrupt" not in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "step_1.pkl"))
