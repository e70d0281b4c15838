"""Transformer presets (docs/pairs.md#transformers): attention blocks recognised by parameter
names, chains of numbered blocks (one per encoder/decoder stack), heads from config.json."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..naming import split_slice
from ..views import MatrixView
from ._specs import PairSpec, PresetResult, cfg_int, is_conv, link

# The module that holds one attention: its name, lower-cased, as a path component.
SELF_ROOTS = {
    "attention", "attn", "self_attn", "self_attention", "selfattention", "attn1", "mixer",
}  # fmt: skip
CROSS_ROOTS = {
    "encdecattention", "encoder_attn", "crossattention", "cross_attn", "cross_attention",
    "src_attn", "attn2",
}  # fmt: skip
Q_LEAVES = {"q", "q_proj", "query", "to_q", "wq", "q_lin", "q_attn"}
K_LEAVES = {"k", "k_proj", "key", "to_k", "wk", "k_lin"}
V_LEAVES = {"v", "v_proj", "value", "to_v", "wv", "v_lin"}
O_LEAVES = {"o", "o_proj", "out_proj", "dense", "c_proj", "proj", "wo", "out_lin", "to_out"}
_MLP_IN = {
    "dense_h_to_4h", "c_fc", "gate_proj", "up_proj", "fc_in", "w1", "w3", "fc1", "wi", "wi_0",
    "wi_1", "linear1", "lin1", "gate_up_proj",
}  # fmt: skip
_MLP_OUT = {"dense_4h_to_h", "c_proj", "down_proj", "fc_out", "w2", "fc2", "wo", "linear2", "lin2"}
_ROUTERS = {"gate", "router"}
_POSITIONAL = re.compile(r"wpe|position|positional|pos_emb|token_type|relative", re.IGNORECASE)
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.*)$")
# GPT-J, Phi, CodeGen: attention and MLP read the same normed input (a parallel block).
_PARALLEL_MODEL_TYPES = {"gptj", "phi", "codegen"}


@dataclass
class Attention:
    """One attention module: whole fused QKV, W_Q/W_K/W_V, W_O; cross: K and V read the
    encoder output."""

    root: str
    cross: bool = False
    qkv: MatrixView | None = None
    q: MatrixView | None = None
    k: MatrixView | None = None
    v: MatrixView | None = None
    o: MatrixView | None = None

    @property
    def entry(self) -> MatrixView | None:
        """What "the attention's input" means as a pair target: the fused matrix, else W_Q."""
        return self.qkv or self.q


@dataclass
class Ffn:
    """One feed-forward unit (the MLP, or one expert): its inputs (gate and up) and output."""

    name: str
    ins: list[MatrixView] = field(default_factory=list)
    out: MatrixView | None = None


@dataclass
class Block:
    """The roles found in one numbered block: attentions in order (self before cross), FFNs."""

    chain: str
    index: int
    attentions: dict[str, Attention] = field(default_factory=dict)
    ffns: dict[str, Ffn] = field(default_factory=dict)
    routers: list[MatrixView] = field(default_factory=list)

    @property
    def selfs(self) -> list[Attention]:
        """Self-attentions in order."""
        return [a for a in self.attentions.values() if not a.cross]

    @property
    def crosses(self) -> list[Attention]:
        """Cross-attentions in order."""
        return [a for a in self.attentions.values() if a.cross]

    @property
    def entry(self) -> MatrixView | None:
        """The block's QKV target: its first self-attention's fused matrix or W_Q."""
        first = next(iter(self.selfs), None)
        return first.entry if first is not None else None

    def outputs(self) -> list[MatrixView]:
        """What writes the block's output: every FFN output, else the last attention's W_O."""
        outs = [f.out for f in self.ffns.values() if f.out is not None]
        if outs:
            return outs
        last = list(self.attentions.values())[-1:] if self.attentions else []
        return [a.o for a in last if a.o is not None]


def attention_root(parts: Sequence[str]) -> int | None:
    """Index of the first path component naming an attention module, or None."""
    for i, part in enumerate(parts):
        if part.lower() in SELF_ROOTS or part.lower() in CROSS_ROOTS:
            return i
    return None


def recognises(views: Sequence[MatrixView]) -> bool:
    """Whether any view is an attention projection (fused QKV, or a W_Q under an attention)."""
    for v in views:
        parts = split_slice(v.param)[0].split(".")
        owner = parts[-2] if len(parts) >= 2 else ""
        if v.kind in ("qkv_fused", "qkv_part") or owner == "q_proj":
            return True
        root = attention_root(parts[:-2])
        if root is not None and owner.lower() in Q_LEAVES:
            return True
    return False


def classify(block: Block, v: MatrixView, rest: list[str]) -> bool:
    """Put view `v` (path `rest` inside its block, leaf last) in its role; False if none."""
    parts = rest[:-1]  # module path inside the block
    owner = parts[-1] if parts else ""
    if v.param.endswith("in_proj_weight"):  # torch.nn.MultiheadAttention
        parts, owner = [*parts, "in_proj"], "in_proj"
    if owner.isdigit() and len(parts) >= 2 and parts[-2] == "to_out":  # diffusers to_out.0
        owner = "to_out"
    low = owner.lower()
    root = attention_root(parts[:-1]) if len(parts) >= 2 else None
    if root is not None:
        key = ".".join(parts[: root + 1])
        attn = block.attentions.setdefault(
            key, Attention(key, cross=parts[root].lower() in CROSS_ROOTS)
        )
        if v.kind == "qkv_fused":
            attn.qkv = v
        elif v.kind == "qkv_part":
            setattr(attn, v.part, v)
        elif low in Q_LEAVES | K_LEAVES | V_LEAVES and not (low == "v" and attn.v is not None):
            role = "q" if low in Q_LEAVES else "k" if low in K_LEAVES else "v"
            setattr(attn, role, v)
        elif low in O_LEAVES:
            attn.o = v
        else:
            return False
        return True
    return _classify_ffn(block, v, parts, low)


def _classify_ffn(block: Block, v: MatrixView, parts: list[str], low: str) -> bool:
    """MLP, expert and router roles of a view outside any attention module."""
    if "experts" in parts and v.kind != "expert":  # per-expert linears: experts.3.w1
        e = parts[parts.index("experts") + 1] if parts.index("experts") + 1 < len(parts) else ""
        unit = block.ffns.setdefault(f"expert {e}", Ffn(f"expert {e}"))
    elif v.kind == "expert":  # stacked experts, one view per expert (and gate/up half)
        e = (v.part or "").split(",")[0]
        unit = block.ffns.setdefault(f"expert {e}", Ffn(f"expert {e}"))
        low = parts[-1].lower() if parts and parts[-1] != "experts" else v.param.rsplit(".")[-1]
    else:
        unit = None
    if low in _ROUTERS and unit is None:
        block.routers.append(v)
        return True
    bert_in = low == "dense" and "intermediate" in parts
    bert_out = low == "dense" and "output" in parts
    ff_in = low == "proj" and parts[-3:-1] == ["net", "0"]  # diffusers FeedForward net.0.proj
    ff_out = low == "2" and parts[-2:-1] == ["net"]
    is_in = low in _MLP_IN or bert_in or ff_in
    is_out = low in _MLP_OUT or bert_out or ff_out
    if not is_in and not is_out:
        return False
    if unit is None:
        unit = block.ffns.setdefault("mlp", Ffn("mlp"))
    if is_in:
        unit.ins.append(v)
    elif unit.out is None:
        unit.out = v
    else:
        return False
    return True


def blocks_of(views: Sequence[MatrixView]) -> tuple[dict[str, list[Block]], list[MatrixView]]:
    """Numbered blocks per chain (the name before the first ``.N.``), and the views outside."""
    chains: dict[str, dict[int, Block]] = {}
    outside = []
    for v in views:
        m = _BLOCK.match(v.param)
        if not m:
            outside.append(v)
            continue
        chain, index = m.group(1), int(m.group(2))
        block = chains.setdefault(chain, {}).setdefault(index, Block(chain, index))
        # a view with no role (a relative position bias, …) is in no pair: plan_pairs lists it
        classify(block, v, m.group(3).split("."))
    ordered = {c: [b[i] for i in sorted(b)] for c, b in chains.items()}
    # chains without attention (a convolutional stem numbered like a block) stay outside
    for chain in [c for c, bs in ordered.items() if not any(b.attentions for b in bs)]:
        del ordered[chain]
        outside.extend(v for v in views if v.param.startswith(chain + "."))
    return ordered, outside


def chain_role(chain: str) -> str:
    """ "encoder", "decoder" or "" from the chain's path components."""
    parts = chain.lower().split(".")
    if "decoder" in parts:
        return "decoder"
    if "encoder" in parts:
        return "encoder"
    return ""


