"""A restricted unpickler for PyTorch checkpoints: it rebuilds tensor *placeholders* and
plain data, turns every other global into an inert stub, and never calls code from a file.

What a pickle may obtain through ``find_class``:

- the tensor rebuild functions of ``torch._utils`` / ``torch._tensor``, replaced by our own
  functions that return a `LazyTensor` (storage key, offset, shape, stride, dtype) and read
  no data; storage types (``torch.FloatStorage``, ``torch.storage.UntypedStorage``, …) as
  dtype markers; torch dtypes, ``torch.Size``, ``torch.device``;
- plain containers (``collections.OrderedDict``, sets, slices, …) and safe re-implementations
  of ``_codecs.encode``, ``copyreg._reconstructor``, numpy's ``scalar`` / ``dtype`` /
  ``_reconstruct`` (numpy scalars and arrays appear in real Lightning and Trainer pickles);
- for every other global an inert stub class: calling it, ``NEWOBJ`` on it, ``BUILD``,
  item and list appends all just store the data they are given; nothing is imported.

``BUILD`` (setting an object's state) applies only to objects this load created: stubs,
lazy tensors, numpy arrays and dtypes (copies, never numpy's shared instances; their states
checked against their data and against what numpy's own constructor builds, since numpy
accepts field offsets past the item and forged flags), and ``OrderedDict``/``Counter``/
``deque`` instances (plain attribute names only). A pickle that BUILDs a class, a function
or any shared object is refused: with the C unpickler it could replace
``Counter.most_common`` or a rebuild function's defaults for the whole process. Items and
appends go only to dicts, sets, lists, deques and stubs.

The work a pickle can cause is bounded, each refusal naming its limit:
`PICKLE_MAX_CALL_ITEMS` + `PICKLE_CALL_ITEMS_PER_BYTE` per byte (elements of the
containers, ranges, strings and arrays handed to calls or copied by a BUILD, per load:
``list(range(4 * 10**8))`` is refused), `PICKLE_MAX_MEMO` (memo entries, kept in a dict,
not a table sized by the largest index), `PICKLE_MAX_KEY_NODES` (the nested tuples hashed
for one dict key or set element) and `PICKLE_MAX_HASH_COLLISIONS` (hash flooding). Call
arguments must be a tuple (``f(*range(n))`` would expand first); ``str()`` takes no
containers (the text of shared nested lists is exponentially long); a length that a record
declares is checked against the bytes left before anything is allocated for it. Whatever
fails inside an allowed call (an unknown codec, a bad device string) is a one-line
``UnpicklingError``, and error messages describe values in a few words, never by repr.

Globals that exist to run code (``os.system``, ``builtins.eval``/``exec``/``getattr``/
``__import__``, ``subprocess.*``, ``posix.system``, …) are refused as soon as the pickle
names them, with an `UnsafePickleError` naming the file and the global: nothing was run.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import math
import pickle
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any

import numpy as np
import torch

from ..errors import CheckpointError, UnsafePickleError

__all__ = [
    "LazyTensor",
    "StorageRef",
    "Stub",
    "restricted_load",
    "find_state_dict",
    "find_weights",
    "FoundWeights",
    "FIND_MAX_DEPTH",
    "unsupported_entries",
    "as_mapping",
]


@dataclass(eq=False)
class StorageRef:
    """One storage named by a pickle's persistent id; no data is read.

    key: the storage key (zip entry ``data/<key>``); dtype: the element dtype the storage
    was declared with (uint8 for untyped storages); nbytes: its size in bytes;
    byte_base: offset of a legacy storage view inside its root storage;
    data_offset: absolute file offset of the data where the format fixes it at parse time.
    """

    key: str
    dtype: torch.dtype
    nbytes: int
    location: str = "cpu"
    byte_base: int = 0
    root_key: str | None = None
    data_offset: int | None = None


@dataclass(eq=False)
class LazyTensor:
    """A tensor described by a pickle, to be read later: element offset/shape/stride in
    units of `dtype` inside `storage`; `negative`/`conjugate` are torch's neg/conj bits."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    negative: bool = False
    conjugate: bool = False
    extra: dict = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        """Ignore Python state a pickle attaches to a tensor subclass."""

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def byte_span(self) -> tuple[int, int]:
        """(first byte, byte length) of the storage region this tensor touches."""
        item = _itemsize(self.dtype)
        if self.numel == 0:
            return self.offset * item, 0
        last = self.offset + sum(
            (s - 1) * st for s, st in zip(self.shape, self.stride, strict=True)
        )
        return self.offset * item, (last - self.offset + 1) * item


class Stub:
    """Inert stand-in for any class or function a pickle names that is not on the allow
    list. Instances keep the data the pickle gives them and can run nothing."""

    __slots__ = ("stub_args", "stub_state", "stub_items", "stub_list")
    stub_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        """Store constructor arguments; call nothing."""
        obj = object.__new__(cls)
        obj.stub_args = args
        obj.stub_state = kwargs or None
        obj.stub_items = {}
        obj.stub_list = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore arguments (they were stored by __new__)."""

    def __setstate__(self, state: Any) -> None:
        """Keep the BUILD state as data."""
        self.stub_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        """Keep SETITEM(S) data (dict subclasses)."""
        self.stub_items[key] = value

    def append(self, value: Any) -> None:
        """Keep APPEND data (list subclasses)."""
        self.stub_list.append(value)

    def extend(self, values: Any) -> None:
        """Keep APPENDS data (list subclasses)."""
        self.stub_list.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.stub_global}>"


@lru_cache(maxsize=4096)
def _stub_class(module: str, name: str) -> type[Stub]:
    """The inert stub class standing for global `module.name`."""
    return type(
        str(name),
        (Stub,),
        {"__slots__": (), "stub_global": f"{module}.{name}", "__module__": __name__},
    )


class _NDArrayMarker(Stub):
    """Stands for ``numpy.ndarray`` inside a pickle; only `_reconstruct` gives it meaning."""

    __slots__ = ()
    stub_global = "numpy.ndarray"


@dataclass(frozen=True)
class _StorageType:
    """A storage class named in a pickle, reduced to its element dtype."""

    dtype: torch.dtype
    untyped: bool = False


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "QInt8Storage": torch.qint8,
    "QUInt8Storage": torch.quint8,
    "QInt32Storage": torch.qint32,
    "QUInt4x2Storage": torch.quint4x2,
    "QUInt2x4Storage": torch.quint2x4,
}

_TORCH_CONSTANTS = {
    name: value
    for name, value in vars(torch).items()
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format))
}


def _itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of a torch dtype."""
    return dtype.itemsize


