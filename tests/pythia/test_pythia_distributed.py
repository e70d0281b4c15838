"""`pythia(scheduler=...)` / `specdyn pythia --scheduler`: each revision downloaded, analysed
and deleted by a task on a Dask worker, the plan and duplicate check made once on the client
(issue 16, "Pythia on workers").

One LocalCluster (2 worker processes × 1 thread, started with the client hub settings a
FakeHub test needs) serves the module; the tests reach it by its address. The workers'
environment is fixed when they start, while every test runs its own FakeHub on another
port: the hub endpoint reaching the workers with each task (not their environment) is
what lets them find it. The CLI test starts its own ``local:2`` cluster.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path

import pytest
import torch
from _fake_hub import FakeHub, hub_env
from _stores import store_contents

import specdyn
from specdyn import open_run
from specdyn.analysis import ComputeOptions, VectorOptions
from specdyn.cli import main
from specdyn.errors import HubError, SpecdynError, StoreMismatchError
from specdyn.pythia import _sweep, plan_pythia, pythia

distributed = pytest.importorskip("distributed")

REPO = "EleutherAI/pythia-tiny"
BIN = "pytorch_model.bin"
STEPS = (0, 1, 2, 4, 8, 1000, 2000)
DISTINCT = (0, 4, 8, 1000, 2000)  # step1 and step2 hold step0's bytes
VEC = VectorOptions(k=6)
INDEX = "pytorch_model.bin.index.json"
SHARDS = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")
H, LAYERS, HEADS, INTER, VOCAB = 24, 2, 4, 48, 40
CONFIG = json.dumps(
    {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": H,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTER,
        "vocab_size": VOCAB,
        "rotary_pct": 0.25,
        "torch_dtype": "float16",
    }
).encode()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# What the workers' hub client reads from its environment at import (the FakeHub tests'
# settings, tests/_fake_hub.py hub_env): no telemetry request, no Xet, no implicit token.
_WORKER_ENV = {
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A 2-process LocalCluster whose workers keep their local directory under a test
    folder; specdyn imported on the workers once."""
    home = tmp_path_factory.mktemp("workers")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**_WORKER_ENV, "HF_HOME": str(home / "hf")}.items():
            mp.setenv(name, value)  # inherited by the worker processes as they start
        for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
            mp.delenv(name, raising=False)
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": ":0"},
                silence_logs=logging.CRITICAL,
                local_directory=str(home / "local"),
            ) as cluster,
            distributed.Client(cluster) as c,
        ):
            c.run(lambda: __import__("specdyn.pythia"))
            yield c


# --------------------------------------------------------------------------- the hub


def _state_dict(step: int) -> dict[str, torch.Tensor]:
    """A tiny GPT-NeoX state dict (fp16) whose weights drift with the step."""
    base = torch.Generator().manual_seed(0)
    drift = torch.Generator().manual_seed(1000 + step)
    scale = 0.02 * math.log1p(step)

    def w(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=base, dtype=torch.float64) / math.sqrt(shape[-1])
        return (t + scale * torch.randn(*shape, generator=drift, dtype=torch.float64)).half()

    sd = {"gpt_neox.embed_in.weight": w(VOCAB, H)}
    for n in range(LAYERS):
        p = f"gpt_neox.layers.{n}."
        sd[p + "attention.query_key_value.weight"] = w(3 * H, H)
        sd[p + "attention.dense.weight"] = w(H, H)
        sd[p + "mlp.dense_h_to_4h.weight"] = w(INTER, H)
        sd[p + "mlp.dense_4h_to_h.weight"] = w(H, INTER)
        sd[p + "input_layernorm.weight"] = 1 + w(H)
    sd["embed_out.weight"] = w(VOCAB, H)
    return sd


def _saved(sd: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _bin(step: int) -> bytes:
    """pytorch_model.bin of one step."""
    return _saved(_state_dict(step))


def _first_shard(key: str) -> bool:
    return "embed_in" in key or ".layers.0." in key


def _sharded(step: int) -> dict[str, bytes]:
    """The files of one step in two .bin shards (embed_in and layer 0, then the rest)."""
    sd = _state_dict(step)
    first = {k: v for k, v in sd.items() if _first_shard(k)}
    rest = {k: v for k, v in sd.items() if k not in first}
    index = {"weight_map": {k: SHARDS[0 if _first_shard(k) else 1] for k in sd}}
    return {
        "config.json": CONFIG,
        INDEX: json.dumps(index).encode(),
        SHARDS[0]: _saved(first),
        SHARDS[1]: _saved(rest),
    }


@pytest.fixture
def tiny(hub: FakeHub):
    """REPO: every step branch with one pytorch_model.bin; steps 1, 2 hold step 0's bytes.
    Returns {step: commit}."""
    repo = hub.add_repo(REPO)
    bins = {s: _bin(0 if s in (1, 2) else s) for s in STEPS}
    for s in STEPS:
        repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: bins[s]})
    return {s: repo.branches[f"step{s}"] for s in STEPS}


