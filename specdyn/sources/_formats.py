"""Weight-file formats: PyTorch zip and legacy files, safetensors, sharded indexes.

Each ``open_*`` function parses only metadata (a pickle without its storages, a safetensors
header, an index) and returns a `TensorReader` whose ``get(key)`` reads that one tensor's
bytes with a positioned read into a fresh buffer. Nothing else of the file is held.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import sys
import threading
import zipfile
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._types import TensorInfo
from ..errors import CheckpointError, UnsafePickleError
from ._unpickle import (
    LazyTensor,
    StorageRef,
    as_mapping,
    find_state_dict,
    restricted_load,
    storage_type_dtype,
    unsupported_entries,
)

__all__ = [
    "TensorReader",
    "WeightsMeta",
    "checkpoint_error",
    "error_kind",
    "open_weights",
    "TORCH_SUFFIXES",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not a real header

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "C64": torch.complex64,
}
for _code, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("F8_E8M0", "float8_e8m0fnu"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        _SAFETENSORS_DTYPES[_code] = getattr(torch, _attr)


# ----------------------------------------------------------------- errors


def checkpoint_error(kind: str, message: str) -> CheckpointError:
    """A CheckpointError tagged with the Note kind discovery reports it under.

    kinds: "missing", "unreadable", "corrupt", "not-a-checkpoint", "unsafe-index",
    "unsafe-pickle" (the last always as UnsafePickleError).
    """
    err = UnsafePickleError(message) if kind == "unsafe-pickle" else CheckpointError(message)
    err.kind = kind  # type: ignore[attr-defined]
    return err


def error_kind(err: CheckpointError) -> str:
    """The Note kind of a CheckpointError raised by this package."""
    if isinstance(err, UnsafePickleError):
        return "unsafe-pickle"
    return getattr(err, "kind", "corrupt")


def _os_error(path: Path, exc: OSError) -> CheckpointError:
    """Translate an OSError opening or reading `path`."""
    if isinstance(exc, FileNotFoundError):
        return checkpoint_error("missing", f"{path}: does not exist")
    if isinstance(exc, PermissionError):
        return checkpoint_error(
            "unreadable", f"{path}: cannot be read (permission denied); fix its permissions"
        )
    return checkpoint_error("unreadable", f"{path}: cannot be read ({exc.strerror or exc})")


# ----------------------------------------------------------------- positioned reads


def _open_binary(path: Path):
    """Open `path` for unbuffered binary reading (one place, so errors are uniform)."""
    return open(path, "rb", buffering=0)


class _RandomAccessFile:
    """A file read only with positioned reads, so readers never share a seek position."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = _open_binary(path)
            self.size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise _os_error(path, exc) from None
        self._lock = threading.Lock()

    def read_into(self, buf: memoryview, offset: int) -> int:
        """Fill `buf` from `offset`; returns the bytes read (fewer only at end of file)."""
        done, total = 0, len(buf)
        while done < total:
            if hasattr(os, "preadv"):
                n = os.preadv(self._file.fileno(), [buf[done:]], offset + done)
            else:  # no positioned read on this platform: serialise seek + read
                with self._lock:
                    self._file.seek(offset + done)
                    n = self._file.readinto(buf[done:])
            if not n:
                break
            done += n
        return done

    def read(self, n: int, offset: int) -> bytes:
        """Up to `n` bytes from `offset`."""
        buf = bytearray(n)
        got = self.read_into(memoryview(buf), offset)
        return bytes(buf[:got])

    def close(self) -> None:
        """Close the file."""
        self._file.close()


# ----------------------------------------------------------------- tensor entries


