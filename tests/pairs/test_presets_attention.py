"""Transformer presets on the zoo's real models (specdyn.pairs, docs/pairs.md#transformers).

Each test states the expected pairs of a tiny config literally (the spec) and checks that the
per-head slices the operands cut reproduce the model's own per-head projections of a random
input, reshaped the way the model's forward reshapes them (its own head count attributes).
"""

from __future__ import annotations

import json

import pytest
import torch
from _views import views_of
from _zoo import save_initial

from specdyn.pairs import pairs_for

pytest.importorskip("transformers")


def _saved(tmp_path, name: str):
    """(model, checkpoint path) of a zoo model saved at step 0."""
    return save_initial(name, tmp_path)


def _got(result):
    return sorted((p.name, p.rule, p.first.side + p.second.side) for p in result.pairs)


def _own(module, x):
    """A Linear's own output on x, its bias removed (the pair compares weights only)."""
    with torch.no_grad():
        out = module(x)
    return out - module.bias if module.bias is not None else out


def _check_rows(operand, matrix, x, projected, heads):
    """Head block h of the operand projects x as the model's head h: its projection viewed
    (N, heads, head_dim), as the model's forward splits it."""
    blocks = operand.apply(matrix)
    assert len(blocks) == heads
    ref = projected.reshape(projected.shape[0], heads, -1)
    for h, block in enumerate(blocks):
        torch.testing.assert_close(x @ block.T, ref[:, h], rtol=1e-5, atol=1e-5)


def _check_cols(operand, matrix, o_weight, heads):
    """Head block h of a W_O operand is the columns reading head h of the concatenated heads."""
    blocks = operand.apply(matrix)
    ref = o_weight.detach().reshape(o_weight.shape[0], heads, -1)
    assert len(blocks) == heads
    for h, block in enumerate(blocks):
        assert torch.equal(block, ref[:, h])


def _block_spec(attn: str, q, k, v, o, mlp_in, mlp_out, heads: int):
    """The pairs inside one single-attention block with a plain MLP."""
    return [
        (f"{attn}{q}~{attn}{k}", "q-k-per-head", "uu"),
        (f"{attn}{v}~{attn}{o}", "v-o-per-head", "uv"),
        (f"{attn}{o}~{mlp_in}", "o-to-mlp-in", "uv"),
        (f"{mlp_in}~{mlp_out}", "mlp-in-to-out", "uv"),
    ]


# ------------------------------------------------------------------ BERT, ViT


def test_bert_pairs_and_heads(tmp_path):
    model, path = _saved(tmp_path, "bert")
    result = pairs_for(path)
    assert result.preset == "bert"
    L = "bert.encoder.layer.{}."
    expected = [("bert.embeddings.word_embeddings.weight~" + L.format(0)
                 + "attention.self.query.weight", "embed-to-qkv", "uv"),
                (L.format(0) + "output.dense.weight~" + L.format(1) + "attention.self.query.weight",
                 "mlp-out-to-next-qkv", "uv")]  # fmt: skip
    for i in range(2):
        b = L.format(i)
        expected += _block_spec(b + "attention.", "self.query.weight", "self.key.weight",
                                "self.value.weight", "output.dense.weight",
                                b + "intermediate.dense.weight", b + "output.dense.weight", 4)  # fmt: skip
    assert _got(result) == sorted(expected)
    assert all(p.options == {"heads": 4, "kv_heads": 4} for p in result.pairs if "head" in p.rule)
    mats = views_of(path).matrices
    attn = model.bert.encoder.layer[0].attention
    heads = attn.self.num_attention_heads  # the model's own
    x = torch.randn(6, 32)
    pairs = {p.rule: p for p in result.pairs if p.first.matrix.startswith(L.format(0))}
    qk, vo = pairs["q-k-per-head"], pairs["v-o-per-head"]
    _check_rows(qk.first, mats[qk.first.matrix], x, _own(attn.self.query, x), heads)
    _check_rows(qk.second, mats[qk.second.matrix], x, _own(attn.self.key, x), heads)
    _check_rows(vo.first, mats[vo.first.matrix], x, _own(attn.self.value, x), heads)
    _check_cols(vo.second, mats[vo.second.matrix], attn.output.dense.weight, heads)


