"""Matrix views: every kind checked against independent constructions and real modules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from specdyn.errors import ViewError
from specdyn.types import TensorInfo
from specdyn.views import (
    VIEW_KINDS,
    MatrixView,
    Skipped,
    ViewPlan,
    plan_views,
)


def _infos(state: dict[str, torch.Tensor], *, storage: bool = False) -> dict[str, TensorInfo]:
    """TensorInfo per key; with `storage`, tied tensors get equal storage ids."""
    out = {}
    for key, t in state.items():
        sid = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        out[key] = TensorInfo(tuple(t.shape), t.dtype, sid if storage else None)
    return out


def _info(*shape: int, dtype: torch.dtype = torch.float32, sid=None) -> TensorInfo:
    return TensorInfo(tuple(shape), dtype, sid)


def _by_name(plan: ViewPlan) -> dict[str, MatrixView]:
    return {m.name: m for m in plan.matrices}


def _reasons(plan: ViewPlan) -> dict[str, str]:
    return {s.matrix or s.param: s.reason for s in plan.skipped}


def _check_shapes(plan: ViewPlan, state: dict[str, torch.Tensor]) -> None:
    """Every view extracts a 2-D tensor of its declared shape and the source dtype."""
    for m in plan.matrices:
        t = state[m.key]
        assert tuple(t.shape) == m.source_shape
        w = m.extract(t)
        assert w.dim() == 2 and tuple(w.shape) == m.shape, m.name
        assert w.dtype == t.dtype and str(t.dtype) == f"torch.{m.source_dtype}"
        assert m.kind in VIEW_KINDS


@pytest.fixture(scope="module")
def transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


# ------------------------------------------------------------------ linear / conv


def test_sequential_mlp_linear_views_in_forward_order():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for i in range(6) for m in (nn.Linear(5 + i, 6 + i), nn.ReLU())])
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # DDP-saved
    plan = plan_views(_infos(state))
    assert [m.name for m in plan.matrices] == [f"{i}.weight" for i in range(0, 12, 2)]
    assert all(m.kind == "linear" and m.key == f"module.{m.name}" for m in plan.matrices)
    assert plan.matrices[-1].shape == (11, 10)
    x = torch.randn(3, 5)
    first = plan.matrices[0]
    assert torch.equal(first.extract(state[first.key]), model[0].weight)
    torch.testing.assert_close(x @ first.extract(state[first.key]).T + model[0].bias, model[0](x))
    assert plan.summary() == {"1-D parameter (bias/norm)": 6}
    _check_shapes(plan, state)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_view_is_the_im2col_matrix(dim):
    torch.manual_seed(dim)
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dim - 1](3, 5, kernel_size=3, bias=False)
    plan = plan_views(_infos({"conv.weight": conv.weight.detach()}))
    (view,) = plan.matrices
    assert view.kind == "conv" and view.shape == (5, 3 * 3**dim)
    w = view.extract(conv.weight.detach())
    # independent check: the conv's output at one position is W @ (input patch flattened)
    x = torch.randn(1, 3, *([3] * dim))
    out = conv(x).reshape(5)
    torch.testing.assert_close(w @ x.reshape(-1), out, rtol=1e-5, atol=1e-5)


def test_conv_transpose_auto_detected_and_by_option():
    torch.manual_seed(1)
    deconv = nn.ConvTranspose2d(6, 4, kernel_size=3)
    w = deconv.weight.detach()  # (c_in=6, c_out=4, 3, 3)
    state = {"decoder.deconv1.weight": w, "decoder.up.3.weight": w.clone()}
    plan = plan_views(_infos(state))
    views = _by_name(plan)
    auto = views["decoder.deconv1.weight"]
    assert auto.kind == "conv_transpose" and auto.shape == (4, 6 * 9)
    expected = np.zeros((4, 54), dtype=np.float32)
    for o in range(4):
        for i in range(6):
            expected[o, i * 9 : (i + 1) * 9] = w[i, o].reshape(-1).numpy()
    np.testing.assert_array_equal(auto.extract(w).numpy(), expected)
    # without --transposed the unnamed one is read as a regular conv
    assert views["decoder.up.3.weight"].kind == "conv"
    plan2 = plan_views(_infos(state), transposed=r"up\.3")
    assert _by_name(plan2)["decoder.up.3.weight"].kind == "conv_transpose"
    assert _by_name(plan2)["decoder.up.3.weight"].shape == (4, 54)


def test_unknown_3d_tensors_are_skipped_not_flattened():
    infos = {
        "big.weight": _info(4, 100, 100),  # trailing dims too large for a conv
        "vit.cls_token": _info(1, 1, 32),  # not a weight
        "pos_embed": _info(1, 197, 32),
        "six.weight": _info(2, 2, 2, 2, 2, 2),
    }
    plan = plan_views(infos)
    assert plan.matrices == []
    reasons = _reasons(plan)
    assert reasons["big.weight"] == "unknown ≥3-D tensor (shape 4×100×100); no view rule"
    assert reasons["vit.cls_token"].startswith("unknown ≥3-D tensor (shape 1×1×32)")
    assert reasons["pos_embed"].startswith("unknown ≥3-D tensor")
    assert reasons["six.weight"].startswith("unknown ≥3-D tensor")


# ------------------------------------------------------------------ RNNs


def test_bidirectional_lstm_gate_blocks():
    torch.manual_seed(2)
    lstm = nn.LSTM(8, 16, num_layers=3, bidirectional=True)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    plan = plan_views(_infos(state))
    views = _by_name(plan)
    g = views["lstm.weight_ih_l0[g]"]
    assert (g.kind, g.part, g.shape, g.param) == ("rnn_gate", "g", (16, 8), "lstm.weight_ih_l0")
    assert torch.equal(g.extract(state[g.key]), lstm.weight_ih_l0[2 * 16 : 3 * 16])
    # layer 1 reads both directions of layer 0: 2h wide
    assert views["lstm.weight_ih_l1_reverse[i]"].shape == (16, 32)
    assert views["lstm.weight_hh_l2_reverse[o]"].shape == (16, 16)
    for layer in range(3):
        for d in ("", "_reverse"):
            for w in ("ih", "hh"):
                full = getattr(lstm, f"weight_{w}_l{layer}{d}")
                for k, gate in enumerate("ifgo"):
                    v = views[f"lstm.weight_{w}_l{layer}{d}[{gate}]"]
                    assert torch.equal(v.extract(full), full[k * 16 : (k + 1) * 16])
    # forward order: layer by layer, forward before reverse, ih before hh, gates i f g o
    expected = [f"lstm.weight_{w}_l{layer}{d}[{gate}]" for layer in range(3)
                for d in ("", "_reverse") for w in ("ih", "hh") for gate in "ifgo"]  # fmt: skip
    assert [m.name for m in plan.matrices] == expected
    assert plan.summary() == {"1-D parameter (bias/norm)": 12}


def test_lstm_gate_blocks_reproduce_the_cell():
    """The [i] [f] [g] [o] blocks are the gates PyTorch's LSTM cell computes."""
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 6, bias=False, batch_first=True)
    plan = plan_views(_infos(dict(lstm.state_dict())))
    views = _by_name(plan)
    x = torch.randn(1, 1, 4)
    ih = {g: views[f"weight_ih_l0[{g}]"].extract(lstm.weight_ih_l0) for g in "ifgo"}
    i, f, g, o = (x[0, 0] @ ih[k].T for k in "ifgo")
    c = torch.sigmoid(i) * torch.tanh(g)  # h0 = c0 = 0
    h = torch.sigmoid(o) * torch.tanh(c)
    out, _ = lstm(x)
    torch.testing.assert_close(out[0, 0], h)
    assert f.shape == (6,)


