"""The fake hub (tests/_fake_hub.py) against the real huggingface_hub client.

Each test starts its own FakeHub on a loopback port and points the already-imported client
at it with hub_env (private cache under tmp_path, no sleeping between retries).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import types
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from _fake_hub import FakeHub, git_blob_sha1, hub_env, lfs_pointer
from huggingface_hub import (
    HfApi,
    constants,
    hf_hub_download,
    scan_cache_dir,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import _CACHED_NO_EXIST

REPO = "EleutherAI/pythia-14m"
SIZE = 150_000  # weight file size: several server chunks (64 KiB), well under 10 MiB


def _bytes(seed: int, n: int) -> bytes:
    """Deterministic pseudo-random content."""
    return random.Random(seed).randbytes(n)


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def pythia(hub):
    """A Pythia-like repo: step0 and step1 byte-identical (as on the real hub), step1000
    with both formats, step2000 sharded, main = step2000's files in another commit."""
    repo = hub.add_repo(REPO)
    config = json.dumps({"hidden_size": 8, "num_hidden_layers": 2}).encode()
    w = {step: _bytes(step, SIZE) for step in (0, 1000, 2000)}
    shards = {
        "pytorch_model-00001-of-00002.bin": w[2000][: SIZE // 2],
        "pytorch_model-00002-of-00002.bin": w[2000][SIZE // 2 :],
    }
    index = json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}}).encode()
    repo.add_branch("step0", {"config.json": config, "pytorch_model.bin": w[0]})
    repo.add_branch("step1", {"config.json": config, "pytorch_model.bin": w[0]})
    repo.add_branch(
        "step1000",
        {
            "config.json": config,
            "pytorch_model.bin": w[1000],
            "model.safetensors": _bytes(7, 5000),
        },
    )
    sharded = {"config.json": config, "pytorch_model.bin.index.json": index, **shards}
    repo.add_branch("step2000", sharded)
    repo.add_branch("main", sharded)
    return types.SimpleNamespace(repo=repo, config=config, w=w, shards=shards)


@pytest.fixture
def env(monkeypatch, hub, tmp_path):
    return hub_env(monkeypatch, hub, tmp_path / "hf")


def _repo_cache(env) -> Path:
    return env.cache_dir / ("models--" + REPO.replace("/", "--"))


# --------------------------------------------------------------------------- metadata


def test_list_repo_refs_lists_branches_with_commits(hub, pythia, env):
    refs = HfApi().list_repo_refs(REPO)
    got = {b.name: b.target_commit for b in refs.branches}
    assert got == pythia.repo.branches
    assert all(len(c) == 40 for c in got.values())
    assert got["step0"] != got["step1"]  # same files, distinct commits
    assert got["main"] != got["step2000"]
    assert refs.tags == [] and refs.converts == []
    # the module-level function is bound to an HfApi created at import: hub_env patches it
    assert huggingface_hub.list_repo_refs(REPO).branches == refs.branches


def test_model_info_files_metadata(hub, pythia, env):
    info = HfApi().model_info(REPO, revision="step1000", files_metadata=True)
    assert info.sha == pythia.repo.branches["step1000"]
    sib = {s.rfilename: s for s in info.siblings}
    assert set(sib) == {"config.json", "pytorch_model.bin", "model.safetensors"}
    w = pythia.w[1000]
    bin_ = sib["pytorch_model.bin"]
    assert bin_.size == len(w)
    assert bin_.lfs.sha256 == hashlib.sha256(w).hexdigest()
    assert bin_.lfs.size == len(w)
    assert bin_.lfs.pointer_size == len(lfs_pointer(bin_.lfs.sha256, len(w)))
    assert 120 < bin_.lfs.pointer_size < 140
    assert bin_.blob_id == git_blob_sha1(lfs_pointer(bin_.lfs.sha256, len(w)))
    cfg = sib["config.json"]
    assert cfg.lfs is None
    assert cfg.size == len(pythia.config)
    # git's blob id, independently: sha1 of "blob <len>\0" + content
    assert (
        cfg.blob_id
        == hashlib.sha1(f"blob {len(pythia.config)}\0".encode() + pythia.config).hexdigest()
    )
    # without files_metadata only names come back; a commit sha works as revision
    plain = HfApi().model_info(REPO, revision=info.sha)
    assert plain.sha == info.sha
    assert {s.rfilename for s in plain.siblings} == set(sib)
    assert all(s.size is None and s.lfs is None for s in plain.siblings)