def test_vit_transformers_patch_embedding_feeds_block_0(tmp_path):
    model, path = _saved(tmp_path, "vit")
    result = pairs_for(path)
    assert result.preset == "vit"
    L = "encoder.layer.{}."
    expected = [("embeddings.patch_embeddings.projection.weight~" + L.format(0)
                 + "attention.attention.query.weight", "embed-to-qkv", "uv"),
                (L.format(0) + "output.dense.weight~" + L.format(1)
                 + "attention.attention.query.weight", "mlp-out-to-next-qkv", "uv")]  # fmt: skip
    for i in range(2):
        b = L.format(i)
        expected += _block_spec(b + "attention.", "attention.query.weight", "attention.key.weight",
                                "attention.value.weight", "output.dense.weight",
                                b + "intermediate.dense.weight", b + "output.dense.weight", 4)  # fmt: skip
    assert _got(result) == sorted(expected)
    attn = model.layers[
        1
    ].attention  # transformers 5 renames on load; the saved keys are the old ones
    x = torch.randn(5, 32)
    mats = views_of(path).matrices
    qk = next(p for p in result.pairs if p.rule == "q-k-per-head" and ".1." in p.name)
    heads = model.config.num_attention_heads
    _check_rows(qk.first, mats[qk.first.matrix], x, _own(attn.q_proj, x), heads)
    _check_rows(qk.second, mats[qk.second.matrix], x, _own(attn.k_proj, x), heads)


def test_timm_vit_attention_pairs_are_not_skipped(tmp_path):
    """Issue 13: a timm ViT was labelled GPT-2 and every attention pair was skipped."""
    model, path = _saved(tmp_path, "vit-timm")
    (path.parent / "config.json").write_text(
        json.dumps({"num_heads": model.blocks[0].attn.num_heads})
    )
    result = pairs_for(path)
    assert result.preset == "vit" and result.skipped == []
    expected = [
        ("patch_embed.proj.weight~blocks.0.attn.qkv.weight", "embed-to-qkv", "uv"),
        ("blocks.0.mlp.fc2.weight~blocks.1.attn.qkv.weight", "mlp-out-to-next-qkv", "uv"),
    ]
    for i in range(2):
        b = f"blocks.{i}."
        expected += [(b + "attn.qkv.weight[q]~[k]", "q-k-per-head", "uu"),
                     (b + "attn.qkv.weight[v]~" + b + "attn.proj.weight", "v-o-per-head", "uv"),
                     (b + "attn.proj.weight~" + b + "mlp.fc1.weight", "o-to-mlp-in", "uv"),
                     (b + "mlp.fc1.weight~" + b + "mlp.fc2.weight", "mlp-in-to-out", "uv")]  # fmt: skip
    assert _got(result) == sorted(expected)
    attn = model.blocks[0].attn
    x = torch.randn(7, 32)
    qkv = _own(attn.qkv, x).reshape(7, 3, -1)  # timm: reshape(b, n, 3, heads, head_dim)
    mats = views_of(path).matrices
    pairs = {p.rule: p for p in result.pairs if p.name.startswith("blocks.0.")}
    qk, vo = pairs["q-k-per-head"], pairs["v-o-per-head"]
    _check_rows(qk.first, mats[qk.first.matrix], x, qkv[:, 0], attn.num_heads)
    _check_rows(qk.second, mats[qk.second.matrix], x, qkv[:, 1], attn.num_heads)
    _check_rows(vo.first, mats[vo.first.matrix], x, qkv[:, 2], attn.num_heads)
    _check_cols(vo.second, mats[vo.second.matrix], attn.proj.weight, attn.num_heads)
    # without a config.json the per-head pairs are skipped, naming the key to add
    (path.parent / "config.json").unlink()
    bare = pairs_for(path)
    assert {r for _, r in bare.skipped} == {
        "head count unknown: add config.json (num_heads) or give heads in a pairs file"
    }
    assert len(bare.skipped) == 4 and len(bare.pairs) == len(expected) - 4


# ------------------------------------------------------------------ encoder–decoder


