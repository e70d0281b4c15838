"""Weight-file formats: PyTorch zip and legacy files, safetensors, sharded indexes.

Each ``open_*`` function parses only metadata (a pickle without its storages, a safetensors
header, an index) and returns a `TensorReader` whose ``get(key)`` reads that one tensor's
bytes with a positioned read into a fresh buffer. Nothing else of the file is held.

What a file declares is checked before it is trusted, and the work it can cause is bounded
by the named limits below (each error names the limit it hit):

- torch zip: every record read is checked against its CRC-32 (a tensor that is a view of
  part of a record has the whole record checked once per reader, streamed in chunks);
  declared sizes must fit in the file; only stored and deflated records are read, and a
  deflated record is inflated in bounded steps, never past its declared size, which may not
  exceed `ZIP_MAX_DEFLATE_RATIO` times its compressed size.
- safetensors: the header is validated as the official ``safetensors`` library validates
  it (same files refused), within `SAFETENSORS_MAX_HEADER_BYTES`,
  `SAFETENSORS_MAX_TENSORS` and `SAFETENSORS_MAX_JSON_DEPTH`.
- legacy torch files: storage views must lie inside their storage.
- ``*.index.json``: see `read_index` for which shard names and symlinks are followed.
- every file: only regular files are opened (a FIFO, socket or device would block or
  never end), checked on the opened descriptor; JSON (indexes, ``config.json``,
  ``trainer_state.json``, metrics) nests at most `JSON_MAX_DEPTH` levels.
- a tensor whose elements share storage (a stride-0 expansion) may materialise at most
  `TORCH_MAX_EXPANDED_BYTES` or the file's size, whichever is larger.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import pickle
import re
import stat
import struct
import sys
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, UnsafePickleError
from ..types import TensorInfo
from ._unpickle import (
    LazyTensor,
    StorageRef,
    as_mapping,
    find_weights,
    restricted_load,
    storage_type_dtype,
    unsupported_entries,
)

__all__ = [
    "TensorReader",
    "WeightsMeta",
    "checkpoint_error",
    "one_line",
    "resolve_or_none",
    "storable_name",
    "error_content",
    "error_kind",
    "open_weights",
    "TORCH_SUFFIXES",
    "key_path",
    "sniff_format",
    "file_format",
    "SAFETENSORS_MAX_HEADER_BYTES",
    "SAFETENSORS_MAX_TENSORS",
    "SAFETENSORS_MAX_JSON_DEPTH",
    "ZIP_MAX_DEFLATE_RATIO",
    "JSON_MAX_DEPTH",
    "TORCH_MAX_EXPANDED_BYTES",
    "loads_json",
    "read_regular_text",
    "open_regular",
    "as_float",
]

TORCH_SUFFIXES = (".pth.tar", ".pt.tar", ".pt", ".pth", ".bin", ".ckpt", ".tar", ".pkl", ".model")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# ----------------------------------------------------------------- limits

SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
"""Longest safetensors header read: the official library's ``MAX_HEADER_SIZE``."""
SAFETENSORS_MAX_TENSORS = 250_000
"""Most tensors one safetensors file may declare (real files hold at most tens of
thousands); counted before and while the header is parsed, so a header declaring more
is refused before it costs time or memory."""
SAFETENSORS_MAX_JSON_DEPTH = 127
"""Deepest nesting of a safetensors header (serde_json's limit, which the official
library inherits: 128 levels are refused)."""
ZIP_MAX_DEFLATE_RATIO = 1032
"""Deflate cannot expand data more than 1032-fold: a deflated record that declares a
larger size than this times its compressed size is refused unread."""
JSON_MAX_DEPTH = 127
"""Deepest nesting of any other JSON file read (indexes, sidecars, metrics lines): real
ones nest a few levels; deeper ones are refused before parsing, which would otherwise
end in a RecursionError."""
TORCH_MAX_EXPANDED_BYTES = 2**26
"""A torch tensor whose elements overlap in storage (stride 0, an expanded view) holds
more elements than its bytes span; it is materialised only up to this many bytes or the
file's size, whichever is larger (64 MiB): a 4-byte storage expanded to 40 GB is refused
before anything is allocated."""
_READ_CHUNK = 8 * 2**20  # bytes per positioned read when a record is streamed (CRC, inflate)
_U64_LIMIT = 2**64  # safetensors sizes and offsets are u64 (usize) in the official reader

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