@pytest.fixture
def env(monkeypatch, hub, tmp_path):
    return hub_env(monkeypatch, hub, tmp_path / "hf")


def _gets(hub: FakeHub, commits: dict[int, str], filename: str = BIN) -> list[int]:
    """Steps whose `filename` was GET from the hub, sorted (repeats kept)."""
    by_commit = {c: s for s, c in commits.items()}
    return sorted(by_commit[r.revision] for r in hub.file_requests(REPO, filename, "GET"))


def _file_requests(hub: FakeHub, commit: str) -> list:
    """Every file request (HEAD or GET, any file) of the revision at `commit`."""
    return [r for r in hub.log if r.filename is not None and r.revision == commit]


def _worker_leftovers(client) -> dict[str, list[str]]:
    """Per worker: what lies in its specdyn hub caches (None: it never made one)."""

    def leftovers(dask_worker) -> list[str] | None:
        base = Path(dask_worker.local_directory) / "specdyn-hub"
        return None if not base.is_dir() else sorted(str(p) for p in base.rglob("*"))

    return client.run(leftovers)


def _client_cache(env) -> list[Path]:
    """Everything the client's own hub cache holds."""
    return sorted(env.cache_dir.rglob("*"))


def _assert_same_store(got: str, expected: str, *, but: tuple[str, ...] = ()) -> None:
    """The stores are equal dataset by dataset (`but`: datasets left out)."""
    a, b = store_contents(Path(got)), store_contents(Path(expected))
    a, b = ({k: v for k, v in d.items() if k.split("@")[0] not in but} for d in (a, b))
    assert sorted(a) == sorted(b)
    assert [k for k in b if a[k] != b[k]] == []
    assert specdyn.verify(got).ok and specdyn.verify(expected).ok


def _flag(store: str, step: int) -> str:
    with open_run(store) as run:
        return run.step_flags.get(step, "")


def _set_worker_free_bytes(client, failing: tuple[str, ...]) -> None:
    """On every worker: report 1000 bytes free in the caches of the branches `failing`
    (the real free space elsewhere); () restores the real check."""

    def patch(failing=failing) -> None:
        import specdyn.pythia._sweep as sweep
        from specdyn.pythia._hub import free_bytes

        def free(folder, real=free_bytes):
            return 1000 if Path(folder).name.startswith(failing) else real(folder)

        sweep.free_bytes = free if failing else free_bytes

    client.run(patch)


# --------------------------------------------------------------------------- tests


def test_sweep_on_workers_equals_the_local_sweep(client, hub, tiny, env, tmp_path):
    local = pythia(REPO, home=tmp_path / "local", vectors=VEC)
    assert local.analysis.steps_computed == list(DISTINCT)
    hub.reset_counters()
    cached = _client_cache(env)
    fetched: list[tuple[int, str, int]] = []
    result = pythia(
        REPO,
        home=tmp_path / "dist",
        vectors=VEC,
        scheduler=client.scheduler.address,
        on_fetch=lambda *event: fetched.append(event),
    )
    a = result.analysis
    assert a.device.endswith("on 2 Dask workers")  # the steps ran on the cluster
    assert a.steps_computed == list(DISTINCT) and a.steps_failed == []
    _assert_same_store(a.store_path, local.analysis.store_path)
    with open_run(a.store_path) as run:
        assert run.step_flags[0].startswith("same weights as step 1, 2")
    # no file of the duplicates was asked for (their metadata was read here: it is how they
    # are found); every other revision was downloaded once, the reference too: the worker
    # that planned the views from it kept it for the reference's task
    for step in (1, 2):
        assert _file_requests(hub, tiny[step]) == []
    assert _gets(hub, tiny) == list(DISTINCT)
    size = {s: len(_bin(s)) + len(CONFIG) for s in DISTINCT}
    assert result.fetched_bytes == sum(size.values())
    got = {}
    for step, event, nbytes in fetched:
        assert event == "done"
        got[step] = got.get(step, 0) + nbytes
    assert got == size
    # nothing was downloaded here; every worker that ran a task left an empty cache
    assert _client_cache(env) == cached
    leftovers = _worker_leftovers(client)
    assert len(leftovers) == 2 and [v for v in leftovers.values() if v] == []
    assert any(v == [] for v in leftovers.values())  # the caches were made there


