"""Pickles that try to change the running process or to exhaust it (issue 22, findings 3, 4).

Each hostile pickle is hand-assembled from opcodes and put, as ``data.pkl``, into a real
``torch.save`` zip, so that the real ``.pt`` path reads it.
"""

from __future__ import annotations

import collections
import struct
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _ckpt_factory import sample_state_dict, write_torch

from specdyn.errors import UnsafePickleError
from specdyn.sources import _unpickle, open_checkpoint


def _text(s: str) -> bytes:
    """SHORT_BINUNICODE-free BINUNICODE of `s`."""
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _in_torch_zip(tmp_path: Path, body: bytes, name: str = "evil.pt") -> Path:
    """A real torch zip whose data.pkl is replaced by the pickle `body` (protocol 2)."""
    good = write_torch(tmp_path / "good.pt", sample_state_dict())
    path = tmp_path / name
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = b"\x80\x02" + body + b"."
            dst.writestr(info, data)
    return path


def _allowed_objects() -> list:
    """Every object the allow list can hand to a pickle, and the stub base class."""
    objects = list(_unpickle._ALLOWED.values()) + list(_unpickle._TORCH_CONSTANTS.values())
    objects += [_unpickle.Stub, _unpickle._NDArrayMarker, _unpickle.LazyTensor]
    objects += [np.dtype("int64"), np.dtype("float32"), np.dtype("float16")]
    return objects


def _snapshot() -> list:
    """Attributes of every allowed object (identity of each value), function defaults,
    code and numpy's shared dtypes' byte order."""
    out = []
    for obj in _allowed_objects():
        attrs = {}
        try:
            attrs = {k: id(v) for k, v in vars(obj).items()}
        except TypeError:
            pass
        extra = ()
        if isinstance(obj, types.FunctionType):
            extra = (obj.__defaults__, obj.__kwdefaults__, obj.__code__)
        if isinstance(obj, np.dtype):
            extra = (obj.byteorder, obj.str)
        out.append((repr(obj), attrs, extra))
    return out


def _setitems(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


HOSTILE_BUILDS = {
    # the reported one: Counter.most_common replaced for the whole process
    "class Counter": _global("collections", "Counter")
    + _setitems(
        (_text("most_common"), _global("builtins", "list")),
        (_text("specdyn_pwned"), b"\x88"),
    )
    + b"b",
    # how every later tensor would be rebuilt
    "function defaults": _global("torch._utils", "_rebuild_tensor_v2")
    + _setitems((_text("__defaults__"), b"(\x88t"))
    + b"b",
    "function defaults in slot state": _global("torch._utils", "_rebuild_tensor_v2")
    + b"N"
    + _setitems((_text("__defaults__"), b"(\x88t"))
    + b"\x86b",
    "a stub class": _global("somepackage.module", "Config")
    + _setitems((_text("stub_global"), _text("forged")))
    + b"b",
    "a torch constant": _global("torch", "float32")
    + _setitems((_text("is_floating_point"), b"\x89"))
    + b"b",
    "builtin class": _global("builtins", "dict")
    + _setitems((_text("fromkeys"), _global("builtins", "list")))
    + b"b",
    "an OrderedDict's class attribute": _global("collections", "OrderedDict")
    + b")R"
    + _setitems((_text("__class__"), _global("collections", "Counter")))
    + b"b",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BUILDS))
def test_build_on_what_the_load_did_not_create_is_refused_and_changes_nothing(tmp_path, case):
    before = _snapshot()
    path = _in_torch_zip(tmp_path, HOSTILE_BUILDS[case])
    with pytest.raises(UnsafePickleError) as err:
        open_checkpoint(path).open().close()
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "refused" in message
    assert _snapshot() == before
    assert not hasattr(collections.Counter, "specdyn_pwned")
    assert collections.Counter.most_common is not list


def test_numpys_shared_dtype_keeps_its_byte_order(tmp_path):
    """A numpy scalar's pickle BUILDs its dtype: that must be a copy, not np.dtype('<i8')."""
    body = (
        _global("numpy", "dtype")
        + _text("i8")
        + b"\x85R"
        + b"(K\x03"
        + _text(">")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"0"  # POP: the built dtype is dropped, the state dict below is what loads
        + b"}"
    )
    path = _in_torch_zip(tmp_path, body)
    with pytest.raises(Exception):  # noqa: B017 - an empty state dict is not a checkpoint
        open_checkpoint(path).open().close()
    assert np.dtype("int64").byteorder == "=" and np.dtype("int64").str == "<i8"


def test_numpy_values_and_ordered_dict_metadata_still_load(tmp_path):
    sd = collections.OrderedDict(sample_state_dict())
    sd._metadata = {"": {"version": 1}}  # what module.state_dict() sets through BUILD
    path = tmp_path / "meta.pt"
    torch.save({"state_dict": sd, "np": np.float64(2.5), "arr": np.arange(3)}, path)
    with open_checkpoint(path).open() as reader:
        assert sorted(reader.keys()) == sorted(sd)
        assert torch.equal(reader.get(next(iter(sd))), next(iter(sd.values())))


BOMBS = {
    # the reported one: a 4·10⁸-element list from 30 bytes
    "list(range(4e8))": _global("builtins", "list")
    + _global("builtins", "range")
    + _int(400_000_000)
    + b"\x85R\x85R",
    "tuple(range(2**62))": _global("builtins", "tuple")
    + _global("builtins", "range")
    + b"\x8a\x08"
    + (2**62).to_bytes(8, "little")
    + b"\x85R\x85R",
    # a 10⁶ list copied 40 times through the memo: 4·10⁷ elements
    "copies through the memo": _global("builtins", "list")
    + _global("builtins", "range")
    + _int(1_000_000)
    + b"\x85R\x85R"
    + b"q\x01"
    + b"("
    + (_global("builtins", "tuple") + b"h\x01\x85R") * 40
    + b"l",
    "torch.Size(range(1e9))": _global("torch", "Size")
    + _global("builtins", "range")
    + _int(1_000_000_000)
    + b"\x85R\x85R",
    "NEWOBJ tuple": _global("builtins", "tuple")
    + _global("builtins", "range")
    + _int(400_000_000)
    + b"\x85R\x85\x81",
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_pickle_bombs_are_refused_early_with_the_limit_named(tmp_path, case):
    path = _in_torch_zip(tmp_path, BOMBS[case])
    start = time.perf_counter()
    with pytest.raises(UnsafePickleError, match="PICKLE_MAX_CALL_ITEMS"):
        open_checkpoint(path).open().close()
    assert time.perf_counter() - start < 5


def test_a_huge_memo_index_allocates_nothing(tmp_path):
    """LONG_BINPUT 2**32 - 1: the C unpickler grows its memo table to the index."""
    body = b"}r\xff\xff\xff\xff" + b"0" + _global("collections", "OrderedDict") + b")R"
    path = _in_torch_zip(tmp_path, body)
    start = time.perf_counter()
    with pytest.raises(Exception):  # noqa: B017 - an empty dict holds no weights
        open_checkpoint(path).open().close()
    assert time.perf_counter() - start < 5
