"""An analysis's steps as Dask tasks (``scheduler=``, ``--scheduler``; docs/distributed.md).

The client (the process that runs `analyze`) plans the views and pairs, opens the store
and stays its only writer: HDF5 has one writer per file, and the done flags are only
trustworthy when the process that sets them is the one that wrote the data. Each task
reads one checkpoint on a worker, computes that step with the same `compute_step` the
local loop uses, and returns its results; the client writes them as they complete.

A step's task is given the checkpoint the stream acquires here (local files the workers
read at the same paths) or, for a stream whose files are fetched (the Pythia hub), a
`RemoteCheckpoint` that the worker fetches into its own local disk and deletes.

A step whose kept vectors (or, on the reference pass, full top-k vectors) are larger
than `STREAM_BYTES` is streamed: its task's result stays on the worker, the client fetches
the rest of it first, then the kept vectors one matrix at a time, and the reference's
vectors never come to the client at all (docs/distributed.md#large-results).

`distributed` is imported only when a scheduler is asked for (the extra
``specdyn[dist]``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..engine import SpectrumEngine
from ..errors import SpecdynError, option_ref
from ..extras import require_extra
from ..metrics import STORED_METRIC_NAMES
from ..sources import Checkpoint
from ..store import StepVectors
from ..types import Note
from ..vectors import TopK
from ..version import __version__
from ._records import ComputeOptions
from ._run import STEP_FAILURES, StepPlan, StepResult, _AnalysisRun, compute_step

__all__ = [
    "MEMORY_SHARE",
    "STREAM_BYTES",
    "DaskSteps",
    "RemoteCheckpoint",
    "SchedulerSpec",
    "available_memory",
    "check_devices",
    "check_max_inflight",
    "check_version",
    "check_workers",
    "client_engine",
    "cluster_spec",
    "connect",
    "default_max_inflight",
    "parse_scheduler",
    "require_distributed",
    "result_bytes",
    "worker_space",
]

_SCHEDULER = option_ref("scheduler")
_ACCEPTED = (
    "give local:N (a cluster of N worker processes made here), tcp://HOST:PORT (a running "
    "scheduler) or the path of a scheduler JSON file (dask-jobqueue, dask-mpi)"
)
# How long a running cluster may take to offer its first worker (jobs still queued).
WORKER_WAIT_S = 120.0
# A step whose kept vectors (and, on the reference pass, full top-k vectors) are estimated
# above this many bytes is streamed (`DaskSteps`): its result stays on the worker and the
# client fetches the vectors one matrix at a time. Tests lower it to take that path.
STREAM_BYTES = 256 * 2**20
# The default max_inflight keeps the results submitted and not yet written within this
# share of the client's available memory (the rest: the client's own work, other programs).
MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class SchedulerSpec:
    """A checked ``scheduler`` value: kind "local" (value: N workers), "address" (a
    scheduler URL) or "file" (a scheduler JSON file's path)."""

    kind: str
    value: int | str


def parse_scheduler(value: str) -> SchedulerSpec:
    """Check a ``scheduler`` value without connecting (`SchedulerSpec`).

    Raises:
        SpecdynError: one line naming the option and what it accepts.
    """
    text = str(value).strip()
    if text.startswith("local:"):
        n = text.removeprefix("local:")
        if n.isdigit() and int(n) >= 1:
            return SchedulerSpec("local", int(n))
        raise SpecdynError(
            f"{_SCHEDULER} {value!r}: local:N needs a positive number of workers; {_ACCEPTED}",
            option="scheduler",
        )
    if "://" in text:
        scheme, _, rest = text.partition("://")
        host, colon, port = rest.rpartition(":")
        if scheme in ("tcp", "tls") and host and colon and port.isdigit() and int(port) < 2**16:
            return SchedulerSpec("address", text)
        raise SpecdynError(
            f"{_SCHEDULER} {value!r}: not a scheduler address; {_ACCEPTED}", option="scheduler"
        )
    if text and Path(text).is_file():
        return SchedulerSpec("file", text)
    raise SpecdynError(
        f"{_SCHEDULER} {value!r}: no such scheduler file; {_ACCEPTED}",
        file=text or None,
        option="scheduler",
    )


def check_max_inflight(value: int | None) -> None:
    """SpecdynError unless `value` is None or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SpecdynError(
            f"{option_ref('max_inflight')} {value!r}: give a positive number of tasks",
            option="max_inflight",
        )


def cluster_spec(scheduler: str | None, max_inflight: int | None) -> SchedulerSpec | None:
    """The checked ``scheduler`` (None: run here) with ``max_inflight`` checked against it,
    before anything is read or started.

    Raises:
        SpecdynError: one line: a bad `scheduler` (`parse_scheduler`), a `max_inflight`
            that is not a positive int or is given without `scheduler`, `distributed`
            not installed.
    """
    if scheduler is None:
        if max_inflight is not None:
            raise SpecdynError(
                f"{option_ref('max_inflight')} applies to a run on a cluster only: give "
                f"{_SCHEDULER} too, or leave it out",
                option="max_inflight",
            )
        return None
    spec = parse_scheduler(scheduler)
    check_max_inflight(max_inflight)
    require_distributed()
    return spec


def require_distributed() -> Any:
    """The `distributed` module, or one line naming the extra that installs it
    (`MissingExtraError`)."""
    return require_extra(
        "distributed", "dist", _SCHEDULER, name="dask.distributed", option="scheduler"
    )


@contextmanager
def connect(
    spec: SchedulerSpec,
    *,
    wait_s: float = WORKER_WAIT_S,
    compute: ComputeOptions | None = None,
) -> Iterator[Any]:
    """A `distributed.Client` for `spec` whose workers all run this specdyn version
    (a LocalCluster for "local:N" is made here and closed on exit) and, with `compute`,
    can all make an engine with its options (`check_devices`).

    Raises:
        SpecdynError: the scheduler cannot be reached, no worker joins within `wait_s`
            seconds, a worker cannot import specdyn or runs another version, or a
            worker cannot use `compute.device`.
    """
    dist = require_distributed()
    with ExitStack() as stack:
        if spec.kind == "local":
            client = stack.enter_context(dist.Client(_local_cluster(dist, int(spec.value), stack)))
        else:
            where = {"address": spec.value} if spec.kind == "address" else {}
            if spec.kind == "file":
                where = {"scheduler_file": spec.value}
            try:
                client = stack.enter_context(dist.Client(timeout=wait_s, **where))
            except (OSError, TimeoutError) as exc:
                raise SpecdynError(
                    f"{_SCHEDULER} {spec.value}: cannot reach the scheduler "
                    f"({_one_line(exc)}); check that it runs and that this machine can reach it",
                    option="scheduler",
                ) from None
            _wait_for_a_worker(client, spec, wait_s)
        check_workers(client)
        if compute is not None:
            check_devices(client, compute)
        yield client


def _local_cluster(dist: Any, n_workers: int, stack: ExitStack) -> Any:
    """A LocalCluster of `n_workers` processes × 1 thread, closed with `stack`."""
    try:
        return stack.enter_context(
            dist.LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # no dashboard; its HTTP server (health, metrics) on a free port, not 8787
                scheduler_kwargs={"dashboard_address": ":0"},
                silence_logs=logging.CRITICAL,
            )
        )
    except (OSError, RuntimeError, TimeoutError) as exc:
        # a script that starts one outside `if __name__ == "__main__":` lands here too:
        # its worker processes (spawned) run the script again
        raise SpecdynError(
            f"{_SCHEDULER} local:{n_workers}: the worker processes did not start "
            f"({_one_line(exc)}); in a script, call analyze under "
            "if __name__ == '__main__':",
            option="scheduler",
        ) from None


def _wait_for_a_worker(client: Any, spec: SchedulerSpec, wait_s: float) -> None:
    """Block until the scheduler has a worker (SpecdynError after `wait_s` seconds)."""
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError:
        raise SpecdynError(
            f"{_SCHEDULER} {spec.value}: no worker joined the scheduler in {wait_s:.0f} s; "
            "start workers (dask worker ADDRESS, or scale the cluster) and run again",
            option="scheduler",
        ) from None


def _worker_specdyn() -> str:
    """This worker's specdyn version (run on every worker by `check_workers`)."""
    return __version__


def check_workers(client: Any) -> None:
    """Check that every worker imports specdyn at this process's version.

    Raises:
        SpecdynError: one line naming a worker that cannot import specdyn or runs another
            version, before any task is submitted.
    """
    versions: Mapping[str, Any] = client.run(_worker_specdyn, on_error="return")
    for worker, version in sorted(versions.items()):
        if isinstance(version, BaseException):
            raise SpecdynError(
                f"{_SCHEDULER}: worker {worker} cannot run specdyn ({_one_line(version)}); "
                f"install specdyn {__version__} in the workers' environment",
                option="scheduler",
            )
        if version != __version__:
            raise SpecdynError(
                f"{_SCHEDULER}: worker {worker} runs specdyn {version}, this process "
                f"{__version__}; install the same version on every worker",
                option="scheduler",
            )


def check_version(version: str) -> None:
    """In a task: SpecdynError unless this worker runs the client's specdyn `version` (a
    worker that joined after `check_workers`)."""
    if version != __version__:
        raise SpecdynError(
            f"a worker runs specdyn {__version__}, the client {version}; "
            "install the same version on every worker"
        )


def _worker_device(compute: ComputeOptions) -> str:
    """The device an engine with `compute`'s options uses on this worker, in words (run on
    every worker by `check_devices`; not kept: tasks make their own, `_worker_engine`)."""
    engine = SpectrumEngine(
        device=compute.device,
        precision=compute.precision,
        exact=compute.exact,
        max_memory=compute.max_memory,
    )
    return engine.device_name


def check_devices(client: Any, compute: ComputeOptions) -> dict[str, str]:
    """Check that every worker can make an engine with `compute`'s device and options:
    ``--device`` applies on the workers, not here.

    Returns:
        worker address → the device its engine uses, in words (e.g. "cpu",
        "cuda:0 (NVIDIA H100 80GB HBM3)").

    Raises:
        SpecdynError: one line naming the first worker that cannot (no GPU for
            ``--device cuda``, a bad device), before any task is submitted.
    """
    devices: Mapping[str, Any] = client.run(_worker_device, compute, on_error="return")
    for worker, device in sorted(devices.items()):
        if isinstance(device, BaseException):
            message = getattr(device, "message", None) or _one_line(device)
            raise SpecdynError(
                f"{option_ref('device')} {compute.device}: worker {worker}: {message}",
                option="device",
            )
    return dict(devices)


def client_engine(compute: ComputeOptions, on_cluster: bool) -> SpectrumEngine:
    """The engine of the process that runs the analysis: with `compute`'s options, or, on
    a cluster (`on_cluster`), on the CPU: there it computes nothing, and the client is often
    a login node without the GPU that ``--device cuda`` asks of the workers."""
    return SpectrumEngine(
        device="cpu" if on_cluster else compute.device,
        precision=compute.precision,
        exact=compute.exact,
        max_memory=compute.max_memory,
    )


def result_bytes(plan: StepPlan, wanted: set[str]) -> tuple[int, int]:
    """Estimated bytes of one step's task result: (what is always sent back whole — σ,
    metrics, methods, alignment and agreement diagonals and matrices —, what may be
    streamed — kept float32 vectors with "vectors", full float64 top-k vectors with
    "tops").

    Per matrix (m, n), R = min(m, n), k' = min(k, R): σ R·8; metrics and method 8 per
    metric + 64; agreement k'·8 (+ k'²·8 with full matrices); kept vectors (m + n)·k'·4;
    full top-k vectors R·8 + (m + n)·k'·8. Per pair: its diagonal k_p·8, heads
    blocks·k_p·8 when it has blocks, k_p²·8 with full matrices.
    """
    layout = plan.layout
    full = layout is not None and layout.full_matrices
    whole = streamed = 0
    for view in plan.views:
        m, n = (int(d) for d in view.shape)
        rank = plan.ranks[view.name]
        k = min(plan.k, rank)
        if "values" in wanted:
            whole += rank * 8 + 8 * len(STORED_METRIC_NAMES) + 64
        if "agreement" in wanted and layout is not None:
            whole += k * 8 + (k * k * 8 if full else 0)
        if "vectors" in wanted:
            streamed += (m + n) * k * 4
        if "tops" in wanted:
            streamed += rank * 8 + (m + n) * k * 8
    if "alignment" in wanted and layout is not None:
        for pair in layout.pairs:
            heads = pair.blocks * pair.k * 8 if pair.blocks > 1 else 0
            whole += pair.k * 8 + heads + (pair.k * pair.k * 8 if full else 0)
    return whole, streamed


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory available to this process: Linux's MemAvailable (`meminfo`), else
    the free physical pages (`os.sysconf`), else None (unknown)."""
    try:
        with open(meminfo, encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # "MemAvailable:  123 kB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_max_inflight(
    step_bytes: list[int], workers: int, available: int | None, share: float = MEMORY_SHARE
) -> int:
    """The default ``max_inflight``: two tasks per worker, fewer when the results of that
    many steps would not fit in `share` of `available` memory, at least 1.

    Args:
        step_bytes: the estimated result size of each step to compute (`result_bytes`,
            both parts).
        workers: the cluster's workers now.
        available: the client's available memory in bytes (`available_memory`), None
            when unknown (then two per worker).
        share: the share of `available` the results may take.

    Returns:
        The largest n ≤ 2 × workers whose n largest results fit in share × available
        (so any n of them fit), and at least 1.
    """
    cap = 2 * max(1, int(workers))
    if available is None:
        return cap
    budget = share * available
    n, total = 0, 0
    for size in sorted(step_bytes, reverse=True)[:cap]:
        total += size
        if total > budget:
            break
        n += 1
    return max(1, min(cap, n if step_bytes else cap))


def worker_space() -> tuple[Path, str]:
    """(This worker's local directory, its address): where a task may put files on the
    worker's own disk. Outside a worker (a test calling a task directly): the system's
    temporary folder and "this process"."""
    try:
        worker = require_distributed().get_worker()
    except ValueError:  # not inside a worker's task
        return Path(tempfile.gettempdir()), "this process"
    return Path(worker.local_directory), str(worker.address)


class RemoteCheckpoint(Protocol):
    """A step's checkpoint that its task fetches on the worker (`DaskSteps`' ``remote``).

    step: the training step. on_worker(): a context manager, entered on the worker, that
    fetches the files to the worker's disk (`worker_space`), yields the local `Checkpoint`
    and deletes the files on exit whatever happened; it raises a `STEP_FAILURES` error for
    a checkpoint that cannot be had (flagged "failed" for a tolerant stream), any other
    error for Dask to retry. fetched_bytes: what the worker downloaded, read after exit.
    worker: the address of the worker the task should run on (it holds the files
    already; another runs it if that one is gone), or None.
    """

    step: int
    fetched_bytes: int
    worker: str | None

    def on_worker(self) -> AbstractContextManager[Checkpoint]:
        """Fetch the files here (the worker), yield the checkpoint, delete them."""


@dataclass
class _Outcome:
    """What one task gives back: the step's results, or the error its checkpoint raised
    (returned, not raised: Dask's retries are for lost workers, not bad files); the
    engine's notes and device; the bytes the worker fetched for it."""

    step: int
    result: StepResult | None
    failure: SpecdynError | None
    engine_notes: list[Note]
    device: str
    fetched_bytes: int = 0
    kept: tuple[str, ...] = ()  # a streamed step: the matrices whose kept vectors wait


# One engine per worker thread and options: made on a task's first use, kept for the next.
_ENGINES: dict[tuple[ComputeOptions, int], SpectrumEngine] = {}


def _worker_engine(compute: ComputeOptions) -> SpectrumEngine:
    """This worker thread's engine for `compute`."""
    key = (compute, threading.get_ident())
    if key not in _ENGINES:
        _ENGINES[key] = SpectrumEngine(
            device=compute.device,
            precision=compute.precision,
            exact=compute.exact,
            max_memory=compute.max_memory,
        )
    return _ENGINES[key]


def _step_task(
    ckpt: Checkpoint | RemoteCheckpoint,
    plan: StepPlan,
    wanted: set[str],
    reference_tops: dict[str, TopK] | None,
    hash_source: bool,
    compute: ComputeOptions,
    version: str,
) -> _Outcome:
    """One step on a worker: read (or fetch) its checkpoint, compute `wanted`, return the
    results."""
    check_version(version)
    engine = _worker_engine(compute)
    result, failure = None, None
    opened = nullcontext(ckpt) if isinstance(ckpt, Checkpoint) else ckpt.on_worker()
    try:
        with opened as local:
            result = compute_step(
                local, plan, wanted, engine, reference_tops, hash_source=hash_source
            )
    except STEP_FAILURES as exc:
        failure = exc
    notes = list(engine.notes)
    engine.notes.clear()
    fetched = 0 if isinstance(ckpt, Checkpoint) else int(ckpt.fetched_bytes)
    return _Outcome(int(ckpt.step), result, failure, notes, engine.device_name, fetched)


class DaskSteps:
    """Runs a run's pending steps on a Dask cluster, one task per checkpoint (a
    `StepDispatcher` for `analyze_stream`).

    client: a connected `distributed.Client` (`connect`); compute: the engine options the
    workers use; max_inflight: the most tasks submitted and not yet written (default
    `default_max_inflight`: two per worker, fewer when the steps' estimated results would
    not fit in `MEMORY_SHARE` of this machine's available memory), so that results cannot
    pile up; reference_here: compute the agreement's reference in this process instead of
    as a task (docs/distributed.md#the-reference-step); remote: step → the
    `RemoteCheckpoint` its task fetches on the worker, for a stream whose files are not
    here (the Pythia hub; None: the task reads the checkpoint the stream acquires here);
    on_fetch: called here with (step, "done", bytes the worker fetched) as each such
    task's result arrives.

    Set while it runs: fetched_bytes (the bytes the workers fetched, in total), inflight
    (the bound the last `analyse` used), streamed (the steps whose kept vectors were
    fetched one matrix at a time, `STREAM_BYTES`).
    """

    def __init__(
        self,
        client: Any,
        compute: ComputeOptions,
        *,
        max_inflight: int | None = None,
        reference_here: bool = False,
        remote: Callable[[int], RemoteCheckpoint] | None = None,
        on_fetch: Callable[[int, str, int], None] | None = None,
    ) -> None:
        check_max_inflight(max_inflight)
        self.client = client
        self.compute = compute
        self.max_inflight = max_inflight
        self.reference_here = reference_here
        self.remote = remote
        self.on_fetch = on_fetch
        self.fetched_bytes = 0
        self.inflight: int | None = None
        self.streamed: list[int] = []
        self.devices: set[str] = set()

    def analyse(self, run: _AnalysisRun, work: list[int]) -> None:
        """Compute every step of `work` on the cluster (the reference first when
        `run.reference_first`) and hand each result to `run.write_result`."""
        client = self.client
        plan = self._share(run.step_plan, "plan")
        reference = None
        if run.reference_first:
            if self.reference_here:
                run.take_reference(run.visit_reference(len(work)))
            else:
                outcome, held = self._wait(run, run.reference, run.reference_wanted(), plan)
                run.take_reference(self._take(run, outcome, held))
                if held is not None:  # its full vectors stay on the cluster
                    reference = client.submit(
                        _tops_of, held, pure=False, key=f"specdyn-reference-{_token()}"
                    )
                    held = None  # the rest of its result may go once `reference` is made
                run.on_done(run.reference, 0, len(work), "reference")
            work = [s for s in work if s != run.reference]
        if reference is None and run.reference_tops is not None:
            reference = self._share(run.reference_tops, "reference")
        self._stream(run, work, plan, reference)
        workers = len(client.scheduler_info().get("workers", {}))
        if self.devices:
            run.device = f"{', '.join(sorted(self.devices))} on {workers} Dask workers"

    def _share(self, value: Any, what: str) -> Any:
        """A future holding `value` for every task. Not `scatter`: scattered data that a
        killed worker held is lost for good ("can't be recovered") and cancels every task
        needing it, whereas a task's result is recomputed by the scheduler from the task,
        which carries the value."""
        return self.client.submit(_held, value, pure=False, key=f"specdyn-{what}-{_token()}")

    def _submit(
        self, run: _AnalysisRun, step: int, wanted: set[str], plan, reference
    ) -> tuple[Any, Any]:
        """Submit one step's task (its checkpoint acquired here and read on the worker, or
        fetched there when `remote`): (the future whose result comes here, the future of
        the whole result, held on the worker, for a streamed step, else None)."""
        ckpt = run.source.acquire(step) if self.remote is None else self.remote(step)
        worker = getattr(ckpt, "worker", None)
        placed = {"workers": [worker], "allow_other_workers": True} if worker else {}
        future = self.client.submit(
            _step_task,
            ckpt,
            plan,
            wanted,
            reference,
            run.needs_hash(step, wanted),
            self.compute,
            __version__,
            pure=False,
            retries=2,
            key=f"specdyn-step-{step}-{_token()}",
            **placed,
        )
        if result_bytes(run.step_plan, wanted)[1] <= STREAM_BYTES:
            return future, None
        # the vectors stay with the result on its worker; the rest is sent first
        light = self.client.submit(
            _light_outcome, future, pure=False, key=f"specdyn-light-{step}-{_token()}"
        )
        return light, future

    def _wait(self, run: _AnalysisRun, step: int, wanted: set[str], plan) -> tuple[_Outcome, Any]:
        """Run one step's task and wait for it: its outcome and, when streamed, the future
        of its whole result."""
        future, held = self._submit(run, step, wanted, plan, None)
        try:
            return self.result_of(future, step), held
        finally:
            run.source.release(step)

    def _stream(self, run: _AnalysisRun, work: list[int], plan, reference) -> None:
        """Submit the steps with at most `max_inflight` not yet written; write each as it
        completes."""
        dist = require_distributed()
        limit = self.max_inflight or self._default_inflight(run, work)
        self.inflight = limit
        queue = iter(work)
        live: dict[Any, tuple[int, Any]] = {}
        completed = dist.as_completed()

        def submit_next() -> None:
            step = next(queue, None)
            if step is not None:
                future, held = self._submit(run, step, run.sections[step], plan, reference)
                live[future] = (step, held)
                completed.add(future)

        for _ in range(min(limit, len(work))):
            submit_next()
        try:
            for index, future in enumerate(completed):
                step, held = live.pop(future)
                try:
                    outcome = self.result_of(future, step)
                finally:
                    run.source.release(step)
                self._take(run, outcome, held)
                held = None  # the worker may drop the whole result before the next task
                run.on_done(step, index, len(work), "analysing")
                submit_next()
        finally:
            for future, (_step, held) in live.items():  # an error stopped the run
                future.cancel()
                if held is not None:
                    held.cancel()

    def _default_inflight(self, run: _AnalysisRun, work: list[int]) -> int:
        """`default_max_inflight` for the steps of `work` and this machine's memory."""
        workers = len(self.client.scheduler_info()["workers"])
        sizes = [sum(result_bytes(run.step_plan, run.sections[s])) for s in work]
        return default_max_inflight(sizes, workers, available_memory())

    def result_of(self, future: Any, step: int) -> Any:
        """What `step`'s task returned (for a step's task its `_Outcome`); SpecdynError in
        one line when Dask gave up on it (cancelled, or its workers kept dying)."""
        dist = require_distributed()
        try:
            return future.result()
        except dist.client.FutureCancelledError as exc:
            raise SpecdynError(
                f"step {step}: the cluster dropped its task ({_one_line(exc)}); the store keeps "
                "every step written: run the same command again to resume",
                step=step,
            ) from None
        except dist.KilledWorker as exc:
            raise SpecdynError(
                f"step {step}: the workers that ran its task died each time ({_one_line(exc)}); "
                "check their memory limit (a worker holds one checkpoint's tensors)",
                step=step,
            ) from None

    def _take(
        self, run: _AnalysisRun, outcome: _Outcome, held: Any = None
    ) -> dict[str, TopK] | None:
        """Write a task's results (or handle its checkpoint's error as the local loop does),
        then a streamed step's kept vectors from `held`; the step's full top-k vectors
        (reference pass; for a streamed step only their σ and methods), or None when it
        failed."""
        self.devices.add(outcome.device)
        if self.remote is not None:
            self.fetched_bytes += outcome.fetched_bytes
            if self.on_fetch is not None:
                self.on_fetch(outcome.step, "done", outcome.fetched_bytes)
        known = {n.message for n in run.engine.notes}
        run.engine.notes.extend(n for n in outcome.engine_notes if n.message not in known)
        if outcome.failure is not None:
            run.step_failed(outcome.step, outcome.failure)
            return None
        run.write_result(outcome.result)
        if outcome.kept:
            self._write_kept(run, outcome.step, held, outcome.kept)
        return outcome.result.tops

    def _write_kept(self, run: _AnalysisRun, step: int, held: Any, names: tuple[str, ...]) -> None:
        """Fetch a streamed step's kept vectors from its result on the worker, one matrix
        per request, and write them. The step's other sections are written (and done)
        already; a worker lost now makes Dask compute the step's task again for the
        requests, and when it gives up the vectors stay not done (a re-run adds them)."""
        kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in names:
            piece = self.client.submit(
                _kept_piece, held, name, pure=False, key=f"specdyn-kept-{step}-{_token()}"
            )
            kept[name] = self.result_of(piece, step)
        # the store's writer takes a step's kept vectors in one durable write
        run.writer.write_step(step, vectors=StepVectors(vectors=kept))
        if step not in run.with_vectors:
            run.with_vectors.append(step)
        self.streamed.append(step)


def _light_outcome(outcome: _Outcome) -> _Outcome:
    """A streamed step's outcome as sent to the client first: without its kept vectors
    (named in `kept`, fetched by `_kept_piece`) and with only the σ and method of its full
    top-k vectors (which stay on the cluster, `_tops_of`)."""
    result = outcome.result
    if result is None:
        return outcome
    vectors, kept = result.vectors, ()
    if vectors is not None and vectors.vectors is not None:
        kept = tuple(vectors.vectors)
        vectors = StepVectors(alignment=vectors.alignment, agreement=vectors.agreement)
        if vectors.alignment is None and vectors.agreement is None:
            vectors = None
    empty = np.empty((0, 0))
    tops = {name: TopK(t.sigma, empty, empty, t.method) for name, t in result.tops.items()}
    light = StepResult(result.step, result.spectra, result.metrics, result.notes,
                       result.sha256, vectors, tops, result.fit_reasons)  # fmt: skip
    return _Outcome(outcome.step, light, None, outcome.engine_notes, outcome.device,
                    outcome.fetched_bytes, kept)  # fmt: skip


def _kept_piece(outcome: _Outcome, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One matrix's kept (u, v) from a streamed step's whole result on the worker."""
    return outcome.result.vectors.vectors[name]


def _tops_of(outcome: _Outcome) -> dict[str, TopK]:
    """A streamed reference step's full top-k vectors, from its whole result on the worker
    (what every other step's task compares with)."""
    return outcome.result.tops


def _token() -> str:
    """A short random suffix for task keys."""
    return uuid.uuid4().hex[:12]


def _held(value: Any) -> Any:
    """A task returning its argument: what every step's task shares (see `DaskSteps._share`)."""
    return value


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
