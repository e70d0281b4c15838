"""The runs `compare` is given (docs/compare.md#inputs): run names, store paths and
checkpoint folders, a folder of several runs standing for each of its runs.

`plan_inputs` finds the runs and the store each one has (or will have) in the workspace,
without analysing anything; `analyse_folders` then analyses the folder runs. A folder run
is stored under its path below the common parent of the folders given, as `analyze` of a
folder of runs names its runs (``compare trunk-a/branch-*/`` stores ``branch-1``...). A
name whose store holds another folder's run is never reused: the parent folders' names
go in front until every name is free or this folder's own (``trunk-b-branch-1``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis import analyze
from ..errors import (
    CompareError,
    RunNotFoundError,
    SpecdynError,
    StoreMismatchError,
    command_ref,
    option_ref,
)
from ..sources import RunSource, discover
from ..store import Run, resolve_run, store_path_for
from ..types import Note

_SPLIT_IN_NAME = re.compile(r"split[-_=]?(\d+)", re.IGNORECASE)
_BRANCH_IN_NAME = re.compile(r"branch[-_=]?(\d+)", re.IGNORECASE)
_OVERWRITE = option_ref("overwrite=True", "--overwrite")


@dataclass
class _FolderRun:
    """One run found in a folder given to `compare`, before it is analysed."""

    folder: Path  # the folder given, absolute (not resolved: its names are the user's)
    source: RunSource
    count: int  # the runs in the folder; in a folder of runs the run's name follows the prefix
    prefix: tuple[str, ...] = ()  # path parts in front of the run's name (see `_names`)
    short: str = ""  # the name with no parent folder added (a --split key)

    @property
    def multi(self) -> bool:
        """Whether the folder holds several runs."""
        return self.count > 1

    @property
    def name(self) -> str:
        """The store name: the prefix, then (in a folder of runs) the run's name."""
        return "-".join((*self.prefix, self.source.name) if self.multi else self.prefix)


@dataclass
class InputPlan:
    """The compared runs in input order (a folder of runs in place of the folder).

    stores: the store of each run (for a folder run, where it is or will be written);
    names: each run's name (the store's); given: what stands for the run in --split
    lookups and split-step names (the input, or a folder of runs' run folder); keys:
    further names --split may use for it; folder_runs: index → the folder run.
    """

    stores: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)
    keys: list[tuple[str, ...]] = field(default_factory=list)
    folder_runs: dict[int, _FolderRun] = field(default_factory=dict)
    default_name: str | None = None  # one folder of runs given: its name


def plan_inputs(
    runs: Sequence[str | os.PathLike[str]],
    home,
    *,
    by: str,
    split: Mapping[str, int],
    overwrite: bool,
    notes: list[Note],
) -> InputPlan:
    """The runs to compare and their stores; nothing is analysed yet."""
    plan = InputPlan()
    pending: list[tuple[str, Path | None, list[_FolderRun]]] = []
    for ref in runs:
        store, folder = _store_or_folder(ref, home, notes)
        if folder is None:
            pending.append((os.fspath(ref), store, []))
            continue
        found = discover(folder).runs
        folder = Path(os.path.abspath(folder))
        pending.append((os.fspath(ref), None, [_FolderRun(folder, s, len(found)) for s in found]))
    folder_runs = [fr for _, _, frs in pending for fr in frs]
    left_out: list[_FolderRun] = []
    if folder_runs:
        _names(folder_runs, 0)
        for fr in folder_runs:
            fr.short = fr.name
        left_out = _left_out(pending, split) if by == "split" else []
        kept = [fr for fr in folder_runs if all(fr is not x for x in left_out)]
        if left_out:
            shown = ", ".join(fr.name for fr in left_out[:5])
            more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
            notes.append(
                Note(
                    "not-a-branch",
                    f"{shown}{more}: no split step in the name (a trunk); left out of the "
                    "split comparison (--split NAME=STEP brings one in)",
                    str(left_out[0].folder),
                )
            )
        _choose_names(kept, home, overwrite, notes)
    for ref, store, frs in pending:
        if store is not None:
            plan.stores.append(store)
            plan.names.append(store.stem)
            plan.given.append(ref)
            plan.keys.append(())
            continue
        for fr in frs:
            if any(fr is x for x in left_out):
                continue
            plan.folder_runs[len(plan.stores)] = fr
            plan.stores.append(store_path_for(fr.name, home))
            plan.names.append(fr.name)
            plan.given.append(str(fr.source.root) if fr.multi else ref)
            plan.keys.append((fr.source.name, fr.short))
    _check_count(runs, pending, plan)
    if len(runs) == 1 and plan.folder_runs:  # one folder of runs: named after it, per mode
        folder = Path(os.path.abspath(os.fspath(runs[0]))).name
        plan.default_name = f"{folder}-split" if by == "split" else folder
    return plan