def test_lstm_with_projection():
    lstm = nn.LSTM(8, 16, proj_size=4)
    plan = plan_views(_infos(dict(lstm.state_dict())))
    views = _by_name(plan)
    assert views["weight_ih_l0[f]"].shape == (16, 8)
    assert views["weight_hh_l0[f]"].shape == (16, 4)  # hidden input is the projection
    assert views["weight_hr_l0"].kind == "linear" and views["weight_hr_l0"].shape == (4, 16)
    assert torch.equal(views["weight_hh_l0[o]"].extract(lstm.weight_hh_l0), lstm.weight_hh_l0[48:])


def test_gru_and_plain_rnn():
    gru = nn.GRU(5, 7, num_layers=2)
    plan = plan_views(_infos({f"gru.{k}": v for k, v in gru.state_dict().items()}))
    names = [m.name for m in plan.matrices]
    assert names[:6] == [f"gru.weight_{w}_l0[{g}]" for w in ("ih", "hh") for g in "rzn"]
    n = _by_name(plan)["gru.weight_hh_l1[n]"]
    assert torch.equal(n.extract(gru.weight_hh_l1), gru.weight_hh_l1[14:21])
    rnn = nn.RNN(5, 7, bidirectional=True)
    plan = plan_views(_infos({f"rnn.{k}": v for k, v in rnn.state_dict().items()}))
    assert [(m.name, m.kind, m.part) for m in plan.matrices] == [
        ("rnn.weight_ih_l0", "linear", None), ("rnn.weight_hh_l0", "linear", None),
        ("rnn.weight_ih_l0_reverse", "linear", None), ("rnn.weight_hh_l0_reverse", "linear", None),
    ]  # fmt: skip