@dataclass
class _Entry:
    """Where one tensor lives: `span_start`/`span_len` bytes from the storage's data start,
    viewed as `dtype` with `shape`/`stride` (elements, relative to the span start)."""

    key: str
    file: _RandomAccessFile
    locate: Callable[[str], tuple[int | None, bytes | None]]  # key → (data offset, or bytes)
    span_start: int
    span_len: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_id: Hashable | None
    byteswap: bool = False
    negative: bool = False
    conjugate: bool = False

    def info(self) -> TensorInfo:
        """Metadata without reading data."""
        return TensorInfo(self.shape, self.dtype, self.storage_id)

    def read(self) -> torch.Tensor:
        """Read the tensor (fresh, contiguous CPU memory holding only this tensor)."""
        if self.span_len == 0:
            return torch.empty(self.shape, dtype=self.dtype)
        buf = torch.empty(self.span_len, dtype=torch.uint8)
        offset, inline = self.locate(self.key)
        if inline is not None:
            chunk = inline[self.span_start : self.span_start + self.span_len]
            got = len(chunk)
            buf.numpy()[:got] = np.frombuffer(chunk, dtype=np.uint8)
        else:
            got = self.file.read_into(memoryview(buf.numpy()), offset + self.span_start)
        if got != self.span_len:
            raise checkpoint_error(
                "corrupt",
                f"{self.file.path}: tensor {self.key!r} is truncated (got {got} of "
                f"{self.span_len} bytes); the file is incomplete, re-download or re-save it",
            )
        if self.byteswap:
            buf = _swap_bytes(buf, self.dtype)
        flat = buf.view(self.dtype)
        if _is_dense(self.shape, self.stride) and flat.numel() == math.prod(self.shape):
            tensor = flat.view(self.shape)
        else:
            tensor = torch.as_strided(flat, self.shape, self.stride, 0).contiguous()
        if self.negative:
            tensor = torch.neg(tensor)
        if self.conjugate:
            tensor = torch.conj_physical(tensor)
        return tensor


def _is_dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether (shape, stride) is the row-major contiguous layout."""
    expected = 1
    for size, st in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and st != expected:
            return False
        expected *= size
    return True


def _swap_bytes(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reverse the byte order of each element (complex: of each real component)."""
    unit = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize
    if unit <= 1:
        return buf
    return buf.view(-1, unit).flip(1).reshape(-1).contiguous()


class TensorReader:
    """Reads the weight tensors of one checkpoint, one at a time.

    ``keys()`` lists the raw state-dict keys in source order (nested dicts unwrapped,
    optimizer and other state dropped); ``info(key)`` gives a `TensorInfo` (shape, stored
    dtype, storage id) without reading data; ``get(key)`` reads only that tensor and
    returns a fresh contiguous CPU tensor of the stored dtype. Use as a context manager
    or call ``close()``.
    """

    def __init__(
        self,
        label: str,
        entries: dict[str, _Entry],
        files: Iterable[_RandomAccessFile],
        unsupported: dict[str, str] | None = None,
    ):
        self._label = label
        self._entries = entries
        self._files = list(files)
        self.unsupported: dict[str, str] = dict(unsupported or {})
        """Entries that are not plain tensors (key → global that built them); not read."""

    def keys(self) -> list[str]:
        """Raw state-dict keys of the weight tensors, in source order."""
        return list(self._entries)

    def info(self, key: str) -> TensorInfo:
        """Shape, stored dtype and storage id of `key` (no data read)."""
        return self._entry(key).info()

    def get(self, key: str) -> torch.Tensor:
        """Read tensor `key` (CPU, stored dtype, contiguous); raises CheckpointError if truncated."""
        return self._entry(key).read()

    def close(self) -> None:
        """Close the underlying files."""
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _entry(self, key: str) -> _Entry:
        """The entry for `key`, or a CheckpointError naming the checkpoint."""
        try:
            return self._entries[key]
        except KeyError:
            raise checkpoint_error(
                "corrupt", f"{self._label}: holds no weight tensor named {key!r}"
            ) from None


@dataclass
class WeightsMeta:
    """What parsing a weight file told us besides the tensors.

    format: "torch", "torch-legacy", "safetensors", "torch-sharded", "safetensors-sharded";
    scalars: numeric top-level metadata (checkpoint dict entries, safetensors or index
    metadata); state_path: dict keys leading to the state dict (e.g. ("state_dict",));
    unsupported: state-dict entries that are not plain tensors (quantised, sparse,
    tensor subclasses), key → the pickle global that built them; they are not read.
    """

    format: str
    scalars: dict[str, float] = field(default_factory=dict)
    state_path: tuple[str, ...] = ()
    unsupported: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------- PyTorch files


