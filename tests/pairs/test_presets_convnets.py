"""ResNet and diffusers UNet presets on the zoo's models (specdyn.pairs, docs/pairs.md#presets).

The expected pairs of each tiny config are written out (the spec); the UNet's skip
connections and head counts are checked against the diffusers model's own forward (what
each up block really concatenates) and its own Attention modules (`heads`).
"""

from __future__ import annotations

import pytest
import torch
from _zoo import ZOO, save_initial
from torch import nn

from specdyn.pairs import pairs_for


def _saved(tmp_path, name: str):
    """(model, checkpoint path) of a zoo model saved at step 0."""
    return save_initial(name, tmp_path)


def _got(result):
    return sorted((p.name.replace(".weight", ""), p.rule) for p in result.pairs)


# ------------------------------------------------------------------ ResNet


def test_torchvision_resnet_main_chain_and_shortcuts(tmp_path):
    """Issue 13: `downsample.0` was called grouped and layerN.0.conv2 → layerN.1.conv1 was
    missing after the first stage."""
    model, path = _saved(tmp_path, "resnet")
    result = pairs_for(path)
    assert result.preset == "resnet"
    tap = "conv-centre-tap"
    assert _got(result) == sorted([
        ("conv1~layer1.0.conv1", tap),
        ("layer1.0.conv1~layer1.0.conv2", tap), ("layer1.0.conv2~layer1.1.conv1", tap),
        ("layer1.1.conv1~layer1.1.conv2", tap), ("layer1.1.conv2~layer2.0.conv1", tap),
        ("layer1.1.conv2~layer2.0.downsample.0", "block-in-to-shortcut"),
        ("layer2.0.conv1~layer2.0.conv2", tap), ("layer2.0.conv2~layer2.1.conv1", tap),
        ("layer2.1.conv1~layer2.1.conv2", tap), ("layer2.1.conv2~fc", "sequential"),
    ])  # fmt: skip
    assert result.skipped == []
    assert not any("grouped" in n for n in result.notes)
    for stage in (1, 2):  # the block-to-block pair of every stage
        assert f"layer{stage}.0.conv2~layer{stage}.1.conv1" in {n for n, _ in _got(result)}
    # the 1×1 shortcut is a linear map of its channels: its one tap, c_in long
    shortcut = next(p for p in result.pairs if p.rule == "block-in-to-shortcut")
    ds = model.layer2[0].downsample[0]
    assert shortcut.options["tap"] == [0, 0] and shortcut.second.dim == ds.in_channels
    assert shortcut.first.dim == model.layer1[1].conv2.out_channels


def test_shortcut_conv_is_not_grouped_in_a_plain_state_dict(tmp_path):
    """The grouped check compares a conv with the layer that really feeds it."""

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3), nn.Conv2d(cout, cout, 3)
            self.shortcut = nn.Conv2d(cin, cout, 1)

    net = nn.Sequential(Block(3, 8), Block(8, 16), nn.Conv2d(16, 16, 3, groups=16))
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "epoch_0.pt")
    result = pairs_for(folder)
    assert result.preset == "resnet"
    assert ("0.conv2~1.shortcut", "block-in-to-shortcut") in _got(result)
    assert ("0.conv2~1.conv1", "conv-centre-tap") in _got(result)
    # a real depthwise conv is still recognised (16 channels per group of 1 against 16)
    assert [d for d, r in result.skipped if "grouped" in r] == ["1.conv2.weight → 2.weight"]


# ------------------------------------------------------------------ diffusers UNets

pytest.importorskip("diffusers")


