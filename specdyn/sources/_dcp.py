"""torch.distributed.checkpoint folders (``.metadata`` + ``__R_N.distcp``, as FSDP2 and
torchtitan save them), read one tensor at a time through torch's own `FileSystemReader`.

torch's reader unpickles ``.metadata`` with plain ``pickle.load``, which would run any code
the file names. Here the metadata is read by the restricted unpickler (`restricted_load`):
its dataclasses come back as inert stubs, which are checked field by field and rebuilt as
torch's own `Metadata` objects (file names must be plain names inside the folder, offsets
inside the files, chunks inside their tensors). torch's reader is then given that metadata
(its ``read_metadata`` is overridden) and reads tensor data as it always does, each item a
``torch.save`` record read with ``torch.load(weights_only=True)``. Non-tensor entries
(``BytesStorageMetadata``: pickled Python objects) are never read.

Model weights: the entries under a top-level ``model`` key (``{"model": ..., "optimizer":
...}`` saved nested; the prefix is removed), else every tensor outside the usual training
state roots (``optimizer``, ``optim``, ``lr_scheduler``, ``dataloader``, ``train_state``,
…), torchtitan's flattened layout.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafePickleError
from ..types import TensorInfo
from ._formats import open_regular, resolve_or_none
from ._unpickle import Stub, restricted_load

__all__ = ["DCP_METADATA", "is_dcp_folder", "open_dcp", "DcpContents"]

DCP_METADATA = ".metadata"
_DCP_SUFFIX = ".distcp"
_METADATA_MAX_BYTES = 256 * 2**20  # a metadata pickle is kilobytes per thousand tensors
# Top-level keys of a DCP state dict that hold training state, not the model.
_STATE_ROOTS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optim",
        "optimizer_state",
        "lr_scheduler",
        "lr_schedulers",
        "scheduler",
        "schedulers",
        "dataloader",
        "data_loader",
        "train_state",
        "trainer_state",
        "rng",
        "rng_state",
        "rng_states",
        "scaler",
        "grad_scaler",
    }
)
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_STORAGE_INFO = "torch.distributed.checkpoint.filesystem._StorageInfo"


def is_dcp_folder(names: Iterable[str]) -> bool:
    """Whether a folder's file names are a torch.distributed.checkpoint (``.metadata`` and
    at least one ``*.distcp``)."""
    present = set(names)
    return DCP_METADATA in present and any(n.endswith(_DCP_SUFFIX) for n in present)


def _error(kind: str, message: str) -> CheckpointError:
    """A CheckpointError tagged with its Note kind (as `checkpoint_error` does)."""
    err = UnsafePickleError(message) if kind == "unsafe-pickle" else CheckpointError(message)
    err.kind = kind  # type: ignore[attr-defined]
    return err


def _safe_get_layout(name: Any) -> torch.layout:
    """torch.serialization._get_layout for the metadata pickle: a layout by its name only."""
    for value in vars(torch).values():
        if isinstance(value, torch.layout) and str(value) == name:
            return value
    raise pickle.UnpicklingError("unknown tensor layout")


_OVERRIDES = {("torch.serialization", "_get_layout"): _safe_get_layout}


# ----------------------------------------------------------------- metadata, checked


def _state(obj: Any, name: str, where: str) -> dict:
    """The field dict of a stubbed DCP dataclass `name`, or a corrupt-metadata error."""
    if not isinstance(obj, Stub) or not obj.stub_global.endswith("." + name):
        got = obj.stub_global if isinstance(obj, Stub) else type(obj).__name__
        raise _BadMetadata(f"{where} is a {got}, not a {name}")
    state = obj.stub_state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (dict, slots) states of slotted classes
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise _BadMetadata(f"{where} has a malformed state")
    return state


class _BadMetadata(Exception):
    """Raised while checking the metadata; carries the one-line reason."""


def _size(value: Any, where: str) -> torch.Size:
    """A torch.Size of non-negative ints."""
    if not isinstance(value, (tuple, list)) or not all(
        type(v) is int and 0 <= v < 2**63 for v in value
    ):
        raise _BadMetadata(f"{where} is not a tensor size")
    return torch.Size(value)


def _tensor_md(fqn: str, raw: Any):
    """A checked TensorStorageMetadata from its stub."""
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        TensorProperties,
        TensorStorageMetadata,
    )

    state = _state(raw, "TensorStorageMetadata", f"entry {fqn!r}")
    props = state.get("properties")
    pstate = props.stub_state if isinstance(props, Stub) else None
    dtype = pstate[0] if isinstance(pstate, tuple) and pstate else None
    if isinstance(pstate, dict):
        dtype = pstate.get("dtype")
    if not isinstance(dtype, torch.dtype):
        raise _BadMetadata(f"entry {fqn!r} has no tensor dtype")
    size = _size(state.get("size"), f"the size of {fqn!r}")
    chunks = []
    for chunk in state.get("chunks") or []:
        cstate = _state(chunk, "ChunkStorageMetadata", f"a chunk of {fqn!r}")
        offsets = _size(cstate.get("offsets"), f"a chunk offset of {fqn!r}")
        sizes = _size(cstate.get("sizes"), f"a chunk size of {fqn!r}")
        if len(offsets) != len(size) or len(sizes) != len(size):
            raise _BadMetadata(f"a chunk of {fqn!r} has another number of dimensions")
        if any(o + s > d for o, s, d in zip(offsets, sizes, size, strict=True)):
            raise _BadMetadata(f"a chunk of {fqn!r} lies outside its tensor")
        chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=sizes))
    if not chunks and math.prod(size):
        raise _BadMetadata(f"entry {fqn!r} has no stored chunk")
    return TensorStorageMetadata(properties=TensorProperties(dtype=dtype), size=size, chunks=chunks)


def _storage_entry(folder: Path, index: Any, info: Any, sizes: dict[str, int]):
    """A checked (MetadataIndex, _StorageInfo) pair: a plain file name in the folder, and
    a byte range inside that file."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex

    istate = _state(index, "MetadataIndex", "a storage key")
    fqn, offset, position = istate.get("fqn"), istate.get("offset"), istate.get("index")
    if not isinstance(fqn, str) or not (position is None or type(position) is int):
        raise _BadMetadata("a storage key is malformed")
    if offset is not None:
        offset = _size(offset, f"the storage offset of {fqn!r}")
    sstate = _state(info, _STORAGE_INFO.rsplit(".", 1)[1], f"the storage of {fqn!r}")
    name, start, length = (sstate.get(k) for k in ("relative_path", "offset", "length"))
    transforms = sstate.get("transform_descriptors")
    if not isinstance(name, str) or type(start) is not int or type(length) is not int:
        raise _BadMetadata(f"the storage of {fqn!r} is malformed")
    if transforms is not None and not (
        isinstance(transforms, list) and all(isinstance(t, str) for t in transforms)
    ):
        raise _BadMetadata(f"the storage transforms of {fqn!r} are malformed")
    if name not in sizes:
        sizes[name] = _data_file_size(folder, name)
    if start < 0 or length < 0 or start + length > sizes[name]:
        raise _BadMetadata(f"the data of {fqn!r} lies outside {name}")
    key = MetadataIndex(fqn=fqn, offset=offset, index=position)
    return key, _StorageInfo(
        relative_path=name, offset=start, length=length, transform_descriptors=transforms
    )


