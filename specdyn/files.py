"""Writing a file atomically: into a temporary file beside it, then renamed over it.

Readers see the old file or the new one, never half of one, whatever happens to the
writer (an exception, kill -9, a full disk): the rename is the only step that changes
what the path holds, and it happens after the new bytes are durable. Every writer of
specdyn that replaces a whole file (a store rebuild, a comparison store, a pruned
checkpoint, a demo checkpoint) goes through `atomic_output`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "fsync_dir", "fsync_path"]


@contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    temp_name: str | None = None,
    replace: Callable[[Path, Path], object] = os.replace,
) -> Iterator[Path]:
    """Write `path` atomically: the body writes the yielded temporary path, which then
    takes the place of `path`.

    On a normal exit the temporary file is made durable (fsync), renamed over `path`
    by `replace`, and the rename made durable (fsync of the folder, where the
    filesystem allows it). On an exception, from the body or from those steps, the
    temporary file is removed and the exception propagates: `path` keeps what it held.
    A process killed mid-write leaves `path` intact and the temporary file behind;
    whoever names temporary files is the one to recognise and remove such leftovers.

    Args:
        path: the file to write; its folder must exist.
        temp_name: the temporary file's name in the same folder (a rename is atomic
            only within one filesystem); default ``.<name>.tmp-<pid>``, hidden and
            distinct per process.
        replace: puts the finished temporary file at `path`, called as
            ``replace(temp, path)``; `os.replace` by default (a store's writer lock
            passes its own, which locks the new file before it becomes visible).

    Yields:
        The temporary path (nothing exists there yet).

    Raises:
        ValueError: `temp_name` is not a plain file name, or is `path`'s own name.
        OSError: the fsync or the rename failed (the temporary file is removed).
    """
    path = Path(path)
    name = temp_name if temp_name is not None else f".{path.name}.tmp-{os.getpid()}"
    if not name or Path(name).name != name or name == path.name:
        raise ValueError(f"temp_name {name!r} must be a file name other than {path.name!r}")
    temp = path.with_name(name)
    try:
        yield temp
        fsync_path(temp)
        replace(temp, path)
    except BaseException:
        _remove_quietly(temp)
        raise
    fsync_dir(path.parent)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Make the bytes of the file at `path` durable (written by any means, now closed).

    Raises:
        OSError: the file cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in `folder` durable (best effort: not every filesystem allows it,
    so this never raises)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    """Remove a temporary file if it is there (a failure to remove it hides nothing)."""
    try:
        path.unlink()
    except OSError:
        pass