def test_t5_encoder_and_decoder_chains_not_sequential(tmp_path):
    """Issue 13: T5 was chained q → k → v → o by the sequential rule."""
    model, path = _saved(tmp_path, "t5")
    result = pairs_for(path)
    assert result.preset == "t5"
    assert not any(p.rule == "sequential" for p in result.pairs)
    E, D = "encoder.block.{}.layer.", "decoder.block.{}.layer."
    sa, ca = "0.SelfAttention.", "1.EncDecAttention."
    emb = "encoder.embed_tokens.weight"  # shared, tied under every name: analysed once
    expected = [(emb + "~" + E.format(0) + sa + "q.weight", "embed-to-qkv", "uv"),
                (emb + "~" + D.format(0) + sa + "q.weight", "embed-to-qkv", "uv"),
                (E.format(0) + "1.DenseReluDense.wo.weight~" + E.format(1) + sa + "q.weight",
                 "mlp-out-to-next-qkv", "uv"),
                (D.format(0) + "2.DenseReluDense.wo.weight~" + D.format(1) + sa + "q.weight",
                 "mlp-out-to-next-qkv", "uv")]  # fmt: skip
    for i in range(2):
        e, d = E.format(i), D.format(i)
        expected += _block_spec(
            e + sa,
            "q.weight",
            "k.weight",
            "v.weight",
            "o.weight",
            e + "1.DenseReluDense.wi.weight",
            e + "1.DenseReluDense.wo.weight",
            4,
        )
        expected += [
            (d + sa + "q.weight~" + d + sa + "k.weight", "q-k-per-head", "uu"),
            (d + sa + "v.weight~" + d + sa + "o.weight", "v-o-per-head", "uv"),
            (d + sa + "o.weight~" + d + ca + "q.weight", "o-to-cross-q", "uv"),
            (d + ca + "q.weight~" + d + ca + "k.weight", "q-k-per-head", "uu"),
            (d + ca + "v.weight~" + d + ca + "o.weight", "v-o-per-head", "uv"),
            (d + ca + "o.weight~" + d + "2.DenseReluDense.wi.weight", "o-to-mlp-in", "uv"),
            (d + "2.DenseReluDense.wi.weight~" + d + "2.DenseReluDense.wo.weight", "mlp-in-to-out", "uv"),
            # cross-attention K and V read the encoder's output: its last block's MLP out
            (E.format(1) + "1.DenseReluDense.wo.weight~" + d + ca + "k.weight", "encoder-out-to-cross-kv", "uv"),
            (E.format(1) + "1.DenseReluDense.wo.weight~" + d + ca + "v.weight", "encoder-out-to-cross-kv", "uv"),
        ]  # fmt: skip
    assert _got(result) == sorted(expected)
    assert any("relative_attention_bias" in n for n in result.notes)  # listed, not dropped
    cross = model.decoder.block[1].layer[1].EncDecAttention
    x = torch.randn(4, 32)
    mats = views_of(path).matrices
    by = {p.name: p for p in result.pairs}
    d = D.format(1) + ca
    qk, vo = by[d + "q.weight~" + d + "k.weight"], by[d + "v.weight~" + d + "o.weight"]
    assert cross.inner_dim == cross.n_heads * cross.key_value_proj_dim  # T5: inner = heads·d_kv
    _check_rows(qk.first, mats[qk.first.matrix], x, _own(cross.q, x), cross.n_heads)
    _check_rows(qk.second, mats[qk.second.matrix], x, _own(cross.k, x), cross.n_heads)
    _check_rows(vo.first, mats[vo.first.matrix], x, _own(cross.v, x), cross.n_heads)
    _check_cols(vo.second, mats[vo.second.matrix], cross.o.weight, cross.n_heads)


