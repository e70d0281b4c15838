"""Model repositories on the Hugging Face hub, through `huggingface_hub` and its cache.

    hub = Hub("EleutherAI/pythia-70m")
    hub.branches()                          # [Branch("step0", 0, commit), ...] (^step\\d+$)
    rev = hub.revision(branch)              # HubRevision: the weight files of one format
    path = hub.fetch(rev)                   # local weights (downloads what is not cached)
    hub.drop(rev)                           # delete what this Hub downloaded

Offline (``HF_HUB_OFFLINE=1``, or ``Hub(offline=True)``) everything comes from the
local cache: the branches and files it holds, their LFS sha256 read from the blob
names. Errors are `HubError` one-liners saying what to do (no network → how to use
the cache; a repo or branch that does not exist).

Every value the endpoint (``HF_ENDPOINT``) sends that ends up in a cache path is checked
before use: commits are 40 lowercase hex, LFS sha256s 64, step branches ``step<N>``, file
names relative with plain components; the commit and ETag of each file answer are checked
while the client downloads (`_check_file_answer`), since the client names its blob and lock
files after them. Every file this module deletes or creates goes through `Hub._in_cache`,
which refuses a path that does not lie inside the cache root once symlinks are resolved.

No request waits forever (docs/pythia.md#stalled-hub): every request this module makes has
connect and read timeouts (``SPECDYN_HUB_TIMEOUT``, default 30 s, or the client's own
``HF_HUB_*_TIMEOUT`` where lower); an answer whose body arrives slower than
``SPECDYN_HUB_MIN_RATE`` bytes/s over a window of that length is abandoned (the client
resumes a download with a Range request); one request is tried at most
1 + ``SPECDYN_HUB_RETRIES`` times. An API answer that is not JSON is refused.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HubError, option_ref

__all__ = ["HubError", "HubFile", "HubRevision", "Branch", "Hub", "HubLimits", "is_offline"]

# matched whole (fullmatch): ASCII digits without leading zeros, so "step5\n", "step05" or
# "step" + a non-ASCII digit are not step branches
STEP_BRANCH = re.compile(r"step(0|[1-9][0-9]*)")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git file's ETag: its blob id
_FILE_PART = re.compile(r"[A-Za-z0-9._+=@,~-]+")  # one component of a repo file name
_REPO_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_MAX_REPO_ID = 96  # the hub's own limit on "owner/name"
_MAX_FILE_NAME = 255  # characters of a repo file name this module accepts
_SHOWN = 80  # characters of a refused value quoted in an error
_SHOWN_PATH = 400  # characters of a path quoted in an error

# weight layouts in order of preference: one format per revision is downloaded; shard
# names are matched whole (fullmatch) and in ASCII digits
_LAYOUTS = (
    ("safetensors", "model.safetensors", None),
    ("safetensors-sharded", "model.safetensors.index.json", r"model-[0-9]+-of-[0-9]+\.safetensors"),
    ("torch", "pytorch_model.bin", None),
    ("torch-sharded", "pytorch_model.bin.index.json", r"pytorch_model-[0-9]+-of-[0-9]+\.bin"),
)


# stalled-hub limits (docs/pythia.md#stalled-hub): environment variable → default
_TIMEOUT_ENV, _DEFAULT_TIMEOUT = "SPECDYN_HUB_TIMEOUT", 30.0  # seconds, connect and read
_RETRIES_ENV, _DEFAULT_RETRIES = "SPECDYN_HUB_RETRIES", 3  # extra tries of one request
_MIN_RATE_ENV, _DEFAULT_MIN_RATE = "SPECDYN_HUB_MIN_RATE", 10_000.0  # bytes/s
_TIMEOUT_KINDS = ("connect", "read", "write", "pool")


@dataclass(frozen=True)
class HubLimits:
    """How long a hub request may take (docs/pythia.md#stalled-hub).

    timeout: seconds to connect and between two reads (float > 0); retries: extra tries
    of one request after a timeout, a too slow answer or a network error (int >= 0);
    min_rate: bytes/s an answer's body must average over each window of `timeout`
    seconds (float >= 0; 0 turns the check off).
    """

    timeout: float = _DEFAULT_TIMEOUT
    retries: int = _DEFAULT_RETRIES
    min_rate: float = _DEFAULT_MIN_RATE

    @classmethod
    def from_env(cls) -> HubLimits:
        """The limits ``SPECDYN_HUB_TIMEOUT``, ``_RETRIES`` and ``_MIN_RATE`` set now (the
        defaults where unset); HubError for a value that is not a number in range."""
        return cls(
            _env_number(_TIMEOUT_ENV, _DEFAULT_TIMEOUT, positive=True),
            int(_env_number(_RETRIES_ENV, _DEFAULT_RETRIES, integer=True)),
            _env_number(_MIN_RATE_ENV, _DEFAULT_MIN_RATE),
        )


def _env_number(name: str, default: float, *, positive: bool = False, integer: bool = False):
    """A finite number >= 0 (> 0 if `positive`, whole if `integer`) from the environment."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a whole number >= 0" if integer else "a number > 0" if positive else "a number >= 0"
        raise HubError(f"{name}={_shown(raw)}: not {kind}; unset it or set e.g. {default:g}")
    return value


def is_offline(flag: bool | None = None) -> bool:
    """`flag` when given, else whether ``HF_HUB_OFFLINE`` is set to a true value now."""
    if flag is not None:
        return flag
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Branch:
    """A step branch: its name, the training step it holds and its commit (40 hex)."""

    name: str
    step: int
    commit: str


@dataclass(frozen=True)
class HubFile:
    """One file of a revision: repo path, size in bytes, LFS sha256 ("" for git files)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class HubRevision:
    """What one revision holds in the chosen format.

    branch: the `Branch`; layout: "safetensors", "safetensors-sharded", "torch" or
    "torch-sharded"; weights: the weight files (shards in order); extras: small
    files fetched with them (config.json, the shard index).
    """

    branch: Branch
    layout: str
    weights: tuple[HubFile, ...]
    extras: tuple[HubFile, ...]

    @property
    def size(self) -> int:
        """Bytes of every file to fetch."""
        return sum(f.size for f in (*self.weights, *self.extras))

    @property
    def content(self) -> tuple[str, ...]:
        """The weight files' sha256s, sorted: equal for byte-identical weights."""
        return tuple(sorted(f.sha256 or f"{f.name}:{f.size}" for f in self.weights))

    @property
    def entry(self) -> str:
        """The file a checkpoint is opened from: the weights, or the shard index."""
        if self.layout.endswith("sharded"):
            return next(f.name for f in self.extras if f.name.endswith(".index.json"))
        return self.weights[0].name


def _shown(value: object, limit: int = _SHOWN) -> str:
    """A value quoted for a one-line error: repr (escapes newlines, NULs), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_file_name(name: object) -> bool:
    """Whether `name` is not a plain relative repo path ("a/b.bin": no "..", ".", empty
    or odd components, no absolute path, backslash, drive letter or control character)."""
    if not isinstance(name, str) or not name or len(name) > _MAX_FILE_NAME:
        return True
    parts = name.split("/")
    return any(p in (".", "..") or not _FILE_PART.fullmatch(p) for p in parts)


def _check_repo_id(repo: object) -> str:
    """`repo` if it is a hub repo id (owner/name; it names the cache folder), else HubError."""
    ok = (
        isinstance(repo, str)
        and len(repo) <= _MAX_REPO_ID
        and 1 <= len(parts := repo.split("/")) <= 2
        and all(_REPO_PART.fullmatch(p) for p in parts)
        and ".." not in repo
        and "--" not in repo
    )
    if not ok:
        raise HubError(
            f"{_shown(repo)}: not a hub repo id (owner/name of letters, digits, '.', '_', "
            f"'-'); check {option_ref('model')}",
            option="model",
        )
    return repo


@dataclass(frozen=True)
class _FileAnswer:
    """What the hub must answer for one file while `Hub.fetch` downloads it."""

    hub: Hub
    branch: Branch
    file: HubFile


@dataclass
class _Guard:
    """What the hooks enforce while `Hub._call` runs one client call on this thread.

    what: the call, for errors ("list its branches"); api: every 2xx answer must be JSON;
    expected: the file being downloaded (its answers are checked), or None; tries: each
    request's count (method, URL); slow: answers abandoned as slower than min_rate.
    """

    hub: Hub
    what: str
    api: bool
    expected: _FileAnswer | None = None
    tries: Counter = field(default_factory=Counter)
    slow: int = 0


_GUARD = threading.local()  # .guard: the _Guard of the client call on this thread


def _on_request(request) -> None:
    """httpx request hook: cap the request's timeouts at this Hub's and count its tries."""
    guard: _Guard | None = getattr(_GUARD, "guard", None)
    if guard is None:
        return
    limit = guard.hub.limits.timeout
    old = dict(request.extensions.get("timeout") or {})
    capped = {k: limit if old.get(k) is None else min(old[k], limit) for k in _TIMEOUT_KINDS}
    request.extensions = {**request.extensions, "timeout": capped}
    key = (request.method, str(request.url))
    guard.tries[key] += 1
    if guard.tries[key] > 1 + guard.hub.limits.retries:
        raise guard.hub._stalled(guard, guard.tries[key] - 1)


def _on_response(response) -> None:
    """httpx response hook: watch the body's rate, check a download's answer, and refuse
    an API answer that is not JSON (before the client parses it)."""
    guard: _Guard | None = getattr(_GUARD, "guard", None)
    if guard is None:
        return
    response.stream = _watched_stream(type(response).__module__)(response.stream, guard)
    if guard.expected is not None:
        _check_file_answer(guard.expected, response)
    if guard.api and 200 <= response.status_code < 300 and response.request.method != "HEAD":
        response.read()
        try:
            json.loads(response.content)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise guard.hub._not_json(guard, response) from None


@functools.cache
def _watched_stream(module: str) -> type:
    """A byte-stream wrapper of the client's HTTP library (httpx or its fork) that abandons
    an answer arriving slower than the minimum rate, as a read timeout (the client resumes)."""
    lib = sys.modules[module.split(".")[0]]

    class Watched(lib.SyncByteStream):
        """The answer's body; raises ReadTimeout when a window of `timeout` seconds brought
        fewer than min_rate · timeout bytes."""

        def __init__(self, stream, guard: _Guard) -> None:
            self._stream, self._guard = stream, guard

        @property
        def elapsed(self):
            """The wrapped stream's elapsed time (httpx reads it after closing)."""
            return getattr(self._stream, "elapsed", None)

        def __iter__(self):
            limits = self._guard.hub.limits
            window, floor = limits.timeout, limits.min_rate * limits.timeout
            start, got = time.monotonic(), 0
            for chunk in self._stream:
                got += len(chunk)
                now = time.monotonic()
                if now - start >= window:
                    if limits.min_rate and got < floor:
                        self._guard.slow += 1
                        raise lib.ReadTimeout(
                            f"{got} bytes in {now - start:.1f} s, below {limits.min_rate:g} B/s"
                        )
                    start, got = now, 0
                yield chunk

        def close(self) -> None:
            self._stream.close()

    return Watched


def _add_hooks(session) -> None:
    """Put this module's hooks on an httpx client once (no-ops outside `Hub._call`)."""
    hooks = session.event_hooks
    if _on_request not in hooks["request"] or _on_response not in hooks["response"]:
        session.event_hooks = {
            **hooks,
            "request": [*(h for h in hooks["request"] if h is not _on_request), _on_request],
            "response": [*(h for h in hooks["response"] if h is not _on_response), _on_response],
        }


def _hooked_session() -> None:
    """Hooks on the client's shared session, and on every session it makes later: the client
    closes and re-creates it after a connection error, in the middle of a call."""
    from huggingface_hub import get_session, set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)
    if previous is not None and not getattr(previous, "specdyn_hooks", False):

        def factory():
            """The user's (or the default) client, with this module's hooks."""
            client = previous()
            _add_hooks(client)
            return client

        factory.specdyn_hooks = True
        set_client_factory(factory)
    _add_hooks(get_session())


