"""The one-writer lock of a store: ``flock`` on a lock file, and a lock on the store itself.

A lock on a *path* breaks when the path is deleted: after ``rm run.h5.lock`` a second
writer creates a new lock file and locks that. So the writer also locks the store
file's inode (Linux: an open-file-description byte-range lock, which neither HDF5's own
``flock`` nor plain h5py readers see), keeps it across the rebuilds that rename a new
file over the store (`WriterLock.replace_store` locks the new file before it becomes
visible), and a second writer must get both. Both locks are the kernel's: they die with
the process (kill -9 included), so a crash never leaves a store locked.

Limits: without open-file-description locks (macOS, BSD) or on a filesystem that
refuses them, only the lock file guards the store, as before. Windows has no ``flock``:
writing needs ``SPECDYN_NO_LOCK=1`` there (one writer per store is then the user's job).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time
from pathlib import Path

from ..errors import StoreError, StoreLockedError
from ._layout import HOME, NAME

try:
    import fcntl
except ImportError:  # not POSIX: no flock
    fcntl = None

__all__ = [
    "NO_LOCK_ENV",
    "BUSY_WAIT_S",
    "STORE_LOCK_OFFSET",
    "WriterLock",
    "is_being_written",
    "lock_path_for",
]

NO_LOCK_ENV = "SPECDYN_NO_LOCK"

# A reader's probe (`is_being_written`) holds the lock file's flock for microseconds; a
# writer holds it for its whole run. Retrying this long keeps a probe from turning a
# starting writer away as "busy".
BUSY_WAIT_S = 0.25
_RETRY_SLEEP_S = 0.01
# The byte of the store the writer locks (advisory: it blocks no read or write).
STORE_LOCK_OFFSET = 0
# How often to reopen a path that was replaced between its open and its lock.
_REOPEN_TRIES = 5

# errno values meaning "this filesystem cannot lock" rather than "someone holds it"
_UNSUPPORTED = {
    errno.ENOLCK,
    errno.EOPNOTSUPP,
    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
    errno.ENOSYS,
}
_RANGE_UNSUPPORTED = _UNSUPPORTED | {errno.EINVAL}
_BUSY = {errno.EAGAIN, errno.EACCES}
# errno values of os.link meaning "no hard links here" (then the rename is used)
_NO_HARD_LINKS = _UNSUPPORTED | {errno.EPERM, errno.EXDEV, errno.EMLINK}
_RANGE_LOCKS = fcntl is not None and hasattr(fcntl, "F_OFD_SETLK")
_FLOCK_STRUCT = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def lock_path_for(store_path: Path) -> Path:
    """The lock file of a store: ``<store>.lock`` beside it."""
    return store_path.with_name(store_path.name + ".lock")


class WriterLock:
    """The writer lock of one store: an exclusive ``flock`` on ``<store>.lock`` (which
    holds ``"pid host"`` for messages) and, where the platform has them, a byte-range
    lock on the store file itself that survives the lock file's deletion.
    """

    def __init__(
        self, store_path: Path, path: Path, fd: int | None, store_fd: int | None = None
    ) -> None:
        self.store_path = store_path
        self.path = path
        self._fd = fd
        self._store_fd = store_fd

    @classmethod
    def acquire(cls, store_path: Path) -> WriterLock:
        """Take the writer lock of `store_path`.

        Args:
            store_path: the store file (it may not exist yet).

        Returns:
            The lock, held until `release`.

        Raises:
            StoreLockedError: another process holds the lock file or the store.
            StoreError: the lock file cannot be made (unwritable folder, a symbolic link
                or not a regular file), or the filesystem cannot lock.
        """
        path = lock_path_for(store_path)
        if os.environ.get(NO_LOCK_ENV) == "1":
            return cls(store_path, path, None)
        if fcntl is None:
            raise _unsupported(store_path, "this platform has no flock")
        fd = _take_lock_file(store_path, path)
        try:
            store_fd = _take_store(store_path, path)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return cls(store_path, path, fd, store_fd)

    def replace_store(self, new_file: Path) -> None:
        """Rename `new_file` (a rebuilt store beside it) over the store, locked first.

        The new file is locked before it becomes visible at the store path and the old
        one is unlocked only after, so the file at the store path is held by this
        writer at every instant. When the store did not exist at `acquire`, it is put in
        place only if it still does not (a hard link, which cannot overwrite).

        Raises:
            StoreLockedError: another process created or replaced the store meanwhile.
            OSError: the rename (or link) failed.
        """
        if self._fd is None:  # SPECDYN_NO_LOCK
            os.replace(new_file, self.store_path)
            return
        new_fd = _take_new_file(new_file, self.store_path)
        if new_fd is None:  # no byte-range locks here: the lock file alone guards the store
            os.replace(new_file, self.store_path)
            return
        try:
            held = self._store_fd
            if held is not None and _same_file(held, self.store_path):
                os.replace(new_file, self.store_path)
            else:
                _place_new_store(new_file, self.store_path)
        except BaseException:
            os.close(new_fd)
            raise
        old, self._store_fd = self._store_fd, new_fd
        if old is not None:
            os.close(old)

    def release(self) -> None:
        """Release the store's lock, then clear the holder text and release the lock
        file (idempotent)."""
        store_fd, self._store_fd = self._store_fd, None
        if store_fd is not None:
            os.close(store_fd)
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock is released below whatever happens to the text
        finally:
            os.close(fd)


def _take_lock_file(store_path: Path, path: Path) -> int:
    """An fd of `path` holding its exclusive flock, checked to still be the file at
    `path` (a deletion between the open and the lock would leave a lock on nothing)."""
    for _ in range(_REOPEN_TRIES):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(
                    f"the lock file {path} is a symbolic link; delete it (specdyn makes a "
                    "new one) and run the command again"
                ) from None
            raise StoreError(
                f"cannot create the lock file {path} ({exc.strerror}); "
                f"check that the workspace folder is writable or use another {HOME}",
                file=path,
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(
                    f"the lock file {path} is not a regular file; delete it (specdyn makes "
                    "a new one) and run the command again"
                )
            if not _wait_for_flock(fd):
                holder = _holder_text(fd)
                who = f"pid {holder}" if holder else "pid unknown"
                raise _busy(store_path, who)
            if _same_file(fd, path):
                return fd
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                raise _unsupported(store_path, exc.strerror or "locking unsupported") from None
            raise StoreError(
                f"cannot lock {path} ({exc.strerror}); use another {HOME}", file=path
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the path was deleted or replaced meanwhile: lock the file there now
    raise StoreError(
        f"the lock file {path} keeps being deleted or replaced by another process; "
        "stop it and run the command again"
    )


def _wait_for_flock(fd: int) -> bool:
    """Take LOCK_EX on `fd`, retrying for BUSY_WAIT_S; False when it stays held."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY_SLEEP_S)


