"""Where `analyze`'s checkpoints come from: a local folder, or a source that fetches each
step when it is needed (the hub, `specdyn.pythia`) and drops it afterwards.

The pipeline asks a `StepStream` for the order it will visit steps in (`schedule`),
then `acquire`s each step (blocking until its files are local), analyses it, and
`release`s it. A remote stream uses the schedule to fetch one step ahead while the
current one is analysed, and `release` to delete what it downloaded.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SpecdynError
from ..sources import Checkpoint, RunSource
from ..store import StepRecord, open_run


class StepStream(ABC):
    """The steps of one run and how to get each one's checkpoint (base: local files).

    name: the run's source name; root: what the store records as its source
    (a folder, or a hub URI); step_unit: "step" | "epoch"; available: every step
    the run has, ascending (the default agreement reference is the last one).
    """

    name: str
    root: str
    step_unit: str
    available: list[int]
    # a step whose checkpoint turns out unreadable while analysed: flag it and go on
    # (True for remote sweeps) or stop with the error (local folders)
    tolerate_failures: bool = False

    @abstractmethod
    def records(
        self,
        steps: Sequence[int],
        store_path: Path,
        on_hashed: Callable[[int, int], None] | None = None,
    ) -> list[StepRecord]:
        """The store's source record of each step in `steps`."""

    def schedule(self, order: Sequence[int]) -> None:
        """The steps the pipeline will acquire, in that order (lets a remote stream prefetch)."""
        return None  # local files: nothing to prefetch, delete or stop

    @abstractmethod
    def acquire(self, step: int) -> Checkpoint:
        """The local checkpoint of `step` (fetched first if need be)."""

    def release(self, step: int) -> None:
        """The pipeline is done with `step` (a remote stream deletes what it fetched)."""
        return None  # local files: nothing to prefetch, delete or stop

    def close(self) -> None:
        """Stop background work and clean up (idempotent)."""
        return None  # local files: nothing to prefetch, delete or stop


class LocalSteps(StepStream):
    """The checkpoints of a discovered local run (`specdyn.sources.RunSource`)."""

    def __init__(self, source: RunSource) -> None:
        self.source = source
        self.name = source.name
        self.root = str(Path(source.root).resolve())
        self.step_unit = source.step_unit
        self._by_step = {c.step: c for c in source.checkpoints}
        self.available = sorted(self._by_step)

    def acquire(self, step: int) -> Checkpoint:
        return self._by_step[step]

    def records(
        self,
        steps: Sequence[int],
        store_path: Path,
        on_hashed: Callable[[int, int], None] | None = None,
    ) -> list[StepRecord]:
        """Source records of local checkpoints.

        A step already done in the store keeps its stored sha256 when its files'
        size and mtime are unchanged, and is hashed now otherwise (so that a changed
        checkpoint is reported). A step still to compute gets sha256 "" here: it is
        hashed while it is analysed and the hash is written with its data.
        """
        known: dict[int, dict] = {}
        if store_path.exists():
            try:
                with open_run(store_path) as stored:
                    known = {int(s["step"]): s for s in stored.step_sources}
            except SpecdynError:
                known = {}
        records = []
        for step in steps:
            ckpt = self._by_step[step]
            size, mtime = _size_mtime(ckpt)
            old = known.get(ckpt.step)
            if old is None or not old.get("done"):
                sha = ""
            elif (
                old.get("source") == str(ckpt.path)
                and int(old.get("size", -1)) == size
                and float(old.get("mtime", -1.0)) == mtime
                and old.get("sha256")
            ):
                sha = str(old["sha256"])
            else:
                fp = ckpt.fingerprint()
                size, mtime, sha = fp.size, fp.mtime, fp.sha256
                if on_hashed is not None:
                    on_hashed(len(records), int(ckpt.step))
            records.append(
                StepRecord(
                    step=int(ckpt.step),
                    epoch=ckpt.epoch,
                    source=str(ckpt.path),
                    format=ckpt.format,
                    size=size,
                    mtime=mtime,
                    sha256=sha,
                    origin=ckpt.step_origin,
                )
            )
        return records


def _size_mtime(ckpt: Checkpoint) -> tuple[int, float]:
    """Total size and newest mtime of a checkpoint's weight files (no hashing)."""
    stats = [os.stat(f) for f in ckpt.files]
    return sum(s.st_size for s in stats), max(s.st_mtime for s in stats)
