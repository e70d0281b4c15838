"""An older commit of this repository, checked out beside it for a same-run comparison."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def baseline_worktree(revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision` in a temporary folder, removed afterwards;
    put it first on a child's ``PYTHONPATH`` to run that commit's specdyn."""
    worktree = Path(tempfile.mkdtemp(prefix="specdyn-baseline-")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield worktree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
            capture_output=True,
        )
