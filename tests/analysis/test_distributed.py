"""`analyze(scheduler=...)` / `--scheduler`: one Dask task per checkpoint gives the store the
local run gives, dataset by dataset, bit for bit (issue 16, first slice).

One LocalCluster (2 worker processes × 1 thread) serves the module; the tests reach it by
its address or a scheduler file, as a user reaches a running cluster. The CLI test starts
its own `local:2` cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _stores import store_contents

import specdyn
from specdyn.analysis import ComputeOptions, LocalSteps, VectorOptions, _distributed, analyze_stream
from specdyn.cli import main
from specdyn.engine import SpectrumEngine
from specdyn.errors import ShapeChangedError, SpecdynError
from specdyn.metrics import STORED_METRIC_NAMES
from specdyn.sources import discover

distributed = pytest.importorskip("distributed")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SHAPES = [(40, 24), (40, 40), (40, 40), (12, 40)]  # an MLP chain: three pairs


@pytest.fixture(scope="module")
def client():
    """A 2-process LocalCluster and a client of it; specdyn imported on the workers once."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
            silence_logs=logging.CRITICAL,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        c.run(lambda: __import__("specdyn.analysis"))
        yield c


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A 12-step run of a 4-layer MLP saved with torch.save (the weights drift per step)."""
    folder = tmp_path_factory.mktemp("synthetic") / "mlp12"
    _save_run(folder, range(0, 1200, 100))
    return folder


def _save_run(folder: Path, steps, shapes=SHAPES, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(shape, generator=g) for shape in shapes]
    for step in steps:
        state = {
            f"layers.{i}.weight": w + 0.05 * (step / 100) * torch.randn(w.shape, generator=g)
            for i, w in enumerate(base)
        }
        torch.save({"model_state_dict": state, "step": step}, folder / f"step_{step:06d}.pt")


_contents = store_contents


def _assert_same_store(distributed_store: str, local_store: str) -> None:
    got, expected = _contents(distributed_store), _contents(local_store)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []
    assert specdyn.verify(distributed_store).ok
    assert specdyn.verify(local_store).ok


def _scheduler_file(client, folder: Path) -> str:
    path = folder / "scheduler.json"
    path.write_text(json.dumps({"address": client.scheduler.address}))
    return str(path)


@pytest.mark.parametrize(
    ("fixture", "how"),
    [("mlp-wd", "address"), ("cnn-lightning", "file"), ("synthetic", "address")],
)
def test_store_equals_the_local_run(fixture, how, client, synthetic, tmp_path):
    path = synthetic if fixture == "synthetic" else FIXTURES / fixture
    local = specdyn.analyze(path, home=tmp_path / "local").runs[0]
    scheduler = client.scheduler.address if how == "address" else _scheduler_file(client, tmp_path)
    events = []
    result = specdyn.analyze(
        path, home=tmp_path / "dist", scheduler=scheduler, on_progress=events.append
    ).runs[0]
    assert result.device.endswith("on 2 Dask workers")  # the steps ran on the cluster
    assert result.pairs == local.pairs >= 3  # pairs, so alignment diagonals are compared
    assert result.steps_computed == local.steps_computed
    assert result.methods == local.methods
    _assert_same_store(result.store_path, local.store_path)
    with specdyn.open_run(result.store_path) as got, specdyn.open_run(local.store_path) as want:
        assert got.metric_names == want.metric_names == list(STORED_METRIC_NAMES)
    assert [n.message for n in result.notes if n.kind == "heavy-tail-nan"] == [
        n.message for n in local.notes if n.kind == "heavy-tail-nan"
    ]
    # progress: the reference first, then one event per other step as it is written
    assert events[0].phase == "reference" and events[0].step == local.reference
    assert sorted(e.step for e in events[1:]) == sorted(
        set(local.steps_computed) - {local.reference}
    )


def test_at_most_max_inflight_tasks_are_unwritten(client, synthetic, tmp_path, monkeypatch):
    unwritten, most = [0], [0]
    real_submit, real_take = _distributed.DaskSteps._submit, _distributed.DaskSteps._take

    def submit(self, *args, **kwargs):
        unwritten[0] += 1
        most[0] = max(most[0], unwritten[0])
        return real_submit(self, *args, **kwargs)

    def take(self, *args, **kwargs):
        unwritten[0] -= 1
        return real_take(self, *args, **kwargs)

    monkeypatch.setattr(_distributed.DaskSteps, "_submit", submit)
    monkeypatch.setattr(_distributed.DaskSteps, "_take", take)
    result = specdyn.analyze(
        synthetic,
        home=tmp_path / "dist",
        vectors=None,
        scheduler=client.scheduler.address,
        max_inflight=3,
    ).runs[0]
    assert len(result.steps_computed) == 12
    assert most[0] == 3 and unwritten[0] == 0
    local = specdyn.analyze(synthetic, home=tmp_path / "local", vectors=None).runs[0]
    _assert_same_store(result.store_path, local.store_path)


def test_a_bad_checkpoint_stops_the_run_as_locally(client, tmp_path):
    folder = tmp_path / "reshaped"
    _save_run(folder, [0, 100, 200, 300])
    changed = [*SHAPES[:1], (40, 41), *SHAPES[2:]]
    _save_run(tmp_path / "other", [200], shapes=changed)
    os.replace(tmp_path / "other" / "step_000200.pt", folder / "step_000200.pt")
    with pytest.raises(ShapeChangedError) as local:
        specdyn.analyze(folder, home=tmp_path / "local", vectors=None)
    with pytest.raises(ShapeChangedError) as remote:
        specdyn.analyze(
            folder, home=tmp_path / "dist", vectors=None, scheduler=client.scheduler.address
        )
    assert str(remote.value) == str(local.value)
    assert "step_000200.pt" in str(remote.value) and "\n" not in str(remote.value)


class _Tolerant(LocalSteps):
    """A local run read like a remote sweep: a step that cannot be read is flagged, not fatal."""

    tolerate_failures = True


def test_a_bad_checkpoint_in_a_sweep_is_flagged_as_locally(client, tmp_path):
    folder = tmp_path / "reshaped"
    _save_run(folder, [0, 100, 200, 300])
    changed = [*SHAPES[:1], (40, 41), *SHAPES[2:]]
    _save_run(tmp_path / "other", [200], shapes=changed)
    os.replace(tmp_path / "other" / "step_000200.pt", folder / "step_000200.pt")
    (source,) = discover(folder).runs
    runs = {}
    for where, dispatcher in [
        ("local", None),
        ("dist", _distributed.DaskSteps(client, ComputeOptions())),
        ("here", _distributed.DaskSteps(client, ComputeOptions(), reference_here=True)),
    ]:
        runs[where] = analyze_stream(
            _Tolerant(source),
            tmp_path / f"{where}.h5",
            run_name="reshaped",
            engine=SpectrumEngine(),
            dispatcher=dispatcher,
        )
    assert runs["dist"].steps_failed == runs["local"].steps_failed == [200]
    assert runs["dist"].steps_computed == runs["local"].steps_computed == [0, 100, 300]
    failed = [n.message for r in runs.values() for n in r.notes if n.kind == "failed"]
    assert len(failed) == 3 and len(set(failed)) == 1
    _assert_same_store(runs["dist"].store_path, runs["local"].store_path)
    # the reference computed in the client, the other steps on the workers: the same store
    assert runs["here"].steps_failed == [200]
    _assert_same_store(runs["here"].store_path, runs["local"].store_path)
    with specdyn.open_run(runs["dist"].store_path) as run:
        assert run.step_flags[200].startswith("failed: ") and list(run.step_flags) == [200]


@pytest.mark.parametrize(
    "value",
    ["local:0", "local:two", "local:", "udp://head:8786", "tcp://head", "nowhere.json", ""],
)
def test_a_bad_scheduler_value_is_one_line(value, tmp_path):
    with pytest.raises(SpecdynError) as err:
        specdyn.analyze(FIXTURES / "mlp-wd", home=tmp_path, scheduler=value)
    message = str(err.value)
    assert message.startswith(f"scheduler {value!r}: ") and "\n" not in message
    assert "local:N" in message and "tcp://HOST:PORT" in message and "scheduler JSON" in message
    assert not (tmp_path / "mlp-wd.h5").exists()


def test_workers_with_another_specdyn_are_refused_before_any_task():
    class Workers:
        def __init__(self, answers):
            self.answers = answers

        def run(self, function, on_error):
            assert on_error == "return"
            return self.answers

    ok = {"tcp://a:1": specdyn.__version__}
    _distributed.check_workers(Workers(ok))
    old = {**ok, "tcp://b:2": "0.0.1"}
    with pytest.raises(SpecdynError, match=r"worker tcp://b:2 runs specdyn 0\.0\.1, this process"):
        _distributed.check_workers(Workers(old))
    broken = {**ok, "tcp://c:3": ModuleNotFoundError("No module named 'specdyn'")}
    with pytest.raises(SpecdynError, match=r"worker tcp://c:3 cannot run specdyn \(Module"):
        _distributed.check_workers(Workers(broken))


def test_without_distributed_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    with pytest.raises(SpecdynError, match=r"pip install 'specdyn\[dist\]'"):
        specdyn.analyze(FIXTURES / "mlp-wd", home=tmp_path, scheduler="local:2")
    args = ["analyze", str(FIXTURES / "mlp-wd"), "--home", str(tmp_path), "--scheduler", "local:2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'specdyn[dist]'" in err
    assert err.startswith("specdyn: error: --scheduler needs dask.distributed")


def test_cli_local_cluster_gives_the_same_store(tmp_path, capsys):
    fixture, steps = str(FIXTURES / "mlp-wd"), "0,100,1000,4000"
    local = specdyn.analyze(fixture, home=tmp_path / "local", steps=steps).runs[0]
    args = ["analyze", fixture, "--home", str(tmp_path / "dist"), "--steps", steps]
    assert main([*args, "--scheduler", "local:2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"][0]["device"].endswith("on 2 Dask workers")
    _assert_same_store(out["runs"][0]["store_path"], local.store_path)
    assert main([*args, "--scheduler", "local:0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("specdyn: error: --scheduler 'local:0': ") and err.count("\n") == 1


def test_cli_max_inflight_is_checked_and_needs_a_scheduler(tmp_path, capsys):
    args = ["analyze", str(FIXTURES / "mlp-wd"), "--home", str(tmp_path / "ws")]
    assert main([*args, "--max-inflight", "2"]) == 1
    err = capsys.readouterr().err
    assert "--max-inflight applies to a run on a cluster only: give --scheduler" in err
    assert err.count("\n") == 1
    assert main([*args, "--scheduler", "local:1", "--max-inflight", "0"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("specdyn: error: --max-inflight 0: give a positive") and err.count("\n") == 1
    )
    assert not (tmp_path / "ws").exists()  # refused before anything was read or started


def test_resume_after_killing_the_client_equals_an_uninterrupted_run(client, synthetic, tmp_path):
    home, address = tmp_path / "dist", client.scheduler.address
    specdyn.analyze(synthetic, home=home, steps="0:300", scheduler=address)  # a partial store
    marker = tmp_path / "held"
    # the client holds inside its first write_step (tasks in flight) and is killed there
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdyn", "analyze", str(synthetic), "--home", str(home)]
        + ["--quiet", "--scheduler", address],
        env=dict(os.environ, SPECDYN_TEST_HOLD_WRITE=str(marker)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the client exited before its first write"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    resumed = specdyn.analyze(synthetic, home=home, scheduler=address).runs[0]
    assert resumed.steps_already_done == [0, 100, 200, 300, 1100]  # and the reference
    assert resumed.steps_computed == list(range(400, 1100, 100))
    local = specdyn.analyze(synthetic, home=tmp_path / "local").runs[0]
    _assert_same_store(resumed.store_path, local.store_path)


def test_a_killed_worker_changes_nothing(client, synthetic, tmp_path):
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if _steps(keys)]
            if busy and busy[0] in pids:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    result = specdyn.analyze(
        synthetic, home=tmp_path / "dist", scheduler=client.scheduler.address
    ).runs[0]
    killer.join()
    assert killed, "no worker was running a step's task"
    assert len(result.steps_computed) == 12
    local = specdyn.analyze(synthetic, home=tmp_path / "local").runs[0]
    _assert_same_store(result.store_path, local.store_path)
    client.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
    assert killed[0] not in client.run(os.getpid).values()


def _steps(keys) -> list[str]:
    """The keys of specdyn step tasks among a worker's keys."""
    return [k for k in keys if str(k).startswith("specdyn-step-")]


