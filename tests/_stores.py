"""Helpers for tests that edit a store by hand (to fake a flag, an old layout, another
step unit): after such an edit the store's checksums no longer match, so they are
written again, as a build would."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

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


def as_schema_3(path: Path) -> None:
    """Make a store look as schema 3 wrote it: checksums, but no ``docs`` root attribute,
    no description, units or dims attributes and no dimension scales."""
    with h5py.File(path, "r+", locking=False) as f:
        datasets: list[h5py.Dataset] = []
        f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        for ds in datasets:
            for attr in ("DIMENSION_LIST", "description", "units", "dims"):
                if attr in ds.attrs:
                    del ds.attrs[attr]
        for scale in ("step", "matrix", "pair"):
            if scale in f:
                del f[scale]
        del f.attrs["docs"]
        f.attrs["schema_version"] = 3
        del f[_checksums.GROUP]
        _checksums.seal(f, describe=False)


# What differs between two correct runs of one analysis: who ran them and when (and the
# checksums over those records); compare stores without it, and verify each instead.
VOLATILE = ("/provenance", "/steps/invocation", "/checksums")


def store_contents(path: Path) -> dict[str, bytes]:
    """Every dataset (raw bytes) and attribute of a store, minus what records the run."""
    out: dict[str, bytes] = {}
    with h5py.File(path, "r", locking=False) as f:

        def visit(name: str, obj) -> None:
            full = "/" + name
            if full.startswith(VOLATILE):
                return
            if isinstance(obj, h5py.Dataset):
                data = np.asarray(obj[()])
                # variable-length strings are object arrays: compare their values
                out[full] = (
                    repr(data.tolist()).encode() if data.dtype.kind == "O" else data.tobytes()
                )
            for key, value in obj.attrs.items():
                out[f"{full}@{key}"] = repr(value).encode()

        f.visititems(visit)
        for key, value in f.attrs.items():
            if key != "created":  # (its checksum is verified)
                out[f"/@{key}"] = repr(value).encode()
    return out
