"""The matrix pipeline (`specdyn.matrices`) on a tiny real torch model saved as a torch
pickle and as safetensors: the yielded matrices are the views cut by hand from
``model.named_parameters()``, each parameter is read once, and memory holds one group of
tensors at a time (checked with weak references at every read)."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from specdyn.errors import ViewError
from specdyn.matrices import cut_matrices, plan_checkpoint, read_matrices, views_by_parameter
from specdyn.sources import open_checkpoint
from specdyn.types import TensorInfo
from specdyn.views import plan_views

FORWARD_KEYS = ["conv.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc.weight", "head.weight"]


class _Tiny(nn.Module):
    """A conv kernel (flattened), an LSTM (gate blocks), two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.rnn = nn.LSTM(3, 2)
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, 2)


def _model() -> _Tiny:
    torch.manual_seed(0)
    return _Tiny()


def _save(model: nn.Module, folder: Path, fmt: str, extra: dict | None = None) -> Path:
    state = {**model.state_dict(), **(extra or {})}
    if fmt == "torch":
        path = folder / "model.pt"
        torch.save(state, path)
    else:
        path = folder / "model.safetensors"
        safetensors.torch.save_file(state, str(path))
    return path


def _by_hand(model: nn.Module) -> dict[tuple[str, str | None], torch.Tensor]:
    """(raw key, part) → the (out, in) matrix, cut from the live parameters."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    expected = {("conv.weight", None): params["conv.weight"].reshape(4, 3 * 3 * 3)}
    for name in ("rnn.weight_ih_l0", "rnn.weight_hh_l0"):
        for i, gate in enumerate("ifgo"):  # PyTorch stacks the LSTM gates i, f, g, o
            expected[(name, gate)] = params[name][2 * i : 2 * i + 2]
    expected[("fc.weight", None)] = params["fc.weight"]
    expected[("head.weight", None)] = params["head.weight"]
    return expected


class _CountingReader:
    """A reader that records each read and which tensors it gave out still hold memory
    when the next read starts: each tensor it gives is backed by a numpy array, which
    lives as long as any tensor sharing its storage (the tensor itself or a view of it)."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.reads: list[str] = []
        self.alive_at_read: list[list[str]] = []
        self._given: list[tuple[str, weakref.ref]] = []

    def __getattr__(self, name: str):
        return getattr(self.reader, name)

    def get(self, key: str) -> torch.Tensor:
        self.alive_at_read.append([k for k, ref in self._given if ref() is not None])
        data = self.reader.get(key).numpy().copy()
        self.reads.append(key)
        self._given.append((key, weakref.ref(data)))
        return torch.from_numpy(data)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_matrices_are_the_views_cut_by_hand_one_tensor_read_at_a_time(tmp_path, fmt):
    model = _model()
    ckpt = open_checkpoint(_save(model, tmp_path, fmt))
    expected = _by_hand(model)
    with ckpt.open() as opened:
        reader = _CountingReader(opened)
        views = plan_checkpoint(ckpt, reader=reader).plan.matrices
        assert reader.reads == []  # planning reads metadata only
        got: dict[tuple[str, str | None], torch.Tensor] = {}
        order = []
        for group in read_matrices(reader, views):
            assert list(group.tensors) == [reader.reads[-1]]  # one parameter per group
            order += [view.name for view in group.views]
            # copies: a matrix kept from the group would keep its tensor's memory
            got.update({(view.key, view.part): matrix.clone() for view, matrix in group})
    assert reader.reads == FORWARD_KEYS  # each parameter read once, its gates from one read
    assert reader.alive_at_read == [[]] * len(FORWARD_KEYS)  # nothing left from before
    assert order == [v.name for v in views]
    assert set(got) == set(expected)
    for where, matrix in expected.items():
        assert got[where].dtype == torch.float32
        assert torch.equal(got[where], matrix), where


