"""State dicts nested at any depth (issue 24, finding 7): torch's own ``dcp_to_torch_save``
writes ``{"app": {"model": …, "optim": …}}``; an EMA copy beside the model is named, not
merged; two equally likely state dicts are refused with the choice to make."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _ckpt_factory import assert_sigma_is_svd
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import specdyn
from specdyn.errors import CheckpointError
from specdyn.sources import discover, open_checkpoint
from specdyn.sources._checkpoint import probe


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _dcp_converted(folder, step: int, seed: int) -> dict[str, torch.Tensor]:
    """dcp.save of {"app": {"model": sd, "optim": …}} (no process group), then torch's own
    dcp_to_torch_save into step_<step>.pt beside it."""
    model = _model(seed)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {"app": {"model": model.state_dict(), "optim": opt.state_dict()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving as one process"
        dcp.save(state, checkpoint_id=folder / f"dcp_{step}", no_dist=True)
        dcp_to_torch_save(folder / f"dcp_{step}", folder / "converted" / f"step_{step}.pt")
    return sd


def test_dcp_to_torch_save_output_is_read_with_its_nesting_named(tmp_path):
    (tmp_path / "converted").mkdir()
    saved = {step: _dcp_converted(tmp_path, step, seed) for step, seed in ((10, 1), (20, 2))}
    # what torch itself wrote: the nesting this reader must find
    raw = torch.load(tmp_path / "converted" / "step_10.pt", weights_only=True)
    assert set(raw) == {"app"} and set(raw["app"]) == {"model", "optim"}
    ckpt, notes = probe(tmp_path / "converted" / "step_10.pt", "file")
    assert ckpt.step == 10
    (note,) = notes
    assert note.kind == "nested-weights" and "['app']['model']" in note.message
    with ckpt.open() as reader:
        assert reader.keys() == list(_model().state_dict())
        for key, value in saved[10].items():
            assert torch.equal(reader.get(key), value)

    found = discover(tmp_path / "converted")
    (note,) = found.notes  # one for the folder, counting the files
    first = tmp_path / "converted" / "step_10.pt"
    assert note.message == (
        f"2 checkpoints ({first}, …): weights found nested under ['app']['model']"
    )
    result = specdyn.analyze(tmp_path / "converted", home=tmp_path / "ws", vectors=None)
    (run,) = result.runs
    assert run.steps_computed == [10, 20]
    with specdyn.open_run("converted", home=tmp_path / "ws") as store:
        weighted = [
            f"{n}.weight" for n, m in _model().named_modules() if isinstance(m, torch.nn.Linear)
        ]
        assert sorted(store.matrices) == sorted(weighted)
        sigma = store.sigma("0.weight")
    assert_sigma_is_svd(sigma, [saved[step]["0.weight"] for step in (10, 20)])


def test_deeply_nested_weights_are_found(tmp_path):
    sd = _model().state_dict()
    nested: dict = {"model": sd}
    for level in range(12):
        nested = {f"level{level}": nested, "note": "x"}
    torch.save(nested, tmp_path / "deep.pt")
    ckpt, notes = probe(tmp_path / "deep.pt", "file")
    assert "['level11']['level10']" in notes[0].message
    assert notes[0].message.endswith("['level0']['model']")
    with ckpt.open() as reader:
        assert torch.equal(reader.get("2.weight"), sd["2.weight"])


def test_known_key_wins_and_an_ema_copy_is_named_not_merged(tmp_path):
    model, ema = _model(0).state_dict(), _model(1).state_dict()
    torch.save({"epoch": 3, "model": model, "model_ema": ema}, tmp_path / "step_3.pt")
    ckpt, notes = probe(tmp_path / "step_3.pt", "file")
    (note,) = notes
    assert note.kind == "other-weights"
    assert "under ['model']" in note.message and "['model_ema']" in note.message
    with ckpt.open() as reader:
        assert reader.keys() == list(model)  # the model's keys only, no EMA ones
        assert torch.equal(reader.get("0.weight"), model["0.weight"])


def test_lightning_layout_stays_silent(tmp_path):
    sd = _model().state_dict()
    torch.save(
        {"state_dict": sd, "optimizer_states": [{}], "callbacks": {"EMA": {"w": sd["0.weight"]}}},
        tmp_path / "step=5.ckpt",
    )
    _ckpt, notes = probe(tmp_path / "step=5.ckpt", "file")
    assert notes == []


def test_two_unknown_sub_dicts_of_tensors_are_refused_with_the_choice(tmp_path):
    a, b = _model(0).state_dict(), _model(1).state_dict()
    torch.save({"weights": {"student": a, "teacher": b}}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError, match="in 2 places") as err:
        open_checkpoint(tmp_path / "step_1.pt")
    message = str(err.value)
    assert "['weights']['student']" in message and "['weights']['teacher']" in message
    assert "not merged" in message and err.value.kind == "unreadable"
    # in a folder it is a note, the other checkpoints are analysed
    torch.save(a, tmp_path / "step_2.pt")
    found = discover(tmp_path)
    (run,) = found.runs
    assert [c.step for c in run.checkpoints] == [2]
    assert any(n.kind == "unreadable" and "step_1.pt" in n.message for n in found.notes)


def test_shared_and_many_sub_dicts_are_searched_in_linear_time(tmp_path):
    # 2**25 paths through 25 levels that each name the next twice (one shared dict): the
    # same weights, found once; 25 levels of two different dicts each: refused, 8+ places
    sd = _model().state_dict()
    shared: dict = {"model": sd}
    for _ in range(25):
        shared = {"a": shared, "b": shared}
    torch.save({"top": shared}, tmp_path / "shared.pt")
    ckpt, notes = probe(tmp_path / "shared.pt", "file")
    assert notes[0].message.endswith("['a']['a']['model']")
    with ckpt.open() as reader:
        assert reader.keys() == list(sd)
    level: dict = {"x": {"model": sd}, "y": {"model": dict(sd)}}  # two state dicts
    for _ in range(25):
        level = {"a": level, "b": level}
    torch.save({"top": level}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError, match="in 8 or more places"):
        open_checkpoint(tmp_path / "step_1.pt")


def test_scalar_metrics_under_other_keys_are_not_weights(tmp_path):
    torch.save(
        {"metrics": {"loss": torch.tensor(0.3), "acc": torch.tensor(0.9)}}, tmp_path / "m_1.pt"
    )
    with pytest.raises(CheckpointError, match="holds no weight tensors") as err:
        open_checkpoint(tmp_path / "m_1.pt")
    assert err.value.kind == "not-a-checkpoint"
    sd = _model().state_dict()
    torch.save({"state_dict": sd, "metrics": {"loss": torch.tensor(0.3)}}, tmp_path / "step_2.pt")
    _ckpt, notes = probe(tmp_path / "step_2.pt", "file")
    assert notes == []  # no "other weights" note for metrics


def test_an_ema_copy_in_every_checkpoint_draws_one_note(tmp_path):
    # timm's train.py: {"epoch", "arch", "state_dict", "optimizer", "state_dict_ema", ...}
    for epoch in (1, 2, 3):
        model, ema = _model(epoch).state_dict(), _model(10 + epoch).state_dict()
        state = {"epoch": epoch, "arch": "tiny", "state_dict": model, "state_dict_ema": ema}
        torch.save(state, tmp_path / f"checkpoint-{epoch}.pth.tar")
    found = discover(tmp_path)
    assert [c.step for c in found.runs[0].checkpoints] == [1, 2, 3]
    (note,) = found.notes
    assert note.kind == "other-weights"
    assert note.message.startswith(f"3 checkpoints ({tmp_path / 'checkpoint-1.pth.tar'}, …): ")
    assert "under ['state_dict']" in note.message and "['state_dict_ema']" in note.message
