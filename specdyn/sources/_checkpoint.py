"""One checkpoint: its files, format, step, metadata, fingerprint and weights digest."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..types import Note
from ._dcp import is_dcp_folder, open_dcp
from ._formats import (
    TensorReader,
    WeightsMeta,
    as_float,
    checkpoint_error,
    key_path,
    loads_json,
    open_regular,
    open_weights,
    read_index,
    read_regular_text,
)
from ._stepnames import WEIGHT_SUFFIXES, checkpoint_name, steps_from_name
from ._trainstate import is_accelerate_auto_name, state_step

__all__ = [
    "Checkpoint",
    "Fingerprint",
    "open_checkpoint",
    "probe",
    "assign_ancestor_step",
    "folder_weights",
    "accelerate_models",
    "is_trainer_extra",
    "HF_WEIGHT_FILES",
    "WEIGHT_SUFFIXES",
]

# Weight files of a Hugging Face model folder (transformers, then diffusers' model
# components such as unet/), in the order they are preferred.
HF_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
)
# Files a Trainer, Accelerate's save_state or a training script keeps beside the weights:
# never weights themselves.
_TRAINER_EXTRA = re.compile(
    r"^(optimizer(_\d+)?\.(pt|bin)|scheduler(_\d+)?\.(pt|bin)|scaler\.pt|training_args\.bin"
    r"|rng_state.*\.pth)$"
)
_HASH_CHUNK = 8 * 2**20


def is_trainer_extra(filename: str) -> bool:
    """Whether a file name is Trainer state kept beside the weights (optimizer.pt, …)."""
    return bool(_TRAINER_EXTRA.match(filename))


def folder_weights(names: set[str] | list[str]) -> str | None:
    """The preferred HF weight file name among a folder's file names, or None."""
    present = set(names)
    for name in HF_WEIGHT_FILES:
        if name in present:
            return name
    return None


# Accelerate's save_state names the weights of its second, third… prepared model
# model_1.safetensors, model_2.safetensors (pytorch_model_1.bin… without safetensors).
_ACCELERATE_MODEL = re.compile(r"^(?:model|pytorch_model)(?:_(\d+))?\.(?:safetensors|bin)$")


def _accelerate_model(filename: str) -> str | None:
    """The Accelerate model slot a weight file name stands for ("model", "model_1"), or None."""
    m = _ACCELERATE_MODEL.match(filename)
    if m is None:
        return None
    return f"model_{int(m.group(1))}" if m.group(1) else "model"


def accelerate_models(names: set[str] | list[str]) -> dict[str, str] | None:
    """The models of an Accelerate ``save_state`` folder holding more than one model:
    model name ("model", "model_1", …) → its weight file; None for one model or none."""
    models: dict[str, str] = {}
    for name in sorted(names):
        model = _accelerate_model(name)
        if model is not None:
            models.setdefault(model, name)  # model.safetensors before pytorch_model.bin
    if len(models) < 2 or "model" not in models:
        return None
    return models


@dataclass(frozen=True)
class Fingerprint:
    """Identity of a checkpoint's weight files: total `size` in bytes, newest `mtime`
    (seconds since the epoch) and `sha256` (hex) of the files' bytes in order."""

    size: int
    mtime: float
    sha256: str