def test_tree_and_paths_info_accept_branch_and_commit(hub, pythia, env):
    api = HfApi()
    commit = pythia.repo.branches["step2000"]
    for rev in ("step2000", commit):
        tree = {f.path: f for f in api.list_repo_tree(REPO, revision=rev, recursive=True)}
        assert set(tree) == {"config.json", "pytorch_model.bin.index.json", *pythia.shards}
        for name, data in pythia.shards.items():
            assert tree[name].lfs.sha256 == hashlib.sha256(data).hexdigest()
            assert tree[name].size == len(data)
        assert tree["config.json"].lfs is None
    infos = api.get_paths_info(REPO, ["config.json", *pythia.shards, "absent.bin"], revision=commit)
    assert [i.path for i in infos] == ["config.json", *pythia.shards]
    assert infos[1].lfs.sha256 == hashlib.sha256(pythia.shards[infos[1].path]).hexdigest()


# --------------------------------------------------------------------------- downloads


def test_download_then_cache_hit(hub, pythia, env):
    commit = pythia.repo.branches["step1000"]
    key = (REPO, "pytorch_model.bin")
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    assert Path(path).read_bytes() == pythia.w[1000]
    assert hub.bytes_served[key] == SIZE
    # cache layout: snapshots/<commit>/<file> → ../../blobs/<sha256>, refs/<branch> = commit
    sha = hashlib.sha256(pythia.w[1000]).hexdigest()
    cache = _repo_cache(env)
    assert Path(path) == cache / "snapshots" / commit / "pytorch_model.bin"
    assert os.path.islink(path)
    assert Path(path).resolve() == (cache / "blobs" / sha).resolve()
    assert (cache / "refs" / "step1000").read_text() == commit
    assert not list(cache.rglob("*.incomplete"))

    # a branch name is re-checked with a HEAD, but the content is not sent again
    heads = len(hub.file_requests(REPO, "pytorch_model.bin", "HEAD"))
    assert hf_hub_download(REPO, "pytorch_model.bin", revision="step1000") == path
    assert hub.bytes_served[key] == SIZE
    assert len(hub.file_requests(REPO, "pytorch_model.bin", "HEAD")) == heads + 1
    assert len(hub.file_requests(REPO, "pytorch_model.bin", "GET")) == 1
    # a commit sha already cached makes no request at all
    n = len(hub.log)
    assert hf_hub_download(REPO, "pytorch_model.bin", revision=commit) == path
    assert len(hub.log) == n

    assert try_to_load_from_cache(REPO, "pytorch_model.bin", revision="step1000") == path
    assert try_to_load_from_cache(REPO, "pytorch_model.bin", revision=commit) == path
    assert try_to_load_from_cache(REPO, "pytorch_model.bin", revision="step0") is None
    # nothing went to the agent-registry endpoint (telemetry off)
    assert all("agent-harnesses" not in p for _, p in hub.requests)


def test_identical_files_share_one_blob(hub, pythia, env):
    a = hf_hub_download(REPO, "pytorch_model.bin", revision="step0")
    b = hf_hub_download(REPO, "pytorch_model.bin", revision="step1")
    assert a != b
    assert Path(a).resolve() == Path(b).resolve()
    assert hub.bytes_served[(REPO, "pytorch_model.bin")] == SIZE  # the blob was reused


def test_download_by_commit_writes_no_ref(hub, pythia, env):
    commit = pythia.repo.branches["step1000"]
    path = hf_hub_download(REPO, "config.json", revision=commit)
    assert Path(path).read_bytes() == pythia.config
    cache = _repo_cache(env)
    assert not (cache / "refs").exists()
    # the blob of a git file is named by its git sha1
    assert Path(path).resolve().name == git_blob_sha1(pythia.config)
    assert try_to_load_from_cache(REPO, "config.json", revision=commit) == path
    assert try_to_load_from_cache(REPO, "config.json", revision="step1000") is None