class _Unsafe(Exception):
    """A data file name that leads outside the checkpoint folder."""


def _data_file_size(folder: Path, name: str) -> int:
    """Size of data file `name`: a plain file name directly in `folder` (no path, and no
    symlink leading out of it), else _Unsafe."""
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise _Unsafe(f"{name!r} is not a plain file name")
    path = folder / name
    if path.is_symlink():
        resolved = resolve_or_none(path)
        if resolved is None:
            raise _BadMetadata(f"its data file {name} is a symlink loop")
        if not resolved.is_relative_to(folder.resolve()):
            raise _Unsafe(f"{name} is a symlink leading out of the folder")
    try:
        return os.stat(path).st_size
    except OSError:
        raise _BadMetadata(f"its data file {name} is missing") from None


def _read_metadata(folder: Path):
    """torch's `Metadata` for a DCP folder, unpickled safely and checked."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    path = folder / DCP_METADATA
    try:
        size = os.stat(path).st_size
        if size > _METADATA_MAX_BYTES:
            raise _error(
                "corrupt", f"{path}: {size} bytes, more than a checkpoint's metadata can be"
            )
        with open_regular(path) as fh:
            raw = restricted_load(io.BytesIO(fh.readall()), str(path), None, _OVERRIDES)
    except UnsafePickleError as exc:
        raise _error("unsafe-pickle", str(exc)) from None
    except CheckpointError:
        raise
    except OSError as exc:
        raise _error("unreadable", f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, RecursionError, MemoryError, EOFError) as exc:
        raise _error(
            "corrupt", f"{path}: cannot be unpickled ({exc}); the checkpoint is corrupt"
        ) from None
    try:
        state = _state(raw, "Metadata", "the metadata")
        entries = state.get("state_dict_metadata")
        if not isinstance(entries, dict):
            raise _BadMetadata("it lists no state dict entries")
        md: dict[str, Any] = {}
        for fqn, item in entries.items():
            if not isinstance(fqn, str):
                raise _BadMetadata("an entry name is not text")
            bytes_entry = isinstance(item, Stub) and item.stub_global == (
                f"{_METADATA_MODULE}.BytesStorageMetadata"
            )
            md[fqn] = BytesStorageMetadata() if bytes_entry else _tensor_md(fqn, item)
        storage: dict[Any, Any] = {}
        sizes: dict[str, int] = {}
        for index, info in (state.get("storage_data") or {}).items():
            key, value = _storage_entry(folder, index, info, sizes)
            storage[key] = value
        planner = state.get("planner_data")
        if not isinstance(planner, dict):
            planner = None
    except _Unsafe as exc:
        raise _error(
            "unsafe-index",
            f"{path}: refused: it points outside its folder ({exc}); keep the .distcp files "
            "beside it",
        ) from None
    except _BadMetadata as exc:
        raise _error("corrupt", f"{path}: {exc}; the checkpoint is corrupt") from None
    return Metadata(state_dict_metadata=md, planner_data=planner, storage_data=storage)


# ----------------------------------------------------------------- which entries are the model


@dataclass
class DcpContents:
    """What a DCP folder holds: `model` maps each model weight's name (``model.`` prefix
    removed) to its flattened key in the checkpoint; `other` lists the top-level roots of
    the training state left out (``optimizer``, ``lr_scheduler``…); `unsupported`: model
    entries that are not tensors (pickled objects, never read)."""

    model: dict[str, str]
    other: list[str]
    unsupported: dict[str, str]


def _path_of(fqn: str, planner: dict | None) -> tuple[str, ...]:
    """The nesting path of a flattened key: from the planner data, else split at the
    first dot."""
    path = planner.get(fqn) if planner else None
    if isinstance(path, tuple) and path and all(isinstance(p, (str, int)) for p in path):
        return tuple(str(p) for p in path)
    head, _, rest = fqn.partition(".")
    return (head, rest) if rest else (head,)


def _contents(metadata) -> DcpContents:
    """Split a DCP checkpoint's entries into model weights and training state."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    planner = metadata.planner_data if isinstance(metadata.planner_data, dict) else None
    paths = {fqn: _path_of(fqn, planner) for fqn in metadata.state_dict_metadata}
    nested = any(p[0] == "model" and len(p) > 1 for p in paths.values())
    model: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    other: set[str] = set()
    for fqn, path in paths.items():
        if nested:
            if path[0] != "model" or len(path) < 2:
                other.add(path[0])
                continue
            name = ".".join(path[1:])
        else:
            if path[0] in _STATE_ROOTS:
                other.add(path[0])
                continue
            name = ".".join(path)
        if isinstance(metadata.state_dict_metadata[fqn], TensorStorageMetadata):
            model[name] = fqn
        else:
            unsupported[name] = "a pickled object (BytesStorageMetadata)"
    return DcpContents(model, sorted(other), unsupported)