@dataclass(eq=False)
class Checkpoint:
    """One saved model state.

    path: the file; for folder checkpoints (HF model / Trainer ``checkpoint-N/``) the
    folder; for a sharded checkpoint outside such a folder its ``*.index.json``.
    files: the weight files read (shards in index order). format: "torch",
    "torch-legacy", "safetensors", "torch-sharded", "safetensors-sharded" or "pickle" (a
    plain ``pickle.dump`` of numpy arrays).
    step / epoch: the training step and epoch (None when unknown); step_origin says where
    the step came from ("metadata:global_step", "metadata:step", "trainer_state.json",
    "optimizer.bin state step" / "scheduler.bin last_epoch" for the training state saved
    beside the weights (Accelerate's automatic ``checkpoint_N`` is a save index), "name", "ancestor name" for a folder above it such as ``checkpoint-500/`` in
    ``checkpoint-500/unet/``, "metadata:epoch" / "name:epoch" / "ancestor name:epoch"
    for epoch-unit runs, "default").
    config: ``config.json`` in the folder or beside the file. scalars: numeric top-level
    metadata (e.g. loss, global_step; for Trainer folders trainer_state.json's numbers).
    model: for one of several models saved side by side in one folder (Accelerate's
    ``model.safetensors``, ``model_1.safetensors``), which one ("model", "model_1"), else
    None. state_entries: for a torch.distributed.checkpoint folder, the top-level entries
    of training state beside the model (``optimizer``, ``lr_scheduler``…), not analysed.
    """

    path: Path
    files: tuple[Path, ...]
    format: str
    step: int | None = None
    step_origin: str = ""
    epoch: int | None = None
    config: dict | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    state_entries: tuple[str, ...] = ()
    _index: Path | None = field(default=None, repr=False)
    _name_step: int | None = field(default=None, repr=False)
    _epoch_origin: str = field(default="", repr=False)
    _step_folder: Path | None = field(default=None, repr=False)
    _signature: str = field(default="", repr=False)
    _fingerprint: Fingerprint | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    def open(self) -> TensorReader:
        """A reader over the weight tensors (context manager); see `TensorReader`."""
        if self.format == "torch-dcp":
            return _dcp_reader(self.path, scalars=False)[0]
        reader, _meta = (
            open_weights(self._index, index=True) if self._index else open_weights(self.files[0])
        )
        return reader

    def fingerprint(self) -> Fingerprint:
        """Size, newest mtime and sha256 of the weight files (hashed once, in chunks)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            size, mtime = 0, 0.0
            buf = bytearray(_HASH_CHUNK)
            view = memoryview(buf)
            for f in self.files:
                try:
                    stat = f.stat()
                    with open_regular(f) as fh:
                        while n := fh.readinto(view):
                            digest.update(view[:n])
                except OSError as exc:
                    raise checkpoint_error(
                        "unreadable", f"{f}: cannot be read ({exc.strerror or exc})"
                    ) from None
                size += stat.st_size
                mtime = max(mtime, stat.st_mtime)
            self._fingerprint = Fingerprint(size, mtime, digest.hexdigest())
        return self._fingerprint

    def weights_digest(self) -> str:
        """sha256 (hex) over the sorted keys, dtypes, shapes and raw bytes of every weight
        tensor: equal for two checkpoints holding the same weights in any format."""
        if self._digest is None:
            digest = hashlib.sha256()
            with self.open() as reader:
                for key in sorted(reader.keys()):
                    tensor = reader.get(key)
                    raw = tensor.reshape(-1).view(torch.uint8).numpy()
                    digest.update(
                        f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0{raw.nbytes}\0".encode()
                    )
                    digest.update(raw)
            self._digest = digest.hexdigest()
        return self._digest


def _integral(value: float | None) -> int | None:
    """`value` as a non-negative int if it is a whole number, else None."""
    if value is None or not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def _read_json(path: Path, notes: list[Note]) -> dict | None:
    """A JSON object from `path`, or None (with a Note if it exists but cannot be read)."""
    if not path.is_file():
        return None
    try:
        doc = loads_json(read_regular_text(path))
    except (OSError, ValueError) as exc:
        notes.append(Note("unreadable", f"{path}: ignored, not readable JSON ({exc})", str(path)))
        return None
    return doc if isinstance(doc, dict) else None


def _signature(reader: TensorReader) -> str:
    """A short hash of the (key, dtype, shape) list: differs ⇒ weights differ."""
    digest = hashlib.sha256()
    for key in sorted(reader.keys()):
        info = reader.info(key)
        digest.update(f"{key}\0{info.dtype}\0{info.shape}\n".encode())
    return digest.hexdigest()[:16]


def _dcp_reader(
    folder: Path, scalars: bool = True
) -> tuple[TensorReader, WeightsMeta, list[Path], tuple[str, ...]]:
    """(reader, metadata, files, training-state roots) of a torch.distributed.checkpoint."""
    entries, contents, scalars, files = open_dcp(folder, scalars)
    reader = TensorReader(str(folder), entries, [], contents.unsupported)  # type: ignore[arg-type]
    return reader, WeightsMeta("torch-dcp", scalars), files, tuple(contents.other)


@dataclass
class _Opened:
    """What probe() opened: the reader and its metadata, the files read, and where the
    step may come from (`name`, `trainer_state`)."""

    reader: TensorReader
    meta: WeightsMeta
    files: tuple[Path, ...]
    index: Path | None
    name: str
    config: dict | None
    trainer_state: dict
    state_entries: tuple[str, ...] = ()


def _open_probe(path: Path, kind: str, notes: list[Note]) -> _Opened:
    """Open the weights of a probe() candidate (see probe for the kinds)."""
    if kind == "folder":
        names = [p.name for p in path.iterdir() if p.is_file()]
        chosen = folder_weights(names)
        config = _read_json(path / "config.json", notes)
        if chosen is None and is_dcp_folder(names):
            reader, meta, files, other = _dcp_reader(path)
            return _Opened(reader, meta, tuple(files), None, path.name, config, {}, other)
        if chosen is None:
            raise checkpoint_error(
                "not-a-checkpoint",
                f"{path}: not a checkpoint folder (no {', '.join(HF_WEIGHT_FILES)})",
            )
        weights, is_index = path / chosen, chosen.endswith(".index.json")
        state = _read_json(path / "trainer_state.json", notes) or {}
        name = path.name
    else:
        weights, is_index = path, kind == "index"
        # One of several models in an Accelerate folder: its name is a model slot
        # (model_1), not a step.
        name = "" if kind == "member" else checkpoint_name(path.name)
        config, state = _read_json(path.parent / "config.json", notes), {}
    reader, meta = open_weights(weights, index=is_index)
    files = tuple(read_index(weights)[0]) if is_index else (weights,)
    return _Opened(reader, meta, files, weights if is_index else None, name, config, state)


def probe(path: Path, kind: str) -> tuple[Checkpoint, list[Note]]:
    """Parse one checkpoint's metadata (no tensor data) and find its step.

    kind: "file" (one weight file), "index" (a ``*.index.json``), "folder" (an HF model
    or Trainer folder, or a torch.distributed.checkpoint folder) or "member" (one model's
    weight file in an Accelerate folder holding several: its step from the folder).
    Raises CheckpointError (tagged with its Note kind).
    """
    notes: list[Note] = []
    opened = _open_probe(path, kind, notes)
    _note_nesting(path, opened.meta, notes)
    with opened.reader:
        signature = _signature(opened.reader)
    scalars = dict(opened.meta.scalars)
    for key, value in opened.trainer_state.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars.setdefault(key, as_float(value))
    from_name = steps_from_name(opened.name)
    ckpt = Checkpoint(
        path=path,
        files=opened.files,
        format=opened.meta.format,
        config=opened.config,
        scalars=scalars,
        model=_accelerate_model(path.name) if kind == "member" else None,
        state_entries=opened.state_entries,
        _index=opened.index,
        _name_step=from_name.step,
        _signature=signature,
    )
    holder = path if kind == "folder" else path.parent if kind == "member" else None
    _assign_step(ckpt, opened.trainer_state, from_name, notes, holder)
    if ckpt.step is None and ckpt.epoch is None and kind in ("file", "member"):
        # model.pt inside step_1200/: the folder names the step (explicit markers only).
        _take_folder_step(ckpt, path.parent, "name")
    return ckpt, notes


# One known key at the top level is the usual layout (Lightning's state_dict, ...): no note.
_USUAL_NESTING = {(), ("state_dict",), ("model_state_dict",), ("model_state",), ("model",),
                  ("module",), ("net",), ("network",)}  # fmt: skip


def _note_nesting(path: Path, meta: WeightsMeta, notes: list[Note]) -> None:
    """Notes for weights found deeper than one known key, and for tensors left out."""
    if meta.state_path not in _USUAL_NESTING:
        notes.append(
            Note(
                "nested-weights",
                f"{path}: weights found nested under {key_path(meta.state_path)}",
                str(path),
            )
        )
    if meta.other_paths:
        others = ", ".join(key_path(p) for p in meta.other_paths[:3])
        more = f" and {len(meta.other_paths) - 3} more" if len(meta.other_paths) > 3 else ""
        notes.append(
            Note(
                "other-weights",
                f"{path}: analysed the weights under {key_path(meta.state_path)}; the tensors "
                f"under {others}{more} (e.g. an EMA copy) are not analysed: torch.save them "
                "by themselves to analyse them",
                str(path),
            )
        )


def assign_ancestor_step(ckpt: Checkpoint, root: Path) -> None:
    """Give a checkpoint with neither step nor epoch those of its nearest ancestor folder
    strictly below `root` whose name has an explicit marker (``checkpoint-500/unet/``,
    ``step_500/model/``, ``epoch=3-step=500/``); step origin "ancestor name"."""
    if ckpt.step is not None or ckpt.epoch is not None or not ckpt.path.is_relative_to(root):
        return
    for folder in ckpt.path.parents:
        if folder == root or not folder.is_relative_to(root):
            return
        if _take_folder_step(ckpt, folder, "ancestor name"):
            ckpt._step_folder = folder
            return


def _take_folder_step(ckpt: Checkpoint, folder: Path, origin: str) -> bool:
    """Take the step (else the epoch) a folder's explicit name markers give; whether any did."""
    named = steps_from_name(folder.name, trailing=False)
    if named.step is not None:
        ckpt.step, ckpt.step_origin, ckpt._name_step = named.step, origin, named.step
    elif named.epoch is not None:
        ckpt.epoch, ckpt._epoch_origin = named.epoch, f"{origin}:epoch"
    return named.step is not None or named.epoch is not None