def test_rnn_without_weight_hh_is_skipped_with_reason():
    plan = plan_views({"rnn.weight_ih_l0": _info(28, 5)})
    assert plan.matrices == [] and _reasons(plan)["rnn.weight_ih_l0"].startswith("RNN gate count")


# ------------------------------------------------------------------ transformers


def _gpt2(transformers, n_layer=2):
    torch.manual_seed(4)
    cfg = transformers.GPT2Config(
        n_embd=16, n_layer=n_layer, n_head=4, vocab_size=40, n_positions=8
    )
    return cfg, transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_views_tied_embedding_and_order(transformers):
    cfg, model = _gpt2(transformers)
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    plan = plan_views(_infos(state, storage=True), source_order=sorted(state))
    assert plan.aliases == {"lm_head.weight": "transformer.wte.weight"}
    block = [
        ("attn.c_attn.weight", "qkv_fused", (48, 16)), ("attn.c_attn.weight[q]", "qkv_part", (16, 16)),
        ("attn.c_attn.weight[k]", "qkv_part", (16, 16)), ("attn.c_attn.weight[v]", "qkv_part", (16, 16)),
        ("attn.c_proj.weight", "conv1d_gpt2", (16, 16)), ("mlp.c_fc.weight", "conv1d_gpt2", (64, 16)),
        ("mlp.c_proj.weight", "conv1d_gpt2", (16, 64)),
    ]  # fmt: skip
    expected = [("transformer.wte.weight", "embedding", (16, 40)),
                ("transformer.wpe.weight", "embedding", (16, 8))]  # fmt: skip
    expected += [(f"transformer.h.{i}.{n}", k, s) for i in range(2) for n, k, s in block]
    assert [(m.name, m.kind, m.shape) for m in plan.matrices] == expected
    _check_shapes(plan, state)
    # without storage ids the config's tie_word_embeddings still ties them
    plan2 = plan_views(_infos(state), config=cfg.to_dict())
    assert plan2.aliases == {"lm_head.weight": "transformer.wte.weight"}
    # no storage ids, no config: analysed twice, the head as is
    plan3 = plan_views(_infos(state))
    assert plan3.aliases == {} and _by_name(plan3)["lm_head.weight"].kind == "lm_head"


def test_gpt2_conv1d_views_compute_the_layers(transformers):
    _, model = _gpt2(transformers)
    state = model.state_dict()
    views = _by_name(plan_views(_infos(state)))
    h = model.transformer.h[0]
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        q, k, v = h.attn.c_attn(x).split(16, dim=2)
        bq, bk, bv = h.attn.c_attn.bias.split(16)
        for part, out, b in (("q", q, bq), ("k", k, bk), ("v", v, bv)):
            w = views[f"transformer.h.0.attn.c_attn.weight[{part}]"].extract(h.attn.c_attn.weight)
            torch.testing.assert_close(x @ w.T + b, out)
        w = views["transformer.h.0.mlp.c_fc.weight"].extract(h.mlp.c_fc.weight)
        torch.testing.assert_close(x @ w.T + h.mlp.c_fc.bias, h.mlp.c_fc(x))
        emb = views["transformer.wte.weight"].extract(model.transformer.wte.weight)
        assert torch.equal(emb, model.transformer.wte.weight.T)