# Characters a one-line message, or a name a store keeps, cannot hold as they are: control
# characters (a NUL ends an HDF5 string, a newline breaks the line) and unpaired surrogates
# (UTF-8 cannot encode them). Names and globals read from a file may hold any of them.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def one_line(text: str) -> str:
    """`text` with control characters and unpaired surrogates escaped as repr() does."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def storable_name(name: str) -> bool:
    """Whether a name read from a file (tensor key, metric) can be kept in a store: no
    NUL (HDF5 strings end there) and no unpaired surrogate (not encodable as UTF-8)."""
    return _UNSTORABLE.search(name) is None


def checkpoint_error(kind: str, message: str, content: str | None = None) -> CheckpointError:
    """A CheckpointError tagged with the Note kind discovery reports it under.

    kinds: "missing", "unreadable", "corrupt", "not-a-checkpoint", "unsafe-index",
    "unsafe-pickle" (the last always as UnsafePickleError). content (for
    "not-a-checkpoint"): what the file holds instead of weights, "optimizer-state",
    "no-tensors" or "plain-pickle"; discovery counts such files once per content.
    The message is kept on one line (`one_line`): it may quote names from the file.
    """
    message = one_line(message)
    err = UnsafePickleError(message) if kind == "unsafe-pickle" else CheckpointError(message)
    err.kind = kind  # type: ignore[attr-defined]
    err.content = content  # type: ignore[attr-defined]
    return err


def error_kind(err: CheckpointError) -> str:
    """The Note kind of a CheckpointError raised by this package."""
    if isinstance(err, UnsafePickleError):
        return "unsafe-pickle"
    return getattr(err, "kind", "corrupt")


def error_content(err: CheckpointError) -> str | None:
    """What a "not-a-checkpoint" file holds instead of weights (see `checkpoint_error`)."""
    return getattr(err, "content", None)


def _os_error(path: Path, exc: OSError) -> CheckpointError:
    """Translate an OSError opening or reading `path`."""
    if isinstance(exc, FileNotFoundError):
        return checkpoint_error("missing", f"{path}: does not exist")
    if isinstance(exc, _NotRegularFile):
        return checkpoint_error(
            "unreadable",
            f"{path}: not a regular file (a FIFO, socket or device); give the file itself",
        )
    if isinstance(exc, PermissionError):
        return checkpoint_error(
            "unreadable", f"{path}: cannot be read (permission denied); fix its permissions"
        )
    return checkpoint_error("unreadable", f"{path}: cannot be read ({exc.strerror or exc})")


# ----------------------------------------------------------------- positioned reads


class _NotRegularFile(OSError):
    """`path` is a FIFO, socket, device or folder: reading it could block forever."""


def open_regular(path: Path):
    """Open `path` for unbuffered binary reading, only if it is a regular file.

    O_NONBLOCK makes opening a FIFO return at once (a plain open blocks until a writer
    comes); the type is then checked on the descriptor itself, so no swap in between
    can slip a FIFO in."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegularFile("not a regular file (a FIFO, socket or device)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def as_float(value: int | float) -> float:
    """`float(value)`, ±inf for an int too large for a float (float() raises OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


_open_binary = open_regular  # one place to open, so errors are uniform


def read_regular_text(path: Path, encoding: str = "utf-8") -> str:
    """The text of `path`, opened only if it is a regular file.

    Raises OSError (a FIFO or device: `_NotRegularFile`) or UnicodeDecodeError."""
    with _open_binary(path) as fh:
        return fh.readall().decode(encoding)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class _JsonTooDeep(ValueError):
    """JSON nesting deeper than JSON_MAX_DEPTH (a ValueError, as json's own errors)."""


def loads_json(text: str, limit: int = JSON_MAX_DEPTH) -> Any:
    """`json.loads(text)`, refused (_JsonTooDeep) when it nests deeper than `limit`."""
    if text.count("[") + text.count("{") > limit:
        brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
        codes = np.frombuffer(brackets, dtype=np.uint8)
        depth = np.cumsum(np.where((codes == ord("[")) | (codes == ord("{")), 1, -1))
        if depth.size and int(depth.max()) > limit:
            raise _JsonTooDeep(f"nests deeper than {limit} levels")
    return json.loads(text)


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
        if offset < 0 or offset >= self.size:  # an offset read from a corrupt header
            return 0  # (past a C long it would raise OverflowError)
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
        buf = bytearray(max(0, min(n, self.size - offset)))  # never more than the file holds
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
    # after a positioned read: (key, the bytes read, span_start) → raises if they are corrupt
    verify: Callable[[str, memoryview, int], None] | None = None

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
        if inline is None and self.verify is not None:
            self.verify(self.key, memoryview(buf.numpy()), self.span_start)
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
        bad = next((k for k in [*entries, *self.unsupported] if not storable_name(k)), None)
        if bad is not None:  # every name ends up in a store, which cannot hold it
            self.close()
            raise checkpoint_error(
                "corrupt",
                f"{label}: tensor name {bad!r} holds a NUL or an unpaired surrogate, which "
                "no store can keep; the file is corrupt or hostile, re-save it with plain names",
            )

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

    format: "torch", "torch-legacy", "safetensors", "torch-sharded", "safetensors-sharded",
    "pickle" (a plain ``pickle.dump`` of numpy arrays);
    scalars: numeric top-level metadata (checkpoint dict entries, safetensors or index
    metadata); state_path: dict keys leading to the state dict (e.g. ("state_dict",));
    unsupported: state-dict entries that are not plain tensors (quantised, sparse,
    tensor subclasses), key → the pickle global that built them; they are not read;
    other_paths: nesting paths of further sub-dicts holding tensors that were not taken
    for the model (an EMA copy beside ``model``), named in a note.
    """

    format: str
    scalars: dict[str, float] = field(default_factory=dict)
    state_path: tuple[str, ...] = ()
    unsupported: dict[str, str] = field(default_factory=dict)
    other_paths: list[tuple[str, ...]] = field(default_factory=list)


# ----------------------------------------------------------------- PyTorch files


def _torch_entries(
    path: Path,
    file: _RandomAccessFile,
    tensors: dict[str, LazyTensor],
    locate_storage: Callable[[StorageRef, str], tuple[int | None, bytes | None]],
    byteswap: bool,
    id_prefix: tuple,
    verify_storage: Callable[[StorageRef, str, memoryview, int], None] | None = None,
) -> dict[str, _Entry]:
    """Entries for the lazily described tensors of one PyTorch file."""
    entries = {}
    for key, lt in tensors.items():
        storage = lt.storage
        start, length = lt.byte_span()
        start += storage.byte_base
        if start < 0 or (length and start + length > storage.byte_base + storage.nbytes):
            raise checkpoint_error(
                "corrupt", f"{path}: tensor {key!r} extends beyond its storage; the file is corrupt"
            )
        _check_expansion(path, file, key, lt, length)
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
            verify=None
            if verify_storage is None
            else lambda k, data, at, s=storage: verify_storage(s, k, data, at),
        )
    return entries


def _check_expansion(
    path: Path, file: _RandomAccessFile, key: str, lt: LazyTensor, length: int
) -> None:
    """Refuse a view that would materialise more than TORCH_MAX_EXPANDED_BYTES or the
    file's size from fewer bytes (a stride-0 memory bomb), before anything is allocated."""
    full = lt.numel * lt.dtype.itemsize
    bound = max(TORCH_MAX_EXPANDED_BYTES, file.size)
    if full > length and full > bound:
        raise checkpoint_error(
            "corrupt",
            f"{path}: tensor {key!r} expands {length} stored bytes to {full} "
            f"bytes, more than the larger of the file's size and TORCH_MAX_EXPANDED_BYTES "
            f"({bound}); the file is corrupt or hostile, re-save it without expanded views",
        )


class _ZipArchive:
    """The records of a torch zip, read with positioned reads: every record read is checked
    against its CRC-32, and nothing is read or inflated past the size it declares."""

    def __init__(self, path: Path, file: _RandomAccessFile, infos: list[zipfile.ZipInfo]):
        self._path, self._file = path, file
        self.infos = {i.filename: i for i in infos}
        self._data_offsets: dict[str, int] = {}
        self._verified: set[str] = set()  # records whose CRC matched (read whole once)

    def check_declared(self, info: zipfile.ZipInfo) -> None:
        """Refuse, before reading it, a record whose declared method or sizes cannot be right."""
        name = info.filename
        if info.flag_bits & 0x1:
            raise self._error(f"record {name} is encrypted; not a torch.save archive")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise self._error(
                    f"record {name} is stored uncompressed but declares {info.compress_size} "
                    f"bytes on disk for {info.file_size}; the file is corrupt"
                )
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > ZIP_MAX_DEFLATE_RATIO * info.compress_size:
                raise self._error(
                    f"record {name} declares {info.file_size} bytes from {info.compress_size} "
                    f"deflated ones, more than deflate can produce (limit ZIP_MAX_DEFLATE_RATIO = "
                    f"{ZIP_MAX_DEFLATE_RATIO}x); refused unread, the file is corrupt"
                )
        else:
            raise self._error(
                f"record {name} uses zip compression method {info.compress_type}; only stored "
                "and deflated records are read (torch.save writes stored ones): re-save it"
            )
        if info.header_offset + 30 + info.compress_size > self._file.size:
            raise self._error(
                f"record {name} declares data past the end of the file ({self._file.size} "
                "bytes); the file is truncated or corrupt, re-download or re-save it"
            )

    def locate(
        self, info: zipfile.ZipInfo, key: str
    ) -> tuple[int | None, bytes | bytearray | None]:
        """(absolute data offset, None) of a stored record, or (None, its checked bytes)."""
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.save never compresses, but a re-zipped archive may: inflate it whole
            return None, self.read_record(info, key)
        return self._data_offset(info, key), None

    def read_record(self, info: zipfile.ZipInfo, key: str | None = None) -> bytes | bytearray:
        """A whole record (inflated if deflated), checked against its CRC-32."""
        self.check_declared(info)
        start = self._data_offset(info, key)
        if info.compress_type == zipfile.ZIP_STORED:
            data = self._file.read(info.file_size, start)
            if len(data) != info.file_size:
                raise self._truncated(info, key)
            crc = zlib.crc32(data)
        else:
            data, crc = self._inflate(info, start, key)
        if crc != info.CRC:
            raise self._crc_error(info, key)
        self._verified.add(info.filename)
        return data

    def verify(self, info: zipfile.ZipInfo, key: str, data: memoryview, at: int) -> None:
        """Check the CRC-32 of the record `data` was read from (its bytes from `at`): over
        `data` when that is the whole record, else over the record streamed once."""
        if info.filename in self._verified:
            return
        if at == 0 and len(data) == info.file_size:
            crc = zlib.crc32(data)
        else:
            crc = self._stream_crc(info, key)
        if crc != info.CRC:
            raise self._crc_error(info, key)
        self._verified.add(info.filename)

    def _data_offset(self, info: zipfile.ZipInfo, key: str | None) -> int:
        """Where a record's bytes start, from its local header (which must name it)."""
        name = info.filename
        if name not in self._data_offsets:
            header = self._file.read(30, info.header_offset)
            if len(header) < 30:
                raise self._truncated(info, key)
            if header[:4] != b"PK\x03\x04":
                raise self._error(f"bad zip record header for {name}; the file is corrupt")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            local_name = self._file.read(name_len, info.header_offset + 30)
            if local_name not in (name.encode("utf-8"), name.encode("cp437", "replace")):
                raise self._error(
                    f"zip record {name} has another name in its local header; the file is corrupt"
                )
            start = info.header_offset + 30 + name_len + extra_len
            if start + info.compress_size > self._file.size:
                raise self._truncated(info, key)
            self._data_offsets[name] = start
        return self._data_offsets[name]

    def _stream_crc(self, info: zipfile.ZipInfo, key: str) -> int:
        """CRC-32 of a stored record, read in bounded chunks."""
        start, crc, done = self._data_offset(info, key), 0, 0
        chunk = bytearray(min(_READ_CHUNK, info.file_size))
        view = memoryview(chunk)
        while done < info.file_size:
            part = view[: min(len(chunk), info.file_size - done)]
            got = self._file.read_into(part, start + done)
            if got != len(part):
                raise self._truncated(info, key)
            crc = zlib.crc32(part, crc)
            done += got
        return crc

    def _inflate(self, info: zipfile.ZipInfo, start: int, key: str | None) -> tuple[bytearray, int]:
        """(inflated bytes, their CRC-32) of a deflated record, in bounded steps: output is
        never let past the declared size (one byte more proves the record lies about it)."""
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        out, crc, consumed = bytearray(), 0, 0
        pending = b""
        try:
            while not inflater.eof:
                if not pending and consumed < info.compress_size:
                    pending = self._file.read(
                        min(_READ_CHUNK, info.compress_size - consumed), start + consumed
                    )
                    if not pending:
                        raise self._truncated(info, key)
                    consumed += len(pending)
                room = info.file_size - len(out) + 1  # max_length 0 would mean "unbounded"
                piece = inflater.decompress(pending, min(room, _READ_CHUNK))
                pending = inflater.unconsumed_tail
                if len(out) + len(piece) > info.file_size:
                    raise self._error(
                        f"record {info.filename} inflates past its declared {info.file_size} "
                        "bytes (a decompression bomb or a corrupt file); refused"
                    )
                if not piece and not pending and consumed == info.compress_size:
                    break  # all input used and nothing more comes out: the stream ends early
                crc = zlib.crc32(piece, crc)
                out += piece
        except zlib.error as exc:
            raise self._error(
                f"record {info.filename} does not inflate ({exc}); the file is corrupt, "
                "re-save or re-download it"
            ) from None
        if not inflater.eof or len(out) != info.file_size:
            raise self._error(
                f"record {info.filename} inflates to {len(out)} of its declared "
                f"{info.file_size} bytes; the file is corrupt, re-save or re-download it"
            )
        return out, crc

    def _error(self, what: str) -> CheckpointError:
        """A corrupt-file error naming the archive."""
        return checkpoint_error("corrupt", f"{self._path}: {what}")

    def _truncated(self, info: zipfile.ZipInfo, key: str | None) -> CheckpointError:
        """The error for a record that lies (partly) past the end of the file."""
        what = f"tensor {key!r}" if key is not None else f"record {info.filename}"
        return self._error(
            f"{what} is truncated (its zip record {info.filename} lies past the end of the "
            "file); the file is incomplete, re-download or re-save it"
        )

    def _crc_error(self, info: zipfile.ZipInfo, key: str | None) -> CheckpointError:
        """The error for a record whose bytes differ from what was written."""
        what = f" (tensor {key!r})" if key is not None else ""
        return self._error(
            f"record {info.filename}{what} fails its CRC-32 check: the file is corrupt; "
            "re-save or re-download it"
        )


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
        return as_float(value)
    return None


def _torch_meta(
    path: Path,
    top: Any,
    fmt: str,
    entries_for: Callable[[dict[str, LazyTensor]], dict[str, _Entry]],
) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Find the state dict in an unpickled checkpoint and its top-level numeric scalars."""
    found = find_weights(top)
    if found is not None and found.ambiguous:
        raise _ambiguous_error(path, found.ambiguous)
    if found is None:
        what = getattr(top, "stub_global", type(top).__name__)
        content = "optimizer-state" if _is_optimizer_state(top) else "no-tensors"
        holds = "no weight tensors"
        if content == "optimizer-state":
            holds = "optimizer state only, no weight tensors"
        raise checkpoint_error(
            "not-a-checkpoint",
            f"{path}: holds {holds} (its pickle is a {what}); not a checkpoint, move it out "
            "of the folder",
            content=content,
        )
    tensors, state_path = found.tensors, found.path
    _check_deepspeed(path, top, tensors, state_path)
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
        format=fmt,
        scalars=scalars,
        state_path=state_path,
        unsupported=unsupported,
        other_paths=list(found.others),
    )


def _ambiguous_error(path: Path, places: list[tuple[str, ...]]) -> CheckpointError:
    """The error for weights in several places that no known key tells apart."""
    where = ", ".join(key_path(p) for p in places[:4])
    count = len(places) if len(places) < 8 else "8 or more"
    return checkpoint_error(
        "unreadable",
        f"{path}: holds weight tensors in {count} places ({where}) and no known key "
        "(state_dict, model, module, …) says which is the model; not merged: torch.save the "
        "one to analyse by itself, or under 'state_dict'",
    )


def _numpy_meta(
    path: Path, file: _RandomAccessFile, top: Any
) -> tuple[dict[str, _Entry], WeightsMeta] | None:
    """The weights of a plain ``pickle.dump`` of (nested) numpy arrays, held in memory as
    the unpickler rebuilt them; None when it holds no numeric arrays."""
    found = find_weights(top, arrays=True)
    if found is None:
        return None
    if found.ambiguous:
        raise _ambiguous_error(path, found.ambiguous)
    entries: dict[str, _Entry] = {}
    unsupported: dict[str, str] = {}
    for key, array in found.tensors.items():
        native = array.dtype.newbyteorder("=")
        try:
            dtype = torch.from_numpy(np.zeros(0, dtype=native)).dtype
        except TypeError:  # float128, complex256: no torch dtype
            unsupported[key] = f"numpy.ndarray[{array.dtype}]"
            continue
        data = np.ascontiguousarray(array, dtype=native).tobytes()
        shape = tuple(int(n) for n in array.shape)
        entries[key] = _Entry(
            key=key,
            file=file,
            locate=lambda k, d=data: (None, d),
            span_start=0,
            span_len=len(data),
            dtype=dtype,
            shape=shape,
            stride=tuple(math.prod(shape[i + 1 :]) for i in range(len(shape))),
            storage_id=None,
        )
    mapping = as_mapping(top) or {}
    scalars = {
        k: n
        for k, n in ((k, _plain_number(v)) for k, v in mapping.items() if isinstance(k, str))
        if n is not None
    }
    meta = WeightsMeta("pickle", scalars, found.path, unsupported, list(found.others))
    return entries, meta


def key_path(keys: tuple[str, ...]) -> str:
    """A nesting path as Python subscripts: ``['app']['model']`` (``the top level`` for ())."""
    return "".join(f"[{k!r}]" for k in keys) or "the top level"


def _is_optimizer_state(top: Any) -> bool:
    """Whether an unpickled file without weights is an optimizer's state: a torch
    optimizer state dict (``state`` + ``param_groups``) or DeepSpeed's ZeRO optimizer file
    (``optimizer_state_dict``), bare or under ``optimizer``."""
    mapping = as_mapping(top) or {}
    for candidate in (mapping, as_mapping(mapping.get("optimizer")) or {}):
        if "optimizer_state_dict" in candidate:
            return True
        if "state" in candidate and "param_groups" in candidate:
            return True
    return False


def _check_deepspeed(
    path: Path, top: Any, tensors: dict[str, LazyTensor], state_path: tuple[str, ...]
) -> None:
    """Refuse a DeepSpeed ``mp_rank_XX_model_states.pt`` whose ``module`` is not the whole
    model: ZeRO-3 partitions (empty placeholders; the weights are spread over the
    optimizer files) or one tensor-parallel slice."""
    mapping = as_mapping(top) or {}
    if state_path != ("module",) or "ds_version" not in mapping:
        return
    floats = [t for t in tensors.values() if t.dtype.is_floating_point]
    if floats and all(t.numel == 0 for t in floats):
        raise checkpoint_error(
            "unreadable",
            f"{path}: a DeepSpeed ZeRO-3 checkpoint: its module holds only empty partitioned "
            f"placeholders; gather the weights with DeepSpeed's zero_to_fp32.py (in "
            f"{path.parent.parent}) and analyse what it writes",
        )
    mp = _plain_number(mapping.get("mp_world_size"))
    if mp is not None and mp > 1:
        raise checkpoint_error(
            "unreadable",
            f"{path}: one tensor-parallel slice of a DeepSpeed checkpoint (mp_world_size "
            f"{int(mp)}); merge the slices into one state dict and analyse that",
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
    except CheckpointError:
        raise
    except OSError as exc:
        raise _os_error(path, exc) from None
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, NotImplementedError) as exc:
        raise checkpoint_error(
            "corrupt", f"{path}: broken zip archive ({exc}); the file is corrupt or truncated"
        ) from None
    # Records are read by us, not by zipfile: bounded, and checked against their CRC-32.
    archive = _ZipArchive(path, file, infos)
    data = archive.read_record(archive.infos[pkl])
    byteorder = (
        bytes(archive.read_record(archive.infos[prefix + "byteorder"])).decode("ascii", "replace")
        if prefix + "byteorder" in archive.infos
        else "little"
    )
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
        archive.check_declared(info)

    def record(storage: StorageRef) -> zipfile.ZipInfo:
        """The zip record holding a storage."""
        return by_key[storage.root_key or storage.key]

    swap = byteorder != sys.byteorder
    return _torch_meta(
        path,
        top,
        "torch",
        lambda tensors: _torch_entries(
            path,
            file,
            tensors,
            lambda storage, key: archive.locate(record(storage), key),
            swap,
            id_prefix,
            lambda storage, key, data, at: archive.verify(record(storage), key, data, at),
        ),
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
        if not isinstance(root_key, str) or not _count(numel):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        root = storages.setdefault(
            root_key, StorageRef(root_key, dtype, numel * dtype.itemsize, str(location))
        )
        if root.nbytes != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {root_key} is declared with two sizes")
        if view is None:
            return root
        if not isinstance(view, tuple) or len(view) != 3:
            raise pickle.UnpicklingError(f"malformed storage view {view!r}")
        view_key, offset, size = view
        if not isinstance(view_key, str) or not _count(offset) or not _count(size):
            raise pickle.UnpicklingError(f"malformed storage view {view!r}")
        if (offset + size) * dtype.itemsize > root.nbytes:
            raise pickle.UnpicklingError(
                f"storage view {view_key} (elements {offset}..{offset + size}) lies outside "
                f"storage {root_key} ({numel} elements)"
            )
        return StorageRef(
            view_key,
            dtype,
            size * dtype.itemsize,
            str(location),
            byte_base=offset * dtype.itemsize,
            root_key=root_key,
        )

    try:
        with io.BufferedReader(_open_binary(path)) as fh:
            magic = _parse_pickle(fh, path, None)
            if (
                type(magic) is not int or magic != _LEGACY_MAGIC
            ):  # a numpy array compares by element
                arrays = _numpy_meta(path, file, magic)  # pickle.dump of numpy arrays
                if arrays is not None:
                    return arrays
                what = type(magic).__name__
                raise checkpoint_error(
                    "not-a-checkpoint",
                    f"{path}: a plain pickle of a {what}, not a PyTorch checkpoint; move it out of the folder",
                    content="plain-pickle",
                )
            protocol = _parse_pickle(fh, path, None)
            if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
                raise checkpoint_error(
                    "corrupt", f"{path}: unknown torch.save protocol {protocol!r}"
                )
            sys_info = _parse_pickle(fh, path, None)
            endian = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
            little = not (type(endian) is bool and not endian)  # bool() of an array raises
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


def _count(value: Any) -> bool:
    """Whether a pickled value is a non-negative int (an element count or offset)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _open_torch(
    path: Path, file: _RandomAccessFile, id_prefix: tuple
) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Parse a PyTorch file of either serialization format."""
    head = file.read(4, 0)
    if head.startswith(b"PK"):
        return _open_torch_zip(path, file, id_prefix)
    if not head:
        raise checkpoint_error("corrupt", f"{path}: empty file")
    return _open_torch_legacy(path, file, id_prefix)  # a tar never gets here (sniff_format)


# ----------------------------------------------------------------- safetensors


# Dtype names the official reader knows (its error lists them), with their size in bits;
# those torch cannot represent (sub-byte floats) are refused after validation.
_SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
    "I64": 64, "U64": 64,
}  # fmt: skip
_TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_MINUS_ZERO = re.compile(rb"-0(?![0-9.eE])")  # the integer literal -0 (serde: a float)


class _JsonObject(dict):
    """A parsed JSON object that remembers the keys it held more than once (the last wins)."""

    __slots__ = ("repeated",)


class _HeaderRefused(Exception):
    """Raised inside the JSON parser to stop it; carries the one-line reason."""


def _safetensors_error(path: Path, reason: str) -> CheckpointError:
    """The one-line error for a safetensors file the official library would refuse too."""
    return checkpoint_error(
        "corrupt", f"{path}: {reason}; the file is corrupt, re-save or re-download it"
    )


def _too_many_tensors(path: Path) -> CheckpointError:
    """The error naming SAFETENSORS_MAX_TENSORS."""
    return checkpoint_error(
        "corrupt",
        f"{path}: its safetensors header declares more than {SAFETENSORS_MAX_TENSORS} tensors "
        "(limit SAFETENSORS_MAX_TENSORS); refused unread",
    )


def _count_in_file(file: _RandomAccessFile, start: int, length: int, needle: bytes) -> int:
    """Occurrences of `needle` in bytes [start, start + length), read in bounded chunks."""
    keep = len(needle) - 1  # a tail this short holds no whole match: carried to the next chunk
    buf = bytearray(keep + min(_READ_CHUNK, length))
    view = memoryview(buf)
    count, done, carried = 0, 0, 0
    while done < length:
        got = file.read_into(
            view[carried : carried + min(_READ_CHUNK, length - done)], start + done
        )
        if not got:
            break
        done += got
        end = carried + got
        count += buf.count(needle, 0, end)
        carried = min(keep, end)
        buf[:carried] = buf[end - carried : end]
    return count


def _parse_safetensors_json(path: Path, raw: bytes) -> dict:
    """The header as a JSON object, parsed as strictly as serde_json parses it."""
    objects = 0

    def make_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
        nonlocal objects
        objects += 1
        if objects > SAFETENSORS_MAX_TENSORS + 2:  # + the root and __metadata__
            raise _HeaderRefused("too many tensors")
        obj = _JsonObject(pairs)
        obj.repeated = set()
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _value in pairs:
                (obj.repeated if key in seen else seen).add(key)
        return obj

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _HeaderRefused(f"number {text} out of range")
        return value

    def no_constant(text: str) -> Any:
        raise _HeaderRefused(f"{text} is not JSON")

    def integer(text: str) -> int | float:
        # serde_json reads "-0" as the float -0.0, which no size or offset may be
        return -0.0 if text == "-0" else int(text)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _safetensors_error(
            path, f"its safetensors header is not UTF-8 ({exc.reason})"
        ) from None
    collecting = gc.isenabled()
    gc.disable()  # the parse only allocates; collections while it runs would double its time
    try:
        header = json.loads(
            text,
            object_pairs_hook=make_object,
            parse_float=finite_float,
            parse_int=integer if _MINUS_ZERO.search(raw) else None,
            parse_constant=no_constant,
        )
    except _HeaderRefused as exc:
        if objects > SAFETENSORS_MAX_TENSORS + 2:
            raise _too_many_tensors(path) from None
        raise _safetensors_error(path, f"unreadable safetensors header ({exc})") from None
    except RecursionError:
        raise _safetensors_error(
            path, f"its safetensors header nests deeper than {SAFETENSORS_MAX_JSON_DEPTH} levels"
        ) from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise _safetensors_error(path, f"unreadable safetensors header ({exc})") from None
    finally:
        if collecting:
            gc.enable()
    if not isinstance(header, _JsonObject):
        raise _safetensors_error(path, "its safetensors header is not a JSON object")
    if _LONE_SURROGATE_ESCAPE.search(raw) and not _json_is_utf8(header):
        raise _safetensors_error(path, "its safetensors header escapes a lone UTF-16 surrogate")
    return header


def _json_is_utf8(value: Any) -> bool:
    """Whether every string in a parsed JSON value can be encoded as UTF-8 (no lone surrogates)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _json_depth_ok(value: Any, depth: int) -> bool:
    """Whether `value`, found `depth` levels deep, nests no deeper than SAFETENSORS_MAX_JSON_DEPTH."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level + 1 > SAFETENSORS_MAX_JSON_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return True


def _is_u64(value: Any) -> bool:
    """Whether a parsed JSON value is what serde reads as a usize (u64)."""
    return type(value) is int and 0 <= value < _U64_LIMIT


def _u64_list(value: Any) -> bool:
    """Whether a parsed JSON value is a list of usize values."""
    if type(value) is not list:
        return False
    for item in value:
        if type(item) is not int or not 0 <= item < _U64_LIMIT:
            return False
    return True


def _safetensors_tensor(path: Path, key: str, spec: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype code, shape, begin, end) of one header entry, type-checked like serde does."""
    if not isinstance(spec, _JsonObject):
        raise _safetensors_error(path, f"safetensors entry {key!r} is not a tensor description")
    if spec.repeated:
        repeated = [f for f in _TENSOR_FIELDS if f in spec.repeated]
        if repeated:
            raise _safetensors_error(
                path, f"safetensors entry {key!r} repeats its field {repeated[0]!r}"
            )
    try:
        dtype_code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    except KeyError as exc:
        raise _safetensors_error(
            path, f"safetensors entry {key!r} has no {exc.args[0]!r}"
        ) from None
    if not isinstance(dtype_code, str) or dtype_code not in _SAFETENSORS_DTYPE_BITS:
        raise _safetensors_error(path, f"tensor {key!r} has an unknown dtype {dtype_code!r}")
    if not _u64_list(shape):
        raise _safetensors_error(path, f"tensor {key!r} has a malformed shape {shape!r}")
    if not _u64_list(offsets) or len(offsets) != 2:
        raise _safetensors_error(path, f"tensor {key!r} has malformed data_offsets {offsets!r}")
    if len(spec) != len(_TENSOR_FIELDS):  # unknown fields are ignored, but not their depth
        extras = [v for f, v in spec.items() if f not in _TENSOR_FIELDS]
        if not all(_json_depth_ok(v, 2) for v in extras):
            raise _safetensors_error(
                path,
                f"its safetensors header nests deeper than {SAFETENSORS_MAX_JSON_DEPTH} levels",
            )
    return dtype_code, tuple(shape), offsets[0], offsets[1]


def _safetensors_nbytes(shape: tuple[int, ...], bits: int) -> int | None:
    """Byte length of a tensor, or None where the official reader overflows (u64)."""
    numel = 1
    for size in shape:  # overflow is checked at each step, left to right, as it does
        numel *= size
        if numel >= _U64_LIMIT:
            return None
    total_bits = numel * bits
    if total_bits >= _U64_LIMIT:
        return None
    return total_bits // 8


def _open_safetensors(path: Path, file: _RandomAccessFile) -> tuple[dict[str, _Entry], WeightsMeta]:
    """Parse a safetensors header (8-byte little-endian length, then JSON) and validate it
    as the official library does: tensors sorted by offset must tile the data exactly."""
    if file.size < 8:
        raise checkpoint_error(
            "corrupt", f"{path}: too short for a safetensors file ({file.size} bytes)"
        )
    (n,) = struct.unpack("<Q", file.read(8, 0))
    if n > SAFETENSORS_MAX_HEADER_BYTES:
        raise checkpoint_error(
            "corrupt",
            f"{path}: its safetensors header of {n} bytes exceeds the {SAFETENSORS_MAX_HEADER_BYTES}"
            "-byte limit (SAFETENSORS_MAX_HEADER_BYTES, as in the official library); refused unread",
        )
    if n > file.size - 8:
        raise checkpoint_error(
            "corrupt",
            f"{path}: safetensors header length {n} exceeds the file; the file is corrupt or truncated",
        )
    # Every tensor entry names "data_offsets": counting them first refuses a header bomb
    # before it is parsed; the parser's own count (escapes cannot hide from it) is exact.
    if _count_in_file(file, 8, n, b'"data_offsets"') > SAFETENSORS_MAX_TENSORS:
        raise _too_many_tensors(path)
    header = _parse_safetensors_json(path, file.read(n, 8))
    if "__metadata__" in header.repeated:
        raise _safetensors_error(path, "its safetensors header repeats __metadata__")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise _safetensors_error(path, "its safetensors __metadata__ is not a map of strings")
    if len(header) > SAFETENSORS_MAX_TENSORS:
        raise _too_many_tensors(path)
    specs = {key: _safetensors_tensor(path, key, spec) for key, spec in header.items()}
    # The official rule: sorted by (begin, end), each tensor starts where the previous one
    # ended (no overlap, no gap), holds exactly numel * itemsize bytes, and the last one
    # ends at the end of the file.
    data_start, covered = 8 + n, 0
    for key, (code, shape, begin, end) in sorted(specs.items(), key=lambda kv: kv[1][2:]):
        if begin != covered or end < begin:
            raise _safetensors_error(
                path,
                f"tensor {key!r} has data_offsets [{begin}, {end}], which overlap another "
                f"tensor or leave a gap (expected to start at {covered})",
            )
        nbytes = _safetensors_nbytes(shape, _SAFETENSORS_DTYPE_BITS[code])
        if nbytes is None:
            raise _safetensors_error(path, f"tensor {key!r} has a shape too large to address")
        if end - begin != nbytes:
            raise _safetensors_error(
                path,
                f"tensor {key!r} spans {end - begin} bytes but its shape and dtype need {nbytes}",
            )
        covered = end
    if data_start + covered > file.size:
        raise checkpoint_error(
            "corrupt",
            f"{path}: truncated: its tensors end at byte {data_start + covered} but the file has "
            f"{file.size}; re-download or re-save it",
        )
    if data_start + covered < file.size:
        raise _safetensors_error(
            path, f"{file.size - data_start - covered} bytes follow its last tensor"
        )
    entries: dict[str, _Entry] = {}
    for key, (code, shape, begin, end) in specs.items():
        dtype = _SAFETENSORS_DTYPES.get(code)
        if dtype is None:
            raise checkpoint_error(
                "corrupt",
                f"{path}: tensor {key!r} has dtype {code}, which this torch cannot represent",
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
    for k, v in (meta or {}).items():
        number = _parse_number(v)
        if number is not None:
            scalars[k] = number
    return entries, WeightsMeta(format="safetensors", scalars=scalars)


def _parse_number(value: Any) -> float | None:
    """A float from a number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = as_float(value)
        return number if math.isfinite(number) else None
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

    The rule for ``weight_map`` entries (others are refused with CheckpointError, kind
    "unsafe-index"): each is a plain relative name (``/``-separated; not absolute, no
    ``..``, no backslash or NUL), joined lexically to the folder the index lies in. A
    symlink along that name (a sub-folder or the shard itself) may not lead out of that
    folder (as resolved), with one exception, the Hugging Face cache layout: a shard in
    ``<cache>/models--<org>--<name>/snapshots/<revision>/…`` (also ``datasets--``,
    ``spaces--``) may link to a file directly in the same repo's ``blobs/`` folder, when
    neither ``blobs/`` nor any folder from ``snapshots/`` down is itself a symlink.
    """
    try:
        text = read_regular_text(index)
    except OSError as exc:
        raise _os_error(index, exc) from None
    except UnicodeDecodeError as exc:
        raise checkpoint_error("corrupt", f"{index}: not valid JSON ({exc})") from None
    try:
        doc = loads_json(text)
    except ValueError as exc:
        raise checkpoint_error("corrupt", f"{index}: not valid JSON ({exc})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise checkpoint_error(
            "not-a-checkpoint", f"{index}: has no weight_map; not a sharded checkpoint index"
        )
    folder = index.parent
    shards: dict[str, Path] = {}
    key_to_shard: dict[str, Path] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise checkpoint_error(
                "corrupt", f"{index}: weight_map entry for {key!r} is not a file name"
            )
        if name not in shards:
            shards[name] = _shard_path(index, folder, name)
        key_to_shard[key] = shards[name]
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    scalars = {k: v for k, v in ((k, _parse_number(v)) for k, v in meta.items()) if v is not None}
    return list(shards.values()), key_to_shard, scalars


_HF_REPO_FOLDER = re.compile(r"(models|datasets|spaces)--.+")


def _shard_path(index: Path, folder: Path, name: str) -> Path:
    """The shard a weight_map entry names, or an "unsafe-index" error (rule in `read_index`)."""

    def refuse(why: str) -> CheckpointError:
        return checkpoint_error(
            "unsafe-index",
            f"{index}: refused: weight_map points outside its folder ({name!r}: {why}); "
            "keep shards beside the index",
        )

    if "\\" in name or "\0" in name:
        raise refuse("a backslash or NUL is not a plain file name")
    relative = PurePosixPath(name)
    if relative.is_absolute():
        raise refuse("an absolute path")
    parts = [part for part in relative.parts if part != "."]
    if ".." in parts:
        raise refuse("'..' leaves the folder")
    if not parts:
        raise refuse("not a file name")
    target = folder.joinpath(*parts)
    steps = [folder.joinpath(*parts[: i + 1]) for i in range(len(parts))]
    try:
        linked = any(step.is_symlink() for step in steps)
    except OSError as exc:  # a name too long for the file system
        raise refuse(f"not a usable file name ({exc.strerror or exc})") from None
    if not linked:
        return target  # lexically inside, and no link can lead anywhere else
    resolved = resolve_or_none(target)
    if resolved is None:
        raise refuse("a symlink loop")
    if _is_hf_cache_link(target, steps):
        return target
    if resolved.is_relative_to(folder.resolve()):
        return target
    raise refuse("a symlink leads out of the folder")


def resolve_or_none(path: Path) -> Path | None:
    """`path.resolve()`, or None for a symlink loop (pathlib raises RuntimeError there)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return None


def _is_hf_cache_link(target: Path, steps: list[Path]) -> bool:
    """Whether `target` is a Hugging Face cache snapshot file linking into its repo's blobs/:
    ``<repo>/snapshots/<rev>/…/file`` → ``<repo>/blobs/<hash>`` (``<repo>`` =
    ``models--org--name``), with no symlinked folder from ``snapshots/`` down."""
    if any(step.is_symlink() for step in steps[:-1]):
        return False
    lexical = Path(os.path.abspath(target))
    for snapshots in lexical.parents:
        if snapshots.name == "snapshots" and _HF_REPO_FOLDER.fullmatch(snapshots.parent.name):
            break
    else:
        return False
    inside = lexical.relative_to(snapshots).parts  # (<rev>, …, file)
    if len(inside) < 2:
        return False
    folders = [snapshots.joinpath(*inside[:i]) for i in range(len(inside))]
    if any(f.is_symlink() for f in folders):
        return False
    blobs = snapshots.parent / "blobs"
    if blobs.is_symlink() or not blobs.is_dir():
        return False
    return target.resolve().parent == blobs.resolve()


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


# Suffixes that do not say "torch" by themselves: a sentencepiece tokenizer.model, a
# pickle of settings or a tar of images share them with real checkpoints.
_AMBIGUOUS_SUFFIXES = (".tar", ".pkl", ".model")
_EXPLICIT_TORCH = (".pth.tar", ".pt.tar")
# torch.save's tar format (before PyTorch 1.0's zip and legacy formats) holds these members.
_TORCH_TAR_MEMBERS = {"sys_info", "pickle", "storages", "tensors"}
_TAR_MEMBERS_LISTED = 64  # tar members looked at to say what a tar holds
_MAGIC_NAMES = (
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ", "xz-compressed data"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF", "an HDF5 file"),
)


def sniff_format(path: Path, head: bytes, size: int, tar_magic: bytes) -> str:
    """The format a weight file's first bytes show, whatever its suffix.

    head: its first 9 bytes (or fewer); size: its size in bytes; tar_magic: its 5 bytes at
    offset 257. Returns "safetensors" (8-byte little-endian header length that fits the
    file, then ``{``; also any ``.safetensors`` file, so that its errors name that
    format), "zip" (torch >= 1.6 ``torch.save``), "pickle" (a PROTO opcode, protocol 2-5:
    legacy ``torch.save`` or a plain ``pickle.dump``), "tar" (ustar magic) or "unknown".
    """
    if path.name.endswith(".safetensors"):
        return "safetensors"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8:
            return "safetensors"
    if head.startswith(b"PK"):
        return "zip"
    if len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= 5:
        return "pickle"
    if tar_magic == b"ustar":
        return "tar"
    return "unknown"


def file_format(path: Path) -> str:
    """`sniff_format` of the file at `path` (opened as a regular file only); raises
    CheckpointError when it cannot be read."""
    file = _RandomAccessFile(path)
    try:
        return sniff_format(path, file.read(9, 0), file.size, file.read(5, 257))
    finally:
        file.close()


def _ambiguous(path: Path) -> bool:
    """Whether a file's suffix is shared with files that are not weights (.tar, .pkl, .model)."""
    name = path.name
    return name.endswith(_AMBIGUOUS_SUFFIXES) and not name.endswith(_EXPLICIT_TORCH)


def _describe_bytes(head: bytes) -> str:
    """What a file's first bytes say it is, in a few words (for a skip note)."""
    for magic, what in _MAGIC_NAMES:
        if head.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    shown = " ".join(f"{b:02x}" for b in head[:4])
    return f"binary data of another kind (its first bytes are {shown or 'none'})"


def _tar_error(path: Path) -> CheckpointError:
    """The error for a tar archive: torch's pre-1.0 tar checkpoint (not read) or a tar of
    other files (not a checkpoint, skipped in a folder)."""
    names: list[str] = []
    try:
        with (
            io.BufferedReader(_open_binary(path)) as fh,
            tarfile.open(fileobj=fh, mode="r:") as tar,
        ):
            while len(names) < _TAR_MEMBERS_LISTED and (member := tar.next()) is not None:
                names.append(member.name)
    except OSError as exc:
        raise _os_error(path, exc) from None
    except (tarfile.TarError, EOFError, ValueError, UnicodeDecodeError) as exc:
        return checkpoint_error(
            "corrupt", f"{path}: a broken tar archive ({exc}); the file is corrupt or truncated"
        )
    if _TORCH_TAR_MEMBERS <= set(names):
        return checkpoint_error(
            "unreadable",
            f"{path}: a checkpoint in the tar format of PyTorch before 1.0, which is not read; "
            "re-save it with torch.save from a current torch",
        )
    first = f", e.g. {one_line(names[0])!r}" if names else ""
    return checkpoint_error(
        "not-a-checkpoint",
        f"{path}: a tar archive of other files ({len(names)}"
        f"{'+' if len(names) == _TAR_MEMBERS_LISTED else ''} members{first}), not PyTorch "
        "weights; skipped",
        content="tar-archive",
    )


def _open_single(
    path: Path, id_prefix: tuple = ()
) -> tuple[dict[str, _Entry], WeightsMeta, list[_RandomAccessFile]]:
    """Open one weight file, its format read from its first bytes (`sniff_format`)."""
    file = _RandomAccessFile(path)
    try:
        head = file.read(9, 0)
        fmt = sniff_format(path, head, file.size, file.read(5, 257))
        if fmt == "safetensors":
            entries, meta = _open_safetensors(path, file)
        elif fmt == "tar":
            raise _tar_error(path)
        elif fmt == "unknown" and head and _ambiguous(path):
            # a .model/.pkl/.tar holding none of the formats (a sentencepiece model, ...)
            raise checkpoint_error(
                "not-a-checkpoint",
                f"{path}: holds {_describe_bytes(head)}, not PyTorch or safetensors weights; "
                "skipped",
                content="other-content",
            )
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
