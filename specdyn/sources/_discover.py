"""Walk a folder, group files into checkpoints and runs, order them by step (docs/runs.md)."""

from __future__ import annotations

import fnmatch
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, DiscoveryError, option_ref
from ..types import Note
from ._checkpoint import (
    WEIGHT_SUFFIXES,
    Checkpoint,
    accelerate_models,
    assign_ancestor_step,
    folder_weights,
    is_trainer_extra,
    probe,
)
from ._dcp import DCP_METADATA, is_dcp_folder
from ._formats import error_content, error_kind, loads_json, read_index, read_regular_text
from ._stepnames import MAX_STEP, checkpoint_name, is_generic_name, run_stem, step_out_of_range
from ._trainlog import log_root

__all__ = ["Discovery", "RunSource", "discover", "natural_key"]

_LOOKED_FOR = (
    "*.pt, *.pth, *.bin, *.ckpt, *.safetensors, *.pth.tar, *.tar, *.pkl, *.model, "
    "*.index.json, HF model folders, "
    "torch.distributed.checkpoint folders"
)
# Accelerate's save_state writes one RNG-state pickle per process beside the weights.
_RANDOM_STATES = re.compile(r"^random_states_\d+\.pkl$")
_DEEPSPEED_STATE = re.compile(r"^global_step\d+$")
# DeepSpeed's optimizer files (zero_pp_rank_0_mp_rank_00_optim_states.pt, bf16_…): never
# weights, often the largest files of a checkpoint; skipped unread.
_DEEPSPEED_OPTIM = re.compile(r"optim_states\.pt$")
# Gradient dumps by their names (grads_step_100.pt, model_grads.pt, gradients_7.pt), not
# a run whose name mentions a gradient setting (grad_clip_1.0_step_5.pt).
_GRADIENTS = re.compile(
    r"(?<![a-z])(?:grads?|gradients?)(?=$|[_\-.=]?(?:\d|step|epoch|iter|ckpt))", re.IGNORECASE
)
# Accelerate's automatic checkpoint naming (ProjectConfiguration(automatic_checkpoint_naming
# =True)): checkpoints/checkpoint_<i>/, i counting save_state calls, beside random_states_0.pkl.
_ACCELERATE_SAVE = re.compile(r"^checkpoint_\d+$")
# What files that hold no weights hold, as the summary note counts them.
_NO_WEIGHTS = {
    "optimizer-state": "optimizer-state files",
    "no-tensors": "files without weight tensors (metrics or settings)",
    "plain-pickle": "plain pickles (not torch.save checkpoints)",
    "gradients": "gradient files (by their names)",
    "tar-archive": "tar archives of other files",
    "other-content": "files of other content (tokenizers, images, …)",
}


@dataclass
class RunSource:
    """One training trajectory: `checkpoints` ordered by step (one per step).

    name: the run's name (the folder's name, or the subfolder's for a folder of runs);
    root: the folder (or file) it was found in; step_unit: "step", or "epoch" when only
    epochs are known (then each checkpoint's `step` holds its epoch).
    """

    name: str
    root: Path
    checkpoints: list[Checkpoint]
    step_unit: str = "step"


@dataclass
class Discovery:
    """What `discover` found: the runs, and notes on everything skipped or merged."""

    runs: list[RunSource]
    notes: list[Note] = field(default_factory=list)


@dataclass(frozen=True)
class _Candidate:
    """A path that may be a checkpoint: kind "file", "index" or "folder"."""

    kind: str
    path: Path


