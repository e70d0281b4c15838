"""Bad inputs to the checkpoint readers end in a one-line specdyn error or a visible note,
never an internal error or a hang (issue 15): memory bombs from declared sizes, bogus
devices and codecs in pickles, deeply nested JSON, out-of-range steps, symlink loops and
FIFOs. Every bad input is built by hand; calls that could hang run under a time limit."""

from __future__ import annotations

import codecs
import collections
import io
import json
import os
import pickle
import struct
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from _ckpt_factory import write_safetensors, write_torch

from specdyn.errors import CheckpointError, DiscoveryError, SpecdynError
from specdyn.sources import _formats, discover, open_checkpoint, read_metrics_file

_LIMIT_S = 10  # a call still running after this is a hang
_DEEP = "[" * 100_000 + "]" * 100_000  # far past Python's recursion limit
_HUGE_INT = "1" + "0" * 400  # a JSON integer too large for a float


def _bounded(fn, *fifos: Path):
    """`fn()` in a thread; fails the test if it runs past _LIMIT_S (a hang, e.g. a FIFO
    opened for reading), re-raising whatever it raised."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test thread below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(_LIMIT_S)
    if thread.is_alive():
        for fifo in fifos:  # a writer that opens and closes gives the reader EOF
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(_LIMIT_S)
        pytest.fail(f"still running after {_LIMIT_S} s: it hung")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    """Open a checkpoint and read every tensor (what analysis does)."""
    with open_checkpoint(path).open() as reader:
        return {key: reader.get(key) for key in reader.keys()}


def _one_line_error(exc: SpecdynError, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message and str(path) in message
    return message


# ----------------------------------------------------------------- crafted torch zips


class _Storage:
    """Pickles as a persistent storage id (the pid a torch file gives its storages)."""

    def __init__(self, numel: int):
        self.pid = ("storage", torch.FloatStorage, "0", "cpu", numel)


class _Call:
    """Pickles as fn(*args), whatever fn is (REDUCE)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None

    def reducer_override(self, obj):
        return (obj.fn, obj.args) if isinstance(obj, _Call) else NotImplemented


def _tensor(storage: _Storage, offset: int, size: tuple, stride: tuple) -> _Call:
    args = (storage, offset, size, stride, False, collections.OrderedDict())
    return _Call(torch._utils._rebuild_tensor_v2, *args)