def test_nanogpt_linear_c_attn_is_not_transposed():
    # nanoGPT uses nn.Linear under GPT-2 names: c_attn is (3d, d)
    infos = {"transformer.h.0.attn.c_attn.weight": _info(48, 16),
             "transformer.h.0.attn.c_proj.weight": _info(16, 16),
             "transformer.h.0.mlp.c_fc.weight": _info(64, 16)}  # fmt: skip
    views = _by_name(plan_views(infos))
    assert views["transformer.h.0.attn.c_attn.weight[k]"].shape == (16, 16)
    assert views["transformer.h.0.mlp.c_fc.weight"].kind == "linear"
    w = torch.arange(48 * 16.0).reshape(48, 16)
    assert torch.equal(views["transformer.h.0.attn.c_attn.weight[v]"].extract(w), w[32:])


def _neox(transformers, layers=2, heads=4, hidden=32):
    torch.manual_seed(5)
    cfg = transformers.GPTNeoXConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, vocab_size=40,
    )  # fmt: skip
    return cfg, transformers.GPTNeoXForCausalLM(cfg).eval()


def test_gpt_neox_interleaved_qkv_split_recovers_known_q_k_v():
    heads, hd = 4, 8
    hidden = heads * hd
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(hidden, hidden, generator=gen) for _ in range(3))
    # the GPT-NeoX layout, built per head: rows of head h are [Q_h; K_h; V_h]
    rows = []
    for h in range(heads):
        for m in (q, k, v):
            rows.append(m[h * hd : (h + 1) * hd])
    w = torch.cat(rows)
    infos = {"gpt_neox.layers.0.attention.query_key_value.weight": _info(3 * hidden, hidden)}
    plan = plan_views(infos, config={"model_type": "gpt_neox", "num_attention_heads": heads})
    views = _by_name(plan)
    base = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert torch.equal(views[base].extract(w), w) and views[base].kind == "qkv_fused"
    for part, m in (("q", q), ("k", k), ("v", v)):
        assert views[f"{base}[{part}]"].kind == "qkv_part"
        assert torch.equal(views[f"{base}[{part}]"].extract(w), m)


def test_gpt_neox_real_model_split_matches_its_attention(transformers):
    cfg, model = _neox(transformers)
    state = model.state_dict()
    plan = plan_views(_infos(state), config=cfg.to_dict(), source_order=sorted(state))
    views = _by_name(plan)
    attn = model.gpt_neox.layers[1].attention
    x = torch.randn(3, 32)
    with torch.no_grad():
        fused = attn.query_key_value(x).view(3, 4, 3 * 8)  # how the model reads it
        q, k, v = fused.chunk(3, dim=-1)
        bias = attn.query_key_value.bias.view(4, 3 * 8).chunk(3, dim=-1)
        for part, out, b in zip("qkv", (q, k, v), bias, strict=True):
            w = views[f"gpt_neox.layers.1.attention.query_key_value.weight[{part}]"]
            torch.testing.assert_close(x @ w.extract(attn.query_key_value.weight).T,
                                       (out - b).reshape(3, 32))  # fmt: skip
    head = [n for n in state if n.endswith("weight") and state[n].shape == (40, 32)
            and not n.startswith("gpt_neox.embed_in")]  # fmt: skip
    block = ["attention.query_key_value.weight", "attention.query_key_value.weight[q]",
             "attention.query_key_value.weight[k]", "attention.query_key_value.weight[v]",
             "attention.dense.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight"]  # fmt: skip
    expected = ["gpt_neox.embed_in.weight"]
    expected += [f"gpt_neox.layers.{i}.{b}" for i in range(2) for b in block] + head
    assert [m.name for m in plan.matrices] == expected
    _check_shapes(plan, state)


