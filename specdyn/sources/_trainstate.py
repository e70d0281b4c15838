"""The training step recorded in the optimizer / scheduler state saved beside the weights
(Accelerate's ``optimizer.bin`` / ``scheduler.bin``, the Trainer's ``optimizer.pt`` /
``scheduler.pt``), read with the restricted unpickler: no code from the file is run, and
only the pickle and the few bytes of scalar ``step`` tensors are read, never the moments."""

from __future__ import annotations

import io
import math
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ._unpickle import LazyTensor, StorageRef, as_mapping, restricted_load, storage_type_dtype

__all__ = ["StateStep", "state_step", "is_accelerate_auto_name"]

# Accelerate's ProjectConfiguration(automatic_checkpoint_naming=True) folder: a save index.
_AUTO_NAME = re.compile(r"^checkpoint_\d+$")
_RANDOM_STATES = re.compile(r"^random_states_\d+\.pkl$")
_OPTIMIZERS = ("optimizer.bin", "optimizer.pt")
_SCHEDULERS = ("scheduler.bin", "scheduler.pt")
# The pickle of an optimizer state dict is its structure only (the moments are separate
# records): larger than this is not an optimizer state we read for a step.
_MAX_PICKLE = 64 * 2**20
_MAX_SCALAR_BYTES = 64


@dataclass(frozen=True)
class StateStep:
    """A step found in training state: `step` (or None), `origin` (which file and field,
    e.g. "optimizer.bin state step"), `problem` (why a state file could not be read, "")."""

    step: int | None
    origin: str = ""
    problem: str = ""


def is_accelerate_auto_name(folder: Path) -> bool:
    """Whether `folder` is one of Accelerate's automatically named ``checkpoint_N`` save
    folders (its N counts save_state calls; a ``random_states_*.pkl`` beside the weights)."""
    if not _AUTO_NAME.match(folder.name):
        return False
    try:
        return any(_RANDOM_STATES.match(p.name) for p in folder.iterdir())
    except OSError:
        return False


def state_step(folder: Path, *, scheduler: bool) -> StateStep:
    """The step recorded in the optimizer state in `folder` (the largest per-parameter
    ``state[i]["step"]``, int or scalar tensor), else, with `scheduler`, the scheduler
    state's ``last_epoch``; StateStep(None) when neither file is there or holds one.

    The scheduler is asked only where the caller allows it (Accelerate's automatic
    ``checkpoint_N`` folders): stepped once per epoch, or num_processes times per step
    under Accelerate, it counts something else than the training step.
    """
    problems: list[str] = []
    for name in _OPTIMIZERS:
        path = folder / name
        if path.is_file():
            try:
                step = _optimizer_step(_load(path))
            except _Unreadable as exc:
                problems.append(str(exc))
                continue
            if step is not None:
                return StateStep(step, f"{name} state step", "; ".join(problems))
    if scheduler:
        for name in _SCHEDULERS:
            path = folder / name
            if path.is_file():
                try:
                    step = _integral((as_mapping(_load(path)) or {}).get("last_epoch"))
                except _Unreadable as exc:
                    problems.append(str(exc))
                    continue
                if step is not None:
                    return StateStep(step, f"{name} last_epoch", "; ".join(problems))
    return StateStep(None, "", "; ".join(problems))


class _Unreadable(Exception):
    """A state file that cannot be read for its step (the message names it)."""


@dataclass
class _Archive:
    """An open torch.save zip: the record prefix and the byte order of its storages."""

    zf: zipfile.ZipFile
    prefix: str
    byteorder: str


def _load(path: Path) -> Any:
    """The unpickled state of a torch.save zip file; scalar tensors read as numbers."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
            if not pkls:
                raise _Unreadable(f"{path}: not a torch.save zip archive")
            pkl = min(pkls, key=len)
            prefix = pkl[: -len("data.pkl")]
            info = zf.getinfo(pkl)
            if info.file_size > _MAX_PICKLE:
                raise _Unreadable(f"{path}: its pickle is too large to be an optimizer state")
            order = (
                zf.read(prefix + "byteorder").decode("ascii", "replace")
                if prefix + "byteorder" in names
                else "little"
            )
            archive = _Archive(zf, prefix, order)
            with zf.open(info) as fh:
                data = fh.read(_MAX_PICKLE + 1)
            top = restricted_load(io.BytesIO(data), str(path), _persistent)
            return _numbers(top, archive, 0)
    except (CheckpointError, pickle.UnpicklingError, RecursionError, MemoryError) as exc:
        raise _Unreadable(f"{path}: not readable ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, ValueError) as exc:
        raise _Unreadable(f"{path}: not readable ({exc})") from None


def _persistent(pid: Any) -> StorageRef:
    """('storage', storage_type, key, location, numel) → a StorageRef (no data read)."""
    if not isinstance(pid, tuple) or len(pid) != 5:
        raise pickle.UnpicklingError("unexpected persistent id")
    _typename, storage_type, key, location, numel = pid
    if not isinstance(key, str) or not isinstance(numel, int):
        raise pickle.UnpicklingError("unexpected persistent id")
    dtype, _untyped = storage_type_dtype(storage_type)
    return StorageRef(key=key, dtype=dtype, nbytes=numel * dtype.itemsize, location=str(location))


def _numbers(obj: Any, archive: _Archive, depth: int) -> Any:
    """`obj` with every one-element LazyTensor among the optimizer's per-parameter state
    replaced by its value (two levels of dicts below the top: state → param → step)."""
    mapping = as_mapping(obj)
    if mapping is not None and depth < 3:
        return {k: _numbers(v, archive, depth + 1) for k, v in mapping.items()}
    if isinstance(obj, LazyTensor) and obj.numel == 1 and not obj.dtype.is_complex:
        return _scalar(obj, archive)
    return obj


def _scalar(tensor: LazyTensor, archive: _Archive) -> float | None:
    """The value of a one-element tensor, read from its (few-byte) storage record."""
    name = f"{archive.prefix}data/{tensor.storage.key}"
    info = archive.zf.getinfo(name)
    if info.file_size > _MAX_SCALAR_BYTES or info.file_size != tensor.storage.nbytes:
        return None
    raw = bytearray(archive.zf.read(name))
    values = torch.frombuffer(raw, dtype=tensor.dtype) if raw else torch.empty(0)
    if archive.byteorder != sys.byteorder and tensor.dtype.itemsize > 1:
        values = torch.frombuffer(
            bytearray(values.view(torch.uint8).reshape(-1, tensor.dtype.itemsize).flip(1).numpy()),
            dtype=tensor.dtype,
        )
    if not 0 <= tensor.offset < values.numel():
        return None
    return float(values[tensor.offset].item())


def _optimizer_step(top: Any) -> int | None:
    """The largest per-parameter ``step`` of a torch optimizer state dict, or None."""
    state = as_mapping((as_mapping(top) or {}).get("state"))
    steps = []
    for param in (state or {}).values():
        step = _integral((as_mapping(param) or {}).get("step"))
        if step is not None:
            steps.append(step)
    return max(steps) if steps else None


def _integral(value: Any) -> int | None:
    """`value` as a non-negative int if it is a whole finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        return None
    return int(value) if value >= 0 else None