def _take_store(store_path: Path, lock_path: Path) -> int | None:
    """An fd of the existing store holding its byte-range lock; None when there is no
    store yet or the platform or filesystem has no such locks."""
    if not _RANGE_LOCKS:
        return None
    for _ in range(_REOPEN_TRIES):
        try:
            fd, writable = _open_store(store_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(
                f"cannot open the store {store_path} to lock it ({exc.strerror}); check its "
                f"permissions or use another {HOME}",
                file=store_path,
            ) from None
        try:
            got = _lock_range(fd, writable)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _RANGE_UNSUPPORTED:
                return None
            raise StoreError(
                f"cannot lock the store {store_path} ({exc.strerror}); use another {HOME}",
                file=store_path,
            ) from None
        if not got:
            os.close(fd)
            raise _busy(
                store_path, f"pid unknown: its lock file {lock_path} was deleted or replaced"
            )
        if _same_file(fd, store_path):
            return fd
        os.close(fd)  # renamed over between the open and the lock: lock the new file
    raise StoreError(
        f"the store {store_path} keeps being replaced by another process; stop it and "
        "run the command again"
    )


def _open_store(store_path: Path) -> tuple[int, bool]:
    """(fd, writable) of the store: read-write when allowed (the lock is then taken
    atomically), else read-only (a read-only store may still be replaced by --overwrite)."""
    try:
        return os.open(store_path, os.O_RDWR), True
    except PermissionError:
        return os.open(store_path, os.O_RDONLY), False
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        return os.open(store_path, os.O_RDONLY), False


def _take_new_file(new_file: Path, store_path: Path) -> int | None:
    """An fd of the freshly built `new_file` holding its byte-range lock; None when
    this filesystem has no such locks."""
    if not _RANGE_LOCKS:
        return None
    fd = os.open(new_file, os.O_RDWR)
    try:
        got = _lock_range(fd, True)
    except OSError as exc:
        os.close(fd)
        if exc.errno in _RANGE_UNSUPPORTED:
            return None
        raise
    if not got:  # only a process that opened our temporary file could hold it
        os.close(fd)
        raise _busy(store_path, f"pid unknown: it holds {new_file}")
    return fd


def _place_new_store(new_file: Path, store_path: Path) -> None:
    """Put `new_file` at `store_path` only if nothing is there (a hard link cannot
    overwrite; without hard links, a check then a rename)."""
    try:
        os.link(new_file, store_path)
    except FileExistsError:
        raise _appeared(store_path) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(store_path):
            raise _appeared(store_path) from None
        os.replace(new_file, store_path)
        return
    try:
        os.unlink(new_file)
    except OSError:
        pass  # a second name of the store; the next writer removes it as a partial build


def _range_arg(kind: int) -> bytes:
    """A ``struct flock`` for one byte at STORE_LOCK_OFFSET (room to spare after it)."""
    return struct.pack(_FLOCK_STRUCT, kind, os.SEEK_SET, STORE_LOCK_OFFSET, 1, 0) + bytes(16)


def _lock_range(fd: int, writable: bool) -> bool:
    """Take the store's byte-range lock on `fd` (kept shared, so that only another
    writer's attempt conflicts with it); False when another open file holds it."""
    try:
        if writable:  # exclusive first: an atomic test-and-set, then downgraded
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _range_arg(fcntl.F_WRLCK))
        elif _range_taken(fd):
            return False
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _range_arg(fcntl.F_RDLCK))
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def _range_taken(fd: int) -> bool:
    """Whether another open file holds the store's byte-range lock (takes nothing)."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _range_arg(fcntl.F_WRLCK))
    return struct.unpack_from(_FLOCK_STRUCT, answer)[0] != fcntl.F_UNLCK


def _same_file(fd: int, path: Path) -> bool:
    """Whether `fd` is the file now at `path`."""
    try:
        here = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _busy(store_path: Path, who: str) -> StoreLockedError:
    """The error for a store another process writes."""
    return StoreLockedError(
        f"store {store_path} is being written by another specdyn process ({who}); "
        f"wait for it or use another {HOME}/{NAME}",
        file=store_path,
    )


def _appeared(store_path: Path) -> StoreLockedError:
    """The error for a store another process created while this one prepared it."""
    return StoreLockedError(
        f"store {store_path} was created or replaced by another process while this one "
        "prepared it; run the command again"
    )


def _unsupported(store_path: Path, why: str) -> StoreError:
    """The error for a filesystem (or platform) without working locks."""
    return StoreError(
        f"cannot lock store {store_path}: the filesystem does not support file locks ({why}); "
        f"set {NO_LOCK_ENV}=1 to write without a lock if you make sure only one specdyn "
        f"process writes this store, or use a local {HOME}",
        file=store_path,
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

    The store's own byte-range lock is tested without taking it, so it answers even
    when the lock file was deleted. A lock file whose recorded pid is dead on this host
    is stale (kill -9) and is not probed, so the probe cannot get in the way of a
    writer starting.
    """
    if fcntl is None:
        return False
    if _store_range_held(store_path):
        return True
    path = lock_path_for(store_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
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


def _store_range_held(store_path: Path) -> bool:
    """Whether a writer holds the store file's byte-range lock (False when unknown)."""
    if not _RANGE_LOCKS:
        return False
    try:
        fd = os.open(store_path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return _range_taken(fd)
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