@dataclass
class Heads:
    """Head counts of one chain, or the config key to add."""

    heads: int | None
    kv_heads: int | None
    missing: str
    head_dim: int | None = None


def chain_heads(config: Mapping, role: str, found: int | None) -> Heads:
    """Query and key/value head counts of a chain from config.json (docs/pairs.md#transformers)."""
    keys = ("num_attention_heads", "n_head", "n_heads", "num_heads")
    missing = "num_attention_heads"
    if role:  # Whisper, BART, …: encoder_attention_heads / decoder_attention_heads
        keys = (f"{role}_attention_heads", *keys)
        if cfg_int(config, f"{role}_attention_heads") is None and cfg_int(config, *keys) is None:
            missing = f"{role}_attention_heads"
    heads = found or cfg_int(config, *keys)
    kv = cfg_int(config, "num_key_value_heads", "n_head_kv") or heads
    return Heads(heads, kv, missing, cfg_int(config, "d_kv"))


def token_embeddings(
    outside: Sequence[MatrixView], chains: Sequence[str], aliases: Mapping[str, str]
) -> dict[str, tuple]:
    """chain → (embedding view, side) of its token embedding: one under the chain's root,
    else one tied to an alias under the chain's root (T5's decoder.embed_tokens), else one
    under no chain's root. An ``embedding`` view (d, vocab) gives u; a (vocab, d)
    table viewed as a linear (T5's ``shared``) gives v, the space its rows live in."""
    candidates = []
    for v in outside:
        module = split_slice(v.param)[0].rsplit(".", 1)[0]
        leaf = module.rsplit(".", 1)[-1]
        if v.kind == "embedding" and not _POSITIONAL.search(leaf):
            candidates.append((v, "u"))
        elif v.kind == "linear" and leaf == "shared":
            candidates.append((v, "v"))
    roots = {c: c.rsplit(".", 1)[0] + "." if "." in c else "" for c in chains}
    found = {}
    for chain in chains:
        root = roots[chain]
        own = [c for c in candidates if root and c[0].param.startswith(root)]
        tied = [
            c for c in candidates
            if any(a.startswith(root) and p == c[0].param for a, p in aliases.items() if root)
        ]  # fmt: skip
        free = [
            c for c in candidates if not any(r and c[0].param.startswith(r) for r in roots.values())
        ]
        pick = own or tied or free
        if pick:
            found[chain] = pick[0]
    return found