def _assign_step(
    ckpt: Checkpoint, trainer_state: dict, from_name, notes: list[Note], holder: Path | None
) -> None:
    """Step and epoch: metadata first (trainer_state.json, global_step, step), then the
    optimizer/scheduler state in `holder` (the checkpoint's folder), then the name."""
    step, origin = None, ""
    if trainer_state:
        raw = trainer_state.get("global_step")
        step = (
            _integral(as_float(raw))
            if isinstance(raw, (int, float)) and not isinstance(raw, bool)
            else None
        )
        origin = "trainer_state.json" if step is not None else ""
    noted = bool(trainer_state) and _is_infinite(trainer_state.get("global_step"))
    if noted:
        notes.append(_out_of_range(ckpt, "trainer_state.json's global_step"))
    for key in ("global_step", "global_steps", "step"):  # global_steps: DeepSpeed
        if step is None and key in ckpt.scalars:
            step = _integral(ckpt.scalars[key])
            origin = f"metadata:{key}" if step is not None else ""
            if step is None and not noted and _is_infinite(ckpt.scalars[key]):
                noted = True
                notes.append(_out_of_range(ckpt, f"its metadata {key}"))
    index = holder is not None and is_accelerate_auto_name(holder)
    if step is None and holder is not None:
        # The scheduler only where the name is a save index: stepped per epoch, or
        # num_processes times per step under Accelerate, it counts something else.
        step, origin = _state_step(ckpt, holder, index, notes)
    if step is None and from_name.step is not None:
        step, origin = from_name.step, "name"
    # A model of several in a checkpoint_N folder (model_1.safetensors): the folder's index.
    named = from_name.step
    if named is None and index and holder is not None:
        named = steps_from_name(holder.name, trailing=False).step
    if step is not None and named is not None and named != step and origin != "name":
        notes.append(_mismatch(ckpt, named, step, origin, index))
    epoch = _integral(ckpt.scalars.get("epoch"))
    epoch_origin = "metadata:epoch" if epoch is not None else ""
    if epoch is None and from_name.epoch is not None:
        epoch, epoch_origin = from_name.epoch, "name:epoch"
    if from_name.init and (origin == "name" or (step is None and epoch_origin == "name:epoch")):
        unit = "step" if origin == "name" else "epoch"
        notes.append(
            Note(
                "init-name",
                f"{ckpt.path}: its name marks the initialisation; analysed as {unit} 0",
                str(ckpt.path),
            )
        )
    ckpt.step, ckpt.step_origin, ckpt.epoch, ckpt._epoch_origin = step, origin, epoch, epoch_origin


