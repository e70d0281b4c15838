"""Write a checkpoint back in its own format with some weight tensors replaced.

Used by `specdyn.prune`: the caller gives a *transform* ``(raw_key, tensor) -> tensor | None``
(None: keep the stored tensor) and this module writes a copy of the checkpoint with the
transformed tensors in place and every other entry kept, but for what would describe the
original weights as if it described the copy (a torch file's optimizer/scheduler state and
numeric metrics at its top level: left out with a note; step and epoch kept; the copy is
marked ``specdyn_pruned``):

- PyTorch files (``.pt .pth .bin .ckpt``): ``torch.load(weights_only=True)`` (memory-mapped
  for the zip format), the tensors replaced where they sit in the nesting, ``torch.save``.
  A file that ``weights_only`` refuses only because of numpy scalars, dtypes or numeric arrays
  (Lightning hyper-parameters from a numpy grid) is loaded with exactly those numpy globals
  allowed; any other refusal writes the state dict alone under the same nesting path (with the
  file's numeric metadata) and returns a Note saying what was dropped. Nothing is ever loaded
  with ``weights_only=False``.
- safetensors: streamed, one tensor in memory at a time; the header (``__metadata__``
  included) is copied byte for byte, since shapes, dtypes and offsets do not change.
- Sharded checkpoints (``*.index.json`` + shards): the same shard files and the same index.
- Hugging Face model folders and Trainer ``checkpoint-N/`` folders: the weights as above plus
  copies of the small side files (config, generation config, tokenizer, trainer state);
  optimizer/scheduler/RNG/training-args files are left out with a Note.

Every file is written to ``<name>.partial`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_output
from ..types import Note
from ._checkpoint import HF_WEIGHT_FILES, Checkpoint, folder_weights, is_trainer_extra
from ._formats import file_format, open_weights, read_index

__all__ = ["Transform", "CheckpointOutput", "plan_output"]

Transform = Callable[[str, torch.Tensor], "torch.Tensor | None"]

# Side files of a model folder worth copying (configuration, tokenizer, trainer state).
_SIDE_SUFFIXES = {".json", ".txt", ".model", ".tiktoken", ".jinja", ".yaml", ".yml", ".md"}
_COPY_CHUNK = 16 * 2**20

# numpy globals a weights-only load may rebuild: scalars, dtypes and numeric arrays only
# build numbers (an object array's items still go through torch's restricted unpickler).
_NUMPY_SAFE_NAMES = (
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)


@dataclass
class CheckpointOutput:
    """Where one checkpoint's pruned copy goes.

    checkpoint: the source; target: the output file (single-file checkpoint) or folder;
    weights: (source weight file, output file) pairs, shards in order; index: (source
    ``*.index.json``, output) or None; copies: side files copied as they are; notes: what is
    left out (Trainer state, unused weight files).
    """

    checkpoint: Checkpoint
    target: Path
    weights: list[tuple[Path, Path]]
    index: tuple[Path, Path] | None = None
    copies: list[tuple[Path, Path]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def outputs(self) -> list[Path]:
        """Every file this output writes."""
        files = [dst for _, dst in self.weights] + [dst for _, dst in self.copies]
        return files + ([self.index[1]] if self.index else [])

    def inputs(self) -> list[Path]:
        """Every input file it reads."""
        files = [src for src, _ in self.weights] + [src for src, _ in self.copies]
        return files + ([self.index[0]] if self.index else [])

    def write(self, transform: Transform) -> list[Note]:
        """Write every output file; returns Notes (dropped entries). Raises CheckpointError."""
        notes = list(self.notes)
        for src, dst in self.weights:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(dst, temp_name=_partial_name(dst)) as tmp:
                if file_format(src) == "safetensors":  # by content, as it was read
                    _write_safetensors(src, tmp, transform)
                else:
                    notes.extend(_write_torch(src, tmp, transform, dst))
        for src, dst in self.copies + ([self.index] if self.index else []):
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(dst, temp_name=_partial_name(dst)) as tmp:
                shutil.copyfile(src, tmp)
        return notes


def plan_output(ckpt: Checkpoint, target: Path) -> CheckpointOutput:
    """The files a pruned copy of `ckpt` at `target` consists of.

    A single weight file goes to the file `target`; a sharded checkpoint (its
    ``*.index.json``) and a model folder go into the folder `target`, under the same
    names. A ``config.json`` beside a single file is copied beside the output (the views
    of a GPT-NeoX or MoE model depend on it).

    Raises CheckpointError for a torch.distributed.checkpoint folder (not written back).
    """
    path = ckpt.path
    if ckpt.format == "torch-dcp":
        raise CheckpointError(
            f"{path}: a torch.distributed.checkpoint folder cannot be written back pruned; "
            "convert it first with torch.distributed.checkpoint.format_utils.dcp_to_torch_save "
            "and prune the file it writes"
        )
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_file())
        chosen = folder_weights(names)
        if chosen is None:  # probe() accepted it, so this is a race with a deletion
            raise CheckpointError(f"{path}: no longer holds {' or '.join(HF_WEIGHT_FILES)}")
        out = CheckpointOutput(ckpt, target, [])
        used = {chosen}
        if chosen.endswith(".index.json"):
            shards, _, _ = read_index(path / chosen)
            out.weights = [(s, target / s.relative_to(path)) for s in shards]
            out.index = (path / chosen, target / chosen)
            used.update(str(s.relative_to(path)) for s in shards)
        else:
            out.weights = [(path / chosen, target / chosen)]
        skipped_extra, skipped_other = [], []
        for name in names:
            if name in used:
                continue
            if is_trainer_extra(name):
                skipped_extra.append(name)
            elif Path(name).suffix in _SIDE_SUFFIXES:
                out.copies.append((path / name, target / name))
            else:
                skipped_other.append(name)
        if skipped_extra:
            out.notes.append(
                Note(
                    "not-copied",
                    f"{path}: training state not copied ({', '.join(skipped_extra)}); "
                    "the pruned model is for evaluation",
                    str(path),
                )
            )
        if skipped_other:
            out.notes.append(
                Note(
                    "not-copied",
                    f"{path}: not copied ({', '.join(skipped_other)}): not the weights read "
                    f"({chosen}) nor a configuration/tokenizer file",
                    str(path),
                )
            )
        return out
    if path.name.endswith(".index.json"):
        shards, _, _ = read_index(path)
        out = CheckpointOutput(ckpt, target, [(s, target / s.name) for s in shards])
        out.index = (path, target / path.name)
        return out
    out = CheckpointOutput(ckpt, target, [(path, target)])
    config = path.parent / "config.json"
    if config.is_file():
        out.copies.append((config, target.parent / "config.json"))
    return out


def _partial_name(dst: Path) -> str:
    """The name `dst` is written under until complete: ``<name>.partial`` (docs/prune.md)."""
    return dst.name + ".partial"


def _checked(key: str, old: torch.Tensor, new: torch.Tensor | None) -> torch.Tensor | None:
    """The transform's result, refused unless it keeps shape and dtype (a bug otherwise)."""
    if new is not None and (new.shape != old.shape or new.dtype != old.dtype):
        raise RuntimeError(
            f"pruning changed {key!r} from {tuple(old.shape)} {old.dtype} to "
            f"{tuple(new.shape)} {new.dtype}"
        )
    return new