def front_convs(outside: Sequence[MatrixView], chain: str, chains: Sequence[str]) -> list:
    """Convolutions before a chain's first block (Whisper's conv1/conv2, a ViT's patch
    embedding): under the chain's root, else under no chain's root."""
    root = chain.rsplit(".", 1)[0] + "." if "." in chain else ""
    convs = [v for v in outside if is_conv(v)]
    own = [v for v in convs if root and v.param.startswith(root)]
    if own:
        return own
    roots = [c.rsplit(".", 1)[0] + "." for c in chains if "." in c]
    return [v for v in convs if not any(v.param.startswith(r) for r in roots)]


def preset_name(chains: Mapping[str, list[Block]], outside, config: Mapping) -> str:
    """The preset's name from the layout: gpt-neox, gpt2, llama (as before), else t5, bert,
    vit, whisper, mixtral, or transformer."""
    attns = [a for bs in chains.values() for b in bs for a in b.attentions.values()]
    fused = [a.qkv for a in attns if a.qkv is not None]
    owners = {split_slice(v.param)[0].split(".")[-2] for v in fused}
    roles = {chain_role(c) for c in chains}
    experts = any(
        f.name.startswith("expert") for bs in chains.values() for b in bs for f in b.ffns.values()
    )
    convs = any(is_conv(v) for v in outside)
    q_leaves = {
        split_slice(a.q.param)[0].split(".")[-2] for a in attns if a.q is not None and a.qkv is None
    }
    if experts:
        return "mixtral"
    if "decoder" in roles and "encoder" in roles and convs:
        return "whisper"
    if fused:
        if "query_key_value" in owners:
            return "gpt-neox"
        if "c_attn" in owners:
            return "gpt2"
        return "vit" if owners == {"qkv"} and convs else "transformer"
    if q_leaves == {"q"}:
        return "t5"
    if q_leaves == {"query"}:
        return "vit" if convs else "bert"
    if q_leaves == {"q_proj"} and len(chains) == 1 and not any(a.cross for a in attns):
        return "llama"
    return "transformer"


