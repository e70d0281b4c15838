"""A hostile hub endpoint must not touch files outside the hub cache (issue 22, finding 2).

Each test starts a loopback FakeHub that lies about one value which reaches a path (an LFS
sha256, a branch name, a commit, a file name, the ETag / X-Repo-Commit of a resolve answer),
builds `victim/` beside the cache with files a path built from that value would hit, runs
the real code path (`specdyn.pythia`, the CLI, or `Hub` fetch/drop) and checks that
everything outside the cache is unchanged (names, kinds, sizes, mtimes, contents) and that
the refusal is a one-line HubError naming the revision.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import types
from pathlib import Path

import pytest
import torch
from _fake_hub import hub_env

from specdyn.cli import main
from specdyn.pythia import Branch, Hub, HubError, HubFile, HubRevision, HubSteps, pythia

REPO = "EleutherAI/pythia-evil"
BIN = "pytorch_model.bin"
CONFIG = json.dumps({"hidden_size": 4}).encode()
VICTIM_FILES = {  # what a glob "<sha256>*.incomplete" or a "<sha256>.lock" would hit
    "precious": b"the user's own file",
    "precious.incomplete": b"x" * 1000,
    "precious1.incomplete": b"y" * 2000,
    "precious.lock": b"held",
    "pytorch_model.bin": b"not weights",
}
OLD = 1_000_000_000  # mtime of every victim file (s): any rewrite shows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(step: int) -> bytes:
    """A tiny torch checkpoint (two matrices), different per step."""
    g = torch.Generator().manual_seed(step)
    sd = {"a.weight": torch.randn(6, 4, generator=g), "b.weight": torch.randn(3, 6, generator=g)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.fixture
def repo(hub):
    """REPO with step4 and step8, each config.json + pytorch_model.bin."""
    r = hub.add_repo(REPO)
    for step in (4, 8):
        r.add_branch(f"step{step}", {"config.json": CONFIG, BIN: _weights(step)})
    return r


@pytest.fixture
def env(monkeypatch, hub, tmp_path):
    return hub_env(monkeypatch, hub, tmp_path / "hf")


@pytest.fixture
def victim(tmp_path):
    """tmp_path/victim, outside the cache, with the user's files (old mtimes)."""
    folder = tmp_path / "victim"
    folder.mkdir()
    for name, data in VICTIM_FILES.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, (OLD, OLD))
    return folder


def _repo_folder(env) -> Path:
    return env.cache_dir / ("models--" + REPO.replace("/", "--"))


def _outside(tmp_path: Path) -> dict[str, tuple]:
    """Everything under tmp_path but outside HF_HOME (the client's) and the workspace:
    kind, size, mtime, content hash or link target of each entry."""
    out = {}
    for path in sorted(tmp_path.rglob("*")):
        rel = path.relative_to(tmp_path)
        if rel.parts[0] in ("hf", "ws"):
            continue
        st = path.lstat()
        if path.is_symlink():
            what = os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = None
        out[rel.as_posix()] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, what)
    return out


def _one_line_naming(exc: pytest.ExceptionInfo, revision: str) -> str:
    """The error's message, checked to be one line that names REPO@revision."""
    text = str(exc.value)
    assert "\n" not in text and "\r" not in text, text
    assert f"{REPO}@{revision}" in text, text
    return text


def _to(start: Path, target: Path) -> str:
    """The relative path from folder `start` to `target` (a traversal string)."""
    return os.path.relpath(target, start)


# --------------------------------------------------------------------------- LFS sha256


def _hostile_sha256s(env, victim):
    """(id, value) of sha256s a hostile hub may report."""
    blobs = _repo_folder(env) / "blobs"
    return [
        ("traversal", _to(blobs, victim / "precious")),  # the finding
        ("absolute", str(victim / "precious")),
        ("glob", "*"),
        ("glob-class", "[0-9a-f]" * 8),
        ("empty", ""),
        ("none", None),
        ("number", 12345),
        ("short", "a" * 63),
        ("long", "a" * 65),
        ("upper", "A" * 64),
        ("slash", "a" * 60 + "/../"),
        ("backslash", "..\\..\\..\\..\\victim\\precious"),
        ("nul", "a" * 32 + "\x00" + "a" * 31),
        ("newline", "a" * 64 + "\n"),
    ]


SHA256_CASES = ["traversal", "absolute", "glob", "glob-class", "empty", "none", "number",
                "short", "long", "upper", "slash", "backslash", "nul", "newline"]  # fmt: skip


