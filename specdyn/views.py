"""Parameters → named 2-D matrix views (docs/views.md).

`plan_views` looks at tensor metadata only (names, shapes, dtypes, shared
storage, ``config.json``) and decides, once per run, which 2-D matrices are
analysed, under which canonical names, in forward order, and why every other
parameter is skipped. Each `MatrixView` then cuts its matrix out of the full
parameter tensor with `MatrixView.extract`, at every step.

Every view is (out, in): its left singular vectors live in the layer's output
space and its right ones in its input space. User documentation:
``docs/views.md``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SpecdynError, ViewError, option_ref
from .naming import canonicalize, forward_sort
from .types import TensorInfo

__all__ = ["MatrixView", "Skipped", "ViewPlan", "plan_views", "VIEW_KINDS"]

VIEW_KINDS = (
    "linear",
    "conv",
    "conv_transpose",
    "conv1d_gpt2",
    "embedding",
    "lm_head",
    "rnn_gate",
    "qkv_fused",
    "qkv_part",
    "expert",
)

# One step of a view recipe, applied in order by `MatrixView.extract`:
#   ("select", i)                       t[i] (drop the leading expert dim)
#   ("swap01",)                         t.transpose(0, 1)
#   ("flatten",)                        t.reshape(t.shape[0], -1)
#   ("rows", start, stop, step)         t[start:stop:step]
#   ("heads", groups, per_group, index) t.reshape(groups, per_group, -1, cols)[:, index]
#                                         .reshape(-1, cols)  (per-head interleaved rows)
ViewOp = tuple


@dataclass(frozen=True)
class MatrixView:
    """One 2-D (out, in) matrix cut from one parameter.

    name: canonical matrix name, the canonical parameter name plus a slice
        suffix for part of a parameter (``…query_key_value.weight[q]``,
        ``lstm.weight_ih_l0[g]``, ``…experts.down_proj[7]``).
    param: canonical parameter name; key: the raw key in the checkpoint.
    kind: one of `VIEW_KINDS`; part: the slice ("q"/"k"/"v", a gate letter,
        an expert index such as "7" or "7,gate"), None for a whole parameter.
    shape: (out, in) of the view; source_shape: the stored parameter shape;
        source_dtype: the stored dtype without the ``torch.`` prefix ("float16").
    ops: the recipe `extract` applies (see the module's ``ViewOp`` comment);
        two views with equal `ops` on equal tensors give equal matrices.
    """

    name: str
    param: str
    key: str
    kind: str
    part: str | None
    shape: tuple[int, int]
    source_shape: tuple[int, ...]
    source_dtype: str
    ops: tuple[ViewOp, ...] = field(default=())

    def extract(self, tensor: torch.Tensor) -> torch.Tensor:
        """The (out, in) matrix of this view from the parameter's full tensor.

        Args:
            tensor: the whole stored parameter, shape `source_shape`, any dtype
                and device.

        Returns:
            a 2-D tensor of shape `shape`, same dtype and device; a view of
            `tensor` where possible (it may be non-contiguous), a copy where
            a reshape of a transposed or strided slice requires one.

        Raises:
            ViewError: `tensor` does not have `source_shape`.
        """
        if tuple(tensor.shape) != tuple(self.source_shape):
            raise ViewError(
                f"matrix {self.name}: parameter {self.key!r} has shape {tuple(tensor.shape)}, "
                f"the view was planned for {tuple(self.source_shape)}; re-plan the views"
            )
        return _apply_ops(tensor, self.ops)


@dataclass(frozen=True)
class Skipped:
    """A parameter (or one view of it) not analysed, and why.

    param: canonical parameter name; key: raw checkpoint key; reason: a short
    reason shared by all parameters skipped for the same cause (counted in
    `ViewPlan.summary`); matrix: the matrix name when only one view of the
    parameter was left out (``--include``/``--exclude``), else None.
    """

    param: str
    key: str
    reason: str
    matrix: str | None = None


@dataclass
class ViewPlan:
    """What is analysed and what is not, for one run.

    matrices: the views in forward order (docs/views.md#forward-order); skipped: parameters and
    views left out, with reasons, in forward order; aliases: tied weights,
    alias parameter → the parameter analysed in its place.
    """

    matrices: list[MatrixView]
    skipped: list[Skipped]
    aliases: dict[str, str]

    def summary(self) -> dict[str, int]:
        """Skip reason → number of skipped entries, most frequent first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())


# ------------------------------------------------------------------ skip reasons

R_1D = "1-D parameter (bias/norm)"
R_INT = "integer tensor"
R_BOOL = "bool tensor (a mask, not a weight)"
R_PACKED = "quantised packed weights (integer tensor); not supported"
R_QMETA = "quantisation scales/zero points, not a weight"
R_FP8 = "fp8 weights need their scales; not supported"
R_BUFFER = "buffer, not a weight"
R_EMPTY = "empty tensor (a zero dimension)"
R_EXCLUDED = "excluded by --exclude"
R_NOT_INCLUDED = "not matched by --include"
R_UNSTORABLE = (
    "its name is empty, '.' or '..', or holds '/', which a store cannot keep as a matrix name; "
    "rename the key to analyse it"
)
R_HEADS = "Q/K/V split needs the head count: add config.json"
R_QKV_SHAPE = "Q/K/V split: fused shape does not match the config's head sizes; whole matrix only"
R_QKV_LAYOUT = "Q/K/V split: this model's fused layout is not supported; whole matrix only"
R_EXPERT_BIAS = "stacked expert biases, not weights"
R_RNN_GATES = "RNN gate count unknown (weight_hh missing or not a multiple of the hidden size)"

_BUFFER_LEAVES = {
    "running_mean", "running_var", "num_batches_tracked", "position_ids", "token_type_ids",
    "inv_freq", "masked_bias",
}  # fmt: skip
_PACKED_LEAVES = {"qweight", "weight_packed", "qzeros", "g_idx"}
_QMETA_LEAVES = {
    "scales", "weight_scale", "weight_scale_inv", "input_scale", "weight_zero_point",
    "weight_global_scale", "absmax", "quant_map", "SCB",
}  # fmt: skip
_FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}