def transformer(
    views: Sequence[MatrixView], config: Mapping, aliases: Mapping[str, str] | None = None
) -> PresetResult:
    """Pairs of every chain of numbered attention blocks (docs/pairs.md#transformers)."""
    chains, outside = blocks_of(views)
    preset = preset_name(chains, outside, config)
    model_type = str(config.get("model_type") or "").lower()
    parallel = (
        preset == "gpt-neox" and bool(config.get("use_parallel_residual", True))
    ) or model_type in _PARALLEL_MODEL_TYPES
    result = PresetResult([], [], [], preset)
    if parallel:
        result.notes.append(
            "parallel residual (use_parallel_residual): attention and MLP read the same "
            "input, so W_O and MLP_out each pair with the next block's QKV and MLP_in"
        )
    embeds = token_embeddings(outside, list(chains), aliases or {})
    encoder = next((c for c in chains if chain_role(c) == "encoder"), None)
    encoder_out = chains[encoder][-1].outputs() if encoder is not None else []
    for chain, blocks in chains.items():
        found = next(
            (op[1] for b in blocks for a in b.attentions.values() for part in (a.q, a.k, a.v)
             if part is not None for op in part.ops if op[0] == "heads"),
            None,
        )  # fmt: skip
        heads = chain_heads(config, chain_role(chain), found)
        if preset == "vit" and heads.heads is None and not config:
            heads.missing = "num_heads"  # timm's name; a timm checkpoint has no config.json
        _chain_input(chain, blocks, embeds.get(chain), outside, list(chains), parallel, result)
        for n, block in enumerate(blocks):
            nxt = blocks[n + 1] if n + 1 < len(blocks) else None
            block_pairs(block, heads, parallel, encoder_out, result)
            if nxt is not None:
                next_block_pairs(block, nxt, parallel, result)
    _moe_notes(chains, result)
    merge_cross_notes(result)
    return result


_EXTERNAL = (
    "cross-attention K and V read an encoder outside this model (encoder_hidden_states), "
    "so nothing in it pairs with them (their per-head pairs stay): "
)


def merge_cross_notes(result: PresetResult) -> None:
    """One note for every cross-attention whose K and V read an external encoder."""
    names = [n[len(_EXTERNAL) :] for n in result.notes if n.startswith(_EXTERNAL)]
    if names:
        result.notes[:] = [n for n in result.notes if not n.startswith(_EXTERNAL)]
        result.notes.append(_EXTERNAL + ", ".join(names))


def _chain_input(chain, blocks, embed, outside, chains, parallel, result) -> None:
    """Token embedding (or conv front-end) → the chain's first QKV (and MLP_in, parallel)."""
    first = blocks[0]
    convs = front_convs(outside, chain, chains)
    for a, b in zip(convs, convs[1:], strict=False):
        link(a, b, result)
    sources = []
    if embed is not None:
        sources.append(embed)
    if convs:
        sources.append((convs[-1], "u"))
    for source, side in sources:
        if first.entry is not None:
            result.pairs.append(PairSpec(source.name, side, first.entry.name, "v", "embed-to-qkv"))
        if parallel:
            for ffn in first.ffns.values():
                for mlp_in in ffn.ins:
                    result.pairs.append(PairSpec(
                        source.name, side, mlp_in.name, "v", "parallel-residual:embed-to-mlp-in"
                    ))  # fmt: skip