@pytest.mark.parametrize("label", SHA256_CASES)
def test_hostile_lfs_sha256_is_refused_and_nothing_outside_changes(
    hub, repo, env, victim, tmp_path, label
):
    value = dict(_hostile_sha256s(env, victim))[label]
    hub.tamper_file(REPO, BIN, sha256=value)
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        pythia(REPO, steps="4", home=tmp_path / "ws", vectors=None)
    text = _one_line_naming(exc, "step4")
    assert "sha256" in text and BIN in text, (label, text)
    assert _outside(tmp_path) == before, label
    assert hub.bytes_served[(REPO, BIN)] == 0  # refused while planning: nothing fetched


@pytest.mark.parametrize("size", [-1, "12", 1.5, None, True])
def test_hostile_file_size_is_refused(hub, repo, env, victim, tmp_path, size):
    hub.tamper_file(REPO, BIN, size=size)
    before = _outside(tmp_path)
    h = Hub(REPO, cache_dir=env.cache_dir)
    with pytest.raises(HubError) as exc:
        h.revision(next(b for b in h.branches() if b.name == "step4"))
    assert "size" in _one_line_naming(exc, "step4")
    assert _outside(tmp_path) == before


# --------------------------------------------------------------------------- branches


HOSTILE_BRANCHES = [
    "step5\n",  # `$` matches before a final newline
    "step\u0665",  # ARABIC-INDIC DIGIT FIVE: `\d` matches it, int() reads 5
    "step5/../../../../victim/precious",
    "../step5",
    "step5/x",
    " step5",
    "step05\x00",
]


def test_hostile_branch_names_are_not_step_branches(hub, repo, env, victim, tmp_path):
    commit = repo.branches["step8"]
    for name in HOSTILE_BRANCHES:
        hub.tamper_ref(REPO, name, commit)
    before = _outside(tmp_path)
    h = Hub(REPO, cache_dir=env.cache_dir)
    assert [b.name for b in h.branches()] == ["step4", "step8"]
    # the sweep goes on over the real step branches; the refs it writes are theirs only
    result = pythia(REPO, home=tmp_path / "ws", vectors=None)
    assert result.analysis.steps_computed == [4, 8]
    assert sorted(p.name for p in (_repo_folder(env) / "refs").iterdir()) == ["step4", "step8"]
    assert _outside(tmp_path) == before


# --------------------------------------------------------------------------- commits


def _hostile_commits(env, victim):
    """(id, value) of target commits a hostile hub may list for step4."""
    refs = _repo_folder(env) / "refs"
    return [
        ("traversal", _to(refs, victim / "precious")),  # the client writes refs/<revision>
        ("absolute", str(victim / "precious")),
        ("short", "0" * 39),
        ("not-hex", "g" * 40),
        ("upper", "A" * 40),
        ("newline", "a" * 40 + "\n"),
        ("number", 12345),
        ("none", None),
    ]


COMMIT_CASES = ["traversal", "absolute", "short", "not-hex", "upper", "newline", "number", "none"]


@pytest.mark.parametrize("label", COMMIT_CASES)
def test_hostile_target_commit_is_refused_and_nothing_outside_changes(
    hub, repo, env, victim, tmp_path, label
):
    value = dict(_hostile_commits(env, victim))[label]
    # the hub lists step4 at `value` and answers that revision with step4's files
    hub.tamper_ref(REPO, "step4", value, serves=repo.branches["step4"])
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        pythia(REPO, steps="4", home=tmp_path / "ws", vectors=None)
    assert "commit" in _one_line_naming(exc, "step4"), label
    assert _outside(tmp_path) == before, label
    assert hub.bytes_served[(REPO, BIN)] == 0


# --------------------------------------------------------------------------- resolve answers


def _hostile_answers(env, victim, repo):
    """(id, file, tamper_file kwargs) of resolve answers a hostile hub may give."""
    folder = _repo_folder(env)
    wrong = hashlib.sha256(b"other").hexdigest()
    return [
        # the client stores a blob as blobs/<etag> (+ .incomplete) and locks .locks/<etag>.lock
        ("linked-etag", BIN, {"headers": {"X-Linked-Etag": f'"{_to(folder / "blobs", victim / "precious")}"'}}),
        ("etag", "config.json", {"headers": {"ETag": f'"{_to(folder / "blobs", victim / "precious")}"'}}),
        ("weak-etag", "config.json", {"headers": {"ETag": f'W/"{victim / "precious"}"'}}),
        ("other-sha256", BIN, {"headers": {"X-Linked-Etag": f'"{wrong}"'}}),
        # snapshots/<commit>/<file>
        ("commit", BIN, {"headers": {"X-Repo-Commit": _to(folder / "snapshots", victim / "new")}}),
        ("other-commit", "config.json", {"headers": {"X-Repo-Commit": repo.branches["step8"]}}),
        # a 404 makes the client touch .no_exist/<commit>/<file>
        ("404-commit", "config.json", {"missing": True, "headers": {"X-Repo-Commit": _to(folder / ".no_exist", victim / "new")}}),
    ]  # fmt: skip