# ----------------------------------------------------------------- safetensors


def _write_safetensors(src: Path, dst: Path, transform: Transform) -> None:
    """Copy a safetensors file with transformed tensors, one tensor in memory at a time."""
    reader, _meta = open_weights(src)
    with reader, open(src, "rb") as fin, open(dst, "wb") as fout:
        head = fin.read(8)
        (n,) = struct.unpack("<Q", head)
        header_bytes = fin.read(n)
        header = json.loads(header_bytes)
        fout.write(head + header_bytes)
        spans = sorted(
            (int(spec["data_offsets"][0]), int(spec["data_offsets"][1]), key)
            for key, spec in header.items()
            if key != "__metadata__"
        )
        data_start, position = 8 + n, 0
        for begin, end, key in spans:
            if begin > position:  # bytes between tensors (none in files safetensors writes)
                _copy_range(fin, fout, data_start + position, begin - position)
            if end <= position:  # an overlapping entry: its bytes were written already
                continue
            tensor = reader.get(key)
            new = _checked(key, tensor, transform(key, tensor))
            if new is None or begin < position:
                _copy_range(
                    fin, fout, data_start + max(begin, position), end - max(begin, position)
                )
            else:
                fout.write(new.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
            position = max(position, end)
        fin.seek(0, os.SEEK_END)
        tail = fin.tell() - data_start - position
        if tail > 0:
            _copy_range(fin, fout, data_start + position, tail)


def _copy_range(fin, fout, offset: int, length: int) -> None:
    """Copy `length` bytes from `offset` of fin to the end of fout, in chunks."""
    fin.seek(offset)
    while length > 0:
        chunk = fin.read(min(length, _COPY_CHUNK))
        if not chunk:
            break
        fout.write(chunk)
        length -= len(chunk)


# ----------------------------------------------------------------- PyTorch


def _write_torch(src: Path, dst: Path, transform: Transform, final: Path) -> list[Note]:
    """Copy a torch.save file to `dst` (renamed to `final` later) with transformed weights;
    Notes when entries had to be dropped."""
    reader, meta = open_weights(src)
    with reader:
        keys = reader.keys()
        loaded, refusal = _load_weights_only(src)
        if loaded is not None:
            state = _descend(loaded, meta.state_path)
            if state is not None and all(isinstance(state.get(k), torch.Tensor) for k in keys):
                for key in keys:
                    new = _checked(key, state[key], transform(key, state[key]))
                    if new is not None:
                        state[key] = new
                notes = _drop_stale_entries(loaded, meta.state_path, src, final)
                torch.save(loaded, dst)
                return notes
            refusal = "its weights are not where the reader found them"
        # weights only: read with specdyn's own restricted reader, ties kept by storage
        tensors: dict[str, torch.Tensor] = {}
        by_storage: dict[Any, torch.Tensor] = {}
        for key in keys:
            sid = reader.info(key).storage_id
            if sid is not None and sid in by_storage:
                tensors[key] = by_storage[sid]
                continue
            tensor = reader.get(key)
            new = _checked(key, tensor, transform(key, tensor))
            tensors[key] = tensor if new is None else new
            if sid is not None:
                by_storage[sid] = tensors[key]
    obj: Any = tensors
    for part in reversed(meta.state_path):
        obj = {part: obj}
    kept_scalars = []
    if meta.state_path:
        for name, value in meta.scalars.items():
            if name not in obj and name in _POSITION_KEYS:  # metrics describe the original
                obj[name] = int(value) if float(value).is_integer() else float(value)
                kept_scalars.append(name)
    torch.save(obj, dst)
    where = "/".join(meta.state_path) or "the top level"
    extra = f" and its numbers ({', '.join(kept_scalars)})" if kept_scalars else ""
    return [
        Note(
            "dropped-entries",
            f"{src}: {refusal}; wrote the weights alone under {where}{extra} to {final}; "
            "every other entry (optimizer state, hyper-parameters, …) was dropped",
            str(src),
        )
    ]


# Top-level entries a pruned copy must not carry over as if they described it: the
# optimizer's moments and schedules of the unpruned weights, and the metrics measured on
# them. Where training stood (step, epoch) stays true of the copy.
_TRAINING_STATE_KEYS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_state_dict",
        "optimizer_states",
        "opt",
        "lr_scheduler",
        "lr_schedulers",
        "scheduler",
        "scheduler_state_dict",
        "scaler",
        "grad_scaler",
        "amp",
    }
)
_POSITION_KEYS = frozenset({"step", "global_step", "epoch", "iteration", "iter", "steps"})
PRUNED_MARK = "specdyn_pruned"