def _torch_zip(path: Path, obj, record: bytes) -> Path:
    """A torch zip holding the pickle of `obj` and storage record 0 = `record`."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w/data.pkl", buf.getvalue())
        zf.writestr("w/byteorder", "little")
        zf.writestr("w/data/0", record)
        zf.writestr("w/version", "3\n")
    return path


def test_stride_0_expansion_past_the_bound_is_refused_before_allocating(tmp_path):
    # 4 stored bytes declared as 2**40 floats (4 TiB): main tried to allocate them
    path = _torch_zip(
        tmp_path / "bomb.pt", {"w": _tensor(_Storage(1), 0, (2**40,), (0,))}, b"\0" * 4
    )
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: _read_all(path))
    message = _one_line_error(err.value, path)
    assert "'w'" in message and "TORCH_MAX_EXPANDED_BYTES" in message
    assert str(4 * 2**40) in message


def test_a_small_expanded_tensor_torch_saved_still_reads(tmp_path):
    base = torch.arange(3, dtype=torch.float32).reshape(3, 1)
    path = tmp_path / "expanded.pt"
    torch.save({"w": base.expand(3, 5), "b": torch.ones(2)}, path)
    assert torch.load(path, weights_only=True)["w"].stride() == (1, 0)  # really stride 0
    expected = torch.load(path, weights_only=True)
    got = _read_all(path)
    assert torch.equal(got["w"], expected["w"]) and torch.equal(got["b"], expected["b"])


@pytest.mark.parametrize(
    ("numel", "offset", "size", "what"),
    [
        (10_000_000_000, 0, (10_000_000_000,), "expected 40000000000"),  # 40 GB storage
        (4, 2, (4,), "extends beyond its storage"),  # a view past its storage's end
        (4, 0, (100_000, 100_000), "extends beyond its storage"),
    ],
)
def test_declared_sizes_past_the_record_are_refused(tmp_path, numel, offset, size, what):
    stride = (1,) if len(size) == 1 else (0, 1)
    path = _torch_zip(
        tmp_path / "declared.pt", {"w": _tensor(_Storage(numel), offset, size, stride)}, b"\0" * 16
    )
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: _read_all(path))
    assert what in _one_line_error(err.value, path)


@pytest.mark.parametrize(
    "bad",
    [
        _Call(torch.device, "bogus"),
        _Call(torch.device, "cuda:99999999999999999999"),
        _Call(codecs.encode, "abc", "bogus"),
        _Call(codecs.encode, "abc\udcff", "latin1"),
    ],
    ids=["device", "device-index", "codec", "codec-unencodable"],
)
def test_bogus_device_or_codec_in_a_pickle_is_a_one_line_checkpoint_error(tmp_path, bad):
    import _codecs

    if bad.fn is codecs.encode:
        bad.fn = _codecs.encode  # the name the restricted unpickler may allow
    body = {"w": _tensor(_Storage(4), 0, (4,), (1,)), "extra": bad}
    path = _torch_zip(tmp_path / "bogus.pt", body, b"\0" * 16)
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: _read_all(path))
    _one_line_error(err.value, path)


# ----------------------------------------------------------------- JSON


def _safetensors(path: Path, header: str, data: bytes = b"\0" * 4) -> Path:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "what"),
    [
        ('{"__metadata__": {"a": %s}, "w": {"dtype": "F32", "shape": [1], '
         '"data_offsets": [0, 4]}}'.replace("%s", _DEEP), "nests deeper"),
        ('{"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', "unknown dtype"),
        ('{"w": {"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 4]}}', "unknown dtype"),
    ],
    ids=["deep-metadata", "dtype-list", "dtype-dict"],
)  # fmt: skip
def test_safetensors_header_deep_or_odd_dtype_is_one_line(tmp_path, header, what):
    path = _safetensors(tmp_path / "odd.safetensors", header)
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: _read_all(path))
    assert what in _one_line_error(err.value, path)


def test_deeply_nested_index_is_a_checkpoint_error(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    write_safetensors(folder / "model-00001.safetensors", {"w": torch.ones(2, 2)})
    index = folder / "model.safetensors.index.json"
    index.write_text(
        '{"weight_map": {"w": "model-00001.safetensors"}, "metadata": %s}'.replace("%s", _DEEP)
    )
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: open_checkpoint(index))
    message = _one_line_error(err.value, index)
    assert f"deeper than {_formats.JSON_MAX_DEPTH} levels" in message
    with pytest.raises(DiscoveryError):  # the folder's only checkpoint is unreadable
        _bounded(lambda: discover(folder))


@pytest.mark.parametrize("sidecar", ["config.json", "trainer_state.json"])
def test_deeply_nested_sidecar_is_a_note_and_the_checkpoint_still_reads(tmp_path, sidecar):
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    weights = {"w": torch.arange(4.0).reshape(2, 2)}
    write_safetensors(folder / "model.safetensors", weights)
    (folder / sidecar).write_text('{"global_step": 5, "a": %s}'.replace("%s", _DEEP))
    found = _bounded(lambda: discover(folder))
    notes = [n.message for n in found.notes if sidecar in n.message]
    assert notes and "deeper than" in notes[0]
    (ckpt,) = found.runs[0].checkpoints
    assert ckpt.step == 5  # from the name
    with ckpt.open() as reader:
        assert torch.equal(reader.get("w"), weights["w"])


def test_a_deep_metrics_line_is_skipped_with_a_note(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": %s}\n'.replace("%s", _DEEP))
    series, notes = _bounded(lambda: read_metrics_file(path))
    assert series == {"loss": {1: 0.5}}
    assert any("line 2" in n.message and "deeper than" in n.message for n in notes)


def test_json_depth_limit_ignores_brackets_inside_strings():
    text = json.dumps({"a": "[" * 1000, "b": [[1]]})
    assert _formats.loads_json(text) == json.loads(text)
    with pytest.raises(ValueError, match="deeper than 3"):
        _formats.loads_json("[[[[1]]]]", limit=3)
    assert _formats.loads_json("[[[1]]]", limit=3) == [[[1]]]


# ----------------------------------------------------------------- steps


@pytest.mark.parametrize("value", ["1e400", _HUGE_INT])
def test_infinite_trainer_step_is_a_note_naming_the_file(tmp_path, value):
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": torch.ones(2, 2)})
    (folder / "trainer_state.json").write_text(
        '{"global_step": %s, "log_history": []}'.replace("%s", value)
    )
    found = _bounded(lambda: discover(folder))
    notes = [n for n in found.notes if n.kind == "step-out-of-range"]
    assert len(notes) == 1 and str(folder) in notes[0].message
    assert "out of range" in notes[0].message
    assert found.runs[0].checkpoints[0].step == 7  # the name's step


@pytest.mark.parametrize("meta", [{"global_step": 10**30}, {"step": 1e20}, {"step": 10**400}])
def test_step_beyond_a_store_in_torch_metadata_is_skipped_or_noted(tmp_path, meta):
    path = write_torch(
        tmp_path / "run" / "model.pt", {"w": torch.ones(2, 2)}, nest="state_dict", extra=meta
    )
    try:
        found = _bounded(lambda: discover(path))
    except DiscoveryError as exc:  # the only checkpoint skipped: the reason is in the line
        message = _one_line_error(exc, path)
        assert "more than a store can hold" in message or "out of range" in message
    else:
        assert any(n.kind == "step-out-of-range" for n in found.notes)


def test_metrics_csv_with_steps_out_of_range_skips_those_rows_with_a_note(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(f"step,loss\n1e20,0.5\n{10**30},0.3\n{_HUGE_INT},0.2\n3,0.1\n")
    series, notes = _bounded(lambda: read_metrics_file(path))
    assert series == {"loss": {3: 0.1}}
    (note,) = [n for n in notes if "out of range" in n.message]
    assert str(path) in note.message and "3 line(s)" in note.message
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text('{"step": %s, "loss": 1}\n{"step": 2, "loss": %s}\n'.replace("%s", _HUGE_INT))
    series, notes = _bounded(lambda: read_metrics_file(jsonl))
    assert series == {"loss": {2: float("inf")}}
    assert any("out of range" in n.message for n in notes)


# ----------------------------------------------------------------- links and FIFOs


def test_symlink_loop_given_as_the_path_is_a_one_line_discovery_error(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(DiscoveryError) as err:
        _bounded(lambda: discover(loop))
    assert "symlink loop" in _one_line_error(err.value, loop)


fifo_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


@fifo_only
@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_fifo_given_as_the_checkpoint_is_refused_unopened(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: open_checkpoint(fifo), fifo)
    assert "not a regular file" in _one_line_error(err.value, fifo)
    with pytest.raises(DiscoveryError) as err:
        _bounded(lambda: discover(fifo), fifo)
    assert "not a regular file" in _one_line_error(err.value, fifo)


@fifo_only
def test_fifo_named_as_a_shard_is_refused_unopened(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    write_safetensors(folder / "a.safetensors", {"w": torch.ones(2)})
    fifo = folder / "b.safetensors"
    os.mkfifo(fifo)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}}))
    with pytest.raises(CheckpointError) as err:
        _bounded(lambda: open_checkpoint(index), fifo)
    assert "not a regular file" in _one_line_error(err.value, fifo)
    with pytest.raises(DiscoveryError) as err:
        _bounded(lambda: discover(folder), fifo)
    assert "not a regular file" in str(err.value)


@fifo_only
def test_fifo_in_the_folder_is_skipped_with_a_reason(tmp_path):
    write_safetensors(tmp_path / "step_1.safetensors", {"w": torch.ones(2)})
    fifo = tmp_path / "step_2.safetensors"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "metrics.csv")
    found = _bounded(lambda: discover(tmp_path), fifo, tmp_path / "metrics.csv")
    assert [c.step for c in found.runs[0].checkpoints] == [1]
    assert any(str(fifo) in n.message and "not a regular file" in n.message for n in found.notes)


@fifo_only
@pytest.mark.parametrize(
    "name", ["config.json", "trainer_state.json", "model.safetensors.index.json"]
)
def test_fifo_as_a_json_file_is_never_opened(tmp_path, name):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": torch.ones(2)})
    fifo = folder / name
    os.mkfifo(fifo)
    found = _bounded(lambda: discover(folder), fifo)
    assert found.runs[0].checkpoints[0].step == 3


@fifo_only
def test_fifo_as_the_metrics_file_is_a_one_line_error(tmp_path):
    fifo = tmp_path / "metrics.csv"
    os.mkfifo(fifo)
    with pytest.raises(SpecdynError) as err:
        _bounded(lambda: read_metrics_file(fifo), fifo)
    assert "not a regular file" in _one_line_error(err.value, fifo)


def test_only_regular_files_are_opened_by_the_one_opener(tmp_path):
    with pytest.raises(OSError, match="not a regular file"):
        _formats.open_regular(tmp_path)  # a folder: refused on the descriptor
    if sys.platform.startswith("linux"):
        with pytest.raises(OSError, match="not a regular file"):
            _formats.open_regular(Path("/dev/zero"))  # a device that never ends
