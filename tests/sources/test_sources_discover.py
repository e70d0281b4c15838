"""Discovery: steps from metadata and names, ordering, duplicates, runs, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from _ckpt_factory import (
    write_hf_folder,
    write_lightning_like,
    write_malicious,
    write_plain_pickle,
    write_safetensors,
    write_sharded,
    write_torch,
    write_trainer_checkpoint,
)

import specdyn.sources._formats as formats
from specdyn.errors import CheckpointError, DiscoveryError, UnsafePickleError
from specdyn.sources import Discovery, RunSource, discover, open_checkpoint

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _sd(seed: int) -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)),
        "a.bias": torch.full((4,), float(seed)),
    }


def _steps(run: RunSource) -> list[int]:
    return [c.step for c in run.checkpoints]


def _kinds(found: Discovery) -> list[str]:
    return [n.kind for n in found.notes]


@pytest.mark.parametrize(
    "name, step, epoch",
    [
        ("step_1200.pt", 1200, None),
        ("step-1200.pt", 1200, None),
        ("step1200.pth", 1200, None),
        ("STEP_77.bin", 77, None),
        ("epoch=3-step=500.ckpt", 500, 3),
        ("ckpt_000100.pt", 100, None),
        ("iter_0000500.pth", 500, None),
        ("model_500.pt", 500, None),
        ("1200.pt", 1200, None),
        ("global_step300.pt", 300, None),
        ("epoch_7.pt", None, 7),
        ("epoch-7.pt", None, 7),
        ("epoch7.ckpt", None, 7),
        ("epoch=4.ckpt", None, 4),
        ("epoch=2-val_loss=0.25.ckpt", None, 2),
        ("step_000000.safetensors", 0, None),
        ("last.ckpt", None, None),
        ("last-v1.ckpt", None, None),
        ("best.pt", None, None),
        ("final_model.pt", None, None),
    ],
)
def test_step_and_epoch_from_names(name, step, epoch, tmp_path):
    sd = _sd(0)
    path = (
        write_safetensors(tmp_path / name, sd)
        if name.endswith(".safetensors")
        else write_torch(tmp_path / name, sd)
    )
    ckpt = open_checkpoint(path)
    assert (ckpt.step, ckpt.epoch) == (step, epoch)
    assert ckpt.step_origin == ("name" if step is not None else "")


def test_folder_names(tmp_path):
    assert open_checkpoint(write_hf_folder(tmp_path / "checkpoint-500", _sd(0))).step == 500
    assert open_checkpoint(write_hf_folder(tmp_path / "step1000", _sd(0))).step == 1000
    # a generic file name inside a step folder takes the folder's step
    path = write_torch(tmp_path / "step_300" / "model.pt", _sd(0))
    assert (open_checkpoint(path).step, open_checkpoint(path).step_origin) == (300, "name")
    # …but not from a bare number in the folder name
    assert open_checkpoint(write_torch(tmp_path / "run_5" / "model.pt", _sd(0))).step is None


def test_numeric_order_and_mixed_schemes(tmp_path):
    for step in (100, 2, 10, 1000):
        write_torch(tmp_path / f"step_{step}.pt", _sd(step))
    found = discover(tmp_path)
    (run,) = found.runs
    assert run.name == tmp_path.name and run.root == tmp_path and run.step_unit == "step"
    assert _steps(run) == [2, 10, 100, 1000]
    assert [c.path.name for c in run.checkpoints] == [
        "step_2.pt",
        "step_10.pt",
        "step_100.pt",
        "step_1000.pt",
    ]


def test_metadata_wins_over_name_and_is_noted(tmp_path):
    write_torch(tmp_path / "step_5.pt", _sd(1), nest="model", extra={"global_step": 7})
    write_torch(tmp_path / "step_9.pt", _sd(2))
    found = discover(tmp_path)
    assert _steps(found.runs[0]) == [7, 9]
    assert found.runs[0].checkpoints[0].step_origin == "metadata:global_step"
    (note,) = [n for n in found.notes if n.kind == "step-mismatch"]
    assert "step_5.pt" in note.message and "7" in note.message


def test_epoch_unit_when_only_epochs_are_known(tmp_path):
    for e in (10, 1, 2):
        write_torch(tmp_path / f"epoch_{e}.pt", _sd(e))
    (run,) = discover(tmp_path).runs
    assert run.step_unit == "epoch" and _steps(run) == [1, 2, 10]
    assert all(c.step_origin == "name:epoch" and c.epoch == c.step for c in run.checkpoints)


def test_lightning_last_ckpt_is_a_duplicate_despite_other_callback_state(tmp_path):
    sd = _sd(3)
    for step in (10, 20):
        write_lightning_like(
            tmp_path / f"epoch=0-step={step}.ckpt",
            _sd(step) if step == 10 else sd,
            global_step=step,
            epoch=0,
            callback_score=0.5,
        )
    write_lightning_like(tmp_path / "last.ckpt", sd, global_step=20, epoch=0, callback_score=0.1)
    assert (tmp_path / "last.ckpt").read_bytes() != (tmp_path / "epoch=0-step=20.ckpt").read_bytes()
    found = discover(tmp_path)
    (run,) = found.runs
    assert [c.path.name for c in run.checkpoints] == [
        "epoch=0-step=10.ckpt",
        "epoch=0-step=20.ckpt",
    ]
    (dup,) = [n for n in found.notes if n.kind == "duplicate"]
    assert "last.ckpt" in dup.message and "epoch=0-step=20.ckpt" in dup.message


def test_last_ckpt_without_metadata_is_matched_by_weights(tmp_path):
    write_torch(tmp_path / "step_1.pt", _sd(1))
    write_torch(tmp_path / "step_2.pt", _sd(2))
    write_safetensors(tmp_path / "last.safetensors", _sd(2))  # another format, same weights
    write_torch(tmp_path / "best.pt", _sd(1))
    write_torch(tmp_path / "final.pt", _sd(99))  # matches nothing
    found = discover(tmp_path)
    assert _steps(found.runs[0]) == [1, 2]
    dups = {Path(n.path).name: n.message for n in found.notes if n.kind == "duplicate"}
    assert set(dups) == {"last.safetensors", "best.pt"}
    assert "step 2" in dups["last.safetensors"] and "step 1" in dups["best.pt"]
    (skipped,) = [n for n in found.notes if n.kind == "no-step"]
    assert "final.pt" in skipped.message and "skipped" in skipped.message


def test_conflicting_weights_for_one_step_is_an_error(tmp_path):
    write_torch(tmp_path / "step_100.pt", _sd(1))
    write_torch(tmp_path / "ckpt_100.pt", _sd(2))
    with pytest.raises(DiscoveryError) as err:
        discover(tmp_path)
    msg = str(err.value)
    assert "step 100" in msg and "step_100.pt" in msg and "ckpt_100.pt" in msg and "\n" not in msg


def test_identical_copies_for_one_step_are_kept_once(tmp_path):
    write_torch(tmp_path / "step_100.pt", _sd(1))
    write_torch(tmp_path / "last.pt", _sd(1), nest="state_dict", extra={"step": 100})
    found = discover(tmp_path)
    assert [c.path.name for c in found.runs[0].checkpoints] == ["step_100.pt"]
    assert _kinds(found) == ["duplicate"]


def test_trainer_output_folder_is_one_run(tmp_path):
    out = tmp_path / "out"
    for step in (500, 1000, 1500):
        write_trainer_checkpoint(out, step, _sd(step), extras=True)
    write_hf_folder(out, _sd(1500), trainer_extras=True)  # the final save_model, no trainer_state
    found = discover(out)
    (run,) = found.runs
    assert run.name == "out" and _steps(run) == [500, 1000, 1500]
    assert all(c.files == (c.path / "model.safetensors",) for c in run.checkpoints)
    assert all(c.step_origin == "trainer_state.json" for c in run.checkpoints)
    # optimizer.pt, rng_state.pth, … are never read: one note for all of them
    assert sorted(_kinds(found)) == ["duplicate", "training-state"]
    assert [n.path for n in found.notes if n.kind == "duplicate"] == [str(out)]
    # same layout one level down: still one run, named after the folder given
    assert [r.name for r in discover(tmp_path).runs] == [tmp_path.name]


def test_sharded_checkpoints_are_one_checkpoint_each(tmp_path):
    for step in (0, 50):
        write_hf_folder(tmp_path / f"step_{step}", _sd(step), n_shards=2)
    write_sharded(tmp_path / "loose", _sd(100), "bin", n_shards=2, prefix="step_100")
    found = discover(tmp_path)
    (run,) = found.runs
    assert _steps(run) == [0, 50, 100] and found.notes == []
    assert [c.format for c in run.checkpoints] == ["safetensors-sharded"] * 2 + ["torch-sharded"]
    assert run.checkpoints[2].path.name == "step_100.bin.index.json"
    assert len(run.checkpoints[2].files) == 2


def test_several_runs_in_subfolders(tmp_path):
    for run in ("wd0", "wd1"):
        for step in (0, 10, 20):
            seed = 0 if step == 0 else step + (run == "wd1")  # shared initialisation
            write_torch(tmp_path / run / f"step_{step}.pt", _sd(seed))
    found = discover(tmp_path)
    assert [r.name for r in found.runs] == ["wd0", "wd1"]
    assert [r.root for r in found.runs] == [tmp_path / "wd0", tmp_path / "wd1"]
    assert all(_steps(r) == [0, 10, 20] for r in found.runs)
    (note,) = [n for n in found.notes if n.kind == "several-runs"]
    assert "wd0" in note.message and "wd1" in note.message


def test_runs_of_different_models_without_shared_steps(tmp_path):
    write_torch(tmp_path / "mlp" / "step_1.pt", _sd(1))
    write_torch(tmp_path / "mlp" / "step_2.pt", _sd(2))
    write_torch(tmp_path / "cnn" / "step_5.pt", {"conv.weight": torch.ones(2, 2, 3, 3)})
    found = discover(tmp_path)
    assert [(r.name, _steps(r)) for r in found.runs] == [("cnn", [5]), ("mlp", [1, 2])]


def test_nested_lightning_logs(tmp_path):
    logs = tmp_path / "lightning_logs"
    for step in (5, 10):
        write_lightning_like(
            logs / "version_0" / "checkpoints" / f"epoch=0-step={step}.ckpt",
            _sd(step),
            global_step=step,
            epoch=0,
        )
    found = discover(logs)
    assert [(r.name, _steps(r)) for r in found.runs] == [("lightning_logs", [5, 10])]
    assert found.runs[0].root == logs
    for step in (5, 10):  # a second training run
        write_lightning_like(
            logs / "version_1" / "checkpoints" / f"epoch=0-step={step}.ckpt",
            _sd(100 + step),
            global_step=step,
            epoch=0,
        )
    found = discover(logs)
    assert [r.name for r in found.runs] == ["version_0", "version_1"]


def test_copies_in_a_subfolder_are_not_a_second_run(tmp_path):
    for step in (1, 2, 3):
        write_torch(tmp_path / "ckpts" / f"step_{step}.pt", _sd(step))
    write_torch(tmp_path / "best" / "step_2.pt", _sd(2))
    found = discover(tmp_path)
    assert [(r.name, _steps(r)) for r in found.runs] == [(tmp_path.name, [1, 2, 3])]
    assert found.runs[0].checkpoints[1].path == tmp_path / "ckpts" / "step_2.pt"  # not best/
    assert _kinds(found) == ["duplicate"]


def test_symlink_loop_is_tolerated(tmp_path):
    write_torch(tmp_path / "a" / "step_1.pt", _sd(1))
    write_torch(tmp_path / "a" / "b" / "step_2.pt", _sd(2))
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "self").symlink_to(".")
    (run,) = discover(tmp_path).runs
    assert _steps(run) == [1, 2]


def test_single_file_and_single_unstepped_model(tmp_path):
    path = write_torch(tmp_path / "iter_00500.pth", _sd(1))
    found = discover(path)
    assert [(r.name, r.root, _steps(r)) for r in found.runs] == [("iter_00500", path, [500])]
    model = write_hf_folder(tmp_path / "pythia-70m", _sd(2))
    found = discover(model)
    (run,) = found.runs
    assert run.name == "pythia-70m" and _steps(run) == [0]
    assert run.checkpoints[0].step_origin == "default" and _kinds(found) == ["no-step"]


def test_missing_path():
    with pytest.raises(DiscoveryError, match="does not exist"):
        discover("/nonexistent/specdyn/run")
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint("/nonexistent/specdyn/run.pt")


def test_empty_folder_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DiscoveryError) as err:
        discover(tmp_path)
    for ext in (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".index.json"):
        assert ext in str(err.value)


def _make_unreadable(path: Path, monkeypatch) -> None:
    """chmod 000; where that does not stop this process (root), make the open fail as the
    OS would for everyone else."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        real_open = formats._open_binary

        def deny(p):
            if Path(p) == path:
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(p)

        monkeypatch.setattr(formats, "_open_binary", deny)