def _torch_entries(
    path: Path,
    file: _RandomAccessFile,
    tensors: dict[str, LazyTensor],
    locate_storage: Callable[[StorageRef, str], tuple[int | None, bytes | None]],
    byteswap: bool,
    id_prefix: tuple,
) -> dict[str, _Entry]:
    """Entries for the lazily described tensors of one PyTorch file."""
    entries = {}
    for key, lt in tensors.items():
        storage = lt.storage
        start, length = lt.byte_span()
        start += storage.byte_base
        if length and start + length > storage.byte_base + storage.nbytes:
            raise checkpoint_error(
                "corrupt", f"{path}: tensor {key!r} extends beyond its storage; the file is corrupt"
            )
        # Tied weights are one storage under two names: equal ids (root storage key,
        # element offset in the root storage, shape, stride) say so without reading data.
        element_offset = lt.offset + storage.byte_base // lt.dtype.itemsize
        entries[key] = _Entry(
            key=key,
            file=file,
            locate=lambda k, s=storage: locate_storage(s, k),
            span_start=start,
            span_len=length,
            dtype=lt.dtype,
            shape=lt.shape,
            stride=lt.stride,
            storage_id=id_prefix
            + (storage.root_key or storage.key, element_offset, lt.shape, lt.stride),
            byteswap=byteswap and lt.dtype.itemsize > 1,
            negative=lt.negative,
            conjugate=lt.conjugate,
        )
    return entries


class _ZipLocator:
    """Finds where each storage's bytes start in a torch zip (from the local file header)."""

    def __init__(self, path: Path, file: _RandomAccessFile, infos: dict[str, zipfile.ZipInfo]):
        self._path, self._file, self._infos = path, file, infos
        self._offsets: dict[str, int] = {}

    def __call__(self, storage: StorageRef, key: str) -> tuple[int | None, bytes | None]:
        """(absolute data offset, None), or (None, entry bytes) for a compressed entry."""
        info = self._infos[storage.root_key or storage.key]
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.save never compresses, but a re-zipped archive may: read that entry whole.
            try:
                with zipfile.ZipFile(self._path) as zf:
                    return None, zf.read(info)
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise checkpoint_error(
                    "corrupt", f"{self._path}: cannot read {info.filename} ({exc})"
                ) from None
        if info.filename not in self._offsets:
            header = self._file.read(30, info.header_offset)
            if len(header) < 30:
                raise checkpoint_error(
                    "corrupt",
                    f"{self._path}: tensor {key!r} is truncated (its zip entry lies past the end "
                    "of the file); the file is incomplete, re-download or re-save it",
                )
            if header[:4] != b"PK\x03\x04":
                raise checkpoint_error(
                    "corrupt",
                    f"{self._path}: bad zip entry header for {info.filename}; the file is corrupt",
                )
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            self._offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
        return self._offsets[info.filename], None


def _parse_pickle(data_file: Any, path: Path, persistent: Callable[[Any], Any]) -> Any:
    """Run the restricted unpickler, translating failures into CheckpointErrors."""
    try:
        return restricted_load(data_file, str(path), persistent)
    except UnsafePickleError as exc:
        raise checkpoint_error("unsafe-pickle", str(exc)) from None
    except CheckpointError:
        raise
    except RecursionError:
        raise checkpoint_error(
            "corrupt", f"{path}: its pickle nests too deeply; the file is corrupt"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
        struct.error,
    ) as exc:
        raise checkpoint_error(
            "corrupt",
            f"{path}: cannot be unpickled ({type(exc).__name__}: {exc}); the file is corrupt or truncated",
        ) from None