def block_pairs(block: Block, heads: Heads, parallel: bool, encoder_out, result) -> None:
    """Inside one block: per-head pairs, attention → attention → MLP, MLP in → out."""
    add = result.pairs.append
    for attn in block.attentions.values():
        head_pairs(block, attn, heads, result)
    attns = list(block.attentions.values())
    for prev, cross in zip(attns, attns[1:], strict=False):
        if cross.cross and prev.o is not None and cross.q is not None:
            add(PairSpec(prev.o.name, "u", cross.q.name, "v", "o-to-cross-q"))
    for cross in block.crosses:
        if not encoder_out:
            parts = [p.name for p in (cross.k, cross.v) if p is not None]
            result.notes.append(_EXTERNAL + ", ".join(parts))
        for out in encoder_out:
            for part in (cross.k, cross.v):
                if part is not None:
                    add(PairSpec(out.name, "u", part.name, "v", "encoder-out-to-cross-kv"))
    last_o = attns[-1].o if attns else None
    for ffn in block.ffns.values():
        for mlp_in in ffn.ins:
            if last_o is not None and not parallel:
                add(PairSpec(last_o.name, "u", mlp_in.name, "v", "o-to-mlp-in"))
            if ffn.out is None:
                continue
            inner = ffn.out.shape[1]
            if mlp_in.param.endswith("net.0.proj.weight") and mlp_in.shape[0] == 2 * inner:
                # diffusers GEGLU: `hidden, gate = proj(x).chunk(2, dim=-1)`, out = hidden·gelu(gate)
                add(PairSpec(mlp_in.name, "u", ffn.out.name, "v", "mlp-in-to-out",
                             first_ops=(("rows", 0, inner, 1),), options={"glu": "value"}))  # fmt: skip
            else:
                add(PairSpec(mlp_in.name, "u", ffn.out.name, "v", "mlp-in-to-out"))


def next_block_pairs(block: Block, nxt: Block, parallel: bool, result) -> None:
    """Block → next block: MLP out → next QKV; with a parallel residual also W_O → both."""
    add = result.pairs.append
    target = nxt.entry
    outs = [f.out for f in block.ffns.values() if f.out is not None]
    if target is not None:
        for out in outs:
            add(PairSpec(out.name, "u", target.name, "v", "mlp-out-to-next-qkv"))
    if not parallel:
        return
    o = block.selfs[0].o if block.selfs else None
    if o is not None and target is not None:
        add(PairSpec(o.name, "u", target.name, "v", "parallel-residual:o-to-next-qkv"))
    for ffn in nxt.ffns.values():
        for mlp_in in ffn.ins:
            if o is not None:
                add(PairSpec(o.name, "u", mlp_in.name, "v", "parallel-residual:o-to-next-mlp-in"))
            for out in outs:
                add(PairSpec(
                    out.name, "u", mlp_in.name, "v", "parallel-residual:mlp-out-to-next-mlp-in"
                ))  # fmt: skip


def head_pairs(block: Block, attn: Attention, heads: Heads, result: PresetResult) -> None:
    """W_Q ↔ W_K (u, u) and W_V → W_O (u, v) per head, or the reason they are skipped."""
    wanted = [("q-k-per-head", attn.q, attn.k), ("v-o-per-head", attn.v, attn.o)]
    n, kv = heads.heads, heads.kv_heads
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
        if not n or not kv or n % kv:
            result.skipped.append((desc, (
                f"head count unknown: add config.json ({heads.missing}) or give heads "
                "in a pairs file"
            )))  # fmt: skip
            continue
        if rule == "q-k-per-head":
            ops = (("row_blocks", n),), (("row_blocks", kv),)
            sides = ("u", "u")
        else:
            ops = (("row_blocks", kv),), (("col_blocks", n),)
            sides = ("u", "v")
        if (
            a.shape[0] % ops[0][0][1]
            or (b.shape[0] if sides[1] == "u" else b.shape[1]) % ops[1][0][1]
        ):
            result.skipped.append((desc, f"{n} heads do not divide the matrix sizes"))
            continue
        result.pairs.append(PairSpec(
            a.name, sides[0], b.name, sides[1], rule, first_ops=ops[0], second_ops=ops[1],
            options={"heads": n, "kv_heads": kv},
        ))  # fmt: skip


def _moe_notes(chains: Mapping[str, list[Block]], result: PresetResult) -> None:
    """Say how experts pair, and that routers are in no pair."""
    routers = [r.name for bs in chains.values() for b in bs for r in b.routers]
    experts = any(
        f.name.startswith("expert") for bs in chains.values() for b in bs for f in b.ffns.values()
    )
    if experts:
        result.notes.append(
            "mixture of experts: each expert's inputs read W_O's output (o-to-mlp-in) and feed "
            "that expert's output (mlp-in-to-out), which feeds the next block's QKV"
        )
    if routers:
        result.notes.append(
            "routers compute routing weights, not features: in no pair: " + ", ".join(routers)
        )
