"""A loopback HTTP server that plays the Hugging Face hub for the real `huggingface_hub` client.

    with FakeHub() as hub:
        repo = hub.add_repo("EleutherAI/pythia-14m")
        c0 = repo.add_branch("step0", {"config.json": b"{}", "pytorch_model.bin": blob})
        env = hub_env(monkeypatch, hub, tmp_path / "hf")     # client → hub, private cache
        path = hf_hub_download("EleutherAI/pythia-14m", "pytorch_model.bin", revision="step0")
        hub.bytes_served[("EleutherAI/pythia-14m", "pytorch_model.bin")]  # content bytes sent
        hub.fail_after("EleutherAI/pythia-14m", "pytorch_model.bin", 4096)  # next GET truncated
        hub.offline = True                                   # connections refused

A hostile hub (tests/pythia/test_hub_security.py) lies about what it serves:
        hub.tamper_file(repo_id, "pytorch_model.bin", sha256="../../x")  # model info, tree
        hub.tamper_file(repo_id, "config.json", headers={"ETag": '"../x"'})  # resolve answers
        hub.tamper_file(repo_id, "config.json", missing=True)  # resolve answers 404
        hub.tamper_ref(repo_id, "step4", "../../x", serves=commit)  # refs lists step4 → "../../x"

A stalled or broken hub (tests/pythia/test_pythia_stalls.py) answers badly where a request
path contains a given text (every method unless `method`):
        hub.misbehave("hang", "/refs")            # accept, read the request, never answer
        hub.misbehave("drip", "/resolve/", interval=1.0)  # the true answer, body 1 byte/s
        hub.misbehave("garbage", "/api/")         # 200 application/json, non-UTF-8 bytes
        hub.misbehave("html", "/api/")            # 200 text/html, a login page

Endpoints (model repos only; checked against huggingface_hub 2.4.0):
  GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   ModelInfo: sha, siblings (+ size, blobId, lfs)
  GET  /api/models/{repo}/refs                             branches with targetCommit (no tags)
  GET  /api/models/{repo}/tree/{rev}[/{path}][?recursive=true]
  POST /api/models/{repo}/paths-info/{rev}                 form or JSON field "paths"
  HEAD|GET /{repo}/resolve/{rev}/{file}                    X-Repo-Commit, ETag, X-Linked-Etag/-Size
                                                           (LFS), Content-Length, Range → 206
A revision is a branch name or a full 40-hex commit. Errors are 404 with the hub's
``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound), which the client maps to
RepositoryNotFoundError, RevisionNotFoundError and RemoteEntryNotFoundError. LFS files are
served directly (no redirect to a CDN host), which the client accepts.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import types
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "LFS_SUFFIXES",
    "FakeFile",
    "FakeRepo",
    "FakeHub",
    "LoggedRequest",
    "HubEnv",
    "hub_env",
    "git_blob_sha1",
    "lfs_pointer",
]

# files stored with git LFS on the fake hub (everything else is a plain git blob)
LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")

_COMMIT_RE_LEN = 40
_UNSET = object()  # tamper_file: "report the truth" for this field


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding `data`: sha1(b"blob <len>\\0" + data), 40 hex."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file git stores in place of an LFS file (about 130 bytes)."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class FakeFile:
    """One file of a commit with the metadata the hub reports for it.

    path: repo path ("a/b.bin"); data: the content; lfs: stored with LFS;
    sha256: hex of the content (LFS oid; computed for every file);
    blob_id: git oid of what git stores (the pointer for LFS files, else the content);
    pointer_size: bytes of the LFS pointer (0 for git files);
    etag: what the resolve endpoint reports (sha256 for LFS, blob_id otherwise).
    """

    path: str
    data: bytes
    lfs: bool
    sha256: str
    blob_id: str
    pointer_size: int

    @property
    def size(self) -> int:
        """Content size in bytes."""
        return len(self.data)

    @property
    def etag(self) -> str:
        """The ETag the client stores the blob under (cache file name in blobs/)."""
        return self.sha256 if self.lfs else self.blob_id

    @classmethod
    def make(cls, path: str, data: bytes, lfs: bool | None = None) -> FakeFile:
        """Build the file; `lfs` None decides by suffix (LFS_SUFFIXES)."""
        if lfs is None:
            lfs = path.endswith(LFS_SUFFIXES)
        sha256 = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = lfs_pointer(sha256, len(data))
            return cls(path, data, True, sha256, git_blob_sha1(pointer), len(pointer))
        return cls(path, data, False, sha256, git_blob_sha1(data), 0)

    def tree_entry(self) -> dict:
        """The entry of /tree and /paths-info (``lfs.oid`` is the sha256)."""
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def sibling(self, blobs: bool) -> dict:
        """The entry of ``siblings`` in model info (metadata only when `blobs`)."""
        if not blobs:
            return {"rfilename": self.path}
        entry = {"rfilename": self.path, "blobId": self.blob_id, "size": self.size}
        if self.lfs:
            entry["lfs"] = {
                "sha256": self.sha256,
                "size": self.size,
                "pointerSize": self.pointer_size,
            }
        return entry


class FakeRepo:
    """A model repository held in memory: commits (sha → files) and branches (name → sha).

    Commit shas are 40 hex, derived from the repo id, the commit's rank and its files, so a
    test builds the same shas on every run. Two branches with identical files still get two
    commits (as Pythia's ``main`` and ``step143000`` do) unless `commit=` names an existing one.
    """

    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id
        self.branches: dict[str, str] = {}
        self.commits: dict[str, dict[str, FakeFile]] = {}
        self.aliases: dict[str, str] = {}  # other revision strings the hub answers (tamper_ref)
        self._lock = threading.Lock()

    def add_commit(
        self,
        files: Mapping[str, bytes],
        *,
        lfs: Mapping[str, bool] | None = None,
        commit: str | None = None,
    ) -> str:
        """Store a commit holding `files` (path → bytes) and return its sha.

        lfs: per-path override of the suffix rule; commit: the sha to use (40 hex),
        default a deterministic one.
        """
        lfs = lfs or {}
        built = {p: FakeFile.make(p, bytes(d), lfs.get(p)) for p, d in files.items()}
        with self._lock:
            if commit is None:
                h = hashlib.sha1(f"{self.repo_id}\n{len(self.commits)}\n".encode())
                for p in sorted(built):
                    h.update(f"{p} {built[p].sha256}\n".encode())
                commit = h.hexdigest()
            if len(commit) != _COMMIT_RE_LEN or any(c not in "0123456789abcdef" for c in commit):
                raise ValueError(f"commit must be 40 lowercase hex characters, got {commit!r}")
            self.commits[commit] = built
        return commit

    def add_branch(
        self,
        name: str,
        files: Mapping[str, bytes],
        *,
        lfs: Mapping[str, bool] | None = None,
        commit: str | None = None,
    ) -> str:
        """Store a commit holding `files` and point branch `name` at it; returns the sha."""
        sha = self.add_commit(files, lfs=lfs, commit=commit)
        self.set_branch(name, sha)
        return sha

    def set_branch(self, name: str, commit: str) -> None:
        """Point branch `name` at an existing commit (creates or moves the branch)."""
        if commit not in self.commits:
            raise KeyError(f"{self.repo_id}: no commit {commit}")
        with self._lock:
            self.branches[name] = commit

    def remove_branch(self, name: str) -> None:
        """Delete a branch (its commit stays reachable by sha)."""
        with self._lock:
            del self.branches[name]

    def resolve(self, revision: str) -> str | None:
        """The commit sha of a branch name or full commit sha, or None."""
        with self._lock:
            if revision in self.branches:
                return self.branches[revision]
            if revision in self.aliases:
                return self.aliases[revision]
            return revision if revision in self.commits else None

    def files(self, revision: str) -> dict[str, FakeFile]:
        """The files of a revision (KeyError when it does not exist)."""
        sha = self.resolve(revision)
        if sha is None:
            raise KeyError(f"{self.repo_id}: no revision {revision}")
        return self.commits[sha]


@dataclass(frozen=True)
class LoggedRequest:
    """One request the hub received: method, raw path (no query), query string,
    headers (lower-case names), and for resolve requests the repo, revision and file."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None

    @property
    def range(self) -> str | None:
        """The Range header, if any."""
        return self.headers.get("range")


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections so stop() can cut them."""

    daemon_threads = True
    hub: FakeHub

    def __init__(self, address, handler) -> None:
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self):
        """Accept a connection and remember it."""
        sock, addr = super().get_request()
        with self.conn_lock:
            self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request) -> None:
        """Forget and close a connection."""
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Shut every open connection so idle keep-alive handlers return."""
        with self.conn_lock:
            conns = list(self.connections)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _HubError(Exception):
    """An error answer: status, X-Error-Code (or None) and message."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        commit: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit
        self.headers = dict(headers or {})


def _is_true(value: str | None) -> bool:
    """Whether a query/form flag is set ("1", "true", case-insensitive)."""
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


class _Handler(BaseHTTPRequestHandler):
    """Request handler: routes to the hub endpoints; HTTP/1.1 keep-alive like the real hub."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    server: _Server
    _drip = 0.0  # seconds between body bytes of this answer (misbehave "drip"); 0: at once

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib access log."""

    def do_HEAD(self) -> None:
        """HEAD (file metadata)."""
        self._handle("HEAD")

    def do_GET(self) -> None:
        """GET (API and file content)."""
        self._handle("GET")

    def do_POST(self) -> None:
        """POST (paths-info)."""
        self._handle("POST")

    # ---------------------------------------------------------------- routing

    def _handle(self, method: str) -> None:
        """Parse, log, route; turn _HubError into the hub's error answer."""
        hub = self.server.hub
        parts = urlsplit(self.path)
        body = b""
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        segments = [s for s in parts.path.split("/") if s != ""]
        resolve = self._parse_resolve(segments)
        hub._log(
            LoggedRequest(
                method,
                parts.path,
                parts.query,
                {k.lower(): v for k, v in self.headers.items()},
                *(resolve or (None, None, None)),
            )
        )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        rule = hub._misbehaviour(method, parts.path)
        self._drip = rule.interval if rule is not None and rule.mode == "drip" else 0.0
        if rule is not None and rule.mode != "drip":
            self._answer_badly(rule, head=method == "HEAD")
            return
        try:
            if len(segments) >= 2 and segments[0] == "api" and segments[1] == "models":
                self._api(method, [unquote(s) for s in segments[2:]], query, body)
            elif resolve is not None and method in ("GET", "HEAD"):
                self._resolve(method, *resolve)
            else:
                raise _HubError(404, None, f"no route for {method} {parts.path}")
        except _HubError as err:
            self._send_error(err, head=method == "HEAD")

    def _answer_badly(self, rule: _Misbehaviour, *, head: bool) -> None:
        """A hang (until the hub stops), or a 200 answer of garbage bytes or an HTML page."""
        hub = self.server.hub
        if rule.mode == "hang":
            self.close_connection = True
            hub._stopping.wait()
            return
        if rule.mode == "garbage":
            body, kind = bytes(range(128, 256)) * 4 + b"\xff\xfe\x00{", "application/json"
        else:
            body = (
                b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>proxy</body></html>"
            )
            kind = "text/html; charset=utf-8"
        self._send(200, {"Content-Type": kind, "Content-Length": str(len(body))}, body, head=head)

    def _write(self, data: bytes) -> None:
        """Write body bytes: at once, or one byte per drip interval (until the hub stops)."""
        if not self._drip:
            self.wfile.write(data)
            return
        for i in range(len(data)):
            if self.server.hub._stopping.wait(self._drip):
                raise BrokenPipeError("the fake hub stopped")
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def _parse_resolve(self, segments: list[str]) -> tuple[str, str, str] | None:
        """(repo_id, revision, filename) of a /{repo}/resolve/{rev}/{file} path, else None."""
        if "resolve" not in segments or segments[0] == "api":
            return None
        known = self.server.hub.repos
        candidates = [i for i, s in enumerate(segments) if s == "resolve" and i >= 1]
        for i in candidates:  # prefer a split whose repo part is a known repo
            if "/".join(unquote(s) for s in segments[:i]) in known and len(segments) > i + 2:
                break
        else:
            if not candidates or len(segments) <= candidates[0] + 2:
                return None
            i = candidates[0]
        repo_id = "/".join(unquote(s) for s in segments[:i])
        revision = unquote(segments[i + 1])
        filename = "/".join(unquote(s) for s in segments[i + 2 :])
        return repo_id, revision, filename

    def _repo_and_rest(self, segments: list[str]) -> tuple[FakeRepo, list[str]]:
        """Split /api/models/... segments into a known repo and the rest (else RepoNotFound)."""
        repos = self.server.hub.repos
        for n in (2, 1):
            if len(segments) >= n and "/".join(segments[:n]) in repos:
                return repos["/".join(segments[:n])], segments[n:]
        shown = "/".join(segments[:2])
        raise _HubError(404, "RepoNotFound", f"Repository not found: {shown}")

    def _commit(self, repo: FakeRepo, revision: str) -> str:
        """The commit of a revision, else RevisionNotFound."""
        sha = repo.resolve(revision)
        if sha is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    # ---------------------------------------------------------------- API

    def _api(self, method: str, segments: list[str], query: dict, body: bytes) -> None:
        """/api/models/{repo}/... endpoints."""
        repo, rest = self._repo_and_rest(segments)
        if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
            revision = rest[1] if rest else "main"
            sha = self._commit(repo, revision)
            blobs = _is_true(query.get("blobs"))
            files = repo.commits[sha]
            info = {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
                "sha": sha,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [
                    self.server.hub._lie_about(repo.repo_id, files[p].sibling(blobs), "sibling")
                    for p in sorted(files)
                ],
            }
            if blobs:
                info["usedStorage"] = sum(f.size for f in files.values())
            self._send_json(info, head=False)
        elif method == "GET" and rest == ["refs"]:
            with repo._lock:
                branches = sorted(repo.branches.items())
            listed = dict(branches)
            listed.update(self.server.hub._ref_lies.get(repo.repo_id, {}))
            refs = {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                    for n, c in listed.items()
                ],
                "converts": [],
                "tags": [],
            }
            if _is_true(query.get("include_prs")):
                refs["pullRequests"] = []
            self._send_json(refs, head=False)
        elif method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            sha = self._commit(repo, rest[1])
            entries = _tree(repo.commits[sha], "/".join(rest[2:]), _is_true(query.get("recursive")))
            lie = self.server.hub._lie_about
            self._send_json([lie(repo.repo_id, e, "tree") for e in entries], head=False)
        elif method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            sha = self._commit(repo, rest[1])
            paths = _form_paths(self.headers.get("Content-Type") or "", body)
            lie = self.server.hub._lie_about
            entries = _paths_info(repo.commits[sha], paths)
            self._send_json([lie(repo.repo_id, e, "tree") for e in entries], head=False)
        else:
            raise _HubError(404, None, f"no API route {method} {'/'.join(rest)}")

    # ---------------------------------------------------------------- files

    def _resolve(self, method: str, repo_id: str, revision: str, filename: str) -> None:
        """HEAD/GET of a file: metadata headers, and for GET the (ranged) content."""
        hub = self.server.hub
        repo = hub.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        sha = self._commit(repo, revision)
        f = repo.commits[sha].get(filename)
        lies = hub._header_lies.get((repo_id, filename), {})
        if f is None or (repo_id, filename) in hub._hidden:
            raise _HubError(
                404,
                "EntryNotFound",
                f"{filename} does not exist on {revision!r}",
                commit=sha,
                headers=lies,
            )
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        headers.update(lies)
        start, end = 0, f.size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted and method == "GET":
            parsed = _parse_range(wanted, f.size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{f.size}"
                self._send(416, headers, b"", head=False)
                return
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        if method == "HEAD":
            self._send(200, {**headers, "Content-Length": str(f.size)}, b"", head=True)
            return
        payload = f.data[start : end + 1]
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(k, v)
        self.end_headers()
        hub._stream(self, (repo_id, filename), payload)

    # ---------------------------------------------------------------- output

    def _send(self, status: int, headers: dict, body: bytes, *, head: bool) -> None:
        """Send a full answer (no body for HEAD; Content-Length always set)."""
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            try:
                self._write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _send_json(self, obj, *, head: bool) -> None:
        """Send a JSON answer."""
        body = json.dumps(obj).encode()
        self._send(200, {"Content-Type": "application/json"}, body, head=head)

    def _send_error(self, err: _HubError, *, head: bool) -> None:
        """Send the hub's error answer: JSON {"error"} plus X-Error-Code/-Message."""
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message}
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        if err.commit is not None:
            headers["X-Repo-Commit"] = err.commit
        headers.update(err.headers)
        body = json.dumps({"error": err.message}).encode()
        if head:
            self._send(err.status, {**headers, "Content-Length": str(len(body))}, b"", head=True)
        else:
            self._send(err.status, headers, body, head=False)


