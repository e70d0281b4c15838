"""The workspace: the folder holding one store per run, and how runs are addressed.

The workspace is ``--home DIR``, else the environment variable ``SPECDYN_HOME``,
else ``./specdyn-runs`` (created only when a store is written). A run is
addressed by its name (the store ``<home>/<name>.h5``) or by a path to a store
file; with neither, the workspace's only run (docs/runs.md#workspace-and-run-names).

This module only deals in paths; `list_runs` (``_listing``) reads each store through
`Run`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunNotFoundError, StoreError, command_ref
from ._layout import HOME

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "STORE_SUFFIX",
    "resolve_home",
    "resolve_run",
    "store_files",
    "store_path_for",
]

HOME_ENV = "SPECDYN_HOME"
DEFAULT_HOME = "specdyn-runs"
STORE_SUFFIX = ".h5"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The workspace folder (absolute; not created here).

    Args:
        home: the ``--home`` value; when None, ``$SPECDYN_HOME`` if set and not
            empty, else ``./specdyn-runs`` in the current directory.

    Returns:
        The folder as an absolute path (``~`` expanded, symlinks kept).
    """
    if home is None or str(home) == "":
        home = os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(home).expanduser().absolute()


def store_path_for(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """The store file of run `name` in the workspace: ``<home>/<name>.h5``.

    Raises:
        StoreError: `name` is empty, ``.``/``..``, or holds a path separator or
            a NUL byte (a run name is a plain file name).
    """
    _check_name(name)
    return resolve_home(home) / f"{name}{STORE_SUFFIX}"


def _check_name(name: str) -> None:
    """Raise StoreError unless `name` can be a store file name."""
    bad = not name or name in (".", "..") or "\0" in name
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if bad or any(s in name for s in seps):
        raise StoreError(
            f"run name {name!r} is not a plain name (no path separators, not empty, not '.' or '..'); "
            "pick a name such as 'mlp-wd' (the store is <home>/<name>.h5)"
        )


def store_files(folder: Path) -> list[Path]:
    """The store files directly in `folder`, sorted by name (hidden files left out)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.name.endswith(STORE_SUFFIX) and not p.name.startswith(".") and p.is_file()
    )


def _names_line(stores: list[Path], limit: int = 10) -> str:
    """The run names of `stores`, comma-separated, the first `limit` of them."""
    names = [p.name[: -len(STORE_SUFFIX)] for p in stores]
    text = ", ".join(names[:limit])
    if len(names) > limit:
        text += f", ... ({len(names) - limit} more)"
    return text


def resolve_run(
    name_or_path: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Path:
    """The store file a run reference points to.

    Args:
        name_or_path: a run name in the workspace (tried first), or a path to a
            store file; None means the workspace's only run.
        home: the workspace (see `resolve_home`).

    Returns:
        The store path (it exists and is a file; its content is not checked).

    Raises:
        RunNotFoundError: no such run; the message lists the workspace's runs,
            or says that the workspace is empty or missing and which folder was used.
    """
    folder = resolve_home(home)
    stores = store_files(folder)
    if name_or_path is None:
        if len(stores) == 1:
            return stores[0]
        if not stores:
            state = "is empty" if folder.is_dir() else "does not exist"
            raise RunNotFoundError(
                f"no runs: the workspace {folder} {state}; analyse checkpoints into it first "
                f"({command_ref('analyze')}) or pass {HOME} or a store path",
                file=folder,
            )
        raise RunNotFoundError(
            f"{len(stores)} runs in {folder}: {_names_line(stores)}; name the one you want"
        )
    text = os.fspath(name_or_path)
    try:
        candidate = store_path_for(text, folder)
    except StoreError:
        candidate = None
    if candidate is not None and candidate.is_file():
        return candidate
    path = Path(text).expanduser()
    if path.is_file():
        return path
    listing = (
        f"runs there: {_names_line(stores)}"
        if stores
        else ("it holds no runs" if folder.is_dir() else "it does not exist")
    )
    if path.is_dir():
        raise RunNotFoundError(
            f"{path} is a folder, not a store, and no run is named {text!r} in the workspace "
            f"{folder} ({listing}); pass a run name or a .h5 store path"
        )
    raise RunNotFoundError(
        f"no run named {text!r} in the workspace {folder} ({listing}) and no store file "
        f"at {path}; check the name, {HOME}, or the path",
        file=path,
    )