_EMBED_LEAVES = {
    "wte", "wpe", "word_embeddings", "position_embeddings", "embed_tokens", "tok_embeddings",
    "token_type_embeddings", "embedding",
}  # fmt: skip
_HEAD_LEAVES = {"lm_head", "embed_out"}
_GPT2_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
_GPT2_CONV1D_LEAVES = {"c_attn", "c_proj", "c_fc", "q_attn"}
_CONTIGUOUS_QKV_LEAVES = {"qkv_proj", "wqkv", "qkv"}
_TRANSPOSED_CONV_NAME = re.compile(
    r"deconv|conv_transpose|convtranspose|transpose_conv|upconv|up_conv", re.IGNORECASE
)
_RNN_PARAM = re.compile(r"^weight_(ih|hh|hr)_l(\d+)(_reverse)?$")
_RNN_GATES = {4: "ifgo", 3: "rzn"}
_EXPERT_ROLES = {
    "gate_up_proj": "gate_up",
    "gate_proj": "in", "up_proj": "in", "w1": "in", "w3": "in",
    "down_proj": "out", "w2": "out",
}  # fmt: skip
# transformers' fused experts are (E, out, in) (`F.linear(x, w[e])`) except these,
# which multiply `x @ w[e]`: (E, in, out).
_EXPERTS_IN_OUT_MODELS = {"llama4", "llama4_text", "gpt_oss"}
_MAX_CONV_TAP = 31

# Pythia (GPT-NeoX) head counts keyed on (hidden size, number of layers): docs/pythia.md#catalog.
_PYTHIA_HEADS = {
    (512, 6): 8, (768, 12): 12, (1024, 24): 16, (2048, 16): 8, (2048, 24): 16,
    (2560, 32): 32, (4096, 32): 32, (5120, 36): 40,
}  # fmt: skip