def _tree(files: dict[str, FakeFile], prefix: str, recursive: bool) -> list[dict]:
    """Entries of /tree under `prefix` (folders as "directory" entries)."""
    prefix = prefix.strip("/")
    if prefix and prefix in files:  # the hub lists folders only
        raise _HubError(404, "EntryNotFound", f"{prefix} is a file, not a folder")
    base = prefix + "/" if prefix else ""
    under = [p for p in sorted(files) if p.startswith(base)]
    if prefix and not under:
        raise _HubError(404, "EntryNotFound", f"{prefix} does not exist")
    entries: dict[str, dict] = {}
    for p in under:
        rel = p[len(base) :].split("/")
        for depth in range(1, len(rel)):
            folder = base + "/".join(rel[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, _folder_entry(folder))
            if not recursive:
                break
        if recursive or len(rel) == 1:
            entries[p] = files[p].tree_entry()
    return [entries[k] for k in sorted(entries)]


def _folder_entry(path: str) -> dict:
    """A "directory" entry (oid: a stable fake tree id)."""
    oid = hashlib.sha1(f"tree {path}".encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _paths_info(files: dict[str, FakeFile], paths: list[str]) -> list[dict]:
    """Entries of /paths-info: existing files and folders; missing paths are left out."""
    out = []
    for p in paths:
        p = p.strip("/")
        if p in files:
            out.append(files[p].tree_entry())
        elif any(q.startswith(p + "/") for q in files):
            out.append(_folder_entry(p))
    return out


def _form_paths(content_type: str, body: bytes) -> list[str]:
    """The "paths" field of a paths-info body (form-encoded, as the client sends, or JSON)."""
    if "json" in content_type:
        paths = json.loads(body or b"{}").get("paths", [])
        return [paths] if isinstance(paths, str) else list(paths)
    return parse_qs(body.decode()).get("paths", [])


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive of a single "bytes=a-b" range, None if unsatisfiable."""
    spec = value.strip()
    if not spec.lower().startswith("bytes=") or "," in spec:
        return None
    a, _, b = spec[6:].strip().partition("-")
    if a == "":  # suffix range: last b bytes
        if not b:
            return None
        n = int(b)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(a)
    end = int(b) if b else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


@dataclass(frozen=True)
class _Misbehaviour:
    """One misbehave() rule: the mode, the path text it applies to, the method (None: all)
    and the drip interval in seconds."""

    mode: str
    path: str
    method: str | None
    interval: float


class FakeHub:
    """A fake Hugging Face hub on 127.0.0.1 (random port), served from a daemon thread.

    Use as a context manager (``with FakeHub() as hub:``) or call start()/stop().

    url: "http://127.0.0.1:<port>"; repos: repo id → FakeRepo;
    bytes_served: Counter of content bytes written by GET, keyed (repo_id, filename);
    log: every request as LoggedRequest; requests: the same as (method, path) pairs;
    max_active_gets: the most file GETs that were streaming at once;
    offline: settable; True closes the listening socket and cuts open connections, so
    the client gets "connection refused" (httpx ConnectError); False listens again on
    the same port.

    chunk_size: bytes written per send (the unit of `delay` and of the counters).
    """

    def __init__(self, *, chunk_size: int = 64 * 1024) -> None:
        self.chunk_size = chunk_size
        self.repos: dict[str, FakeRepo] = {}
        self.bytes_served: Counter[tuple[str, str]] = Counter()
        self.log: list[LoggedRequest] = []
        self.active_gets = 0
        self.max_active_gets = 0
        self._chunk_delay = 0.0
        self._faults: dict[tuple[str, str], list[int]] = {}
        self._metadata_lies: dict[tuple[str, str], dict] = {}  # (repo, path) → field → value
        self._header_lies: dict[tuple[str, str], dict[str, str]] = {}
        self._hidden: set[tuple[str, str]] = set()
        self._ref_lies: dict[str, dict[object, object]] = {}  # repo → name → targetCommit
        self._misbehaviours: list[_Misbehaviour] = []
        self._stopping = threading.Event()  # set on stop(): hanging and dripping answers end
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._offline = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeHub:
        """Start serving (port chosen by the OS on first start)."""
        self._stopping.clear()
        if self._server is None:
            self._listen()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections."""
        self._offline = False
        self._stopping.set()
        self._close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _listen(self) -> None:
        """Bind (on the remembered port, if any) and serve in a daemon thread."""
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.hub = self
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"fake-hub-{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _close(self) -> None:
        """Stop the server thread, close the listening socket and live connections."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:40123" (no trailing slash)."""
        if not self._port:
            raise RuntimeError("FakeHub is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def offline(self) -> bool:
        """Whether the hub refuses connections."""
        return self._offline

    @offline.setter
    def offline(self, value: bool) -> None:
        if value and not self._offline:
            self._close()
        elif not value and self._offline:
            self._listen()
        self._offline = bool(value)

    # ---------------------------------------------------------------- content

    def add_repo(self, repo_id: str) -> FakeRepo:
        """Create (or return) the model repo `repo_id`."""
        with self._lock:
            return self.repos.setdefault(repo_id, FakeRepo(repo_id))

    # ---------------------------------------------------------------- faults

    def fail_after(self, repo_id: str, filename: str, nbytes: int, *, times: int = 1) -> None:
        """Truncate the next `times` GETs of a file: send the headers with the full
        Content-Length, then `nbytes` of content, then close the connection."""
        if nbytes < 0 or times < 1:
            raise ValueError("nbytes must be >= 0 and times >= 1")
        with self._lock:
            self._faults.setdefault((repo_id, filename), []).extend([nbytes] * times)

    def tamper_file(
        self,
        repo_id: str,
        path: str,
        *,
        sha256: object = _UNSET,
        size: object = _UNSET,
        headers: Mapping[str, str] | None = None,
        missing: bool = False,
    ) -> None:
        """Lie about one file of every revision, as a hostile endpoint would.

        sha256, size: what model info (``siblings[].lfs.sha256``/``size``) and the tree
        (``lfs.oid``/``size``) report instead of the truth (any JSON value, also for a file
        that is not an LFS file); headers: replace these headers of its resolve answers
        (e.g. ``ETag``, ``X-Linked-Etag``, ``X-Repo-Commit``; error answers too);
        missing: its resolve answers are 404 EntryNotFound (the listing still names it).
        """
        key = (repo_id, path)
        with self._lock:
            lie = self._metadata_lies.setdefault(key, {})
            if sha256 is not _UNSET:
                lie["sha256"] = sha256
            if size is not _UNSET:
                lie["size"] = size
            if headers:
                self._header_lies.setdefault(key, {}).update(headers)
            if missing:
                self._hidden.add(key)

    def tamper_ref(
        self, repo_id: str, name: object, target_commit: object, *, serves: str | None = None
    ) -> None:
        """List branch `name` (any JSON value) with `target_commit` in /refs.

        serves: an existing commit whose files the hub answers when asked for
        `target_commit` as a revision (a hostile hub backing its own lie); None: asking
        for it gives RevisionNotFound.
        """
        repo = self.repos[repo_id]
        with self._lock:
            self._ref_lies.setdefault(repo_id, {})[name] = target_commit
        if serves is not None and isinstance(target_commit, str):
            if serves not in repo.commits:
                raise KeyError(f"{repo_id}: no commit {serves}")
            with repo._lock:
                repo.aliases[target_commit] = serves

    def _lie_about(self, repo_id: str, entry: dict, kind: str) -> dict:
        """`entry` (a model-info sibling or a tree entry) with tamper_file's lies applied."""
        path = entry.get("rfilename" if kind == "sibling" else "path")
        with self._lock:
            lie = dict(self._metadata_lies.get((repo_id, path), {}))
        if not lie:
            return entry
        entry = json.loads(json.dumps(entry))
        if "size" in lie:
            entry["size"] = lie["size"]
        if "sha256" in lie or "size" in lie:
            lfs = entry.setdefault("lfs", {"size": entry.get("size"), "pointerSize": 134})
            if kind == "sibling":
                lfs.setdefault("sha256", lie.get("sha256"))
            else:
                lfs.setdefault("oid", lie.get("sha256"))
            if "sha256" in lie:
                lfs["sha256" if kind == "sibling" else "oid"] = lie["sha256"]
            if "size" in lie:
                lfs["size"] = lie["size"]
        return entry

    def misbehave(
        self, mode: str, path: str, *, method: str | None = None, interval: float = 1.0
    ) -> None:
        """Answer every request whose path contains `path` (and whose method is `method`,
        when given) badly: "hang" (accept and read it, never answer), "drip" (the true
        answer, its body one byte per `interval` seconds), "garbage" (200 with non-UTF-8
        bytes as application/json) or "html" (200 with an HTML page). The first matching
        rule applies; `behave()` removes them all."""
        if mode not in ("hang", "drip", "garbage", "html"):
            raise ValueError(f"unknown misbehaviour {mode!r}")
        with self._lock:
            self._misbehaviours.append(_Misbehaviour(mode, path, method, float(interval)))

    def behave(self) -> None:
        """Forget every misbehave() rule (answers already hanging end only at stop())."""
        with self._lock:
            self._misbehaviours.clear()

    def _misbehaviour(self, method: str, path: str) -> _Misbehaviour | None:
        """The first misbehave() rule matching a request, or None."""
        with self._lock:
            for rule in self._misbehaviours:
                if rule.path in path and rule.method in (None, method):
                    return rule
        return None

    def delay(self, seconds: float) -> None:
        """Sleep `seconds` after each content chunk of every GET (0 turns it off)."""
        self._chunk_delay = float(seconds)

    # ---------------------------------------------------------------- counters

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request as (method, path without query)."""
        with self._lock:
            return [(r.method, r.path) for r in self.log]

    def file_requests(
        self, repo_id: str, filename: str, method: str | None = "GET"
    ) -> list[LoggedRequest]:
        """The resolve requests of one file (only `method` unless None)."""
        with self._lock:
            return [
                r
                for r in self.log
                if r.repo_id == repo_id
                and r.filename == filename
                and (method is None or r.method == method)
            ]

    def reset_counters(self) -> None:
        """Forget the request log, bytes served and concurrency maximum."""
        with self._lock:
            self.log.clear()
            self.bytes_served.clear()
            self.max_active_gets = self.active_gets

    def _log(self, request: LoggedRequest) -> None:
        """Record one request."""
        with self._lock:
            self.log.append(request)

    def _stream(self, handler: _Handler, key: tuple[str, str], payload: bytes) -> None:
        """Write a GET body chunk by chunk, counting bytes; apply delay and truncation."""
        with self._lock:
            queue = self._faults.get(key)
            cut = queue.pop(0) if queue else None
            if queue is not None and not queue:
                del self._faults[key]
            self.active_gets += 1
            self.max_active_gets = max(self.max_active_gets, self.active_gets)
        limit = len(payload) if cut is None else min(cut, len(payload))
        try:
            pos = 0
            while pos < limit:
                chunk = payload[pos : min(pos + self.chunk_size, limit)]
                handler._write(chunk)
                with self._lock:
                    self.bytes_served[key] += len(chunk)
                pos += len(chunk)
                if self._chunk_delay:
                    time.sleep(self._chunk_delay)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            with self._lock:
                self.active_gets -= 1
        if cut is not None and cut < len(payload):
            handler.close_connection = True  # the client sees EOF before Content-Length


# ------------------------------------------------------------------ client setup


@dataclass
class HubEnv:
    """What hub_env set up: the hub url, HF_HOME, the hub cache (HF_HOME/hub) and the
    waits the client asked for (seconds; recorded instead of slept when fast_retries)."""

    url: str
    home: Path
    cache_dir: Path
    sleeps: list[float] = field(default_factory=list)


class _NoSleepTime(types.ModuleType):
    """Stand-in for the `time` module inside the client: sleep() records, the rest delegates."""

    def __init__(self, sleeps: list[float]) -> None:
        super().__init__("time")
        self._sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        """Record the wait instead of sleeping."""
        self._sleeps.append(float(seconds))

    def __getattr__(self, name: str):
        return getattr(time, name)


def hub_env(monkeypatch, hub: FakeHub, home: str | Path, *, fast_retries: bool = True) -> HubEnv:
    """Point the real, already-imported `huggingface_hub` client at `hub` with a private cache.

    The client reads its environment once, at import, into `huggingface_hub.constants`
    (and a few modules copy values), so setting environment variables is not enough in a
    test. This patches, for the test's duration (through `monkeypatch`):
      - constants.ENDPOINT and constants.HUGGINGFACE_CO_URL_TEMPLATE (hf_hub_url builds file
        URLs from the template, not from ENDPOINT), and the endpoint of the module-level
        HfApi behind `huggingface_hub.list_repo_refs`, `model_info`, ... (fixed at import);
      - HF_HOME = `home`, HF_HUB_CACHE = `home`/hub, assets/xet caches, token paths (no
        token is read or sent) and the agent-registry file inside `home`;
      - HF_HUB_OFFLINE False, HF_HUB_DISABLE_XET, HF_HUB_DISABLE_TELEMETRY (without it the
        client fetches {ENDPOINT}/api/agent-harnesses to build its user agent), implicit
        token off, progress bars off;
      - the same as environment variables, for code that reads them or for subprocesses;
      - with `fast_retries`, the client's time.sleep (1 s before each download resume,
        1-8 s backoff on metadata retries) is recorded in HubEnv.sleeps instead of slept.
    The client's shared HTTP session is closed so no connection from a previous test is
    reused. Returns a HubEnv (url, home, cache_dir, sleeps).
    """
    import importlib

    import huggingface_hub
    from huggingface_hub import constants, file_download, hf_api
    from huggingface_hub.utils import _http

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    cache_manager = importlib.import_module("huggingface_hub.utils._cache_manager")

    home = Path(home)
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    url = hub.url

    env = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "HUGGINGFACE_CO_STAGING",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)

    patches = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
        "HF_HUB_ETAG_TIMEOUT": constants.DEFAULT_ETAG_TIMEOUT,
        "HF_HUB_DOWNLOAD_TIMEOUT": constants.DEFAULT_DOWNLOAD_TIMEOUT,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", str(cache))

    out = HubEnv(url=url, home=home, cache_dir=cache)
    if fast_retries:
        fake_time = _NoSleepTime(out.sleeps)
        monkeypatch.setattr(file_download, "time", fake_time)
        monkeypatch.setattr(_http, "time", fake_time)
    huggingface_hub.close_session()
    return out
