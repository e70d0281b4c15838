"""A conv reading one input channel is not a grouped/depthwise conv by that alone (issue 24,
finding 5): a grayscale CNN's first conv pairs with the next conv, while a real depthwise
conv (``groups=c``) is still reported as grouped.

Each model is a real torch module saved with ``torch.save(model.state_dict())`` at two steps;
the expected pairs are written out by hand from the module's forward.
"""

from __future__ import annotations

import torch
from torch import nn

from specdyn.pairs import pairs_for

TAP = "conv-centre-tap"


def _saved(model: nn.Module, folder):
    """`folder` holding the model's state dict at steps 0 and 10 (the second one nudged)."""
    folder.mkdir()
    torch.save(model.state_dict(), folder / "step_0.pt")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    torch.save(model.state_dict(), folder / "step_10.pt")
    return folder


def _got(result):
    return sorted((p.name.replace(".weight", ""), p.rule) for p in result.pairs)


class _Gray(nn.Module):
    """conv1 (1 → 8) → conv2 (8 → 16) → global pool → fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(h.mean(dim=(2, 3)))


class _Conditional(_Gray):
    """The grayscale CNN with a label projection registered first (8 outputs, like conv1's
    8 out channels): in file order the projection sits before the 1-channel conv1."""

    def __init__(self):
        nn.Module.__init__(self)
        self.cond = nn.Linear(10, 8)
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16, 4)


class _Stem(nn.Module):
    """A conv registered before a 1-channel ``stem`` whose out channels are a multiple of
    its outputs: depthwise-looking shapes, but the stem reads the model's input."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(8, 8, 3)
        self.stem = nn.Conv2d(1, 8, 3)
        self.head = nn.Conv2d(8, 16, 1)


def test_single_channel_conv_pairs_with_the_next_conv(tmp_path):
    model = _Gray()
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 4)  # the forward the pairs follow
    result = pairs_for(_saved(model, tmp_path / "gray"))
    assert _got(result) == [("conv1~conv2", TAP), ("conv2~fc", "sequential")]
    assert result.skipped == []
    pair = next(p for p in result.pairs if p.rule == TAP)
    assert (pair.first.dim, pair.second.dim) == (8, 8)  # conv1's 8 outputs, conv2's 8 inputs


def test_single_channel_conv_after_another_layer_is_not_grouped(tmp_path):
    """Before the fix: "grouped/depthwise conv (1 input channels per group of 8)" and
    conv1 → conv2 was dropped as "after a grouped conv"."""
    result = pairs_for(_saved(_Conditional(), tmp_path / "cond"))
    assert _got(result) == [("conv1~conv2", TAP), ("conv2~fc", "sequential")]
    assert [d for d, _ in result.skipped] == ["cond.weight → conv1.weight"]
    assert not any("grouped" in why for _, why in result.skipped)
    assert "1 input channel" in result.skipped[0][1]


def test_input_conv_is_not_depthwise(tmp_path):
    result = pairs_for(_saved(_Stem(), tmp_path / "stem"))
    assert _got(result) == [("stem~head", TAP)]
    assert [d for d, _ in result.skipped] == ["body.weight → stem.weight"]
    assert not any("grouped" in why for _, why in result.skipped)


def test_real_depthwise_conv_is_still_grouped(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1), nn.Linear(16, 4)
    )
    result = pairs_for(_saved(model, tmp_path / "dw"))
    assert _got(result) == [("2~3", "sequential")]
    assert result.skipped == [
        (
            "0.weight → 1.weight",
            "grouped/depthwise conv (1 input channels per group of 8): no pair rule; "
            "write a pairs file to pair it",
        ),
        ("1.weight → 2.weight", "grouped/depthwise conv: no pair rule"),
    ]


def test_grouped_conv_with_several_channels_per_group(tmp_path):
    """groups=4 on 8 channels: 2 input channels per group, implied by the shapes alone."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=4))
    result = pairs_for(_saved(model, tmp_path / "g4"))
    assert result.pairs == []
    assert result.skipped[0][0] == "0.weight → 1.weight"
    assert result.skipped[0][1].startswith("grouped/depthwise conv (2 input channels per group")
