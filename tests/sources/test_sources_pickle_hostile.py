"""Pickles that try to change the running process or to exhaust it (issue 22, findings 3, 4).

Each hostile pickle is hand-assembled from opcodes and put, as ``data.pkl``, into a real
``torch.save`` zip, so that the real ``.pt`` path reads it.
"""

from __future__ import annotations

import collections
import io
import struct
import subprocess
import sys
import time
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _ckpt_factory import sample_state_dict, write_torch

from specdyn.errors import CheckpointError, UnsafePickleError
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
    # torch's own rebuild functions, which the allow list's names stand for
    objects += [torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter]
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
    # a storage record from a persistent id, after the reader checked its size
    "a storage record": b"("
    + _text("storage")
    + _global("torch", "FloatStorage")
    + _text("0")
    + _text("cpu")
    + _int(1)
    + b"tQ"
    + _setitems((_text("nbytes"), _int(10**9)))
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


# ----------------------------------------------------------------- routes left by the first fix


def _shared_halves(depth: int, kind: str) -> bytes:
    """An object of `depth` levels, each holding the level below twice through the memo:
    2**depth leaves from 8 bytes a level. `kind`: "list" or "tuple"."""
    level = b"0(h\x00h\x00lq\x00" if kind == "list" else b"0h\x00h\x00\x86q\x00"
    return b"Nq\x00" + level * depth


def _colliding_ints(n: int) -> list[bytes]:
    """n distinct ints with one hash value (they differ by multiples of 2**61 - 1), each
    as a LONG1 opcode."""
    out = []
    for i in range(n):
        value = 1 + i * (2**61 - 1)
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        out.append(b"\x8a" + bytes([len(data)]) + data)
    return out


NESTED_TUPLE = _shared_halves(22, "tuple")  # 4·10⁶ nodes to hash, 180 bytes

WORK_BOMBS = {
    # func(*args) expands any iterable before the call: a 10⁷-tuple from 30 bytes
    "call arguments that are not a tuple": (
        _global("builtins", "list") + _global("builtins", "range") + _int(10**7) + b"\x85RR",
        "not a tuple",
    ),
    # the text of shared nested lists is 2**depth times longer than the pickle
    "str() of shared nested lists": (
        _global("builtins", "str") + b"(" + _shared_halves(22, "list") + b"tR",
        "str()",
    ),
    # a tuple is hashed through all its nodes, again at every insertion
    "frozenset() of a nested tuple": (
        _global("builtins", "frozenset") + b"((" + NESTED_TUPLE + b"ttR",
        "PICKLE_MAX_KEY_NODES",
    ),
    "dict key (SETITEM)": (b"}" + NESTED_TUPLE + b"Ns", "PICKLE_MAX_KEY_NODES"),
    "dict key (DICT)": (b"(" + NESTED_TUPLE + b"Nd", "PICKLE_MAX_KEY_NODES"),
    "set element (ADDITEMS)": (b"\x8f(" + NESTED_TUPLE + b"\x90", "PICKLE_MAX_KEY_NODES"),
    "frozenset element (FROZENSET)": (b"(" + NESTED_TUPLE + b"\x91", "PICKLE_MAX_KEY_NODES"),
    "set() of a nested tuple": (
        _global("builtins", "set") + b"((" + NESTED_TUPLE + b"ttR",
        "PICKLE_MAX_KEY_NODES",
    ),
    # quadratic dict insertion: 40 000 such keys (0.5 MB) took 18 s
    "hash flooding": (
        b"}(" + b"".join(key + b"N" for key in _colliding_ints(200)) + b"u",
        "PICKLE_MAX_HASH_COLLISIONS",
    ),
}


@pytest.mark.parametrize("case", sorted(WORK_BOMBS))
def test_work_bombs_are_refused_early_with_the_rule_named(tmp_path, case):
    body, named = WORK_BOMBS[case]
    before = _snapshot()
    path = _in_torch_zip(tmp_path, body)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path).open().close()
    assert time.perf_counter() - start < 2
    message = str(err.value)
    assert named in message and str(path) in message and "\n" not in message
    assert _snapshot() == before


def test_a_bytearray_declaring_gigabytes_is_refused_before_it_is_allocated(tmp_path):
    """BYTEARRAY8 (protocol 5): the pure-Python unpickler zero-fills the declared size
    first; 9 bytes of pickle asked for 10⁹."""
    path = _in_torch_zip(tmp_path, b"\x96" + struct.pack("<Q", 10**9) + b"0}")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="bytearray declares 1,000,000,000 bytes"):
        open_checkpoint(path).open().close()
    assert time.perf_counter() - start < 1


def test_a_legacy_file_record_longer_than_the_file_is_refused_unread(tmp_path):
    """In a legacy file the pickle is read from the file itself, whose read(n) allocates n
    bytes before reading: BINBYTES8 of 2**40 bytes."""
    path = tmp_path / "old.pt"
    path.write_bytes(b"\x80\x02\x8e" + struct.pack("<Q", 2**40) + b"abc.")
    with pytest.raises(CheckpointError, match="declares 1,099,511,627,776 bytes"):
        open_checkpoint(path)