def _store_or_folder(ref, home, notes: list[Note]) -> tuple[Path | None, Path | None]:
    """(store, None) for a run name or store path, (None, folder) for a checkpoint folder.

    A name that is both a run of the workspace and a folder here is the folder when the
    run's checkpoints are elsewhere (``cd trunk-b; compare branch-1`` must not compare
    trunk-a's branch-1)."""
    path = Path(os.fspath(ref)).expanduser()
    try:
        store = resolve_run(ref, home)
    except RunNotFoundError:
        if not path.is_dir():
            raise
        return None, path
    if path.is_dir():
        root = _stored_root(store)
        if root != os.path.realpath(path):
            notes.append(
                Note(
                    "store-name",
                    f"{ref} is both the folder {path.resolve()} and the name of a run of "
                    f"{root or 'an unreadable store'} ({store}); compared the folder",
                    str(path),
                )
            )
            return None, path
    return store, None


def _stored_root(store: Path) -> str | None:
    """The checkpoint folder a run store records (resolved), or None when unreadable."""
    try:
        with Run(store) as run:
            root = run.info().get("source_root")
    except (SpecdynError, OSError):
        return None
    return os.path.realpath(root) if root else None


def _parts(fr: _FolderRun, depth: int, common: Path) -> tuple[str, ...]:
    """The path parts naming a folder run: its folder below `common`'s `depth`-th parent
    (a lone run's folder keeps its own name even when it is `common` itself)."""
    base = common.parent if (not fr.multi and fr.folder == common) else common
    for _ in range(depth):
        base = base.parent
    return fr.folder.relative_to(base).parts


def _names(folder_runs: list[_FolderRun], depth: int, suffix: bool = False) -> bool:
    """Set each run's prefix: its folder's path below the common parent of the folders
    given, with `depth` more parent names in front (and a digest of the folder with
    `suffix`); False when `depth` reaches past the file system's root."""
    folders = sorted({str(fr.folder) for fr in folder_runs})
    common = Path(os.path.commonpath(folders))
    for fr in folder_runs:
        base = common.parent if (not fr.multi and fr.folder == common) else common
        if len(base.parts) - 1 < depth:
            return False
        fr.prefix = _parts(fr, depth, common)
        if suffix:
            digest = hashlib.sha256(os.path.realpath(fr.folder).encode()).hexdigest()[:8]
            fr.prefix = (*fr.prefix, digest)
    return True


def _left_out(pending, split: Mapping[str, int]) -> list[_FolderRun]:
    """Split mode: the runs of folders of runs that have no split step (a trunk beside its
    branches); a folder given for one run keeps it, to fail with what to do."""
    return [
        fr
        for _, _, frs in pending
        for fr in frs
        if fr.multi and split_step(fr.name, str(fr.source.root), split, (fr.source.name,)) is None
    ]


def _clash(folder_runs: list[_FolderRun], home) -> str | None:
    """Why these names cannot all be used: two runs named alike, or a name whose store
    holds another folder's run (or cannot be read); None when every name is free or the
    run's own."""
    owner: dict[str, str] = {}
    for fr in folder_runs:
        root = os.path.realpath(fr.source.root)
        key = f"{root}\0{fr.source.name}"
        if owner.setdefault(fr.name, key) != key:
            return f"two runs would be named {fr.name}"
        store = store_path_for(fr.name, home)
        if store.exists():
            stored = _stored_root(store)
            if stored != root:
                return f"{fr.name} is the run of {stored or 'an unreadable store'} ({store})"
    return None


def _choose_names(folder_runs: list[_FolderRun], home, overwrite: bool, notes: list[Note]) -> None:
    """The shortest names (more parent folders in front) that reuse no other run's store."""
    if not folder_runs:
        return
    depth = 0
    first = None
    while _names(folder_runs, depth):
        why = _clash(folder_runs, home)
        if why is None:
            break
        first = first or why
        depth += 1
    else:
        _names(folder_runs, 0, suffix=True)
        why = _clash(folder_runs, home)
        if why is not None and not overwrite:
            raise CompareError(
                f"{folder_runs[0].folder}: no free name in the workspace for its runs "
                f"({why}); pass {_OVERWRITE} to replace that store",
                file=folder_runs[0].folder,
                option="overwrite",
            )
    if first is not None:
        names = ", ".join(fr.name for fr in folder_runs[:3])
        more = f" and {len(folder_runs) - 3} more" if len(folder_runs) > 3 else ""
        notes.append(
            Note(
                "store-name",
                f"{first}: the folder runs are stored as {names}{more}",
                str(folder_runs[0].folder),
            )
        )


