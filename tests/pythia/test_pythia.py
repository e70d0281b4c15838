"""`specdyn pythia`: Pythia revisions streamed from a fake hub (tests/_fake_hub.py).

Each test starts its own FakeHub on a loopback port holding tiny GPT-NeoX-layout "Pythia"
repos (hidden 32, 2 layers, 4 heads, MLP 64, vocab 64; fp16 with the buffers of
docs/pythia.md#catalog) and points the real `huggingface_hub` client at it with a private cache (hub_env). Repos are
addressed by full repo id, so no catalog entry is needed.

    EleutherAI/pythia-tiny          step0 step1 step2 (byte-identical, the known fault)
                                    step4 step8 step1000 step2000 (weights drift per step);
                                    main: model.safetensors (not a step branch)
    EleutherAI/pythia-tiny-sharded  step0 step1000 step2000 in two .bin shards + index json;
                                    step1000's first shard is step2000's (the 12b fault)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from _fake_hub import FakeHub, hub_env
from huggingface_hub import constants

import specdyn.pythia._sweep as pythia_mod
from specdyn import analyze, open_run
from specdyn.analysis import VectorOptions
from specdyn.cli import main
from specdyn.errors import CheckpointError, SpecdynError, StepSpecError
from specdyn.pythia import CATALOG, HubError, plan_pythia, pythia, resolve_model

REPO = "EleutherAI/pythia-tiny"
SHARDED = "EleutherAI/pythia-tiny-sharded"
H, LAYERS, HEADS, INTER, VOCAB, CTX = 32, 2, 4, 64, 64, 16
STEPS = (0, 1, 2, 4, 8, 1000, 2000)
DISTINCT = (0, 4, 8, 1000, 2000)  # step1 and step2 hold step0's bytes
SHARD_STEPS = (0, 1000, 2000)
SHARDS = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")
VEC = VectorOptions(k=8)
BIN = "pytorch_model.bin"
ST = "model.safetensors"
INDEX = "pytorch_model.bin.index.json"
SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")

CONFIG = json.dumps(
    {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": H,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTER,
        "vocab_size": VOCAB,
        "max_position_embeddings": CTX,
        "rotary_pct": 0.25,
        "use_parallel_residual": True,
        "torch_dtype": "float16",
    },
    indent=2,
).encode()


# --------------------------------------------------------------------------- weights


@functools.cache
def _state_dict(step: int) -> dict[str, torch.Tensor]:
    """The GPT-NeoX state dict of one step (names and buffers of docs/pythia.md#catalog), fp16.

    Every step starts from the same base weights and drifts by 0.02·log(1 + step)
    of fresh noise, so consecutive revisions differ a little (step 0 is the base).
    """
    base = torch.Generator().manual_seed(0)
    drift = torch.Generator().manual_seed(1000 + step)
    scale = 0.02 * math.log1p(step)

    def w(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=base, dtype=torch.float64) / math.sqrt(shape[-1])
        return (t + scale * torch.randn(*shape, generator=drift, dtype=torch.float64)).half()

    head_dim = H // HEADS
    rotary = int(head_dim * 0.25)
    sd = {"gpt_neox.embed_in.weight": w(VOCAB, H)}
    for n in range(LAYERS):
        p = f"gpt_neox.layers.{n}."
        sd.update(
            {
                p + "input_layernorm.weight": 1 + w(H),
                p + "input_layernorm.bias": w(H),
                p + "post_attention_layernorm.weight": 1 + w(H),
                p + "post_attention_layernorm.bias": w(H),
                p + "attention.bias": torch.tril(torch.ones(CTX, CTX, dtype=torch.bool))[
                    None, None
                ],
                p + "attention.masked_bias": torch.tensor(-1e9),
                p + "attention.rotary_emb.inv_freq": 1.0
                / (10000 ** (torch.arange(0, rotary, 2).float() / rotary)),
                p + "attention.query_key_value.weight": w(3 * H, H),
                p + "attention.query_key_value.bias": w(3 * H),
                p + "attention.dense.weight": w(H, H),
                p + "attention.dense.bias": w(H),
                p + "mlp.dense_h_to_4h.weight": w(INTER, H),
                p + "mlp.dense_h_to_4h.bias": w(INTER),
                p + "mlp.dense_4h_to_h.weight": w(H, INTER),
                p + "mlp.dense_4h_to_h.bias": w(H),
            }
        )
    sd["gpt_neox.final_layer_norm.weight"] = 1 + w(H)
    sd["gpt_neox.final_layer_norm.bias"] = w(H)
    sd["embed_out.weight"] = w(VOCAB, H)
    return sd


def _torch_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    """`torch.save` of a state dict, as bytes."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@functools.cache
def _bin(step: int) -> bytes:
    """pytorch_model.bin of one step (computed once per session)."""
    return _torch_bytes(_state_dict(step))


@functools.cache
def _safetensors(step: int) -> bytes:
    """model.safetensors of one step."""
    return safetensors.torch.save(_state_dict(step))


@functools.cache
def _shards(step: int) -> tuple[bytes, bytes]:
    """The two .bin shards of one step: embed_in + layer 0, then the rest."""
    sd = _state_dict(step)
    first = {k: v for k, v in sd.items() if "embed_in" in k or ".layers.0." in k}
    rest = {k: v for k, v in sd.items() if k not in first}
    return _torch_bytes(first), _torch_bytes(rest)


def _index(step: int) -> bytes:
    """pytorch_model.bin.index.json of one step's shards."""
    sd = _state_dict(step)
    weight_map = {k: SHARDS[0 if ("embed_in" in k or ".layers.0." in k) else 1] for k in sd}
    total = sum(t.numel() * t.element_size() for t in sd.values())
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}).encode()