ANSWER_CASES = ["linked-etag", "etag", "weak-etag", "other-sha256", "commit", "other-commit",
                "404-commit"]  # fmt: skip


@pytest.mark.parametrize("label", ANSWER_CASES)
def test_hostile_resolve_answers_are_refused_and_nothing_outside_changes(
    hub, repo, env, victim, tmp_path, label
):
    name, lies = {c[0]: c[1:] for c in _hostile_answers(env, victim, repo)}[label]
    hub.tamper_file(REPO, name, **lies)
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        pythia(REPO, steps="4", home=tmp_path / "ws", vectors=None)
    text = _one_line_naming(exc, "step4")
    assert name in text, (label, text)
    assert _outside(tmp_path) == before, label
    assert not list(_repo_folder(env).rglob("*.incomplete")), label


# --------------------------------------------------------------------------- file names


def test_hostile_file_names_are_never_selected(hub, env, victim, tmp_path):
    r = hub.add_repo(REPO)
    weights = _weights(4)
    files = {
        "config.json": CONFIG,
        "model.safetensors.index.json": b"{}",
        "model-00001-of-00001.safetensors\n": weights,  # `$` before a final newline
        "model-\u0661-of-\u0661.safetensors": weights,  # ARABIC-INDIC DIGIT ONE
        _to(tmp_path / "x", victim / "pytorch_model.bin"): weights,
        "sub/../pytorch_model.bin": weights,
    }
    r.add_branch("step4", files)
    before = _outside(tmp_path)
    h = Hub(REPO, cache_dir=env.cache_dir)
    with pytest.raises(HubError) as exc:
        h.revision(h.branches()[0])
    assert "no weight file" in _one_line_naming(exc, "step4")
    # and in a sweep the revision is flagged failed (nothing fetched, nothing touched)
    result = pythia(REPO, home=tmp_path / "ws", vectors=None)
    assert [r.action for r in result.plan.revisions] == ["failed"]
    assert sum(hub.bytes_served.values()) == 0
    assert _outside(tmp_path) == before


@pytest.mark.parametrize(
    "name",
    ["../pytorch_model.bin", "/tmp/pytorch_model.bin", "a\\..\\b.bin", "a\x00.bin", "", ".",
     "a//b.bin", "./pytorch_model.bin", "a/./b.bin", "a/", "C:pytorch_model.bin",
     "pytorch_model.bin\n"],
)  # fmt: skip
def test_fetch_refuses_a_revision_with_a_hostile_file_name(hub, repo, env, victim, tmp_path, name):
    h = Hub(REPO, cache_dir=env.cache_dir)
    branch = next(b for b in h.branches() if b.name == "step4")
    sha = hashlib.sha256(_weights(4)).hexdigest()
    rev = HubRevision(branch, "torch", (HubFile(name, 10, sha),), ())
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        h.fetch(rev)
    assert "file name" in _one_line_naming(exc, "step4")
    assert _outside(tmp_path) == before
    assert hub.file_requests(REPO, name, method=None) == []


@pytest.mark.parametrize("commit", ["../../x", "0" * 39, "A" * 40])
def test_fetch_refuses_a_branch_with_a_hostile_commit(hub, repo, env, tmp_path, commit):
    h = Hub(REPO, cache_dir=env.cache_dir)
    good = h.revision(next(b for b in h.branches() if b.name == "step4"))
    rev = HubRevision(Branch("step4", 4, commit), good.layout, good.weights, good.extras)
    with pytest.raises(HubError) as exc:
        h.fetch(rev)
    assert "commit" in _one_line_naming(exc, "step4")
    assert not hub.log or all(r.filename is None for r in hub.log)


@pytest.mark.parametrize("repo_id", ["../../victim", "a/b/c", "a/..", "a\x00/b", "a/b\n"])
def test_hostile_repo_id_is_refused(repo_id):
    with pytest.raises(HubError) as exc:
        Hub(repo_id)
    text = str(exc.value)
    assert "\n" not in text and "repo" in text


# --------------------------------------------------------------------------- symlinks


def test_drop_refuses_a_snapshot_link_that_points_outside_the_cache(
    hub, repo, env, victim, tmp_path
):
    h = Hub(REPO, cache_dir=env.cache_dir)
    rev = h.revision(next(b for b in h.branches() if b.name == "step4"))
    path = h.fetch(rev)
    # something replaced the snapshot link with one to the user's file
    path.unlink()
    path.symlink_to(victim / "precious")
    config = h.cached(rev, "config.json")
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        h.drop(rev)
    assert "outside" in _one_line_naming(exc, "step4")
    assert _outside(tmp_path) == before
    assert path.is_symlink()  # the refused link is kept, for the user to look at
    assert config is not None and not config.exists()  # the other file is still deleted


