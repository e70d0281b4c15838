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
lazy tensors, numpy arrays and dtypes (copies, never numpy's shared instances), and
``OrderedDict``/``Counter``/``deque`` instances (plain attribute names only). A pickle that
BUILDs a class, a function or any shared object is refused: with the C unpickler it could
replace ``Counter.most_common`` or a rebuild function's defaults for the whole process.
The work a pickle can cause is bounded by `PICKLE_MAX_CALL_ITEMS` (elements of the
containers and ranges handed to calls, per load: ``list(range(4 * 10**8))`` is refused) and
`PICKLE_MAX_MEMO` (memo entries, kept in a dict, not a table sized by the largest index).

Globals that exist to run code (``os.system``, ``builtins.eval``/``exec``/``getattr``/
``__import__``, ``subprocess.*``, ``posix.system``, …) are refused as soon as the pickle
names them, with an `UnsafePickleError` naming the file and the global: nothing was run.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any

import numpy as np
import torch

from ..errors import UnsafePickleError

__all__ = [
    "LazyTensor",
    "StorageRef",
    "Stub",
    "restricted_load",
    "find_state_dict",
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


def _ints(value: Any, what: str) -> tuple[int, ...]:
    """Validate a tuple of non-negative ints (shape or stride)."""
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _BadTensor(f"malformed tensor {what}: {value!r}")
    return tuple(int(v) for v in value)


def _lazy(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: Any, metadata: Any
) -> LazyTensor:
    """Validate a tensor record and make its placeholder."""
    if isinstance(storage, Stub) and storage.stub_global == "torch.storage._load_from_bytes":
        raise _BadTensor("tensors pickled with pickle.dump instead of torch.save are not supported")
    if not isinstance(storage, StorageRef):
        raise _BadTensor(f"tensor storage is {type(storage).__name__}, not a stored storage")
    if not isinstance(dtype, torch.dtype):
        raise _BadTensor(f"malformed tensor dtype {dtype!r}")
    if not isinstance(offset, int) or offset < 0:
        raise _BadTensor(f"malformed storage offset {offset!r}")
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
    if func in _REBUILDERS and isinstance(args, tuple):
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
# tuple(big_list) repeated through the memo, ... So the elements of every container or range
# handed to a call (REDUCE, NEWOBJ) are counted, per load.
PICKLE_MAX_CALL_ITEMS = 20_000_000
# The memo is a dict (no preallocation by index, unlike the C unpickler's table, which a
# LONG_BINPUT of 2**32 - 1 makes allocate gigabytes); its entries are bounded too.
PICKLE_MAX_MEMO = 10_000_000
# Containers whose instances a pickle may BUILD (set attributes of), besides our stubs, lazy
# tensors and numpy arrays: the ones torch and Lightning pickles use, created by this load.
_BUILDABLE_CONTAINERS = (collections.OrderedDict, collections.Counter, collections.deque)


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with the allow list above, a caller-supplied
    persistent_load, BUILD limited to objects this load created, and bounded work.

    The C unpickler's BUILD cannot be overridden: it would set attributes on any object on
    the stack, allowed classes and functions included (``Counter.most_common``,
    ``_rebuild_tensor_v2.__defaults__``), changing the running process.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], source: str, persistent: Callable[[Any], Any] | None):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._persistent = persistent
        self._call_items = 0

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global through the allow list; stub or refuse the rest."""
        return _resolve_global(module, name, self._source)

    def persistent_load(self, pid: Any) -> Any:
        """Delegate persistent ids (torch storages) to the format reader."""
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)

    def _refuse(self, what: str) -> UnsafePickleError:
        """The error for a pickle that tried `what` (nothing was run or changed)."""
        return UnsafePickleError(
            f"{self._source}: refused: its pickle {what} (nothing was run or changed); do not "
            "load it with torch.load, get the weights from a trusted source"
        )

    def _count_call(self, args: Any) -> None:
        """Count the elements of the containers and ranges a call receives."""
        if not isinstance(args, tuple):
            return
        for arg in args:
            if isinstance(arg, (list, tuple, dict, set, frozenset, range, collections.deque)):
                try:
                    self._call_items += len(arg)
                except OverflowError:
                    self._call_items = PICKLE_MAX_CALL_ITEMS + 1
        if self._call_items > PICKLE_MAX_CALL_ITEMS:
            raise self._refuse(
                f"expands to more than PICKLE_MAX_CALL_ITEMS = {PICKLE_MAX_CALL_ITEMS:,} "
                "container elements"
            )

    def load_reduce(self) -> None:
        """REDUCE: count the arguments, then call (only allowed globals are callable)."""
        args = self.stack.pop()
        func = self.stack[-1]
        self._count_call(args)
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        """NEWOBJ: ``cls.__new__(cls, *args)`` with its arguments counted."""
        args = self.stack.pop()
        cls = self.stack.pop()
        self._count_call(args)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        """NEWOBJ_EX: as NEWOBJ, with keyword arguments counted too."""
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._count_call(args)
        self._count_call(tuple(kwargs.values()) if isinstance(kwargs, dict) else ())
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_build(self) -> None:
        """BUILD only on instances this load created, of the documented kinds."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (Stub, LazyTensor, np.ndarray, np.dtype)) and not isinstance(
            inst, type
        ):
            inst.__setstate__(state)
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
                raise self._refuse(f"sets attribute {key!r} of a {type(inst).__name__}")
            inst.__dict__[key] = value

    def _memo_put(self, index: int) -> None:
        """Store the top of the stack in the memo, within PICKLE_MAX_MEMO entries."""
        if len(self.memo) >= PICKLE_MAX_MEMO and index not in self.memo:
            raise self._refuse(f"memoises more than PICKLE_MAX_MEMO = {PICKLE_MAX_MEMO:,} objects")
        self.memo[index] = self.stack[-1]

    def load_put(self) -> None:
        """PUT with a bounded memo."""
        i = int(self.readline()[:-1])
        if i < 0:
            raise ValueError("negative PUT argument")
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
    dispatch[pickle.PUT[0]] = load_put
    dispatch[pickle.BINPUT[0]] = load_binput
    dispatch[pickle.LONG_BINPUT[0]] = load_long_binput
    dispatch[pickle.MEMOIZE[0]] = load_memoize