def test_pythia_layout_with_buffers_and_head_table():
    """Pythia-70m names and shapes (docs/pythia.md#catalog), no config: heads from the table,
    buffers skipped."""
    hidden, layers, inter, vocab = 512, 6, 2048, 50304
    infos = {"gpt_neox.embed_in.weight": _info(vocab, hidden, dtype=torch.float16)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        infos.update({
            p + "input_layernorm.weight": _info(hidden, dtype=torch.float16),
            p + "attention.bias": _info(1, 1, 2048, 2048, dtype=torch.bool),
            p + "attention.masked_bias": _info(dtype=torch.float16),
            p + "attention.rotary_emb.inv_freq": _info(32, dtype=torch.float32),
            p + "attention.query_key_value.weight": _info(3 * hidden, hidden, dtype=torch.float16),
            p + "attention.dense.weight": _info(hidden, hidden, dtype=torch.float16),
            p + "mlp.dense_h_to_4h.weight": _info(inter, hidden, dtype=torch.float16),
            p + "mlp.dense_4h_to_h.weight": _info(hidden, inter, dtype=torch.float16),
        })  # fmt: skip
    infos["embed_out.weight"] = _info(vocab, hidden, dtype=torch.float16)
    plan = plan_views(dict(sorted(infos.items())))
    views = _by_name(plan)
    assert plan.matrices[0].name == "gpt_neox.embed_in.weight"
    assert plan.matrices[0].shape == (hidden, vocab) and plan.matrices[0].source_dtype == "float16"
    assert plan.matrices[-1].name == "embed_out.weight" and plan.matrices[-1].kind == "lm_head"
    assert len(plan.matrices) == 2 + 7 * layers
    q = views["gpt_neox.layers.5.attention.query_key_value.weight[q]"]
    assert q.ops == (("heads", 8, 3, 0),)  # 8 heads from the Pythia table
    assert plan.summary() == {
        "buffer, not a weight": 3 * layers,
        "1-D parameter (bias/norm)": layers,
    }


def test_qkv_split_without_head_count_keeps_whole_and_says_why():
    infos = {
        f"gpt_neox.layers.{i}.attention.query_key_value.weight": _info(96, 32) for i in range(2)
    }
    plan = plan_views(infos)
    assert [m.kind for m in plan.matrices] == ["qkv_fused", "qkv_fused"]
    assert plan.summary() == {"Q/K/V split needs the head count: add config.json": 2}


def test_phi3_fused_qkv_with_gqa_sizes(transformers):
    cfg = transformers.Phi3Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=40, pad_token_id=0,
    )  # fmt: skip
    model = transformers.Phi3ForCausalLM(cfg)
    state = model.state_dict()
    plan = plan_views(_infos(state), config=cfg.to_dict())
    views = _by_name(plan)
    base = "model.layers.0.self_attn.qkv_proj.weight"
    w = state[base]
    assert views[base].shape == (64, 32)
    assert [views[f"{base}[{p}]"].shape for p in "qkv"] == [(32, 32), (16, 32), (16, 32)]
    assert torch.equal(views[f"{base}[k]"].extract(w), w[32:48])
    assert torch.equal(views[f"{base}[v]"].extract(w), w[48:])
    # Phi-3's fused gate_up_proj is an ordinary (2I, H) linear
    assert views["model.layers.0.mlp.gate_up_proj.weight"].kind == "linear"
    _check_shapes(plan, state)
    plan2 = plan_views(_infos(state))  # no config: whole only, with the reason
    assert f"{base}[q]" not in _by_name(plan2)
    assert _reasons(plan2)[base] == "Q/K/V split needs the head count: add config.json"


def test_multihead_attention_in_proj():
    mha = nn.MultiheadAttention(12, 3)
    state = {f"attn.{k}": v for k, v in mha.state_dict().items()}
    views = _by_name(plan_views(_infos(state)))
    w = mha.in_proj_weight
    assert views["attn.in_proj_weight"].kind == "qkv_fused"
    for i, p in enumerate("qkv"):
        assert torch.equal(views[f"attn.in_proj_weight[{p}]"].extract(w), w[12 * i : 12 * (i + 1)])
    assert views["attn.out_proj.weight"].kind == "linear"
    assert list(views)[-1] == "attn.out_proj.weight"


def test_llama_real_model(transformers):
    cfg = transformers.LlamaConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, vocab_size=40, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    state = model.state_dict()
    plan = plan_views(_infos(state, storage=True), config=cfg.to_dict(), source_order=sorted(state))
    block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    expected = ["model.embed_tokens.weight"]
    expected += [f"model.layers.{i}.{b}.weight" for i in range(2) for b in block]
    expected += ["lm_head.weight"]
    assert [m.name for m in plan.matrices] == expected
    assert _by_name(plan)["model.layers.0.self_attn.k_proj.weight"].shape == (8, 16)
    assert plan.aliases == {}
    _check_shapes(plan, state)


