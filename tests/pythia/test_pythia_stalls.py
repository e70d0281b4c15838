"""A stalled or broken hub (tests/_fake_hub.py `misbehave`) never hangs a sweep or its plan.

Every call runs in a watchdog thread with a hard time limit, so a regression fails here
instead of hanging the suite. The hub limits are small (SPECDYN_HUB_TIMEOUT=2 s, one retry).
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import torch
from _fake_hub import hub_env

from specdyn import open_run
from specdyn.cli import main
from specdyn.pythia import Hub, HubError, plan_pythia, pythia

REPO = "EleutherAI/pythia-stall"
BIN = "pytorch_model.bin"
STEPS = (0, 4, 8)
TIMEOUT = 2.0
LIMIT = 30.0  # seconds any one call may take here before the test fails as a hang


def _bin(step: int) -> bytes:
    """A tiny torch checkpoint whose weights differ per step (64 kB: several reads)."""
    g = torch.Generator().manual_seed(step)
    sd = {f"layer{i}.weight": torch.randn(48, 48, generator=g) for i in range(7)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _within(fn, limit: float = LIMIT):
    """(fn's result or the exception it raised, seconds taken); fails if it hangs."""
    out: dict = {}

    def run():
        start = time.monotonic()
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["value"] = exc
        out["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit} s: the call hangs"
    return out["value"], out["seconds"]


@pytest.fixture
def repo(hub):
    r = hub.add_repo(REPO)
    for s in STEPS:
        r.add_branch(f"step{s}", {"config.json": b"{}", BIN: _bin(s)})
    return r


@pytest.fixture
def env(monkeypatch, hub, tmp_path):
    monkeypatch.setenv("SPECDYN_HUB_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("SPECDYN_HUB_RETRIES", "1")
    monkeypatch.delenv("SPECDYN_HUB_MIN_RATE", raising=False)
    return hub_env(monkeypatch, hub, tmp_path / "hf")


def _one_line_naming(err, hub) -> str:
    assert isinstance(err, HubError), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert "\n" not in msg and hub.url in msg, msg
    return msg


# --------------------------------------------------------------------------- no answer


@pytest.mark.parametrize("where", ["/refs", "/revision/"])
@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_a_plan_against_a_stalled_hub_is_one_line_within_the_timeout(
    hub, repo, env, tmp_path, where, mode
):
    hub.misbehave(mode, where)
    err, seconds = _within(lambda: plan_pythia(REPO, home=tmp_path / "ws"))
    msg = _one_line_naming(err, hub)
    assert "SPECDYN_HUB_TIMEOUT" in msg and "HF_HUB_OFFLINE=1" in msg
    # one API request, not retried by the client: given up after one timeout window
    assert seconds < 3 * TIMEOUT, f"{seconds:.1f} s for a {TIMEOUT} s timeout"


def test_the_cli_dry_run_and_the_sweep_stop_on_a_hanging_hub(hub, repo, env, tmp_path, capsys):
    hub.misbehave("hang", "/refs")
    argv = ["pythia", "--model", REPO, "--home", str(tmp_path / "ws"), "--values-only"]
    rc, _ = _within(lambda: main([*argv, "--dry-run"]))
    assert rc != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specdyn: error:") and hub.url in lines[0]
    err, _ = _within(lambda: pythia(REPO, home=tmp_path / "ws", vectors=None))
    _one_line_naming(err, hub)
    assert not (tmp_path / "ws" / "pythia-stall.h5").exists()


# --------------------------------------------------------------------------- downloads


def _leftovers(env) -> list[str]:
    """Weight blobs and partial downloads left in the repo's cache folder."""
    blobs = env.cache_dir / ("models--" + REPO.replace("/", "--")) / "blobs"
    if not blobs.is_dir():
        return []
    sizes = {len(_bin(s)) for s in STEPS}
    return sorted(
        p.name for p in blobs.iterdir() if p.stat().st_size in sizes or "incomplete" in p.name
    )


@pytest.mark.parametrize("mode", ["drip", "hang"])
def test_a_stalled_download_is_retried_then_flagged_failed(hub, repo, env, tmp_path, mode):
    commit = repo.branches["step4"]
    # the weight file's GET drips (its HEAD answers), or its HEAD never answers
    method = "GET" if mode == "drip" else "HEAD"
    hub.misbehave(mode, f"/resolve/{commit}/{BIN}", method=method)
    result, seconds = _within(lambda: pythia(REPO, home=tmp_path / "ws", vectors=None), 60)
    assert not isinstance(result, BaseException), f"{type(result).__name__}: {result}"
    a = result.analysis
    assert a.steps_failed == [4]
    assert a.steps_computed == [0, 8]
    failed = [n.message for n in a.notes if n.kind == "failed"]
    assert len(failed) == 1 and "step 4" in failed[0] and hub.url in failed[0]
    tries = hub.file_requests(REPO, BIN, method)
    assert len([r for r in tries if commit in r.path]) == 2  # one try and one retry
    assert seconds < 45
    with open_run(a.store_path) as run:
        assert run.steps.tolist() == [0, 8]
        assert run.step_flags[4].startswith("failed: ")
    assert _leftovers(env) == []  # the stalled part is deleted, as the others


def test_a_slow_but_steady_download_is_not_abandoned(hub, repo, env, tmp_path, monkeypatch):
    # 64 kB chunks 0.1 s apart: far above the minimum rate, though slower than at once
    hub.delay(0.1)
    result, _ = _within(lambda: pythia(REPO, home=tmp_path / "ws", vectors=None))
    assert not isinstance(result, BaseException), f"{type(result).__name__}: {result}"
    assert result.analysis.steps_computed == list(STEPS)


# --------------------------------------------------------------------------- not JSON


@pytest.mark.parametrize("where", ["/refs", "/revision/"])
@pytest.mark.parametrize("mode", ["garbage", "html"])
def test_an_answer_that_is_not_json_is_one_line(hub, repo, env, tmp_path, mode, where):
    hub.misbehave(mode, where)
    err, _ = _within(lambda: plan_pythia(REPO, home=tmp_path / "ws"))
    msg = _one_line_naming(err, hub)
    assert "not JSON" in msg and "HF_ENDPOINT" in msg


def test_json_of_the_wrong_shape_is_one_line(hub, repo, env, tmp_path, monkeypatch):
    # a JSON answer the client cannot read: refs whose "branches" is a number
    hub.tamper_ref(REPO, "step9", "x")
    import _fake_hub

    real = _fake_hub._Handler._send_json

    def shaped(self, obj, *, head):
        if isinstance(obj, dict) and "branches" in obj:
            obj = {**obj, "branches": 5}
        return real(self, obj, head=head)

    monkeypatch.setattr(_fake_hub._Handler, "_send_json", shaped)
    err, _ = _within(lambda: plan_pythia(REPO, home=tmp_path / "ws"))
    assert "JSON the hub client cannot read" in _one_line_naming(err, hub)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "name, value",
    [("SPECDYN_HUB_TIMEOUT", "0"), ("SPECDYN_HUB_TIMEOUT", "soon"), ("SPECDYN_HUB_RETRIES", "1.5")],
)
def test_a_bad_limit_is_one_line_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(HubError) as err:
        Hub(REPO)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_the_defaults_are_documented():
    hub = Hub(REPO, offline=True)
    text = (Path(__file__).parents[2] / "docs" / "pythia.md").read_text()
    assert f"default {hub.limits.timeout:g} s" in text
    assert f"default {hub.limits.retries}" in text
    assert f"default {hub.limits.min_rate:g}" in text