def _np_dtype(code: str, state: bytes | None = None) -> bytes:
    """numpy.dtype(code, False, True), then BUILD with the pickled `state` tuple if given."""
    made = _global("numpy", "dtype") + b"(" + _text(code) + b"\x89\x88tR"
    return made if state is None else made + state + b"b"


def _np_array(shape: bytes, dtype: bytes, raw: bytes) -> bytes:
    """numpy's _reconstruct, then BUILD (1, shape, dtype, False, raw)."""
    return (
        _global("numpy.core.multiarray", "_reconstruct")
        + b"("
        + _global("numpy", "ndarray")
        + b"(K\x00t"
        + b"C\x01b"
        + b"tR"
        + b"(K\x01"
        + shape
        + dtype
        + b"\x89"
        + raw
        + b"tb"
    )


_MINUS_ONE = b"J\xff\xff\xff\xff"
UNSAFE_NUMPY = {
    # numpy accepts a 0-byte dtype with any shape: 10⁸ elements from no data
    "array of a 0-byte dtype": (
        _np_array(b"(" + _int(10**8) + b"t", _np_dtype("V0"), b"C\x00"),
        "numpy array of dtype |V0",
    ),
    # numpy accepts a field 10⁶ bytes past the end of a 4-byte item (reads outside memory)
    "field past the end of the item": (
        _np_dtype(
        "V4",
        b"(K\x03"
        + _text("|")
        + b"N("
        + _text("a")
        + b"t}"
        + _text("a")
        + b"("
        + _np_dtype("f8", b"(K\x03" + _text("<") + b"NNN" + _MINUS_ONE * 2 + b"K\x00t")
        + _int(10**6)
        + b"ts"
        + _int(4)
        + _int(1)
        + b"K\x10t",
        ),
        "inconsistent numpy dtype state",
    ),
    # numpy accepts flags saying a plain 8-byte dtype holds Python object pointers
    "forged object flags": (
        _np_dtype("V8", b"(K\x03" + _text("|") + b"NNN" + _int(8) + _int(1) + b"K?t"),
        "inconsistent numpy dtype state for |V8",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_NUMPY))
def test_numpy_states_numpy_itself_accepts_but_are_unsafe_are_refused(tmp_path, case):
    body, fragment = UNSAFE_NUMPY[case]
    path = _in_torch_zip(tmp_path, body + b"0}")
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path).open().close()
    message = str(err.value)
    assert f"{path}: cannot be unpickled" in message and fragment in message


@pytest.mark.parametrize(
    "body",
    [
        _global("_codecs", "encode") + b"(" + _text("a") + _text("no-such-codec") + b"tR",
        _global("builtins", "bytes") + b"(" + _text("a") + _text("no-such-codec") + b"tR",
        _global("torch", "device") + b"(" + _text("bogus\nFAKE: all good") + b"tR",
    ],
    ids=["codec", "bytes codec", "device"],
)
def test_failures_inside_allowed_calls_are_one_line_checkpoint_errors(tmp_path, body):
    """A LookupError or RuntimeError from inside a call used to escape as a traceback."""
    path = _in_torch_zip(tmp_path, body)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert _kind(err.value) == "corrupt" and "\n" not in str(err.value)


def _kind(err: Exception) -> str:
    return getattr(err, "kind", "")


def _tensor_record(shape: bytes, pid: bytes | None = None) -> bytes:
    """_rebuild_tensor_v2(storage 0 of the good file: its first tensor, 0, shape, (1,),
    False, OrderedDict())."""
    numel = next(iter(sample_state_dict().values())).numel()
    pid = pid or (
        b"("
        + _text("storage")
        + _global("torch", "FloatStorage")
        + _text("0")
        + _text("cpu")
        + _int(numel)
        + b"t"
    )
    return (
        _global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + pid
        + b"Q"
        + _int(0)
        + shape
        + b"(K\x01t\x89"
        + _global("collections", "OrderedDict")
        + b")Rt"
        + b"R"
    )


@pytest.mark.parametrize(
    "body",
    [
        _tensor_record(_shared_halves(22, "list")),  # the shape
        _tensor_record(b"(K\x01t", pid=_shared_halves(22, "list")),  # the persistent id
    ],
    ids=["shape", "persistent id"],
)
def test_errors_describe_hostile_values_in_a_few_words(tmp_path, body):
    """Messages used to hold the repr of the value: 2**22 leaves, 25 MB of text."""
    path = _in_torch_zip(tmp_path, b"}(" + _text("w") + body + b"u")
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert len(str(err.value)) < 400 and "a list of 2 items" in str(err.value)