def discover(path: str | Path, *, ignore: Sequence[str] = ()) -> Discovery:
    """Find every checkpoint under `path` and order them into runs.

    Walks `path` recursively (symbolic-link loops are visited once; hidden folders are
    skipped), groups files into checkpoints (one weight file; a sharded set with its
    ``*.index.json``; an HF model folder or Trainer ``checkpoint-N/`` as one checkpoint,
    ignoring optimizer/scheduler/RNG state; each model of an Accelerate folder holding
    several, ``model.safetensors`` and ``model_1.safetensors``; a
    torch.distributed.checkpoint folder, ``.metadata`` + ``*.distcp``), finds each step
    (metadata first, then the optimizer/scheduler state beside the weights, then the
    name, then the nearest folder below `path` whose name gives one, as in
    ``checkpoint-500/unet/``; docs/runs.md#step-of-a-checkpoint), resolves duplicates (same step and same weights:
    kept once, noted; a file with no step is matched to a step by its weights or skipped
    with a note), splits a folder whose subfolders each hold a trajectory into several
    runs, splits a run whose step folders each hold several models (``checkpoint-N/unet/``,
    ``checkpoint-N/text_encoder/``) into one run per model (``<run>-unet``), and splits
    files told apart by their names (``runA_epoch_1.pth`` beside ``runB_epoch_1.pth``)
    into one run per name (docs/runs.md#several-runs-in-one-folder). Files that hold no
    weights (optimizer state, metrics, gradient dumps) are noted once per kind. Runs,
    and files where names are compared, are in natural order (``version_2`` before
    ``version_10``).

    Args:
        path: a folder of checkpoints (searched recursively) or one checkpoint.
        ignore: globs (`fnmatch`; ``*`` crosses ``/``) of files and folders under
            `path` to leave out, matched against the path relative to `path`
            (``500/*``, ``version_3``, ``*.bin``) and against it joined to `path` as
            given (``out/500/*`` for ``discover("out")``); an ignored folder is not
            walked. One note (kind ``ignored-paths``) counts the files left out, and
            one (``ignore-unmatched``) names each glob that matched nothing.

    Returns:
        Discovery(runs, notes); every run has at least one checkpoint.

    Raises:
        DiscoveryError: `path` does not exist, holds no checkpoint, nothing readable
            remains, or two different weight sets claim one step (names both files).
    """
    root = Path(path)
    if not root.exists() and root.is_symlink():
        raise DiscoveryError(
            f"{root}: a symlink loop or a link to nothing; give the checkpoint file or folder "
            "it should lead to"
        )
    if not root.exists():
        raise DiscoveryError(
            f"{root}: does not exist; give a checkpoint file or a folder of checkpoints"
        )
    notes: list[Note] = []
    no_weights: list[tuple[str, Note]] = []  # (what the file holds, its own note)
    ignoring = _Ignore(root, ignore)
    if root.is_dir():
        candidates = _walk(root, notes, no_weights, ignoring)
    else:
        kind = "index" if root.name.endswith(".index.json") else "file"
        candidates = [_Candidate(kind, root)]
    ignored = ignoring.summary(notes)
    if not candidates:
        skipped = f"; {no_weights[0][1].message}" if no_weights else ""
        if ignored:
            skipped += f"; {ignored} left out by {option_ref('ignore')}"
        raise DiscoveryError(f"{root}: no checkpoints found (looked for {_LOOKED_FOR}){skipped}")
    found = _probe_all(root, candidates, notes, no_weights)
    _summarise_no_weights(no_weights, notes)
    _summarise_nesting(notes)
    if not found:
        problems = "; ".join(n.message for n in notes[:3])
        raise DiscoveryError(
            f"{root}: no readable checkpoint ({len(candidates)} tried): {problems}"
        )

    folders = _split_runs(root, found, notes)
    names = _run_names(root, [g for g, _ in folders])
    groups = _split_models(
        [
            (run_root, members, name)
            for (run_root, members), name in zip(folders, names, strict=True)
        ],
        notes,
    )
    groups = _split_stems(groups, notes)
    names = [name for _, _, name in groups]
    if len(groups) > 1:
        notes.append(
            Note(
                "several-runs",
                f"{root} holds {len(groups)} runs ({', '.join(names)}); each is analysed as its own run",
                str(root),
            )
        )
    runs = []
    for run_root, members, name in groups:
        run = _order_run(name, run_root, members, notes)
        if run.checkpoints:
            runs.append(run)
    if not runs:
        problems = "; ".join(n.message for n in notes[-3:])
        raise DiscoveryError(f"{root}: no checkpoint with a known step: {problems}")
    _summarise_step_notes(runs, notes)
    _note_layouts(runs, notes)
    return Discovery(runs=runs, notes=notes)


def _probe_all(
    root: Path,
    candidates: list[_Candidate],
    notes: list[Note],
    no_weights: list[tuple[str, Note]],
) -> list[Checkpoint]:
    """Probe every candidate; what cannot be read becomes a note (files holding no weights
    go to `no_weights`, to be counted once per content)."""
    found: list[Checkpoint] = []
    for cand in candidates:
        try:
            ckpt, probe_notes = probe(cand.path, cand.kind)
        except CheckpointError as exc:
            note = Note(error_kind(exc), str(exc), str(cand.path))
            content = error_content(exc)
            if note.kind == "not-a-checkpoint" and content is not None:
                no_weights.append((content, note))
            else:
                notes.append(note)
            continue
        except OSError as exc:
            notes.append(Note("unreadable", f"{cand.path}: cannot be read ({exc})", str(cand.path)))
            continue
        notes.extend(probe_notes)
        if root.is_dir():
            assign_ancestor_step(ckpt, root)
        unstorable = _unstorable_step(ckpt)
        if unstorable is not None:
            notes.append(Note("bad-step", unstorable, str(cand.path)))
            continue
        found.append(ckpt)
    return found