def _sigma(step: int, name: str) -> np.ndarray:
    """Singular values of one weight in float64 numpy (the independent reference)."""
    return np.linalg.svd(_state_dict(step)[name].double().numpy(), compute_uv=False)


# --------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def env(monkeypatch, hub, tmp_path):
    return hub_env(monkeypatch, hub, tmp_path / "hf")


@pytest.fixture
def ws(tmp_path):
    return tmp_path / "ws"


@pytest.fixture
def tiny(hub):
    """REPO: every step branch with one pytorch_model.bin (steps 1, 2 = step 0's bytes)."""
    repo = hub.add_repo(REPO)
    bins = {s: _bin(0 if s in (1, 2) else s) for s in STEPS}
    for s in STEPS:
        repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: bins[s]})
    repo.add_branch("main", {"config.json": CONFIG, ST: _safetensors(2000)})
    commits = {s: repo.branches[f"step{s}"] for s in STEPS}
    return types.SimpleNamespace(repo=repo, bins=bins, commits=commits)


@pytest.fixture
def sharded(hub):
    """SHARDED: sharded step branches; step1000 carries step2000's first shard."""
    repo = hub.add_repo(SHARDED)
    shards = {s: _shards(s) for s in SHARD_STEPS}
    shards[1000] = (shards[2000][0], shards[1000][1])
    for s in SHARD_STEPS:
        files = {
            "config.json": CONFIG,
            INDEX: _index(s),
            **dict(zip(SHARDS, shards[s], strict=True)),
        }
        repo.add_branch(f"step{s}", files)
    commits = {s: repo.branches[f"step{s}"] for s in SHARD_STEPS}
    return types.SimpleNamespace(repo=repo, shards=shards, commits=commits)


# --------------------------------------------------------------------------- helpers


def _repo_cache(env, repo_id: str) -> Path:
    return env.cache_dir / ("models--" + repo_id.replace("/", "--"))


