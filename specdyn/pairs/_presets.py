"""Architecture presets for `specdyn.pairs`: which matrices feed which (docs/pairs.md#presets)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..naming import split_slice
from ..views import MatrixView, ViewPlan

GATE_LETTERS = ("i", "f", "g", "o", "r", "z", "n")

_CONV_KINDS = ("conv", "conv_transpose")
_SEQUENTIAL_KINDS = {"linear", "conv", "conv_transpose"}
_ATTN_MODULES = {"attention", "attn", "self_attn", "self_attention"}
_MLP_MODULES = {"mlp", "feed_forward", "ffn"}
_O_LEAVES = {"dense", "o_proj", "c_proj", "out_proj"}
_MLP_IN_LEAVES = {"dense_h_to_4h", "c_fc", "gate_proj", "up_proj", "fc_in", "w1", "w3"}
_MLP_OUT_LEAVES = {"dense_4h_to_h", "c_proj", "down_proj", "fc_out", "w2"}
_RNN_NAME = re.compile(r"^(.*)\.weight_(ih|hh)_l(\d+)(_reverse)?$")
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class PairSpec:
    """A pair as a preset states it: matrix names, sides, operand ops, rule, options."""

    first: str
    first_side: str
    second: str
    second_side: str
    rule: str
    first_ops: tuple = ()
    second_ops: tuple = ()
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PresetResult:
    """What a preset found: pair specs, (description, reason) skips, notes, preset name."""

    pairs: list[PairSpec]
    skipped: list[tuple[str, str]]
    notes: list[str]
    preset: str


# Tap modes besides explicit kernel indices: the centre tap (k//2 in every spatial dim;
# for an even k the upper of the two central taps), every tap kept, or their mean.
TAP_MODES = ("centre", "all", "mean")


@dataclass(frozen=True)
class Tap:
    """A conv kernel tap: per-spatial-dim indices (or "all"/"mean") and the column op
    selecting it from the (c_out, c_in·∏k) view."""

    index: tuple[int, ...] | str
    op: tuple

    @property
    def option(self) -> list[int] | str:
        """The JSON value recorded as the pair's ``tap`` option."""
        return self.index if isinstance(self.index, str) else list(self.index)


