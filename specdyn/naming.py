"""Canonical parameter names and forward-depth order (docs/views.md#canonical-names).

Two rules, applied identically to every step of every run:

* `canonicalize` strips training wrappers from raw state-dict keys so that one
  model gets the same names whether it was saved bare, under DDP/DeepSpeed
  (``module.``), after ``torch.compile`` (``_orig_mod.``) or inside a Lightning
  module (``model.``);
* `forward_sort` orders names by forward depth: embeddings first, numbered
  blocks in numeric order (``layers.10`` after ``layers.9``), an encoder before
  its decoder, attention before MLP inside a block, input projections before
  output projections, diffusers UNet blocks in the order their forward runs
  them, output heads last, and everything else in the checkpoint's module order
  (a torch pickle's key order), or natural text order where the key order is
  only a sort of the names (a safetensors header).

The rules are documented for users in ``docs/views.md``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from .errors import ViewError

__all__ = ["canonicalize", "forward_sort", "split_slice"]

# Stripped from the front of every key, repeatedly and in any combination.
_ALWAYS_STRIPPED = ("module.", "_orig_mod.")
# Stripped only when every key carries it: a single wrapper attribute of a
# training module (Lightning's `self.model`, a user's `self.net`, Fabric's
# `_forward_module`). HF Llama has `model.layers…` beside `lm_head.weight`, so
# there nothing is stripped.
_COMMON_WRAPPERS = ("model.", "net.", "network.", "_model.", "_forward_module.")


def canonicalize(keys: Sequence[str], config: Mapping | None = None) -> dict[str, str]:
    """Map raw state-dict keys to canonical parameter names.

    Rules, applied until nothing changes:

    1. ``module.`` and ``_orig_mod.`` are removed from the front of every key
       (any number, any order); ``_orig_mod.`` is also removed from inside a
       key (``torch.compile`` of a submodule).
    2. A single wrapper prefix (``model.``, ``net.``, ``network.``, ``_model.``,
       ``_forward_module.``) is removed only when *every* key carries it. When
       `config` is an HF ``config.json`` (it has ``model_type``) this step is
       not applied: HF keys are the model's own names (a tied-embedding Llama
       saves only ``model.*`` keys, which must stay as they are).

    Args:
        keys: raw keys of one checkpoint, in any order.
        config: the checkpoint's ``config.json`` as a dict, if any.

    Returns:
        dict raw key → canonical name, for every key.

    Raises:
        ViewError: two keys end up with one canonical name (e.g. a state dict
            holding both ``module.fc.weight`` and ``fc.weight``).
    """
    keys = list(keys)
    hf_names = bool(config) and isinstance(config, Mapping) and "model_type" in config
    names = {k: _strip_always(k) for k in keys}
    while not hf_names and names:
        values = list(names.values())
        wrapper = next(
            (
                w
                for w in _COMMON_WRAPPERS
                if all(v.startswith(w) and len(v) > len(w) for v in values)
            ),
            None,
        )
        if wrapper is None:
            break
        names = {k: _strip_always(v[len(wrapper) :]) for k, v in names.items()}
    seen: dict[str, str] = {}
    for raw, name in names.items():
        if name in seen:
            raise ViewError(
                f"keys {seen[name]!r} and {raw!r} both name parameter {name!r} once wrappers "
                "are stripped; save a single state dict of the model"
            )
        seen[name] = raw
    return names


def _strip_always(key: str) -> str:
    """Remove ``module.``/``_orig_mod.`` from the front and ``_orig_mod.`` from inside."""
    changed = True
    while changed:
        changed = False
        for prefix in _ALWAYS_STRIPPED:
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix) :]
                changed = True
    return key.replace("._orig_mod.", ".")


def split_slice(name: str) -> tuple[str, str | None]:
    """Split a matrix name into (parameter name, slice) — ``"a.w[q]"`` → ``("a.w", "q")``."""
    if name.endswith("]"):
        start = name.rfind("[")
        if start > 0:
            return name[:start], name[start + 1 : -1]
    return name, None


# ---------------------------------------------------------------- forward order
#
# Each name becomes a tuple of per-component keys, compared lexicographically,
# so that two names are ordered by their first differing component. A
# component's key is (rank, class, numbers, source rank, natural text):
# rank places known roles (embeddings, attention, MLP, heads); class separates
# numeric indices, RNN parameter names and plain text; numbers sort indices
# numerically; source rank keeps the checkpoint's order among equals.

_UNKNOWN = 50.0

# Only where no numbered block encloses the component ("top level").
_TOP_RANKS: dict[str, float] = {
    **dict.fromkeys(
        [
            "embed_in",
            "wte",
            "embed_tokens",
            "word_embeddings",
            "tok_embeddings",
            "token_embedding",
            "token_embeddings",
            "embedding",
            "embeddings",
            "embed",
            "encoder_embed",
            "shared",  # T5, BART: the token embedding both stacks read
        ],
        0.0,
    ),
    **dict.fromkeys(
        [
            "wpe",
            "position_embeddings",
            "position_embedding",
            "positional_embedding",
            "pos_embed",
            "pos_embedding",
            "embed_positions",
        ],
        1.0,
    ),
    "token_type_embeddings": 2.0,
    # encoder–decoder models (T5, BART, Whisper, a VAE; PyTorch's word-LM `decoder` head):
    # the encoder runs before everything unranked, the decoder after it
    "encoder": 45.0,
    "decoder": 55.0,
    # diffusers UNets and VAEs: conv_in after the time/class embeddings (which the forward
    # computes first); diffusers registers `mid_block` after `up_blocks`, its forward runs it
    # between them; conv_norm_out and conv_out after the up blocks
    "conv_in": 3.0,
    "down_blocks": 51.0,
    "mid_block": 52.0,
    "up_blocks": 53.0,
    "conv_norm_out": 89.0,
    "conv_out": 89.5,
    **dict.fromkeys(
        ["ln_f", "final_layer_norm", "final_layernorm", "final_norm", "norm", "norm_f", "ln_out"],
        90.0,
    ),
    "pooler": 95.0,
    **dict.fromkeys(
        [
            "embed_out",
            "lm_head",
            "classifier",
            "head",
            "fc_out",
            "output",
            "fc",
            "score",
            "cls",
            "qa_outputs",
            "heads",
        ],
        100.0,
    ),
}
_TOP_EMBED_RANK = 2.0  # any other top-level `*embed*` component except `embed_out`

# Only inside a numbered block (`layers.3.…`), where the names have these roles;
# matched case-insensitively. `fc1`, `fc2`, `lin1`… are left to natural order.
_BLOCK_RANKS: dict[str, float] = {
    **dict.fromkeys(
        ["attention", "attn", "self_attn", "self_attention", "selfattention", "mixer"], 10.0
    ),
    **dict.fromkeys(
        ["crossattention", "cross_attn", "cross_attention", "encoder_attn", "encdecattention"], 11.0
    ),
    **dict.fromkeys(["q_proj", "query", "q", "wq", "q_attn", "self", "to_q"], 12.0),
    **dict.fromkeys(["k_proj", "key", "k", "wk", "to_k"], 12.1),
    **dict.fromkeys(["v_proj", "value", "v", "wv", "to_v"], 12.2),
    **dict.fromkeys(
        [
            "query_key_value",
            "c_attn",
            "in_proj",
            "in_proj_weight",
            "qkv",
            "qkv_proj",
            "wqkv",
            "kv_proj",
        ],
        12.0,
    ),
    **dict.fromkeys(
        [
            "mlp",
            "feed_forward",
            "feedforward",
            "ffn",
            "densereludense",
            "block_sparse_moe",
            "moe",
            "intermediate",
        ],
        20.0,
    ),
    **dict.fromkeys(
        [
            "dense_h_to_4h",
            "c_fc",
            "fc_in",
            "gate_proj",
            "w1",
            "wi",
            "wi_0",
            "gate_up_proj",
            "gate",
            "router",
        ],
        22.0,
    ),
    **dict.fromkeys(["up_proj", "w3", "wi_1", "up"], 22.1),
    # BERT: `attention.self` (Q/K/V) before `attention.output`; `intermediate` before `output`
    **dict.fromkeys(["dense", "o_proj", "out_proj", "o", "wo", "output", "to_out"], 70.0),
    **dict.fromkeys(["dense_4h_to_h", "c_proj", "fc_out", "down_proj", "w2", "down"], 80.0),
}

# Inside `<container>.<i>` of a diffusers UNet: the order its forward uses the children in
# (ResnetBlock2D; Attention or Transformer2DModel; BasicTransformerBlock). Matched
# case-insensitively; children not listed rank as in any numbered block, after these.
_CHILD_RANKS: dict[str, dict[str, float]] = {
    "resnets": {"norm1": 1.0, "conv1": 2.0, "time_emb_proj": 3.0, "norm2": 4.0, "conv2": 5.0,
                "conv_shortcut": 6.0},
    "attentions": {"norm": 1.0, "group_norm": 1.0, "proj_in": 2.0, "transformer_blocks": 3.0,
                   "to_q": 4.0, "to_k": 4.1, "to_v": 4.2, "to_out": 5.0, "proj_out": 6.0},
    "transformer_blocks": {"norm1": 1.0, "attn1": 2.0, "norm2": 3.0, "attn2": 4.0,
                           "norm3": 5.0, "ff": 6.0},
}  # fmt: skip
# Inside `down_blocks.<i>`, `mid_block` or `up_blocks.<i>` of a diffusers UNet: resnet i, then
# attention i (interleaved by index), then the down/upsampler.
_UNET_BLOCKS = ("down_blocks", "up_blocks")
_UNET_INTERLEAVED = {"resnets": 0, "attentions": 1}
_UNET_SAMPLERS = ("downsamplers", "upsamplers")
_UNET_SAMPLER_RANK = 60.0

# A key order whose ascending runs (by code point, as safetensors sorts) average at least this
# many names is a sort of the names, not module order: safetensors writes its tensors grouped
# by dtype alignment, each group by name (one run per dtype, per shard), while a module's
# state dict descends at almost every `weight` → `bias` and block → next block.
_SORTED_RUN_LENGTH = 4

# A module's own parameters in PyTorch's registration order (weight before bias).
_LEAF_RANKS = {"weight": 49.0, "bias": 49.5}

_RNN_PARAM = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")
_RNN_TYPE = {"ih": 0, "hh": 1, "hr": 2}

# Slice letters in their natural order: q,k,v; LSTM i,f,g,o; GRU r,z,n; gate,up.
_SLICE_ORDER = {
    "q": 0, "k": 1, "v": 2,
    "i": 0, "f": 1, "g": 2, "o": 3,
    "r": 0, "z": 1, "n": 2,
    "gate": 0, "up": 1,
}  # fmt: skip


def forward_sort(names: Sequence[str], source_order: Sequence[str] | None = None) -> list[str]:
    """Order parameter or matrix names by forward depth.

    Names are compared component by component (split on ``.``), so the order
    is hierarchical. Numeric components sort numerically (``layers.10`` after
    ``layers.9``). Outside numbered blocks, input embeddings (``embed_in``,
    ``wte``, ``wpe``, ``embed_tokens``, ``word_embeddings``, ``embeddings``,
    ``embedding``, ``shared``, any ``*embed*`` but ``embed_out``) come first,
    an ``encoder`` before everything else unranked and a ``decoder`` after it
    (T5, BART, Whisper), and final norms, poolers and output heads
    (``embed_out``, ``lm_head``, ``classifier``, ``head``, ``fc``, ``fc_out``,
    ``output``, …) last. Inside a numbered block, attention comes before the
    MLP, Q/K/V (or a fused QKV: ``query_key_value``, ``c_attn``, ``in_proj``,
    ``qkv_proj``; diffusers ``to_q``, ``to_k``, ``to_v``) before the attention
    output (``dense``, ``o_proj``, ``out_proj``, ``to_out``), and MLP inputs
    (``dense_h_to_4h``, ``c_fc``, ``gate_proj`` then ``up_proj``, ``w1`` then
    ``w3``) before MLP outputs (``dense_4h_to_h``, ``c_proj``, ``down_proj``,
    ``w2``). diffusers UNets (and VAEs) go as their forward runs:
    ``conv_in`` after the time embedding, ``down_blocks``, ``mid_block``,
    ``up_blocks``, then ``conv_norm_out`` and ``conv_out``; inside a block
    ``resnets.i`` then ``attentions.i`` for i = 0, 1, … and the
    ``downsamplers``/``upsamplers`` after them; inside a resnet ``norm1``,
    ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``;
    inside an attention ``norm``, ``proj_in``, ``transformer_blocks``, ``to_q``,
    ``to_k``, ``to_v``, ``to_out``, ``proj_out``; inside a transformer block
    ``norm1``, ``attn1``, ``norm2``, ``attn2``, ``norm3``, ``ff``. RNN
    parameters go layer by layer, forward direction before ``_reverse``,
    ``weight_ih`` before ``weight_hh`` before ``weight_hr`` (biases after
    weights). A slice suffix sorts after its whole matrix, in its natural order
    (``[q] [k] [v]``; ``[i] [f] [g] [o]``; ``[r] [z] [n]``; numbers
    numerically; ``gate`` before ``up``). Components the rules cannot rank keep
    their `source_order` among themselves, else natural text order (``fc1``
    ``fc2`` … ``fc10``, ``conv1`` before ``layer1``).

    A `source_order` that is only a sort of the names says nothing about the
    forward pass and is not used: a safetensors file lists its tensors grouped
    by dtype alignment, each group sorted by name (per shard, when sharded), so
    its key order is a concatenation of a few ascending runs. The order is
    taken for such a sort when its ascending runs (by code point) average at
    least four names; a torch pickle's order (module registration order)
    descends at nearly every ``weight`` → ``bias`` and is kept.

    Args:
        names: canonical names, possibly with a ``[slice]`` suffix.
        source_order: canonical parameter names in checkpoint order (slice
            suffixes ignored); names absent from it go after those present.

    Returns:
        the names, each once, in forward order. The result depends only on the
        set of names and on `source_order`, never on the order of `names`.
    """
    if source_order is not None and _is_name_sorted(source_order):
        source_order = None
    source_rank: dict[tuple[str, ...], int] = {}
    if source_order is not None:
        for i, name in enumerate(source_order):
            parts = tuple(split_slice(name)[0].split("."))
            for depth in range(1, len(parts) + 1):
                source_rank.setdefault(parts[:depth], i)
    missing = len(source_order) if source_order is not None else 0
    unique = list(dict.fromkeys(names))
    return sorted(unique, key=lambda n: _name_key(n, source_rank, missing))


def _is_name_sorted(order: Sequence[str]) -> bool:
    """Whether a key order is only a sort of the names (a safetensors header), not module order.

    Args:
        order: parameter names (raw keys or canonical names) in checkpoint order.

    Returns:
        True when the order's ascending runs (maximal stretches where each name
        is ≥ the one before, by code point, as safetensors sorts) average at
        least four names: safetensors writes one run per dtype group and shard.
        False for shorter runs (a module's state dict) and for an empty order.
    """
    if not order:
        return False
    runs = 1 + sum(1 for a, b in zip(order, order[1:], strict=False) if a > b)
    return len(order) >= _SORTED_RUN_LENGTH * runs


def _name_key(name: str, source_rank: dict[tuple[str, ...], int], missing: int) -> tuple:
    """Sort key of one name: per-component keys, then the slice key."""
    param, part = split_slice(name)
    parts = param.split(".")
    keys = []
    top_level = True
    for depth, comp in enumerate(parts):
        src = source_rank.get(tuple(parts[: depth + 1]), missing)
        key = _unet_block_key(parts, depth, src)
        if key is None:
            keys.append(_component_key(comp, top_level, src, _container(parts, depth)))
        else:
            keys.append(key)
        if comp.isdigit():
            top_level = False
    return (tuple(keys), _slice_key(part))


def _container(parts: list[str], depth: int) -> str:
    """The `_CHILD_RANKS` container of component `depth` (``resnets`` in ``resnets.0.conv1``), or ""."""
    if depth >= 2 and parts[depth - 1].isdigit():
        container = parts[depth - 2].lower()
        if container in _CHILD_RANKS:
            return container
    return ""


def _unet_block_key(parts: list[str], depth: int, src: int) -> tuple | None:
    """Key of a child of a diffusers UNet block (resnets.i / attentions.i interleaved), else None."""
    comp = parts[depth].lower()
    if comp not in _UNET_INTERLEAVED and comp not in _UNET_SAMPLERS:
        return None
    parent = parts[depth - 1].lower() if depth >= 1 else ""
    in_block = parent == "mid_block" or (
        depth >= 2 and parent.isdigit() and parts[depth - 2].lower() in _UNET_BLOCKS
    )
    if not in_block:
        return None
    if comp in _UNET_SAMPLERS:
        return (_UNET_SAMPLER_RANK, 2, (), src, _natural(parts[depth]))
    index = parts[depth + 1] if depth + 1 < len(parts) else ""
    if not index.isdigit():
        return None
    # the class of numeric components, so that resnets.i and attentions.i compare by index
    return (_UNKNOWN, 0, (int(index), _UNET_INTERLEAVED[comp]), 0, ())


@functools.lru_cache(maxsize=65536)
def _component_key(comp: str, top_level: bool, src: int, container: str = "") -> tuple:
    """(rank, class, numbers, source rank, natural text) of one dotted component."""
    if comp.isdigit():
        return (_UNKNOWN, 0, (int(comp),), 0, ())
    rnn = _RNN_PARAM.match(comp)
    if rnn:
        kind, which, layer, reverse = rnn.groups()
        # PyTorch's own order: per layer and direction, weights (ih, hh, hr) before biases
        numbers = (int(layer), 1 if reverse else 0, 0 if kind == "weight" else 1, _RNN_TYPE[which])
        return (_UNKNOWN, 1, numbers, 0, ())
    lower = comp.lower()
    if lower in _LEAF_RANKS:
        rank = _LEAF_RANKS[lower]
    elif lower in _CHILD_RANKS.get(container, {}):
        rank = _CHILD_RANKS[container][lower]
    elif not top_level:
        rank = _BLOCK_RANKS.get(lower, _UNKNOWN)
    elif lower in _TOP_RANKS:
        rank = _TOP_RANKS[lower]
    elif "embed" in lower and lower != "embed_out":
        rank = _TOP_EMBED_RANK
    else:
        rank = _UNKNOWN
    return (rank, 2, (), src, _natural(comp))


def _natural(text: str) -> tuple:
    """Natural-order key: digit runs compare as numbers (``h10`` after ``h9``)."""
    return tuple(
        (0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.findall(r"\d+|\D+", text)
    )


def _slice_key(part: str | None) -> tuple:
    """Whole matrix first, then slices in their natural order."""
    if part is None:
        return ()
    key = []
    for tok in part.split(","):
        tok = tok.strip()
        if tok.isdigit():
            key.append((0, int(tok), ""))
        elif tok in _SLICE_ORDER:
            key.append((1, _SLICE_ORDER[tok], ""))
        elif re.fullmatch(r"h\d+", tok):
            key.append((2, int(tok[1:]), ""))
        else:
            key.append((3, 0, tok))
    return (1, tuple(key))
