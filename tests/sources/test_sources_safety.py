"""Loading never runs code from a file; bad and hostile inputs are reported, not obeyed."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _ckpt_factory import (
    SIDE_EFFECTS,
    record_side_effect,
    sample_state_dict,
    write_malicious,
    write_plain_pickle,
    write_safetensors,
    write_sharded,
    write_torch,
)

from specdyn.errors import CheckpointError, UnsafePickleError
from specdyn.sources import discover, open_checkpoint


def _kind(err: CheckpointError) -> str:
    return getattr(err, "kind", "")


def test_os_system_payload_runs_nothing_and_is_reported(tmp_path):
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "evil.pt", os.system, (f"touch {marker}",))
    with pytest.raises(UnsafePickleError) as err:
        open_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "posix.system" in msg and "nothing was run" in msg
    assert "\n" not in msg and _kind(err.value) == "unsafe-pickle"
    assert not marker.exists()
    # the payload is real: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_eval_payload_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = write_malicious(tmp_path / "evil.ckpt", eval, (code,))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        open_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "func, args, named",
    [
        (exec, ("x = 1",), "builtins.exec"),
        (getattr, ([], "append"), "builtins.getattr"),
        (builtins.__import__, ("os",), "builtins.__import__"),
        (subprocess.call, (["true"],), "subprocess.call"),
        (shutil.rmtree, ("/nonexistent-dir",), "shutil.rmtree"),
        (os.remove, ("/nonexistent-file",), "posix.remove"),
        (pickle.loads, (b"N.",), "pickle.loads"),
    ],
)
def test_code_running_globals_are_refused(func, args, named, tmp_path):
    path = write_malicious(tmp_path / "evil.pt", func, args)
    with pytest.raises(UnsafePickleError, match=named.replace(".", r"\.")):
        open_checkpoint(path)


def test_protocol_0_and_legacy_pickles_are_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    raw = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "old.pt"
    path.write_bytes(raw)
    with pytest.raises(UnsafePickleError, match="os.system"):
        open_checkpoint(path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2), "evil": _Reduce(os.system, (f"touch {marker}",))}, legacy,
               _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError):
        open_checkpoint(legacy)
    assert not marker.exists()


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_unknown_callables_become_inert_stubs(tmp_path):
    """A call of an importable but unknown function is stubbed: nothing runs, weights load."""
    path = write_malicious(tmp_path / "odd.pt", record_side_effect, ("called from a pickle",))
    SIDE_EFFECTS.clear()
    with open_checkpoint(path).open() as reader:
        sd = sample_state_dict()
        assert reader.keys() == list(sd)
        assert torch.equal(reader.get("fc1.weight"), sd["fc1.weight"])
    assert SIDE_EFFECTS == []
    torch.load(path, weights_only=False)  # the unrestricted way runs it: the check can fail
    assert SIDE_EFFECTS == ["called from a pickle"]
    SIDE_EFFECTS.clear()


def test_numpy_values_in_metadata_are_rebuilt(tmp_path):
    extra = {"global_step": np.int64(40), "lr": np.float64(0.5), "table": np.arange(6).reshape(2, 3),
             "names": np.array(["a", "b"]), "flag": np.bool_(True), "when": np.datetime64("2024-01-01")}
    ckpt = open_checkpoint(write_torch(tmp_path / "n.pt", sample_state_dict(), nest="state_dict",
                                       extra=extra))
    assert ckpt.step == 40 and ckpt.scalars["lr"] == 0.5 and "flag" not in ckpt.scalars


@pytest.mark.parametrize(
    "writer, fragment",
    [
        (lambda p: write_plain_pickle(p, ["just", "strings"]), "list"),
        (lambda p: write_torch(p, {}, extra={"lr": 0.1, "names": ["a", "b"]}), "dict"),
        (lambda p: torch.save([1, 2, 3], p), "list"),
        (lambda p: torch.save({"optimizer": {"state": {0: {"m": torch.ones(2)}}}}, p), "dict"),
    ],
)
def test_pickles_without_weights_are_not_checkpoints(writer, fragment, tmp_path):
    path = tmp_path / "thing.pt"
    writer(path)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert _kind(err.value) == "not-a-checkpoint" and fragment in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript") as err:
        open_checkpoint(path)
    assert _kind(err.value) == "not-a-checkpoint"


def test_state_dict_pickled_with_pickle_dump_is_refused_clearly(tmp_path):
    path = write_plain_pickle(tmp_path / "sd.pt", {"w": torch.ones(3)})
    with pytest.raises(CheckpointError, match="pickle.dump instead of torch.save"):
        open_checkpoint(path)


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_index_pointing_outside_its_folder_is_refused(target, tmp_path):
    folder = tmp_path / "model"
    index = write_sharded(folder, sample_state_dict(), "safetensors", n_shards=2)
    write_safetensors(tmp_path / "outside.safetensors", {"x": torch.ones(1)})
    doc = json.loads(index.read_text())
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = target
    index.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(index)
    assert _kind(err.value) == "unsafe-index" and target in str(err.value)
    found = discover(tmp_path)
    assert any(n.kind == "unsafe-index" for n in found.notes)
    assert all(c.path != index for r in found.runs for c in r.checkpoints)


def test_index_with_symlink_escaping_its_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    index = write_sharded(folder, sample_state_dict(), "safetensors", n_shards=2)
    doc = json.loads(index.read_text())
    shard = folder / doc["weight_map"]["fc1.weight"]
    outside = tmp_path / "elsewhere.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside its folder"):
        open_checkpoint(index)


def test_missing_shard_and_wrong_map(tmp_path):
    index = write_sharded(tmp_path / "m", sample_state_dict(), "bin", n_shards=2)
    doc = json.loads(index.read_text())
    doc["weight_map"]["not.there"] = next(iter(doc["weight_map"].values()))
    index.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not.there"):
        open_checkpoint(index)
    second = sorted(set(doc["weight_map"].values()))[1]
    (tmp_path / "m" / second).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        open_checkpoint(index)


def _hf_cache_snapshot(repo: Path, sd: dict) -> Path:
    """A Hugging Face cache layout: snapshot files are links to ../../blobs/<hash>."""
    staging = write_sharded(repo / "staging", sd, "safetensors", n_shards=2).parent
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in sorted(staging.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.name.encode()).hexdigest()[:16]
        f.rename(blob)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    staging.rmdir()
    return snapshot


def test_hugging_face_cache_links_are_allowed_but_not_other_repos(tmp_path):
    sd = sample_state_dict()
    snapshot = _hf_cache_snapshot(tmp_path / "models--org--name", sd)
    ckpt = open_checkpoint(snapshot)
    assert ckpt.format == "safetensors-sharded"
    with ckpt.open() as reader:
        assert torch.equal(reader.get("fc1.weight"), sd["fc1.weight"])
    # a link from this snapshot into another repo's blobs is still refused
    other = _hf_cache_snapshot(tmp_path / "models--org--other", sd)
    index = snapshot / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    first = sorted(set(doc["weight_map"].values()))[0]
    (snapshot / first).unlink()
    (snapshot / first).symlink_to((other / first).resolve())
    with pytest.raises(CheckpointError, match="outside its folder"):
        open_checkpoint(snapshot)