def conv_tap(where: str, view: MatrixView, tap: Any, error: type[Exception]) -> Tap:
    """The column slice of a (c_out, c_in·∏k) conv view at one kernel tap ("centre" or
    indices), or the ∏k strided slices of every tap ("all" / "mean")."""
    kernel = tuple(view.source_shape[2:])
    taps = math.prod(kernel)
    if tap in ("all", "mean"):
        # columns are c_in-major (c·∏k + flat tap): tap t is every ∏k-th column from t
        return Tap(tap, ("col_taps", taps))
    if tap == "centre" or tap == "center":
        index = tuple(k // 2 for k in kernel)
    elif isinstance(tap, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in tap):
        index = tuple(tap)
        if len(index) != len(kernel) or any(
            not 0 <= i < k for i, k in zip(index, kernel, strict=True)
        ):
            raise error(
                f"{where}: tap {tap!r} does not fit kernel {'×'.join(map(str, kernel))} "
                f"of {view.name}"
            )
    else:
        raise error(
            f'{where}: tap {tap!r}: write "centre", "all", "mean" or a list of kernel indices'
        )
    flat = 0
    for i, k in zip(index, kernel, strict=True):
        flat = flat * k + i
    return Tap(index, ("cols", flat, view.shape[1], taps))


def is_conv(view: MatrixView) -> bool:
    """Whether a view is a (transposed) convolution kernel, flattened to (c_out, c_in·∏k)."""
    return view.kind in _CONV_KINDS


def detect(plan: ViewPlan, config: Mapping, gate: str) -> PresetResult:
    """Pick the preset that recognises the plan's matrices and state its pairs."""
    views = plan.matrices
    if any(v.kind in ("qkv_fused", "qkv_part") or _leaf_module(v.param) == "q_proj" for v in views):
        return _transformer(views, config)
    if any(v.kind == "rnn_gate" for v in views):
        return _lstm(views, gate)
    if views and all(v.kind in _SEQUENTIAL_KINDS for v in views):
        return _sequential(views)
    return _shape_chain(views)


# ------------------------------------------------------------------ sequential


def _sequential(views: Sequence[MatrixView]) -> PresetResult:
    """Layer i → layer i+1 in forward order; conv targets are cut to a tap by specdyn.pairs."""
    result = PresetResult([], [], [], "sequential")
    grouped: set[str] = set()
    for a, b in zip(views, views[1:], strict=False):
        desc = f"{a.name} → {b.name}"
        if b.kind in _CONV_KINDS:
            taps = math.prod(b.source_shape[2:])
            per_group = b.shape[1] // taps
            if a.shape[0] != per_group and a.shape[0] % per_group == 0:
                grouped.add(b.name)
                result.skipped.append((desc, (
                    f"grouped/depthwise conv ({per_group} input channels per group of "
                    f"{a.shape[0]}): no pair rule; write a pairs file to pair it"
                )))  # fmt: skip
                continue
        if a.name in grouped:
            result.skipped.append((desc, "grouped/depthwise conv: no pair rule"))
            continue
        if a.kind in _CONV_KINDS and b.kind == "linear" and a.shape[0] != b.shape[1]:
            result.skipped.append((desc, (
                f"conv → linear after flatten: {a.shape[0]} channels vs {b.shape[1]} input "
                "features (flatten mixes spatial positions); dimensions do not match"
            )))  # fmt: skip
            continue
        if b.kind in _CONV_KINDS:
            # the tap (and the conv alignment definition) is added by specdyn.pairs
            result.pairs.append(PairSpec(a.name, "u", b.name, "v", "conv-centre-tap"))
        else:
            result.pairs.append(PairSpec(a.name, "u", b.name, "v", "sequential"))
    return result


def _shape_chain(views: Sequence[MatrixView]) -> PresetResult:
    """Unrecognised architecture: consecutive pairs only when all of them chain by shape."""
    whole = [v for v in views if v.part is None]
    problem = None
    if len(whole) < 2:
        problem = f"{len(whole)} matrix(es), nothing to chain"
    elif any(v.kind in _CONV_KINDS or v.kind == "expert" for v in whole):
        problem = "convolutions or experts mixed with other matrix kinds"
    else:
        for a, b in zip(whole, whole[1:], strict=False):
            if a.shape[0] != b.shape[1]:
                problem = f"{a.name} has {a.shape[0]} outputs but {b.name} {b.shape[1]} inputs"
                break
    if problem is not None:
        return PresetResult([], [], [(
            "no preset recognises this architecture and its matrices do not form one "
            f"unambiguous shape chain ({problem}); no pairs: write a pairs file "
            "(docs/pairs.md) and pass --pairs"
        )], "none")  # fmt: skip
    pairs = [
        PairSpec(a.name, "u", b.name, "v", "shape-chain")
        for a, b in zip(whole, whole[1:], strict=False)
    ]
    note = (
        "no preset recognises this architecture; pairs follow the shape chain of the "
        "matrices in forward order (rule shape-chain): check them, or write a pairs file"
    )
    return PresetResult(pairs, [], [note], "shape-chain")


# ------------------------------------------------------------------ LSTM


def _lstm(views: Sequence[MatrixView], gate: str) -> PresetResult:
    """LSTM/GRU pairs on one gate block: depth, input → hidden, hidden → next input."""
    result = PresetResult([], [], [], "lstm")
    cells: dict[tuple[str, int, bool], dict[str, MatrixView]] = {}
    letters: set[str] = set()
    for v in views:
        if v.kind != "rnn_gate":
            continue
        letters.add(v.part)
        m = _RNN_NAME.match(v.param)
        if m and v.part == gate:
            module, which, layer, reverse = m.groups()
            cells.setdefault((module, int(layer), bool(reverse)), {})[which] = v
    if gate not in letters:
        result.notes.append(
            f"gate {gate!r} is not a gate block of this network (blocks: "
            f"{' '.join(sorted(letters))}); no LSTM pairs: pass --gate with one of them"
        )
        return result
    opts = {"gate": gate}
    for module in sorted({k[0] for k in cells}):
        layers = sorted({k[1] for k in cells if k[0] == module})
        directions = [False, True] if any(k[0] == module and k[2] for k in cells) else [False]
        for layer in layers:
            for rev in directions:
                cell = cells.get((module, layer, rev), {})
                if "ih" in cell and "hh" in cell:
                    result.pairs.append(PairSpec(
                        cell["ih"].name, "u", cell["hh"].name, "v", "lstm-ih-to-hh", options=opts
                    ))  # fmt: skip
            if layer + 1 not in layers:
                continue
            for src_rev in directions:
                src = cells.get((module, layer, src_rev), {})
                for dst_rev in directions:
                    dst = cells.get((module, layer + 1, dst_rev), {}).get("ih")
                    if dst is None:
                        continue
                    ops: tuple = ()
                    options = dict(opts)
                    if len(directions) == 2:
                        half = dst.shape[1] // 2
                        ops = (("cols", half, 2 * half, 1) if src_rev else ("cols", 0, half, 1),)
                        options["half"] = "reverse" if src_rev else "forward"
                    for which, rule in (("ih", "lstm-depth"), ("hh", "lstm-hh-to-ih")):
                        if which in src:
                            result.pairs.append(PairSpec(
                                src[which].name, "u", dst.name, "v", rule,
                                second_ops=ops, options=options,
                            ))  # fmt: skip
    return result


# ------------------------------------------------------------------ transformers


@dataclass
class _Block:
    """The roles found in one numbered transformer block."""

    index: int
    qkv: MatrixView | None = None  # what "the block's QKV" means as a pair target
    q: MatrixView | None = None
    k: MatrixView | None = None
    v: MatrixView | None = None
    o: MatrixView | None = None
    mlp_in: list[MatrixView] = field(default_factory=list)
    mlp_out: MatrixView | None = None


def _transformer(views: Sequence[MatrixView], config: Mapping) -> PresetResult:
    """GPT-NeoX / GPT-2 / Llama-style blocks: embedding → QKV, heads, MLP, block → block."""
    blocks: dict[int, _Block] = {}
    embedding = next((v for v in views if v.kind == "embedding"), None)
    preset = "llama"
    heads = kv_heads = None
    for v in views:
        m = _BLOCK.match(v.param)
        if not m:
            continue
        index, rest = int(m.group(2)), m.group(3).split(".")
        block = blocks.setdefault(index, _Block(index))
        owner = rest[-2] if len(rest) >= 2 else ""
        parent = rest[-3] if len(rest) >= 3 else ""
        if v.kind == "qkv_fused":
            block.qkv = v
            preset = "gpt-neox" if owner == "query_key_value" else "gpt2"
        elif v.kind == "qkv_part":
            setattr(block, v.part, v)
            heads_op = next((op for op in v.ops if op[0] == "heads"), None)
            if heads_op is not None:
                heads = kv_heads = heads_op[1]
        elif owner in ("q_proj", "k_proj", "v_proj"):
            setattr(block, owner[0], v)
            if owner == "q_proj":
                block.qkv = v
        elif parent in _ATTN_MODULES and owner in _O_LEAVES:
            block.o = v
        elif parent in _MLP_MODULES and owner in _MLP_IN_LEAVES:
            block.mlp_in.append(v)
        elif parent in _MLP_MODULES and owner in _MLP_OUT_LEAVES:
            block.mlp_out = v
    if heads is None:
        heads = _cfg_int(config, "num_attention_heads", "n_head", "n_heads")
        kv_heads = _cfg_int(config, "num_key_value_heads", "n_head_kv") or heads
    parallel = preset == "gpt-neox" and bool(config.get("use_parallel_residual", True))
    result = PresetResult([], [], [], preset)
    if parallel:
        result.notes.append(
            "parallel residual (use_parallel_residual): attention and MLP read the same "
            "input, so W_O and MLP_out each pair with the next block's QKV and MLP_in"
        )
    add = result.pairs.append
    order = [blocks[i] for i in sorted(blocks)]
    if embedding is not None and order and order[0].qkv is not None:
        add(PairSpec(embedding.name, "u", order[0].qkv.name, "v", "embed-to-qkv"))
        if parallel:
            for mlp_in in order[0].mlp_in:
                add(PairSpec(embedding.name, "u", mlp_in.name, "v",
                             "parallel-residual:embed-to-mlp-in"))  # fmt: skip
    for n, block in enumerate(order):
        nxt = order[n + 1] if n + 1 < len(order) else None
        _head_pairs(block, heads, kv_heads, result)
        if block.o is not None and not parallel:
            for mlp_in in block.mlp_in:
                add(PairSpec(block.o.name, "u", mlp_in.name, "v", "o-to-mlp-in"))
        if block.mlp_out is not None:
            for mlp_in in block.mlp_in:
                add(PairSpec(mlp_in.name, "u", block.mlp_out.name, "v", "mlp-in-to-out"))
        if nxt is None:
            continue
        if block.mlp_out is not None and nxt.qkv is not None:
            add(PairSpec(block.mlp_out.name, "u", nxt.qkv.name, "v", "mlp-out-to-next-qkv"))
        if parallel:
            if block.o is not None and nxt.qkv is not None:
                add(PairSpec(block.o.name, "u", nxt.qkv.name, "v",
                             "parallel-residual:o-to-next-qkv"))  # fmt: skip
            for mlp_in in nxt.mlp_in:
                if block.o is not None:
                    add(PairSpec(block.o.name, "u", mlp_in.name, "v",
                                 "parallel-residual:o-to-next-mlp-in"))  # fmt: skip
                if block.mlp_out is not None:
                    add(PairSpec(block.mlp_out.name, "u", mlp_in.name, "v",
                                 "parallel-residual:mlp-out-to-next-mlp-in"))  # fmt: skip
    return result


def _head_pairs(block: _Block, heads, kv_heads, result: PresetResult) -> None:
    """W_Q ↔ W_K (u, u) and W_V → W_O (u, v) per head, or the reason they are skipped."""
    wanted = [("q-k-per-head", block.q, block.k), ("v-o-per-head", block.v, block.o)]
    for rule, a, b in wanted:
        if a is None or b is None:
            if a is not None or b is not None:
                have = (a or b).name
                result.skipped.append((
                    f"{rule} in block {block.index} ({have})",
                    "Q/K/V not split (see the skipped parameters) or W_O not found",
                ))  # fmt: skip
            continue
        desc = f"{a.name} ↔ {b.name}"
        if not heads or not kv_heads or heads % kv_heads:
            result.skipped.append((desc, (
                "head count unknown: add config.json (num_attention_heads) or give heads "
                "in a pairs file"
            )))  # fmt: skip
            continue
        if rule == "q-k-per-head":
            ops = (("row_blocks", heads),), (("row_blocks", kv_heads),)
            sides = ("u", "u")
        else:
            ops = (("row_blocks", kv_heads),), (("col_blocks", heads),)
            sides = ("u", "v")
        if (
            a.shape[0] % ops[0][0][1]
            or (b.shape[0] if sides[1] == "u" else b.shape[1]) % ops[1][0][1]
        ):
            result.skipped.append((desc, f"{heads} heads do not divide the matrix sizes"))
            continue
        result.pairs.append(PairSpec(
            a.name, sides[0], b.name, sides[1], rule, first_ops=ops[0], second_ops=ops[1],
            options={"heads": heads, "kv_heads": kv_heads},
        ))  # fmt: skip


def _cfg_int(config: Mapping, *names: str) -> int | None:
    """First integer config value under `names` (or in text_config)."""
    for scope in (config, config.get("text_config")):
        if isinstance(scope, Mapping):
            for name in names:
                if isinstance(scope.get(name), int):
                    return scope[name]
    return None


def _leaf_module(param: str) -> str:
    """The owning module's name: ``a.q_proj.weight`` → ``q_proj``."""
    parts = split_slice(param)[0].split(".")
    return parts[-2] if len(parts) >= 2 else ""
