"""The Pythia training trajectories, streamed from the hub into a store (docs/pythia.md).

    plan = specdyn.plan_pythia("70m", steps="log:20")     # what would be fetched (no download)
    result = specdyn.pythia("160m", steps="0:143000:1000") # download, analyse, delete, repeat

Per revision only the weight files of one format are fetched (`specdyn.pythia._hub`); the
agreement's reference (the last revision) comes first, then the others in step
order, the next one downloading in a background thread while the current one is
analysed (one ahead at most, so the cache holds at most two revisions of this
sweep); what specdyn downloaded is deleted once analysed unless ``keep``. Before
anything is fetched, every weight file's LFS sha256 is compared across revisions:
byte-identical revisions are flagged and (by default) analysed once, revisions
sharing some shard with another are flagged as suspect; the flags go into the
store (`Run.step_flags`), the result and every plot. A revision whose files turn
out corrupt is flagged "failed" and the sweep goes on.

With ``scheduler`` (docs/distributed.md#pythia-on-workers) the same plan is made here,
duplicates included, and each revision to analyse becomes one Dask task that downloads
it into a cache of its own on the worker's local disk (`RemoteRevision`), analyses it and
deletes it; this process writes the store.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..analysis import (
    ComputeOptions,
    DaskSteps,
    Progress,
    RunAnalysis,
    StepStream,
    VectorOptions,
    analyze_stream,
    check_version,
    client_engine,
    cluster_spec,
    connect,
    worker_space,
)
from ..errors import CheckpointError, SpecdynError, option_ref
from ..sources import Checkpoint, open_checkpoint
from ..steps import select_steps
from ..store import StepRecord, open_run, resolve_home, store_path_for
from ..types import Note, TensorInfo
from ..version import __version__
from ._hub import Branch, Hub, HubError, HubLimits, HubRevision, free_bytes

__all__ = [
    "PythiaModel",
    "CATALOG",
    "resolve_model",
    "RevisionPlan",
    "PythiaPlan",
    "plan_pythia",
    "pythia",
    "PythiaResult",
    "HubSteps",
    "ClusterSteps",
    "RemoteRevision",
    "DUPLICATE_MODES",
]

DUPLICATE_MODES = ("skip", "analyze")

# Room kept free beyond what a revision needs (the store, temporary files).
_DISK_MARGIN = 256 * 2**20


@dataclass(frozen=True)
class PythiaModel:
    """One Pythia size (docs/pythia.md#catalog): hidden size, layers, heads, MLP width, GB per
    revision."""

    size: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    revision_gb: float


_SIZES = (
    PythiaModel("70m", 512, 6, 8, 2048, 0.17),
    PythiaModel("160m", 768, 12, 12, 3072, 0.38),
    PythiaModel("410m", 1024, 24, 16, 4096, 0.91),
    PythiaModel("1b", 2048, 16, 8, 8192, 2.1),
    PythiaModel("1.4b", 2048, 24, 16, 8192, 2.9),
    PythiaModel("2.8b", 2560, 32, 32, 10240, 5.7),
    PythiaModel("6.9b", 4096, 32, 32, 16384, 13.9),
    PythiaModel("12b", 5120, 36, 40, 20480, 23.9),
)

# "70m", "70m-deduped", ... → the model (deduped variants share the architecture)
CATALOG: dict[str, PythiaModel] = {
    **{m.size: m for m in _SIZES},
    **{f"{m.size}-deduped": m for m in _SIZES},
}


def resolve_model(spec: str) -> tuple[str, str, PythiaModel | None]:
    """(repo id, run name, catalog entry or None) for the ``model`` option (``--model``).

    A catalog key ("2.8b", "410m-deduped", also with a "pythia-" prefix) names an
    EleutherAI repo; anything with a "/" is taken as the repo id of another
    GPT-NeoX repo with step branches. Raises SpecdynError for an unknown size.
    """
    text = spec.strip()
    if "/" in text:
        return text, text.rsplit("/", 1)[1], None
    key = text.lower().removeprefix("pythia-")
    if key not in CATALOG:
        sizes = ", ".join(m.size for m in _SIZES)
        raise SpecdynError(
            f"{option_ref('model')} {spec!r}: not a Pythia size; use one of {sizes} "
            "(optionally -deduped), or a full repo id such as EleutherAI/pythia-70m",
            option="model",
        )
    return f"EleutherAI/pythia-{key}", f"pythia-{key}", CATALOG[key]


@dataclass
class RevisionPlan:
    """What happens to one revision.

    branch, step: the revision; size: bytes of its files; to_fetch: bytes not in the
    cache; action: "analyse", "skip-duplicate" (same weights as `duplicate_of`,
    analysed there), "done" (already in the store) or "failed" (no usable files);
    flag: the note the store keeps for it ("" when none); layout: weight format.
    """

    branch: str
    step: int
    commit: str
    layout: str
    size: int
    to_fetch: int
    action: str
    duplicate_of: int | None = None
    flag: str = ""


@dataclass
class PythiaPlan:
    """A sweep before it runs: the repo, the run name and every revision's plan.

    missing: steps asked for explicitly that have no branch; notes: what was found
    (duplicates, suspects, offline); on_workers: the revisions are downloaded on Dask
    workers (``scheduler``), each into an empty cache; bytes_to_fetch: total download;
    peak_disk: the most the cache holds at once (two revisions: the one analysed and
    the next; on workers, per worker thread: the largest revision).
    """

    repo: str
    name: str
    offline: bool
    revisions: list[RevisionPlan]
    missing: list[int]
    notes: list[Note] = field(default_factory=list)
    on_workers: bool = False

    @property
    def bytes_to_fetch(self) -> int:
        """Bytes to download for the revisions to analyse."""
        return sum(r.to_fetch for r in self.revisions if r.action == "analyse")

    @property
    def peak_disk(self) -> int:
        """Largest download held at once: two consecutive revisions in fetch order (on
        workers: the largest revision, held by one worker thread)."""
        sizes = [r.to_fetch for r in _fetch_order(self.revisions)]
        if self.on_workers:
            return max(sizes, default=0)
        if len(sizes) < 2:
            return sum(sizes)
        return max(a + b for a, b in zip(sizes, sizes[1:], strict=False))

    def to_dict(self) -> dict:
        """JSON-serialisable form (for ``--json``)."""
        return {
            "repo": self.repo,
            "name": self.name,
            "offline": self.offline,
            "revisions": [asdict(r) for r in self.revisions],
            "missing": self.missing,
            "bytes_to_fetch": self.bytes_to_fetch,
            "peak_disk": self.peak_disk,
            "on_workers": self.on_workers,
            "notes": [asdict(n) for n in self.notes],
        }


def _fetch_order(revisions: Sequence[RevisionPlan]) -> list[RevisionPlan]:
    """The revisions to analyse in download order: the last (the reference) first."""
    todo = [r for r in revisions if r.action == "analyse"]
    return todo[-1:] + todo[:-1]


def plan_pythia(
    model: str,
    *,
    steps: str | None = None,
    home: str | Path | None = None,
    name: str | None = None,
    duplicates: str = "skip",
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    on_workers: bool = False,
) -> PythiaPlan:
    """Plan a sweep without downloading weights: branches, files, duplicates, bytes.

    Args:
        model: a Pythia size ("2.8b", "410m-deduped") or a GPT-NeoX repo id.
        steps: the ``--steps`` grammar (docs/runs.md#steps-grammar) over the branches' steps.
        home, name: the workspace and store name (default: "pythia-<size>"); steps
            already done in that store are planned as "done".
        duplicates: "skip" (analyse byte-identical revisions once) or "analyze".
        offline: None reads ``HF_HUB_OFFLINE``; cache_dir: the hub cache.
        on_workers: plan for a sweep on Dask workers (`pythia`'s ``scheduler``): every
            revision to analyse is downloaded whole, whatever this machine's cache holds.

    Returns:
        `PythiaPlan`.

    Raises:
        HubError: the hub is unreachable (say how to use the cache), the repo does
            not exist, nothing is cached offline. SpecdynError: bad options.
    """
    _check_duplicates(duplicates)
    repo, default_name, _ = resolve_model(model)
    hub = Hub(repo, offline=offline, cache_dir=cache_dir)
    return _plan(hub, name or default_name, steps, home, duplicates, on_workers=on_workers)


def _check_duplicates(duplicates: str) -> None:
    """SpecdynError naming the option unless `duplicates` is one of `DUPLICATE_MODES`."""
    if duplicates not in DUPLICATE_MODES:
        raise SpecdynError(
            f"{option_ref('duplicates')} {duplicates!r}: use skip or analyze",
            option="duplicates",
        )


def _plan(
    hub: Hub, name: str, steps: str | None, home, duplicates: str, *, on_workers: bool = False
) -> PythiaPlan:
    """The plan of a sweep (see `plan_pythia`)."""
    branches = hub.branches()
    notes: list[Note] = []
    if not branches:
        raise HubError(f"{hub.repo}: no step<N> branch found; is it a training-trajectory repo?")
    by_step = {b.step: b for b in branches}
    missing = _missing_steps(steps, set(by_step))
    if missing:
        # a branch that does not exist is reported, not fatal: select among the others
        kept = [i.strip() for i in (steps or "").split(",") if i.strip().isdigit()]
        kept = [i for i in kept if int(i) not in missing]
        if not kept:
            raise HubError(
                f"{hub.repo}: none of the steps {steps} has a branch "
                f"(branches: step{min(by_step)} … step{max(by_step)})"
            )
        steps = ",".join(kept)
    chosen = select_steps(sorted(by_step), steps)
    for step in missing:
        notes.append(Note("missing-branch", f"{hub.repo}: no branch step{step}; skipped"))
    done = _done_steps(store_path_for(name, resolve_home(home)))
    plans: list[RevisionPlan] = []
    revisions: dict[int, HubRevision] = {}
    for step in chosen:
        branch = by_step[step]
        try:
            rev = hub.revision(branch)
        except HubError as exc:
            if "no weight file" not in str(exc):
                raise
            plans.append(RevisionPlan(branch.name, step, branch.commit, "", 0, 0, "failed",
                                      flag=f"failed: {exc}"[:250]))  # fmt: skip
            notes.append(Note("failed", str(exc)))
            continue
        revisions[step] = rev
        to_fetch = rev.size if on_workers else hub.missing_bytes(rev)
        plans.append(
            RevisionPlan(
                branch=branch.name,
                step=step,
                commit=branch.commit,
                layout=rev.layout,
                size=rev.size,
                to_fetch=0 if step in done else to_fetch,
                action="done" if step in done else "analyse",
            )
        )
    _flag_shared_content(plans, revisions, duplicates, notes, hub.repo)
    return PythiaPlan(hub.repo, name, hub.offline, plans, missing, notes, on_workers)


def _missing_steps(steps: str | None, available: set[int]) -> list[int]:
    """Steps named explicitly in a comma list that have no branch."""
    if not steps or any(c in steps for c in ":"):
        return []
    out = []
    for item in steps.split(","):
        item = item.strip()
        if item.isdigit() and int(item) not in available:
            out.append(int(item))
    return out


def _done_steps(store_path: Path) -> set[int]:
    """Steps whose values are done in an existing store (none if there is no store)."""
    if not store_path.exists():
        return set()
    try:
        with open_run(store_path) as run:
            return {int(s) for s in run.steps}
    except SpecdynError:
        return set()


def _flag_shared_content(
    plans: list[RevisionPlan],
    revisions: dict[int, HubRevision],
    duplicates: str,
    notes: list[Note],
    repo: str,
) -> None:
    """Flag byte-identical revisions (analysed once unless duplicates="analyze") and
    revisions that share some weight file with another (suspect)."""
    by_plan = {p.step: p for p in plans}
    groups: dict[tuple[str, ...], list[int]] = {}
    for step, rev in revisions.items():
        groups.setdefault(rev.content, []).append(step)
    identical = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort()
        # the last revision is the sweep's end and the agreement's reference: when it is
        # in the group it is the one analysed, else the earliest member
        first = last if (last := max(revisions)) in members else members[0]
        identical.update(members)
        others = ", ".join(str(s) for s in members if s != first)
        skipped = " (not analysed)" if duplicates == "skip" else ""
        by_plan[first].flag = f"same weights as step {others}{skipped}"
        for step in (s for s in members if s != first):
            plan = by_plan[step]
            plan.flag = f"duplicate of step {first} (byte-identical weights)"
            plan.duplicate_of = first
            if duplicates == "skip" and plan.action == "analyse":
                plan.action = "skip-duplicate"
                plan.to_fetch = 0
        notes.append(
            Note(
                "duplicate",
                f"{repo}: steps {', '.join(str(s) for s in members)} hold byte-identical "
                f"weights; "
                + (
                    "analysed once, at step " + str(first)
                    if duplicates == "skip"
                    else "all analysed"
                ),
            )
        )
    owner: dict[str, list[tuple[int, str]]] = {}
    for step, rev in revisions.items():
        for f in rev.weights:
            if f.sha256:
                owner.setdefault(f.sha256, []).append((step, f.name))
    for step, rev in sorted(revisions.items()):
        if step in identical:
            continue
        shared = []
        for f in rev.weights:
            others = [s for s, _ in owner.get(f.sha256, []) if s != step]
            if f.sha256 and others:
                shared.append(f"{f.name} = step {', '.join(str(s) for s in sorted(others))}")
        if shared:
            text = "suspect: shares " + "; ".join(shared)
            by_plan[step].flag = text[:250]
            notes.append(Note("suspect", f"{repo}: step {step} {text}"))


# ----------------------------------------------------------------------------- the sweep


class _PlannedHubSteps(StepStream):
    """What the local and the cluster sweep share: the planned revisions of a hub repo,
    their records from the hub's metadata, and the bytes fetched here."""

    tolerate_failures = True

    def __init__(self, hub: Hub, plan: PythiaPlan, revisions: dict[int, HubRevision]) -> None:
        self.hub = hub
        self.name = plan.name
        self.root = f"hf://{hub.repo}"
        self.step_unit = "step"
        self.available = sorted(revisions)
        self._revisions = revisions
        self.fetched_bytes = 0

    def records(self, steps, store_path, on_hashed=None) -> list[StepRecord]:
        """Records from the hub's metadata (`_hub_records`)."""
        return _hub_records(self.hub.repo, self._revisions, steps)


class HubSteps(_PlannedHubSteps):
    """The planned revisions of a sweep as a `StepStream`: fetch on demand, one ahead
    in a background thread, delete after analysis (unless `keep`)."""

    def __init__(
        self,
        hub: Hub,
        plan: PythiaPlan,
        revisions: dict[int, HubRevision],
        *,
        keep: bool,
        on_fetch: Callable[[int, str, int], None] | None = None,
    ) -> None:
        super().__init__(hub, plan, revisions)
        self.keep = keep
        self._order: list[int] = []
        self._futures: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specdyn-fetch")
        self._lock = threading.Lock()
        self._released: set[int] = set()
        self._on_fetch = on_fetch

    def schedule(self, order: Sequence[int]) -> None:
        """Remember the visiting order and start fetching its first revision."""
        self._order = list(order)
        if self._order:
            self._prefetch(self._order[0])

    def acquire(self, step: int) -> Checkpoint:
        """Wait for `step`'s files (fetching now if not scheduled), then start the next
        one so that it downloads while this one is analysed. A download given up on as
        stalled is a CheckpointError: the revision is flagged failed, the sweep goes on."""
        try:
            entry = self._prefetch(step).result()
        except HubError as exc:
            if not getattr(exc, "stalled", False):
                raise
            self._prefetch_next(step)
            raise CheckpointError(exc.message, step=step) from None
        self._prefetch_next(step)
        ckpt = open_checkpoint(entry)
        ckpt.step, ckpt.step_origin = step, "branch"
        return ckpt

    def release(self, step: int) -> None:
        """Delete what was downloaded for `step` unless kept or needed later."""
        with self._lock:
            if step in self._released or self.keep or step not in self._revisions:
                return
            self._released.add(step)
            later = [s for s in self._order if s not in self._released]
            needed = {f.sha256 for s in later for f in self._revisions[s].weights}
        future = self._futures.get(step)
        if future is not None and future.done():  # a failed fetch's complete files too
            self.hub.drop(self._revisions[step], keep=needed)

    def close(self) -> None:
        """Stop the download thread (a download under way is finished, the client cannot
        abort one) and delete what was fetched but never released (a sweep stopped by
        an error or an interrupt leaves nothing behind but the store)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        refused: list[HubError] = []
        for step in list(self._futures):
            try:  # a file the hub module refuses to delete must not keep the others
                self.release(step)
            except HubError as exc:
                refused.append(exc)
        if refused:
            raise refused[0]

    def _prefetch_next(self, step: int) -> None:
        """Start the download of the revision visited after `step`, if any."""
        if step in self._order:
            i = self._order.index(step)
            if i + 1 < len(self._order):
                self._prefetch(self._order[i + 1])

    def _prefetch(self, step: int) -> Future:
        """The (started) download of `step`."""
        with self._lock:
            if step not in self._futures:
                self._futures[step] = self._pool.submit(self._fetch, step)
            return self._futures[step]

    def _fetch(self, step: int) -> Path:
        """Check free disk, then download one revision (resuming partial files)."""
        rev = self._revisions[step]
        need = self.hub.missing_bytes(rev)
        if need:
            where = self.hub.cache_dir or Path.home() / ".cache" / "huggingface" / "hub"
            free = free_bytes(where)
            if free < need + _DISK_MARGIN:
                raise HubError(
                    f"{self.hub.repo}@{rev.branch.name} needs {_gb(need)} GB in {where} "
                    f"(+{_gb(_DISK_MARGIN)} GB margin) but {_gb(free)} GB are free; free "
                    "space or point HF_HUB_CACHE elsewhere"
                )
        if self._on_fetch is not None:
            self._on_fetch(step, "start", need)
        path = self.hub.fetch(rev)
        self.fetched_bytes += need
        if self._on_fetch is not None:
            self._on_fetch(step, "done", need)
        return path


def _hub_records(repo: str, revisions: dict[int, HubRevision], steps) -> list[StepRecord]:
    """Records from the hub's metadata: source ``hf://repo@branch:commit``, size, and the
    weights' LFS sha256 (for shards: sha256 of their "name sha" lines)."""
    out = []
    for step in steps:
        rev = revisions[step]
        if len(rev.weights) == 1:
            sha = rev.weights[0].sha256
        else:
            lines = "".join(f"{f.name} {f.sha256}\n" for f in rev.weights)
            sha = hashlib.sha256(lines.encode()).hexdigest()
        out.append(
            StepRecord(
                step=step,
                epoch=None,
                source=f"hf://{repo}@{rev.branch.name}:{rev.branch.commit}",
                format=rev.layout,
                size=sum(f.size for f in rev.weights),
                mtime=0.0,
                sha256=sha,
                origin="hub branch",
            )
        )
    return out


# ------------------------------------------------------------------- on Dask workers


@dataclass
class RemoteRevision:
    """One revision as a Dask task fetches it on its worker (a `RemoteCheckpoint`).

    repo, revision: what to download; endpoint, token, limits: the client's hub settings
    (``HF_ENDPOINT``, its token, the stalled-hub limits), so that every worker asks the
    same hub the same way; held: the key under which the task that planned the views kept
    this revision's files on `worker` ("" when none), used instead of a download when the
    task runs there; worker: the worker that should run it (None: any); fetched_bytes:
    what the worker downloaded (set there).
    """

    repo: str
    revision: HubRevision
    endpoint: str | None
    token: str | None
    limits: HubLimits
    held: str = ""
    worker: str | None = None
    fetched_bytes: int = 0

    @property
    def step(self) -> int:
        """The revision's training step."""
        return self.revision.branch.step

    def on_worker(self) -> AbstractContextManager[Checkpoint]:
        """On the worker: the revision's checkpoint, downloaded into a new cache folder
        under the worker's local directory (after a free-disk check), or the files held
        under `held` on this worker; the folder is deleted on exit whatever happened.
        CheckpointError (the revision is flagged "failed") for too little disk, a download
        given up on as stalled or a corrupt file; other HubErrors are raised."""
        return self._local(keep=False)

    @contextmanager
    def _local(self, *, keep: bool) -> Iterator[Checkpoint]:
        """`on_worker`; with `keep`, a normal exit holds the files under `held` instead of
        deleting them (the planning task: the revision's own task comes next)."""
        rev = self.revision
        found = _take_held(self.held) if self.held else None
        cache, entry = found if found is not None else self._download()
        kept = False
        try:
            snapshot = entry.parent if rev.entry == entry.name else None
            try:
                ckpt = open_checkpoint(entry)
                ckpt.step, ckpt.step_origin = self.step, "branch"
                yield ckpt
            except SpecdynError as exc:
                if snapshot is not None:
                    _rename_path(exc, snapshot, f"hf://{self.repo}@{rev.branch.name}")
                raise
            if keep:
                _hold(self.held, cache, entry)
                kept = True
        finally:
            if not kept:
                shutil.rmtree(cache, ignore_errors=True)

    def _download(self) -> tuple[Path, Path]:
        """Check the worker's free disk, then download the revision into a new folder under
        its local directory: (the folder, the entry file). The folder is deleted on error."""
        where, worker = worker_space()
        base = where / "specdyn-hub"
        base.mkdir(parents=True, exist_ok=True)
        rev = self.revision
        cache = Path(tempfile.mkdtemp(prefix=f"{rev.branch.name}-", dir=base))
        try:
            need, free = rev.size, free_bytes(cache)
            if free < need + _DISK_MARGIN:
                no_room = CheckpointError(
                    f"{self.repo}@{rev.branch.name}: worker {worker} needs {_gb(need)} GB in "
                    f"{cache} (+{_gb(_DISK_MARGIN)} GB margin) but {_gb(free)} GB are free; "
                    "free space there, or start the workers with their local directory "
                    "on a larger disk (Dask's local_directory)",
                    step=self.step,
                )
                no_room.no_room = True  # `ClusterSteps.acquire`: an error, not a flag
                raise no_room
            hub = Hub(self.repo, offline=False, cache_dir=cache, limits=self.limits,
                      endpoint=self.endpoint, token=self.token)  # fmt: skip
            try:
                entry = hub.fetch(rev)
            except HubError as exc:
                if not getattr(exc, "stalled", False):
                    raise
                raise CheckpointError(f"{exc.message} (worker {worker})", step=self.step) from None
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)
            raise
        self.fetched_bytes = need
        return cache, entry


# A worker's revisions held between the task that planned from one and that revision's
# own task: key → (cache folder, entry file). Tasks of one worker share its process.
_HELD: dict[str, tuple[Path, Path]] = {}
_HELD_LOCK = threading.Lock()


def _hold(key: str, cache: Path, entry: Path) -> None:
    """Keep a downloaded revision on this worker under `key`."""
    with _HELD_LOCK:
        _HELD[key] = (cache, entry)


def _take_held(key: str) -> tuple[Path, Path] | None:
    """The revision held under `key` on this worker, now the caller's to delete."""
    with _HELD_LOCK:
        return _HELD.pop(key, None)


def _drop_held(key: str) -> None:
    """Delete the revision held under `key`, if this worker holds it (run on every worker
    by `ClusterSteps.release` and `close`)."""
    found = _take_held(key)
    if found is not None:
        shutil.rmtree(found[0], ignore_errors=True)


def _rename_path(exc: SpecdynError, folder: Path, name: str) -> None:
    """Say `name` for `folder` in `exc`'s message and file: a worker's cache folder is
    deleted with the task, and its long path would crowd the reason out of a flag."""
    exc.message = exc.message.replace(str(folder), name)
    exc.args = (exc.message, *exc.args[1:])
    if exc.file is not None:
        exc.file = exc.file.replace(str(folder), name)


@dataclass(frozen=True)
class _Metadata:
    """What planning needs of a revision, read on a worker: its format, tensor keys (in
    order), their `TensorInfo`s, the tensors not read (key → what built them), config."""

    format: str
    keys: list[str]
    infos: dict[str, TensorInfo]
    unsupported: dict[str, str]
    config: dict | None
    fetched_bytes: int
    worker: str


def _revision_metadata(remote: RemoteRevision, version: str) -> _Metadata | CheckpointError:
    """A Dask task: download one revision on the worker, read its tensors' metadata and
    hold the files under `remote.held` for the revision's own task (a CheckpointError is
    returned: Dask retries are for lost workers); first, SpecdynError when the worker runs
    another specdyn than the client's `version`, before anything is downloaded."""
    check_version(version)
    try:
        with remote._local(keep=True) as ckpt, ckpt.open() as reader:
            keys = reader.keys()
            infos = {key: reader.info(key) for key in keys}
            unsupported = dict(getattr(reader, "unsupported", {}))
            return _Metadata(ckpt.format, keys, infos, unsupported, ckpt.config,
                             remote.fetched_bytes, worker_space()[1])  # fmt: skip
    except CheckpointError as exc:
        return exc


class _MetadataReader:
    """A `TensorReader` stand-in over metadata read on a worker: keys and infos, no data."""

    def __init__(self, label: str, meta: _Metadata) -> None:
        self._label, self._meta = label, meta
        self.unsupported = dict(meta.unsupported)

    def keys(self) -> list[str]:
        """The tensor keys, in the checkpoint's order."""
        return list(self._meta.keys)

    def info(self, key: str) -> TensorInfo:
        """The `TensorInfo` of `key`."""
        return self._meta.infos[key]

    def get(self, key: str):
        """Never called: the tensors are read on the workers."""
        raise CheckpointError(f"{self._label}: its tensors are read on the Dask workers only")

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> _MetadataReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass
class _PlannedRevision(Checkpoint):
    """A revision seen from the client of a sweep on workers: its metadata (`_Metadata`),
    from which the views are planned; its tensors stay on the workers."""

    meta: _Metadata | None = None

    def open(self) -> _MetadataReader:
        """A reader of the metadata only."""
        return _MetadataReader(str(self.path), self.meta)


class ClusterSteps(_PlannedHubSteps):
    """The planned revisions of a sweep whose tasks fetch them on Dask workers: nothing is
    downloaded here. The one checkpoint the analysis plans from is read by a task too
    (`acquire`), whose worker holds the files for that revision's own task (sent there,
    `RemoteRevision.worker`) until `release`; `remote` is what `DaskSteps` ships per step."""

    def __init__(
        self,
        hub: Hub,
        plan: PythiaPlan,
        revisions: dict[int, HubRevision],
        dispatcher: DaskSteps,
        *,
        token: str | None,
    ) -> None:
        super().__init__(hub, plan, revisions)  # fetched_bytes: the planning task's download
        self._dispatcher = dispatcher
        self._token = token
        self._held: dict[int, tuple[str, str]] = {}  # step → (key, worker) of held files

    def remote(self, step: int) -> RemoteRevision:
        """What `step`'s task downloads on its worker (or finds held there)."""
        hub = self.hub
        key, worker = self._held.get(step, ("", None))
        return RemoteRevision(hub.repo, self._revisions[step], hub.endpoint, self._token,
                              hub.limits, held=key, worker=worker)  # fmt: skip

    def release(self, step: int) -> None:
        """`step` is done with: delete its files if a worker still holds them (its task
        ran on another worker, or was never submitted)."""
        held = self._held.pop(step, None)
        if held is not None:
            self._dispatcher.client.run(_drop_held, held[0], on_error="return")

    def close(self) -> None:
        """Delete every revision still held on a worker (a sweep stopped by an error)."""
        for step in list(self._held):
            self.release(step)

    def acquire(self, step: int) -> Checkpoint:
        """`step`'s metadata, read by a task on a worker (it downloads the revision and
        deletes it): what the views are planned from. CheckpointError when it cannot be
        had (stalled, corrupt), HubError when the worker has too little disk for it."""
        dispatcher = self._dispatcher
        remote = self.remote(step)
        remote.held = uuid.uuid4().hex
        future = dispatcher.client.submit(
            _revision_metadata,
            remote,
            __version__,
            pure=False,
            retries=2,
            key=f"specdyn-plan-{step}-{uuid.uuid4().hex[:12]}",
        )
        meta = dispatcher.result_of(future, step)
        if isinstance(meta, SpecdynError):
            if getattr(meta, "no_room", False):  # not the revision's fault: say so as it is
                raise HubError(meta.message, step=step)
            raise meta
        self._held[step] = (remote.held, meta.worker)
        self.fetched_bytes += meta.fetched_bytes
        if dispatcher.on_fetch is not None:
            dispatcher.on_fetch(step, "done", meta.fetched_bytes)
        rev = self._revisions[step]
        path = Path(f"{self.hub.repo}@{rev.branch.name}") / rev.entry
        return _PlannedRevision(path=path, files=(path,), format=meta.format, step=step,
                                step_origin="branch", config=meta.config, meta=meta)  # fmt: skip


def _hub_token() -> str | None:
    """The token this process's hub client would send (None: none, or implicit tokens
    turned off), for the workers to send the same."""
    from huggingface_hub import constants, get_token

    return None if constants.HF_HUB_DISABLE_IMPLICIT_TOKEN else get_token()


def _complete(store: Path, vectors: VectorOptions | None, steps) -> bool:
    """Whether the store has everything a re-run would compute (nothing to fetch)."""
    try:
        with open_run(store) as run:
            if vectors is None:
                return True
            config = run.vectors_config
            if config is None:
                return False
            wanted = vectors.resolved(config)  # fields not given are the store's
            reference = max(steps) if wanted.reference is None else wanted.reference
            if config["k"] != wanted.k or config["reference"] != reference:
                return False
            return all(
                set(steps) <= set(run.section_steps(s).tolist()) for s in ("alignment", "agreement")
            )
    except SpecdynError:
        return False


def _gb(n: int) -> str:
    """Bytes as GB with two decimals."""
    return f"{n / 1e9:.2f}"


@dataclass
class PythiaResult:
    """What a sweep did: the plan, the analysis of the run and the bytes downloaded."""

    plan: PythiaPlan
    analysis: RunAnalysis | None
    fetched_bytes: int
    notes: list[Note]

    def to_dict(self) -> dict:
        """JSON-serialisable form (for ``--json``)."""
        return {
            "plan": self.plan.to_dict(),
            "analysis": None if self.analysis is None else self.analysis.to_dict(),
            "fetched_bytes": self.fetched_bytes,
            "notes": [asdict(n) for n in self.notes],
        }


def pythia(
    model: str,
    *,
    steps: str | None = None,
    home: str | Path | None = None,
    name: str | None = None,
    duplicates: str = "skip",
    keep: bool = False,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    compute: ComputeOptions | None = None,
    vectors: VectorOptions | None = VectorOptions(),
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_fetch: Callable[[int, str, int], None] | None = None,
    scheduler: str | None = None,
    max_inflight: int | None = None,
) -> PythiaResult:
    """Sweep a Pythia model's revisions into a store: plan, then fetch, analyse, delete.

    Args:
        model, steps, home, name, duplicates, offline, cache_dir: as `plan_pythia`.
        keep: keep the downloaded files in the cache (not with `scheduler`).
        compute, vectors, overwrite, on_progress: as `specdyn.analyze`.
        on_fetch: called with (step, "start" | "done", bytes to download) around
            each revision's download (from the download thread); with `scheduler`,
            with (step, "done", bytes the worker downloaded) here as its task returns.
        scheduler: analyse on a Dask cluster (docs/distributed.md#pythia-on-workers), as
            `specdyn.analyze`'s ``scheduler`` (``"local:N"``, ``"tcp://HOST:PORT"``, a
            scheduler file): the plan and the duplicate check are made here before any
            task starts; each revision to analyse is one task that downloads it into a
            cache folder of its own under the worker's local directory (with this
            process's ``HF_ENDPOINT``, token and stalled-hub limits), analyses it and
            deletes it; this process writes the store. Not with ``HF_HUB_OFFLINE`` or
            `keep`. Needs the extra ``specdyn[dist]``.
        max_inflight: with `scheduler`, the most tasks submitted and not yet written
            (default: as `specdyn.analyze`'s, two per worker, fewer when the results
            would not fit in a quarter of this machine's available memory).

    Returns:
        `PythiaResult`: the plan (with flags), the `RunAnalysis` (None when nothing
        was left to analyse) and the bytes downloaded.

    Raises:
        HubError (no network, unknown repo, too little disk for a revision),
        SpecdynError (the reference revision unreadable: choose another
        ``vectors.reference``; a bad `scheduler` or `max_inflight`, `keep` or offline
        with `scheduler`) and the other errors of `analyze`.
    """
    compute = compute or ComputeOptions()
    if vectors is not None:
        vectors.validate()
    _check_duplicates(duplicates)
    spec = cluster_spec(scheduler, max_inflight)  # before anything is read or started
    repo, default_name, _ = resolve_model(model)
    hub = Hub(repo, offline=offline, cache_dir=cache_dir)
    if spec is not None:
        _check_cluster_sweep(hub, keep)
    plan = _plan(hub, name or default_name, steps, home, duplicates, on_workers=spec is not None)
    notes = list(plan.notes)
    analysed = [r for r in plan.revisions if r.action in ("analyse", "done")]
    if not analysed:
        return PythiaResult(plan, None, 0, notes)
    by_branch = {b.step: b for b in (Branch(r.branch, r.step, r.commit) for r in analysed)}
    revisions = {s: hub.revision(b) for s, b in by_branch.items()}
    store = store_path_for(plan.name, resolve_home(home))
    if all(r.action == "done" for r in analysed) and _complete(store, vectors, revisions):
        return PythiaResult(plan, None, 0, notes)
    engine = client_engine(compute, on_cluster=spec is not None)
    with ExitStack() as stack:
        dispatcher = None
        if spec is None:
            stream = HubSteps(hub, plan, revisions, keep=keep, on_fetch=on_fetch)
        else:
            client = stack.enter_context(connect(spec, compute=compute))
            dispatcher = DaskSteps(client, compute, max_inflight=max_inflight, on_fetch=on_fetch)
            stream = ClusterSteps(hub, plan, revisions, dispatcher, token=_hub_token())
            dispatcher.remote = stream.remote
        stack.callback(stream.close)
        analysis = analyze_stream(
            stream,
            store,
            run_name=plan.name,
            steps=sorted(revisions),
            compute=compute,
            vectors=vectors,
            engine=engine,
            overwrite=overwrite,
            on_progress=on_progress,
            flags=_flags(plan, store),
            dispatcher=dispatcher,
        )
    if hub.reclaimed_bytes:
        notes.append(
            Note(
                "cache",
                f"deleted {hub.reclaimed_bytes / 1e6:.1f} MB of partial downloads that "
                "killed runs had left in the cache",
            )
        )
    fetched = stream.fetched_bytes + (dispatcher.fetched_bytes if dispatcher else 0)
    return PythiaResult(plan, analysis, fetched, notes)


def _flags(plan: PythiaPlan, store: Path) -> dict[int, str]:
    """The plan's flags, and "" (cleared) for a revision the store has flagged "failed"
    by an earlier run: it is tried again, and flagged again if it fails again."""
    flags = {r.step: r.flag for r in plan.revisions if r.flag}
    if store.exists():
        try:
            with open_run(store) as run:
                stale = [s for s, f in run.step_flags.items() if f.startswith("failed: ")]
        except SpecdynError:
            stale = []
        flags.update({s: "" for s in stale if s not in flags})
    return flags


def _check_cluster_sweep(hub: Hub, keep: bool) -> None:
    """SpecdynError in one line for what a sweep on workers cannot do: keep the files (the
    workers delete theirs) or use only the cache (the workers start from an empty one)."""
    where = "the workers download each revision into an empty cache and delete it"
    if keep:
        raise SpecdynError(
            f"{option_ref('keep')} keeps the files in this machine's cache, but with "
            f"{option_ref('scheduler')} {where}; leave out one of them",
            option="keep",
        )
    if hub.offline:
        raise SpecdynError(
            f"HF_HUB_OFFLINE is set, but with {option_ref('scheduler')} {where}; unset it, "
            f"or leave out {option_ref('scheduler')} to analyse the cached revisions here",
            option="scheduler",
        )