# ----------------------------------------------------------------- memory, streaming, devices


def test_the_default_max_inflight_is_sized_from_memory(client, synthetic, tmp_path, monkeypatch):
    unwritten, most = [0], [0]
    real_submit, real_take = _distributed.DaskSteps._submit, _distributed.DaskSteps._take

    def submit(self, *args, **kwargs):
        unwritten[0] += 1
        most[0] = max(most[0], unwritten[0])
        return real_submit(self, *args, **kwargs)

    def take(self, *args, **kwargs):
        unwritten[0] -= 1
        return real_take(self, *args, **kwargs)

    monkeypatch.setattr(_distributed.DaskSteps, "_submit", submit)
    monkeypatch.setattr(_distributed.DaskSteps, "_take", take)
    address = client.scheduler.address
    for available, expected in [(10**12, 4), (1, 1)]:  # 2 × 2 workers; nothing fits: one
        monkeypatch.setattr(_distributed, "available_memory", lambda available=available: available)
        most[0] = 0
        home = tmp_path / f"dist-{available}"
        result = specdyn.analyze(synthetic, home=home, vectors=None, scheduler=address).runs[0]
        assert len(result.steps_computed) == 12 and most[0] == expected and unwritten[0] == 0
    # a user-given bound wins over the estimate
    most[0] = 0
    specdyn.analyze(synthetic, home=tmp_path / "given", vectors=None, scheduler=address,
                    max_inflight=3)  # fmt: skip
    assert most[0] == 3