def _check_file_answer(expected: _FileAnswer, response) -> None:
    """Refuse a file-metadata answer (HEAD) whose commit or ETag would
    put a client file outside the cache, while `Hub.fetch` downloads on this thread.

    The client stores a download as ``blobs/<etag>`` (``.incomplete`` while it runs), locks
    ``.locks/<repo>/<etag>.lock``, links ``snapshots/<commit>/<file>`` and on a 404 touches
    ``.no_exist/<commit>/<file>``, all from the answer's headers; an answer without
    X-Repo-Commit is refused by the client itself.
    """
    if response.request.method != "HEAD":
        return
    hub, branch, f = expected.hub, expected.branch, expected.file
    commit = response.headers.get("X-Repo-Commit")
    if commit is None:
        return
    if commit != branch.commit:
        what = f"answered {f.name} with commit {_shown(commit)}, not {branch.commit} as asked"
        raise hub._refused(branch, what)
    if response.status_code >= 400:
        hub._check_client_paths(branch, f, None)
        return
    raw = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    if raw is None:
        return
    etag = raw.lstrip("W/").strip('"')  # exactly as the client normalizes it
    if f.sha256 and etag != f.sha256:
        what = f"answered {f.name} with ETag {_shown(etag)}, not its LFS sha256 {f.sha256}"
        raise hub._refused(branch, what)
    if not f.sha256 and not _GIT_OID.fullmatch(etag):
        what = f"answered {f.name} with ETag {_shown(etag)}, not a git blob id (40/64 hex)"
        raise hub._refused(branch, what)
    hub._check_client_paths(branch, f, etag)