def test_a_failing_revision_is_flagged_and_the_sweep_goes_on(client, hub, env, tmp_path):
    repo = hub.add_repo(REPO)
    data = {0: _bin(0), 4: _bin(4)[: len(_bin(4)) // 2], 8: _bin(8), 1000: _bin(1000)}
    for s, blob in data.items():  # step 4: a truncated zip archive, corrupt on every try
        repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: blob})
    commits = {s: repo.branches[f"step{s}"] for s in data}
    local = pythia(REPO, home=tmp_path / "local", vectors=VEC)
    hub.reset_counters()
    address = client.scheduler.address
    _set_worker_free_bytes(client, ("step8-",))  # and step 8: no room on the workers
    try:
        result = pythia(REPO, home=tmp_path / "dist", vectors=VEC, scheduler=address)
    finally:
        _set_worker_free_bytes(client, ())
    a = result.analysis
    assert a.steps_failed == [4, 8] and a.steps_computed == [0, 1000]
    assert local.analysis.steps_failed == [4]
    with open_run(a.store_path) as run:
        assert sorted(run.step_flags) == [4, 8]
        flag = run.step_flags[8]
        assert flag.startswith(f"failed: {REPO}@step8: worker tcp://127.0.0.1:")
        need = len(data[8]) + len(CONFIG)
        assert f"needs {need / 1e9:.2f} GB in " in flag and "are free" in flag
        # the corrupt file named as on the hub (the worker's cache is gone), same reason
        corrupt = run.step_flags[4]
        assert corrupt.startswith(f"failed: hf://{REPO}@step4/{BIN}: broken zip archive")
        reason = _flag(local.analysis.store_path, 4).split(f"{BIN}: ", 1)[1]
        assert corrupt.split(f"{BIN}: ", 1)[1].startswith(reason[:40])
    assert _gets(hub, commits).count(8) == 0  # refused before downloading
    assert [v for v in _worker_leftovers(client).values() if v] == []

    # the plan's own revision without room: one line naming the worker, nothing written
    _set_worker_free_bytes(client, ("step",))
    try:
        with pytest.raises(HubError) as err:
            pythia(REPO, home=tmp_path / "dist", vectors=VEC, scheduler=address)
    finally:
        _set_worker_free_bytes(client, ())
    message = str(err.value)
    # (the reference, planned from: step 4's and 8's agreement are missing)
    assert message.startswith(f"{REPO}@step1000: worker tcp://127.0.0.1:")
    assert "needs " in message and "\n" not in message
    # a re-run with room adds step 8: the store the local sweep makes
    again = pythia(REPO, home=tmp_path / "dist", vectors=VEC, scheduler=address).analysis
    assert again.steps_computed == [8] and again.steps_failed == [4]
    _assert_same_store(again.store_path, local.analysis.store_path, but=("/steps/flag",))
    assert _flag(again.store_path, 8) == _flag(local.analysis.store_path, 8)


def test_a_stalled_download_is_flagged_within_the_clients_limits(
    client, hub, tiny, env, tmp_path, monkeypatch
):
    # the limits are set here only: the workers' environment would give 30 s and 3 retries
    monkeypatch.setenv("SPECDYN_HUB_TIMEOUT", "1")
    monkeypatch.setenv("SPECDYN_HUB_RETRIES", "0")
    hub.misbehave("hang", f"/resolve/{tiny[4]}/{BIN}", method="HEAD")
    started = time.monotonic()
    result = pythia(REPO, home=tmp_path / "ws", steps="0,4,8", vectors=None,
                    scheduler=client.scheduler.address)  # fmt: skip
    assert time.monotonic() - started < 25
    a = result.analysis
    assert a.steps_failed == [4] and a.steps_computed == [0, 8]
    with open_run(a.store_path) as run:
        flag = run.step_flags[4]
    assert flag.startswith(f"failed: {REPO}: cannot download {BIN} of step4: {hub.url} gave no")
    assert "answer within 1 s" in flag
    assert [v for v in _worker_leftovers(client).values() if v] == []
    local = pythia(REPO, home=tmp_path / "local", steps="0,4,8", vectors=None).analysis
    assert _flag(local.store_path, 4)[:200] == flag[:200]  # as the local sweep words it


def test_sharded_revisions_and_a_shared_shard(client, hub, env, tmp_path):
    repo = hub.add_repo(REPO)
    files = {s: _sharded(s) for s in (0, 1000, 2000)}
    files[1000][SHARDS[0]] = files[2000][SHARDS[0]]  # the 12b fault: suspect, analysed
    for s, f in files.items():
        repo.add_branch(f"step{s}", f)
    local = pythia(REPO, home=tmp_path / "local", vectors=VEC).analysis
    dist = pythia(REPO, home=tmp_path / "dist", vectors=VEC, scheduler=client.scheduler.address)
    assert dist.analysis.steps_computed == local.steps_computed == [0, 1000, 2000]
    _assert_same_store(dist.analysis.store_path, local.store_path)
    with open_run(dist.analysis.store_path) as run:
        assert run.step_flags[1000] == f"suspect: shares {SHARDS[0]} = step 2000"
        assert {s["format"] for s in run.step_sources} == {"torch-sharded"}
    assert [v for v in _worker_leftovers(client).values() if v] == []