def _plain_number(value: Any) -> float | None:
    """A float for an int, float or numpy number (not bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


def _torch_meta(
    path: Path,
    top: Any,
    fmt: str,
    entries_for: Callable[[dict[str, LazyTensor]], dict[str, _Entry]],
) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Find the state dict in an unpickled checkpoint and its top-level numeric scalars."""
    found = find_state_dict(top)
    if found is None:
        what = getattr(top, "stub_global", type(top).__name__)
        raise checkpoint_error(
            "not-a-checkpoint",
            f"{path}: holds no weight tensors (its pickle is a {what}); not a checkpoint, "
            "move it out of the folder",
        )
    tensors, state_path = found
    entries = entries_for(tensors)
    scalars: dict[str, float] = {}
    for key, value in (as_mapping(top) or {}).items():
        if not isinstance(key, str):
            continue
        if isinstance(value, LazyTensor):
            # 1-element tensors beside a nested state dict are metadata (e.g. a loss);
            # in a flat state dict they are weights (e.g. num_batches_tracked).
            if not state_path or value.numel != 1 or value.dtype.is_complex:
                continue
            number = float(entries_for({key: value})[key].read().reshape(()).item())
        else:
            number = _plain_number(value)
        if number is not None:
            scalars[key] = number
    unsupported = unsupported_entries(top, state_path)
    return entries, WeightsMeta(
        format=fmt, scalars=scalars, state_path=state_path, unsupported=unsupported
    )


def _open_torch_zip(
    path: Path, file: _RandomAccessFile, id_prefix: tuple
) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Parse a torch.save zip archive (metadata only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            candidates = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
            if not candidates:
                raise checkpoint_error(
                    "not-a-checkpoint",
                    f"{path}: a zip archive without data.pkl; not a PyTorch checkpoint",
                )
            pkl = min(candidates, key=len)
            prefix = pkl[: -len("data.pkl")]
            if prefix + "constants.pkl" in names:
                raise checkpoint_error(
                    "not-a-checkpoint",
                    f"{path}: a TorchScript archive, not a checkpoint; save model.state_dict() with torch.save",
                )
            data = zf.read(pkl)
            byteorder = (
                zf.read(prefix + "byteorder").decode("ascii", "replace")
                if prefix + "byteorder" in names
                else "little"
            )
    except CheckpointError:
        raise
    except OSError as exc:
        raise _os_error(path, exc) from None
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, NotImplementedError) as exc:
        raise checkpoint_error(
            "corrupt", f"{path}: broken zip archive ({exc}); the file is corrupt or truncated"
        ) from None
    if byteorder not in ("little", "big"):
        raise checkpoint_error("corrupt", f"{path}: unknown byte order {byteorder!r}")
    by_key = {
        i.filename[len(prefix) + len("data/") :]: i
        for i in infos
        if i.filename.startswith(prefix + "data/")
    }
    storages: dict[str, StorageRef] = {}

    def persistent(pid: Any) -> StorageRef:
        """('storage', storage_type, key, location, numel) → a StorageRef (no data read)."""
        if not isinstance(pid, tuple) or len(pid) != 5:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        typename, storage_type, key, location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii")
        if typename != "storage" or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, _untyped = storage_type_dtype(storage_type)
        if key not in storages:
            storages[key] = StorageRef(
                key=key, dtype=dtype, nbytes=numel * dtype.itemsize, location=str(location)
            )
        return storages[key]

    top = _parse_pickle(io.BytesIO(data), path, persistent)
    for key, ref in storages.items():
        info = by_key.get(key)
        if info is None:
            raise checkpoint_error(
                "corrupt",
                f"{path}: storage data/{key} is missing from the archive; the file is corrupt",
            )
        if info.file_size != ref.nbytes:
            raise checkpoint_error(
                "corrupt",
                f"{path}: storage data/{key} holds {info.file_size} bytes, expected {ref.nbytes}; the file is corrupt",
            )
    locator = _ZipLocator(path, file, by_key)
    swap = byteorder != sys.byteorder
    return _torch_meta(
        path,
        top,
        "torch",
        lambda tensors: _torch_entries(path, file, tensors, locator, swap, id_prefix),
    )