def _drop_stale_entries(
    loaded: Any, state_path: tuple[str, ...], src: Path, final: Path
) -> list[Note]:
    """Remove optimizer/scheduler state and numeric metrics from the top level of a pruned
    copy (they describe the original weights), mark the copy, and say what went."""
    if not isinstance(loaded, dict) or not state_path:
        return []  # a bare state dict: nothing but weights
    dropped = []
    for key in list(loaded):
        value = loaded[key]
        is_metric = isinstance(value, (int, float)) and not isinstance(value, bool)
        is_metric = is_metric or (isinstance(value, torch.Tensor) and value.ndim == 0)
        if key == state_path[0] or key in _POSITION_KEYS:
            continue
        if key in _TRAINING_STATE_KEYS or is_metric:
            dropped.append(key)
            del loaded[key]
    loaded[PRUNED_MARK] = {"source": str(src)}
    if not dropped:
        return []
    return [
        Note(
            "pruned-metadata",
            f"{final}: left out {', '.join(dropped)} of {src} (optimizer state and metrics of "
            f"the unpruned weights); step and epoch kept, the copy marked '{PRUNED_MARK}'",
            str(final),
        )
    ]


def _load_weights_only(path: Path) -> tuple[Any | None, str]:
    """``torch.load(weights_only=True)`` (memory-mapped when possible), with numpy scalar,
    dtype and array globals allowed when they are all it lacks; (object, "") or (None, why)."""
    needed: list[str] = []
    try:
        needed = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be listed; just try
        needed = []
    allowed = _numpy_globals()
    unsafe = [g for g in needed if g not in allowed and not g.startswith("numpy.dtypes.")]
    if unsafe:
        return None, f"it needs {', '.join(sorted(unsafe))} to load, which specdyn never unpickles"
    extra = [(allowed[g], g) for g in needed if g in allowed]
    extra += [(_numpy_dtype_class(g), g) for g in needed if g.startswith("numpy.dtypes.")]
    extra = [(obj, name) for obj, name in extra if obj is not None]
    if len(extra) < len(needed):
        return None, "it needs numpy globals this numpy does not have"
    if extra:  # a rebuilt numpy.dtype is an instance of its numpy.dtypes class: allow those too
        extra += _numpy_dtype_classes()
    last_error = ""
    for mmap in (True, False):
        try:
            with torch.serialization.safe_globals(extra):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), ""
        except Exception as exc:  # noqa: BLE001 - any refusal falls back to the weights alone
            last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None, f"torch.load(weights_only=True) refuses it ({last_error[:200]})"


