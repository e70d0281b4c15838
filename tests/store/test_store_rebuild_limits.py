"""A store rebuild that cannot be written leaves the old store as it was (issue 15).

A store with two done steps meets two new checkpoints (a growth rebuild) or `--overwrite`
while the disk refuses the new file: a file size limit (`RLIMIT_FSIZE`, EFBIG), a full
filesystem (a small tmpfs, ENOSPC), a read-only filesystem (a read-only bind mount, EROFS)
or a folder without write permission (EACCES). The real CLI must exit 1 with one line
naming the store and what to do, print no h5py "Exception ignored" traceback, leave the
old store byte for byte as it was and no temporary file, and a re-run without the limit
must complete. The tmpfs and bind mounts live in a private mount namespace (`unshare -m`,
or `unshare -Urm` for a user that is not root); those tests are skipped where the kernel
or the container refuses one. Last, a store cut short: one line, and only `--overwrite`
replaces it.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import specdyn
from specdyn.cli import main

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "mlp-wd"
OLD = ("step_000000.pt", "step_000010.pt")  # done in the store before the rebuild
NEW = ("step_000020.pt", "step_000050.pt")  # the checkpoints that make it grow
STORE = "run.h5"  # the run folder is called "run"
# what a rebuild failure may say instead of an internal error: the store is kept, what to do
REMEDY = ("unchanged", "another --home", "free ", "re-run", "run the same command")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, int]:
    """(run folder with four checkpoints, a workspace whose store has the first two done,
    the size in bytes of the store rebuilt for all four)."""
    root = tmp_path_factory.mktemp("rebuild")
    run, base, grown = root / "run", root / "base", root / "grown"
    run.mkdir()
    for name in OLD:
        shutil.copy2(FIXTURE / name, run / name)
    specdyn.analyze(run, home=base)
    for name in NEW:
        shutil.copy2(FIXTURE / name, run / name)
    shutil.copytree(base, grown)
    specdyn.analyze(run, home=grown)
    return run, base, (grown / STORE).stat().st_size


def _steps(names) -> list[int]:
    return [int(n[len("step_") : -len(".pt")]) for n in names]


def _home(setup, tmp_path: Path) -> Path:
    """A copy of the two-step workspace for one test."""
    home = tmp_path / "home"
    shutil.copytree(setup[1], home)
    return home


def _cli(run: Path, home: Path, *extra: str, limit: int | None = None, prefix=()):
    """`python -m specdyn analyze run --home home -q` in a subprocess (optionally under
    RLIMIT_FSIZE = limit bytes, or behind a command prefix such as an unshare script)."""

    def fsize() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [*prefix, sys.executable, "-m", "specdyn", "analyze", str(run), "--home", str(home)]
    return subprocess.run(
        [*cmd, "-q", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=None if limit is None else fsize,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _resume(run: Path, home: Path, **options) -> None:
    """The same analysis without the limit, in this process (a subprocess start costs ~4 s)."""
    specdyn.analyze(run, home=home, **options)


def _assert_one_line_refusal(proc, store: Path, cause: str) -> None:
    """Exit 1 (not a signal, not an internal error) with one line naming the store."""
    err = proc.stderr
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    assert "Exception ignored" not in err and "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specdyn: error:"), err[-3000:]
    assert str(store) in lines[0] and cause in lines[0].lower(), lines[0]
    assert any(r in lines[0] for r in REMEDY), lines[0]


def _assert_no_leftovers(home: Path) -> None:
    left = sorted(p.name for p in home.iterdir() if p.name.endswith(".tmp") or "rebuild" in p.name)
    assert left == []


def _own_sigma(run: Path, step_file: str) -> dict[str, np.ndarray]:
    """Singular values of each weight matrix of one checkpoint, by torch (float64)."""
    state = torch.load(run / step_file, weights_only=True)["model_state_dict"]
    return {k: torch.linalg.svdvals(v.double()).numpy() for k, v in state.items() if v.ndim == 2}


def _assert_store_holds(run: Path, store: Path, files) -> None:
    """The store opens, its done steps are those of `files`, each σ row the checkpoint's own."""
    with specdyn.open_run(store) as opened:
        assert opened.steps.tolist() == _steps(files)
        for row, name in enumerate(files):
            own = _own_sigma(run, name)
            assert sorted(opened.matrices) == sorted(own)
            for matrix, sigma in own.items():
                np.testing.assert_allclose(opened.sigma(matrix)[row], sigma, rtol=1e-9, atol=1e-12)


def _assert_old_store_kept(setup, home: Path) -> None:
    run, base, _ = setup
    assert (home / STORE).read_bytes() == (base / STORE).read_bytes()
    _assert_store_holds(run, home / STORE, OLD)
    _assert_no_leftovers(home)


# ------------------------------------------------------------------ file size limit


def test_a_growth_rebuild_beyond_the_file_size_limit_keeps_the_old_store(setup, tmp_path):
    run, _, rebuilt = setup
    home = _home(setup, tmp_path)
    for fraction in (0.05, 0.97):  # below and above the old store's size (96 %)
        proc = _cli(run, home, limit=int(rebuilt * fraction))
        _assert_one_line_refusal(proc, home / STORE, "file too large")
        _assert_old_store_kept(setup, home)
    _resume(run, home)
    _assert_store_holds(run, home / STORE, OLD + NEW)
    _assert_no_leftovers(home)


