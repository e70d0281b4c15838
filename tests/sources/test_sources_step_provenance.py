"""Step provenance: Accelerate's automatic checkpoint_N names are save indices, the true
step is in the optimizer/scheduler state beside the weights; the state wins over a name
that disagrees, with one note; `info` shows where the steps came from (issue 24 item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from _ckpt_factory import write_hf_folder, write_torch

import specdyn
from specdyn.cli import main
from specdyn.sources import discover

_STEPS_PER_SAVE, _SAVES = 25, 6
_TRUE_STEPS = [_STEPS_PER_SAVE * (i + 1) for i in range(_SAVES)]


def _accelerate_run(project: Path, optimizer: str) -> Path:
    """Train nn.Linear(8, 6) with Accelerate's own loop, save_state() every 25 steps."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    torch.manual_seed(0)
    acc = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(
            project_dir=str(project), automatic_checkpoint_naming=True
        ),
    )
    model = torch.nn.Linear(8, 6)
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD
    opt = opt_cls(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    for _ in range(_SAVES):
        for _ in range(_STEPS_PER_SAVE):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
        acc.save_state()
    return project / "checkpoints"


@pytest.fixture(scope="module")
def accelerate_runs(tmp_path_factory):
    """(AdamW run, SGD run): checkpoints/checkpoint_0 … checkpoint_5 of each."""
    base = tmp_path_factory.mktemp("accelerate")
    return _accelerate_run(base / "adamw", "adamw"), _accelerate_run(base / "sgd", "sgd")


def test_accelerate_automatic_names_are_indices_and_the_optimizer_gives_the_step(
    accelerate_runs, tmp_path
):
    checkpoints, _ = accelerate_runs
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"checkpoint_{i}" for i in range(6)]
    found = discover(checkpoints)
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == _TRUE_STEPS
    assert {c.step_origin for c in run.checkpoints} == {"optimizer.bin state step"}
    (note,) = [n for n in found.notes if n.kind == "step-mismatch"]
    assert note.message.startswith("6 checkpoints of checkpoints:")
    assert "checkpoint_0: checkpoint_0 is Accelerate's automatic save index 0" in note.message
    assert "optimizer.bin state step says 25" in note.message
    assert not [n for n in found.notes if n.kind == "save-number"]

    home = tmp_path / "ws"
    result = specdyn.analyze(checkpoints, home=home, name="acc", vectors=None)
    assert result.runs[0].steps_computed == _TRUE_STEPS
    with specdyn.open_run("acc", home=home) as store:
        assert list(store.steps) == _TRUE_STEPS
        assert [s["origin"] for s in store.step_sources] == ["optimizer.bin state step"] * 6
        assert store.info()["step_origins"] == {"optimizer.bin state step": 6}
        (name,) = [m for m in store.matrices if m.endswith("weight")]
        sigma = store.sigma(name)
    for i in range(_SAVES):
        weights = safetensors.torch.load_file(
            str(checkpoints / f"checkpoint_{i}" / "model.safetensors")
        )
        expected = np.linalg.svd(weights["weight"].double().numpy(), compute_uv=False)
        np.testing.assert_allclose(
            sigma[i][: expected.size], expected, rtol=1e-12, atol=1e-12 * expected[0]
        )