def _summarise_no_weights(no_weights: list[tuple[str, Note]], notes: list[Note]) -> None:
    """One note per kind of file that holds no weights: the file's own note when it is the
    only one of its kind, else a count naming the first ("12 optimizer-state files
    (…/optimizer_0.pt, …): no weights; skipped")."""
    by_content: dict[str, list[Note]] = {}
    for content, note in no_weights:
        by_content.setdefault(content, []).append(note)
    for content, group in by_content.items():
        if len(group) == 1:
            notes.append(group[0])
            continue
        first = group[0].path
        notes.append(
            Note(
                "not-a-checkpoint",
                f"{len(group)} {_NO_WEIGHTS.get(content, content + ' files')} ({first}, …): "
                "no weights; skipped",
                first,
            )
        )


# Notes that each checkpoint of a folder saved alike draws the same way: one per message.
_PER_FILE_ALIKE = ("nested-weights", "other-weights")


def _summarise_nesting(notes: list[Note]) -> None:
    """One note per nesting message for checkpoints saved alike (dcp_to_torch_save's
    ['app']['model'], timm's state_dict_ema in every file), counting them, in place."""
    groups: dict[tuple[str, str], list[Note]] = {}
    for note in notes:
        prefix = f"{note.path}: "
        if note.kind in _PER_FILE_ALIKE and note.message.startswith(prefix):
            groups.setdefault((note.kind, note.message[len(prefix) :]), []).append(note)
    for (kind, rest), group in groups.items():
        if len(group) < 2:
            continue
        first = notes.index(group[0])
        dropped = {id(n) for n in group}
        notes[:] = [n for n in notes if id(n) not in dropped]
        message = f"{len(group)} checkpoints ({group[0].path}, …): {rest}"
        notes.insert(first, Note(kind, message, group[0].path))


# Step notes each checkpoint of a run draws alike: one per run, with what it says of them.
_PER_RUN_STEP_NOTES = {
    "step-mismatch": "their names give other steps than their metadata or training state "
    "records, which is used",
    "step-state-unreadable": "the training state beside them could not be read for their step",
}


def _summarise_step_notes(runs: list[RunSource], notes: list[Note]) -> None:
    """One step-mismatch (and one step-state-unreadable) note per run, counting its
    checkpoints and quoting the first, in place of one per checkpoint."""
    for run in runs:
        paths = {str(c.path) for c in run.checkpoints}
        for kind, says in _PER_RUN_STEP_NOTES.items():
            group = [n for n in notes if n.kind == kind and n.path in paths]
            if len(group) < 2:
                continue
            first = notes.index(group[0])
            dropped = {id(n) for n in group}
            notes[:] = [n for n in notes if id(n) not in dropped]
            message = (
                f"{len(group)} checkpoints of {run.name}: {says} (the first: {group[0].message})"
            )
            notes.insert(first, Note(kind, message, group[0].path))


def _note_layouts(runs: list[RunSource], notes: list[Note]) -> None:
    """One note each for what some runs' layouts call for: steps that count Accelerate's
    saves, and training state left out of torch.distributed.checkpoint folders."""
    counted = [(r, c) for r in runs for c in r.checkpoints if _accelerate_save_number(c)]
    stateful = [(r, c) for r in runs for c in r.checkpoints if c.state_entries]
    if counted:
        names = ", ".join(dict.fromkeys(r.name for r, _ in counted))
        notes.append(
            Note(
                "save-number",
                f"{names}: the steps are Accelerate's automatic checkpoint_N numbers (e.g. "
                f"{counted[0][1].path}), which count save_state calls, not training steps; "
                "save with accelerator.save_state(f'.../step_{step}') to analyse by training step",
                _common_root(r for r, _ in counted),
            )
        )
    if stateful:
        roots = ", ".join(sorted({e for _, c in stateful for e in c.state_entries}))
        notes.append(
            Note(
                "ignored",
                f"{len(stateful)} torch.distributed.checkpoint folders (e.g. {stateful[0][1].path}):"
                f" only the model weights are analysed; their {roots} entries are training state",
                _common_root(r for r, _ in stateful),
            )
        )


def _common_root(runs: Iterable[RunSource]) -> str:
    """The deepest folder holding every given run's root."""
    return os.path.commonpath([str(r.root) for r in runs])


