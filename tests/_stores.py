"""Helpers for tests that edit a store by hand (to fake a flag, an old layout, another
step unit): after such an edit the store's checksums no longer match, so they are
written again, as a build would."""

from __future__ import annotations

from pathlib import Path

import h5py

from specdyn.store import _checksums


def reseal(path: Path) -> None:
    """Recompute every checksum of a store edited in place (test fixtures only)."""
    with h5py.File(path, "r+", locking=False) as f:
        if _checksums.GROUP in f:
            del f[_checksums.GROUP]
        _checksums.seal(f)


def strip_checksums(path: Path) -> None:
    """Make a store look as specdyn 0.1.0 wrote it: schema 2, no checksums."""
    with h5py.File(path, "r+", locking=False) as f:
        if _checksums.GROUP in f:
            del f[_checksums.GROUP]
        if "checksum" in f.attrs:
            del f.attrs["checksum"]
        f.attrs["schema_version"] = 2