# ----------------------------------------------------------------- reading

# torch.distributed.checkpoint is imported only when a DCP folder is read (about 1 s).


class _Entry:
    """One model tensor of a DCP folder, read on demand through torch's reader."""

    def __init__(self, folder: Path, metadata: Any, key: str, fqn: str):
        self.folder, self.metadata, self.key, self.fqn = folder, metadata, key, fqn
        md = metadata.state_dict_metadata[fqn]
        self.shape = tuple(md.size)
        self.dtype = md.properties.dtype

    def info(self) -> TensorInfo:
        """Shape and dtype from the metadata (no data read)."""
        return TensorInfo(self.shape, self.dtype, None)

    def read(self) -> torch.Tensor:
        """The tensor, loaded by torch.distributed.checkpoint into memory allocated here."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import DefaultLoadPlanner

        target = torch.empty(self.shape, dtype=self.dtype)
        if target.numel() == 0:
            return target
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # "assuming the intent is to load in a single process"
                dcp.load(
                    {self.fqn: target},
                    storage_reader=_reader_class()(self.folder, self.metadata),
                    planner=DefaultLoadPlanner(flatten_state_dict=False),
                    no_dist=True,
                )
        except Exception as exc:  # noqa: BLE001 - torch wraps every failure of a bad file
            reason = " ".join(str(exc).split())[:200]
            raise _error(
                "corrupt",
                f"{self.folder}: tensor {self.key!r} cannot be read ({type(exc).__name__}: "
                f"{reason}); the checkpoint is incomplete or corrupt",
            ) from None
        return target


@lru_cache(maxsize=1)
def _reader_class() -> type:
    """torch's FileSystemReader with the safely read metadata in place of pickle.load."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeMetadataReader(FileSystemReader):
        """FileSystemReader whose read_metadata returns metadata checked beforehand."""

        def __init__(self, folder: Path, metadata: Any):
            super().__init__(folder)
            self._checked = metadata

        def read_metadata(self, *args: Any, **kwargs: Any):
            """The checked metadata (torch's own reads it with pickle.load)."""
            if getattr(self._checked, "storage_meta", None) is None:
                self._checked.storage_meta = StorageMeta()
            self._checked.storage_meta.load_id = self.load_id
            return self._checked

    return SafeMetadataReader


