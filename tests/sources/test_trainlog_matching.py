"""Training metrics matched to the checkpoints: Lightning's one-step-behind logging, and the
logs of a run found from its ``checkpoints/`` folder (issue 24, item 6).

``lightning`` is not installed in the test environment, so these runs are built as
Lightning writes them, from its source (lightning 2.x):

- ``ModelCheckpoint`` saves ``epoch=E-step=S.ckpt`` with S = ``trainer.global_step``, a
  ``torch.save`` dict holding ``epoch``, ``global_step`` and ``state_dict``, during the
  validation that follows the S-th optimizer step;
- the logger connector logs at ``fit_loop.epoch_loop._batches_that_stepped``, which
  ``_TrainingEpochLoop.on_advance_end`` increments only after that validation, so rows
  logged by a training step and by the validation after it carry ``step`` = S − 1, and
  rows logged at the end of the epoch (after the increment) carry S; every row gets an
  ``epoch`` column (``scalar_metrics.setdefault("epoch", current_epoch)``);
- ``CSVLogger`` writes ``version_N/metrics.csv`` (one row per ``log_metrics`` call, the
  cells of other metrics blank) and ``version_N/hparams.yaml``; the checkpoints go to
  ``version_N/checkpoints/``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from specdyn.sources import discover, read_training_log

BATCHES = 20  # per epoch; log_every_n_steps=10, validation and a checkpoint every epoch


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(6, 4, generator=g),
        "fc2.weight": torch.randn(3, 6, generator=g),
    }


def _rows(epochs: int = 2) -> list[dict]:
    """The rows Lightning logs, in order: train_loss at steps 9, 19, ...; val_loss and
    the epoch-end train_loss_epoch one step apart around each checkpoint."""
    rows = []
    for epoch in range(epochs):
        for batch in range(BATCHES):
            logged = epoch * BATCHES + batch  # _batches_that_stepped before its increment
            if (logged + 1) % 10 == 0:
                rows.append({"train_loss": 1.0 / (logged + 1), "epoch": epoch, "step": logged})
        end = (epoch + 1) * BATCHES
        rows.append({"val_loss": 2.0 / end, "epoch": epoch, "step": end - 1})
        rows.append({"train_loss_epoch": 3.0 / end, "epoch": epoch, "step": end})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    """metrics.csv as CSVLogger writes it: a header of every key (sorted, as lightning
    2.1+ keeps ``metrics_keys``), blank cells for the metrics a row lacks."""
    keys = sorted({k for row in rows for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _lightning_run(version: Path, epochs: int = 2, *, hparams: bool = True) -> Path:
    """A lightning_logs/version_N folder: checkpoints/, metrics.csv and hparams.yaml."""
    ckpts = version / "checkpoints"
    ckpts.mkdir(parents=True)
    for epoch in range(epochs):
        step = (epoch + 1) * BATCHES
        entry = {"epoch": epoch, "global_step": step, "state_dict": _weights(step),
                 "pytorch-lightning_version": "2.4.0"}  # fmt: skip
        torch.save(entry, ckpts / f"epoch={epoch}-step={step}.ckpt")
    _write_csv(version / "metrics.csv", _rows(epochs))
    if hparams:
        (version / "hparams.yaml").write_text("lr: 0.01\nbatch_size: 8\n")
    return version


def _series(log, name: str) -> dict[int, float]:
    have = ~np.isnan(log.values[name])
    return dict(zip(log.steps[have].tolist(), log.values[name][have].tolist(), strict=True))


def test_lightning_rows_one_step_behind_are_matched_to_the_checkpoint_step(tmp_path):
    version = _lightning_run(tmp_path / "lightning_logs" / "version_0")
    (run,) = discover(version).runs
    assert [c.step for c in run.checkpoints] == [20, 40]
    log, notes = read_training_log(run)
    # validation logged at 19 and 39 belongs to the checkpoints at 20 and 40
    assert _series(log, "val_loss") == {20: 2.0 / 20, 40: 2.0 / 40}
    # the training loss of the batch that ends at a checkpoint moves with it; the others
    # (9, 29) stay where they were logged
    assert _series(log, "train_loss") == {9: 1 / 10, 20: 1 / 20, 29: 1 / 30, 40: 1 / 40}
    # epoch-end metrics are already logged at the checkpoint step
    assert _series(log, "train_loss_epoch") == {20: 3.0 / 20, 40: 3.0 / 40}
    (note,) = [n for n in notes if "one step behind" in n.message]
    assert "2 step(s)" in note.message and "19 → 20" in note.message and "39 → 40" in note.message


def test_checkpoints_folder_finds_the_logs_one_up_and_names_the_run_after_it(tmp_path):
    version = _lightning_run(tmp_path / "lightning_logs" / "version_3")
    (run,) = discover(version / "checkpoints").runs
    assert run.name == "version_3"
    log, _ = read_training_log(run)
    assert log is not None
    assert str(version / "metrics.csv") in log.sources["val_loss"]
    assert _series(log, "val_loss") == {20: 2.0 / 20, 40: 2.0 / 40}


def test_a_checkpoints_folder_without_logs_above_keeps_its_name(tmp_path):
    ckpts = tmp_path / "exp" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (20, 40):
        torch.save({"global_step": step, "state_dict": _weights(step)}, ckpts / f"step={step}.ckpt")
    (run,) = discover(ckpts).runs
    assert run.name == "checkpoints"
    assert read_training_log(run)[0] is None


def test_a_metrics_csv_not_written_by_lightning_is_not_shifted(tmp_path):
    # same rows, but no hparams.yaml and not in a version_N folder: the steps are taken
    # as logged
    folder = _lightning_run(tmp_path / "my_run", hparams=False)
    (run,) = discover(folder).runs
    log, notes = read_training_log(run)
    assert _series(log, "val_loss") == {19: 2.0 / 20, 39: 2.0 / 40}
    assert not [n for n in notes if "one step behind" in n.message]


def test_a_lightning_folder_whose_csv_has_no_epoch_column_is_not_shifted(tmp_path):
    version = _lightning_run(tmp_path / "lightning_logs" / "version_0")
    rows = [{k: v for k, v in row.items() if k != "epoch"} for row in _rows()]
    _write_csv(version / "metrics.csv", rows)
    (run,) = discover(version).runs
    log, _ = read_training_log(run)
    assert _series(log, "val_loss") == {19: 2.0 / 20, 39: 2.0 / 40}