def _weight_blobs(env, repo_id: str) -> set[str]:
    """LFS blobs (named by sha256, partial downloads included) in the repo's cache."""
    blobs = _repo_cache(env, repo_id) / "blobs"
    if not blobs.is_dir():
        return set()
    names = {p.name.removesuffix(".incomplete") for p in blobs.iterdir()}
    return {n for n in names if SHA256_NAME.match(n)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weight_bytes(hub, repo_id: str) -> int:
    """Content bytes the hub sent for LFS weight files of a repo."""
    return sum(
        n for (r, f), n in hub.bytes_served.items() if r == repo_id and f.endswith((".bin", ST))
    )


def _fetched_steps(hub, repo_id: str, commits: dict[int, str], filename: str = BIN) -> list[int]:
    """Steps whose `filename` was GET from the hub, in request order (repeats kept)."""
    by_commit = {c: s for s, c in commits.items()}
    return [by_commit[r.revision] for r in hub.file_requests(repo_id, filename, "GET")]


class _Events:
    """Thread-safe timestamped log of on_fetch / on_progress callbacks."""

    def __init__(self, on_fetch_hook=None, progress_sleep: float = 0.0) -> None:
        self.items: list[tuple[float, str, int, str]] = []
        self.nbytes: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self._hook = on_fetch_hook
        self._sleep = progress_sleep

    def on_fetch(self, step: int, event: str, nbytes: int) -> None:
        with self._lock:
            self.items.append((time.monotonic(), "fetch", step, event))
            self.nbytes.setdefault(step, []).append(nbytes)
        if self._hook is not None:
            self._hook(step, event)

    def on_progress(self, p) -> None:
        with self._lock:
            self.items.append((time.monotonic(), "progress", p.step, p.phase))
        if self._sleep:
            time.sleep(self._sleep)

    def fetch(self, event: str) -> list[int]:
        return [s for _, kind, s, e in self.items if kind == "fetch" and e == event]


# --------------------------------------------------------------------------- catalog


def test_resolve_model_catalog_and_repo_ids():
    repo, name, model = resolve_model("2.8b")
    assert (repo, name) == ("EleutherAI/pythia-2.8b", "pythia-2.8b")
    assert (model.hidden, model.layers, model.heads, model.intermediate) == (2560, 32, 32, 10240)
    repo, name, model = resolve_model("pythia-410m-deduped")
    assert (repo, name) == ("EleutherAI/pythia-410m-deduped", "pythia-410m-deduped")
    assert (model.hidden, model.layers, model.heads, model.intermediate) == (1024, 24, 16, 4096)
    assert model is CATALOG["410m"]  # deduped shares the architecture
    assert resolve_model(REPO) == (REPO, "pythia-tiny", None)
    with pytest.raises(SpecdynError) as err:
        resolve_model("3b")
    msg = str(err.value)
    assert "\n" not in msg and "'3b'" in msg and "2.8b" in msg and "repo id" in msg


# --------------------------------------------------------------------------- listing


def test_listing_and_steps(hub, tiny, env, ws):
    plan = plan_pythia(REPO, home=ws)
    assert plan.repo == REPO and plan.name == "pythia-tiny" and not plan.offline
    assert [r.step for r in plan.revisions] == list(STEPS)  # "main" is not a step branch
    assert [r.branch for r in plan.revisions] == [f"step{s}" for s in STEPS]
    assert [r.commit for r in plan.revisions] == [tiny.commits[s] for s in STEPS]
    assert {r.layout for r in plan.revisions} == {"torch"}
    assert plan.missing == []

    assert [r.step for r in plan_pythia(REPO, steps="0:1000").revisions] == [0, 1, 2, 4, 8, 1000]
    assert [r.step for r in plan_pythia(REPO, steps="0:2000:1000").revisions] == [0, 1000, 2000]
    # log:3 = first, last and the branch nearest the middle of [log 1, log 2001]
    middle = min(STEPS[1:-1], key=lambda s: abs(math.log1p(s) - math.log1p(2000) / 2))
    assert middle == 8
    log3 = [r.step for r in plan_pythia(REPO, steps="log:3").revisions]
    assert log3 == [0, middle, 2000]
    assert _weight_bytes(hub, REPO) == 0


def test_missing_branch_is_a_note_not_fatal(hub, tiny, env, ws):
    try:
        plan = plan_pythia(REPO, steps="0,3,1000", home=ws)
    except StepSpecError as exc:
        pytest.fail(
            "a missing explicit branch is fatal: specdyn.pythia._plan calls "
            "select_steps(branches, steps) before _missing_steps, and select_steps raises "
            f"for an unavailable explicit step ({exc}); drop the missing steps from the "
            "spec (or select per item) first"
        )
    assert plan.missing == [3]
    assert [r.step for r in plan.revisions] == [0, 1000]
    notes = [n for n in plan.notes if n.kind == "missing-branch"]
    assert len(notes) == 1 and "step3" in notes[0].message


# --------------------------------------------------------------------------- dry run


def test_dry_run_fetches_no_weights_and_flags_duplicates(hub, tiny, env, ws, capsys):
    # a longer config.json on the last two steps makes the peak depend on the fetch order
    config = {s: CONFIG for s in STEPS}
    for s in (1000, 2000):
        config[s] = CONFIG[:-1] + b', "padding": "' + b"x" * 20_000 + b'"}'
        tiny.repo.add_branch(f"step{s}", {"config.json": config[s], BIN: tiny.bins[s]})
    plan = plan_pythia(REPO, home=ws)
    assert _weight_bytes(hub, REPO) == 0
    assert hub.file_requests(REPO, BIN, method=None) == []  # not even a HEAD

    size = {s: len(tiny.bins[s]) + len(config[s]) for s in STEPS}
    by_step = {r.step: r for r in plan.revisions}
    for s in STEPS:
        assert by_step[s].size == size[s]
    assert [r.action for r in plan.revisions] == [
        "analyse", "skip-duplicate", "skip-duplicate", "analyse", "analyse", "analyse", "analyse",
    ]  # fmt: skip
    for s in (1, 2):
        assert by_step[s].duplicate_of == 0
        assert by_step[s].flag == "duplicate of step 0 (byte-identical weights)"
        assert by_step[s].to_fetch == 0
    assert by_step[0].flag.startswith("same weights as step 1, 2")
    assert all(by_step[s].flag == "" for s in (4, 8, 1000, 2000))
    assert [n.kind for n in plan.notes] == ["duplicate"]

    assert plan.bytes_to_fetch == sum(size[s] for s in DISTINCT)
    order = [2000, 0, 4, 8, 1000]  # the reference (last step) first, then by step
    peak = max(size[a] + size[b] for a, b in zip(order, order[1:], strict=False))
    assert peak == size[2000] + size[0] < size[1000] + size[2000]  # not in step order
    assert plan.peak_disk == peak

    code = main(["pythia", "--model", REPO, "--dry-run", "--home", str(ws), "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["bytes_to_fetch"] == plan.bytes_to_fetch
    assert payload["peak_disk"] == plan.peak_disk
    assert [r["action"] for r in payload["revisions"]] == [r.action for r in plan.revisions]
    assert main(["pythia", "--model", REPO, "--dry-run", "--home", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "skip-duplicate" in out and "peak disk" in out
    assert _weight_bytes(hub, REPO) == 0
    assert not ws.exists() or not list(ws.iterdir())  # no store written


# --------------------------------------------------------------------------- the sweep


def test_sweep_streams_deletes_and_skips_duplicates(hub, tiny, env, ws):
    order = [2000, 0, 4, 8, 1000]  # the reference (last step) first, then by step
    seen: list[set[str]] = []  # weight blobs in the cache at each fetch event
    at_end: dict[int, set[str]] = {}  # ... at the end of each step's analysis

    def watch(step, event):
        seen.append(_weight_blobs(env, REPO))

    events = _Events(on_fetch_hook=watch)

    def on_progress(p):
        events.on_progress(p)
        i = order.index(p.step)
        if i + 1 < len(order):  # let the one-ahead download finish: then both are held
            deadline = time.monotonic() + 5
            while order[i + 1] not in events.fetch("done") and time.monotonic() < deadline:
                time.sleep(0.005)
        at_end[p.step] = _weight_blobs(env, REPO)

    result = pythia(REPO, home=ws, vectors=VEC, on_fetch=events.on_fetch, on_progress=on_progress)
    a = result.analysis
    assert a.steps_computed == list(DISTINCT)
    assert a.steps_failed == []
    # every distinct revision downloaded once; the duplicates received zero weight bytes
    assert sorted(_fetched_steps(hub, REPO, tiny.commits)) == list(DISTINCT)
    assert _weight_bytes(hub, REPO) == sum(len(tiny.bins[s]) for s in DISTINCT)
    assert hub.bytes_served[(REPO, ST)] == 0
    assert result.fetched_bytes == sum(len(tiny.bins[s]) + len(CONFIG) for s in DISTINCT)
    assert sorted(events.fetch("done")) == list(DISTINCT)
    assert events.nbytes[1000] == [len(tiny.bins[1000]) + len(CONFIG)] * 2  # start, done

    with open_run(a.store_path) as run:
        assert run.steps.tolist() == list(DISTINCT)
        assert list(run.step_flags) == [0]
        assert run.step_flags[0].startswith("same weights as step 1, 2")
        sources = {s["step"]: s for s in run.step_sources}
        assert set(sources) == set(DISTINCT)
        src = sources[1000]
        assert src["source"] == f"hf://{REPO}@step1000:{tiny.commits[1000]}"
        assert src["sha256"] == _sha(tiny.bins[1000]) and src["size"] == len(tiny.bins[1000])
        assert src["format"] == "torch"
        # values come from the downloaded weights (independent float64 SVD)
        for i, s in enumerate(DISTINCT):
            np.testing.assert_allclose(
                run.sigma("gpt_neox.embed_in.weight")[i],
                _sigma(s, "gpt_neox.embed_in.weight"),
                rtol=0,
                atol=1e-6 * _sigma(s, "gpt_neox.embed_in.weight")[0],
            )
        assert not any("attention.bias" in m or "inv_freq" in m for m in run.matrices)
        assert run.reference == 2000
        assert run.section_steps("agreement").tolist() == list(DISTINCT)

    # what specdyn downloaded is gone; the cache never held more than two revisions
    assert _weight_blobs(env, REPO) == set()
    assert not [p for p in _repo_cache(env, REPO).rglob("*.bin") if p.exists()]
    assert events.fetch("start") == order
    assert seen and max(len(b) for b in seen) <= 2, [sorted(b) for b in seen]
    assert all(b <= {_sha(tiny.bins[s]) for s in DISTINCT} for b in seen)
    # while r is analysed, r and the next revision are cached, nothing else
    for cur, nxt in zip(order, order[1:], strict=False):
        assert at_end[cur] == {_sha(tiny.bins[cur]), _sha(tiny.bins[nxt])}, (cur, nxt)
    assert at_end[1000] == {_sha(tiny.bins[1000])}


def test_keep_leaves_downloads_in_the_cache(hub, tiny, env, ws):
    result = pythia(REPO, home=ws, steps="0,4,1000", keep=True, vectors=None)
    assert result.analysis.steps_computed == [0, 4, 1000]
    assert _weight_blobs(env, REPO) == {_sha(tiny.bins[s]) for s in (0, 4, 1000)}
    refs = _repo_cache(env, REPO) / "refs"
    for s in (0, 4, 1000):  # written by specdyn: the client does not when fetching by commit
        assert (refs / f"step{s}").read_text().strip() == tiny.commits[s]


def test_reference_is_downloaded_first(hub, tiny, env, ws):
    events = _Events()
    result = pythia(
        REPO,
        home=ws,
        steps="0,4,8",
        vectors=VEC,
        on_fetch=events.on_fetch,
        on_progress=events.on_progress,
    )
    assert result.analysis.reference == 8
    assert events.fetch("start") == [8, 0, 4]
    assert _fetched_steps(hub, REPO, tiny.commits) == [8, 0, 4]
    phases = [(s, ph) for _, kind, s, ph in events.items if kind == "progress"]
    assert phases[0] == (8, "reference")


def test_next_download_overlaps_the_analysis(monkeypatch, tmp_path, ws):
    # small server chunks + a delay: each download takes ~0.15 s; each analysis
    # progress event sleeps 0.05 s, so both take long enough to be seen overlapping
    with FakeHub(chunk_size=8192) as hub:
        env = hub_env(monkeypatch, hub, tmp_path / "hf")
        repo = hub.add_repo(REPO)
        for s in (0, 4, 1000, 2000):
            repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: _bin(s)})
        hub.delay(0.02)
        events = _Events(progress_sleep=0.05)
        pythia(
            REPO,
            home=ws,
            vectors=VEC,
            on_fetch=events.on_fetch,
            on_progress=events.on_progress,
        )
        assert hub.max_active_gets == 1  # one download at a time
    order = [2000, 0, 4, 1000]
    assert events.fetch("start") == order
    t = {}
    for stamp, kind, step, what in events.items:
        key = (kind, step, "progress" if kind == "progress" else what)
        t.setdefault(key, []).append(stamp)
    for cur, nxt in zip(order, order[1:], strict=False):
        # r is analysed once downloaded; r+1 starts downloading after r's download (one at
        # a time) and before r's analysis ends (without the prefetch it would start only
        # once r is released, after its last progress event)
        assert t[("fetch", cur, "done")][0] <= min(t[("progress", cur, "progress")])
        assert t[("fetch", cur, "done")][0] <= t[("fetch", nxt, "start")][0]
        assert t[("fetch", nxt, "start")][0] < max(t[("progress", cur, "progress")]), (cur, nxt)
    assert _weight_blobs(env, REPO) == set()


def test_cli_sweep(hub, tiny, env, ws, capsys):
    argv = ["pythia", "--model", REPO, "--home", str(ws), "--values-only"]
    assert main([*argv, "--steps", "0,4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["analysis"]["steps_computed"] == [0, 4]
    assert payload["fetched_bytes"] == len(tiny.bins[0]) + len(tiny.bins[4]) + 2 * len(CONFIG)
    assert main(argv) == 0  # the rest, with the live display (stderr is not a terminal)
    out = capsys.readouterr().out
    assert "same weights as step 1, 2" in out
    with open_run(ws / "pythia-tiny.h5") as run:
        assert run.steps.tolist() == list(DISTINCT)
    assert _weight_blobs(env, REPO) == set()


# --------------------------------------------------------------------------- duplicates


def test_duplicates_analyze_equals_local_analyze(hub, tiny, env, tmp_path):
    result = pythia(REPO, home=tmp_path / "ws-hub", duplicates="analyze", vectors=VEC)
    assert result.analysis.steps_computed == list(STEPS)
    assert sorted(_fetched_steps(hub, REPO, tiny.commits)) == list(DISTINCT)
    assert _weight_bytes(hub, REPO) == sum(len(tiny.bins[s]) for s in DISTINCT)

    local = tmp_path / "local"
    for s in STEPS:
        (local / f"step_{s}").mkdir(parents=True)
        (local / f"step_{s}" / BIN).write_bytes(tiny.bins[s])
        (local / f"step_{s}" / "config.json").write_bytes(CONFIG)
    (ran,) = analyze(local, home=tmp_path / "ws-local", vectors=VEC).runs
    assert ran.steps_computed == list(STEPS)

    with open_run(result.analysis.store_path) as h, open_run(ran.store_path) as loc:
        assert h.steps.tolist() == loc.steps.tolist() == list(STEPS)
        assert h.matrices == loc.matrices
        assert h.metric_names == loc.metric_names
        assert h.reference == loc.reference == 2000
        assert [p["name"] for p in h.pairs] == [p["name"] for p in loc.pairs] and h.pairs
        for m in h.matrices:
            assert np.isfinite(h.sigma(m)).all() and np.isfinite(h.agreement(m)).all()
            np.testing.assert_allclose(h.sigma(m), loc.sigma(m), rtol=0, atol=1e-12)
            np.testing.assert_allclose(h.agreement(m), loc.agreement(m), rtol=0, atol=1e-12)
        for name in h.metric_names:
            np.testing.assert_allclose(h.metric(name), loc.metric(name), rtol=0, atol=1e-12)
        for p in h.pairs:
            np.testing.assert_allclose(
                h.alignment(p["name"]), loc.alignment(p["name"]), rtol=0, atol=1e-12
            )
        np.testing.assert_allclose(h.agreement_score(), loc.agreement_score(), atol=1e-12)
        flags = h.step_flags
        assert flags[0] == "same weights as step 1, 2"
        assert flags[1] == flags[2] == "duplicate of step 0 (byte-identical weights)"


def test_duplicates_analyze_deletes_the_shared_blob(hub, tiny, env, ws):
    order = list(STEPS)  # values only: no reference, the steps in order
    events = _Events()
    at_end: dict[int, set[str]] = {}

    def on_progress(p):  # at the end of each analysis, once the next download is done
        i = order.index(p.step)
        deadline = time.monotonic() + 5
        while i + 1 < len(order) and order[i + 1] not in events.fetch("done"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        at_end[p.step] = _weight_blobs(env, REPO)

    pythia(
        REPO,
        home=ws,
        duplicates="analyze",
        vectors=None,
        on_fetch=events.on_fetch,
        on_progress=on_progress,
    )
    leftover = _weight_blobs(env, REPO)
    most = {s: len(b) for s, b in at_end.items() if len(b) > 2}
    assert leftover == set() and not most, (
        f"--duplicates analyze: the blob shared by steps 0/1/2 ({_sha(tiny.bins[0])[:12]}…) "
        f"is still cached after the sweep (left: {[b[:12] for b in sorted(leftover)]}); "
        f"more than two revisions' weights were cached while analysing steps {most}: "
        "Hub.drop(rev, keep=...) skips a kept file entirely (its snapshot link stays), so "
        "the drop of its last user finds the blob still linked from the earlier snapshot "
        "and never deletes it; drop should unlink the snapshot file and keep only the blob "
        "while a later revision needs it"
    )


def test_corrupt_reference_stops_with_advice(hub, env, ws):
    repo = hub.add_repo(REPO)
    files = {0: _bin(0), 4: _bin(4), 1000: _bin(1000)[:30000]}  # the last step is truncated
    for s, data in files.items():
        repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: data})
    with pytest.raises(SpecdynError) as err:
        pythia(REPO, home=ws, vectors=VEC)
    msg = str(err.value)
    assert "\n" not in msg
    leftover = _weight_blobs(env, REPO)
    # not a CheckpointError about a cache path: the advice names the option to change
    assert not isinstance(err.value, CheckpointError)
    assert "step 1000" in msg and "choose another vectors.reference" in msg, msg
    assert "choose another --reference" in err.value.render(cli=True)
    assert not leftover, f"the corrupt download stays in the cache: {sorted(leftover)}"


# --------------------------------------------------------------------------- resume


def test_resume_fetches_only_new_steps(hub, tiny, env, ws):
    first = pythia(REPO, home=ws, steps="0:8", vectors=None)
    assert first.analysis.steps_computed == [0, 4, 8]
    assert sorted(_fetched_steps(hub, REPO, tiny.commits)) == [0, 4, 8]
    hub.reset_counters()

    plan = plan_pythia(REPO, home=ws)
    actions = {r.step: r.action for r in plan.revisions}
    assert actions == {
        0: "done", 1: "skip-duplicate", 2: "skip-duplicate", 4: "done", 8: "done",
        1000: "analyse", 2000: "analyse",
    }  # fmt: skip
    assert plan.bytes_to_fetch == sum(len(tiny.bins[s]) + len(CONFIG) for s in (1000, 2000))

    second = pythia(REPO, home=ws, vectors=None)
    assert second.analysis.steps_computed == [1000, 2000]
    assert second.analysis.steps_already_done == [0, 4, 8]
    fetched = sorted(_fetched_steps(hub, REPO, tiny.commits))
    assert {1000, 2000} <= set(fetched) and not {4, 8} & set(fetched)
    with open_run(second.analysis.store_path) as run:
        assert run.steps.tolist() == list(DISTINCT)
    assert _weight_blobs(env, REPO) == set()

    hub.reset_counters()  # a third run has nothing to do and fetches nothing
    third = pythia(REPO, home=ws, vectors=None)
    assert third.analysis is None and third.fetched_bytes == 0
    assert hub.file_requests(REPO, BIN, method=None) == []

    assert fetched == [1000, 2000], (
        f"the resumed values-only sweep downloaded steps {fetched}: step 0 is done in the "
        "store but was fetched again, because analyze_stream acquired selected[0] to plan "
        "the matrix views (plan_step) even when that step is done; a remote stream should "
        "plan from a step it analyses anyway (the first pending one)"
    )


class _Killed(Exception):
    """Stands for the process being killed in the middle of a sweep."""


def test_resume_after_a_kill(hub, tiny, env, ws):
    def kill_at_4(p):
        if p.step == 4:
            raise _Killed

    # the reference (2000) and step 0 are stored, then the sweep dies analysing step 4
    with pytest.raises(_Killed):
        pythia(REPO, home=ws, vectors=VEC, on_progress=kill_at_4)
    with open_run(ws / "pythia-tiny.h5") as run:
        assert run.steps.tolist() == [0, 2000]
    hub.reset_counters()

    result = pythia(REPO, home=ws, vectors=VEC)
    assert result.analysis.steps_computed == [4, 8, 1000]
    assert result.analysis.steps_already_done == [0, 2000]
    fetched = _fetched_steps(hub, REPO, tiny.commits)
    # the reference is fetched again (its vectors are needed for the new steps' agreement),
    # step 0 is not
    assert 0 not in fetched and fetched[0] == 2000 and len(fetched) == len(set(fetched))
    with open_run(result.analysis.store_path) as run:
        assert run.steps.tolist() == list(DISTINCT)
        assert run.section_steps("agreement").tolist() == list(DISTINCT)
    leftover = _weight_blobs(env, REPO)
    assert leftover == set(), (
        f"after the kill and the resumed sweep the cache still holds {len(leftover)} weight "
        f"blob(s) (step 8's is {_sha(tiny.bins[8])}; left: {sorted(leftover)}): when the "
        "sweep stops on an exception, HubSteps.close() waits for the one-ahead download "
        "(step 8) to finish and nobody deletes it; the next run finds it cached, treats it "
        "as the user's file and never deletes it either"
    )


def test_interrupted_download_resumes(hub, tiny, env, ws, monkeypatch):
    # the client keeps whole DOWNLOAD_CHUNK_SIZE chunks of a cut download and resumes
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    cut = 2 * 8192
    assert len(tiny.bins[0]) > cut
    hub.fail_after(REPO, BIN, cut)
    result = pythia(REPO, home=ws, steps="0,2000", vectors=None)
    assert result.analysis.steps_computed == [0, 2000]
    gets = hub.file_requests(REPO, BIN, "GET")
    assert [g.range for g in gets] == [None, f"bytes={cut}-", None]
    assert _weight_bytes(hub, REPO) == len(tiny.bins[0]) + len(tiny.bins[2000])


# --------------------------------------------------------------------------- offline


def test_offline_uses_the_cached_revisions(hub, tiny, env, tmp_path, monkeypatch):
    online = pythia(REPO, home=tmp_path / "ws1", steps="0:1000", keep=True, vectors=None)
    assert online.analysis.steps_computed == [0, 4, 8, 1000]
    cached = _weight_blobs(env, REPO)
    assert cached == {_sha(tiny.bins[s]) for s in (0, 4, 8, 1000)}

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.offline = True  # any request would now fail: nothing is asked of the hub
    plan = plan_pythia(REPO, home=tmp_path / "ws2")
    assert plan.offline
    # step1, step2 (never fetched: duplicates) and step2000 are not cached: not listed
    assert [r.step for r in plan.revisions] == [0, 4, 8, 1000]
    assert [r.commit for r in plan.revisions] == [tiny.commits[s] for s in (0, 4, 8, 1000)]
    assert plan.bytes_to_fetch == 0

    result = pythia(REPO, home=tmp_path / "ws2", vectors=VEC)
    assert result.analysis.steps_computed == [0, 4, 8, 1000]
    assert result.fetched_bytes == 0
    assert _weight_blobs(env, REPO) == cached  # cached files are used, never deleted
    with open_run(online.analysis.store_path) as a, open_run(result.analysis.store_path) as b:
        assert a.steps.tolist() == b.steps.tolist() == [0, 4, 8, 1000]
        for m in a.matrices:
            sa = a.sigma(m)
            np.testing.assert_allclose(b.sigma(m), sa, rtol=0, atol=1e-12 * sa.max())


def test_no_network_is_one_line_naming_offline_mode(hub, tiny, env, ws, capsys):
    hub.offline = True
    with pytest.raises(HubError) as err:
        plan_pythia(REPO, home=ws)
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE=1" in msg and "unreachable" in msg
    assert main(["pythia", "--model", REPO, "--home", str(ws), "--values-only"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specdyn: error:")
    assert "HF_HUB_OFFLINE=1" in lines[0]


# --------------------------------------------------------------------------- failures


def test_corrupt_file_is_flagged_and_the_sweep_goes_on(hub, env, ws):
    repo = hub.add_repo(REPO)
    broken = _bin(4)[: len(_bin(4)) // 2]  # a truncated zip archive
    files = {0: _bin(0), 4: broken, 1000: _bin(1000)}
    for s, data in files.items():
        repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: data})
    result = pythia(REPO, home=ws, vectors=VEC)
    a = result.analysis
    assert a.steps_failed == [4]
    assert a.steps_computed == [0, 1000]
    failed = [n for n in a.notes if n.kind == "failed"]
    assert len(failed) == 1 and "step 4" in failed[0].message
    with open_run(a.store_path) as run:
        assert run.steps.tolist() == [0, 1000]
        assert set(run.step_flags) == {4}
        assert run.step_flags[4].startswith("failed: ")
    assert _weight_blobs(env, REPO) == set()  # the corrupt download is deleted too


def test_too_little_disk_stops_before_downloading(hub, tiny, env, ws, monkeypatch):
    free_seen = []

    def tiny_disk(folder):
        free_seen.append(Path(folder))
        return 1000

    monkeypatch.setattr(pythia_mod, "free_bytes", tiny_disk)
    with pytest.raises(HubError) as err:
        pythia(REPO, home=ws, vectors=None)
    msg = str(err.value)
    need = len(tiny.bins[0]) + len(CONFIG)  # vectors=None: the first step is fetched first
    assert "\n" not in msg
    assert f"needs {need / 1e9:.2f} GB" in msg and "free" in msg
    assert free_seen and free_seen[0] == env.cache_dir
    assert hub.file_requests(REPO, BIN, "GET") == []
    assert hub.file_requests(REPO, "config.json", "GET") == []
    assert _weight_blobs(env, REPO) == set()
    assert not (ws / "pythia-tiny.h5").exists()


# --------------------------------------------------------------------------- layouts


def test_sharded_repo_and_suspect_shard(hub, sharded, env, ws):
    plan = plan_pythia(SHARDED, home=ws)
    by_step = {r.step: r for r in plan.revisions}
    assert {r.layout for r in plan.revisions} == {"torch-sharded"}
    assert by_step[1000].flag == f"suspect: shares {SHARDS[0]} = step 2000"
    assert by_step[2000].flag == f"suspect: shares {SHARDS[0]} = step 1000"
    assert by_step[0].flag == ""
    assert all(r.action == "analyse" for r in plan.revisions)  # not identical: all analysed
    assert sum(n.kind == "suspect" for n in plan.notes) == 2

    result = pythia(SHARDED, home=ws, vectors=VEC)
    assert result.analysis.steps_computed == list(SHARD_STEPS)
    # the index json (identical on every branch: one git blob) is resolved per revision
    index_revs = {r.revision for r in hub.file_requests(SHARDED, INDEX, method=None)}
    assert index_revs == set(sharded.commits.values())
    for name in SHARDS:
        assert {r.revision for r in hub.file_requests(SHARDED, name, method=None)} == set(
            sharded.commits.values()
        )
    # the shared shard is downloaded once (kept while a later revision needs it)
    assert hub.bytes_served[(SHARDED, SHARDS[0])] == len(sharded.shards[0][0]) + len(
        sharded.shards[2000][0]
    )
    assert hub.bytes_served[(SHARDED, SHARDS[1])] == sum(
        len(sharded.shards[s][1]) for s in SHARD_STEPS
    )
    with open_run(result.analysis.store_path) as run:
        assert run.step_flags == {1000: by_step[1000].flag, 2000: by_step[2000].flag}
        src = {s["step"]: s for s in run.step_sources}[1000]
        assert src["format"] == "torch-sharded"
        assert src["source"] == f"hf://{SHARDED}@step1000:{sharded.commits[1000]}"
        # step1000's embed_in (first shard) is step2000's; its embed_out (second) its own
        i = run.steps.tolist().index(1000)
        for name, owner in (("gpt_neox.embed_in.weight", 2000), ("embed_out.weight", 1000)):
            ref = _sigma(owner, name)
            np.testing.assert_allclose(run.sigma(name)[i], ref, rtol=0, atol=1e-6 * ref[0])


def test_sharded_sweep_deletes_the_shared_shard(hub, sharded, env, ws):
    pythia(SHARDED, home=ws, vectors=None)
    leftover = _weight_blobs(env, SHARDED)
    assert leftover == set(), (
        "the shard shared by step1000 and step2000 stays in the cache after the sweep: "
        "Hub.drop keeps a needed file's snapshot link, and the last user's drop then sees "
        f"the blob linked elsewhere; left: {sorted(leftover)} "
        f"(step2000's shard 1 = {_sha(sharded.shards[2000][0])})"
    )


def test_safetensors_preferred_over_bin(hub, env, ws):
    repo = hub.add_repo(REPO)
    for s in (0, 1000):
        repo.add_branch(f"step{s}", {"config.json": CONFIG, BIN: _bin(s), ST: _safetensors(s)})
    repo.add_branch("main", {"config.json": CONFIG, ST: _safetensors(1000)})
    plan = plan_pythia(REPO, home=ws)
    assert [(r.step, r.layout) for r in plan.revisions] == [
        (0, "safetensors"),
        (1000, "safetensors"),
    ]
    assert plan.bytes_to_fetch == sum(len(_safetensors(s)) + len(CONFIG) for s in (0, 1000))

    result = pythia(REPO, home=ws, vectors=None)
    assert result.analysis.steps_computed == [0, 1000]
    assert hub.bytes_served[(REPO, BIN)] == 0
    assert hub.file_requests(REPO, BIN, method=None) == []
    assert hub.bytes_served[(REPO, ST)] == sum(len(_safetensors(s)) for s in (0, 1000))
    with open_run(result.analysis.store_path) as run:
        assert {s["format"] for s in run.step_sources} == {"safetensors"}
        ref = _sigma(1000, "embed_out.weight")
        np.testing.assert_allclose(run.sigma("embed_out.weight")[1], ref, atol=1e-6 * ref[0])


def test_duplicate_group_with_the_last_step_keeps_the_last_step(hub, tiny, env, ws):
    # step 2000 re-uploads step 1000's bytes (as Pythia's final revision can): the last
    # step is the sweep's end and the agreement's reference, so it is the one analysed
    tiny.repo.add_branch("step2000", {"config.json": CONFIG, BIN: tiny.bins[1000]})
    plan = plan_pythia(REPO, home=ws)
    by_step = {r.step: r for r in plan.revisions}
    assert by_step[2000].action == "analyse"
    assert by_step[2000].flag.startswith("same weights as step 1000")
    assert by_step[1000].action == "skip-duplicate"
    assert by_step[1000].duplicate_of == 2000
    assert by_step[1000].flag == "duplicate of step 2000 (byte-identical weights)"


def test_partial_downloads_of_killed_processes_are_deleted_unless_locked(hub, tiny, env):
    from filelock import FileLock

    from specdyn.pythia import Hub

    h = Hub(REPO, cache_dir=env.cache_dir)
    branches = {b.step: b for b in h.branches()}
    first, second = h.revision(branches[4]), h.revision(branches[8])
    h.fetch(first)  # creates the repo's cache folders
    blobs = _repo_cache(env, REPO) / "blobs"
    sha_8 = second.weights[0].sha256
    orphan = blobs / f"{sha_8}.deadbeef.incomplete"
    orphan.write_bytes(b"x" * 1000)
    # a download of that blob under way elsewhere (its lock held): the part is kept
    lock = env.cache_dir / ".locks" / _repo_cache(env, REPO).name / f"{sha_8}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = FileLock(lock)
    held.acquire()
    try:
        assert h._clear_orphans(sha_8) == 0 and orphan.exists()
    finally:
        held.release()
    # nobody downloading it: the orphan is deleted before the real download
    path = h.fetch(second)
    assert not orphan.exists() and h.reclaimed_bytes == 1000
    assert path.read_bytes() == tiny.bins[8]
    assert not list(blobs.glob("*.incomplete"))


def test_compare_a_pythia_run_uses_kept_vectors_and_names_deleted_revisions(hub, tiny, env, ws):
    from specdyn.comparison import compare

    result = pythia(REPO, home=ws, vectors=VEC)
    store = result.analysis.store_path
    cmp = compare([store, store], home=ws)
    pair = cmp.pairs[0]
    # the ends come from the kept vectors; the revisions between were deleted after analysis
    assert pair.steps_a.tolist() == [0, 2000] and pair.source == ["vectors/vectors"] * 2
    assert np.allclose(pair.score, 1.0, atol=1e-6)
    skipped = [n.message for n in cmp.notes if n.kind == "no-vectors"]
    assert skipped and all("hub revision (hf://" in m for m in skipped)
