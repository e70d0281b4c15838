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
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecdynError

__all__ = ["HubError", "HubFile", "HubRevision", "Branch", "Hub", "is_offline"]

STEP_BRANCH = re.compile(r"^step(\d+)$")

# weight layouts in order of preference: one format per revision is downloaded
_LAYOUTS = (
    ("safetensors", "model.safetensors", None),
    ("safetensors-sharded", "model.safetensors.index.json", r"^model-\d+-of-\d+\.safetensors$"),
    ("torch", "pytorch_model.bin", None),
    ("torch-sharded", "pytorch_model.bin.index.json", r"^pytorch_model-\d+-of-\d+\.bin$"),
)


class HubError(SpecdynError):
    """The hub (or the local cache) cannot give what was asked."""


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
    ``HF_HUB_CACHE``, ``HF_HOME``/hub, ~/.cache/huggingface/hub).
    """

    def __init__(
        self,
        repo: str,
        *,
        offline: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.repo = repo
        self.offline = is_offline(offline)
        self.cache_dir = _cache_dir(cache_dir)
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
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
            m = STEP_BRANCH.match(ref.name)
            if m:
                out.append(Branch(ref.name, int(m.group(1)), ref.target_commit))
        return sorted(out, key=lambda b: b.step)

    def revision(self, branch: Branch) -> HubRevision:
        """The files of one branch in the preferred weight format (metadata only).

        Raises HubError when the branch has no weight file of a known layout.
        """
        if self.offline:
            files = self._cached_files(branch)
        else:
            api = self._api()
            info = self._call(
                lambda: api.model_info(self.repo, revision=branch.commit, files_metadata=True),
                f"read {branch.name}",
            )
            files = {
                s.rfilename: HubFile(
                    s.rfilename,
                    int(s.lfs.size if s.lfs is not None else (s.size or 0)),
                    s.lfs.sha256 if s.lfs is not None else "",
                )
                for s in info.siblings or ()
            }
        for layout, entry, shard_pattern in _LAYOUTS:
            if entry not in files:
                continue
            if shard_pattern is None:
                weights = (files[entry],)
                extras = ()
            else:
                shards = sorted(n for n in files if re.match(shard_pattern, n))
                if not shards:
                    continue
                weights = tuple(files[n] for n in shards)
                extras = (files[entry],)
            if "config.json" in files:
                extras = (*extras, files["config.json"])
            return HubRevision(branch, layout, weights, extras)
        shown = ", ".join(sorted(files)[:6]) or "no files"
        raise HubError(
            f"{self.repo}@{branch.name}: no weight file of a known layout "
            f"(model.safetensors, pytorch_model.bin, or their sharded forms); it holds {shown}"
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

        fetched = self._downloaded.setdefault(revision.branch.name, set())
        entry = None
        for f in (*revision.extras, *revision.weights):
            if self.cached(revision, f.name) is None:
                if self.offline:
                    raise HubError(
                        f"{self.repo}@{revision.branch.name}: {f.name} is not in the cache and "
                        "HF_HUB_OFFLINE is set; unset it to download"
                    )
                fetched.add(f.name)
                if f.sha256:
                    self.reclaimed_bytes += self._clear_orphans(f.sha256)
            path = self._call(
                lambda f=f: hf_hub_download(
                    self.repo,
                    f.name,
                    revision=revision.branch.commit,
                    cache_dir=self.cache_dir,
                    endpoint=self.endpoint,
                    local_files_only=self.offline,
                ),
                f"download {f.name} of {revision.branch.name}",
            )
            if f.name == revision.entry:
                entry = Path(path)
        if entry is None:  # pragma: no cover - entry is always one of the files
            raise HubError(f"{self.repo}@{revision.branch.name}: {revision.entry} was not fetched")
        self._remember_branch(revision.branch)
        return entry

    def _clear_orphans(self, sha256: str) -> int:
        """Delete partial downloads of one blob left by killed processes; returns bytes freed.

        The client writes a blob into ``blobs/<sha256>.<random>.incomplete`` under a file
        lock and resumes only within one call, so a killed process leaves its part behind
        for good. Holding that same lock proves no download of the blob is under way.
        """
        from filelock import FileLock, Timeout
        from huggingface_hub import constants

        folder = self._repo_cache()
        if folder is None or not (folder / "blobs").is_dir():
            return 0
        orphans = list((folder / "blobs").glob(f"{sha256}*.incomplete"))
        if not orphans:
            return 0
        root = self.cache_dir or Path(constants.HF_HUB_CACHE)
        lock = root / ".locks" / folder.name / f"{sha256}.lock"
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
        ref = folder / "refs" / branch.name
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
        names = self._downloaded.pop(revision.branch.name, set())
        by_name = {f.name: f for f in (*revision.weights, *revision.extras)}
        for name in names:
            f = by_name.get(name)
            link = self.cached(revision, name)
            if f is None or link is None:
                continue
            blob = link.resolve()
            try:
                link.unlink()
            except FileNotFoundError:
                continue
            # identical files of different revisions share one blob: keep it while a later
            # revision needs it or any other snapshot (the user's own) still links to it
            if not (f.sha256 and f.sha256 in keep) and not self._linked_elsewhere(blob):
                try:
                    freed += blob.stat().st_size
                    blob.unlink()
                except FileNotFoundError:
                    pass
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

        return HfApi(endpoint=self.endpoint)

    def _call(self, fn, what: str):
        """Run one client call; turn the client's errors into one-line HubErrors."""
        from huggingface_hub import errors as hf_errors

        try:
            return fn()
        except hf_errors.RepositoryNotFoundError:
            raise HubError(
                f"{self.repo}: no such model repository on the hub (or it is private); "
                "check --model"
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
            if type(exc).__name__ in ("ConnectError", "ConnectionError", "ConnectTimeout",
                                      "ReadTimeout", "RemoteProtocolError", "ReadError"):  # fmt: skip
                raise HubError(
                    f"{self.repo}: cannot {what}: the hub is unreachable ({_first_line(exc)}); "
                    "check the network, or run with HF_HUB_OFFLINE=1 to use only what is cached"
                ) from None
            raise

    def _repo_cache(self) -> Path | None:
        """The cache folder of this repo, if any."""
        from huggingface_hub import constants

        root = self.cache_dir or Path(constants.HF_HUB_CACHE)
        folder = root / ("models--" + self.repo.replace("/", "--"))
        return folder if folder.is_dir() else None

    def _cached_branches(self) -> list[Branch]:
        """Step branches recorded in the cache's refs/ folder."""
        folder = self._repo_cache()
        if folder is None or not (folder / "refs").is_dir():
            raise HubError(
                f"{self.repo}: nothing cached and HF_HUB_OFFLINE is set; unset it to download"
            )
        out = []
        for ref in (folder / "refs").iterdir():
            m = STEP_BRANCH.match(ref.name)
            if m and ref.is_file():
                commit = ref.read_text().strip()
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
                name = path.relative_to(snapshot).as_posix()
                blob = path.resolve().name
                sha = blob if len(blob) == 64 else ""
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