def _accelerate_save_number(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint's step is the number of an Accelerate ``checkpoint_N`` folder
    written by automatic checkpoint naming (a ``random_states_*.pkl`` beside the weights)."""
    if not ckpt.step_origin.startswith(("name", "ancestor name")):
        return False
    holder = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    folder = ckpt._step_folder or holder
    if not _ACCELERATE_SAVE.match(folder.name):
        return False
    return any(folder.glob("random_states_*.pkl"))


def _unstorable_step(ckpt: Checkpoint) -> str | None:
    """Why a checkpoint's step or epoch cannot go on a store's int64 step axis, or None."""
    for what, value, origin in (
        ("step", ckpt.step, ckpt.step_origin),
        ("epoch", ckpt.epoch, ckpt._epoch_origin),
    ):
        if step_out_of_range(value):
            from_name = origin.startswith(("name", "ancestor name"))
            if origin.startswith("ancestor name"):
                where = f"the name of {ckpt._step_folder}"
            else:
                where = "its name" if from_name else f"its {origin or 'metadata'}"
            fix = f"rename it with its real {what}" if from_name else f"fix the {what} it records"
            return (
                f"{ckpt.path}: skipped: {where} gives {what} {value}, more than a store can hold "
                f"(at most {MAX_STEP}); {fix}"
            )
    return None


# ----------------------------------------------------------------- order and --ignore

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key ordering the numbers inside names by value: ``version_2`` before
    ``version_10``, ``step_9.pt`` before ``step_10.pt``.

    Args:
        text: a name or path (str).

    Returns:
        A tuple of alternating (str, int) parts that compares like the names read aloud;
        names with the same key are ordered by the text itself.
    """
    parts = _DIGITS.split(text)
    return (tuple((p, 0) if i % 2 == 0 else ("", int(p)) for i, p in enumerate(parts)), text)


class _Ignore:
    """The ``--ignore`` globs of one discovery: which paths they leave out, and counts."""

    def __init__(self, root: Path, patterns: Sequence[str]) -> None:
        self.root = root
        self.patterns = [p.rstrip("/") or p for p in patterns]
        self.used: set[str] = set()
        self.files = 0
        self.folders: list[Path] = []

    def _match(self, path: Path) -> str | None:
        """The first glob matching `path` (relative to the root, or joined to it), or None."""
        rel = path.relative_to(self.root).as_posix()
        given = (self.root / rel).as_posix()
        for pattern in self.patterns:
            if fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(given, pattern):
                self.used.add(pattern)
                return pattern
        return None

    def filter(
        self, folder: Path, files: set[str], subdirs: list[Path]
    ) -> tuple[set[str], list[Path]]:
        """`files` and `subdirs` of `folder` without the ignored ones (counted)."""
        if not self.patterns:
            return files, subdirs
        kept = {n for n in files if self._match(folder / n) is None}
        self.files += len(files) - len(kept)
        kept_dirs = []
        for d in subdirs:
            if self._match(d) is None:
                kept_dirs.append(d)
                continue
            self.folders.append(d)
            self.files += sum(
                len([f for f in names if not f.startswith(".")]) for _, _, names in os.walk(d)
            )
        return kept, kept_dirs

    def summary(self, notes: list[Note]) -> str:
        """Notes on what was left out and on globs that matched nothing; returns the count
        ("12 files") or "" when nothing was left out."""
        for pattern in self.patterns:
            if pattern not in self.used:
                notes.append(
                    Note(
                        "ignore-unmatched",
                        f"{self.root}: ignore glob {pattern!r} (--ignore) matched nothing "
                        "(globs match paths relative to the folder, e.g. 'version_3/*')",
                        str(self.root),
                    )
                )
        if not self.files and not self.folders:
            return ""
        count = f"{self.files} file{'s' if self.files != 1 else ''}"
        where = ""
        if self.folders:
            shown = ", ".join(str(f) for f in self.folders[:3])
            more = ", …" if len(self.folders) > 3 else ""
            where = f" (in {len(self.folders)} folder{'s' if len(self.folders) > 1 else ''}: {shown}{more})"
        notes.append(
            Note(
                "ignored-paths",
                f"{self.root}: {count}{where} left out by the ignore globs (--ignore)",
                str(self.root),
            )
        )
        return count


# ----------------------------------------------------------------- walking


def _walk(
    root: Path,
    notes: list[Note],
    no_weights: list[tuple[str, Note]],
    ignoring: _Ignore | None = None,
) -> list[_Candidate]:
    """Candidate checkpoints under `root`, each real folder visited once; files skipped by
    their names (DeepSpeed optimizer states, gradient dumps) go to `no_weights`, paths
    matching `ignoring` are left out (and counted by it)."""
    out: list[_Candidate] = []
    seen: set[str] = set()
    state_files: list[Path] = []  # optimizer/scheduler/RNG state beside model weights
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop or a second link to a folder already walked
            continue
        seen.add(real)
        files, subdirs = _list(folder, notes)
        if ignoring is not None:
            files, subdirs = ignoring.filter(folder, files, subdirs)
        chosen = folder_weights(files)
        if chosen is not None:
            out.extend(_model_folder(folder, files, chosen, notes))
            subdirs = [d for d in subdirs if not _DEEPSPEED_STATE.match(d.name)]
        elif is_dcp_folder(files):
            out.append(_Candidate("folder", folder))
        else:
            out.extend(_loose_files(folder, files, subdirs, notes, no_weights))
        state_files.extend(folder / n for n in sorted(files) if _is_training_state(n))
        stack.extend(sorted(subdirs, key=lambda d: natural_key(d.name), reverse=True))
    if state_files:
        first = state_files[0]
        names = ", ".join(sorted({p.name for p in state_files})[:4])
        notes.append(
            Note(
                "training-state",
                f"{len(state_files)} training-state file(s) beside the weights ({names}; first "
                f"{first}): optimizer, scheduler and RNG state, not weights (the optimizer "
                "or scheduler state is read for the training step only: "
                "docs/runs.md#step-of-a-checkpoint)",
                str(first),
            )
        )
    return out


def _is_training_state(name: str) -> bool:
    """Whether a file in a model folder is Trainer/Accelerate training state, not weights."""
    return is_trainer_extra(name) or bool(_RANDOM_STATES.match(name))


def _model_folder(
    folder: Path, files: set[str], chosen: str, notes: list[Note]
) -> list[_Candidate]:
    """The checkpoints of an HF model / Trainer folder: the folder itself, or one per model
    of an Accelerate folder holding several (model.safetensors, model_1.safetensors…);
    other weight files in it are ignored with a note."""
    models = None if chosen.endswith(".index.json") else accelerate_models(files)
    if models is not None:
        used = set(models.values())
        out = [_Candidate("member", folder / name) for _, name in sorted(models.items())]
    else:
        used = {chosen}
        if chosen.endswith(".index.json"):
            used |= _shard_names(folder / chosen)
        out = [_Candidate("folder", folder)]
    for name in sorted(files):
        if name in used or _is_training_state(name) or not _is_weight_name(name):
            continue
        if _is_side_name(name):  # tokenizer.model beside the weights: a side file
            continue
        weights = ", ".join(sorted(used)) if models else chosen
        notes.append(
            Note(
                "ignored",
                f"{folder / name}: ignored, {folder} is a model folder whose weights are {weights}",
                str(folder / name),
            )
        )
    return out


def _loose_files(
    folder: Path,
    files: set[str],
    subdirs: list[Path],
    notes: list[Note],
    no_weights: list[tuple[str, Note]],
) -> list[_Candidate]:
    """The checkpoints among the files of a folder that is no model folder: shard indexes
    and weight files (shards, Trainer state and files named as no weights left out)."""
    out: list[_Candidate] = []
    used: set[str] = set()
    for name in sorted(files):
        if name.endswith(".index.json"):
            out.append(_Candidate("index", folder / name))
            used |= _shard_names(folder / name)
    for name in sorted(files):
        if name in used or _is_training_state(name) or not name.endswith(WEIGHT_SUFFIXES):
            continue
        path = folder / name
        if _DEEPSPEED_OPTIM.search(name):
            no_weights.append(
                (
                    "optimizer-state",
                    Note(
                        "not-a-checkpoint",
                        f"{path}: DeepSpeed optimizer state (by its name), no weights; skipped",
                        str(path),
                    ),
                )
            )
        elif _GRADIENTS.search(checkpoint_name(name)):
            no_weights.append(
                (
                    "gradients",
                    Note(
                        "not-a-checkpoint",
                        f"{path}: gradients by its name, not weights; skipped (rename it if it "
                        "holds weights)",
                        str(path),
                    ),
                )
            )
        else:
            out.append(_Candidate("file", path))
    if ({"latest", "zero_to_fp32.py"} & files) and any(
        _DEEPSPEED_STATE.match(d.name) for d in subdirs
    ):
        notes.append(
            Note(
                "ignored",
                f"{folder}: a DeepSpeed checkpoint folder: the weights are read from each "
                "global_stepN/mp_rank_00_model_states.pt (its module); latest and "
                "zero_to_fp32.py are not checkpoints",
                str(folder),
            )
        )
    return out


def _is_side_name(name: str) -> bool:
    """Whether a name's suffix (.model, .pkl, bare .tar) is as often a model folder's side
    file (a sentencepiece tokenizer.model) as weights: not reported as ignored weights there."""
    return name.endswith((".model", ".pkl")) or (
        name.endswith(".tar") and not name.endswith((".pth.tar", ".pt.tar"))
    )


def _is_weight_name(name: str) -> bool:
    """Whether a file name looks like weights (a weight suffix or a shard index)."""
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def _list(folder: Path, notes: list[Note]) -> tuple[set[str], list[Path]]:
    """(file names, subfolders) of `folder`, skipping hidden entries; problems become notes."""
    files: set[str] = set()
    subdirs: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        notes.append(
            Note("unreadable", f"{folder}: cannot be listed ({exc.strerror or exc})", str(folder))
        )
        return files, subdirs
    for entry in entries:
        if entry.name == "__pycache__" or (
            entry.name.startswith(".") and not _is_dcp_metadata(entry)
        ):
            continue
        try:
            if entry.is_dir():
                subdirs.append(Path(entry.path))
            elif entry.is_file():
                files.add(entry.name)
            elif _is_weight_name(entry.name):
                notes.append(
                    Note(
                        "unreadable",
                        f"{entry.path}: a broken link or not a regular file; skipped",
                        entry.path,
                    )
                )
        except OSError as exc:
            if _is_weight_name(entry.name):
                notes.append(
                    Note(
                        "unreadable",
                        f"{entry.path}: cannot be read ({exc.strerror or exc})",
                        entry.path,
                    )
                )
    return files, subdirs


def _is_dcp_metadata(entry: os.DirEntry) -> bool:
    """Whether a hidden entry is the ``.metadata`` file of a torch.distributed.checkpoint
    (the one hidden name not skipped)."""
    try:
        return entry.name == DCP_METADATA and entry.is_file()
    except OSError:
        return False


def _shard_names(index: Path) -> set[str]:
    """File names an index claims as its shards (best effort: a bad index claims none)."""
    try:
        return {p.name for p in read_index(index)[0]}
    except CheckpointError:
        try:
            doc = loads_json(read_regular_text(index))
            return {
                v for v in doc.get("weight_map", {}).values() if isinstance(v, str) and "/" not in v
            }
        except (OSError, ValueError, AttributeError):
            return set()


# ----------------------------------------------------------------- runs


def _container(ckpt: Checkpoint, root: Path, hosts: frozenset[Path] = frozenset()) -> Path:
    """The folder a checkpoint belongs to: its parent, except that a model folder which is
    the root, or which holds further checkpoints (an HF output folder with its final model
    and ``checkpoint-N/`` subfolders), belongs to itself."""
    if ckpt.path == root or ckpt.path in hosts:
        return ckpt.path
    return ckpt.path.parent


def _hosts(items: list[Checkpoint]) -> frozenset[Path]:
    """Folder checkpoints that contain other checkpoints."""
    folders = {c.path for c in items if c.path.is_dir()}
    return frozenset(
        f for f in folders if any(c.path != f and c.path.is_relative_to(f) for c in items)
    )


def _claimed(ckpt: Checkpoint) -> tuple[str, int] | None:
    """The step (or, lacking one, epoch) a checkpoint claims before any matching."""
    if ckpt.step is not None:
        return ("step", ckpt.step)
    if ckpt.epoch is not None:
        return ("epoch", ckpt.epoch)
    return None


def _split_runs(
    base: Path, items: list[Checkpoint], notes: list[Note]
) -> list[tuple[Path, list[Checkpoint]]]:
    """Group checkpoints into runs: one per subfolder when subfolders hold separate trajectories."""
    hosts = _hosts(items)
    if not base.is_dir() or any(_container(c, base, hosts) == base for c in items):
        return [(base, items)]
    groups: dict[str, list[Checkpoint]] = defaultdict(list)
    for c in items:
        groups[_container(c, base, hosts).relative_to(base).parts[0]].append(c)
    if len(groups) == 1:
        ((child, members),) = groups.items()
        sub = _split_runs(base / child, members, notes)
        return sub if len(sub) > 1 else [(base, items)]
    trajectories = {k: v for k, v in groups.items() if any(_claimed(c) for c in v)}
    if len(trajectories) < 2 or not _separate(trajectories):
        return [(base, items)]
    out = []
    for child in sorted(groups, key=natural_key):
        members = groups[child]
        if child not in trajectories:
            for c in members:
                notes.append(
                    Note(
                        "no-step",
                        f"{c.path}: skipped: no step in its metadata or name, and {base} holds several "
                        "runs; analyse it on its own or rename it (e.g. step_1000.pt)",
                        str(c.path),
                    )
                )
            continue
        out.extend(_split_runs(base / child, members, notes))
    return out


def _split_models(
    runs: list[tuple[Path, list[Checkpoint], str]], notes: list[Note]
) -> list[tuple[Path, list[Checkpoint], str]]:
    """Split each (run root, checkpoints, name) whose step folders hold several models
    (``checkpoint-N/unet/`` and ``checkpoint-N/text_encoder/``: different models, not
    duplicates of one step) into one run per model, named ``<name>-<model>``."""
    out = []
    for run_root, members, name in runs:
        models = {_model_of(c) for c in members} - {None}
        if len(models) < 2:
            out.append((run_root, members, name))
            continue
        by_model: dict[str, list[Checkpoint]] = defaultdict(list)
        for c in members:
            model = _model_of(c)
            if model is None and c.path.name in models:  # a final model saved as <out>/unet/
                model = c.path.name
            if model is not None:
                by_model[model].append(c)
            elif _claimed(c) is not None:
                by_model[""].append(c)
            else:
                notes.append(
                    Note(
                        "no-step",
                        f"{c.path}: skipped: no step in its metadata or name, and {run_root} holds "
                        f"several models ({', '.join(sorted(models))}); analyse it on its own or "
                        "rename it (e.g. step_1000.pt)",
                        str(c.path),
                    )
                )
        for model in sorted(by_model, key=natural_key):
            suffix = "-" + model.replace("/", "-") if model else ""
            out.append((run_root, by_model[model], name + suffix))
    return out


def _model_of(ckpt: Checkpoint) -> str | None:
    """Which of several models saved per step a checkpoint is: its Accelerate model slot
    ("model_1"), else where it lies below the folder that gave its step ("unet")."""
    return ckpt.model or _model_below_step_folder(ckpt)


def _split_stems(
    runs: list[tuple[Path, list[Checkpoint], str]], notes: list[Note]
) -> list[tuple[Path, list[Checkpoint], str]]:
    """Split each run whose files hold separate trajectories told apart by their names
    (``runA_epoch_1.pth`` beside ``runB_epoch_1.pth``) into one run per name stem
    (`run_stem`): when some step is claimed under two stems with different weights, or the
    stems share no model. One run of several: the runs are named after their stems
    (``runA``; the empty stem keeps the run's name); else ``<run>-<stem>``."""
    out = []
    for run_root, members, name in runs:
        stems: dict[str, list[Checkpoint]] = defaultdict(list)
        loose = []
        for c in members:
            (stems[_stem(c)] if _claimed(c) is not None else loose).append(c)
        if len(stems) < 2 or not _separate(stems):
            out.append((run_root, members, name))
            continue
        for c in sorted(loose, key=lambda c: natural_key(str(c.path))):
            target = _stem(c) if _stem(c) in stems else _stem_by_weights(c, stems)
            if target is not None:
                stems[target].append(c)
                continue
            notes.append(
                Note(
                    "no-step",
                    f"{c.path}: skipped: no step in its metadata or name, its name is none of "
                    f"the runs in {run_root} ({', '.join(s or name for s in sorted(stems))}) and "
                    "its weights match none of their checkpoints; rename it (e.g. "
                    f"{sorted(s for s in stems if s)[0]}_step_1000.pt)",
                    str(c.path),
                )
            )
        plain = len(runs) == 1 and name not in stems
        for stem in sorted(stems, key=natural_key):
            label = (stem if plain else f"{name}-{stem}") if stem else name
            out.append((run_root, stems[stem], label))
    return out


def _stem(ckpt: Checkpoint) -> str:
    """The run a checkpoint's own name points to (`run_stem` of it)."""
    name = ckpt.path.name if ckpt.path.is_dir() else checkpoint_name(ckpt.path.name)
    return run_stem(name)


def _stem_by_weights(ckpt: Checkpoint, stems: dict[str, list[Checkpoint]]) -> str | None:
    """The stem of the first run holding a checkpoint with the same weights, or None."""
    for stem in sorted(stems):
        if any(_same_weights(other, ckpt) for other in stems[stem]):
            return stem
    return None


def _model_below_step_folder(ckpt: Checkpoint) -> str | None:
    """Where a checkpoint lies below the folder that gave its step ("unet" for
    ``checkpoint-500/unet/``), or None when its step did not come from a folder above it."""
    if ckpt._step_folder is None:
        return None
    holder = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    parts = holder.relative_to(ckpt._step_folder).parts
    return "/".join(parts) if parts else None


def _separate(groups: dict[str, list[Checkpoint]]) -> bool:
    """Whether subfolders hold separate trajectories: a step claimed in two of them with
    different weights, or no model (key/shape signature) in common at all."""
    claims: dict[tuple[str, int], list[Checkpoint]] = defaultdict(list)
    for members in groups.values():
        for c in members:
            claim = _claimed(c)
            if claim is not None:
                claims[claim].append(c)
    collisions = {k: v for k, v in claims.items() if len({_group_of(c, groups) for c in v}) > 1}
    # Latest steps first: diverging runs usually still share their initialisation.
    for claim in sorted(collisions, key=lambda k: -k[1]):
        first, *others = collisions[claim]
        for other in others:
            if _group_of(other, groups) != _group_of(first, groups) and not _same_weights(
                first, other
            ):
                return True
    if collisions:
        return False
    signatures = [{c._signature for c in members} for members in groups.values()]
    return all(a.isdisjoint(b) for i, a in enumerate(signatures) for b in signatures[i + 1 :])


def _group_of(ckpt: Checkpoint, groups: dict[str, list[Checkpoint]]) -> str:
    """Which subfolder group holds `ckpt`."""
    for name, members in groups.items():
        if any(c is ckpt for c in members):
            return name
    raise KeyError(ckpt.path)


def _run_names(root: Path, run_roots: list[Path]) -> list[str]:
    """Run names: the root's name for one run; else each run folder's path below the
    deepest common folder, joined with '-'."""
    stem = checkpoint_name(root.name) if root.is_file() else _folder_run_name(root)
    if len(run_roots) == 1:
        return [stem or "run"]
    rels = [r.relative_to(root).parts for r in run_roots]
    common = 0
    while all(len(p) > common + 1 for p in rels) and len({p[common] for p in rels}) == 1:
        common += 1
    names = ["-".join(p[common:]) for p in rels]
    return names


def _folder_run_name(root: Path) -> str:
    """A run folder's name; for a ``checkpoints/`` folder whose logs are one folder up
    (Lightning's ``version_N/checkpoints/``), the name of that folder."""
    return log_root(root).name if root.name == "checkpoints" else root.name


# ----------------------------------------------------------------- ordering one run


def _preference(ckpt: Checkpoint) -> tuple:
    """Sort key: which of several files holding one step's weights to keep (smallest first):
    a step written in the name, not a role name (last/best/final, in the name or its
    folder's), shallowest, then path."""
    generic = is_generic_name(checkpoint_name(ckpt.path.name)) or is_generic_name(
        ckpt.path.parent.name
    )
    return (ckpt._name_step is None, generic, len(ckpt.path.parts), natural_key(str(ckpt.path)))


def _same_weights(a: Checkpoint, b: Checkpoint) -> bool:
    """Whether two checkpoints hold identical weights (keys, dtypes, shapes, bytes)."""
    return a._signature == b._signature and a.weights_digest() == b.weights_digest()


def _order_run(name: str, root: Path, members: list[Checkpoint], notes: list[Note]) -> RunSource:
    """Steps, duplicates and order of one run's checkpoints (docs/runs.md#duplicates)."""
    unit = "step"
    stepped = [c for c in members if c.step is not None]
    if not stepped:
        with_epoch = [c for c in members if c.epoch is not None]
        if with_epoch:
            unit = "epoch"
            for c in with_epoch:
                c.step, c.step_origin = c.epoch, c._epoch_origin
            stepped = with_epoch
    unstepped = [c for c in members if all(c is not s for s in stepped)]
    if not stepped:
        if len(members) == 1:
            only = members[0]
            only.step, only.step_origin = 0, "default"
            notes.append(
                Note(
                    "no-step",
                    f"{only.path}: no step in its metadata or name; analysed as step 0 of run {name}",
                    str(only.path),
                )
            )
            return RunSource(name, root, [only], unit)
        unstepped = members
    by_step: dict[int, list[Checkpoint]] = defaultdict(list)
    for c in stepped:
        by_step[c.step].append(c)
    kept: dict[int, Checkpoint] = {}
    for step in sorted(by_step):
        group = sorted(by_step[step], key=_preference)
        keep = group[0]
        for other in group[1:]:
            if not _same_weights(keep, other):
                raise DiscoveryError(
                    f"{unit} {step} is claimed by {keep.path} and {other.path}, which hold different "
                    "weights; move one of them out of the folder or analyse them as separate runs"
                )
            notes.append(
                Note(
                    "duplicate",
                    f"{other.path} holds the same weights as {keep.path} ({unit} {step}); analysed once",
                    str(other.path),
                )
            )
        kept[step] = keep
    for c in sorted(unstepped, key=lambda c: natural_key(str(c.path))):
        match = next((s for s in sorted(kept, reverse=True) if _same_weights(kept[s], c)), None)
        if match is not None:
            notes.append(
                Note(
                    "duplicate",
                    f"{c.path} has no {unit} of its own and holds the same weights as {unit} {match} "
                    f"({kept[match].path}); analysed once",
                    str(c.path),
                )
            )
        else:
            notes.append(
                Note(
                    "no-step",
                    f"{c.path}: skipped: no {unit} in its metadata or name and its weights match no "
                    f"other checkpoint; rename it (e.g. step_1000.pt) to analyse it",
                    str(c.path),
                )
            )
    return RunSource(name, root, [kept[s] for s in sorted(kept)], unit)
