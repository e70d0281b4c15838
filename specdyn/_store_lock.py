"""The one-writer lock of a store: ``flock`` on a lock file next to it."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from .errors import StoreError, StoreLockedError

try:
    import fcntl
except ImportError:  # not POSIX: no flock
    fcntl = None

NO_LOCK_ENV = "SPECDYN_NO_LOCK"

# errno values meaning "this filesystem cannot lock" rather than "someone holds it"
_UNSUPPORTED = {
    errno.ENOLCK,
    errno.EOPNOTSUPP,
    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
    errno.ENOSYS,
}


def lock_path_for(store_path: Path) -> Path:
    """The lock file of a store: ``<store>.lock`` beside it."""
    return store_path.with_name(store_path.name + ".lock")


class WriterLock:
    """An exclusive, non-blocking ``flock`` on ``<store>.lock``, holding ``"pid host"``.

    The kernel drops the lock when the process dies (kill -9 included), so a
    crash never leaves a store locked; the pid text is only for messages.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, store_path: Path) -> WriterLock:
        """Take the writer lock of `store_path` or raise StoreLockedError / StoreError."""
        path = lock_path_for(store_path)
        if os.environ.get(NO_LOCK_ENV) == "1":
            return cls(path, None)
        if fcntl is None:
            raise _unsupported(store_path, "this platform has no flock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot create the lock file {path} ({exc.strerror}); "
                "check that the workspace folder is writable or use another --home"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "pid unknown"
            raise StoreLockedError(
                f"store {store_path} is being written by another specdyn process ({who}); "
                "wait for it or use another --home/name"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                raise _unsupported(store_path, exc.strerror or "locking unsupported") from None
            raise StoreError(f"cannot lock {path} ({exc.strerror}); use another --home") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Clear the holder text and release the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock is released below whatever happens to the text
        finally:
            os.close(fd)


def _unsupported(store_path: Path, why: str) -> StoreError:
    """The error for a filesystem (or platform) without working locks."""
    return StoreError(
        f"cannot lock store {store_path}: the filesystem does not support file locks ({why}); "
        f"set {NO_LOCK_ENV}=1 to write without a lock if you make sure only one specdyn "
        "process writes this store, or use a local --home"
    )


def _holder_text(fd: int) -> str:
    """The pid recorded in a lock file (with the host when it is another machine)."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if not text:
        return ""
    if len(text) > 1 and text[1] != socket.gethostname():
        return f"{text[0]} on {text[1]}"
    return text[0]


def is_being_written(store_path: Path) -> bool:
    """Whether a live process holds the writer lock of `store_path` (never raises).

    A lock file whose recorded pid is dead on this host is stale (kill -9) and is
    not probed, so the probe cannot get in the way of a writer starting.
    """
    if fcntl is None:
        return False
    path = lock_path_for(store_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
        if not text:
            return False
        if len(text) > 1 and text[1] == socket.gethostname() and not _pid_alive(text[0]):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


def _pid_alive(pid_text: str) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