def _open_torch_legacy(
    path: Path, file: _RandomAccessFile, id_prefix: tuple
) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Parse a pre-1.6 (non-zip) torch.save file: pickles then raw storages, read lazily."""
    storages: dict[str, StorageRef] = {}

    def persistent(pid: Any) -> Any:
        """Legacy ids: ('storage', type, root_key, location, numel, view) or ('module', …)."""
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module":
            return pid[1] if len(pid) > 1 else None
        if typename != "storage" or len(pid) != 6:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, root_key, location, numel, view = pid
        dtype, _untyped = storage_type_dtype(storage_type)
        if not isinstance(root_key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        root = storages.setdefault(
            root_key, StorageRef(root_key, dtype, numel * dtype.itemsize, str(location))
        )
        if view is None:
            return root
        view_key, offset, size = view
        return StorageRef(
            view_key,
            dtype,
            size * dtype.itemsize,
            str(location),
            byte_base=offset * dtype.itemsize,
            root_key=root_key,
        )

    try:
        with open(path, "rb") as fh:
            magic = _parse_pickle(fh, path, None)
            if magic != _LEGACY_MAGIC:
                what = type(magic).__name__
                raise checkpoint_error(
                    "not-a-checkpoint",
                    f"{path}: a plain pickle of a {what}, not a PyTorch checkpoint; move it out of the folder",
                )
            protocol = _parse_pickle(fh, path, None)
            if protocol != _LEGACY_PROTOCOL:
                raise checkpoint_error(
                    "corrupt", f"{path}: unknown torch.save protocol {protocol!r}"
                )
            sys_info = _parse_pickle(fh, path, None)
            little = (
                bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
            )
            top = _parse_pickle(fh, path, persistent)
            keys = _parse_pickle(fh, path, None)
            position = fh.tell()
    except OSError as exc:
        raise _os_error(path, exc) from None
    if not isinstance(keys, list):
        raise checkpoint_error("corrupt", f"{path}: malformed storage list; the file is corrupt")
    order = "<" if little else ">"
    for key in keys:
        ref = storages.get(key) if isinstance(key, str) else None
        if ref is None:
            raise checkpoint_error(
                "corrupt", f"{path}: storage {key!r} is listed but never used; the file is corrupt"
            )
        head = file.read(8, position)
        if len(head) < 8:
            raise checkpoint_error(
                "corrupt", f"{path}: truncated before storage {key}; the file is incomplete"
            )
        (numel,) = struct.unpack(order + "q", head)
        if numel * ref.dtype.itemsize != ref.nbytes:
            raise checkpoint_error(
                "corrupt", f"{path}: storage {key} size mismatch; the file is corrupt"
            )
        ref.data_offset = position + 8
        position += 8 + ref.nbytes
    if position > file.size:
        raise checkpoint_error(
            "corrupt",
            f"{path}: truncated ({file.size} of {position} bytes); the file is incomplete",
        )
    missing = [k for k in storages if storages[k].data_offset is None]
    if missing:
        raise checkpoint_error(
            "corrupt", f"{path}: storage {missing[0]} has no data; the file is corrupt"
        )

    def locate(storage: StorageRef, key: str) -> tuple[int | None, bytes | None]:
        """Data offsets were fixed while parsing."""
        return storages[storage.root_key or storage.key].data_offset, None

    swap = little != (sys.byteorder == "little")
    return _torch_meta(
        path,
        top,
        "torch-legacy",
        lambda tensors: _torch_entries(path, file, tensors, locate, swap, id_prefix),
    )


def _open_torch(
    path: Path, file: _RandomAccessFile, id_prefix: tuple
) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Parse a PyTorch file of either serialization format."""
    head = file.read(4, 0)
    if head.startswith(b"PK"):
        return _open_torch_zip(path, file, id_prefix)
    if not head:
        raise checkpoint_error("corrupt", f"{path}: empty file")
    try:
        return _open_torch_legacy(path, file, id_prefix)
    except CheckpointError as exc:
        if error_kind(exc) == "corrupt" and _looks_like_tar(file):
            raise checkpoint_error(
                "corrupt",
                f"{path}: the tar format of PyTorch < 0.4 is not supported; re-save it with a recent torch",
            ) from None
        raise