def test_tied_embedding_config_but_distinct_storage_is_not_aliased():
    infos = {
        "model.embed_tokens.weight": _info(40, 16, sid=1),
        "lm_head.weight": _info(40, 16, sid=2),
    }
    plan = plan_views(infos, config={"model_type": "llama", "tie_word_embeddings": True})
    assert plan.aliases == {} and len(plan.matrices) == 2


# ------------------------------------------------------------------ experts


def test_mixtral_stacked_experts(transformers):
    cfg = transformers.MixtralConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=8, num_local_experts=3, vocab_size=40,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(cfg)
    state = model.state_dict()
    experts = model.model.layers[0].mlp.experts
    prefix = next(k for k in state if k.endswith("experts.gate_up_proj")).rsplit(".", 1)[0]
    plan = plan_views(_infos(state), config=cfg.to_dict())
    views = _by_name(plan)
    x = torch.randn(5, 16)
    with torch.no_grad():
        for e in range(3):
            gate, up = nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
            g = views[f"{prefix}.gate_up_proj[{e},gate]"]
            assert (g.kind, g.part, g.shape) == ("expert", f"{e},gate", (8, 16))
            torch.testing.assert_close(x @ g.extract(experts.gate_up_proj).T, gate)
            u = views[f"{prefix}.gate_up_proj[{e},up]"].extract(experts.gate_up_proj)
            torch.testing.assert_close(x @ u.T, up)
            d = views[f"{prefix}.down_proj[{e}]"].extract(experts.down_proj)
            assert d.shape == (16, 8) and torch.equal(d, experts.down_proj[e])
    names = [m.name for m in plan.matrices if m.kind == "expert"]
    assert names[:3] == [f"{prefix}.gate_up_proj[0,gate]", f"{prefix}.gate_up_proj[0,up]",
                         f"{prefix}.gate_up_proj[1,gate]"]  # fmt: skip
    assert names[-1] == f"{prefix}.down_proj[2]"
    _check_shapes(plan, state)
    # without the config the layout is unknown
    reasons = _reasons(plan_views(_infos(state)))
    assert reasons[f"{prefix}.gate_up_proj"].startswith("expert layout unknown")
    # hidden = 2·intermediate here: gate_up is square per expert, and only the model's
    # convention (transformers: (E, out, in)) tells the orientation
    cfg_no_type = {k: v for k, v in cfg.to_dict().items() if k != "model_type"}
    reasons = _reasons(plan_views(_infos(state), config=cfg_no_type))
    assert reasons[f"{prefix}.gate_up_proj"] == (
        "expert layout unknown: (E, out, in) and (E, in, out) have the same shape"
    )


def test_experts_in_out_layout_and_interleaved_gate_up():
    e_count, hidden, inter = 2, 6, 4
    w = torch.randn(e_count, hidden, 2 * inter)  # Llama4 / gpt-oss: (E, in, out)
    down = torch.randn(e_count, inter, hidden)
    infos = {"m.experts.gate_up_proj": _info(*w.shape), "m.experts.down_proj": _info(*down.shape),
             "m.experts.gate_up_proj_bias": _info(e_count, 2 * inter)}  # fmt: skip
    cfg = {"model_type": "llama4_text", "hidden_size": hidden, "intermediate_size": inter}
    views = _by_name(plan_views(infos, config=cfg))
    assert torch.equal(views["m.experts.gate_up_proj[1,gate]"].extract(w), w[1][:, :inter].T)
    assert torch.equal(views["m.experts.gate_up_proj[1,up]"].extract(w), w[1][:, inter:].T)
    assert torch.equal(views["m.experts.down_proj[0]"].extract(down), down[0].T)
    plan = plan_views(infos, config={**cfg, "model_type": "gpt_oss"})
    views = _by_name(plan)
    assert torch.equal(views["m.experts.gate_up_proj[0,gate]"].extract(w), w[0][:, ::2].T)
    assert torch.equal(views["m.experts.gate_up_proj[0,up]"].extract(w), w[0][:, 1::2].T)
    assert _reasons(plan)["m.experts.gate_up_proj_bias"] == "stacked expert biases, not weights"