# ----------------------------------------------------------------- safe rebuilders


class _BadTensor(pickle.UnpicklingError):
    """A tensor record in the pickle is malformed (the file is corrupt)."""


class _DumpedTensor(pickle.UnpicklingError):
    """A tensor pickled with pickle.dump: its storage is an embedded torch.save that only
    torch.load can rebuild (by running code): not read, and not a corrupt file."""


def _ints(value: Any, what: str) -> tuple[int, ...]:
    """Validate a tuple of non-negative int64 values (shape or stride)."""
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX for v in value
    ):
        raise _BadTensor(f"malformed tensor {what} ({_describe_value(value)})")
    return tuple(int(v) for v in value)


def _lazy(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: Any, metadata: Any
) -> LazyTensor:
    """Validate a tensor record and make its placeholder."""
    if isinstance(storage, Stub) and storage.stub_global == "torch.storage._load_from_bytes":
        raise _DumpedTensor("tensors pickled with pickle.dump instead of torch.save")
    if not isinstance(storage, StorageRef):
        raise _BadTensor(f"tensor storage is {type(storage).__name__}, not a stored storage")
    if not isinstance(dtype, torch.dtype):
        raise _BadTensor(f"malformed tensor dtype ({_describe_value(dtype)})")
    if not isinstance(offset, int) or not 0 <= offset <= _INT64_MAX:
        raise _BadTensor(f"malformed storage offset ({_describe_value(offset)})")
    shape, strides = _ints(size, "shape"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise _BadTensor(f"shape {shape} and stride {strides} differ in length")
    meta = metadata if isinstance(metadata, dict) else {}
    return LazyTensor(
        storage,
        int(offset),
        shape,
        strides,
        dtype,
        negative=bool(meta.get("neg", False)),
        conjugate=bool(meta.get("conj", False)),
    )


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor, without data."""
    return _lazy(storage, storage_offset, size, stride, getattr(storage, "dtype", None), None)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    """torch._utils._rebuild_tensor_v2, without data."""
    return _lazy(storage, storage_offset, size, stride, getattr(storage, "dtype", None), metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    """torch._utils._rebuild_tensor_v3 (explicit dtype over an untyped storage), without data."""
    return _lazy(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    """torch._utils._rebuild_parameter[_with_state]: a parameter is its data."""
    return data


def _rebuild_device_tensor_from_cpu_tensor(data, dtype=None, device=None, requires_grad=False):
    """A tensor saved from a storage-less device is its CPU copy."""
    return data


_REBUILDERS = (
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_device_tensor_from_cpu_tensor,
)


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2: rebuild with one of ours, drop the subclass."""
    if any(func is rebuilder for rebuilder in _REBUILDERS) and isinstance(args, tuple):
        return func(*args)
    return _stub_class("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode as pickle protocol 2 uses it for bytes: str → bytes, text codecs only."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode with non-text arguments")
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r}")
    return obj.encode(encoding, errors if isinstance(errors, str) else "strict")


def _safe_bytes_like(kind: type) -> Callable[..., Any]:
    """bytes/bytearray restricted to building from existing data (no size argument)."""

    def build(source=b"", encoding=None, errors="strict"):
        """Build from a str (with its encoding) or existing bytes/ints only."""
        if isinstance(source, str):
            return kind(source, encoding or "latin-1", errors)
        if isinstance(source, (bytes, bytearray, list, tuple)):
            return kind(source)
        raise pickle.UnpicklingError(f"{kind.__name__}() from {type(source).__name__}")

    return build


def _safe_reconstructor(cls, base=None, state=None):
    """copyreg._reconstructor: only ever makes an inert stub instance."""
    if isinstance(cls, type) and issubclass(cls, Stub):
        return cls(state) if state is not None else cls()
    return _stub_class("copyreg", "_reconstructor")(cls, base, state)


def _plain_dict(*args, **kwargs):
    """collections.defaultdict without its factory (a factory is never called)."""
    return {}


def _safe_np_dtype(obj, align=False, copy=False):
    """numpy.dtype from a type string only."""
    if not isinstance(obj, str):
        raise pickle.UnpicklingError(f"numpy.dtype({type(obj).__name__})")
    # a copy: np.dtype("int64") is numpy's shared instance, and the BUILD that follows in
    # a pickle sets its state (byte order...) for the whole process
    return np.dtype(obj, copy=True)


def _safe_np_scalar(dtype, data=None):
    """numpy scalar from raw bytes; object dtypes (which hold pickled objects) are refused."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        return _stub_class("numpy", "scalar")(dtype, data)
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _safe_np_reconstruct(subtype, shape=(0,), typecode=b"b"):
    """numpy.core.multiarray._reconstruct for plain ndarrays (BUILD then sets the data)."""
    if subtype is not _NDArrayMarker:
        return _stub_class("numpy", "_reconstruct")(subtype, shape, typecode)
    return np.ndarray((0,), dtype=np.uint8)


_SAFE_BUILTINS = {
    "set": set,
    "frozenset": frozenset,
    "slice": slice,
    "complex": complex,
    "range": range,
    "object": object,
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "bytes": _safe_bytes_like(bytes),
    "Ellipsis": Ellipsis,
    "NotImplemented": NotImplemented,
    "bytearray": _safe_bytes_like(bytearray),
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,
    ("collections", "deque"): collections.deque,
    ("collections", "defaultdict"): _plain_dict,
    ("_codecs", "encode"): _safe_codecs_encode,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    (
        "torch._utils",
        "_rebuild_device_tensor_from_cpu_tensor",
    ): _rebuild_device_tensor_from_cpu_tensor,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("numpy", "dtype"): _safe_np_dtype,
    ("numpy", "ndarray"): _NDArrayMarker,
    ("numpy.core.multiarray", "scalar"): _safe_np_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _safe_np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_np_reconstruct,
}
for _name, _value in _SAFE_BUILTINS.items():
    _ALLOWED[("builtins", _name)] = _value
    _ALLOWED[("__builtin__", _name)] = _value

# Modules whose globals exist to run programs, touch the system or load more code: naming
# any of them is refused outright (they could be stubbed, but a checkpoint never needs them
# and the user should know the file tried).
_DANGEROUS_MODULES = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "_posixsubprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "imp",
    "zipimport",
    "pkgutil",
    "runpy",
    "site",
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "ctypes",
    "_ctypes",
    "cffi",
    "code",
    "codeop",
    "pty",
    "webbrowser",
    "multiprocessing",
    "signal",
    "platform",
    "tempfile",
    "pdb",
    "bdb",
    "timeit",
    "cProfile",
    "profile",
    "inspect",
    "threading",
    "_thread",
    "asyncio",
    "commands",
    "popen2",
    "torch.hub",
    "torch.jit",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.ops",
    "torch._ops",
    "torch.serialization",
)
_DANGEROUS_NAMES = {
    ("torch", "load"),
    ("torch", "save"),
    ("torch", "compile"),
    ("torch", "from_file"),
    ("numpy", "load"),
    ("numpy", "save"),
    ("numpy", "fromfile"),
    ("numpy", "loadtxt"),
    ("numpy", "genfromtxt"),
    ("numpy.lib.npyio", "load"),
    ("codecs", "open"),
    ("_codecs", "lookup"),
    ("io", "open"),
    ("io", "FileIO"),
    ("_io", "open"),
    ("_io", "FileIO"),
    ("types", "FunctionType"),
    ("types", "LambdaType"),
    ("types", "CodeType"),
    ("types", "MethodType"),
    ("types", "ModuleType"),
    ("operator", "attrgetter"),
    ("operator", "methodcaller"),
    ("_operator", "attrgetter"),
    ("_operator", "methodcaller"),
    ("functools", "reduce"),
    ("_functools", "reduce"),
}


def _is_dangerous(module: str, name: str) -> bool:
    """Whether global `module.name` exists to run code or touch the system."""
    if module in ("builtins", "__builtin__"):
        return name not in _SAFE_BUILTINS and not _is_exception_name(name)
    if (module, name) in _DANGEROUS_NAMES:
        return True
    return any(module == m or module.startswith(m + ".") for m in _DANGEROUS_MODULES)


def _is_exception_name(name: str) -> bool:
    """Builtin exception/warning class names (pickled inside some logs); stubbed, not refused."""
    return name.endswith(("Error", "Exception", "Warning")) or name in ("KeyboardInterrupt",)


def _resolve_global(module: str, name: str, source: str) -> Any:
    """What find_class returns for `module.name` (see module docstring)."""
    if not isinstance(module, str) or not isinstance(name, str):
        raise pickle.UnpicklingError("malformed global")
    # Protocol 0-2 pickles name Python 2 modules (__builtin__, copy_reg, …): use the
    # Python 3 names, as pickle itself does, so rules and messages see one spelling.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    allowed = _ALLOWED.get((module, name))
    if allowed is not None:
        return allowed
    if module in ("torch", "torch.cuda", "torch.storage") and name.endswith("Storage"):
        if name == "UntypedStorage":
            return _StorageType(torch.uint8, untyped=True)
        if name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_CONSTANTS:
        return _TORCH_CONSTANTS[name]
    if _is_dangerous(module, name):
        raise UnsafePickleError(
            f"{source}: refused: its pickle calls {module}.{name}, which could run code "
            "(nothing was run); do not load it with torch.load, get the weights from a "
            "trusted source"
        )
    return _stub_class(module, name)


# Work a pickle may cause, bounded (each refusal names its limit). A pickle of N bytes can
# only push N objects, but a call can expand a small object into a large one: list(range(n)),
# tuple(big_list) repeated through the memo, bytes(blob) a thousand times... So the elements
# of every container, range, string or array handed to a call (REDUCE, NEWOBJ) or copied by
# a BUILD are counted, per load, against a budget that grows with the pickle's size.
PICKLE_MAX_CALL_ITEMS = 4_194_304
"""Elements calls may receive in one pickle beyond `PICKLE_CALL_ITEMS_PER_BYTE` per byte
of it (``list(range(4 * 10**8))`` from 40 bytes is refused)."""
PICKLE_CALL_ITEMS_PER_BYTE = 4
"""Elements calls may receive per byte of the pickle: a real checkpoint hands each stored
value to at most two calls (protocol 2 numpy data: latin-1 text → bytes → array)."""
PICKLE_MAX_MEMO = 10_000_000
"""Memo entries. The memo is a dict, not the C unpickler's table (which a LONG_BINPUT of
2**32 - 1 makes allocate gigabytes), and its entries are bounded too."""
PICKLE_MAX_KEY_NODES = 256
"""Tuples, slices and their elements walked to hash one dict key or set element. Python
hashes nested tuples recursively and again at every insertion: a tuple of depth 40 built
from shared halves takes hours to hash, and one nested 10**6 deep overflows the C stack."""
PICKLE_MAX_HASH_COLLISIONS = 64
"""Distinct non-text keys with one hash value, per pickle. Integer hashes are not
randomised: n ints that differ by multiples of 2**61 - 1 make dict insertion quadratic
(40 000 of them in 0.5 MB take 18 s); real pickles have next to none (-1 and -2)."""

_INT64_MAX = 2**63 - 1  # torch sizes, strides and offsets are int64
_FLAT_KEY_TYPES = frozenset({str, bytes, int, float, bool, complex, type(None)})
_SCALAR_TYPES = (str, bytes, bytearray, int, float, complex, type(None), np.generic)
_SIZED_ARGS = (
    list,
    tuple,
    dict,
    set,
    frozenset,
    range,
    collections.deque,
    str,
    bytes,
    bytearray,
    np.ndarray,
)
# Containers whose instances a pickle may BUILD (set attributes of), besides our stubs, lazy
# tensors and numpy arrays: the ones torch and Lightning pickles use, created by this load.
_BUILDABLE_CONTAINERS = (collections.OrderedDict, collections.Counter, collections.deque)
_DTYPE_BYTE_ORDERS = ("<", ">", "|", "=")


class _BoundedReader:
    """A file whose reads may not ask for more bytes than remain: a record that declares
    a length past the end is refused before anything is allocated for it."""

    def __init__(self, file: IO[bytes], remaining: int):
        self._file = file
        self.left = remaining

    def read(self, n: int = -1) -> bytes:
        """Read `n` bytes, refusing lengths beyond the end of the file."""
        if n < 0 or n > self.left:
            if n > 8:  # opcode and fixed-size argument reads come short at the end: EOF
                raise pickle.UnpicklingError(
                    f"a record declares {n:,} bytes but only {self.left:,} remain; "
                    "the file is truncated or corrupt"
                )
            n = self.left if n < 0 else n
        data = self._file.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        """Read one line (protocol 0 arguments)."""
        data = self._file.readline()
        self.left -= len(data)
        return data


def _remaining_bytes(file: IO[bytes]) -> int:
    """Bytes between the position of `file` and its end (the position is kept)."""
    position = file.tell()
    end = file.seek(0, 2)
    file.seek(position)
    return max(end - position, 0)


def _describe_value(value: Any) -> str:
    """A short description of a value from a pickle, at a cost bounded whatever its size
    (a repr of shared nested lists is exponentially long)."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, complex)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) <= _INT64_MAX else f"an int of {value.bit_length()} bits"
    if isinstance(value, (str, bytes, bytearray)):
        return repr(value[:40]) + ("…" if len(value) > 40 else "")
    if isinstance(value, (list, tuple, dict, set, frozenset, collections.deque)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, Stub):
        return f"a {value.stub_global}"
    if isinstance(value, (torch.dtype, np.dtype)):
        return str(value)
    return f"a {type(value).__name__}"