def test_groups_gather_parameters_until_their_bytes_reach_the_bound(tmp_path):
    model = _model()
    ckpt = open_checkpoint(_save(model, tmp_path, "safetensors"))
    # float32 bytes: conv 432, weight_ih 96, weight_hh 64, fc 120, head 40
    with ckpt.open() as opened:
        reader = _CountingReader(opened)
        views = plan_checkpoint(ckpt, reader=reader).plan.matrices
        groups = []
        for group in read_matrices(reader, views, group_bytes=500):
            groups.append((list(group.tensors), group.nbytes, len(group)))
    assert groups == [
        (["conv.weight", "rnn.weight_ih_l0"], 432 + 96, 1 + 4),
        (["rnn.weight_hh_l0", "fc.weight", "head.weight"], 64 + 120 + 40, 4 + 1 + 1),
    ]
    # within a group the earlier tensors stay (they batch); none outlives its group
    assert reader.alive_at_read == [
        [],
        ["conv.weight"],
        [],
        ["rnn.weight_hh_l0"],
        ["rnn.weight_hh_l0", "fc.weight"],
    ]


def test_a_group_is_emptied_when_the_next_is_asked_for_and_when_iteration_stops(tmp_path):
    ckpt = open_checkpoint(_save(_model(), tmp_path, "torch"))
    with ckpt.open() as reader:
        views = plan_checkpoint(ckpt, reader=reader).plan.matrices
        stream = read_matrices(reader, views)
        first = next(stream)
        assert len(first) == 1 and list(first.tensors) == ["conv.weight"]
        second = next(stream)
        assert len(first) == 0 and first.tensors == {} and first.nbytes == 0
        stream.close()  # a consumer that stops early
        assert len(second) == 0 and second.tensors == {}


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
def test_plan_checkpoint_counts_unsupported_tensors_as_skipped(tmp_path):
    quantised = torch.quantize_per_tensor(torch.randn(5, 5), 0.1, 0, torch.qint8)
    ckpt = open_checkpoint(_save(_model(), tmp_path, "torch", {"q.weight": quantised}))
    planned = plan_checkpoint(ckpt)
    assert [v.key for v in planned.plan.matrices if v.part in (None, "i")] == FORWARD_KEYS
    assert "q.weight" not in planned.infos
    (skip,) = [s for s in planned.plan.skipped if s.key == "q.weight"]
    assert skip.param == "q.weight" and skip.reason.startswith("unsupported tensor type")
    assert skip.reason.endswith("; not read")


def test_a_parameter_of_another_shape_is_a_view_error(tmp_path):
    planned_from = open_checkpoint(_save(_model(), tmp_path, "torch"))
    views = plan_checkpoint(planned_from).plan.matrices
    other = tmp_path / "other"
    other.mkdir()
    wider = _model()
    wider.fc = nn.Linear(7, 5)
    ckpt = open_checkpoint(_save(wider, other, "torch"))
    with ckpt.open() as reader, pytest.raises(ViewError, match="fc.weight"):
        for _group in read_matrices(reader, views):
            pass


def test_views_by_parameter_and_cut_matrices_keep_the_order_given():
    model = _model()
    infos = {
        name: TensorInfo(shape=tuple(p.shape), dtype=p.dtype)
        for name, p in model.named_parameters()
    }
    by_name = {view.name: view for view in plan_views(infos).matrices}
    gates = [by_name[f"rnn.weight_ih_l0[{g}]"] for g in "gofi"]
    chosen = [*gates[:2], by_name["fc.weight"], *gates[2:]]
    assert {k: [v.part for v in vs] for k, vs in views_by_parameter(chosen).items()} == {
        "rnn.weight_ih_l0": ["g", "o", "f", "i"],
        "fc.weight": [None],
    }
    tensor = model.rnn.weight_ih_l0.detach()
    cut = list(cut_matrices(tensor, gates))
    assert [v.part for v, _ in cut] == ["g", "o", "f", "i"]
    for (view, matrix), start in zip(cut, (4, 6, 2, 0), strict=True):
        assert torch.equal(matrix, tensor[start : start + 2]), view.name
