"""Convolutional presets (docs/pairs.md#presets): ResNet-style side branches and diffusers'
UNet2DModel / UNet2DConditionModel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..views import MatrixView
from . import _attention
from ._specs import PairSpec, PresetResult, in_width, is_conv, link

# A path component that starts a side branch (a shortcut) of a residual block.
SIDE_BRANCHES = {"downsample", "shortcut", "skip", "conv_shortcut", "skip_connection"}


def _side_index(param: str) -> int | None:
    """Index of the path component that starts a side branch, or None (main path)."""
    for i, part in enumerate(param.split(".")[:-1]):
        if part.lower() in SIDE_BRANCHES:
            return i
    return None


def has_side_branches(views: Sequence[MatrixView]) -> bool:
    """Whether some matrix sits on a residual block's shortcut (``downsample``, ``shortcut``…)."""
    return any(_side_index(v.param) is not None for v in views)


def _link_chain(chain: Sequence[MatrixView], result: PresetResult) -> None:
    """Consecutive pairs along a chain; a pair after a grouped conv is skipped too."""
    grouped: set[str] = set()
    for a, b in zip(chain, chain[1:], strict=False):
        if a.name in grouped:
            result.skipped.append((f"{a.name} → {b.name}", "grouped/depthwise conv: no pair rule"))
            continue
        before = len(result.skipped)
        if not link(a, b, result) and "grouped" in result.skipped[before][1]:
            grouped.add(b.name)


def resnet(views: Sequence[MatrixView]) -> PresetResult:
    """The main path layer to layer across residual blocks; a shortcut pairs with the layer
    before its block (the block's input), a side branch, never part of the main chain."""
    result = PresetResult([], [], [], "resnet")
    # the stem (a named top-level conv: torchvision's conv1) first and the head (linears) last,
    # whatever the file's key order (safetensors headers are alphabetical)
    main = sorted((v for v in views if _side_index(v.param) is None), key=_main_rank)
    _link_chain(main, result)
    branches: dict[str, list[MatrixView]] = {}
    for v in views:
        i = _side_index(v.param)
        if i is not None:
            branches.setdefault(".".join(v.param.split(".")[: i + 1]), []).append(v)
    for branch, members in branches.items():
        block = branch.rsplit(".", 1)[0] + "." if "." in branch else ""
        source = _block_input(views, main, block, members[0])
        if source is None:
            result.skipped.append((
                f"→ {members[0].name}", "no layer before its block: the shortcut reads the input"
            ))  # fmt: skip
        else:
            link(source, members[0], result, "block-in-to-shortcut")
        _link_chain(members, result)
    result.notes.append(
        "residual blocks: the main path pairs layer to layer across blocks; shortcuts "
        f"({', '.join(branches)}) pair with the last layer before their block"
    )
    return result


def _main_rank(view: MatrixView) -> int:
    """0 for a stem conv (a named top-level module), 1 for other convs, 2 for linears."""
    module = view.param.rsplit(".", 1)[0]
    if not is_conv(view):
        return 2
    return 0 if "." not in module and not module.isdigit() else 1


def _block_input(views, main, block: str, first: MatrixView) -> MatrixView | None:
    """The main-path matrix just before `block` (prefix) starts: what the block reads."""
    start = next((i for i, v in enumerate(main) if block and v.param.startswith(block)), None)
    if start is not None:
        return main[start - 1] if start > 0 else None
    at = views.index(first)
    before = [v for v in views[:at] if v in main]
    return before[-1] if before else None


# ------------------------------------------------------------------ diffusers UNets


def is_unet(views: Sequence[MatrixView]) -> bool:
    """diffusers UNet2DModel / UNet2DConditionModel by its module names."""
    params = {v.param for v in views}
    return (
        "conv_in.weight" in params
        and any(p.startswith("down_blocks.") for p in params)
        and any(p.startswith("up_blocks.") for p in params)
    )


@dataclass
class _Unit:
    """One step of the UNet's forward path: the views reading its input, the one writing
    its output, and whether its input is the up path's concat with a skip."""

    name: str
    ins: list[MatrixView] = field(default_factory=list)
    out: MatrixView | None = None
    concat: bool = False


