"""Check: the stores this tree writes equal those an older commit writes, dataset by dataset.

A refactor of the store must not change what it writes. Both trees analyse the same
fixtures in their own process (the older one checked out into a temporary git worktree and
put first on the child's ``PYTHONPATH``), through the paths that write a store: a fresh
store with singular vectors, a values-only store grown into a full one (a rebuild that
copies done rows), ``--overwrite``, a run with training metrics, a comparison store and the
results file of magnitude pruning (``prune.h5``).
Every group, dataset (shape, dtype, storage layout, values bit for bit, NaN included) and
attribute must match; provenance records, creation times and the package version are
left out, since they describe the invocation.

    python benchmarks/check_store_bytes.py                  # against HEAD
    python benchmarks/check_store_bytes.py --baseline 8edf5e5
    python benchmarks/check_store_bytes.py --baseline 30079fc --added /steps/origin

``--added PATH`` names a dataset or group that this tree adds on purpose (a schema
addition): it is listed, and everything else must still match. ``--added OBJECT@NAME``
leaves an attribute out (``/@schema_version`` when the schema is bumped on purpose):

    python benchmarks/check_store_bytes.py --baseline 9634a12 --added /checksums \
        --added /@checksum --added /@schema_version
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from _baseline import baseline_worktree

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
# Describe the invocation, not the analysis: their values differ from run to run.
SKIPPED_ATTRIBUTES = {"created", "specdyn_version"}
SKIPPED_DATASETS = {"/provenance/record"}
# Paths into each side's own workspace: compared by file name.
WORKSPACE_PATHS = {"/runs/store"}


def _write_stores(home: Path) -> None:
    """Write every store of the check into `home` with the specdyn found on sys.path."""
    import specdyn

    cpu = specdyn.ComputeOptions(device="cpu")
    mlp = FIXTURES / "mlp-wd"
    specdyn.analyze(mlp, home=home, name="fresh", compute=cpu)
    specdyn.analyze(mlp, home=home, name="grown", steps="0,10,20", vectors=None, compute=cpu)
    # a vector option given: a plain re-run keeps a values-only store values-only
    specdyn.analyze(mlp, home=home, name="grown", vectors=specdyn.VectorOptions(k=100), compute=cpu)
    specdyn.analyze(mlp, home=home, name="rebuilt", steps="0,10", compute=cpu)
    specdyn.analyze(mlp, home=home, name="rebuilt", overwrite=True, compute=cpu)
    specdyn.analyze(FIXTURES / "cnn-lightning", home=home, name="lightning", compute=cpu)
    specdyn.analyze(FIXTURES / "mlp-nowd", home=home, name="nowd", compute=cpu)
    specdyn.compare(["fresh", "nowd"], home=home, name="wd-vs-nowd", device="cpu")
    from specdyn.prune import prune_magnitude

    prune_magnitude(mlp, 0.2, out=home / "masks", control="random", k=16, device="cpu")
    print(specdyn.__file__)


def _differences(a: h5py.File, b: h5py.File, added: frozenset[str] = frozenset()) -> list[str]:
    """Every way the two files differ, one line each (empty when they are equal); members
    of `a` named in `added` are left out of the comparison."""
    out: list[str] = []

    def attributes(x: h5py.HLObject, y: h5py.HLObject) -> None:
        names = sorted(set(x.attrs) | set(y.attrs))
        for name in names:
            if name in SKIPPED_ATTRIBUTES or f"{x.name}@{name}" in added:
                continue
            if name not in x.attrs or name not in y.attrs:
                out.append(f"{x.name}: attribute {name} only on one side")
            elif not _same(np.asarray(x.attrs[name]), np.asarray(y.attrs[name])):
                out.append(f"{x.name}: attribute {name} differs")

    def visit(x: h5py.Group, y: h5py.Group) -> None:
        attributes(x, y)
        mine = [k for k in x.keys() if f"{x.name.rstrip('/')}/{k}" not in added]
        if mine != list(y.keys()):
            out.append(f"{x.name}: members {mine} != {list(y.keys())}")
            return
        for key in mine:
            u, v = x[key], y[key]
            if isinstance(u, h5py.Group) != isinstance(v, h5py.Group):
                out.append(f"{u.name}: a group on one side only")
            elif isinstance(u, h5py.Group):
                visit(u, v)
            else:
                attributes(u, v)
                if u.name not in SKIPPED_DATASETS:
                    out.extend(_dataset_differences(u, v))

    visit(a, b)
    return out


def _dataset_differences(u: h5py.Dataset, v: h5py.Dataset) -> list[str]:
    """How two datasets differ: shape, type, storage or values."""
    described = [
        (d.shape, d.dtype, d.chunks, d.compression, d.id.get_create_plist().get_layout())
        for d in (u, v)
    ]
    if described[0] != described[1]:
        return [f"{u.name}: {described[0]} != {described[1]}"]
    x, y = u[()], v[()]
    if u.name in WORKSPACE_PATHS:
        x, y = ([Path(p.decode()).name for p in d] for d in (x, y))
        return [] if x == y else [f"{u.name}: file names differ"]
    return [] if _same(x, y) else [f"{u.name}: values differ"]


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal in type, shape and bytes (so NaN equals NaN; strings compared as stored)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype == object:
        return x.tolist() == y.tolist()
    return x.tobytes() == y.tobytes()


def _run(code_root: Path | None, home: Path) -> str:
    """Write the stores in a child process importing specdyn from `code_root` (None: this
    tree); the file specdyn was imported from."""
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_root), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(home)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    """Write the stores with both trees and report every difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    parser.add_argument(
        "--added",
        action="append",
        default=[],
        help="an HDF5 path this tree adds on purpose (repeatable), e.g. /steps/origin",
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _write_stores(args.child)
        return
    scratch = Path(tempfile.mkdtemp(prefix="check-store-bytes-"))
    with baseline_worktree(args.baseline) as worktree:
        homes = {"now": scratch / "now", "baseline": scratch / "baseline"}
        for label, root in (("now", None), ("baseline", worktree)):
            homes[label].mkdir()
            package = _run(root, homes[label])
            if not package.startswith(str(worktree if root else REPO)):
                raise SystemExit(f"{label}: specdyn came from {package}")
        stores = sorted(p.relative_to(homes["now"]) for p in homes["now"].rglob("*.h5"))
        theirs = sorted(p.relative_to(homes["baseline"]) for p in homes["baseline"].rglob("*.h5"))
        if stores != theirs:
            raise SystemExit(f"different stores: {stores} != {theirs}")
        failures = 0
        for rel in stores:
            with (
                h5py.File(homes["now"] / rel, "r") as a,
                h5py.File(homes["baseline"] / rel, "r") as b,
            ):
                diffs = _differences(a, b, frozenset(args.added))
                extra = [p for p in args.added if p in a and p not in b]
            failures += bool(diffs)
            note = f" (added: {', '.join(extra)})" if extra else ""
            print(f"{rel}: " + ("equal" if not diffs else "DIFFERENT") + note)
            for line in diffs[:20]:
                print(f"    {line}")
        print(f"{len(stores) - failures}/{len(stores)} stores equal to {args.baseline}'s")
        raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