def open_dcp(
    folder: Path, scalars: bool = True
) -> tuple[dict[str, _Entry], DcpContents, dict[str, float], list[Path]]:
    """Open a DCP folder: (entries by model weight name, contents, numeric metadata, files).

    Numeric metadata (with `scalars`; it costs one read): ``step`` from torchtitan's
    ``train_state.step`` when it is stored as a 0-d integer tensor. files: ``.metadata`` then the ``*.distcp`` files, sorted. Raises
    CheckpointError (kinds "corrupt", "unsafe-index", "unsafe-pickle", "unreadable",
    "not-a-checkpoint" when no model tensor is found).
    """
    metadata = _read_metadata(folder)
    contents = _contents(metadata)
    if not contents.model:
        roots = ", ".join(contents.other) or "nothing"
        raise _error(
            "not-a-checkpoint",
            f"{folder}: a torch.distributed.checkpoint without model weights (it holds "
            f"{roots}); not a checkpoint",
        )
    entries = {name: _Entry(folder, metadata, name, fqn) for name, fqn in contents.model.items()}
    numbers: dict[str, float] = {}
    step_md = metadata.state_dict_metadata.get("train_state.step")
    if scalars and step_md is not None and len(getattr(step_md, "size", (0,))) == 0:
        dtype = step_md.properties.dtype
        if not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool):
            value = _Entry(folder, metadata, "train_state.step", "train_state.step").read()
            numbers["step"] = float(value.item())
    names = sorted({info.relative_path for info in metadata.storage_data.values()})
    files = [folder / DCP_METADATA] + [folder / n for n in names]
    return entries, contents, numbers, files