def plan_views(
    infos: Mapping[str, TensorInfo],
    *,
    config: Mapping | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    transposed: str | None = None,
    source_order: Sequence[str] | None = None,
) -> ViewPlan:
    """Decide the matrix views of a checkpoint from its tensor metadata.

    Args:
        infos: raw checkpoint key → `TensorInfo` (shape, torch dtype,
            storage_id: equal for tied weights, else None).
        config: the checkpoint's ``config.json`` as a dict, if any (head
            counts, expert sizes, ``model_type``, ``tie_word_embeddings``).
        include: regexes (``re.search``) on canonical matrix names; when
            given, only matching matrices are analysed.
        exclude: regexes on canonical matrix names; matching matrices are not
            analysed. Filtered matrices are listed in `ViewPlan.skipped`.
        transposed: regex on canonical parameter names of ConvTranspose
            weights (stored (c_in, c_out, *k)); names containing ``deconv``,
            ``conv_transpose``, ``convtranspose``, ``transpose_conv``,
            ``upconv`` or ``up_conv`` are recognised without it.
        source_order: raw keys in checkpoint order; breaks ties in the forward
            order among names the ordering rules cannot rank.

    Returns:
        `ViewPlan` with the matrices in forward order, every skipped parameter
        with its reason, and tied-weight aliases.

    Raises:
        ViewError: an invalid regex (naming the option), or two keys with one
            canonical name.
    """
    include_res = compile_patterns("include", include)
    exclude_res = compile_patterns("exclude", exclude)
    transposed_re = compile_patterns("transposed", [transposed] if transposed else [])
    canon = canonicalize(list(infos), config=config)
    by_param = {canon[key]: key for key in infos}
    params = {canon[key]: info for key, info in infos.items()}
    canon_order = None
    if source_order is not None:
        # raw keys (as a reader lists them); canonical names are accepted too
        canon_order = [canon.get(k, k) for k in source_order if k in canon or k in params]
    ordered = forward_sort(list(params), canon_order)
    ctx = _Context(params, config or {}, transposed_re)
    aliases = _find_ties(ctx, ordered)

    matrices: list[MatrixView] = []
    skipped: list[Skipped] = []
    for param in ordered:
        if param in aliases:
            continue
        key = by_param[param]
        views, notes = _plan_param(ctx, param, key)
        kept = []
        for view in views:
            if not _storable(view.name):
                skipped.append(Skipped(param, key, R_UNSTORABLE, view.name))
            elif include_res and not any(r.search(view.name) for r in include_res):
                skipped.append(Skipped(param, key, R_NOT_INCLUDED, view.name))
            elif any(r.search(view.name) for r in exclude_res):
                skipped.append(Skipped(param, key, R_EXCLUDED, view.name))
            else:
                kept.append(view)
        whole_kept = any(v.part is None for v in kept) or not views
        skipped.extend(Skipped(param, key, reason) for reason in notes if whole_kept)
        matrices.extend(kept)

    rank = {name: i for i, name in enumerate(forward_sort([m.name for m in matrices], canon_order))}
    matrices.sort(key=lambda m: rank[m.name])
    return ViewPlan(matrices=matrices, skipped=skipped, aliases=aliases)


# ------------------------------------------------------------------ internals


def _storable(name: str) -> bool:
    """Whether a matrix name can be one HDF5 link name of a store (docs/store.md)."""
    return bool(name) and "/" not in name and name not in (".", "..")