def test_expert_layout_ambiguous_or_mismatched_is_skipped():
    infos = {"m.experts.w1": _info(2, 8, 8), "m.experts.w2": _info(2, 5, 7)}
    reasons = _reasons(plan_views(infos, config={"hidden_size": 8, "intermediate_size": 8}))
    assert reasons["m.experts.w1"].startswith("expert layout unknown: (E, out, in)")
    assert reasons["m.experts.w2"].startswith("expert layout unknown: shape")


def test_per_expert_linears_are_plain():
    infos = {f"layers.0.block_sparse_moe.experts.{e}.{w}.weight": _info(8, 4) if w != "w2" else _info(4, 8)
             for e in range(11) for w in ("w1", "w2", "w3")}  # fmt: skip
    infos["layers.0.block_sparse_moe.gate.weight"] = _info(11, 4)
    plan = plan_views(infos)
    names = [m.name for m in plan.matrices]
    assert all(m.kind == "linear" for m in plan.matrices)
    assert names[0] == "layers.0.block_sparse_moe.gate.weight"
    assert names[1:4] == [
        f"layers.0.block_sparse_moe.experts.0.{w}.weight" for w in ("w1", "w3", "w2")
    ]
    assert names[-1] == "layers.0.block_sparse_moe.experts.10.w2.weight"


# ------------------------------------------------------------------ skips, filters, misc


def test_every_skip_reason():
    infos = {
        "fc.weight": _info(4, 3),
        "fc.bias": _info(4),
        "scalar": _info(),
        "ids": _info(4, 3, dtype=torch.int64),
        "mask": _info(4, 3, dtype=torch.bool),
        "q.qweight": _info(4, 3, dtype=torch.int32),
        "q.weight_packed": _info(4, 3, dtype=torch.int32),
        "q.scales": _info(1, 3, dtype=torch.float16),
        "f8.weight": _info(4, 3, dtype=torch.float8_e4m3fn),
        "h.0.attention.bias": _info(1, 1, 8, 8, dtype=torch.uint8),
        "h.0.attention.masked_bias": _info(),
        "h.0.attention.rotary_emb.inv_freq": _info(4),
        "bn.running_mean": _info(4),
        "bn.running_var": _info(4),
        "bn.num_batches_tracked": _info(dtype=torch.int64),
        "embeddings.position_ids": _info(1, 16, dtype=torch.int64),
        "odd.weight": _info(3, 50, 50),
        "empty.weight": _info(0, 3),
        "m.experts.down_proj": _info(2, 4, 3),
        "h.0.attention.query_key_value.weight": _info(12, 4),
    }
    plan = plan_views(infos, exclude=[r"^fc\."])
    reasons = _reasons(plan)
    assert plan.matrices[0].name == "h.0.attention.query_key_value.weight"
    assert reasons == {
        "fc.weight": "excluded by --exclude",
        "fc.bias": "1-D parameter (bias/norm)",
        "scalar": "1-D parameter (bias/norm)",
        "ids": "integer tensor",
        "mask": "bool tensor (a mask, not a weight)",
        "q.qweight": "quantised packed weights (integer tensor); not supported",
        "q.weight_packed": "quantised packed weights (integer tensor); not supported",
        "q.scales": "quantisation scales/zero points, not a weight",
        "f8.weight": "fp8 weights need their scales; not supported",
        "h.0.attention.bias": "buffer, not a weight",
        "h.0.attention.masked_bias": "buffer, not a weight",
        "h.0.attention.rotary_emb.inv_freq": "buffer, not a weight",
        "bn.running_mean": "buffer, not a weight",
        "bn.running_var": "buffer, not a weight",
        "bn.num_batches_tracked": "buffer, not a weight",
        "embeddings.position_ids": "buffer, not a weight",
        "odd.weight": "unknown ≥3-D tensor (shape 3×50×50); no view rule",
        "empty.weight": "empty tensor (a zero dimension)",
        "m.experts.down_proj": "expert layout unknown: add config.json with hidden_size and intermediate_size",
        "h.0.attention.query_key_value.weight": "Q/K/V split needs the head count: add config.json",
    }
    summary = plan.summary()
    assert summary["buffer, not a weight"] == 7 and summary["1-D parameter (bias/norm)"] == 2
    assert sum(summary.values()) == len(plan.skipped) == len(infos)


