"""Checkpoint files whose bytes or declarations are wrong are refused, not read as if good:
zip records are checked against their CRC-32 and inflated only as far as they declare;
safetensors headers are validated as the official library validates them (it is the
oracle here) and within bounded work; legacy storage views stay inside their storage;
index entries follow the symlink rule of `read_index`."""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _ckpt_factory import sample_state_dict, write_safetensors, write_sharded, write_torch
from safetensors import safe_open

from specdyn.errors import CheckpointError
from specdyn.sources import _formats, open_checkpoint


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    """Open a checkpoint and read every tensor (what analysis does)."""
    with open_checkpoint(path).open() as reader:
        return {key: reader.get(key) for key in reader.keys()}


def _refusal(path: Path) -> str:
    """The one-line CheckpointError opening or reading `path` raises."""
    with pytest.raises(CheckpointError) as err:
        _read_all(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# ----------------------------------------------------------------- zip helpers


def _data_offset(path: Path, name: str) -> int:
    """Absolute offset of a zip record's bytes (after its local header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of a file in place (a bit flip on disk or in transit)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _patch_record(path: Path, name: str, *, crc: int | None = None,
                  compress_size: int | None = None, file_size: int | None = None) -> None:
    """Rewrite what a zip record declares (CRC, sizes) in its local and central headers."""
    with zipfile.ZipFile(path) as zf:
        info, central = zf.getinfo(name), zf.start_dir
    blob = bytearray(path.read_bytes())
    pos = central
    while blob[pos:pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", blob[pos + 28:pos + 34])
        if blob[pos + 46:pos + 46 + name_len] == name.encode():
            break
        pos += 46 + name_len + extra_len + comment_len
    else:
        raise AssertionError(f"no central record for {name}")
    for base, fields in ((info.header_offset, (14, 18, 22)), (pos, (16, 20, 24))):
        for value, at in zip((crc, compress_size, file_size), fields, strict=True):
            if value is not None:
                blob[base + at:base + at + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(blob))


class _Storage:
    """Pickles as a persistent storage id (the pid a torch file gives its storages)."""

    def __init__(self, pid: tuple):
        self.pid = pid


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())


class _CraftingPickler(pickle.Pickler):
    """Writes tensors and storages with any values, even ones torch.save never writes."""

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            return torch._utils._rebuild_tensor_v2, obj.args
        return NotImplemented


def _crafted_pickle(obj) -> bytes:
    """`obj` pickled by _CraftingPickler (protocol 2, as torch.save)."""
    import io

    buf = io.BytesIO()
    _CraftingPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _write_zip_checkpoint(path: Path, numel: int, data: bytes, *, deflate: bool = False) -> Path:
    """A torch zip holding tensor "w" of `numel` float32 over storage 0 whose record is `data`."""
    storage = _Storage(("storage", torch.FloatStorage, "0", "cpu", numel))
    pkl = _crafted_pickle({"w": _Tensor(storage, 0, (numel,), (1,))})
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w/data.pkl", pkl)
        zf.writestr("w/byteorder", "little")
        zf.writestr("w/data/0", data, compress_type=method)
        zf.writestr("w/version", "3\n")
    return path


# ----------------------------------------------------------------- zip: CRC


def test_bit_flip_in_a_tensor_record_is_refused(tmp_path):
    sd = sample_state_dict()
    path = write_torch(tmp_path / "flip.pt", sd)
    flipped = "flip/data/4"  # fc1.weight's storage (the fifth saved)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(flipped).file_size == sd["fc1.weight"].numel() * 4
    _flip_byte(path, _data_offset(path, flipped) + 13)
    with open_checkpoint(path).open() as reader:
        assert torch.equal(reader.get("fc2.weight"), sd["fc2.weight"])  # the others still read
        with pytest.raises(CheckpointError) as err:
            reader.get("fc1.weight")
    message = str(err.value)
    assert str(path) in message and flipped in message and "'fc1.weight'" in message
    assert "CRC-32" in message and "the file is corrupt; re-save or re-download it" in message


def test_bit_flip_outside_a_view_is_found_by_checking_its_whole_record(tmp_path):
    base = torch.arange(1000, dtype=torch.float32)
    path = write_torch(tmp_path / "view.pt", {"piece": base[100:110], "whole": torch.ones(3)})
    record = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("/data/0"))
    _flip_byte(path, _data_offset(path, record) + 4 * 500)  # inside base, far from the piece
    assert _refusal(path).count("CRC-32") == 1


def test_a_view_is_checked_once_then_read_alone(tmp_path):
    base = torch.randn(200_000)
    path = write_torch(tmp_path / "view.pt", {"a": base[10:20], "b": base[5000:5010]})
    with open_checkpoint(path).open() as reader:
        with open("/proc/self/io") as io_counters:
            def read_bytes() -> int:
                io_counters.seek(0)
                return int(io_counters.read().split("rchar:")[1].split()[0])
            before = read_bytes()
            assert torch.equal(reader.get("a"), base[10:20])
            first = read_bytes() - before
            before = read_bytes()
            assert torch.equal(reader.get("b"), base[5000:5010])
            second = read_bytes() - before
    assert first >= 4 * base.numel()  # the whole record, for its CRC
    assert second < 4096  # already checked: only the view's bytes


def test_bit_flip_in_the_pickle_record_is_refused_at_open(tmp_path):
    path = write_torch(tmp_path / "pkl.pt", sample_state_dict())
    _flip_byte(path, _data_offset(path, "pkl/data.pkl") + 40)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    message = str(err.value)
    assert "pkl/data.pkl" in message and "CRC-32" in message and "re-save or re-download" in message


def test_bit_flip_in_a_deflated_record_is_refused(tmp_path):
    values = torch.linspace(-1, 1, 4096)
    path = _write_zip_checkpoint(tmp_path / "z.pt", 4096, values.numpy().tobytes(), deflate=True)
    assert torch.equal(_read_all(path)["w"], values)
    # a flip in deflated data either breaks the stream or changes the output: both refused
    _flip_byte(path, _data_offset(path, "w/data/0") + 200)
    assert "w/data/0" in _refusal(path)


# ----------------------------------------------------------------- zip: declared sizes


def test_deflated_record_inflating_past_its_declared_size_is_refused(tmp_path):
    # declares 16 bytes (what the pickle needs, with their CRC) but inflates to 64 MiB
    path = _write_zip_checkpoint(tmp_path / "bomb.pt", 4, bytes(64 * 2**20), deflate=True)
    _patch_record(path, "w/data/0", crc=zlib.crc32(bytes(16)), file_size=16)
    with open_checkpoint(path).open() as reader:
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointError) as err:
                reader.get("w")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "inflates past its declared 16 bytes" in str(err.value)
    assert peak < 2 * 2**20  # nothing near the 64 MiB the stream would produce


def test_deflated_record_declaring_more_than_deflate_can_produce_is_refused_unread(tmp_path):
    numel = 2**28  # 1 GiB declared, from a few deflated bytes
    path = _write_zip_checkpoint(tmp_path / "absurd.pt", numel, bytes(1024), deflate=True)
    _patch_record(path, "w/data/0", file_size=4 * numel)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert "ZIP_MAX_DEFLATE_RATIO" in str(err.value) and str(_formats.ZIP_MAX_DEFLATE_RATIO) in str(err.value)


def test_record_declared_past_the_end_of_the_file_is_refused_at_open(tmp_path):
    numel = 250_000  # declares 1 MB of data in a file of a few hundred bytes
    path = _write_zip_checkpoint(tmp_path / "short.pt", numel, bytes(16))
    _patch_record(path, "w/data/0", compress_size=4 * numel, file_size=4 * numel)
    with pytest.raises(CheckpointError, match="past the end of the file"):
        open_checkpoint(path)


def test_other_zip_compression_methods_are_refused(tmp_path):
    path = tmp_path / "bz.pt"
    _write_zip_checkpoint(path, 4, bytes(16))
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "b.pt", "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_BZIP2)
    assert "compression method 12" in _refusal(tmp_path / "b.pt")


# ----------------------------------------------------------------- safetensors


def _st(header: dict | None = None, data: bytes = b"", raw: bytes | None = None) -> bytes:
    """A safetensors file: 8-byte header length, the header (JSON of `header`, or `raw`), data."""
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _t(begin: int, end: int, shape=(2,), dtype="F32", **extra) -> dict:
    """One header entry."""
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end], **extra}


_A8 = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'  # + "}" or more members
_CASES: dict[str, bytes] = {
    "good": _st({"a": _t(0, 8), "b": _t(8, 16)}, bytes(16)),
    "good-unsorted": _st({"b": _t(8, 16), "a": _t(0, 8)}, bytes(16)),
    "same-duplicate-key": _st(raw=_A8 + b',"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data=bytes(8)),
    "duplicate-key-elsewhere": _st(raw=_A8 + b',"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', data=bytes(16)),
    "duplicate-metadata": _st(raw=b'{"__metadata__":{"x":"1"},"__metadata__":{"x":"2"},' + _A8[1:] + b"}", data=bytes(8)),
    "duplicate-in-metadata": _st(raw=b'{"__metadata__":{"x":"1","x":"2"},' + _A8[1:] + b"}", data=bytes(8)),
    "duplicate-field": _st(raw=b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data=bytes(8)),
    "duplicate-extra-field": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1,"x":2}}', data=bytes(8)),
    "overlap": _st({"a": _t(0, 8), "b": _t(4, 12)}, bytes(12)),
    "gap": _st({"a": _t(0, 8), "b": _t(12, 20)}, bytes(20)),
    "not-at-zero": _st({"a": _t(4, 12)}, bytes(12)),
    "trailing-bytes": _st({"a": _t(0, 8)}, bytes(12)),
    "truncated": _st({"a": _t(0, 8)}, bytes(4)),
    "begin-after-end": _st({"a": _t(8, 0, (0,))}, bytes(8)),
    "wrong-length": _st({"a": _t(0, 8, (3,))}, bytes(8)),
    "empty": _st({}),
    "empty-with-data": _st({}, bytes(4)),
    "zero-sized": _st({"a": _t(0, 0, (0,)), "b": _t(0, 8), "c": _t(8, 8, (2, 0))}, bytes(8)),
    "zero-sized-in-a-gap": _st({"a": _t(0, 8), "b": _t(9, 9, (0,))}, bytes(9)),
    "scalar": _st({"a": _t(0, 4, ())}, bytes(4)),
    "leading-space": _st(raw=b" " + _A8 + b"}", data=bytes(8)),
    "trailing-space": _st(raw=_A8 + b"}   ", data=bytes(8)),
    "trailing-nul": _st(raw=_A8 + b"}\0\0", data=bytes(8)),
    "bom": _st(raw=b"\xef\xbb\xbf" + _A8 + b"}", data=bytes(8)),
    "metadata-null": _st({"__metadata__": None, "a": _t(0, 8)}, bytes(8)),
    "metadata-int": _st({"__metadata__": {"step": 3}, "a": _t(0, 8)}, bytes(8)),
    "metadata-list": _st({"__metadata__": ["x"], "a": _t(0, 8)}, bytes(8)),
    "metadata-null-value": _st({"__metadata__": {"x": None}, "a": _t(0, 8)}, bytes(8)),
    "metadata-as-tensor": _st({"__metadata__": _t(0, 8)}, bytes(8)),
    "negative-dim": _st({"a": _t(0, 8, (-2,))}, bytes(8)),
    "float-dim": _st({"a": _t(0, 8, (2.0,))}, bytes(8)),
    "exponent-dim": _st(raw=b'{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}', data=bytes(8)),
    "bool-dim": _st({"a": _t(0, 8, (True, 2))}, bytes(8)),
    "string-dim": _st({"a": _t(0, 8, ("2",))}, bytes(8)),
    "nested-dim": _st({"a": _t(0, 8, ([2],))}, bytes(8)),
    "minus-zero-offset": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}}', data=bytes(8)),
    "float-offset": _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, bytes(8)),
    "three-offsets": _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, bytes(8)),
    "one-offset": _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, bytes(8)),
    "offsets-object": _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": {"a": 0}}}, bytes(8)),
    "huge-dim": _st(raw=b'{"a":{"dtype":"F32","shape":[18446744073709551617],"data_offsets":[0,8]}}', data=bytes(8)),
    "overflowing-shape": _st({"a": _t(0, 8, (2**32, 2**32))}, bytes(8)),
    "overflowing-bytes": _st({"a": _t(0, 8, (2**64 - 1,), dtype="U8")}, bytes(8)),
    "extra-field": _st({"a": _t(0, 8, x={"y": [1, 2]})}, bytes(8)),
    "missing-shape": _st({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8)),
    "unknown-dtype": _st({"a": _t(0, 8, dtype="F33")}, bytes(8)),
    "lowercase-dtype": _st({"a": _t(0, 8, dtype="f32")}, bytes(8)),
    "null-dtype": _st({"a": _t(0, 8, dtype=None)}, bytes(8)),
    "other-dtypes": _st({"a": _t(0, 2, (1,), "BF16"), "b": _t(2, 4, (2,), "U8"), "c": _t(4, 12, (1,), "C64")}, bytes(12)),
    "entry-not-object": _st({"a": "x"}),
    "header-not-object": _st(raw=b"[]"),
    "not-utf8": _st(raw=b'{"\xff":1}'),
    "not-json": _st(raw=b'{"a":'),
    "empty-header": _st(raw=b""),
    "nan": _st(raw=_A8 + b',"__metadata__":{"x":NaN}}', data=bytes(8)),
    "number-out-of-range": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1e400}}', data=bytes(8)),
    "big-int-extra": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":123456789012345678901234567890}}', data=bytes(8)),
    "control-character": _st(raw=b'{"a\x01":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data=bytes(8)),
    "lone-surrogate": _st(raw=b'{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data=bytes(8)),
    "lone-surrogate-extra": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":"\\udc00"}}', data=bytes(8)),
    "surrogate-pair": _st(raw=b'{"\\ud83d\\ude00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data=bytes(8)),
    "escaped-field-name": _st(raw=b'{"a":{"dtyp\\u0065":"F32","shape":[2],"data_offsets":[0,8]}}', data=bytes(8)),
    "depth-127": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + b"[" * 125 + b"]" * 125 + b"}}", data=bytes(8)),
    "depth-128": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + b"[" * 126 + b"]" * 126 + b"}}", data=bytes(8)),
    "depth-2000": _st(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + b"[" * 2000 + b"]" * 2000 + b"}}", data=bytes(8)),
    "empty-name": _st({"": _t(0, 8)}, bytes(8)),
    "header-longer-than-file": struct.pack("<Q", 64) + b"{}",
    "shorter-than-8-bytes": b"\x01\0\0",
    "header-over-the-limit": struct.pack("<Q", 100_000_001) + b"{}" + b" " * 100,
}


def _official_accepts(path: Path) -> bool:
    """Whether the official safetensors library reads every tensor of the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        safetensors.torch.load(path.read_bytes())
    except Exception:  # noqa: BLE001 - any refusal of the oracle counts as a refusal
        return False
    return True


@pytest.mark.parametrize("case", sorted(_CASES))
def test_safetensors_refused_exactly_when_the_official_library_refuses(case, tmp_path):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(_CASES[case])
    official = _official_accepts(path)
    try:
        ours = _read_all(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        ours = None
    assert (ours is not None) == official, f"official {'accepts' if official else 'refuses'} it"
    if ours is not None:
        with safe_open(str(path), framework="pt") as f:
            assert sorted(ours) == sorted(f.keys())
            for key in f.keys():
                assert torch.equal(ours[key], f.get_tensor(key)) and ours[key].dtype == f.get_tensor(key).dtype


def test_a_real_file_still_reads(tmp_path):
    sd = sample_state_dict()
    path = write_safetensors(tmp_path / "w.safetensors", sd, metadata={"step": "3"})
    ours = _read_all(path)
    assert all(torch.equal(ours[k], sd[k]) for k in sd)


def test_header_over_the_official_limit_is_refused_unread(tmp_path):
    # the reported bomb: a 100 MiB header declaring 1.28 M tensors (sparse: nothing written)
    path = tmp_path / "bomb.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 100 * 2**20))
        fh.truncate(8 + 100 * 2**20 + 1_280_000 * 4)
    started = time.perf_counter()
    message = _refusal(path)
    assert time.perf_counter() - started < 0.5
    assert "SAFETENSORS_MAX_HEADER_BYTES" in message and "100000000" in message


def _many_tensors_header(n: int, key: str = "data_offsets") -> bytes:
    """A header of `n` one-element F16 tensors whose offsets field is spelled `key`."""
    entries = ",".join(
        f'"layers.{i}.w":{{"dtype":"F16","shape":[1],"{key}":[{2 * i},{2 * i + 2}]}}'
        for i in range(n)
    )
    return ("{" + entries + "}").encode()


def test_header_declaring_too_many_tensors_is_refused_before_it_is_parsed(tmp_path):
    n = _formats.SAFETENSORS_MAX_TENSORS + 1
    path = tmp_path / "many.safetensors"
    path.write_bytes(_st(raw=_many_tensors_header(n), data=bytes(2 * n)))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        message = _refusal(path)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "SAFETENSORS_MAX_TENSORS" in message and str(n - 1) in message
    assert elapsed < 1.0 and peak < 12 * 2**20  # the header is ~19 MB; nothing of it is parsed


def test_escaped_field_names_do_not_hide_tensors_from_the_count(tmp_path, monkeypatch):
    monkeypatch.setattr(_formats, "SAFETENSORS_MAX_TENSORS", 100)
    path = tmp_path / "escaped.safetensors"
    path.write_bytes(_st(raw=_many_tensors_header(101, "data\\u005foffsets"), data=bytes(202)))
    assert "SAFETENSORS_MAX_TENSORS" in _refusal(path)
    path.write_bytes(_st(raw=_many_tensors_header(100, "data\\u005foffsets"), data=bytes(200)))
    assert len(_read_all(path)) == 100


# ----------------------------------------------------------------- legacy torch files

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _write_legacy(path: Path, *, numel: int = 8, header_numel: int | None = None,
                  view: tuple | None = None, offset: int = 0, size: tuple = (8,)) -> Path:
    """A pre-1.6 torch.save file holding tensor "w" (float32) over storage "0", with any
    storage view, storage offset and size, as a hostile or damaged file could have."""
    storage = _Storage(("storage", torch.FloatStorage, "0", "cpu", numel, view))
    sys_info = {"protocol_version": 1001, "little_endian": sys.byteorder == "little",
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as fh:
        for obj in (_LEGACY_MAGIC, 1001, sys_info):
            pickle.dump(obj, fh, protocol=2)
        fh.write(_crafted_pickle({"w": _Tensor(storage, offset, size, (1,))}))
        pickle.dump(["0"], fh, protocol=2)
        fh.write(struct.pack("=q", numel if header_numel is None else header_numel))
        fh.write(torch.arange(max(numel, 0), dtype=torch.float32).numpy().tobytes())
    return path


def test_crafted_legacy_file_reads(tmp_path):
    assert torch.equal(_read_all(_write_legacy(tmp_path / "ok.pt"))["w"], torch.arange(8.0))
    view = _read_all(_write_legacy(tmp_path / "v.pt", view=("v", 2, 4), size=(4,)))["w"]
    assert torch.equal(view, torch.arange(2.0, 6.0))


@pytest.mark.parametrize(
    "damage",
    [
        {"view": ("v", -2, 4), "size": (4,)},
        {"view": ("v", -(10**6), 4), "size": (4,)},
        {"view": ("v", 6, 4), "size": (4,)},
        {"view": ("v", 0, -4), "size": (4,)},
        {"view": ("v", 0), "size": (4,)},
        {"numel": -8, "size": (0,)},
        {"offset": -1},
        {"offset": -(10**6)},
        {"size": (9,)},
    ],
    ids=["view-offset-negative", "view-offset-far-negative", "view-past-storage",
         "view-size-negative", "view-malformed", "numel-negative", "offset-negative",
         "offset-far-negative", "tensor-past-storage"],
)
def test_legacy_offsets_outside_the_storage_are_refused(damage, tmp_path):
    _refusal(_write_legacy(tmp_path / "bad.pt", **damage))


# ----------------------------------------------------------------- index symlinks


def _kind(err: CheckpointError) -> str:
    return getattr(err, "kind", "")


def _move_out(index: Path, key: str, outside: Path) -> tuple[Path, str]:
    """Move the shard holding `key` to `outside`; returns (its old path, its index name)."""
    name = json.loads(index.read_text())["weight_map"][key]
    shard = index.parent / name
    outside.mkdir(parents=True, exist_ok=True)
    shard.rename(outside / shard.name)
    return shard, name


def _set_entries(index: Path, old: str, new: str) -> None:
    """Point every weight_map entry naming `old` at `new`."""
    doc = json.loads(index.read_text())
    doc["weight_map"] = {k: (new if v == old else v) for k, v in doc["weight_map"].items()}
    index.write_text(json.dumps(doc))


def _refused_index(index: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(index)
    assert _kind(err.value) == "unsafe-index" and "\n" not in str(err.value)
    return str(err.value)


def test_entry_through_a_symlinked_subfolder_leading_out_is_refused(tmp_path):
    index = write_sharded(tmp_path / "model", sample_state_dict(), "safetensors", n_shards=2)
    shard, name = _move_out(index, "fc1.weight", tmp_path / "elsewhere")
    (index.parent / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _set_entries(index, name, f"sub/{shard.name}")
    assert "symlink" in _refused_index(index)


def test_fake_snapshots_folder_beside_a_blobs_link_is_refused(tmp_path):
    # <x>/snapshots/<rev>/shard → ../../blobs/shard, where <x>/blobs links elsewhere
    repo = tmp_path / "models--org--name"
    index = write_sharded(repo / "snapshots" / "rev", sample_state_dict(), "safetensors", n_shards=2)
    shard, _name = _move_out(index, "fc1.weight", tmp_path / "private")
    (repo / "blobs").symlink_to(tmp_path / "private", target_is_directory=True)
    shard.symlink_to(Path("..") / ".." / "blobs" / shard.name)
    _refused_index(index)


def test_snapshots_and_blobs_outside_a_hub_repo_folder_are_not_a_cache(tmp_path):
    # a real blobs/ folder, but beside a snapshots/ folder that is no models--org--name repo
    home = tmp_path / "someone"
    index = write_sharded(home / "snapshots" / "rev", sample_state_dict(), "safetensors", n_shards=2)
    shard, _name = _move_out(index, "fc1.weight", home / "blobs")
    shard.symlink_to(Path("..") / ".." / "blobs" / shard.name)
    _refused_index(index)


def test_symlinked_subfolder_inside_a_snapshot_is_refused(tmp_path):
    repo, sd = tmp_path / "models--org--name", sample_state_dict()
    snapshot = _hub_cache(repo, {"model": sd})
    (snapshot / "sub").symlink_to(Path("..") / ".." / "blobs", target_is_directory=True)
    index = snapshot / "model.safetensors.index.json"
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    blob = (snapshot / first).resolve().name
    # the index is a link to a blob: give the snapshot its own, naming the shard through sub/
    text = index.read_text()
    index.unlink()
    index.write_text(text)
    _set_entries(index, first, f"sub/{blob}")
    assert (snapshot / "sub" / blob).is_file()
    _refused_index(index)


@pytest.mark.parametrize("name", ["a\\b.safetensors", "/etc/passwd", "../x.safetensors",
                                  "sub/../../x.safetensors", ".", "a\0b"])
def test_index_names_must_be_plain_relative_names(name, tmp_path):
    index = write_sharded(tmp_path / "model", sample_state_dict(), "safetensors", n_shards=2)
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    _set_entries(index, first, name)
    _refused_index(index)


def test_symlink_staying_inside_the_folder_is_followed(tmp_path):
    sd = sample_state_dict()
    index = write_sharded(tmp_path / "model", sd, "safetensors", n_shards=2)
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    (index.parent / "store").mkdir()
    (index.parent / first).rename(index.parent / "store" / first)
    (index.parent / first).symlink_to(Path("store") / first)
    ours = _read_all(index)
    assert all(torch.equal(ours[k], sd[k]) for k in sd)


def _hub_cache(repo: Path, folders: dict[str, dict]) -> Path:
    """A Hugging Face hub cache repo as huggingface_hub lays it out: blobs/<sha256>,
    snapshots/<commit>/<file> → ../../blobs/<sha256> (one ../ more per sub-folder), refs/main.
    `folders` maps a snapshot sub-folder ("" or "model" = top level) to its state dict."""
    import hashlib

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for sub, sd in folders.items():
        staging = write_sharded(repo / "staging", sd, "safetensors", n_shards=2).parent
        target = snapshot / sub if sub not in ("", "model") else snapshot
        target.mkdir(parents=True, exist_ok=True)
        depth = len(target.relative_to(repo).parts)
        for f in sorted(staging.iterdir()):
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
            f.rename(repo / "blobs" / sha)
            (target / f.name).symlink_to(Path(*[".."] * depth) / "blobs" / sha)
        staging.rmdir()
    return snapshot


def test_real_hub_cache_layout_loads(tmp_path):
    sd, unet = sample_state_dict(), sample_state_dict(seed=1)
    snapshot = _hub_cache(tmp_path / "hub" / "models--org--name", {"model": sd, "unet": unet})
    assert (snapshot / "model.safetensors.index.json").is_symlink()
    for path, expected in ((snapshot, sd), (snapshot / "unet" / "model.safetensors.index.json", unet)):
        ours = _read_all(path)
        assert all(torch.equal(ours[k], expected[k]) for k in expected)


def test_hub_cache_reached_through_a_symlinked_home_loads(tmp_path):
    # HF_HOME on another disk: links above the repo folder do not matter
    sd = sample_state_dict()
    _hub_cache(tmp_path / "disk" / "models--org--name", {"model": sd})
    (tmp_path / "home").symlink_to(tmp_path / "disk", target_is_directory=True)
    snapshot = next((tmp_path / "home" / "models--org--name" / "snapshots").iterdir())
    assert os.path.islink(tmp_path / "home")
    ours = _read_all(snapshot)
    assert all(torch.equal(ours[k], sd[k]) for k in sd)