def _check_count(runs, pending, plan: InputPlan) -> None:
    """At least two runs to compare; say what a folder held when it was too few."""
    if len(plan.stores) >= 2:
        return
    if len(runs) == 1 and pending[0][2]:
        found = pending[0][2]
        what = f"holds one run ({found[0].name})" if len(found) == 1 else (
            f"holds {len(found)} runs, {len(plan.stores)} with a split step"
        )  # fmt: skip
        raise CompareError(
            f"{runs[0]} {what}; compare needs at least two runs (names, store paths, "
            "checkpoint folders or a folder of runs)",
            file=os.fspath(runs[0]),
        )
    raise CompareError(
        "compare needs at least two runs (names, store paths, checkpoint folders or a "
        "folder of runs)"
    )


def split_step(
    label: str, given: str, split: Mapping[str, int], keys: Sequence[str] = ()
) -> int | None:
    """A branch's split step: the mapping (by label, the input, its folder's name or
    another of its names), else a number in its name (split500, branch-500)."""
    for key in (label, given, Path(given).name, given.rstrip("/"), *keys):
        if key in split:
            return int(split[key])
    for text in (Path(given.rstrip("/")).name, label):
        m = _SPLIT_IN_NAME.search(text) or _BRANCH_IN_NAME.search(text)
        if m:
            return int(m.group(1))
    return None


def analyse_folders(
    plan: InputPlan,
    home,
    *,
    overwrite: bool,
    analyze_missing: bool,
    notes: list[Note],
    on_analyze: Callable | None = None,
) -> list[str]:
    """Analyse the folder runs into their stores (a plain re-run resumes or does nothing);
    the run folders analysed."""
    by_folder: dict[Path, list[_FolderRun]] = {}
    for fr in plan.folder_runs.values():
        by_folder.setdefault(fr.folder, []).append(fr)
    analysed: list[str] = []
    seen: set[tuple[str, str, str | None]] = set()
    for folder, frs in by_folder.items():
        if not analyze_missing:
            for fr in frs:
                if not store_path_for(fr.name, home).exists():
                    raise CompareError(
                        f"{fr.source.root}: not analysed yet; analyse it first "
                        f"({command_ref('analyze')}) or let compare analyse it",
                        file=fr.source.root,
                        option="analyze_missing",
                    )
            continue
        whole = len(frs) >= frs[0].count
        for group in [frs] if whole else [[fr] for fr in frs]:
            pattern = None if whole else glob.escape(group[0].source.name)
            result = _analyse(folder, group, home, pattern, overwrite, on_analyze)
            for note in [*result.notes, *(n for r in result.runs for n in r.notes)]:
                if (note.kind, note.message, note.path) not in seen:
                    seen.add((note.kind, note.message, note.path))
                    notes.append(note)
            stored = {Path(r.store_path).stem: Path(r.store_path) for r in result.runs}
            for fr in group:
                if fr.name not in stored:  # analyze names runs as _names predicts
                    raise CompareError(f"{folder}: run {fr.source.name} was not analysed")
                analysed.append(str(fr.source.root if fr.multi else folder))
    return analysed


def _analyse(folder: Path, group: list[_FolderRun], home, pattern, overwrite, on_analyze):
    """`analyze` of one folder under the chosen prefix; a store that cannot take it is
    reported with compare's options, naming the store and the folder."""
    prefix = "-".join(group[0].prefix) or None
    try:
        return analyze(
            folder, home=home, name=prefix, run=pattern, overwrite=overwrite,
            on_progress=on_analyze,
        )  # fmt: skip
    except StoreMismatchError as exc:
        store = Path(exc.file) if exc.file else None
        owner = next((fr for fr in group if store and fr.name == store.stem), group[0])
        raise CompareError(
            f"{owner.source.root}: its store {exc.file or '(unknown)'} "
            f"{_cause(exc)}; pass {_OVERWRITE} to rebuild that store from this folder",
            file=exc.file or owner.source.root,
            option="overwrite",
        ) from None


def _cause(exc: StoreMismatchError) -> str:
    """What the store says is wrong, without the options of `analyze` it suggests."""
    text = exc.message
    head = f"store {exc.file} "
    if text.startswith(head):
        text = text[len(head) :]
    cut = text.rfind("; use ")
    if cut > 0:
        return text[:cut]
    return "cannot take these checkpoints"