def _bad_files(tmp_path: Path, monkeypatch) -> list[tuple[str, Path]]:
    """One file per kind of bad input, with the Note kind each must produce."""
    unreadable = write_torch(tmp_path / "step_1.pt", _sd(1))
    _make_unreadable(unreadable, monkeypatch)
    zipped = write_torch(tmp_path / "step_2.pt", _sd(2))
    zipped.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    st = write_safetensors(tmp_path / "step_3.safetensors", _sd(3))
    st.write_bytes(st.read_bytes()[:-10])
    empty = tmp_path / "step_7.bin"
    empty.write_bytes(b"")
    return [
        ("unreadable", unreadable),
        ("corrupt", zipped),
        ("corrupt", st),
        ("corrupt", empty),
        ("not-a-checkpoint", write_plain_pickle(tmp_path / "step_4.pt", ["a", "b"])),
        ("not-a-checkpoint", write_torch(tmp_path / "step_5.pt", {}, extra={"lr": 0.1})),
        ("unsafe-pickle", write_malicious(tmp_path / "step_6.pt", os.system, ("true",))),
    ]


def test_bad_inputs_become_notes_and_raise_in_open_checkpoint(tmp_path, monkeypatch):
    bad = _bad_files(tmp_path, monkeypatch)
    write_torch(tmp_path / "step_0.pt", _sd(0))
    found = discover(tmp_path)
    assert _steps(found.runs[0]) == [0]
    by_path = {n.path: n for n in found.notes}
    assert len(by_path) == len(bad)
    for kind, path in bad:
        note = by_path[str(path)]
        assert note.kind == kind, (path, note)
        assert str(path) in note.message and "\n" not in note.message
        with pytest.raises(CheckpointError) as err:
            open_checkpoint(path)
        assert getattr(err.value, "kind", None) == kind
        assert str(err.value) == note.message
        assert isinstance(err.value, UnsafePickleError) == (kind == "unsafe-pickle")