def _describe(obj: Any) -> str:
    """A short name of what a pickle tried to change."""
    if isinstance(obj, type):
        return f"the class {getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    if callable(obj):
        return f"the function {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
    return f"a shared {type(obj).__name__} object"


def restricted_load(
    file: IO[bytes], source: str, persistent: Callable[[Any], Any] | None = None
) -> Any:
    """Unpickle one object from `file` with the restricted unpickler.

    `source` names the file in error messages; `persistent` receives persistent ids.
    Raises UnsafePickleError (nothing run) or pickle/value errors for malformed data.
    """
    return _RestrictedUnpickler(file, source, persistent).load()


def storage_type_dtype(storage_type: Any) -> tuple[torch.dtype, bool]:
    """(element dtype, untyped?) of a storage type from a persistent id."""
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
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


def find_state_dict(top: Any) -> tuple[dict[str, LazyTensor], tuple[str, ...]] | None:
    """The model weights inside an unpickled checkpoint, and the key path to them.

    Looks through the usual nesting keys (``state_dict``, ``model_state_dict``, ``model``,
    ``module``, …), then at tensors stored directly at that level, then at a whole pickled
    ``nn.Module`` (rebuilt from its ``_parameters``/``_buffers``/``_modules``). Returns None
    when there are no tensors (e.g. a pickled list, or a dict of hyper-parameters).
    """
    return _find(top, (), 0)


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


def _find(obj: Any, path: tuple[str, ...], depth: int):
    """Recursive part of find_state_dict."""
    if depth > 4:
        return None
    mapping = as_mapping(obj)
    if mapping is None:
        if isinstance(obj, Stub):
            weights = _module_weights(obj, "", set())
            return (weights, path) if weights else None
        return None
    for key in _NEST_KEYS:
        if key in mapping:
            found = _find(mapping[key], path + (key,), depth + 1)
            if found:
                return found
    tensors = {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, LazyTensor)}
    return (tensors, path) if tensors else None


def _module_weights(stub: Stub, prefix: str, seen: set[int]) -> dict[str, LazyTensor]:
    """The state dict of a pickled nn.Module (a stub whose state holds _parameters etc.)."""
    if id(stub) in seen:
        return {}
    seen.add(id(stub))
    state = stub.stub_state
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]
    if not isinstance(state, dict) or "_parameters" not in state:
        return {}
    out: dict[str, LazyTensor] = {}
    params = as_mapping(state.get("_parameters")) or {}
    buffers = as_mapping(state.get("_buffers")) or {}
    transient = state.get("_non_persistent_buffers_set")
    transient = transient if isinstance(transient, (set, frozenset)) else set()
    for name, value in list(params.items()) + [
        (n, b) for n, b in buffers.items() if n not in transient
    ]:
        if isinstance(name, str) and isinstance(value, LazyTensor):
            out[prefix + name] = value
    for name, child in (as_mapping(state.get("_modules")) or {}).items():
        if isinstance(name, str) and isinstance(child, Stub):
            out.update(_module_weights(child, f"{prefix}{name}.", seen))
    return out
