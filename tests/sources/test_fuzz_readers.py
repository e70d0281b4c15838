"""Fuzzing the checkpoint readers (issue 15, item 4): mutated torch zips, pickles,
safetensors headers, index / config / trainer-state JSON and metrics logs end in a clean
result or a specdyn error, never another exception, a hang or a crash.

The harness is tests/sources/fuzz_harness.py (a seeded mutation loop run in a child
process). A brief run is part of the default suite; the long one is marked slow:

    SPECDYN_FUZZ_SECONDS=1800 SPECDYN_FUZZ_SEED=7 .venv/bin/python -m pytest -m slow \\
        tests/sources/test_fuzz_readers.py

(its counts go to SPECDYN_FUZZ_PROGRESS, default fuzz-progress.json in the test's tmp dir,
every few seconds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import fuzz_harness as fh
import pytest
import torch

import specdyn
from specdyn.errors import CheckpointError, SpecdynError
from specdyn.sources import open_checkpoint

BRIEF_SEED = 20261203
BRIEF_CASES = 450  # ~11 s on an idle 2-core machine, ~20 s under load


def _report(report: fh.LoopReport) -> str:
    lines = [f"{report.cases} cases in {report.seconds:.1f} s: {dict(report.counts)}"]
    return "\n".join(lines + report.failures[:20])


def test_brief_fuzz_run_finds_nothing(tmp_path):
    report = fh.run_loop(BRIEF_SEED, work=tmp_path, cases=BRIEF_CASES)
    assert not report.failures, _report(report)
    assert report.cases == BRIEF_CASES, _report(report)
    # the mutations reach both sides: inputs still read cleanly and inputs refused
    assert report.counts["clean"] > BRIEF_CASES // 10, _report(report)
    assert report.counts["SpecdynError:CheckpointError"] > BRIEF_CASES // 10, _report(report)
    assert {key.split()[0] for key in report.by_kind} == set(fh.KINDS), _report(report)


# -------------------------------------------------------- the harness can fail


def test_outcome_classifies_each_result():
    assert fh.outcome(lambda: None) == ("clean", "")
    kind, message = fh.outcome(lambda: (_ for _ in ()).throw(CheckpointError("f.pt: corrupt")))
    assert (kind, message) == ("SpecdynError:CheckpointError", "f.pt: corrupt")
    kind, detail = fh.outcome(lambda: {}["missing"])
    assert kind == "failure" and detail.startswith("KeyError") and "test_fuzz_readers.py" in detail
    kind, detail = fh.outcome(lambda: (_ for _ in ()).throw(CheckpointError("a\nb")))
    assert kind == "failure" and "not one line" in detail


def test_outcome_reports_a_hang_even_when_the_code_swallows_timeouts():
    def swallows() -> None:
        try:
            time.sleep(5)
        except Exception:  # what a reader's `except OSError` would do to a TimeoutError
            pass

    start = time.monotonic()
    kind, detail = fh.outcome(swallows, budget_s=0.3)
    assert kind == "failure" and "timeout" in detail
    assert time.monotonic() - start < 3


def test_a_crash_is_reported_with_its_case_and_the_loop_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDYN_FUZZ_CRASH_AT", "3")  # the child segfaults at case 3
    report = fh.run_loop(BRIEF_SEED, work=tmp_path, cases=6)
    assert report.cases == 6
    assert report.counts["failure"] == 1
    (failure,) = report.failures
    case = fh.make_case(BRIEF_SEED, 3)
    assert failure.startswith(case.describe()) and "exit -11" in failure
    assert f"one --seed {BRIEF_SEED} --index 3" in failure


def test_a_case_is_the_same_input_every_time():
    a, b = fh.make_case(5, 17), fh.make_case(5, 17)
    assert a == b and a.data != fh.seed(a.kind).data
    assert len({fh.make_case(5, i).kind for i in range(200)}) == len(fh.KINDS)


# ----------------------------------------------------------------- regressions

# Inputs the fuzzer found that ended in another exception before specdyn/sources was
# fixed: (seed, index, kind, mutator, entry, part of the mutation). These pin what the
# harness draws, so a change to it that moves a case fails here instead of testing nothing.
REGRESSIONS = [
    # a CSV field over csv's 131072-character limit: _csv.Error from read_training_log
    (5, 73, "metrics-csv", "m_csv", "e_discover", "cell7,4='\"yyyyyyyy"),
    (1, 881, "metrics-csv", "m_csv", "e_discover", "cell8,0='\"yyyyyyyy"),
    # an index's shard name that is a symlink loop: RuntimeError from Path.resolve
    (8, 3627, "bin-index", "m_json_tree", "e_analyze", "'fc2.weight']='loop.bin'"),
    # a shard name of NULs, quoted raw in the refusal: h5py could not store the problem
    (7, 3947, "st-index", "m_json_text", "e_analyze", "json-text@186='\"\\\\u0000"),
    # a plain pickle whose first object is a numpy array: compared with the legacy magic
    # number element-wise, "truth value of an array is ambiguous" (ValueError)
    (4242, 1800, "pickle-p2", "m_pickle", "e_discover", "repeat#43:BINPUT"),
    (4242, 11608, "pickle-p2", "m_duplicate", "e_discover", "duplicate@375-16to346"),
    # a zip local-header offset past a C long: OverflowError from os.preadv
    (4243, 61468, "torch-nested", "m_interesting+m_flip", "e_discover", "interesting@2611="),
    # a 300-character shard name: OSError (ENAMETOOLONG) from Path.is_symlink
    (4243, 61661, "st-index", "m_json_tree", "e_analyze", "'fc1.bias']='aaaaaaaa"),
    # a tensor named '../../etc/passwd': the store's matrix-name check raised ValueError
    (4243, 37316, "torch-zip", "m_zip_pickle", "e_analyze", "'../../etc/passwd'"),
]


@pytest.mark.parametrize(("seed", "index", "kind", "mutator", "entry", "mutation"), REGRESSIONS)
def test_fuzz_finding_stays_fixed(tmp_path, seed, index, kind, mutator, entry, mutation):
    case = fh.make_case(seed, index)
    assert (case.kind, case.mutator, case.entry) == (kind, mutator, entry), case.describe()
    assert mutation in case.mutation, case.describe()
    outcome, detail = fh.run_case(case, tmp_path / "case")
    assert outcome != "failure", f"{case.describe()}: {detail}"


def _two_steps(run: Path, top: dict) -> Path:
    run.mkdir(parents=True)
    for step in (100, 200):
        torch.save({**top, "global_step": step}, run / f"step_{step}.pt")
    return run


@pytest.mark.parametrize("key", ["a\x00b.weight", "\ud800.weight"])
def test_a_tensor_name_no_store_can_keep_is_a_one_line_refusal(tmp_path, key):
    # found beside 7:3947: NUL / surrogate tensor names reached h5py (ValueError,
    # UnicodeEncodeError from specdyn.analyze)
    run = _two_steps(tmp_path / "run", {key: torch.ones(4, 3), "ok.weight": torch.ones(3, 3)})
    with pytest.raises(CheckpointError, match="holds a NUL or an unpaired surrogate") as err:
        open_checkpoint(run / "step_100.pt").open()
    assert "\n" not in str(err.value) and "\x00" not in str(err.value)
    with pytest.raises(SpecdynError):  # every checkpoint refused: nothing to analyse
        specdyn.analyze(run, home=tmp_path / "home", vectors=None)


@pytest.mark.parametrize("where", ["checkpoint", "metrics.csv", "metrics.jsonl"])
def test_a_metric_name_with_a_nul_is_left_out_with_a_note(tmp_path, where):
    bad = "val\x00loss"
    top = {"state_dict": {"fc.weight": torch.ones(4, 3)}}
    run = _two_steps(tmp_path / "run", {**top, bad: 0.5} if where == "checkpoint" else top)
    if where == "metrics.csv":
        (run / where).write_text(f"step,loss,{bad}\n100,1.0,2.0\n200,0.5,1.0\n")
    elif where == "metrics.jsonl":
        (run / where).write_text(json.dumps({"step": 100, "loss": 1.0, bad: 2.0}) + "\n")
    result = specdyn.analyze(run, home=tmp_path / "home", vectors=None)
    (analysis,) = result.runs
    left_out = [n.message for n in analysis.notes if "val\\x00loss" in n.message]
    assert left_out and "left out" in left_out[0] and "\x00" not in left_out[0]
    with specdyn.open_run(analysis.store_path) as stored:
        assert "loss" in stored.training_names or where == "checkpoint"
        assert not any("\x00" in name for name in stored.training_names)


# -------------------------------------------------------------------- long run


@pytest.mark.slow
def test_long_fuzz_run_finds_nothing(tmp_path, request):
    # deselected by default (addopts: -m 'not slow'); `pytest -m slow` runs it
    seconds = float(os.environ.get("SPECDYN_FUZZ_SECONDS", "1800"))
    seed = int(os.environ.get("SPECDYN_FUZZ_SEED", str(int(time.time()))))
    progress = Path(os.environ.get("SPECDYN_FUZZ_PROGRESS", tmp_path / "fuzz-progress.json"))
    report = fh.run_loop(seed, work=tmp_path / "work", seconds=seconds, progress=progress)
    summary = {
        "seed": seed,
        "cases": report.cases,
        "seconds": round(report.seconds, 1),
        "outcomes": dict(report.counts.most_common()),
        "by_kind": dict(sorted(report.by_kind.items())),
        "failures": report.failures,
    }
    progress.with_name(progress.stem + "-summary.json").write_text(json.dumps(summary, indent=1))
    assert not report.failures, f"seed {seed}: " + _report(report)