def test_nothing_readable_is_an_error_listing_problems(tmp_path, monkeypatch):
    _bad_files(tmp_path, monkeypatch)
    with pytest.raises(DiscoveryError) as err:
        discover(tmp_path)
    assert "no readable checkpoint" in str(err.value) and "step_" in str(err.value)


def test_truncated_file_and_broken_link_notes(tmp_path):
    write_torch(tmp_path / "step_0.pt", _sd(0))
    (tmp_path / "step_9.pt").symlink_to(tmp_path / "gone.pt")
    found = discover(tmp_path)
    (note,) = found.notes
    assert note.kind == "unreadable" and "step_9.pt" in note.message


def test_trainer_extras_and_hidden_folders_are_ignored(tmp_path):
    folder = write_trainer_checkpoint(tmp_path, 10, _sd(1), extras=True)
    (folder / "optimizer.pt").write_bytes(b"garbage: never read")
    (folder / "training_args.bin").write_bytes(b"garbage: never read")
    write_torch(tmp_path / ".ipynb_checkpoints" / "step_10.pt", _sd(2))
    write_torch(folder / "global_step10" / "mp_rank_00_model_states.pt", _sd(3))
    found = discover(tmp_path)
    assert [c.path for c in found.runs[0].checkpoints] == [folder]
    (note,) = found.notes  # the Trainer's state files, never read, in one note
    assert note.kind == "training-state" and "optimizer.pt" in note.message