class _UNet:
    """Builds the pairs of a diffusers UNet, unit by unit (docs/pairs.md#unets)."""

    def __init__(self, views: Sequence[MatrixView], config: Mapping):
        self.by_param = {v.param: v for v in views}
        self.views = views
        self.config = config
        self.result = PresetResult([], [], [], "unet")

    def get(self, name: str) -> MatrixView | None:
        """The view of parameter ``name.weight``, if analysed."""
        return self.by_param.get(f"{name}.weight")

    def count(self, prefix: str) -> int:
        """How many numbered children ``prefix.N`` exist."""
        found = {
            int(p[len(prefix) + 1 :].split(".")[0])
            for p in self.by_param
            if p.startswith(prefix + ".") and p[len(prefix) + 1 :].split(".")[0].isdigit()
        }
        return max(found) + 1 if found else 0

    def conv_unit(self, name: str) -> _Unit | None:
        """A lone conv (conv_in, a down/upsampler, conv_out)."""
        view = self.get(name)
        return _Unit(name, [view], view) if view is not None else None

    def resnet_unit(self, prefix: str) -> _Unit:
        """A ResnetBlock2D: conv1 → conv2; the time embedding feeds time_emb_proj."""
        conv1, conv2 = self.get(f"{prefix}.conv1"), self.get(f"{prefix}.conv2")
        shortcut = self.get(f"{prefix}.conv_shortcut")
        temb, time_proj = self.get("time_embedding.linear_2"), self.get(f"{prefix}.time_emb_proj")
        if conv1 is not None and conv2 is not None:
            link(conv1, conv2, self.result)
        if temb is not None and time_proj is not None:
            self.result.pairs.append(
                PairSpec(temb.name, "u", time_proj.name, "v", "time-embed-to-resnet")
            )
        ins = [v for v in (conv1, shortcut) if v is not None]
        return _Unit(prefix, ins, conv2)

    def attention_unit(self, prefix: str, where: int | None) -> _Unit | None:
        """An Attention (UNet2DModel) or a Transformer2DModel (UNet2DConditionModel)."""
        block = _attention.Block(prefix, 0)
        if self.get(f"{prefix}.proj_in") is not None:
            return self._transformer_unit(prefix, where)
        for v in self.views:
            if v.param.startswith(prefix + "."):
                rest = ["attn", *v.param[len(prefix) + 1 :].split(".")]
                _attention.classify(block, v, rest)
        attn = block.attentions.get("attn")
        if attn is None or attn.q is None:
            return None
        _attention.head_pairs(block, attn, self._heads(attn, where, transformer=False), self.result)
        return _Unit(prefix, [attn.q], attn.o)

    def _transformer_unit(self, prefix: str, where: int | None) -> _Unit:
        """proj_in → transformer blocks (attn1, attn2, GEGLU ff) → proj_out."""
        proj_in, proj_out = self.get(f"{prefix}.proj_in"), self.get(f"{prefix}.proj_out")
        chain = f"{prefix}.transformer_blocks"
        blocks = []
        for t in range(self.count(chain)):
            block = _attention.Block(chain, t)
            for v in self.views:
                if v.param.startswith(f"{chain}.{t}."):
                    _attention.classify(
                        block, v, v.param[len(chain) + len(str(t)) + 2 :].split(".")
                    )
            blocks.append(block)
        prev = proj_in
        for n, block in enumerate(blocks):
            attn = next(iter(block.attentions.values()), None)
            heads = self._heads(attn, where, transformer=True)
            if prev is not None and block.entry is not None:
                link(prev, block.entry, self.result)
            _attention.block_pairs(block, heads, False, [], self.result)
            if n + 1 < len(blocks):
                _attention.next_block_pairs(block, blocks[n + 1], False, self.result)
            outs = block.outputs()
            prev = outs[0] if outs else None
        if prev is not None and proj_out is not None:
            link(prev, proj_out, self.result)
        return _Unit(prefix, [proj_in] if proj_in is not None else [], proj_out)

    def _heads(self, attn, where: int | None, *, transformer: bool) -> _attention.Heads:
        """Heads of one attention from config.json, as diffusers reads it.

        UNet2DConditionModel: `num_attention_heads = num_attention_heads or attention_head_dim`
        (diffusers unet_2d_condition.py; "attention_head_dim" is historically the head count,
        diffusers issue 2011), one per down block, mid = the last, up blocks reversed.
        UNet2DModel: `heads = channels // attention_head_dim` (unet_2d_blocks.py; None: one head).
        """
        key = "num_attention_heads or attention_head_dim" if transformer else "attention_head_dim"
        unknown = _attention.Heads(None, None, key)
        if attn is None or attn.q is None or "attention_head_dim" not in self.config:
            return unknown
        if transformer:
            value = self.config.get("num_attention_heads") or self.config.get("attention_head_dim")
            if isinstance(value, (list, tuple)):
                value = value[-1] if where is None else value[where]
            heads = value
        else:
            dim = self.config.get("attention_head_dim")
            heads = 1 if dim is None else (attn.q.shape[0] // dim if isinstance(dim, int) else None)
        if not isinstance(heads, int) or heads < 1:
            return unknown
        return _attention.Heads(heads, heads, key)

    def units(self) -> list[_Unit]:
        """The forward path, unit by unit; the up path's resnets read a concat with a skip."""
        units: list[_Unit] = []
        skips: list[_Unit] = []
        conv_in = self.conv_unit("conv_in")
        if conv_in is not None:
            units.append(conv_in)
            skips.append(conv_in)
        n_down = self.count("down_blocks")
        for i in range(n_down):
            for unit in self._stage(f"down_blocks.{i}", i, skips=skips):
                units.append(unit)
        mid = "mid_block"
        mid_units = (
            [self.resnet_unit(f"{mid}.resnets.0")] if self.get(f"{mid}.resnets.0.conv1") else []
        )
        for j in range(self.count(f"{mid}.attentions")):
            attn = self.attention_unit(f"{mid}.attentions.{j}", None)
            mid_units += [u for u in (attn, self.resnet_unit(f"{mid}.resnets.{j + 1}")) if u]
        units += mid_units
        n_up = self.count("up_blocks")
        for i in range(n_up):
            units += self._stage(f"up_blocks.{i}", n_down - 1 - i if n_down else None, skips=None)
        conv_out = self.conv_unit("conv_out")
        if conv_out is not None:
            units.append(conv_out)
        self.skips = skips
        return units

    def _stage(self, prefix: str, where, *, skips) -> list[_Unit]:
        """A down or up block: (resnet, attention) per layer, then its down/upsampler."""
        units = []
        for j in range(self.count(f"{prefix}.resnets")):
            resnet = self.resnet_unit(f"{prefix}.resnets.{j}")
            resnet.concat = skips is None
            units.append(resnet)
            attn = self.attention_unit(f"{prefix}.attentions.{j}", where)
            if attn is not None:
                units.append(attn)
            if skips is not None:
                skips.append(units[-1])
        for sampler in ("downsamplers", "upsamplers"):
            unit = self.conv_unit(f"{prefix}.{sampler}.0.conv")
            if unit is not None:
                units.append(unit)
                if skips is not None:
                    skips.append(unit)
        return units

    def build(self) -> PresetResult:
        """Every pair of the UNet."""
        temb1, temb2 = self.get("time_embedding.linear_1"), self.get("time_embedding.linear_2")
        if temb1 is not None and temb2 is not None:
            link(temb1, temb2, self.result, "time-embed")
        units = self.units()
        skips = list(self.skips)
        for prev, unit in zip(units, units[1:], strict=False):
            if prev.out is None:
                continue
            skip = skips.pop() if unit.concat and skips else None
            for target in unit.ins:
                rule = (
                    "block-in-to-shortcut"
                    if target.param.endswith("conv_shortcut.weight")
                    else None
                )
                if unit.concat:
                    self._concat_pairs(prev.out, skip, target, rule)
                else:
                    link(prev.out, target, self.result, rule)
        _attention.merge_cross_notes(self.result)
        return self.result

    def _concat_pairs(self, main, skip, target, rule) -> None:
        """An up resnet reads cat([h, skip], dim=1): h pairs with the first channels of its
        input, the skip (a down-path output) with the rest (diffusers' `torch.cat` order)."""
        width = in_width(target)
        c_h = main.shape[0]
        c_s = skip.out.shape[0] if skip is not None and skip.out is not None else None
        if c_s is None or c_h + c_s != width:
            self.result.skipped.append((f"{main.name} → {target.name}", (
                f"the up path's concat: {c_h} + {c_s} channels do not make the "
                f"{width} input channels"
            )))  # fmt: skip
            return
        self.result.pairs.append(PairSpec(
            main.name, "u", target.name, "v", rule or "conv-centre-tap",
            second_ops=(("cols", 0, c_h, 1),), options={"channels": [0, c_h]},
        ))  # fmt: skip
        self.result.pairs.append(PairSpec(
            skip.out.name, "u", target.name, "v", "unet-skip",
            second_ops=(("cols", c_h, width, 1),), options={"channels": [c_h, width]},
        ))  # fmt: skip


def unet(views: Sequence[MatrixView], config: Mapping) -> PresetResult:
    """Pairs of a diffusers UNet2DModel / UNet2DConditionModel (docs/pairs.md#unets)."""
    return _UNet(views, config).build()