class _Context:
    """Model-wide facts the per-parameter rules need."""

    def __init__(self, params: dict[str, TensorInfo], config: Mapping, transposed_re: list):
        self.params = params
        self.config = config
        self.transposed_re = transposed_re
        self.model_type = str(_cfg(config, "model_type") or "").lower()
        self.gpt2_conv1d = self._gpt2_conv1d()
        self.rnn_hidden = self._rnn_hidden()

    def _gpt2_conv1d(self) -> bool:
        """Whether `c_attn`/`c_proj`/`c_fc` are GPT-2 Conv1D weights stored (in, out)."""
        if self.model_type:
            return self.model_type in _GPT2_MODEL_TYPES
        c_attn = [
            i.shape for p, i in self.params.items()
            if _module_leaf(p) == "c_attn" and _leaf(p) == "weight" and len(i.shape) == 2
        ]  # fmt: skip
        if c_attn:
            # Conv1D c_attn is (d, 3d) (or (d, 2d) for cross-attention); nanoGPT's Linear is (3d, d)
            return all(s[1] in (2 * s[0], 3 * s[0]) for s in c_attn)
        return any(_module_leaf(p) in _GPT2_CONV1D_LEAVES for p in self.params)

    def _rnn_hidden(self) -> dict[tuple[str, int, bool], tuple[int, int]]:
        """(module, layer, reverse) → (hidden size h, weight_hh rows) of each RNN layer."""
        found: dict[tuple[str, int, bool], dict[str, tuple[int, ...]]] = {}
        for param, info in self.params.items():
            match = _RNN_PARAM.match(_leaf(param))
            if match and len(info.shape) == 2:
                which, layer, reverse = match.groups()
                slot = (_module(param), int(layer), bool(reverse))
                found.setdefault(slot, {})[which] = info.shape
        hidden = {}
        for slot, shapes in found.items():
            if "hh" not in shapes:
                continue
            h = shapes["hr"][1] if "hr" in shapes else shapes["hh"][1]
            hidden[slot] = (h, shapes["hh"][0])
        return hidden

    def is_transposed_conv(self, param: str) -> bool:
        """ConvTranspose weight by --transposed or by its name."""
        return bool(_TRANSPOSED_CONV_NAME.search(param)) or any(
            r.search(param) for r in self.transposed_re
        )

    def qkv_sizes(self) -> tuple[int, int] | None:
        """(query rows, key/value rows) of a contiguous fused QKV from the config, if known."""
        heads = _cfg(self.config, "num_attention_heads", "n_head", "n_heads", "num_heads")
        if not heads:
            return None
        hidden = _cfg(self.config, "hidden_size", "d_model", "n_embd")
        head_dim = _cfg(self.config, "head_dim") or (hidden // heads if hidden else None)
        if not head_dim:
            return None
        kv = _cfg(self.config, "num_key_value_heads", "kv_n_heads", "n_head_kv", "num_kv_heads")
        if kv is None and _cfg(self.config, "multi_query"):
            kv = 1
        kv = kv or heads
        return heads * head_dim, kv * head_dim

    def neox_heads(self, hidden: int) -> int | None:
        """Head count for an interleaved `query_key_value`: config, else the Pythia table."""
        heads = _cfg(self.config, "num_attention_heads", "n_head", "n_heads", "num_heads")
        if heads:
            return int(heads)
        layers = {
            m.group(1)
            for p in self.params
            if (m := re.search(r"(?:^|\.)(\d+)\.[^.]*attention\.query_key_value\.weight$", p))
        }
        return _PYTHIA_HEADS.get((hidden, len(layers)))


def _plan_param(ctx: _Context, param: str, key: str) -> tuple[list[MatrixView], list[str]]:
    """The views of one parameter, or the reason it has none, plus notes (skip reasons)."""
    info = ctx.params[param]
    shape = tuple(int(d) for d in info.shape)
    dtype = info.dtype
    leaf = _leaf(param)
    module_leaf = _module_leaf(param)

    def make(kind: str, part: str | None, ops: tuple) -> MatrixView:
        name = param if part is None else f"{param}[{part}]"
        return MatrixView(
            name=name, param=param, key=key, kind=kind, part=part,
            shape=_view_shape(shape, ops), source_shape=shape,
            source_dtype=str(dtype).removeprefix("torch."), ops=ops,
        )  # fmt: skip

    def skip(reason: str) -> tuple[list[MatrixView], list[str]]:
        return [], [reason]

    # What is not a weight matrix at all.
    if leaf in _BUFFER_LEAVES or (
        re.search(r"(?:^|\.)(attention|attn)\.bias$", param) and len(shape) != 1
    ):
        return skip(R_BUFFER)
    if leaf in _PACKED_LEAVES:
        return skip(R_PACKED)
    if leaf in _QMETA_LEAVES:
        return skip(R_QMETA)
    if "float8" in str(dtype):
        return skip(R_FP8)
    if dtype == torch.bool:
        return skip(R_BOOL)
    if not dtype.is_floating_point and not dtype.is_complex:
        return skip(R_INT)
    if dtype not in _FLOAT_DTYPES:
        return skip(f"unsupported dtype {str(dtype).removeprefix('torch.')}")
    if len(shape) <= 1:
        return skip(R_1D)
    if 0 in shape:
        return skip(R_EMPTY)

    # Stacked mixture-of-experts tensors.
    if "experts" in param.split(".")[:-1] or module_leaf == "experts":
        if leaf.endswith("bias"):
            return skip(R_EXPERT_BIAS)
        if len(shape) == 3:
            return _expert_views(ctx, param, leaf, shape, make)

    if len(shape) >= 3:
        if (
            len(shape) <= 5
            and leaf.endswith("weight")
            and all(k <= _MAX_CONV_TAP for k in shape[2:])
        ):
            if ctx.is_transposed_conv(param):
                return [make("conv_transpose", None, (("swap01",), ("flatten",)))], []
            return [make("conv", None, (("flatten",),))], []
        return skip(f"unknown ≥3-D tensor (shape {'×'.join(map(str, shape))}); no view rule")

    # 2-D from here.
    rnn = _RNN_PARAM.match(leaf)
    if rnn:
        return _rnn_views(ctx, param, rnn, shape, make)

    if ctx.gpt2_conv1d and module_leaf in _GPT2_CONV1D_LEAVES and leaf == "weight":
        if module_leaf == "c_attn":
            return _contiguous_qkv(ctx, shape, (("swap01",),), make, known_equal=True)
        return [make("conv1d_gpt2", None, (("swap01",),))], []
    if module_leaf == "c_attn" and leaf == "weight":
        return _contiguous_qkv(ctx, shape, (), make, known_equal=True)
    if leaf == "in_proj_weight":  # torch.nn.MultiheadAttention: Q|K|V stacked
        return _contiguous_qkv(ctx, shape, (), make, known_equal=True)
    if module_leaf.lower() in _CONTIGUOUS_QKV_LEAVES and leaf == "weight":
        return _contiguous_qkv(ctx, shape, (), make, known_equal=module_leaf == "qkv")
    if module_leaf == "query_key_value" and leaf == "weight":
        return _interleaved_qkv(ctx, shape, make)

    if module_leaf in _HEAD_LEAVES or param == "output.weight":
        return [make("lm_head", None, ())], []
    if _is_embedding(param):
        return [make("embedding", None, (("swap01",),))], []
    return [make("linear", None, ())], []


def _rnn_views(ctx, param, match, shape, make):
    """Gate blocks of an LSTM/GRU weight_ih/weight_hh; weight_hr and plain RNN whole."""
    which, layer, reverse = match.groups()
    if which == "hr":
        return [make("linear", None, ())], []
    slot = (_module(param), int(layer), bool(reverse))
    if slot not in ctx.rnn_hidden:
        return [], [R_RNN_GATES]
    h, hh_rows = ctx.rnn_hidden[slot]
    if h == 0 or hh_rows % h or shape[0] != hh_rows:
        return [], [R_RNN_GATES]
    gates = hh_rows // h
    if gates == 1:
        return [make("linear", None, ())], []
    if gates not in _RNN_GATES:
        return [], [f"RNN with {gates} stacked gate blocks: unknown cell type"]
    return [
        make("rnn_gate", letter, (("rows", i * h, (i + 1) * h, 1),))
        for i, letter in enumerate(_RNN_GATES[gates])
    ], []


def _contiguous_qkv(ctx, shape, orient, make, *, known_equal):
    """Fused Q|K|V stacked in blocks along out: the whole, plus [q] [k] [v] when sizes are known."""
    out, inp = _view_shape(shape, orient)
    whole = make("qkv_fused", None, orient)
    if ctx.model_type == "codegen":
        return [whole], [R_QKV_LAYOUT]
    sizes = None
    config_sizes = ctx.qkv_sizes()
    if config_sizes and config_sizes[0] + 2 * config_sizes[1] == out:
        q, kv = config_sizes
        sizes = [("q", 0, q), ("k", q, q + kv), ("v", q + kv, q + 2 * kv)]
    elif known_equal and out == 3 * inp:
        sizes = [("q", 0, inp), ("k", inp, 2 * inp), ("v", 2 * inp, 3 * inp)]
    elif known_equal and out == 2 * inp:  # GPT-2 cross-attention c_attn holds K|V only
        sizes = [("k", 0, inp), ("v", inp, 2 * inp)]
    if sizes is None:
        return [whole], [R_QKV_SHAPE if config_sizes else R_HEADS]
    parts = [make("qkv_part", p, (*orient, ("rows", a, b, 1))) for p, a, b in sizes]
    return [whole, *parts], []


def _interleaved_qkv(ctx, shape, make):
    """GPT-NeoX/BLOOM `query_key_value` (3H, H), rows laid out as [heads, 3, head_dim]."""
    whole = make("qkv_fused", None, ())
    out, hidden = shape
    if ctx.model_type == "falcon" and (
        _cfg(ctx.config, "new_decoder_architecture") or _cfg(ctx.config, "multi_query")
    ):
        return [whole], [R_QKV_LAYOUT]
    heads = ctx.neox_heads(hidden)
    if heads is None:
        return [whole], [R_HEADS]
    if out != 3 * hidden or hidden % heads:
        return [whole], [R_QKV_SHAPE]
    parts = [make("qkv_part", p, (("heads", heads, 3, i),)) for i, p in enumerate("qkv")]
    return [whole, *parts], []


def _expert_views(ctx, param, leaf, shape, make):
    """Per-expert matrices of a stacked (E, a, b) tensor, when the config fixes its layout."""
    role = _EXPERT_ROLES.get(leaf) or _EXPERT_ROLES.get(_module_leaf(param))
    if role is None:
        return [], [f"expert layout unknown: no rule for stacked {leaf!r}"]
    hidden = _cfg(ctx.config, "hidden_size", "d_model", "n_embd")
    inter = _cfg(ctx.config, "moe_intermediate_size", "intermediate_size")
    if not hidden or not inter:
        return [], ["expert layout unknown: add config.json with hidden_size and intermediate_size"]
    out, inp = {"in": (inter, hidden), "gate_up": (2 * inter, hidden), "out": (hidden, inter)}[role]
    n_experts, a, b = shape
    fits_out_in, fits_in_out = (a, b) == (out, inp), (a, b) == (inp, out)
    if not fits_out_in and not fits_in_out:
        return [], [
            "expert layout unknown: shape does not fit the config's hidden/intermediate sizes"
        ]
    if fits_out_in and fits_in_out:  # square: only the model's convention can tell
        if ctx.model_type in _EXPERTS_IN_OUT_MODELS:
            fits_out_in = False
        elif not (ctx.model_type and leaf in ("gate_up_proj", "down_proj")):
            return [], ["expert layout unknown: (E, out, in) and (E, in, out) have the same shape"]
    orient: tuple = () if fits_out_in else (("swap01",),)
    views = []
    for e in range(n_experts):
        base = (("select", e), *orient)
        if role != "gate_up":
            views.append(make("expert", str(e), base))
        elif ctx.model_type == "gpt_oss":  # gate and up interleaved column by column
            views.append(make("expert", f"{e},gate", (*base, ("rows", 0, 2 * inter, 2))))
            views.append(make("expert", f"{e},up", (*base, ("rows", 1, 2 * inter, 2))))
        else:  # gate | up halves (`.chunk(2)`)
            views.append(make("expert", f"{e},gate", (*base, ("rows", 0, inter, 1))))
            views.append(make("expert", f"{e},up", (*base, ("rows", inter, 2 * inter, 1))))
    return views, []


def _find_ties(ctx: _Context, ordered: list[str]) -> dict[str, str]:
    """Alias → analysed parameter for tied weights (shared storage, or config-declared)."""
    aliases: dict[str, str] = {}
    groups: dict[Any, list[str]] = {}
    for param in ordered:
        sid = ctx.params[param].storage_id
        if sid is not None:
            groups.setdefault(sid, []).append(param)
    for members in groups.values():
        if len(members) > 1:
            keep = next((p for p in members if _is_embedding(p)), members[0])
            aliases.update({p: keep for p in members if p != keep})
    if _cfg(ctx.config, "tie_word_embeddings"):
        heads = [p for p in ordered if _module_leaf(p) in _HEAD_LEAVES and _leaf(p) == "weight"]
        embeds = [p for p in ordered if _is_embedding(p) and len(ctx.params[p].shape) == 2]
        for head in heads:
            if head in aliases:
                continue
            hinfo = ctx.params[head]
            for emb in embeds:
                einfo = ctx.params[emb]
                same_storage = (
                    einfo.storage_id is None or hinfo.storage_id is None
                    or einfo.storage_id == hinfo.storage_id
                )  # fmt: skip
                if tuple(einfo.shape) == tuple(hinfo.shape) and same_storage and emb not in aliases:
                    aliases[head] = emb
                    break
    return aliases


def _is_embedding(param: str) -> bool:
    """Input embedding by name: the owning module (or the parameter) names an embedding."""
    owner = _module_leaf(param) if _leaf(param) == "weight" else _leaf(param)
    owner = owner.lower()
    if owner in _HEAD_LEAVES:
        return False
    return owner in _EMBED_LEAVES or "embed" in owner


def _apply_ops(t: torch.Tensor, ops: Sequence[ViewOp]) -> torch.Tensor:
    """Run a view recipe on a tensor."""
    for op in ops:
        name = op[0]
        if name == "select":
            t = t[op[1]]
        elif name == "swap01":
            t = t.transpose(0, 1)
        elif name == "flatten":
            t = t.reshape(t.shape[0], -1)
        elif name == "rows":
            t = t[op[1] : op[2] : op[3]]
        elif name == "heads":
            groups, per_group, index = op[1], op[2], op[3]
            cols = t.shape[-1]
            t = t.reshape(groups, per_group, -1, cols)[:, index].reshape(-1, cols)
        else:
            raise ViewError(f"unknown view operation {name!r}; re-plan the views")
    return t


def _view_shape(shape: tuple[int, ...], ops: Sequence[ViewOp]) -> tuple[int, int]:
    """Shape a recipe produces (the expert index does not change it)."""
    return _meta_shape(shape, tuple(("select", 0) if op[0] == "select" else op for op in ops))


@functools.lru_cache(maxsize=4096)
def _meta_shape(shape: tuple[int, ...], ops: tuple[ViewOp, ...]) -> tuple[int, int]:
    """Shape a recipe produces, computed on a data-free meta tensor."""
    out = _apply_ops(torch.empty(shape, device="meta"), ops)
    return (int(out.shape[0]), int(out.shape[1]))


def compile_patterns(
    option: str, patterns: Sequence[str] | str, error: type[SpecdynError] = ViewError
) -> list[re.Pattern]:
    """Compile user regexes; an invalid one raises `error` naming `option` (the Python
    parameter, ``include``; the CLI shows its flag, ``--include``)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise error(
                f"{option_ref(option)}: invalid regular expression {pattern!r} ({exc})",
                option=option,
            ) from None
    return compiled


def _cfg(config: Mapping, *names: str) -> Any:
    """First config value found under `names`, looking in the config then its text_config."""
    for scope in (config, config.get("text_config") if isinstance(config, Mapping) else None):
        if not isinstance(scope, Mapping):
            continue
        for name in names:
            value = scope.get(name)
            if (
                value is None
                and "attn_config" in scope
                and isinstance(scope["attn_config"], Mapping)
            ):
                value = scope["attn_config"].get(name)
            if value is not None:
                return value
    return None


def _leaf(param: str) -> str:
    """Last dotted component: ``a.b.weight`` → ``weight``."""
    return param.rsplit(".", 1)[-1]


def _module(param: str) -> str:
    """Everything before the last component: ``a.b.weight`` → ``a.b``."""
    return param.rsplit(".", 1)[0] if "." in param else ""


def _module_leaf(param: str) -> str:
    """The owning module's own name: ``a.b.weight`` → ``b``."""
    module = _module(param)
    return module.rsplit(".", 1)[-1] if module else ""