def test_other_weights_inside_a_model_folder_are_noted(tmp_path):
    folder = write_hf_folder(tmp_path / "checkpoint-10", _sd(1))
    write_torch(folder / "ema.pt", _sd(2))
    found = discover(tmp_path)
    (note,) = found.notes
    assert note.kind == "ignored" and "ema.pt" in note.message


def test_fixtures_match_their_manifest():
    data = json.loads((FIXTURES / "manifest.json").read_text())
    manifest = data["fixtures"]
    # the LMC experiment: one run per trunk and branch folder, named by its path
    lmc = data["experiments"]["lmc"]["runs"]
    lmc_steps = {"lmc-" + run.replace("/", "-"): steps for run, steps in lmc.items()}
    found = discover(FIXTURES)
    assert sorted(r.name for r in found.runs) == sorted([*manifest, *lmc_steps])
    assert "several-runs" in _kinds(found)
    for run in found.runs:
        if run.name in lmc_steps:
            assert _steps(run) == lmc_steps[run.name]
            continue
        entry = manifest[run.name]
        assert _steps(run) == entry["steps"]
        kept = {
            c.path.relative_to(run.root).as_posix() if c.path != run.root else "."
            for c in run.checkpoints
        }
        duplicates = entry.get("duplicates", {})
        assert kept == set(entry["files"]) - set(duplicates)
        for dup, original in duplicates.items():
            dup_path = run.root if dup == "." else run.root / dup
            (note,) = [n for n in found.notes if n.path == str(dup_path)]
            assert note.kind == "duplicate" and original in note.message


def test_fixture_folder_copy_with_a_conflict(tmp_path):
    run = tmp_path / "lstm"
    shutil.copytree(FIXTURES / "lstm", run)
    shutil.copy(FIXTURES / "lstm" / "iter_00010.pth", run / "step_20.pth")
    with pytest.raises(DiscoveryError, match="step 20"):
        discover(run)