def _state_step(
    ckpt: Checkpoint, holder: Path, scheduler: bool, notes: list[Note]
) -> tuple[int | None, str]:
    """(step, origin) from the optimizer (else scheduler) state in `holder`; a note when a
    state file is there but cannot be read."""
    found = state_step(holder, scheduler=scheduler)
    if found.problem:
        then = (
            f"the step comes from {found.origin}"
            if found.step is not None
            else "the step comes from the name if it gives one"
        )
        notes.append(
            Note(
                "step-state-unreadable",
                f"{ckpt.path}: training state beside it not read for its step "
                f"({found.problem}); {then}",
                str(ckpt.path),
            )
        )
    return found.step, found.origin


def _mismatch(ckpt: Checkpoint, named: int, step: int, origin: str, index: bool) -> Note:
    """The note for a name whose step differs from the one its metadata or state records."""
    where = "its metadata" if origin.startswith("metadata") else origin
    says = (
        f"checkpoint_{named} is Accelerate's automatic save index {named}, not a step,"
        if index
        else f"its name says step {named}"
    )
    return Note(
        "step-mismatch",
        f"{ckpt.path}: {says} but {where} says {step}; using {where}",
        str(ckpt.path),
    )


def _is_infinite(value: object) -> bool:
    """Whether a metadata number is ±inf (1e400, or an int too large for a float)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (math.isinf(as_float(value)))
    )


def _out_of_range(ckpt: Checkpoint, what: str) -> Note:
    """The note for a step in metadata that no store can hold (ignored, the name used)."""
    return Note(
        "step-out-of-range",
        f"{ckpt.path}: {what} is out of range (infinite or beyond any integer a store "
        "holds); ignored, the step comes from the name if it gives one",
        str(ckpt.path),
    )


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open one checkpoint: a weight file, a sharded ``*.index.json``, or an HF model /
    Trainer ``checkpoint-N/`` folder, with its step from metadata or name (None if neither).

    Raises CheckpointError: missing or unreadable path, truncated or corrupt file, a pickle
    that is not a checkpoint, an index pointing outside its folder; UnsafePickleError (a
    CheckpointError) for a pickle that tries to run code (nothing is run).
    """
    p = Path(path)
    if not p.exists():
        raise checkpoint_error("missing", f"{p}: does not exist")
    if p.is_dir():
        kind = "folder"
    elif p.name.endswith(".index.json"):
        kind = "index"
    else:
        kind = "file"
    try:
        ckpt, _notes = probe(p, kind)
    except OSError as exc:
        raise checkpoint_error(
            "unreadable", f"{p}: cannot be read ({exc.strerror or exc})"
        ) from None
    return ckpt
