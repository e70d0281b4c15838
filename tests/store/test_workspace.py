"""The workspace: --home resolution, run names and paths, listing runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import _store_crash_worker as worker
import h5py
import pytest

from specdyn.errors import RunNotFoundError, StoreError
from specdyn.store import (
    SCHEMA_VERSION,
    RunSummary,
    StoreWriter,
    list_runs,
    open_run,
    resolve_home,
    resolve_run,
    store_path_for,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (
        "SPECDYN_HOME",
        "SPECDYN_NO_LOCK",
        "SPECDYN_TEST_HOLD_WRITE",
        "SPECDYN_TEST_HOLD_REBUILD",
    ):
        monkeypatch.delenv(name, raising=False)


def _store(home: Path, name: str, known=(0, 10), write=(0, 10)) -> Path:
    """A small store `<home>/<name>.h5` with `write` of its `known` steps done."""
    path = store_path_for(name, home)
    worker.write_store(path, list(known), write=list(write))
    return path


def test_home_is_the_option_else_the_environment_else_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_home() == tmp_path / "specdyn-runs"
    assert not (tmp_path / "specdyn-runs").exists()  # only created when a store is written
    monkeypatch.setenv("SPECDYN_HOME", str(tmp_path / "env-home"))
    assert resolve_home() == tmp_path / "env-home"
    assert resolve_home("given") == tmp_path / "given"
    assert resolve_home(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_home("~/runs") == tmp_path / "user" / "runs"


def test_store_path_for_takes_plain_names_only(tmp_path):
    assert store_path_for("mlp-wd", tmp_path) == tmp_path / "mlp-wd.h5"
    assert store_path_for("pythia-70m.step[0]", tmp_path) == tmp_path / "pythia-70m.step[0].h5"
    for bad in ("a/b", "", "..", ".", "x\0y"):
        with pytest.raises(StoreError, match="not a plain name"):
            store_path_for(bad, tmp_path)


def test_a_store_is_written_where_the_workspace_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = store_path_for("run")
    worker.write_store(path, [0])
    assert (tmp_path / "specdyn-runs" / "run.h5").is_file()
    with open_run() as run:  # the only run of the default workspace
        assert run.path == tmp_path / "specdyn-runs" / "run.h5"


def test_resolve_run_by_name_by_path_or_the_only_run(tmp_path, monkeypatch):
    home = tmp_path / "ws"
    a = _store(home, "a")
    assert resolve_run(None, home) == a
    assert resolve_run("a", home) == a
    assert resolve_run(str(a), home) == a
    assert resolve_run(a, tmp_path / "elsewhere") == a
    monkeypatch.chdir(home)
    assert resolve_run("a.h5", tmp_path / "elsewhere") == Path("a.h5")
    b = _store(home, "b")
    assert resolve_run("b", home) == b
    with pytest.raises(RunNotFoundError, match=r"2 runs in .*ws: a, b; name the one you want"):
        resolve_run(None, home)


def test_resolve_run_errors_name_the_workspace(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(
        RunNotFoundError, match=f"workspace {missing} does not exist.* or pass home or a store"
    ) as err:
        resolve_run(None, missing)
    # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
    assert "(specdyn analyze) or pass --home or a store path" in err.value.render(cli=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunNotFoundError, match=f"workspace {empty} is empty"):
        resolve_run(None, empty)
    home = tmp_path / "ws"
    _store(home, "mlp")
    with pytest.raises(
        RunNotFoundError, match=f"no run named 'cnn' in the workspace {home} \\(runs there: mlp\\)"
    ):
        resolve_run("cnn", home)
    with pytest.raises(RunNotFoundError, match="is a folder, not a store"):
        resolve_run(str(tmp_path), home)
    with pytest.raises(RunNotFoundError, match="holds no runs"):
        resolve_run("cnn", empty)


def test_list_runs_reports_each_store_and_never_raises(tmp_path):
    home = tmp_path / "ws"
    assert list_runs(home) == []  # a missing workspace has no runs
    _store(home, "done", known=(0, 10), write=(0, 10))
    _store(home, "half", known=(0, 10, 20), write=(10,))
    (home / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (home / "notes.txt").write_text("not a store")
    (home / ".half.h5.rebuild-1.tmp").write_bytes(b"")
    runs = {r.name: r for r in list_runs(home)}
    assert sorted(runs) == ["broken", "done", "half"]
    done = runs["done"]
    assert isinstance(done, RunSummary)
    assert (done.steps_done, done.steps_total, done.matrices) == (2, 2, len(worker.SMALL))
    assert done.status == "complete" and done.schema_version == SCHEMA_VERSION
    assert done.path == str(home / "done.h5") and len(done.modified) == 19
    half = runs["half"]
    assert (half.steps_done, half.steps_total, half.status) == (1, 3, "partial")
    broken = runs["broken"]
    assert broken.status.startswith("unreadable: ") and "not an HDF5 file" in broken.status
    assert broken.schema_version is None and broken.steps_total == 0


def test_list_runs_shows_a_store_being_written(tmp_path):
    home = tmp_path / "ws"
    path = store_path_for("live", home)
    with StoreWriter.open(
        path,
        run_name="live",
        source_root="/ckpts/run",
        step_unit="step",
        steps=worker.step_records([0, 10]),
        matrices=worker.matrix_records(),
        skipped=[],
        aliases={},
        options={},
        provenance={},
    ):
        [live] = list_runs(home)
        assert live.status == "being written"
    [after] = list_runs(home)
    assert after.status == "partial"
    # a lock file left by a killed writer (its pid is gone) does not count
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    Path(str(path) + ".lock").write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")
    [stale] = list_runs(home)
    assert stale.status == "partial"
    assert os.path.exists(str(path) + ".lock")


def test_list_runs_reports_a_newer_schema_as_unreadable(tmp_path):
    home = tmp_path / "ws"
    path = _store(home, "future")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    [run] = list_runs(home)
    assert run.status.startswith("unreadable: ") and "upgrade specdyn" in run.status