def _dispatched(folder: Path, store: Path, vectors, dispatcher=None):
    """One run of `folder` into `store`, on the cluster when `dispatcher` is given."""
    (source,) = discover(folder).runs
    return analyze_stream(LocalSteps(source), store, run_name=source.name, vectors=vectors,
                          engine=SpectrumEngine(), dispatcher=dispatcher)  # fmt: skip


def test_large_results_are_streamed_and_give_the_same_store(
    client, synthetic, tmp_path, monkeypatch
):
    vectors = VectorOptions(save_vectors="all")
    local = _dispatched(synthetic, tmp_path / "local.h5", vectors)
    whole = _distributed.DaskSteps(client, ComputeOptions())
    _dispatched(synthetic, tmp_path / "whole.h5", vectors, whole)
    assert whole.streamed == []  # kilobytes of vectors: below the 256 MiB bound
    shared: list[str] = []
    real_share = _distributed.DaskSteps._share

    def share(self, value, what):
        shared.append(what)
        return real_share(self, value, what)

    monkeypatch.setattr(_distributed.DaskSteps, "_share", share)
    monkeypatch.setattr(_distributed, "STREAM_BYTES", 0)  # every step that keeps vectors
    streamed = _distributed.DaskSteps(client, ComputeOptions())
    _dispatched(synthetic, tmp_path / "streamed.h5", vectors, streamed)
    # every step's kept vectors came one matrix at a time, the reference's first; its full
    # vectors never came here (not shared from the client)
    assert streamed.streamed[0] == local.reference == 1100
    assert sorted(streamed.streamed) == list(range(0, 1200, 100))
    assert shared == ["plan"]
    _assert_same_store(str(tmp_path / "streamed.h5"), local.store_path)
    _assert_same_store(str(tmp_path / "whole.h5"), local.store_path)