def test_whisper_conv_front_end_and_cross_attention(tmp_path):
    model, path = _saved(tmp_path, "whisper")
    result = pairs_for(path)
    assert result.preset == "whisper"
    E, D = "model.encoder.", "model.decoder."
    expected = [
        (E + "conv1.weight~" + E + "conv2.weight", "conv-centre-tap", "uv"),
        (E + "conv2.weight~" + E + "layers.0.self_attn.q_proj.weight", "embed-to-qkv", "uv"),
        (D + "embed_tokens.weight~" + D + "layers.0.self_attn.q_proj.weight", "embed-to-qkv", "uv"),
    ]
    for side in (E, D):
        expected.append((side + "layers.0.fc2.weight~" + side + "layers.1.self_attn.q_proj.weight",
                         "mlp-out-to-next-qkv", "uv"))  # fmt: skip
    for i in range(2):
        e, d = f"{E}layers.{i}.", f"{D}layers.{i}."
        expected += _block_spec(
            e + "self_attn.",
            "q_proj.weight",
            "k_proj.weight",
            "v_proj.weight",
            "out_proj.weight",
            e + "fc1.weight",
            e + "fc2.weight",
            4,
        )
        s, c = d + "self_attn.", d + "encoder_attn."
        expected += [
            (s + "q_proj.weight~" + s + "k_proj.weight", "q-k-per-head", "uu"),
            (s + "v_proj.weight~" + s + "out_proj.weight", "v-o-per-head", "uv"),
            (s + "out_proj.weight~" + c + "q_proj.weight", "o-to-cross-q", "uv"),
            (c + "q_proj.weight~" + c + "k_proj.weight", "q-k-per-head", "uu"),
            (c + "v_proj.weight~" + c + "out_proj.weight", "v-o-per-head", "uv"),
            (c + "out_proj.weight~" + d + "fc1.weight", "o-to-mlp-in", "uv"),
            (d + "fc1.weight~" + d + "fc2.weight", "mlp-in-to-out", "uv"),
            (E + "layers.1.fc2.weight~" + c + "k_proj.weight", "encoder-out-to-cross-kv", "uv"),
            (E + "layers.1.fc2.weight~" + c + "v_proj.weight", "encoder-out-to-cross-kv", "uv"),
        ]  # fmt: skip
    assert _got(result) == sorted(expected)
    conv = next(p for p in result.pairs if p.rule == "conv-centre-tap")
    assert conv.options["tap"] == [1] and conv.second.dim == 32  # kernel 3: centre tap, c_in
    cross = model.model.decoder.layers[0].encoder_attn
    x = torch.randn(3, 32)
    mats = views_of(path).matrices
    qk = next(
        p for p in result.pairs if p.first.matrix == D + "layers.0.encoder_attn.q_proj.weight"
    )
    assert qk.options == {"heads": cross.num_heads, "kv_heads": cross.num_heads}
    _check_rows(qk.first, mats[qk.first.matrix], x, _own(cross.q_proj, x), cross.num_heads)
    _check_rows(qk.second, mats[qk.second.matrix], x, _own(cross.k_proj, x), cross.num_heads)


# ------------------------------------------------------------------ mixture of experts


def test_mixtral_experts_pair_within_their_expert(tmp_path):
    model, path = _saved(tmp_path, "mixtral")
    result = pairs_for(path)
    assert result.preset == "mixtral"
    experts = model.config.num_local_experts
    L = "model.layers.{}."
    expected = [("model.embed_tokens.weight~" + L.format(0) + "self_attn.q_proj.weight",
                 "embed-to-qkv", "uv")]  # fmt: skip
    for i in range(2):
        s, moe = L.format(i) + "self_attn.", L.format(i) + "block_sparse_moe.experts."
        expected += [
            (s + "q_proj.weight~" + s + "k_proj.weight", "q-k-per-head", "uu"),
            (s + "v_proj.weight~" + s + "o_proj.weight", "v-o-per-head", "uv"),
        ]
        for e in range(experts):
            x = f"{moe}{e}."
            expected += [
                (s + "o_proj.weight~" + x + "w1.weight", "o-to-mlp-in", "uv"),
                (s + "o_proj.weight~" + x + "w3.weight", "o-to-mlp-in", "uv"),
                (x + "w1.weight~" + x + "w2.weight", "mlp-in-to-out", "uv"),
                (x + "w3.weight~" + x + "w2.weight", "mlp-in-to-out", "uv"),
            ]
            if i == 0:
                expected.append((x + "w2.weight~" + L.format(1) + "self_attn.q_proj.weight",
                                 "mlp-out-to-next-qkv", "uv"))  # fmt: skip
    assert _got(result) == sorted(expected)
    assert any(n.startswith("routers compute routing weights") and "block_sparse_moe.gate" in n
               for n in result.notes)  # fmt: skip
    qk = next(p for p in result.pairs if p.rule == "q-k-per-head")
    cfg = model.config
    assert qk.options == {"heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads}


@pytest.mark.parametrize(
    ("name", "preset"), [("gpt2", "gpt2"), ("gpt-neox", "gpt-neox"), ("llama", "llama")]
)
def test_todays_presets_keep_their_names(tmp_path, name, preset):
    _, path = _saved(tmp_path, name)
    result = pairs_for(path)
    assert result.preset == preset and result.skipped == []