def test_a_sweep_that_stops_deletes_every_other_revision_despite_a_refusal(
    hub, repo, env, victim, tmp_path
):
    h = Hub(REPO, cache_dir=env.cache_dir)
    branches = {b.step: b for b in h.branches()}
    revisions = {s: h.revision(b) for s, b in branches.items()}
    stream = HubSteps(h, types.SimpleNamespace(name="evil"), revisions, keep=False)
    stream.schedule([4, 8])
    stream.acquire(4)
    stream.acquire(8)
    link = h.cached(revisions[4], BIN)
    blob_8 = h.cached(revisions[8], BIN).resolve()
    link.unlink()
    link.symlink_to(victim / "precious")
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        stream.close()  # what pythia() does when a sweep stops
    assert "outside" in _one_line_naming(exc, "step4")
    assert _outside(tmp_path) == before
    assert not blob_8.exists() and h.cached(revisions[8], BIN) is None


def test_drop_deletes_what_it_fetched_inside_the_cache(hub, repo, env, victim, tmp_path):
    h = Hub(REPO, cache_dir=env.cache_dir)
    rev = h.revision(next(b for b in h.branches() if b.name == "step4"))
    before = _outside(tmp_path)
    path = h.fetch(rev)
    blob = path.resolve()
    assert blob.parent == _repo_folder(env) / "blobs" and blob.name == rev.weights[0].sha256
    assert h.drop(rev) == rev.size
    assert not blob.exists() and not path.exists()
    assert _outside(tmp_path) == before


@pytest.mark.parametrize("folder", ["refs", "locks"])
def test_creates_refuse_a_symlinked_folder_that_leads_outside(
    hub, repo, env, victim, tmp_path, folder
):
    h = Hub(REPO, cache_dir=env.cache_dir)
    branches = {b.name: b for b in h.branches()}
    h.fetch(h.revision(branches["step8"]))  # creates the repo's cache folders
    second = h.revision(branches["step4"])
    repo_folder = _repo_folder(env)
    if folder == "refs":
        for ref in (repo_folder / "refs").iterdir():
            ref.unlink()
        (repo_folder / "refs").rmdir()
        (repo_folder / "refs").symlink_to(victim, target_is_directory=True)
    else:
        sha = second.weights[0].sha256
        (repo_folder / "blobs" / f"{sha}.0123.incomplete").write_bytes(b"z" * 10)
        locks = env.cache_dir / ".locks" / repo_folder.name
        for lock in locks.iterdir():
            lock.unlink()
        locks.rmdir()
        locks.symlink_to(victim, target_is_directory=True)
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        h.fetch(second)
    assert "outside" in _one_line_naming(exc, "step4")
    assert _outside(tmp_path) == before


# --------------------------------------------------------------------------- offline cache


def test_offline_refuses_a_cached_ref_that_points_outside(hub, repo, env, victim, tmp_path):
    h = Hub(REPO, cache_dir=env.cache_dir)
    h.fetch(h.revision(next(b for b in h.branches() if b.name == "step4")))
    folder = _repo_folder(env)
    (folder / "refs" / "step4").write_text(_to(folder / "snapshots", victim))
    before = _outside(tmp_path)
    with pytest.raises(HubError) as exc:
        Hub(REPO, cache_dir=env.cache_dir, offline=True).branches()
    assert "commit" in _one_line_naming(exc, "step4")
    assert _outside(tmp_path) == before


def test_offline_refuses_a_snapshot_file_that_resolves_outside(hub, repo, env, victim, tmp_path):
    h = Hub(REPO, cache_dir=env.cache_dir)
    branch = next(b for b in h.branches() if b.name == "step4")
    path = h.fetch(h.revision(branch))
    path.unlink()
    path.symlink_to(victim / "pytorch_model.bin")
    offline = Hub(REPO, cache_dir=env.cache_dir, offline=True)
    with pytest.raises(HubError) as exc:
        offline.revision(offline.branches()[0])
    assert "outside" in _one_line_naming(exc, "step4")


# --------------------------------------------------------------------------- the CLI


def test_cli_exits_non_zero_with_one_line_and_touches_nothing(
    hub, repo, env, victim, tmp_path, capsys
):
    blobs = _repo_folder(env) / "blobs"
    hub.tamper_file(REPO, BIN, sha256=_to(blobs, victim / "precious"))  # the finding
    before = _outside(tmp_path)
    code = main(["pythia", "--model", REPO, "--steps", "4", "--home", str(tmp_path / "ws")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("specdyn: error: ") and "\n" not in err, err
    assert f"{REPO}@step4" in err and "sha256" in err
    assert _outside(tmp_path) == before