def test_info_shows_where_the_steps_came_from(accelerate_runs, tmp_path, capsys):
    checkpoints, _ = accelerate_runs
    home = str(tmp_path / "ws")
    assert (
        main(
            [
                "analyze",
                str(checkpoints),
                "--home",
                home,
                "--name",
                "acc",
                "--values-only",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", "acc", "--home", home, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_origins"] == {"optimizer.bin state step": 6}
    assert main(["info", "acc", "--home", home]) == 0
    assert "6 from optimizer.bin state step" in capsys.readouterr().out


def test_without_an_optimizer_step_the_scheduler_gives_it(accelerate_runs):
    _, sgd = accelerate_runs  # plain SGD keeps no per-parameter step
    (run,) = discover(sgd).runs
    assert [c.step for c in run.checkpoints] == _TRUE_STEPS
    assert {c.step_origin for c in run.checkpoints} == {"scheduler.bin last_epoch"}


def test_an_unreadable_optimizer_state_is_noted_and_the_name_used(accelerate_runs, tmp_path):
    _, sgd = accelerate_runs
    copy = tmp_path / "checkpoints"
    shutil.copytree(sgd, copy)
    for folder in copy.iterdir():
        (folder / "scheduler.bin").write_bytes(b"not a torch file")
    found = discover(copy)
    assert [c.step for c in found.runs[0].checkpoints] == list(range(6))
    (unreadable,) = [n for n in found.notes if n.kind == "step-state-unreadable"]
    assert unreadable.message.startswith("6 checkpoints of checkpoints:")
    assert "scheduler.bin: not readable" in unreadable.message
    # the steps then count saves, and one note says so
    (saves,) = [n for n in found.notes if n.kind == "save-number"]
    assert "count save_state calls" in saves.message


class _Hostile:
    """Unpickling this runs a shell command (with torch.load's full unpickler)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_optimizer_state_is_not_run_and_the_scheduler_gives_the_step(
    accelerate_runs, tmp_path
):
    checkpoints, _ = accelerate_runs
    copy = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, copy)
    marker = tmp_path / "ran"
    for folder in copy.iterdir():
        torch.save({"state": {0: {"step": _Hostile(marker)}}}, folder / "optimizer.bin")
    found = discover(copy)
    assert not marker.exists()
    # StepLR was stepped with the optimizer: last_epoch is the step
    assert [c.step for c in found.runs[0].checkpoints] == _TRUE_STEPS
    assert {c.step_origin for c in found.runs[0].checkpoints} == {"scheduler.bin last_epoch"}
    (unreadable,) = [n for n in found.notes if n.kind == "step-state-unreadable"]
    assert unreadable.message.startswith("6 checkpoints of checkpoints:")
    assert "optimizer.bin: not readable" in unreadable.message
    assert "posix.system" in unreadable.message or "os.system" in unreadable.message
    assert unreadable.message.endswith("the step comes from scheduler.bin last_epoch)")


def _linear(seed: int) -> dict[str, torch.Tensor]:
    """A one-matrix state dict."""
    return {"fc.weight": torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))}


def test_trainer_state_wins_over_a_checkpoint_name_and_one_note_says_so(tmp_path):
    out = tmp_path / "out"
    for named, true in ((100, 110), (200, 220), (300, 330)):
        write_hf_folder(
            out / f"checkpoint-{named}", _linear(named), trainer_state={"global_step": true}
        )
    found = discover(out)
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == [110, 220, 330]
    assert {c.step_origin for c in run.checkpoints} == {"trainer_state.json"}
    (note,) = [n for n in found.notes if n.kind == "step-mismatch"]
    assert note.message.startswith("3 checkpoints of out:")
    assert "checkpoint-100: its name says step 100 but trainer_state.json says 110" in note.message


def test_lightning_global_step_wins_over_its_name(tmp_path):
    for named, true in ((20, 21), (40, 42)):
        write_torch(
            tmp_path / f"epoch=0-step={named}.ckpt",
            _linear(named),
            nest="state_dict",
            extra={"global_step": true, "epoch": 0},
        )
    found = discover(tmp_path)
    assert [c.step for c in found.runs[0].checkpoints] == [21, 42]
    (note,) = [n for n in found.notes if n.kind == "step-mismatch"]
    assert note.message.startswith("2 checkpoints of ") and "its metadata says 21" in note.message


def test_names_that_agree_with_the_state_draw_no_note(tmp_path):
    out = tmp_path / "out"
    for step in (10, 20):
        write_hf_folder(
            out / f"checkpoint-{step}", _linear(step), trainer_state={"global_step": step}
        )
    found = discover(out)
    assert [c.step for c in found.runs[0].checkpoints] == [10, 20]
    assert not [n for n in found.notes if n.kind == "step-mismatch"]


def test_a_store_made_on_the_old_step_axis_is_refused_not_mixed(
    accelerate_runs, tmp_path, monkeypatch
):
    """A store an earlier specdyn made of Accelerate's save indices (steps 0…5) must not
    gain the true steps 25…150 beside them: a re-run is refused, naming a checkpoint."""
    from specdyn.errors import StoreMismatchError
    from specdyn.sources import _checkpoint
    from specdyn.sources._trainstate import StateStep

    run, _ = accelerate_runs
    with monkeypatch.context() as patch:  # as the name-only rule read them
        patch.setattr(_checkpoint, "state_step", lambda folder, scheduler: StateStep(None))
        old = specdyn.analyze(run, home=tmp_path, vectors=None).runs[0].store_path
    with specdyn.open_run(old) as stored:
        assert stored.steps.tolist() == [0, 1, 2, 3, 4, 5]
    before = Path(old).read_bytes()
    with pytest.raises(StoreMismatchError) as err:
        specdyn.analyze(run, home=tmp_path, vectors=None)
    message = str(err.value)
    assert "checkpoint_0 at step 0, which these checkpoints put at 25 and 5 more" in message
    assert "overwrite" in message and "\n" not in message
    assert Path(old).read_bytes() == before  # the store is untouched
    again = specdyn.analyze(run, home=tmp_path, vectors=None, overwrite=True).runs[0]
    with specdyn.open_run(again.store_path) as stored:
        assert stored.steps.tolist() == [25, 50, 75, 100, 125, 150]