def _cache_dir(explicit: str | os.PathLike | None) -> Path | None:
    """The hub cache folder the client uses now (None: the client's own default)."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return None


class Hub:
    """One model repository on the hub, read through the local cache.

    repo: the repo id ("EleutherAI/pythia-70m"); offline: None reads
    ``HF_HUB_OFFLINE``; cache_dir: the hub cache (default the client's:
    ``HF_HUB_CACHE``, ``HF_HOME``/hub, ~/.cache/huggingface/hub); limits: timeouts,
    retries and minimum rate of every request (default `HubLimits.from_env`); endpoint:
    the hub's URL (default ``HF_ENDPOINT``, else the client's); token: the access token
    sent (default: the client's own, ``HF_TOKEN`` or the saved login). A sweep's workers
    get the client's endpoint, token and limits (`specdyn.pythia` with ``scheduler``).
    """

    def __init__(
        self,
        repo: str,
        *,
        offline: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        limits: HubLimits | None = None,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> None:
        self.repo = _check_repo_id(repo)
        self.limits = limits if limits is not None else HubLimits.from_env()
        self.offline = is_offline(offline)
        self.cache_dir = _cache_dir(cache_dir)
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
        self.token = token
        self._downloaded: dict[str, set[str]] = {}  # branch → files this Hub fetched
        self.reclaimed_bytes = 0  # partial downloads of killed processes deleted (bytes)

    # ------------------------------------------------------------------ listing

    def branches(self) -> list[Branch]:
        """Every ``step<N>`` branch, by step (offline: those the cache knows)."""
        if self.offline:
            return self._cached_branches()
        api = self._api()
        refs = self._call(lambda: api.list_repo_refs(self.repo), "list its branches")
        out = []
        for ref in refs.branches:
            m = STEP_BRANCH.fullmatch(ref.name) if isinstance(ref.name, str) else None
            if m:
                branch = Branch(ref.name, int(m.group(1)), ref.target_commit)
                self._check_branch(branch)
                out.append(branch)
        return sorted(out, key=lambda b: b.step)

    def revision(self, branch: Branch) -> HubRevision:
        """The files of one branch in the preferred weight format (metadata only).

        Raises HubError when the branch has no weight file of a known layout, or when
        the hub reports a commit, file name, size or LFS sha256 that is not well formed.
        """
        self._check_branch(branch)
        if self.offline:
            files = self._cached_files(branch)
        else:
            api = self._api()
            info = self._call(
                lambda: api.model_info(
                    self.repo,
                    revision=branch.commit,
                    files_metadata=True,
                    timeout=self.limits.timeout,
                ),
                f"read {branch.name}",
            )
            files = {}
            for sibling in info.siblings or ():
                if not isinstance(sibling.rfilename, str):
                    raise self._refused(branch, f"lists a file named {_shown(sibling.rfilename)}")
                files[sibling.rfilename] = sibling

        def pick(names: tuple[str, ...]) -> tuple[HubFile, ...]:
            """The named listed files, checked (only these reach a cache path)."""
            return tuple(self._hub_file(branch, files[n]) for n in names)

        for layout, entry, shard_pattern in _LAYOUTS:
            if entry not in files:
                continue
            if shard_pattern is None:
                weights = (entry,)
                extras = ()
            else:
                shards = sorted(n for n in files if re.fullmatch(shard_pattern, n))
                if not shards:
                    continue
                weights = tuple(shards)
                extras = (entry,)
            if "config.json" in files:
                extras = (*extras, "config.json")
            return HubRevision(branch, layout, pick(weights), pick(extras))
        shown = ", ".join(_shown(n) for n in sorted(files)[:6]) or "no files"
        raise HubError(
            f"{self.repo}@{branch.name}: no weight file of a known layout "
            f"(model.safetensors, pytorch_model.bin, or their sharded forms); it holds {shown}"
        )

    def _hub_file(self, branch: Branch, sibling) -> HubFile:
        """A listed file (a model-info sibling, or a HubFile from the cache), checked."""
        if isinstance(sibling, HubFile):
            self._check_file(branch, sibling)
            return sibling
        self._check_file(branch, HubFile(sibling.rfilename, 0, ""))  # the name, first
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else sibling.size
        sha256 = lfs.sha256 if lfs is not None else ""
        if lfs is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            what = f"reports LFS sha256 {_shown(sha256)} for {sibling.rfilename}, not 64 hex"
            raise self._refused(branch, what)
        if type(size) is not int or size < 0:
            raise self._refused(branch, f"reports size {_shown(size)} for {sibling.rfilename}")
        return HubFile(sibling.rfilename, size, sha256)

    def _check_branch(self, branch: Branch) -> None:
        """HubError unless the branch is ``step<N>`` at a 40-hex commit (they name cache paths)."""
        if not (isinstance(branch.name, str) and STEP_BRANCH.fullmatch(branch.name)):
            raise HubError(
                f"{self.repo}@{_shown(branch.name)}: not a step<N> branch name; "
                "specdyn reads step branches only"
            )
        if not (isinstance(branch.commit, str) and _COMMIT.fullmatch(branch.commit)):
            raise self._refused(
                branch, f"lists commit {_shown(branch.commit)}, not 40 lowercase hex"
            )

    def _check_file(self, branch: Branch, f: HubFile) -> None:
        """HubError unless the file's name is a plain relative path and its sha256 is
        empty (a git file) or 64 hex (they name cache paths)."""
        if _bad_file_name(f.name):
            raise self._refused(
                branch, f"lists the file name {_shown(f.name)}, not a plain relative path"
            )
        if f.sha256 and not (isinstance(f.sha256, str) and _SHA256.fullmatch(f.sha256)):
            what = f"reports LFS sha256 {_shown(f.sha256)} for {f.name}, not 64 hex"
            raise self._refused(branch, what)

    def _check_revision(self, revision: HubRevision) -> None:
        """Check the branch and every file of a revision before any path is built from them."""
        self._check_branch(revision.branch)
        for f in (*revision.weights, *revision.extras):
            self._check_file(revision.branch, f)

    def _refused(self, branch: Branch, what: str) -> HubError:
        """The HubError for a value the hub sent about `branch` that must not reach a path."""
        return HubError(
            f"{self.repo}@{branch.name}: the hub {what}; refused (a cache path is built from "
            f"it); check that {self.endpoint or 'the hub endpoint'} (HF_ENDPOINT) is a "
            "Hugging Face hub"
        )

    # ------------------------------------------------------------------ files

    def cached(self, revision: HubRevision, name: str) -> Path | None:
        """The cached local path of one file of a revision, or None."""
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            self.repo, name, cache_dir=self.cache_dir, revision=revision.branch.commit
        )
        return Path(found) if isinstance(found, str) else None

    def missing_bytes(self, revision: HubRevision) -> int:
        """Bytes of the revision's files not in the cache yet."""
        return sum(
            f.size
            for f in (*revision.weights, *revision.extras)
            if self.cached(revision, f.name) is None
        )

    def fetch(self, revision: HubRevision) -> Path:
        """Download what the revision needs (resuming partial downloads); returns the local
        path of `revision.entry`. Files already cached are used, never fetched again."""
        from huggingface_hub import hf_hub_download

        self._check_revision(revision)
        branch = revision.branch
        fetched = self._downloaded.setdefault(branch.name, set())
        entry = None
        for f in (*revision.extras, *revision.weights):
            if self.cached(revision, f.name) is None:
                if self.offline:
                    raise HubError(
                        f"{self.repo}@{branch.name}: {f.name} is not in the cache and "
                        "HF_HUB_OFFLINE is set; unset it to download"
                    )
                fetched.add(f.name)
                if f.sha256:
                    self.reclaimed_bytes += self._clear_orphans(f.sha256, branch.name)
            try:
                path = self._call(
                    lambda f=f: hf_hub_download(
                        self.repo,
                        f.name,
                        revision=branch.commit,
                        cache_dir=self.cache_dir,
                        endpoint=self.endpoint,
                        local_files_only=self.offline,
                        etag_timeout=self.limits.timeout,
                        token=self.token,
                    ),
                    f"download {f.name} of {branch.name}",
                    expected=_FileAnswer(self, branch, f),
                )
            except HubError:
                if f.sha256 and f.name in fetched:  # the client's part of a stalled download
                    self._clear_orphans(f.sha256, branch.name)
                raise
            self._check_fetched(Path(path), branch, f)
            if f.name == revision.entry:
                entry = Path(path)
        if entry is None:  # pragma: no cover - entry is always one of the files
            raise HubError(f"{self.repo}@{revision.branch.name}: {revision.entry} was not fetched")
        self._remember_branch(revision.branch)
        return entry

    def _clear_orphans(self, sha256: str, branch: str = "?") -> int:
        """Delete partial downloads of one blob left by killed processes; returns bytes freed.

        The client writes a blob into ``blobs/<sha256>.<random>.incomplete`` under a file
        lock and resumes only within one call, so a killed process leaves its part behind
        for good. Holding that same lock proves no download of the blob is under way.
        `branch` names the revision in errors.
        """
        from filelock import FileLock, Timeout

        if not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            raise HubError(f"{self.repo}@{branch}: LFS sha256 {_shown(sha256)} is not 64 hex")
        folder = self._repo_cache()
        if folder is None or not (folder / "blobs").is_dir():
            return 0
        orphans = [
            self._in_cache(path, folder / "blobs", branch, "delete", follow=False)
            for path in (folder / "blobs").glob(f"{sha256}*.incomplete")
        ]
        if not orphans:
            return 0
        lock = self._cache_root() / ".locks" / folder.name / f"{sha256}.lock"
        self._in_cache(lock, self._cache_root() / ".locks", branch, "create")
        freed = 0
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(lock, timeout=0):
                for path in orphans:
                    try:
                        size = path.stat().st_size
                        path.unlink()
                        freed += size
                    except OSError:
                        pass
        except (Timeout, OSError):
            return 0  # another process is downloading this blob: its part is not an orphan
        return freed

    def _remember_branch(self, branch: Branch) -> None:
        """Write ``refs/<branch>`` in the cache (the client does not when it downloads by
        commit), so that offline runs find the branch."""
        folder = self._repo_cache()
        if folder is None:
            return
        ref = self._in_cache(folder / "refs" / branch.name, folder / "refs", branch.name, "write")
        try:
            if not ref.is_file() or ref.read_text().strip() != branch.commit:
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(branch.commit)
        except OSError:
            pass  # the ref only helps offline listing; downloads worked

    def drop(self, revision: HubRevision, keep: set[str] = frozenset()) -> int:
        """Delete the files this Hub downloaded for `revision` from the cache (the
        snapshot link and its blob), except those whose sha256 is in `keep` (still
        needed by a later revision). Files that were cached before are never touched.
        Returns the bytes freed."""
        freed = 0
        refused: list[HubError] = []
        branch = revision.branch.name
        names = self._downloaded.pop(branch, set())
        by_name = {f.name: f for f in (*revision.weights, *revision.extras)}
        folder = self._repo_cache()
        for name in sorted(names):
            f = by_name.get(name)
            link = self.cached(revision, name) if folder is not None else None
            if f is None or link is None:
                continue
            try:  # a refused file is kept and named; the others are still deleted
                self._in_cache(link, folder / "snapshots", branch, "delete", follow=False)
                blob = link.resolve() if link.is_symlink() else None
                if blob is not None:
                    self._in_cache(blob, folder / "blobs", branch, "delete", follow=False)
            except HubError as exc:
                refused.append(exc)
                continue
            try:
                size = link.stat().st_size if blob is None else 0
                link.unlink()
                freed += size
            except FileNotFoundError:
                continue
            # identical files of different revisions share one blob: keep it while a later
            # revision needs it or any other snapshot (the user's own) still links to it
            if blob is None or (f.sha256 and f.sha256 in keep) or self._linked_elsewhere(blob):
                continue
            try:
                freed += blob.stat().st_size
                blob.unlink()
            except FileNotFoundError:
                pass
        if refused:
            raise refused[0]
        return freed

    def _linked_elsewhere(self, blob: Path) -> bool:
        """Whether a snapshot file of this repo still resolves to `blob`."""
        folder = self._repo_cache()
        if folder is None or not (folder / "snapshots").is_dir():
            return False
        for path in (folder / "snapshots").rglob("*"):
            if path.is_symlink() and path.resolve() == blob:
                return True
        return False

    # ------------------------------------------------------------------ helpers

    def _api(self):
        """An HfApi on this Hub's endpoint."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def _call(self, fn, what: str, *, expected: _FileAnswer | None = None):
        """Run one client call under this Hub's limits (`_Guard`; `expected`: the file a
        download must answer with); turn the client's errors into one-line HubErrors."""
        _hooked_session()
        guard = _Guard(self, what, api=expected is None, expected=expected)
        _GUARD.guard = guard
        try:
            return self._mapped(fn, guard)
        finally:
            _GUARD.guard = None

    def _mapped(self, fn, guard: _Guard):
        """`fn()`, the client's errors turned into one-line HubErrors."""
        from huggingface_hub import errors as hf_errors

        what = guard.what
        try:
            return fn()
        except HubError:
            raise  # a refused answer (_check_file_answer), a stall, a non-JSON answer
        except hf_errors.RepositoryNotFoundError:
            raise HubError(
                f"{self.repo}: no such model repository on the hub (or it is private); "
                f"check {option_ref('model')}",
                option="model",
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise HubError(f"{self.repo}: cannot {what}: the revision does not exist") from None
        except hf_errors.OfflineModeIsEnabled:
            raise HubError(
                f"{self.repo}: cannot {what}: HF_HUB_OFFLINE is set and it is not cached"
            ) from None
        except hf_errors.LocalEntryNotFoundError as exc:
            raise HubError(
                f"{self.repo}: cannot {what}: the hub is unreachable and the file is not "
                f"cached ({_first_line(exc)}); check the network, or run with "
                "HF_HUB_OFFLINE=1 to use only what is cached"
            ) from None
        except hf_errors.EntryNotFoundError:
            raise HubError(
                f"{self.repo}: cannot {what}: the file is not in that revision"
            ) from None
        except hf_errors.HfHubHTTPError as exc:
            raise HubError(f"{self.repo}: cannot {what}: {_first_line(exc)}") from None
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise HubError(f"{self.repo}: cannot {what}: {exc}") from None
            raise HubError(
                f"{self.repo}: cannot {what}: the hub is unreachable ({_first_line(exc)}); "
                "check the network, or run with HF_HUB_OFFLINE=1 to use only what is cached"
            ) from None
        except Exception as exc:  # httpx / requests connection errors have no common base
            kinds = {c.__name__ for c in type(exc).__mro__}
            if "TimeoutException" in kinds and "ConnectTimeout" not in kinds:
                raise self._stalled(guard, sum(guard.tries.values()) - 1) from None
            if guard.api and kinds & {"KeyError", "TypeError", "AttributeError", "ValueError"}:
                raise HubError(
                    f"{self.repo}: cannot {what}: {self._endpoint()} answered JSON the hub "
                    f"client cannot read ({_first_line(exc)}); check HF_ENDPOINT"
                ) from None
            if type(exc).__name__ in ("ConnectError", "ConnectionError", "ConnectTimeout",
                                      "ReadTimeout", "RemoteProtocolError", "ReadError"):  # fmt: skip
                raise HubError(
                    f"{self.repo}: cannot {what}: the hub is unreachable ({_first_line(exc)}); "
                    "check the network, or run with HF_HUB_OFFLINE=1 to use only what is cached"
                ) from None
            raise

    def _endpoint(self) -> str:
        """The hub's base URL (HF_ENDPOINT, or the client's default)."""
        from huggingface_hub import constants

        return self.endpoint or constants.ENDPOINT

    def _stalled(self, guard: _Guard, retries: int) -> HubError:
        """The HubError of a call given up on: no answer in time, or one too slow. Its
        ``stalled`` is True: a sweep flags the revision as failed and goes on."""
        limits = self.limits
        slow = f" or slower than {limits.min_rate:g} B/s" if limits.min_rate else ""
        err = HubError(
            f"{self.repo}: cannot {guard.what}: {self._endpoint()} gave no answer within "
            f"{limits.timeout:g} s{slow} (tried {_times(1 + max(retries, 0))}); check the network "
            f"and HF_ENDPOINT, raise {_TIMEOUT_ENV} or {_RETRIES_ENV}, or run with "
            "HF_HUB_OFFLINE=1 to use only what is cached"
        )
        err.stalled = True
        return err

    def _not_json(self, guard: _Guard, response) -> HubError:
        """The HubError of an API answer that is not JSON (a proxy's page, garbage)."""
        kind = response.headers.get("Content-Type") or "no Content-Type"
        head = response.content[:40]
        return HubError(
            f"{self.repo}: cannot {guard.what}: {self._endpoint()} answered "
            f"{response.request.url.path} with {_shown(kind)}, not JSON (starts "
            f"{_shown(head)}); check HF_ENDPOINT (a hub's URL, not a proxy's login page)"
        )

    def _cache_root(self) -> Path:
        """The hub cache folder (this Hub's, else the client's)."""
        from huggingface_hub import constants

        return Path(self.cache_dir or constants.HF_HUB_CACHE)

    def _repo_folder(self) -> Path:
        """Where this repo's cache folder is (whether or not it exists)."""
        return self._cache_root() / ("models--" + self.repo.replace("/", "--"))

    def _repo_cache(self) -> Path | None:
        """The cache folder of this repo, if any."""
        folder = self._repo_folder()
        return folder if folder.is_dir() else None

    def _in_cache(
        self, path: Path, area: Path, branch: str, action: str, *, follow: bool = True
    ) -> Path:
        """`path` if it lies inside `area` of the cache once symlinks are resolved, else
        HubError: the one check before this module deletes, creates or reads a cache file.

        area: a folder under the cache root (``blobs/``, ``.locks/``); it is taken from the
        resolved root, so a symlink inside the cache that leads out is refused too.
        follow: resolve `path` itself (a file that is opened or written); False for an
        entry that is unlinked (a symlink is removed, not what it points to).
        """
        root = self._cache_root()
        base = root.resolve() / area.relative_to(root)
        target = path.resolve() if follow else path.parent.resolve() / path.name
        if path.name in ("", ".", "..") or target == base or not target.is_relative_to(base):
            raise HubError(
                f"{self.repo}@{branch}: refusing to {action} {_shown(str(path), _SHOWN_PATH)}: "
                f"it resolves to {_shown(str(target), _SHOWN_PATH)}, outside the hub cache's "
                f"{_shown(str(area), _SHOWN_PATH)}; remove the symlink that leads there, or "
                "the repo's cache folder"
            )
        return path

    def _check_client_paths(self, branch: Branch, f: HubFile, etag: str | None) -> None:
        """HubError unless every file the client is about to write for `f` lies inside the
        cache (etag None: the hub said the file is missing, so the client records that)."""
        folder = self._repo_folder()
        locks = self._cache_root() / ".locks"
        name = branch.name
        if etag is None:
            self._in_cache(folder / ".no_exist" / branch.commit / f.name, folder, name, "create")
            return
        self._in_cache(locks / folder.name / f"{etag}.lock", locks, name, "create")
        self._in_cache(folder / "blobs" / f"{etag}.incomplete", folder / "blobs", name, "create")
        self._in_cache(folder / "blobs" / etag, folder / "blobs", name, "create", follow=False)
        pointer = folder / "snapshots" / branch.commit / f.name
        self._in_cache(pointer, folder / "snapshots", name, "create", follow=False)

    def _check_fetched(self, path: Path, branch: Branch, f: HubFile) -> None:
        """HubError unless the client's file is in this repo's snapshots and links to a blob."""
        folder = self._repo_folder()
        self._in_cache(path, folder / "snapshots", branch.name, "use", follow=False)
        if path.is_symlink():
            self._in_cache(path.resolve(), folder / "blobs", branch.name, "use", follow=False)

    def _cached_branches(self) -> list[Branch]:
        """Step branches recorded in the cache's refs/ folder."""
        folder = self._repo_cache()
        if folder is None or not (folder / "refs").is_dir():
            raise HubError(
                f"{self.repo}: nothing cached and HF_HUB_OFFLINE is set; unset it to download"
            )
        out = []
        for ref in (folder / "refs").iterdir():
            m = STEP_BRANCH.fullmatch(ref.name)
            if m and ref.is_file():
                commit = ref.read_text().strip()
                if not _COMMIT.fullmatch(commit):
                    raise HubError(
                        f"{self.repo}@{ref.name}: the cached ref {ref} holds {_shown(commit)}, "
                        "not a 40-hex commit; delete that file and run online once"
                    )
                if (folder / "snapshots" / commit).is_dir():
                    out.append(Branch(ref.name, int(m.group(1)), commit))
        return sorted(out, key=lambda b: b.step)

    def _cached_files(self, branch: Branch) -> dict[str, HubFile]:
        """The files of a cached snapshot; an LFS blob's name is its sha256."""
        folder = self._repo_cache()
        snapshot = folder / "snapshots" / branch.commit if folder else None
        if snapshot is None or not snapshot.is_dir():
            raise HubError(f"{self.repo}@{branch.name}: not in the cache (HF_HUB_OFFLINE is set)")
        files = {}
        for path in snapshot.rglob("*"):
            if path.is_file():
                self._in_cache(path, folder, branch.name, "read")
                name = path.relative_to(snapshot).as_posix()
                blob = path.resolve().name
                sha = blob if _SHA256.fullmatch(blob) else ""
                files[name] = HubFile(name, path.stat().st_size, sha)
        return files


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type)."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def free_bytes(folder: Path) -> int:
    """Free disk space where `folder` (or its nearest existing parent) lives."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _times(n: int) -> str:
    """ "once", "2 times", ... for messages."""
    return "once" if n == 1 else f"{n} times"
