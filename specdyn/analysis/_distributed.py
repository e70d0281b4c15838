"""An analysis's steps as Dask tasks (``scheduler=``, ``--scheduler``; docs/distributed.md).

The client (the process that runs `analyze`) plans the views and pairs, opens the store
and stays its only writer: HDF5 has one writer per file, and the done flags are only
trustworthy when the process that sets them is the one that wrote the data. Each task
reads one checkpoint on a worker, computes that step with the same `compute_step` the
local loop uses, and returns its results; the client writes them as they complete.

A step's task is given the checkpoint the stream acquires here (local files the workers
read at the same paths) or, for a stream whose files are fetched (the Pythia hub), a
`RemoteCheckpoint` that the worker fetches into its own local disk and deletes.

`distributed` is imported only when a scheduler is asked for (the extra
``specdyn[dist]``).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..engine import SpectrumEngine
from ..errors import SpecdynError, option_ref
from ..sources import Checkpoint
from ..types import Note
from ..vectors import TopK
from ..version import __version__
from ._records import ComputeOptions
from ._run import STEP_FAILURES, StepPlan, StepResult, _AnalysisRun, compute_step

__all__ = [
    "DaskSteps",
    "RemoteCheckpoint",
    "SchedulerSpec",
    "check_max_inflight",
    "check_workers",
    "cluster_spec",
    "connect",
    "parse_scheduler",
    "require_distributed",
    "worker_space",
]

_SCHEDULER = option_ref("scheduler")
_ACCEPTED = (
    "give local:N (a cluster of N worker processes made here), tcp://HOST:PORT (a running "
    "scheduler) or the path of a scheduler JSON file (dask-jobqueue, dask-mpi)"
)
# How long a running cluster may take to offer its first worker (jobs still queued).
WORKER_WAIT_S = 120.0


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
    """The `distributed` module, or one line naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise SpecdynError(
            f"{_SCHEDULER} needs dask.distributed, which is not installed: "
            "pip install 'specdyn[dist]'",
            option="scheduler",
        ) from None
    return distributed


@contextmanager
def connect(spec: SchedulerSpec, *, wait_s: float = WORKER_WAIT_S) -> Iterator[Any]:
    """A `distributed.Client` for `spec` whose workers all run this specdyn version
    (a LocalCluster for "local:N" is made here and closed on exit).

    Raises:
        SpecdynError: the scheduler cannot be reached, no worker joins within `wait_s`
            seconds, or a worker cannot import specdyn or runs another version.
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
    if version != __version__:  # a worker that joined after `check_workers`
        raise SpecdynError(
            f"a worker runs specdyn {__version__}, the client {version}; "
            "install the same version on every worker"
        )
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
    workers use; max_inflight: the most tasks submitted and not yet written (default two
    per worker), so that results cannot pile up in the client's memory;
    reference_here: compute the agreement's reference in this process instead of as a
    task (docs/distributed.md#the-reference-step); remote: step → the `RemoteCheckpoint`
    its task fetches on the worker, for a stream whose files are not here (the Pythia hub;
    None: the task reads the checkpoint the stream acquires here); on_fetch: called here
    with (step, "done", bytes the worker fetched) as each such task's result arrives.
    fetched_bytes: the bytes the workers fetched, in total.
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
        self.devices: set[str] = set()

    def analyse(self, run: _AnalysisRun, work: list[int]) -> None:
        """Compute every step of `work` on the cluster (the reference first when
        `run.reference_first`) and hand each result to `run.write_result`."""
        client = self.client
        plan = self._share(run.step_plan, "plan")
        if run.reference_first:
            if self.reference_here:
                run.take_reference(run.visit_reference(len(work)))
            else:
                outcome = self._wait(run, run.reference, run.reference_wanted(), plan, None)
                run.take_reference(self._take(run, outcome))
                run.on_done(run.reference, 0, len(work), "reference")
            work = [s for s in work if s != run.reference]
        reference = None
        if run.reference_tops is not None:
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
        return self.client.submit(
            _held, value, pure=False, key=f"specdyn-{what}-{uuid.uuid4().hex[:12]}"
        )

    def _submit(self, run: _AnalysisRun, step: int, wanted: set[str], plan, reference) -> Any:
        """Submit one step's task (its checkpoint acquired here and read on the worker, or
        fetched there when `remote`)."""
        ckpt = run.source.acquire(step) if self.remote is None else self.remote(step)
        worker = getattr(ckpt, "worker", None)
        placed = {"workers": [worker], "allow_other_workers": True} if worker else {}
        return self.client.submit(
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
            key=f"specdyn-step-{step}-{uuid.uuid4().hex[:12]}",
            **placed,
        )

    def _wait(self, run: _AnalysisRun, step: int, wanted: set[str], plan, reference) -> _Outcome:
        """Run one step's task and wait for it."""
        future = self._submit(run, step, wanted, plan, reference)
        try:
            return self.result_of(future, step)
        finally:
            run.source.release(step)

    def _stream(self, run: _AnalysisRun, work: list[int], plan, reference) -> None:
        """Submit the steps with at most `max_inflight` not yet written; write each as it
        completes."""
        dist = require_distributed()
        limit = self.max_inflight or 2 * max(1, len(self.client.scheduler_info()["workers"]))
        queue = iter(work)
        live: dict[Any, int] = {}
        completed = dist.as_completed()

        def submit_next() -> None:
            step = next(queue, None)
            if step is not None:
                future = self._submit(run, step, run.sections[step], plan, reference)
                live[future] = step
                completed.add(future)

        for _ in range(min(limit, len(work))):
            submit_next()
        try:
            for index, future in enumerate(completed):
                step = live.pop(future)
                try:
                    outcome = self.result_of(future, step)
                finally:
                    run.source.release(step)
                self._take(run, outcome)
                run.on_done(step, index, len(work), "analysing")
                submit_next()
        finally:
            for future in live:  # an error stopped the run: nothing more is computed
                future.cancel()

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

    def _take(self, run: _AnalysisRun, outcome: _Outcome) -> dict[str, TopK] | None:
        """Write a task's results (or handle its checkpoint's error as the local loop does);
        the step's full top-k vectors (reference pass), or None when it failed."""
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
        return outcome.result.tops


def _held(value: Any) -> Any:
    """A task returning its argument: what every step's task shares (see `DaskSteps._share`)."""
    return value


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