def _numpy_globals() -> dict[str, Any]:
    """The numpy globals of `_NUMPY_SAFE_NAMES` this numpy has, by their pickled name."""
    found = {}
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    multiarray = getattr(core, "multiarray", None)
    for name in _NUMPY_SAFE_NAMES:
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("ndarray", "dtype"):
            found[name] = getattr(np, leaf)
        elif multiarray is not None and hasattr(multiarray, leaf):
            found[name] = getattr(multiarray, leaf)
    return found


def _numpy_dtype_classes() -> list[Any]:
    """Every numeric/bool/text ``numpy.dtypes`` class (not object or void dtypes)."""
    module = getattr(np, "dtypes", None)
    names = [n for n in dir(module) if n.endswith("DType")] if module else []
    return [getattr(module, n) for n in names if n not in ("ObjectDType", "VoidDType")]


def _numpy_dtype_class(name: str) -> Any:
    """``numpy.dtypes.Float64DType`` and the like (numeric dtype classes only), or None."""
    leaf = name.rsplit(".", 1)[-1]
    cls = getattr(getattr(np, "dtypes", None), leaf, None)
    if cls is None or leaf in ("ObjectDType", "VoidDType"):
        return None
    return cls


def _descend(obj: Any, path: tuple[str, ...]) -> dict | None:
    """The dict at key path `path` inside a loaded checkpoint, or None."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj if isinstance(obj, dict) else None