def test_an_overwrite_beyond_the_file_size_limit_keeps_the_old_store(setup, tmp_path):
    run, _, rebuilt = setup
    home = _home(setup, tmp_path)
    proc = _cli(run, home, "--overwrite", limit=rebuilt // 2)
    _assert_one_line_refusal(proc, home / STORE, "file too large")
    _assert_old_store_kept(setup, home)
    _resume(run, home, overwrite=True)
    _assert_store_holds(run, home / STORE, OLD + NEW)
    _assert_no_leftovers(home)


# ------------------------------------------------------------------ mount namespaces


@pytest.fixture(scope="module")
def unshare(tmp_path_factory) -> list[str]:
    """The command prefix that runs a command in a private mount namespace where it may
    mount a tmpfs and remount a bind mount read-only; skips the test where none works."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(8)")
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    probe_dir = tmp_path_factory.mktemp("probe")
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" && mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1"'
    probe = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", str(probe_dir)], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    return prefix


def _sh(prefix: list[str], script: str, *args) -> list[str]:
    """A prefix for `_cli`: script runs in the namespace, then execs "$@" (the CLI)."""
    return [
        *prefix,
        "sh",
        "-c",
        f'{script} && shift {len(args)} && exec "$@"',
        "sh",
        *map(str, args),
    ]


def test_a_growth_rebuild_on_a_full_disk_keeps_the_old_store(setup, tmp_path, unshare):
    """A tmpfs holding the two-step workspace with room for half the rebuilt store."""
    run, base, rebuilt = setup
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in base.iterdir())  # whole pages
    size = used + 4096 + rebuilt // 2
    # the CLI runs on the tmpfs; what it left there is copied out before the namespace
    # (and its mount) goes away
    script = (
        'mount -t tmpfs -o size=$1 tmpfs "$2" && cp -a "$3"/. "$2"/ && "$5" -m specdyn '
        'analyze "$6" --home "$2" -q; rc=$?; cp -a "$2"/. "$4"/; exit $rc'
    )
    proc = subprocess.run(
        [*unshare, "sh", "-c", script, "sh", str(size), disk, base, out, sys.executable, run],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    _assert_one_line_refusal(proc, disk / STORE, "no space left on device")
    _assert_old_store_kept(setup, out)
    _resume(run, out)
    _assert_store_holds(run, out / STORE, OLD + NEW)


@pytest.mark.parametrize("lock", ["read-only", "writable"])
def test_a_growth_rebuild_on_a_read_only_filesystem_keeps_the_old_store(
    setup, tmp_path, unshare, lock
):
    """The whole workspace read-only (refused at the lock file), or all but the lock file
    (bound from a writable folder, so the rebuild itself meets EROFS)."""
    run, _, _ = setup
    home = _home(setup, tmp_path)
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1"'
    args: list = [home]
    if lock == "writable":
        spare = tmp_path / "spare"
        spare.mkdir()
        shutil.copy2(home / f"{STORE}.lock", spare / f"{STORE}.lock")
        script += f' && mount --bind "$2"/{STORE}.lock "$1"/{STORE}.lock'
        args.append(spare)
    proc = _cli(run, home, prefix=_sh(unshare, script, *args))
    _assert_one_line_refusal(proc, home / STORE, "read-only file system")
    _assert_old_store_kept(setup, home)
    _resume(run, home)
    _assert_store_holds(run, home / STORE, OLD + NEW)


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory) -> list[str]:
    """A command prefix under which folder permissions apply: none for a user that is not
    root; for root, a new user namespace (`unshare -U`), where root keeps its uid but
    loses the capability to override the permissions of files outside it."""
    if os.geteuid() != 0:
        return []
    folder = tmp_path_factory.mktemp("no-write")
    folder.chmod(0o555)
    try:
        probe = subprocess.run(
            ["unshare", "-U", "sh", "-c", 'touch "$1"/f', "sh", str(folder)],
            capture_output=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.skip("root, and no unshare(1) to give up the permission override")
    finally:
        folder.chmod(0o755)
    if probe.returncode == 0 or b"denied" not in probe.stderr:
        pytest.skip(f"root, and unshare -U keeps the override: {probe.stderr.decode().strip()}")
    return ["unshare", "-U"]


def test_a_growth_rebuild_in_a_folder_without_write_permission_keeps_the_old_store(
    setup, tmp_path, unprivileged
):
    run, _, _ = setup
    home = _home(setup, tmp_path)
    home.chmod(0o555)
    try:
        proc = _cli(run, home, prefix=unprivileged)
    finally:
        home.chmod(0o755)
    _assert_one_line_refusal(proc, home / STORE, "permission denied")
    _assert_old_store_kept(setup, home)
    _resume(run, home)
    _assert_store_holds(run, home / STORE, OLD + NEW)


# ------------------------------------------------------------------ a truncated store


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_a_truncated_store_is_one_line_and_only_overwrite_replaces_it(
    setup, tmp_path, capsys, keep
):
    """A store cut short (a copy that ran out of room): reading and growing it are one line
    each naming the file, it is left as it is, and `--overwrite` rebuilds it."""
    run, _, _ = setup
    home = _home(setup, tmp_path)
    store = home / STORE
    os.truncate(store, int(store.stat().st_size * keep))
    cut = store.read_bytes()
    for argv, hint in (
        (["info", str(store)], "pass a store written by specdyn analyze"),
        (["analyze", str(run), "--home", str(home), "-q"], "use --overwrite to replace it"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("specdyn: error:"), err
        assert str(store) in lines[0] and hint in lines[0], lines[0]
        assert "internal error" not in err and "Traceback" not in err
        assert store.read_bytes() == cut
    assert main(["analyze", str(run), "--home", str(home), "-q", "--overwrite"]) == 0
    _assert_store_holds(run, store, OLD + NEW)
    _assert_no_leftovers(home)