def test_truncated_download_resumes_with_range(hub, pythia, env, monkeypatch):
    # the client keeps what it received in whole DOWNLOAD_CHUNK_SIZE chunks (10 MiB by
    # default); a small chunk lets a small file resume mid-way
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    cut = 8 * 8192
    hub.fail_after(REPO, "pytorch_model.bin", cut)
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    assert Path(path).read_bytes() == pythia.w[1000]
    gets = hub.file_requests(REPO, "pytorch_model.bin", "GET")
    assert [g.range for g in gets] == [None, f"bytes={cut}-"]
    assert hub.bytes_served[(REPO, "pytorch_model.bin")] == SIZE  # not double
    assert env.sleeps == [1.0]  # the client waits 1 s before resuming
    assert not list(_repo_cache(env).rglob("*.incomplete"))


def test_truncation_inside_first_chunk_restarts_from_zero(hub, pythia, env):
    # default 10 MiB chunks: the 50 kB received before the cut are dropped
    hub.fail_after(REPO, "pytorch_model.bin", 50_000)
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    assert Path(path).read_bytes() == pythia.w[1000]
    gets = hub.file_requests(REPO, "pytorch_model.bin", "GET")
    assert [g.range for g in gets] == [None, None]
    assert hub.bytes_served[(REPO, "pytorch_model.bin")] == 50_000 + SIZE


def test_exhausted_retries_leave_nothing_and_next_call_starts_over(hub, pythia, env):
    hub.fail_after(REPO, "pytorch_model.bin", 0, times=6)  # 1 try + 5 resumes, all empty
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    assert len(hub.file_requests(REPO, "pytorch_model.bin", "GET")) == 6
    assert env.sleeps == [1.0] * 5
    cache = _repo_cache(env)
    assert not list(cache.rglob("*.incomplete"))  # the partial file is deleted
    assert not list((cache / "blobs").iterdir())
    assert try_to_load_from_cache(REPO, "pytorch_model.bin", revision="step1000") is None
    # a second call is a fresh download (no Range), and succeeds
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    assert Path(path).read_bytes() == pythia.w[1000]
    assert hub.file_requests(REPO, "pytorch_model.bin", "GET")[-1].range is None


def test_snapshot_download_with_patterns(hub, pythia, env):
    commit = pythia.repo.branches["step1000"]
    folder = snapshot_download(
        REPO, revision="step1000", allow_patterns=["*.json", "pytorch_model.bin"]
    )
    assert Path(folder) == _repo_cache(env) / "snapshots" / commit
    assert sorted(p.name for p in Path(folder).iterdir()) == ["config.json", "pytorch_model.bin"]
    assert (Path(folder) / "pytorch_model.bin").read_bytes() == pythia.w[1000]
    assert hub.bytes_served[(REPO, "model.safetensors")] == 0
    # branch → commit through model info, then the tree and the files by commit
    paths = [p for _, p in hub.requests]
    assert f"/api/models/{REPO}/revision/step1000" in paths
    assert f"/api/models/{REPO}/tree/{commit}" in paths
    assert hub.file_requests(REPO, "pytorch_model.bin")[0].revision == commit
    assert (_repo_cache(env) / "refs" / "step1000").read_text() == commit
    assert (_repo_cache(env) / "trees" / f"{commit}.json").is_file()


# --------------------------------------------------------------------------- errors