def test_include_exclude_select_slices():
    infos = {f"layers.{i}.attention.query_key_value.weight": _info(24, 8) for i in range(3)}
    infos["layers.0.mlp.fc1.weight"] = _info(16, 8)
    cfg = {"num_attention_heads": 2}
    plan = plan_views(infos, config=cfg, include=[r"\[q\]"])
    assert [m.name for m in plan.matrices] == [
        f"layers.{i}.attention.query_key_value.weight[q]" for i in range(3)
    ]
    assert plan.summary() == {"not matched by --include": 3 * 3 + 1}
    skipped = {s.matrix for s in plan.skipped}
    assert "layers.1.attention.query_key_value.weight[k]" in skipped
    plan = plan_views(infos, config=cfg, exclude=[r"layers\.[12]\.", r"\[v\]$"])
    assert [m.name for m in plan.matrices] == [
        "layers.0.attention.query_key_value.weight",
        "layers.0.attention.query_key_value.weight[q]",
        "layers.0.attention.query_key_value.weight[k]",
        "layers.0.mlp.fc1.weight",
    ]
    assert plan.summary() == {"excluded by --exclude": 2 * 4 + 1}


@pytest.mark.parametrize("option", ["include", "exclude", "transposed"])
def test_invalid_regex_names_the_option(option):
    value = "layers.(" if option == "transposed" else ["layers.("]
    with pytest.raises(ViewError, match=f"^{option}: invalid regular expression") as info:
        plan_views({"a.weight": _info(2, 2)}, **{option: value})
    # a Python caller reads the parameter, the CLI the flag (errors.option_ref)
    assert info.value.render(cli=True).startswith(f"--{option}: invalid regular expression")
    assert info.value.option == option


def test_lightning_prefix_is_stripped_and_raw_key_kept():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    state = {f"model.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    plan = plan_views(_infos(state))
    emb, lin = plan.matrices
    assert (emb.name, emb.key, emb.kind, emb.shape) == (
        "0.weight",
        "model.0.weight",
        "linear",
        (10, 4),
    )
    assert lin.source_dtype == "bfloat16" and lin.extract(state[lin.key]).dtype == torch.bfloat16
    # an nn.Embedding under an embedding-like name is transposed to (d, vocab)
    named = {
        "encoder.embedding.weight": state["model.0.weight"],
        "encoder.fc.weight": state["model.1.weight"],
    }
    plan = plan_views(_infos(named))
    assert plan.matrices[0].kind == "embedding" and plan.matrices[0].shape == (4, 10)
    assert torch.equal(plan.matrices[0].extract(named["encoder.embedding.weight"]),
                       named["encoder.embedding.weight"].T)  # fmt: skip


def test_extract_checks_the_shape_and_views_are_frozen():
    view = plan_views({"a.weight": _info(4, 3)}).matrices[0]
    with pytest.raises(ViewError, match="a.weight"):
        view.extract(torch.zeros(3, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.name = "b"  # type: ignore[misc]
    s = Skipped("p", "k", "r")
    assert s.matrix is None


def test_extract_is_a_view_for_slices():
    lstm = nn.LSTM(3, 4)
    w = lstm.weight_ih_l0.detach()
    view = _by_name(plan_views(_infos(dict(lstm.state_dict()))))["weight_ih_l0[f]"]
    out = view.extract(w)
    assert out.data_ptr() == w[4:8].data_ptr()  # no copy


def test_a_name_no_store_can_keep_is_a_visible_skip(tmp_path):
    # found by the fuzzer (seed 4243, case 37316): a tensor named '../../etc/passwd' reached
    # the store and ended in a ValueError from its name check
    plan = plan_views({"../../etc/passwd": _info(4, 3), "fc.weight": _info(3, 3)})
    assert [m.name for m in plan.matrices] == ["fc.weight"]
    [skip] = [s for s in plan.skipped if s.key == "../../etc/passwd"]
    assert "holds '/'" in skip.reason and "rename the key" in skip.reason
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2):
        state = {"a/b.weight": torch.randn(4, 3), "fc.weight": torch.randn(3, 3)}
        torch.save(state, run / f"step_{step}.pt")
    import specdyn

    result = specdyn.analyze(run, home=tmp_path / "home", vectors=None)
    with specdyn.open_run(result.runs[0].store_path) as stored:
        assert stored.values.matrices == ["fc.weight"]
        assert any(p == "a/b.weight" and "holds '/'" in r for p, r in stored.skipped)