def test_modules_nested_deeper_than_pythons_stack_still_load(tmp_path):
    """A pickled nn.Module 3000 levels deep: the walk used to raise RecursionError."""
    first = next(iter(sample_state_dict().values())).flatten()
    shape = b"(" + _int(first.numel()) + b"t"
    block = _global("somelib", "Block") + b")\x81"
    body = (
        block
        + _setitems((_text("_parameters"), _setitems((_text("weight"), _tensor_record(shape)))))
        + b"bq\x00"
    )
    for _ in range(3000):
        child = _setitems((_text("m"), b"h\x00"))
        body += b"0" + block + _setitems((_text("_parameters"), b"}"), (_text("_modules"), child))
        body += b"bq\x00"
    path = _in_torch_zip(tmp_path, b"}(" + _text("model") + body + b"u")
    with open_checkpoint(path).open() as reader:
        assert reader.keys() == ["m." * 3000 + "weight"]
        assert torch.equal(reader.get("m." * 3000 + "weight"), first)


PROCESS_CRASHES = {
    # hashing it recursed in C past the end of the stack
    "dict key nested 10**6 deep": (b"}N" + b"\x85" * 10**6 + b"Ns", "PICKLE_MAX_KEY_NODES"),
    # numpy dereferences the unit a datetime dtype's state leaves out (found by fuzzing)
    "datetime dtype state without its unit": (
        _np_dtype("M8", b"(K\x04" + _text("<") + b"NNN" + _MINUS_ONE * 2 + b"K\x00t") + b"0}",
        "malformed numpy dtype state for datetime64",
    ),
}


@pytest.mark.parametrize("case", sorted(PROCESS_CRASHES))
def test_pickles_that_crashed_the_process_are_refused(tmp_path, case):
    """Each used to end the process with a segmentation fault: opened in a child."""
    body, named = PROCESS_CRASHES[case]
    path = _in_torch_zip(tmp_path, body)
    script = (
        "from specdyn.errors import CheckpointError\n"
        "from specdyn.sources import open_checkpoint\n"
        "try:\n"
        f"    open_checkpoint({str(path)!r})\n"
        "except CheckpointError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert named in done.stdout and str(path) in done.stdout


def test_the_call_budget_grows_with_the_pickle(tmp_path, monkeypatch):
    """Real containers handed to calls load however large the pickle; what a call expands
    from a few bytes is bounded (limits shrunk here to keep the test fast)."""
    monkeypatch.setattr(_unpickle, "PICKLE_MAX_CALL_ITEMS", 1000)
    many = b"".join(_int(i) for i in range(5000))
    real = b"}(" + _text("s") + _global("builtins", "set") + b"((" + many + b"ltRu"
    _unpickle.restricted_load(io.BytesIO(b"\x80\x02" + real + b"."), "big.pt")
    small = _global("builtins", "list") + _global("builtins", "range") + _int(5000) + b"\x85R\x85R"
    with pytest.raises(UnsafePickleError, match="PICKLE_MAX_CALL_ITEMS = 1,000"):
        _unpickle.restricted_load(io.BytesIO(b"\x80\x02" + small + b"."), "small.pt")


@pytest.mark.parametrize("protocol", [2, 4, 5, "legacy"])
def test_real_pickles_of_numpy_and_python_values_still_load(tmp_path, protocol):
    """What torch.save writes for metadata beside the weights, every kind the checks above
    look at: structured, subarray, object, big-endian and Fortran arrays, datetimes, sets
    of tuples, Counter, deque, defaultdict, ranges, bytes, bytearrays, -1/-2 keys."""
    sd = collections.OrderedDict(sample_state_dict())
    sd._metadata = {"": {"version": 1}}
    extra = {
        "struct": np.zeros(2, dtype=[("a", "f4"), ("b", "i8")]),
        "subarray": np.ones(2, dtype=[("t", "f4", (3,))]),
        "objects": np.array([1, "a", None], dtype=object),
        "big_endian": np.arange(3, dtype=">i4"),
        "fortran": np.zeros((2, 3), order="F"),
        "text": np.array(["ab", "c"]),
        "when": np.datetime64("2024-01-01"),
        "scalar": np.float32(0.5),
        "pairs": {(1, "a"), (2, ("b", 3))},
        "frozen": frozenset({1, 2}),
        "counter": collections.Counter("hello"),
        "queue": collections.deque([1, 2], maxlen=5),
        "lists": collections.defaultdict(list, {"a": [1]}),
        "range": range(0, 10, 2),
        "slice": slice(1, 5),
        "complex": 1 + 2j,
        "bytes": bytes(range(256)),
        "bytearray": bytearray(b"ab"),
        "keys": {-1: "a", -2: "b", 2**70: "big", 1.5: "f"},
        "step": 7,
    }
    path = tmp_path / "meta.pt"
    kwargs = (
        {"_use_new_zipfile_serialization": False}
        if protocol == "legacy"
        else {"pickle_protocol": protocol}
    )
    torch.save({"state_dict": sd, **extra}, path, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the library never prints: numpy warned on datetimes
        ckpt = open_checkpoint(path)
    assert ckpt.scalars["step"] == 7 and ckpt.scalars["scalar"] == 0.5
    with ckpt.open() as reader:
        assert reader.keys() == list(sd)
        for key, tensor in sd.items():
            assert torch.equal(reader.get(key), tensor)