def test_missing_revision_file_and_repo(hub, pythia, env):
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "pytorch_model.bin", revision="step999")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO, revision="step999", files_metadata=True)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="step999")

    with pytest.raises(RemoteEntryNotFoundError) as err:
        hf_hub_download(REPO, "model.safetensors", revision="step0")
    assert isinstance(err.value, EntryNotFoundError)
    # the client remembers the absence under .no_exist/<commit>/
    commit = pythia.repo.branches["step0"]
    assert (_repo_cache(env) / ".no_exist" / commit / "model.safetensors").is_file()
    assert try_to_load_from_cache(REPO, "model.safetensors", revision="step0") is _CACHED_NO_EXIST

    with pytest.raises(RepositoryNotFoundError):
        HfApi().list_repo_refs("EleutherAI/pythia-nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("EleutherAI/pythia-nope", "config.json")


def test_offline_mode_serves_cache_only(hub, pythia, env, monkeypatch):
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    # the client reads HF_HUB_OFFLINE once, at import: setting the variable now does nothing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert constants.is_offline_mode() is False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert huggingface_hub.is_offline_mode() is True
    n = len(hub.log)
    assert hf_hub_download(REPO, "pytorch_model.bin", revision="step1000") == path
    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download(REPO, "pytorch_model.bin", revision="step0")
    assert isinstance(err.value.__cause__, OfflineModeIsEnabled)
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().list_repo_refs(REPO)
    assert snapshot_download(REPO, revision="step1000", allow_patterns=["*.bin"]) == str(
        Path(path).parent
    )
    assert len(hub.log) == n  # nothing reached the hub
    assert env.sleeps == []


def test_connection_refused(hub, pythia, env):
    path = hf_hub_download(REPO, "pytorch_model.bin", revision="step1000")
    hub.offline = True
    # a cached file comes back at once (the failed HEAD falls back to refs/ + snapshots/)
    assert hf_hub_download(REPO, "pytorch_model.bin", revision="step1000") == path
    assert env.sleeps == []
    # an uncached one is retried with backoff (1+2+4+8+8 s, not slept here), then given up
    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download(REPO, "pytorch_model.bin", revision="step0")
    assert isinstance(err.value.__cause__, httpx2.ConnectError)
    assert env.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0]
    # API calls are not wrapped: the transport error comes out as is
    with pytest.raises(httpx2.ConnectError):
        HfApi().list_repo_refs(REPO)
    with pytest.raises(httpx2.ConnectError):
        HfApi().model_info(REPO, revision="step0", files_metadata=True)
    hub.offline = False
    again = hf_hub_download(REPO, "pytorch_model.bin", revision="step0")
    assert Path(again).read_bytes() == pythia.w[0]


# --------------------------------------------------------------------------- other


def test_explicit_endpoint_without_patched_constants(hub, pythia, env, monkeypatch):
    # code that passes endpoint= needs no patched constants (only the cache and env flags)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        "https://huggingface.co/{repo_id}/resolve/{revision}/{filename}",
    )
    api = HfApi(endpoint=hub.url)
    assert {b.name for b in api.list_repo_refs(REPO).branches} == set(pythia.repo.branches)
    path = hf_hub_download(REPO, "config.json", revision="step0", endpoint=hub.url)
    assert Path(path).read_bytes() == pythia.config


def test_delete_revision_keeps_blobs_still_linked(hub, pythia, env):
    a = hf_hub_download(REPO, "pytorch_model.bin", revision="step0")
    b = hf_hub_download(REPO, "pytorch_model.bin", revision="step1")
    blob = Path(a).resolve()
    info = scan_cache_dir(env.cache_dir)
    (cached,) = info.repos
    assert {r.commit_hash for r in cached.revisions} == {
        pythia.repo.branches["step0"],
        pythia.repo.branches["step1"],
    }
    strategy = info.delete_revisions(pythia.repo.branches["step0"])
    assert strategy.expected_freed_size == 0  # the blob is still linked from step1
    strategy.execute()
    assert not os.path.lexists(a)
    assert blob.is_file() and Path(b).read_bytes() == pythia.w[0]
    assert not (_repo_cache(env) / "refs" / "step0").exists()
    scan_cache_dir(env.cache_dir).delete_revisions(pythia.repo.branches["step1"]).execute()
    assert not blob.exists()
    assert not _repo_cache(env).exists()  # the last revision takes the repo folder


def test_delay_lets_downloads_overlap(hub, pythia, env):
    hub.delay(0.1)  # after each 64 KiB chunk: the 150 kB file streams for 0.3 s
    done = []
    t = threading.Thread(
        target=lambda: done.append(hf_hub_download(REPO, "pytorch_model.bin", revision="step0"))
    )
    t.start()
    deadline = time.monotonic() + 5
    while hub.active_gets == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    hf_hub_download(REPO, "config.json", revision="step1000")
    t.join(timeout=10)
    assert done and Path(done[0]).read_bytes() == pythia.w[0]
    assert hub.max_active_gets == 2