def _looks_like_tar(file: _RandomAccessFile) -> bool:
    """Whether the file has a tar header (ustar magic at offset 257)."""
    return file.read(5, 257) == b"ustar"


# ----------------------------------------------------------------- safetensors


def _open_safetensors(path: Path, file: _RandomAccessFile) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Parse a safetensors header (8-byte little-endian length, then JSON)."""
    if file.size < 8:
        raise checkpoint_error(
            "corrupt", f"{path}: too short for a safetensors file ({file.size} bytes)"
        )
    (n,) = struct.unpack("<Q", file.read(8, 0))
    if n > min(_MAX_HEADER, file.size - 8):
        raise checkpoint_error(
            "corrupt",
            f"{path}: safetensors header length {n} exceeds the file; the file is corrupt or truncated",
        )
    try:
        header = json.loads(file.read(n, 8))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise checkpoint_error(
            "corrupt", f"{path}: unreadable safetensors header ({exc})"
        ) from None
    if not isinstance(header, dict):
        raise checkpoint_error("corrupt", f"{path}: safetensors header is not a JSON object")
    data_start = 8 + n
    meta = header.pop("__metadata__", None) or {}
    entries: dict[str, _Entry] = {}
    for key, spec in header.items():
        try:
            dtype_code, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            shape = tuple(int(d) for d in shape)
            begin, end = int(begin), int(end)
        except (TypeError, KeyError, ValueError):
            raise checkpoint_error(
                "corrupt", f"{path}: malformed safetensors entry {key!r}"
            ) from None
        dtype = _SAFETENSORS_DTYPES.get(dtype_code)
        if dtype is None:
            raise checkpoint_error(
                "corrupt",
                f"{path}: tensor {key!r} has dtype {dtype_code}, which this torch cannot represent",
            )
        if (
            min(shape, default=0) < 0
            or end - begin != math.prod(shape) * dtype.itemsize
            or begin < 0
        ):
            raise checkpoint_error(
                "corrupt", f"{path}: tensor {key!r} has inconsistent offsets; the file is corrupt"
            )
        if data_start + end > file.size:
            raise checkpoint_error(
                "corrupt",
                f"{path}: truncated: tensor {key!r} ends at byte {data_start + end} but the file has "
                f"{file.size}; re-download or re-save it",
            )
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        entries[key] = _Entry(
            key=key,
            file=file,
            locate=lambda k, s=data_start: (s, None),
            span_start=begin,
            span_len=end - begin,
            dtype=dtype,
            shape=shape,
            stride=stride,
            storage_id=None,
        )
    scalars = {}
    if isinstance(meta, dict):
        for k, v in meta.items():
            number = _parse_number(v)
            if isinstance(k, str) and number is not None:
                scalars[k] = number
    return entries, WeightsMeta(format="safetensors", scalars=scalars)


def _parse_number(value: Any) -> float | None:
    """A float from a number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


# ----------------------------------------------------------------- sharded


