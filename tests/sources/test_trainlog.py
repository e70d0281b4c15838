"""Training metrics beside checkpoints: every source, bad lines and columns, the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import specdyn
from specdyn.cli import main
from specdyn.errors import SpecdynError, StoreError
from specdyn.sources import discover, read_metrics_file, read_training_log

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(12, 8, generator=g),
        "fc2.weight": torch.randn(4, 12, generator=g),
    }


def _run(folder: Path, steps=(0, 10, 20), extra=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        entry = {"model_state_dict": _weights(step), "step": step}
        entry.update((extra or {}).get(step, {}))
        torch.save(entry, folder / f"step_{step:04d}.pt")
    return folder


def _log(run_folder: Path, metrics_file=None):
    (source,) = discover(run_folder).runs
    return read_training_log(source, metrics_file)


def test_checkpoint_scalars_at_their_steps(tmp_path):
    extra = {s: {"loss": 1.0 / (s + 1), "val_acc": s / 100, "epoch": s // 10} for s in (0, 10, 20)}
    log, notes = _log(_run(tmp_path / "r", extra=extra))
    assert log.steps.tolist() == [0, 10, 20]
    assert log.names == ["loss", "val_acc"]  # step and epoch are counters, not metrics
    assert np.allclose(log.values["loss"], [1.0, 1 / 11, 1 / 21])
    assert log.sources == {"loss": "checkpoints", "val_acc": "checkpoints"}
    assert any(n.kind == "training" and "from checkpoints" in n.message for n in notes)


def test_fixture_sources(tmp_path):
    # torch dicts: mlp-wd holds train_loss/train_acc/val_acc measured at each checkpoint
    log, _ = _log(FIXTURES / "mlp-wd")
    ckpt = torch.load(FIXTURES / "mlp-wd" / "step_000500.pt", weights_only=True)
    col = log.steps.tolist().index(500)
    assert log.values["val_acc"][col] == ckpt["val_acc"]
    # Lightning CSVLogger: sparse rows every 5 steps, one behind the checkpoints: the last
    # row, logged at 639, is matched to epoch=19-step=640.ckpt
    log, _ = _log(FIXTURES / "cnn-lightning")
    rows = (FIXTURES / "cnn-lightning" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert int(last["step"]) == 639 and (FIXTURES / "cnn-lightning/epoch=19-step=640.ckpt").exists()
    assert log.steps[-1] == 640
    assert log.values["train_loss"][-1] == pytest.approx(float(last["train_loss"]))
    assert "metrics.csv" in log.sources["train_loss"]
    # HF Trainer: the last checkpoint's trainer_state.json log_history
    log, _ = _log(FIXTURES / "neox-trainer")
    state = json.loads((FIXTURES / "neox-trainer/checkpoint-1500/trainer_state.json").read_text())
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    steps, values = log.steps[~np.isnan(log.values["loss"])], log.values["loss"]
    assert steps.tolist() == sorted(losses)
    assert values[~np.isnan(values)].tolist() == [losses[s] for s in sorted(losses)]
    assert "checkpoint-1500/trainer_state.json" in log.sources["loss"]
    assert "global_step" not in log.names and "total_flos" not in log.names
    # no log at all: none
    assert _log(FIXTURES / "lstm")[0] is None


def test_csv_and_jsonl_logs_with_steps_between_checkpoints(tmp_path):
    run = _run(tmp_path / "r", extra={s: {"loss": 9.0} for s in (0, 10, 20)})
    (run / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps({"step": s, "loss": 1.0 / (s + 1), "val_acc": 0.5}) for s in range(0, 25, 5)
        )
    )
    given = tmp_path / "extra.csv"
    given.write_text("step,lr,val_acc\n0,0.1,0.25\n7,0.05,\n20,0.01,0.75\n")
    log, notes = _log(run, given)
    assert log.steps.tolist() == [0, 5, 7, 10, 15, 20]
    # metrics.jsonl beats the checkpoints' loss; --metrics beats metrics.jsonl for val_acc
    assert log.values["loss"][[0, 1, 3]].tolist() == [1.0, 1 / 6, 1 / 11]
    assert np.isnan(log.values["loss"][2])
    assert log.sources["loss"].startswith("metrics.jsonl")
    assert log.sources["val_acc"] == f"--metrics {given}"
    assert log.values["val_acc"][[0, 5]].tolist() == [0.25, 0.75]
    assert np.isnan(log.values["val_acc"][2])  # a blank cell is "not logged"
    assert log.values["lr"][2] == 0.05


def test_bad_lines_and_columns_are_warnings_naming_them(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "step,loss,phase,acc\n"
        "0,1.0,train,0.1\n"
        "5,0.8,train\n"  # line 3: a missing field
        "x,0.7,train,0.3\n"  # line 4: no step
        "10,0.5,train,oops\n"  # line 5: one non-numeric value
        "15,0.4,train,0.5\n"
    )
    series, notes = read_metrics_file(path)
    assert series["loss"] == {0: 1.0, 10: 0.5, 15: 0.4}
    assert series["acc"] == {0: 0.1, 15: 0.5}
    assert "phase" not in series
    text = [n.message for n in notes]
    assert any("line 3" in t and "number of fields" in t for t in text)
    assert any("without an integer 'step'" in t and "line 4" in t for t in text)
    assert any("column 'phase' is not numeric" in t and "'train' at line 2" in t for t in text)
    assert any("column 'acc': 1 non-numeric" in t and "'oops' at line 5" in t for t in text)
    bad = tmp_path / "log.jsonl"
    bad.write_text(
        '{"step": 0, "loss": 1}\n{"step": 1, "loss": \n[1, 2]\n{"step": 2, "loss": 0.5}\n'
    )
    series, notes = read_metrics_file(bad)
    assert series["loss"] == {0: 1.0, 2: 0.5}
    assert any("2 malformed line(s)" in n.message and "line 2" in n.message for n in notes)


def test_explicit_log_without_step_column_is_an_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(
        SpecdynError, match=r"^metrics_file .*log.csv: no step .* column \(columns: epoch, loss\)"
    ) as info:
        read_metrics_file(path)
    assert info.value.render(cli=True).startswith("--metrics ")
    assert info.value.file == str(path) and info.value.option == "metrics_file"
    with pytest.raises(SpecdynError, match="no such file"):
        read_metrics_file(tmp_path / "missing.csv")


def test_auto_found_log_without_step_column_is_a_warned_skip(tmp_path):
    run = _run(tmp_path / "r")
    (run / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    log, notes = _log(run)
    assert log is None
    assert any("no step" in n.message and "left out" in n.message for n in notes)


def test_stored_with_the_run_and_kept_across_reruns(tmp_path):
    home = tmp_path / "home"
    run = _run(tmp_path / "r", extra={s: {"loss": 1.0 / (s + 1)} for s in (0, 10, 20)})
    log_file = tmp_path / "log.csv"
    log_file.write_text("step,val_loss\n0,2.0\n15,1.0\n")
    result = specdyn.analyze(run, home=home, vectors=None, metrics_file=log_file)
    assert any(n.kind == "training" for n in result.runs[0].notes)
    with specdyn.open_run("r", home) as stored:
        assert stored.training_names == ["loss", "val_loss"]
        steps, values = stored.training("val_loss")
        assert steps.tolist() == [0, 15] and values.tolist() == [2.0, 1.0]
        assert stored.info()["training_metrics"] == ["loss", "val_loss"]
        with pytest.raises(StoreError, match="no training metric 'acc'; stored: loss, val_loss"):
            stored.training("acc")
    # a re-run without --metrics: new checkpoint metrics are added, the earlier log kept
    _run(tmp_path / "r", steps=(30,), extra={30: {"loss": 0.01}})
    specdyn.analyze(run, home=home, vectors=None)
    with specdyn.open_run("r", home) as stored:
        assert stored.steps.tolist() == [0, 10, 20, 30]
        steps, values = stored.training("loss")
        assert steps.tolist() == [0, 10, 20, 30] and values[-1] == 0.01
        assert stored.training("val_loss")[0].tolist() == [0, 15]


def test_a_store_without_metrics_says_how_to_add_them(tmp_path):
    home = tmp_path / "home"
    specdyn.analyze(_run(tmp_path / "r"), home=home, vectors=None)
    with specdyn.open_run("r", home) as stored:
        assert stored.training_log is None and stored.training_names == []
        with pytest.raises(StoreError, match="metrics_file=LOG") as err:
            stored.training("loss")
        # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
        assert "re-run specdyn analyze with --metrics LOG" in err.value.render(cli=True)


def test_cli_metrics_option(tmp_path, capsys):
    home = tmp_path / "home"
    run = _run(tmp_path / "r")
    log_file = tmp_path / "log.jsonl"
    log_file.write_text('{"step": 0, "loss": 2}\n{"step": 20, "loss": 1}\n')
    assert (
        main(
            ["analyze", str(run), "--home", str(home), "--values-only", "--metrics", str(log_file)]
        )
        == 0
    )
    assert "training metrics: loss from --metrics" in capsys.readouterr().err
    code = main(
        [
            "analyze",
            str(run),
            "--home",
            str(home),
            "--values-only",
            "--metrics",
            str(tmp_path / "no.csv"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no such file" in err[0]


def test_an_epoch_run_with_a_step_log_says_why_epochs(tmp_path):
    """The run counts epochs (no step anywhere), the log counts steps: the error says so
    instead of 'a training log needs the step of each row' (issue 14, item 8)."""
    import pytest
    import torch

    import specdyn
    from specdyn.errors import SpecdynError

    for epoch in (1, 2):
        torch.save({"w.weight": torch.randn(4, 3)}, tmp_path / f"epoch_{epoch}.pt")
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n10,1.0\n20,0.5\n")
    with pytest.raises(SpecdynError, match="give epochs, not steps.*no epoch column"):
        specdyn.analyze(tmp_path, home=tmp_path / "ws", vectors=None, metrics_file=log)