def _skips_seen(model, inputs):
    """Up resnet name → (main channels, skip source module) from the model's own forward:
    each up block's pre-hook sees hidden_states and the tuple of skips it will pop."""
    outputs, seen = {}, {}
    for name, mod in model.named_modules():
        if name == "conv_in" or (name.startswith("down_blocks.") and name.count(".") == 3):
            mod.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(
                name, out[0] if isinstance(out, tuple) else out))  # fmt: skip

    def pre(block_name):
        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            skips = list(kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else ()))
            channels = hidden.shape[1]
            for j, resnet in enumerate(module.resnets):
                skip = skips.pop()
                source = next(
                    n for n, t in outputs.items() if t.shape == skip.shape and torch.equal(t, skip)
                )
                seen[f"{block_name}.resnets.{j}"] = (channels, source)
                channels = resnet.out_channels

        return hook

    for i, block in enumerate(model.up_blocks):
        block.register_forward_pre_hook(pre(f"up_blocks.{i}"), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    return seen


def _source_module(matrix: str) -> str:
    """The down-path module (resnet, attention, downsampler, conv_in) a matrix belongs to."""
    parts = matrix.split(".")
    return "conv_in" if parts[0] == "conv_in" else ".".join(parts[:4])


def _check_unet(model, result):
    """Heads equal the model's own Attention.heads; skip pairs match the real concat."""
    attn_heads = {n: m.heads for n, m in model.named_modules() if type(m).__name__ == "Attention"}
    qk = {p.first.matrix.rsplit(".to_q", 1)[0]: p for p in result.pairs if p.rule == "q-k-per-head"}
    assert set(qk) == set(attn_heads)
    for name, heads in attn_heads.items():
        assert qk[name].options == {"heads": heads, "kv_heads": heads}
    entry = ZOO[model._zoo_name]
    seen = _skips_seen(model, entry.inputs(model, torch.Generator().manual_seed(0)))
    for resnet, (channels, source) in seen.items():
        conv1 = f"{resnet}.conv1.weight"
        into = {p.rule: p for p in result.pairs if p.second.matrix == conv1}
        width = into["unet-skip"].second.dim + into["conv-centre-tap"].second.dim
        assert into["conv-centre-tap"].options["channels"] == [0, channels]
        assert into["unet-skip"].options["channels"] == [channels, width]
        assert _source_module(into["unet-skip"].first.matrix) == source


def test_unet2d_resnets_attention_time_embedding_and_skips(tmp_path):
    model, path = _saved(tmp_path, "unet2d")
    result = pairs_for(path)
    assert result.preset == "unet"
    tap, sc, skip = "conv-centre-tap", "block-in-to-shortcut", "unet-skip"
    d0, d1, mid = "down_blocks.0.", "down_blocks.1.", "mid_block."
    u0, u1 = "up_blocks.0.", "up_blocks.1."
    resnets = [d0 + "resnets.0", d1 + "resnets.0", mid + "resnets.0", mid + "resnets.1",
               u0 + "resnets.0", u0 + "resnets.1", u1 + "resnets.0", u1 + "resnets.1"]  # fmt: skip
    attns = [d1 + "attentions.0", mid + "attentions.0", u0 + "attentions.0", u0 + "attentions.1"]
    expected = [("time_embedding.linear_1~time_embedding.linear_2", "time-embed")]
    expected += [
        (f"time_embedding.linear_2~{r}.time_emb_proj", "time-embed-to-resnet") for r in resnets
    ]
    expected += [(f"{r}.conv1~{r}.conv2", tap) for r in resnets]
    expected += [(f"{a}.to_q~{a}.to_k", "q-k-per-head") for a in attns]
    expected += [(f"{a}.to_v~{a}.to_out.0", "v-o-per-head") for a in attns]
    expected += [
        ("conv_in~" + d0 + "resnets.0.conv1", tap),
        (d0 + "resnets.0.conv2~" + d0 + "downsamplers.0.conv", tap),
        (d0 + "downsamplers.0.conv~" + d1 + "resnets.0.conv1", tap),
        (d0 + "downsamplers.0.conv~" + d1 + "resnets.0.conv_shortcut", sc),
        (d1 + "resnets.0.conv2~" + d1 + "attentions.0.to_q", "sequential"),
        (d1 + "attentions.0.to_out.0~" + mid + "resnets.0.conv1", tap),
        (mid + "resnets.0.conv2~" + mid + "attentions.0.to_q", "sequential"),
        (mid + "attentions.0.to_out.0~" + mid + "resnets.1.conv1", tap),
        # up path: hidden | skip, the skips popped from the last down output back to conv_in
        (mid + "resnets.1.conv2~" + u0 + "resnets.0.conv1", tap),
        (mid + "resnets.1.conv2~" + u0 + "resnets.0.conv_shortcut", sc),
        (d1 + "attentions.0.to_out.0~" + u0 + "resnets.0.conv1", skip),
        (d1 + "attentions.0.to_out.0~" + u0 + "resnets.0.conv_shortcut", skip),
        (u0 + "resnets.0.conv2~" + u0 + "attentions.0.to_q", "sequential"),
        (u0 + "attentions.0.to_out.0~" + u0 + "resnets.1.conv1", tap),
        (u0 + "attentions.0.to_out.0~" + u0 + "resnets.1.conv_shortcut", sc),
        (d0 + "downsamplers.0.conv~" + u0 + "resnets.1.conv1", skip),
        (d0 + "downsamplers.0.conv~" + u0 + "resnets.1.conv_shortcut", skip),
        (u0 + "resnets.1.conv2~" + u0 + "attentions.1.to_q", "sequential"),
        (u0 + "attentions.1.to_out.0~" + u0 + "upsamplers.0.conv", tap),
        (u0 + "upsamplers.0.conv~" + u1 + "resnets.0.conv1", tap),
        (u0 + "upsamplers.0.conv~" + u1 + "resnets.0.conv_shortcut", sc),
        (d0 + "resnets.0.conv2~" + u1 + "resnets.0.conv1", skip),
        (d0 + "resnets.0.conv2~" + u1 + "resnets.0.conv_shortcut", skip),
        (u1 + "resnets.0.conv2~" + u1 + "resnets.1.conv1", tap),
        (u1 + "resnets.0.conv2~" + u1 + "resnets.1.conv_shortcut", sc),
        ("conv_in~" + u1 + "resnets.1.conv1", skip),
        ("conv_in~" + u1 + "resnets.1.conv_shortcut", skip),
        (u1 + "resnets.1.conv2~conv_out", tap),
    ]  # fmt: skip
    assert _got(result) == sorted(expected)
    assert result.skipped == []
    _check_unet(model, result)


def test_unet2d_condition_transformer_blocks_and_cross_attention(tmp_path):
    model, path = _saved(tmp_path, "unet2d-cond")
    result = pairs_for(path)
    assert result.preset == "unet" and result.skipped == []
    _check_unet(model, result)
    got = _got(result)
    for t in ["down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",
              "up_blocks.0.attentions.1"]:  # fmt: skip
        b = t + ".transformer_blocks.0."
        for pair in [
            (f"{t}.proj_in~{b}attn1.to_q", "sequential"),
            (f"{b}attn1.to_out.0~{b}attn2.to_q", "o-to-cross-q"),
            (f"{b}attn2.to_out.0~{b}ff.net.0.proj", "o-to-mlp-in"),
            (f"{b}ff.net.0.proj~{b}ff.net.2", "mlp-in-to-out"),
            (f"{b}ff.net.2~{t}.proj_out", "conv-centre-tap"),
        ]:
            assert pair in got, pair
        # the cross-attention's K and V read encoder_hidden_states: no in-model source
        into_kv = [(n, r) for n, r in got if n.endswith((f"{b}attn2.to_k", f"{b}attn2.to_v"))]
        assert into_kv == [(f"{b}attn2.to_q~{b}attn2.to_k", "q-k-per-head")]
    note = next(n for n in result.notes if n.startswith("cross-attention K and V read an encoder"))
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight" in note
    geglu = next(p for p in result.pairs if p.rule == "mlp-in-to-out")
    ff = model.down_blocks[1].attentions[0].transformer_blocks[0].ff
    inner = ff.net[2].in_features  # GEGLU: proj(x).chunk(2): the first half is multiplied in
    assert geglu.first.ops == (("rows", 0, inner, 1),) and geglu.options == {"glu": "value"}
    assert geglu.first.dim == geglu.second.dim == inner
