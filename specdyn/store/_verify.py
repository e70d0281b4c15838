"""`verify`: check every checksum of a run's store, and optionally drop what is damaged
(``specdyn verify RUN [--repair]``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import StoreError
from . import _checksums as checksums
from . import _layout as layout
from ._build import remove_partial_builds, replace_with
from ._lock import WriterLock
from ._plan import read_contents, updated_plan
from ._workspace import resolve_run

__all__ = ["VerifyReport", "verify", "verify_store"]


@dataclass
class VerifyReport:
    """What `verify` found in one store.

    path: the store file; name: the run; schema_version: the store's schema;
    checked: whether the store has checksums (schema 3 and later; older stores cannot
    be checked until a writer adds them); rows_checked: (row, dataset) digests compared;
    damage: every damaged piece (`Damage`: section, step, row, what); uncommitted:
    (section, step) of rows written in full but not marked done (a writer killed
    between data and flag, or a flag cleared by damage; the next analysis computes them
    again); repaired: the damaged rows were dropped from the store (`repair=True`);
    dropped: one line per row dropped.
    """

    path: Path
    name: str
    schema_version: int
    checked: bool
    rows_checked: int = 0
    damage: list[checksums.Damage] = field(default_factory=list)
    uncommitted: list[tuple[str, int]] = field(default_factory=list)
    repaired: bool = False
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the store has checksums and nothing is damaged (or all of it was
        dropped by the repair)."""
        return self.checked and (not self.damage or self.repaired)

    @property
    def damaged_steps(self) -> list[int]:
        """The steps with a damaged row, ascending."""
        return sorted({d.step for d in self.damage if d.step is not None})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (for ``--json``)."""
        return {
            "path": str(self.path),
            "name": self.name,
            "schema_version": self.schema_version,
            "checked": self.checked,
            "ok": self.ok,
            "rows_checked": self.rows_checked,
            "damage": [
                {"section": d.section, "step": d.step, "row": d.row, "what": d.what}
                for d in self.damage
            ],
            "damaged_steps": self.damaged_steps,
            "uncommitted": [{"section": s, "step": t} for s, t in self.uncommitted],
            "repaired": self.repaired,
            "dropped": list(self.dropped),
        }


def verify(
    run: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    repair: bool = False,
) -> VerifyReport:
    """Check every checksum of a run's store: the content written when it was built and
    every row written since (σ, metrics, notes, alignment, agreement, kept vectors,
    flags, provenance).

    Args:
        run: a run name in the workspace or a store path; None for the only run.
        home: the workspace (default ``$SPECDYN_HOME``, else ``./specdyn-runs``).
        repair: drop the damaged rows: the store is rebuilt without them (they become
            not done, so the next ``analyze`` of the run's checkpoints computes them
            again; a damaged flag is cleared, a damaged provenance record replaced by one
            saying so). Damage in content written at build cannot be repaired: re-run
            ``analyze`` with ``overwrite=True``.

    Returns:
        A `VerifyReport` (``report.ok`` tells whether the store is intact).

    Raises:
        RunNotFoundError: no such run.
        StoreError: not a specdyn store, a newer schema, unreadable; with `repair`,
            damage that cannot be repaired, or the store is being written.
    """
    return verify_store(resolve_run(run, home), repair=repair)


def verify_store(path: str | os.PathLike[str], repair: bool = False) -> VerifyReport:
    """`verify` of the store file `path`."""
    path = Path(path)
    if repair:
        return _repair(path)
    with layout.open_checked(path) as f:
        return _report(path, f)[0]


def _report(path: Path, f: Any) -> tuple[VerifyReport, checksums.FileScan]:
    """The report of an open store file, and the scan it comes from."""
    try:
        found = checksums.scan(f)
        name = layout.attr_str(f, "run_name") or path.stem
        schema = int(f.attrs["schema_version"])
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise layout.damaged(path, exc) from None
    report = VerifyReport(
        path=path,
        name=name,
        schema_version=schema,
        checked=found.checked,
        rows_checked=found.rows_checked,
        damage=found.damage,
        uncommitted=found.uncommitted,
    )
    return report, found


def _repair(path: Path) -> VerifyReport:
    """Verify `path` under its writer lock and rebuild it without its damaged rows."""
    lock = WriterLock.acquire(path)
    try:
        remove_partial_builds(path)
        with layout.open_checked(path) as old:
            report, found = _report(path, old)
            if not report.damage:
                return report
            if found.static_damage:
                raise StoreError(
                    f"{path}: cannot repair: {found.static_damage[0].describe()} is "
                    f"damaged, and every step depends on it; {layout.REBUILD}",
                    file=path,
                )
            stored = read_contents(old, path)
            stored.done = {
                r.step: bool(t)
                for r, t in zip(stored.plan.steps, found.trusted["values"], strict=False)
            }
            plan, _, _ = updated_plan(stored, replace(stored.plan, problems=None), force=True)
            replace_with(path, plan, old=old, lock=lock, trusted=found.trusted)
        report.repaired = True
        report.dropped = [
            f"{line}: {checksums.fate(first)}"
            for first, line in checksums.damage_by_row(report.damage)
        ]
        return report
    finally:
        lock.release()