def _describe(obj: Any) -> str:
    """A short name of what a pickle tried to change."""
    if isinstance(obj, type) and issubclass(obj, Stub):
        return f"the class {obj.stub_global}"
    if isinstance(obj, type):
        return f"the class {getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    if callable(obj):
        return f"the function {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
    return f"a shared {type(obj).__name__} object"


def _one_line(exc: BaseException) -> str:
    """An exception's message as one line of at most 200 characters."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:200] + "…"
    return text if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {text}"


def _flat_persistent_part(value: Any) -> bool:
    """Whether `value` may be an element of a persistent id: text, a number, a class or a
    storage type (torch writes ('storage', type, key, location, numel[, view]) and, in
    legacy files, ('module', class, file name, source))."""
    return value is None or isinstance(value, (str, bytes, int, type, _StorageType))


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with the allow list above, a caller-supplied
    persistent_load, BUILD limited to objects this load created, and bounded work.

    The C unpickler's BUILD cannot be overridden: it would set attributes on any object on
    the stack, allowed classes and functions included (``Counter.most_common``,
    ``_rebuild_tensor_v2.__defaults__``), changing the running process.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file: IO[bytes],
        source: str,
        persistent: Callable[[Any], Any] | None,
        overrides: Mapping[tuple[str, str], Any] | None = None,
    ):
        size = _remaining_bytes(file)
        # An in-memory pickle never reads past its end (BytesIO.read(n) allocates what it
        # returns); a real file's read(n) allocates n bytes first, so lengths are checked.
        reader = file if isinstance(file, io.BytesIO) else _BoundedReader(file, size)
        super().__init__(reader, encoding="utf-8")
        self._source = source
        self._persistent = persistent
        self._overrides = dict(overrides or {})
        self._size = size
        self._call_items = 0
        self._call_budget = PICKLE_MAX_CALL_ITEMS + PICKLE_CALL_ITEMS_PER_BYTE * size
        self._key_hashes: dict[tuple[type, int], Any] = {}
        self._collisions = 0

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global through the caller's overrides, then the allow list; stub or
        refuse the rest."""
        if (module, name) in self._overrides:
            return self._overrides[(module, name)]
        return _resolve_global(module, name, self._source)

    def persistent_load(self, pid: Any) -> Any:
        """Delegate persistent ids (torch storages) to the format reader, once their shape
        is known to be torch's (a short tuple of plain values)."""
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        parts = pid if isinstance(pid, tuple) else (pid,)
        if len(parts) > 8 or not all(
            _flat_persistent_part(p)
            or (isinstance(p, tuple) and len(p) <= 3 and all(map(_flat_persistent_part, p)))
            for p in parts
        ):
            raise pickle.UnpicklingError(f"unexpected persistent id ({_describe_value(pid)})")
        return self._persistent(pid)

    def _refuse(self, what: str) -> UnsafePickleError:
        """The error for a pickle that tried `what` (nothing was run or changed)."""
        return UnsafePickleError(
            f"{self._source}: refused: its pickle {what} (nothing was run or changed); do not "
            "load it with torch.load, get the weights from a trusted source"
        )

    # ------------------------------------------------------------- work bounds

    def _charge(self, items: int) -> None:
        """Count `items` elements handed to calls against this load's budget."""
        self._call_items += items
        if self._call_items > self._call_budget:
            raise self._refuse(
                f"expands to more than PICKLE_MAX_CALL_ITEMS = {PICKLE_MAX_CALL_ITEMS:,} + "
                f"PICKLE_CALL_ITEMS_PER_BYTE = {PICKLE_CALL_ITEMS_PER_BYTE} × {self._size:,} "
                "bytes of container elements"
            )

    def _count_call(self, args: tuple) -> None:
        """Count the elements of the containers, ranges, strings and arrays a call receives."""
        items = 0
        for arg in args:
            if isinstance(arg, np.ndarray):
                items += arg.shape[0] if arg.ndim else 1
            elif isinstance(arg, _SIZED_ARGS):
                try:
                    items += len(arg)
                except OverflowError:  # a range longer than sys.maxsize
                    items += self._call_budget + 1
        if items:
            self._charge(items)

    def _check_key(self, key: Any) -> None:
        """Refuse a dict key or set element that is costly to hash (nested tuples beyond
        PICKLE_MAX_KEY_NODES) or one of many distinct keys sharing a hash value."""
        kind = type(key)
        if kind is str or kind is bytes:  # randomised hashes, cached: nothing to bound
            return
        if kind not in _FLAT_KEY_TYPES:
            nodes, pending = 0, [key]
            while pending:
                item = pending.pop()
                nodes += 1
                if nodes > PICKLE_MAX_KEY_NODES:
                    raise self._refuse(
                        f"uses a dict key or set element nested beyond "
                        f"PICKLE_MAX_KEY_NODES = {PICKLE_MAX_KEY_NODES} elements"
                    )
                if isinstance(item, tuple):
                    pending.extend(item)
                elif isinstance(item, slice):
                    pending.extend((item.start, item.stop, item.step))
            if nodes > 1:
                self._charge(nodes)
        slot = (kind, hash(key))
        first = self._key_hashes.setdefault(slot, key)
        if first is not key and first != key:
            self._collisions += 1
            if self._collisions > PICKLE_MAX_HASH_COLLISIONS:
                raise self._refuse(
                    f"has more than PICKLE_MAX_HASH_COLLISIONS = {PICKLE_MAX_HASH_COLLISIONS} "
                    "distinct keys sharing a hash value (a hash-flooding pattern)"
                )

    def _check_call(self, func: Any, args: Any, kwargs: Any = None) -> None:
        """Check a call's arguments before it is made (REDUCE, NEWOBJ, NEWOBJ_EX)."""
        if type(args) is not tuple:
            # func(*args) would first expand any iterable into a tuple: *range(4e8)
            raise pickle.UnpicklingError(f"call arguments are {_describe_value(args)}, not a tuple")
        if kwargs is not None and (
            type(kwargs) is not dict or not all(type(k) is str for k in kwargs)
        ):
            raise pickle.UnpicklingError("keyword arguments are not a dict of names")
        self._count_call(args)
        if kwargs:
            self._count_call(tuple(kwargs.values()))
        if func is str and not all(isinstance(a, _SCALAR_TYPES) for a in args):
            raise self._refuse("calls str() on a container, whose text can be exponentially long")
        if args and any(func is builder for builder in _HASHING_BUILDERS):
            self._check_builder_keys(func, args[0])

    def _check_builder_keys(self, func: Any, source: Any) -> None:
        """Check the keys a set, dict or Counter built from `source` will hash."""
        if isinstance(source, dict):
            keys = source.keys()
        elif (
            func is set
            or func is frozenset
            or func is collections.Counter
            or not isinstance(source, (list, tuple))
        ):
            keys = source if isinstance(source, (list, tuple, set, frozenset)) else ()
        else:
            keys = [
                pair[0] for pair in source if isinstance(pair, (tuple, list)) and len(pair) == 2
            ]
        for key in keys:
            self._check_key(key)

    # ------------------------------------------------------------- calls

    def load_reduce(self) -> None:
        """REDUCE: check and count the arguments, then call (only allowed globals and
        stubs are callable)."""
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_call(func, args)
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        """NEWOBJ: ``cls.__new__(cls, *args)`` with its arguments checked."""
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        """NEWOBJ_EX: as NEWOBJ, with keyword arguments checked too."""
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args, kwargs)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:
        """INST and OBJ (protocols 0 and 1): a checked call."""
        args = tuple(args)
        self._check_call(klass, args)
        self.append(klass(*args))

    def _refuse_extension(self) -> None:
        """EXT1/2/4 name globals through copyreg's process-wide registry: never in checkpoints."""
        raise pickle.UnpicklingError("extension codes (copyreg registry) are not supported")

    # ------------------------------------------------------------- BUILD

    def load_build(self) -> None:
        """BUILD only on instances this load created, of the documented kinds."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, type):
            raise self._refuse(f"sets the state of {_describe(inst)}, which it did not create")
        if isinstance(inst, (Stub, LazyTensor)):
            inst.__setstate__(state)
            return
        if isinstance(inst, np.dtype):
            self._build_dtype(inst, state)
            return
        if isinstance(inst, np.ndarray):
            self._build_array(inst, state)
            return
        if type(inst) not in _BUILDABLE_CONTAINERS:
            raise self._refuse(f"sets the state of {_describe(inst)}, which it did not create")
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if slots or (state is not None and not isinstance(state, dict)):
            raise self._refuse(f"sets slots or non-dict state on a {type(inst).__name__}")
        for key, value in (state or {}).items():
            if not isinstance(key, str) or key.startswith("__"):
                raise self._refuse(
                    f"sets attribute {_describe_value(key)} of a {type(inst).__name__}"
                )
            inst.__dict__[key] = value

    def _build_array(self, array: np.ndarray, state: Any) -> None:
        """numpy's ndarray state, checked against its data: numpy itself accepts a dtype of
        0 bytes with any shape (an array of 10**8 elements from no data)."""
        if isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int:
            shape, dtype, fortran, raw = state[1:]
        elif isinstance(state, tuple) and len(state) == 4:
            shape, dtype, fortran, raw = state
        else:
            raise pickle.UnpicklingError(f"malformed numpy array state ({_describe_value(state)})")
        if type(fortran) is not bool:
            raise pickle.UnpicklingError("malformed numpy array state (Fortran order flag)")
        if not isinstance(dtype, np.dtype) or dtype.itemsize == 0:
            raise pickle.UnpicklingError(f"numpy array of dtype {_describe_value(dtype)}")
        if not isinstance(shape, tuple) or not all(
            type(n) is int and 0 <= n <= _INT64_MAX for n in shape
        ):
            raise pickle.UnpicklingError(f"malformed numpy array shape ({_describe_value(shape)})")
        if dtype.hasobject:
            declared, held = math.prod(shape), len(raw) if isinstance(raw, list) else -1
        else:
            declared = math.prod(shape) * dtype.itemsize
            held = len(raw) if isinstance(raw, (bytes, bytearray)) else -1
        if declared != held:
            raise pickle.UnpicklingError(
                f"numpy array declares {declared:,} elements or bytes, its data holds {held:,}"
            )
        self._charge(held)
        array.__setstate__(state)

    def _build_dtype(self, dtype: np.dtype, state: Any) -> None:
        """numpy's dtype state, checked: numpy accepts field offsets past the item's end and
        forged flags (a plain 8-byte dtype declared to hold Python objects), and crashes
        on a datetime state without its unit. Only the states numpy writes are applied:
        (3, order, subarray, names, fields, size, alignment, flags), and for datetimes
        (4, …, (None, (unit, count, 1, 1)))."""
        datetime = dtype.kind in "Mm"
        if (
            not isinstance(state, tuple)
            or len(state) != (9 if datetime else 8)
            or state[0] != (4 if datetime else 3)
            or state[1] not in _DTYPE_BYTE_ORDERS
            or not all(type(v) is int for v in state[5:8])
            or (datetime and not _datetime_metadata(state[8]))
        ):
            raise pickle.UnpicklingError(f"malformed numpy dtype state for {dtype}")
        subarray, names, fields, size, alignment, flags = state[2:8]
        if subarray is None and names is None and fields is None:
            reference = dtype
        else:
            reference = _structured_reference(subarray, names, fields, size)
        if (
            size not in (-1, dtype.itemsize)
            or reference.itemsize != dtype.itemsize
            or alignment not in (-1, reference.alignment, 1)
            or flags != reference.flags
        ):
            raise pickle.UnpicklingError(f"inconsistent numpy dtype state for {dtype}")
        dtype.__setstate__(state)

    # ------------------------------------------------------------- containers

    def load_setitem(self) -> None:
        """SETITEM with its key checked; only dicts and stubs take items."""
        value = self.stack.pop()
        key = self.stack.pop()
        self._check_key(key)
        self._item_target()[key] = value

    def load_setitems(self) -> None:
        """SETITEMS with each key checked."""
        items = self.pop_mark()
        target = self._item_target()
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) is not str:
                self._check_key(key)
            target[key] = items[i + 1]

    def _item_target(self) -> Any:
        """The object under a SETITEM(S): a dict or a stub made by this load."""
        target = self.stack[-1]
        if isinstance(target, dict) or (isinstance(target, Stub) and not isinstance(target, type)):
            return target
        raise self._refuse(f"sets items of {_describe(target)}")

    def load_dict(self) -> None:
        """DICT with each key checked."""
        items = self.pop_mark()
        for key in items[::2]:
            self._check_key(key)
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def load_additems(self) -> None:
        """ADDITEMS: into a set only, each element checked."""
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise self._refuse(f"adds set elements to {_describe(target)}")
        for item in items:
            self._check_key(item)
        target.update(items)

    def load_frozenset(self) -> None:
        """FROZENSET with each element checked."""
        items = self.pop_mark()
        for item in items:
            self._check_key(item)
        self.append(frozenset(items))

    def load_append(self) -> None:
        """APPEND: to a list, deque or stub only."""
        value = self.stack.pop()
        self._append_target().append(value)

    def load_appends(self) -> None:
        """APPENDS: to a list, deque or stub only."""
        items = self.pop_mark()
        self._append_target().extend(items)

    def _append_target(self) -> Any:
        """The object under an APPEND(S)."""
        target = self.stack[-1]
        if type(target) in (list, collections.deque) or (
            isinstance(target, Stub) and not isinstance(target, type)
        ):
            return target
        raise self._refuse(f"appends to {_describe(target)}")

    def load_bytearray8(self) -> None:
        """BYTEARRAY8 read before it is allocated (pickle allocates and zero-fills first:
        9 bytes asked for gigabytes)."""
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise pickle.UnpicklingError(
                f"a bytearray declares {n:,} bytes, more than the {self._size:,} of the pickle"
            )
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    # ------------------------------------------------------------- memo

    def _memo_put(self, index: int) -> None:
        """Store the top of the stack in the memo, within PICKLE_MAX_MEMO entries."""
        if len(self.memo) >= PICKLE_MAX_MEMO and index not in self.memo:
            raise self._refuse(f"memoises more than PICKLE_MAX_MEMO = {PICKLE_MAX_MEMO:,} objects")
        self.memo[index] = self.stack[-1]

    def load_put(self) -> None:
        """PUT with a bounded memo (and an index below PICKLE_MAX_MEMO: text indexes could
        collide in the memo dict's hashes)."""
        i = int(self.readline()[:-1])
        if not 0 <= i < PICKLE_MAX_MEMO:
            raise pickle.UnpicklingError(f"PUT index {_describe_value(i)} out of range")
        self._memo_put(i)

    def load_binput(self) -> None:
        """BINPUT with a bounded memo."""
        self._memo_put(self.read(1)[0])

    def load_long_binput(self) -> None:
        """LONG_BINPUT with a bounded memo."""
        (i,) = struct.unpack("<I", self.read(4))
        self._memo_put(i)

    def load_memoize(self) -> None:
        """MEMOIZE with a bounded memo."""
        self._memo_put(len(self.memo))

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.PUT[0]] = load_put
    dispatch[pickle.BINPUT[0]] = load_binput
    dispatch[pickle.LONG_BINPUT[0]] = load_long_binput
    dispatch[pickle.MEMOIZE[0]] = load_memoize
    for _ext in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_ext[0]] = _refuse_extension
    del _ext