def test_a_worker_lost_between_the_two_phases_changes_nothing(
    client, synthetic, tmp_path, monkeypatch
):
    monkeypatch.setattr(_distributed, "STREAM_BYTES", 0)
    pids = client.run(os.getpid)
    killed: list[int] = []
    real_write_kept = _distributed.DaskSteps._write_kept

    def write_kept(self, run, step, held, names):
        # the step's values and diagonals are written; every copy of its whole result
        # dies before its kept vectors are fetched
        if step != run.reference and not killed:
            for worker in client.who_has([held])[held.key]:
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(step)
        return real_write_kept(self, run, step, held, names)

    monkeypatch.setattr(_distributed.DaskSteps, "_write_kept", write_kept)
    with distributed.get_task_stream(client) as stream:
        result = specdyn.analyze(
            synthetic, home=tmp_path / "dist", scheduler=client.scheduler.address
        ).runs[0]
    assert set(killed) == {0}  # "ends": the reference (1100) and step 0 keep vectors
    ran = [t for t in stream.data if str(t["key"]).startswith("specdyn-step-0-")]
    assert len(ran) == 2  # step 0's task computed again for its vectors
    assert len(result.steps_computed) == 12 and result.steps_with_vectors == list(
        range(0, 1200, 100)
    )
    local = specdyn.analyze(synthetic, home=tmp_path / "local").runs[0]
    _assert_same_store(result.store_path, local.store_path)
    client.wait_for_workers(2, timeout=60)


def test_the_device_applies_on_the_workers(client, synthetic, tmp_path):
    marker = 2**40 + 12345  # a max_memory no other test uses: finds this run's engines
    compute = ComputeOptions(device="cpu", max_memory=marker)
    result = specdyn.analyze(synthetic, home=tmp_path / "cpu", steps="0:300", vectors=None,
                             compute=compute, scheduler=client.scheduler.address).runs[0]  # fmt: skip
    assert result.device == "cpu on 2 Dask workers"
    engines = client.run(
        lambda: [(key[0], e.device.type) for key, e in _distributed._ENGINES.items()]
    )
    used = [(options, device) for got in engines.values() for options, device in got
            if options.max_memory == marker]  # fmt: skip
    assert used and all(options == compute and device == "cpu" for options, device in used)
    assert _distributed.check_devices(client, compute) == dict.fromkeys(engines, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_workers_lack_is_one_line_before_any_task(client, synthetic, tmp_path):
    # the client computes nothing: it makes its engine on the CPU and asks the workers
    with pytest.raises(SpecdynError) as err:
        specdyn.analyze(synthetic, home=tmp_path / "ws", compute=ComputeOptions(device="cuda"),
                        scheduler=client.scheduler.address)  # fmt: skip
    message = str(err.value)
    assert message.startswith("device cuda: worker tcp://") and "\n" not in message
    assert "device 'cuda' asked for, but this torch build sees no CUDA GPU" in message
    assert not list((tmp_path / "ws").glob("*.h5"))


def test_analyze_help_names_the_extra(capsys):
    assert main(["analyze", "--help"]) == 0
    assert "'specdyn[dist]'" in capsys.readouterr().out