def test_a_sweep_stopped_after_planning_leaves_nothing_on_the_workers(
    client, hub, tiny, env, tmp_path
):
    home, address = tmp_path / "ws", client.scheduler.address
    pythia(REPO, home=home, steps="0,4", vectors=None, scheduler=address)
    hub.reset_counters()
    # step 8 is planned from (downloaded and held by a worker), then the store refuses
    # the other precision: the held revision is deleted all the same
    with pytest.raises(StoreMismatchError):
        pythia(REPO, home=home, steps="0,4,8", vectors=None, scheduler=address,
               compute=ComputeOptions(precision="float32"))  # fmt: skip
    assert _gets(hub, tiny) == [8]
    assert [v for v in _worker_leftovers(client).values() if v] == []


def test_cli_local_cluster_gives_the_same_store(hub, tiny, env, tmp_path, capsys):
    local = pythia(REPO, home=tmp_path / "local", steps="0,1,1000,2000", vectors=None)
    hub.reset_counters()
    cached = _client_cache(env)
    args = ["pythia", "--model", REPO, "--home", str(tmp_path / "dist"), "--values-only"]
    args += ["--steps", "0,1,1000,2000", "--scheduler", "local:2", "--max-inflight", "1"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["analysis"]["device"].endswith("on 2 Dask workers")
    assert out["analysis"]["steps_computed"] == [0, 1000, 2000]
    _assert_same_store(out["analysis"]["store_path"], local.analysis.store_path)
    assert _file_requests(hub, tiny[1]) == []
    assert _gets(hub, tiny) == [0, 1000, 2000]  # values only: planned from step 0
    assert _client_cache(env) == cached


def test_cluster_options_are_checked_before_any_request(hub, tiny, env, tmp_path, capsys):
    home = tmp_path / "ws"
    with pytest.raises(SpecdynError, match=r"^max_inflight applies to a run on a cluster"):
        pythia(REPO, home=home, max_inflight=2)
    with pytest.raises(SpecdynError, match=r"^scheduler 'local:0': local:N needs"):
        pythia(REPO, home=home, scheduler="local:0")
    with pytest.raises(SpecdynError, match=r"^keep keeps the files in this machine's cache"):
        pythia(REPO, home=home, keep=True, scheduler="local:2")
    with pytest.raises(SpecdynError, match=r"^HF_HUB_OFFLINE is set, but with scheduler"):
        pythia(REPO, home=home, offline=True, scheduler="local:2")
    assert main(["pythia", "--model", REPO, "--home", str(home), "--max-inflight", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("specdyn: error: --max-inflight applies") and err.count("\n") == 1
    assert hub.log == [] and not home.exists()


def test_dry_run_on_workers_plans_whole_downloads(hub, tiny, env, tmp_path, capsys):
    pythia(REPO, home=tmp_path / "other", steps="1000", vectors=None, keep=True)  # cached here
    here = plan_pythia(REPO, home=tmp_path / "ws", steps="0,1000")
    workers = plan_pythia(REPO, home=tmp_path / "ws", steps="0,1000", on_workers=True)
    size = {s: len(_bin(s)) + len(CONFIG) for s in (0, 1000)}
    assert [r.to_fetch for r in here.revisions] == [size[0], 0]
    assert [r.to_fetch for r in workers.revisions] == [size[0], size[1000]]
    assert workers.peak_disk == max(size.values()) and here.peak_disk == size[0]
    args = ["pythia", "--model", REPO, "--home", str(tmp_path / "ws"), "--steps", "0,1000"]
    assert main([*args, "--dry-run", "--scheduler", "local:2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["on_workers"] is True and payload["bytes_to_fetch"] == sum(size.values())
    assert main([*args, "--dry-run", "--scheduler", "local:2"]) == 0
    out = capsys.readouterr().out
    assert "per worker thread" in out and "two revisions at most" not in out


def test_the_planning_task_checks_the_workers_specdyn_first():
    # a worker that joined after the check of every worker: one line, nothing downloaded
    # (the revision is never looked at)
    with pytest.raises(SpecdynError) as err:
        _sweep._revision_metadata(None, "0.0.1")
    message = str(err.value)
    assert message == (
        f"a worker runs specdyn {specdyn.__version__}, the client 0.0.1; "
        "install the same version on every worker"
    )
