"""Test hooks of the store's writer (used by tests/_store_crash_worker.py): when one of these
environment variables holds a path, the writer creates that file at the named point and
sleeps there, so that a test can kill -9 it exactly there."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["HOLD_REBUILD_ENV", "HOLD_WRITE_ENV", "hold_here"]

HOLD_WRITE_ENV = "SPECDYN_TEST_HOLD_WRITE"  # inside write_step, part of the step's data written
HOLD_REBUILD_ENV = "SPECDYN_TEST_HOLD_REBUILD"  # inside a rebuild, part of the data copied


def hold_here(flag: str) -> None:
    """Announce the hold point by creating the file `flag`, then wait to be killed."""
    Path(flag).write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