_HASHING_BUILDERS = (set, frozenset, dict, collections.OrderedDict, collections.Counter)


def _structured_reference(subarray: Any, names: Any, fields: Any, size: int) -> np.dtype:
    """The dtype numpy's own constructor makes from a structured or subarray dtype state
    (it refuses fields outside the item); compared with the state before it is applied."""
    try:
        if subarray is not None:
            if names is not None or fields is not None or not isinstance(subarray, tuple):
                raise ValueError("subarray with fields")
            base, shape = subarray
            if not isinstance(base, np.dtype) or not isinstance(shape, tuple):
                raise ValueError("malformed subarray")
            return np.dtype((base, shape))
        if (
            not isinstance(names, tuple)
            or not isinstance(fields, dict)
            or set(names) != set(fields)
        ):
            raise ValueError("names and fields differ")
        formats, offsets = [], []
        for name in names:  # (titled fields, listed twice in `fields`, are not supported)
            field = fields[name]
            if not isinstance(field, tuple) or len(field) != 2:
                raise ValueError(f"field {_describe_value(name)} is not (dtype, offset)")
            if not isinstance(field[0], np.dtype) or type(field[1]) is not int:
                raise ValueError(f"field {_describe_value(name)} is not (dtype, offset)")
            formats.append(field[0])
            offsets.append(field[1])
        spec = {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": size}
        return np.dtype(spec)
    except (ValueError, TypeError, KeyError) as exc:
        raise pickle.UnpicklingError(f"inconsistent numpy dtype state ({_one_line(exc)})") from None


def _datetime_metadata(metadata: Any) -> bool:
    """Whether a datetime dtype state's last item is what numpy writes: (None, (unit,
    count, 1, 1)) (numpy itself refuses a bad unit or count)."""
    if not isinstance(metadata, tuple) or len(metadata) != 2 or metadata[0] is not None:
        return False
    unit = metadata[1]
    return (
        isinstance(unit, tuple)
        and len(unit) == 4
        and isinstance(unit[0], bytes)
        and len(unit[0]) <= 8
        and type(unit[1]) is int
        and unit[2:] == (1, 1)
    )


def restricted_load(
    file: IO[bytes],
    source: str,
    persistent: Callable[[Any], Any] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Any:
    """Unpickle one object from `file` with the restricted unpickler.

    `source` names the file in error messages; `persistent` receives persistent ids;
    `overrides` maps (module, name) globals to the safe stand-ins this caller supplies for
    them (taken before the allow list: e.g. torch.distributed.checkpoint's metadata names
    ``torch.serialization._get_layout``, refused otherwise).
    Raises UnsafePickleError (nothing run or changed; also for a pickle that would exceed
    one of the ``PICKLE_*`` limits), `CheckpointError` from `persistent`, RecursionError,
    MemoryError, or pickle.UnpicklingError with a one-line message for malformed data
    (whatever failed inside: a bad codec name, a bad device string, ...).
    """
    try:
        return _RestrictedUnpickler(file, source, persistent, overrides).load()
    except (CheckpointError, RecursionError, MemoryError):
        raise
    except _DumpedTensor:
        err = CheckpointError(
            f"{source}: its tensors were pickled with pickle.dump instead of torch.save; "
            "their storages only torch.load can rebuild (by running the file's code), so they "
            "are not read: re-save it with torch.save, or pickle numpy arrays (tensor.numpy())"
        )
        err.kind = "unreadable"  # type: ignore[attr-defined]  # the Note kind (see _formats)
        raise err from None
    except Exception as exc:  # noqa: BLE001 - every failure of a hostile file is "corrupt"
        raise pickle.UnpicklingError(_one_line(exc)) from None


def storage_type_dtype(storage_type: Any) -> tuple[torch.dtype, bool]:
    """(element dtype, untyped?) of a storage type from a persistent id."""
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unknown storage type ({_describe_value(storage_type)})")
    return storage_type.dtype, storage_type.untyped


# ----------------------------------------------------------------- finding the weights

# Keys under which training scripts nest the model's state dict, most specific first.
_NEST_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "module", "net", "network")


def as_mapping(obj: Any) -> dict | None:
    """`obj` as a dict if it is one (or a stub of a dict subclass holding items), else None."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, Stub) and obj.stub_items:
        return obj.stub_items
    return None


@dataclass
class FoundWeights:
    """Where the weights of an unpickled checkpoint are.

    tensors: the state dict (key → LazyTensor); path: the dict keys leading to it (``()``
    at the top level, ``("app", "model")`` for ``dcp_to_torch_save``'s layout); others:
    paths of further sub-dicts that also hold tensors but were not taken (an EMA copy
    beside ``model``), to be named in a note; ambiguous: when no known key decided, the
    paths of two or more equally likely state dicts (then `tensors` is empty: the caller
    refuses the file rather than merge or guess).
    """

    tensors: dict[str, LazyTensor]
    path: tuple[str, ...]
    others: list[tuple[str, ...]] = field(default_factory=list)
    ambiguous: list[tuple[str, ...]] = field(default_factory=list)


def find_state_dict(top: Any) -> tuple[dict[str, LazyTensor], tuple[str, ...]] | None:
    """The model weights inside an unpickled checkpoint, and the key path to them.

    See `find_weights` for the rule; returns None when it finds no single state dict.
    """
    found = find_weights(top)
    if found is None or found.ambiguous:
        return None
    return found.tensors, found.path


def find_weights(top: Any, arrays: bool = False) -> FoundWeights | None:
    """Find the model weights at any depth of an unpickled checkpoint.

    At each level, first the usual nesting keys in order (``state_dict``,
    ``model_state_dict``, ``model_state``, ``model``, ``module``, ``net``, ``network``),
    then tensors stored directly at that level, then a whole pickled ``nn.Module``
    (rebuilt from its ``_parameters``/``_buffers``/``_modules``), and only then the other
    string keys except training state (``optimizer``, ``lr_scheduler``, …, and any dict
    holding ``state`` + ``param_groups``): one of them holding weights (at least one tensor
    of two or more dimensions: a dict of scalar metrics is not a model) is taken (its path
    recorded), two or more are `FoundWeights.ambiguous`. Shared sub-objects are searched
    once; nesting deeper than `FIND_MAX_DEPTH` is not searched. With `arrays` (a plain
    ``pickle.dump``), numeric numpy arrays count as the tensors instead of `LazyTensor`
    placeholders. Returns None when there are no tensors (a pickled list, a dict of
    hyper-parameters).
    """
    leaf = _is_array if arrays else _is_lazy
    found = _find(top, (), 0, {}, leaf)
    if found is None:
        return None
    if not found.ambiguous:
        found.others = [
            p
            for p in _tensor_dict_paths(top, (), 0, set(), leaf)
            if p != found.path and p[: len(found.path)] != found.path and found.path[: len(p)] != p
        ]
    return found


FIND_MAX_DEPTH = 32
"""Deepest dict nesting searched for the weights (real checkpoints nest 1-3 levels)."""
_AMBIGUOUS_LISTED = 8  # places kept for an ambiguity's message (shared dicts could double them)
# Training state kept beside the weights: never taken for the model, even if it holds tensors.
_STATE_KEYS = re.compile(
    r"^(optim(izer)?s?(_states?)?|(lr_)?schedulers?|scaler|grad_scaler|rng_states?|"
    r"dataloader|train_state|callbacks|loops)(_\d+)?$",
    re.IGNORECASE,
)


def _is_training_state(key: str, value: Any) -> bool:
    """Whether a sub-dict is optimizer / scheduler / loop state rather than weights."""
    if _STATE_KEYS.match(key):
        return True
    mapping = as_mapping(value)
    return mapping is not None and "state" in mapping and "param_groups" in mapping


def unsupported_entries(top: Any, state_path: tuple[str, ...]) -> dict[str, str]:
    """Entries of the state dict at `state_path` that are not plain tensors (quantised,
    sparse or subclass tensors rebuilt as inert stubs), mapped to the global that built them.

    They are not read, and must be reported as skipped rather than silently dropped.
    """
    mapping = as_mapping(top)
    for key in state_path:
        mapping = as_mapping(mapping.get(key)) if mapping is not None else None
    if mapping is None:
        return {}
    return {
        k: v.stub_global for k, v in mapping.items() if isinstance(k, str) and isinstance(v, Stub)
    }


def _is_lazy(value: Any) -> bool:
    """Whether a value is a tensor placeholder from torch.save."""
    return isinstance(value, LazyTensor)


def _is_array(value: Any) -> bool:
    """Whether a value is a numeric numpy array (a plain pickle's weights)."""
    return (
        isinstance(value, np.ndarray) and value.dtype.kind in "biufc" and value.dtype.fields is None
    )


def _has_matrix(tensors: dict[str, Any]) -> bool:
    """Whether any of the tensors (LazyTensor or numpy array) has two or more dimensions."""
    return any(len(t.shape) >= 2 for t in tensors.values())


def _find(obj: Any, path: tuple[str, ...], depth: int, seen: dict[int, Any], leaf: Callable):
    """Recursive part of find_weights (`seen`: (result, path) by object id, so a pickle
    that shares one dict many times is searched once)."""
    if depth > FIND_MAX_DEPTH:
        return None
    if id(obj) in seen:
        cached, first = seen[id(obj)]
        if cached is None:
            return None

        def moved(p: tuple[str, ...]) -> tuple[str, ...]:
            return path + p[len(first) :]

        return FoundWeights(
            cached.tensors, moved(cached.path), [], list(map(moved, cached.ambiguous))
        )
    seen[id(obj)] = (None, path)  # a cycle back to an object being searched finds nothing
    result = _find_here(obj, path, depth, seen, leaf)
    seen[id(obj)] = (result, path)
    return result


def _find_here(obj: Any, path: tuple[str, ...], depth: int, seen: dict[int, Any], leaf: Callable):
    """One level of `_find`: known keys, direct tensors, a module, then other keys."""
    mapping = as_mapping(obj)
    if mapping is None:
        if isinstance(obj, Stub):
            weights = _module_weights(obj)
            return FoundWeights(weights, path) if weights else None
        return None
    for key in _NEST_KEYS:
        if key in mapping:
            found = _find(mapping[key], path + (key,), depth + 1, seen, leaf)
            if found and (found.tensors or found.ambiguous):
                return found
    tensors = {k: v for k, v in mapping.items() if isinstance(k, str) and leaf(v)}
    if tensors:
        return FoundWeights(tensors, path)
    hits = []
    for key, value in mapping.items():
        if not isinstance(key, str) or key in _NEST_KEYS or _is_training_state(key, value):
            continue
        if as_mapping(value) is None and not isinstance(value, Stub):
            continue
        found = _find(value, path + (key,), depth + 1, seen, leaf)
        # under a key that is not a known one, only matrices make weights (a dict of
        # scalar tensors is metrics, not a model)
        if found is not None and (found.ambiguous or _has_matrix(found.tensors)):
            hits.append(found)
    if hits and all(h.tensors and h.tensors is hits[0].tensors for h in hits):
        return hits[0]  # one shared dict under several names: the same weights
    if hits:
        paths = [p for h in hits for p in (h.ambiguous or [h.path])]
        return FoundWeights({}, path, ambiguous=paths[:_AMBIGUOUS_LISTED])
    return None


def _tensor_dict_paths(
    obj: Any, path: tuple[str, ...], depth: int, seen: set[int], leaf: Callable
) -> list:
    """Paths of every sub-dict (not training state) that holds tensors directly."""
    mapping = as_mapping(obj)
    if mapping is None or depth > FIND_MAX_DEPTH or id(obj) in seen:
        return []
    seen.add(id(obj))
    out = []
    tensors = {k: v for k, v in mapping.items() if isinstance(k, str) and leaf(v)}
    if path and _has_matrix(tensors):
        out.append(path)
    for key, value in mapping.items():
        if isinstance(key, str) and as_mapping(value) is not None:
            if not _is_training_state(key, value):
                out.extend(_tensor_dict_paths(value, path + (key,), depth + 1, seen, leaf))
    return out


def _module_weights(root: Stub) -> dict[str, LazyTensor]:
    """The state dict of a pickled nn.Module (a stub whose state holds _parameters etc.),
    walked without recursion: a pickle can nest modules deeper than Python's stack."""
    out: dict[str, LazyTensor] = {}
    seen: set[int] = set()
    pending = [(root, "")]
    while pending:
        stub, prefix = pending.pop()
        if id(stub) in seen:
            continue
        seen.add(id(stub))
        state = stub.stub_state
        if isinstance(state, tuple) and state and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict) or "_parameters" not in state:
            continue
        params = as_mapping(state.get("_parameters")) or {}
        buffers = as_mapping(state.get("_buffers")) or {}
        transient = state.get("_non_persistent_buffers_set")
        transient = transient if isinstance(transient, (set, frozenset)) else set()
        for name, value in list(params.items()) + [
            (n, b) for n, b in buffers.items() if n not in transient
        ]:
            if isinstance(name, str) and isinstance(value, LazyTensor):
                out[prefix + name] = value
        children = [
            (child, f"{prefix}{name}.")
            for name, child in (as_mapping(state.get("_modules")) or {}).items()
            if isinstance(name, str) and isinstance(child, Stub)
        ]
        pending.extend(reversed(children))  # depth first, in the modules' order
    return out