def read_index(index: Path) -> tuple[list[Path], dict[str, Path], dict[str, float]]:
    """Parse a ``*.index.json``: (shard files in order, key → shard, numeric metadata).

    Refuses (CheckpointError, kind "unsafe-index") a weight_map entry that leaves the
    index's folder: absolute paths, ``..``, or a symlink resolving outside (except the
    Hugging Face cache's links from ``snapshots/<rev>/`` to the same repo's ``blobs/``).
    """
    try:
        text = index.read_text(encoding="utf-8")
    except OSError as exc:
        raise _os_error(index, exc) from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise checkpoint_error("corrupt", f"{index}: not valid JSON ({exc})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise checkpoint_error(
            "not-a-checkpoint", f"{index}: has no weight_map; not a sharded checkpoint index"
        )
    folder = index.parent
    real_folder = folder.resolve()
    shards: dict[str, Path] = {}
    key_to_shard: dict[str, Path] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise checkpoint_error(
                "corrupt", f"{index}: weight_map entry for {key!r} is not a file name"
            )
        if name not in shards:
            relative = Path(name)
            target = folder / relative
            if (
                relative.is_absolute()
                or ".." in relative.parts
                or (target.exists() and not _stays_inside(target, real_folder, folder))
            ):
                raise checkpoint_error(
                    "unsafe-index",
                    f"{index}: refused: weight_map points outside its folder ({name}); keep shards beside the index",
                )
            shards[name] = target
        key_to_shard[key] = shards[name]
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    scalars = {k: v for k, v in ((k, _parse_number(v)) for k, v in meta.items()) if v is not None}
    return list(shards.values()), key_to_shard, scalars


def _stays_inside(target: Path, real_folder: Path, folder: Path) -> bool:
    """Whether `target` (beside an index in `folder`) resolves inside that folder, or is a
    Hugging Face cache link: ``<repo>/snapshots/<rev>/f`` → ``<repo>/blobs/<hash>``."""
    real = target.resolve()
    if real.is_relative_to(real_folder):
        return True
    for ancestor in (folder.absolute(), *folder.absolute().parents):
        if ancestor.name == "snapshots" and (ancestor.parent / "blobs").is_dir():
            return real.is_relative_to((ancestor.parent / "blobs").resolve())
    return False


def _open_sharded(index: Path) -> tuple[dict[str, _Entry], WeightsMeta, list[_RandomAccessFile]]:
    """Open every shard named by an index; keys in shard order, then file order."""
    shard_paths, key_to_shard, scalars = read_index(index)
    files: list[_RandomAccessFile] = []
    entries: dict[str, _Entry] = {}
    formats = set()
    unsupported: dict[str, str] = {}
    try:
        for shard in shard_paths:
            if not shard.exists():
                raise checkpoint_error(
                    "corrupt",
                    f"{index}: shard {shard.name} is missing; download it or remove the index",
                )
            sub_entries, sub_meta, sub_files = _open_single(shard, id_prefix=(shard.name,))
            files.extend(sub_files)
            formats.add(sub_meta.format)
            unsupported.update(sub_meta.unsupported)
            wanted = [k for k, s in key_to_shard.items() if s == shard]
            for key in wanted:
                if key not in sub_entries:
                    raise checkpoint_error(
                        "corrupt", f"{index}: maps {key!r} to {shard.name}, which does not hold it"
                    )
            for key, entry in sub_entries.items():
                if key_to_shard.get(key) == shard:
                    entries[key] = entry
    except BaseException:
        for f in files:
            f.close()
        raise
    kind = "safetensors-sharded" if formats == {"safetensors"} else "torch-sharded"
    return entries, WeightsMeta(format=kind, scalars=scalars, unsupported=unsupported), files


# ----------------------------------------------------------------- entry point


def _open_single(
    path: Path, id_prefix: tuple = ()
) -> tuple[dict[str, _Entry], WeightsMeta, list[_RandomAccessFile]]:
    """Open one weight file (torch or safetensors, by suffix)."""
    file = _RandomAccessFile(path)
    try:
        if path.suffix == ".safetensors":
            entries, meta = _open_safetensors(path, file)
        else:
            entries, meta = _open_torch(path, file, id_prefix)
    except BaseException:
        file.close()
        raise
    return entries, meta, [file]


def open_weights(path: Path, index: bool = False) -> tuple[TensorReader, WeightsMeta]:
    """Open one weight file or (with `index`) a sharded ``*.index.json`` for reading.

    Returns the reader and the metadata found while parsing. Raises CheckpointError
    (tagged with its Note kind, see `checkpoint_error`).
    """
    if index:
        entries, meta, files = _open_sharded(path)
    else:
        entries, meta, files = _open_single(path)
    return TensorReader(str(path), entries, files, meta.unsupported), meta
