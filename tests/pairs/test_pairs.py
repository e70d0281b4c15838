"""Pair presets and pairs files on tiny real models (specdyn.pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _views import views_of
from torch import nn

from specdyn.errors import SpecdynError
from specdyn.pairs import PairsFileError, head_pairs, pairs_for, plan_pairs


def _save(tmp_path, module: nn.Module, name: str = "step_000000.pt"):
    """A bare state dict as a torch file; returns its folder."""
    folder = tmp_path / "run"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), folder / name)
    return folder


def _by_name(result):
    return {p.name: p for p in result.pairs}


# ------------------------------------------------------------------ sequential / VGG


def test_vgg_cnn_centre_tap_and_matching_conv_to_linear(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, (5, 4)), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 4),
    )  # fmt: skip
    folder = _save(tmp_path, net)
    result = pairs_for(folder)
    assert result.preset == "sequential"
    assert [(p.name, p.rule) for p in result.pairs] == [
        ("0.weight~2.weight", "conv-centre-tap"),
        ("2.weight~6.weight", "sequential"),
        ("6.weight~8.weight", "sequential"),
    ]
    assert result.skipped == []
    tap_pair = result.pairs[0]
    # even kernel width 4: index k//2 = 2, the higher-index of the two central taps (1, 2)
    assert tap_pair.options == {"tap": [2, 2], "basis": "kernel", "normalize": False}
    mats = views_of(folder).matrices
    # the paper's definition: the whole flattened kernel is decomposed ...
    (whole,) = tap_pair.second.apply(mats["2.weight"])
    assert torch.equal(whole, mats["2.weight"]) and tap_pair.second.shape == (16, 8 * 5 * 4)
    # ... and each right singular vector, reshaped (c_in, kh, kw), is cut to the tap
    v = np.linalg.svd(whole.double().numpy(), full_matrices=False)[2].T  # [c_in·kh·kw, 16]
    (cut,) = tap_pair.second.cut_vectors(v)
    np.testing.assert_array_equal(cut, v.reshape(8, 5, 4, -1)[:, 2, 2, :])
    assert tap_pair.first.dim == tap_pair.second.dim == 8
    assert (tap_pair.first.side, tap_pair.second.side) == ("u", "v")
    # basis = "slice": the tap's own (c_out, c_in) slice is decomposed instead
    slice_file = tmp_path / "slice.toml"
    slice_file.write_text('[conv]\nbasis = "slice"\n')
    sliced = pairs_for(folder, pairs_file=slice_file).pairs[0]
    assert sliced.options == {"tap": [2, 2], "basis": "slice", "normalize": False}
    (block,) = sliced.second.apply(mats["2.weight"])
    assert torch.equal(block, net[2].weight.detach()[:, :, 2, 2])
    assert sliced.second.shape == (16, 8) and sliced.second.cut == ()


def test_cnn_mismatched_flatten_and_depthwise_are_skipped(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 3),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Linear(5, 2),
    )  # fmt: skip
    result = pairs_for(_save(tmp_path, net))
    assert [(p.name, p.rule) for p in result.pairs] == [("4.weight~5.weight", "sequential")]
    reasons = dict(result.skipped)
    assert "grouped/depthwise" in reasons["0.weight → 1.weight"]
    assert "grouped/depthwise" in reasons["1.weight → 2.weight"]
    assert "64 input features" in reasons["2.weight → 4.weight"]
    assert "4 channels" in reasons["2.weight → 4.weight"]


# ------------------------------------------------------------------ LSTM


class _Rnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=3, bidirectional=True)


def test_lstm_bidirectional_stacked_pairs(tmp_path):
    torch.manual_seed(1)
    model = _Rnn()
    folder = _save(tmp_path, model)
    result = pairs_for(folder)
    assert result.preset == "lstm"
    got = {(p.name, p.rule, p.options.get("half")) for p in result.pairs}
    expected = set()
    dirs = ["", "_reverse"]
    for layer in range(3):
        for d in dirs:
            expected.add((f"lstm.weight_ih_l{layer}{d}[g]~lstm.weight_hh_l{layer}{d}[g]",
                          "lstm-ih-to-hh", None))  # fmt: skip
    for layer in range(2):
        for src in dirs:
            half = "reverse" if src else "forward"
            for dst in dirs:
                target = f"lstm.weight_ih_l{layer + 1}{dst}[g]"
                expected.add((f"lstm.weight_ih_l{layer}{src}[g]~{target}", "lstm-depth", half))
                expected.add((f"lstm.weight_hh_l{layer}{src}[g]~{target}", "lstm-hh-to-ih", half))
    assert got == expected and len(result.pairs) == 22
    mats = views_of(folder).matrices
    pair = _by_name(result)["lstm.weight_hh_l0_reverse[g]~lstm.weight_ih_l1[g]"]
    (block,) = pair.second.apply(mats["lstm.weight_ih_l1[g]"])
    w = model.lstm.weight_ih_l1.detach()
    assert torch.equal(block, w[32:48, 16:32])  # gate g = rows 2h..3h; reverse half = cols h..2h
    (first,) = pair.first.apply(mats["lstm.weight_hh_l0_reverse[g]"])
    assert torch.equal(first, model.lstm.weight_hh_l0_reverse.detach()[32:48])


def test_lstm_other_gate_and_unknown_gate(tmp_path):
    folder = _save(tmp_path, _Rnn())
    result = pairs_for(folder, gate="f")
    assert all(p.first.matrix.endswith("[f]") and p.options["gate"] == "f" for p in result.pairs)
    assert len(result.pairs) == 22
    none = pairs_for(folder, gate="z")  # a GRU letter on an LSTM
    assert none.pairs == [] and "not a gate block" in none.notes[0]
    with pytest.raises(SpecdynError, match="^gate 'q'") as info:
        pairs_for(folder, gate="q")
    assert info.value.render(cli=True).startswith("--gate 'q'")


# ------------------------------------------------------------------ transformers

transformers = pytest.importorskip("transformers")


def _hf(tmp_path, model):
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    return folder


def _capture(module_name, model, x, monkeypatch):
    """The model's own per-head q, k (before rotary) and v of input embeddings x."""
    import importlib

    mod = importlib.import_module(module_name)
    seen = {}
    real_rope = mod.apply_rotary_pos_emb
    real_eager = mod.eager_attention_forward

    def rope(q, k, *args, **kwargs):
        seen.setdefault("q", q.detach().clone())
        seen.setdefault("k", k.detach().clone())
        return real_rope(q, k, *args, **kwargs)

    def eager(module, query, key, value, *args, **kwargs):
        seen.setdefault("v", value.detach().clone())
        return real_eager(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(mod, "apply_rotary_pos_emb", rope)
    monkeypatch.setattr(mod, "eager_attention_forward", eager)
    with torch.no_grad():
        model(inputs_embeds=x)
    return seen  # each (batch, heads, seq, head_dim), first layer


def _check_heads(pair, mats, x, ref_first, ref_second, expected_map):
    """Each matched head block projects x exactly as the model's own heads do.

    expected_map[n] = (first head, second head) of the n-th couple, written out by the test.
    """
    couples = pair.blocks(mats[pair.first.matrix], mats[pair.second.matrix])
    assert len(couples) == len(expected_map)
    for (a, b), (i, j) in zip(couples, expected_map, strict=True):
        torch.testing.assert_close(x @ a.T, ref_first[0, i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x @ b.T, ref_second[0, j], rtol=1e-5, atol=1e-5)


def test_gpt_neox_pairs_and_head_slices(tmp_path, monkeypatch):
    torch.manual_seed(2)
    cfg = transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=40, max_position_embeddings=16, use_parallel_residual=True,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    for layer in model.gpt_neox.layers:
        nn.init.normal_(layer.attention.query_key_value.bias)
    folder = _hf(tmp_path, model)
    result = pairs_for(folder)
    assert result.preset == "gpt-neox"
    a = "gpt_neox.layers.{}.attention."
    m = "gpt_neox.layers.{}.mlp."
    qkv = a + "query_key_value.weight"
    expected = [
        ("gpt_neox.embed_in.weight~" + qkv.format(0), "embed-to-qkv"),
        ("gpt_neox.embed_in.weight~" + m.format(0) + "dense_h_to_4h.weight",
         "parallel-residual:embed-to-mlp-in"),
    ]  # fmt: skip
    for i in range(2):
        expected += [
            (qkv.format(i) + "[q]~[k]", "q-k-per-head"),
            (qkv.format(i) + "[v]~" + a.format(i) + "dense.weight", "v-o-per-head"),
            (m.format(i) + "dense_h_to_4h.weight~" + m.format(i) + "dense_4h_to_h.weight",
             "mlp-in-to-out"),
        ]  # fmt: skip
    expected[5:5] = [
        (m.format(0) + "dense_4h_to_h.weight~" + qkv.format(1), "mlp-out-to-next-qkv"),
        (a.format(0) + "dense.weight~" + qkv.format(1), "parallel-residual:o-to-next-qkv"),
        (a.format(0) + "dense.weight~" + m.format(1) + "dense_h_to_4h.weight",
         "parallel-residual:o-to-next-mlp-in"),
        (m.format(0) + "dense_4h_to_h.weight~" + m.format(1) + "dense_h_to_4h.weight",
         "parallel-residual:mlp-out-to-next-mlp-in"),
    ]  # fmt: skip
    assert sorted((p.name, p.rule) for p in result.pairs) == sorted(expected)
    assert not any(p.rule == "o-to-mlp-in" for p in result.pairs)
    assert any("parallel residual" in n for n in result.notes)

    # the per-head operand slices reproduce the model's own q, k, v heads (bias removed)
    x = torch.randn(1, 5, 32)
    seen = _capture("transformers.models.gpt_neox.modeling_gpt_neox", model, x, monkeypatch)
    bias = model.gpt_neox.layers[0].attention.query_key_value.bias.detach().view(4, 3, 8)
    ref = {n: seen[n] - bias[:, i][None, :, None, :] for i, n in enumerate("qkv")}
    mats = views_of(folder).matrices
    x0 = model.gpt_neox.layers[0].input_layernorm(x).detach()[0]
    pairs = _by_name(result)
    _check_heads(
        pairs[qkv.format(0) + "[q]~[k]"], mats, x0, ref["q"], ref["k"], [(h, h) for h in range(4)]
    )
    vo = pairs[qkv.format(0) + "[v]~" + a.format(0) + "dense.weight"]
    v_heads = vo.first.apply(mats[vo.first.matrix])
    assert len(v_heads) == 4
    for h, block in enumerate(v_heads):
        torch.testing.assert_close(x0 @ block.T, ref["v"][0, h], rtol=1e-5, atol=1e-5)
    dense = model.gpt_neox.layers[0].attention.dense.weight.detach()
    for h, block in enumerate(vo.second.apply(mats[vo.second.matrix])):
        assert torch.equal(block, dense[:, 8 * h : 8 * h + 8])


def test_gpt_neox_sequential_residual_has_o_to_mlp_in(tmp_path):
    cfg = transformers.GPTNeoXConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        vocab_size=20, max_position_embeddings=8, use_parallel_residual=False,
    )  # fmt: skip
    result = pairs_for(_hf(tmp_path, transformers.GPTNeoXForCausalLM(cfg)))
    rules = [p.rule for p in result.pairs]
    assert rules.count("o-to-mlp-in") == 2
    assert not any(r.startswith("parallel-residual") for r in rules)


def test_gpt2_pairs(tmp_path):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=40, n_positions=16)
    result = pairs_for(_hf(tmp_path, transformers.GPT2LMHeadModel(cfg)))
    assert result.preset == "gpt2"
    h = "transformer.h.{}."
    expected = [("transformer.wte.weight~" + h.format(0) + "attn.c_attn.weight", "embed-to-qkv")]
    for i in range(2):
        expected += [
            (h.format(i) + "attn.c_attn.weight[q]~[k]", "q-k-per-head"),
            (h.format(i) + "attn.c_attn.weight[v]~" + h.format(i) + "attn.c_proj.weight",
             "v-o-per-head"),
            (h.format(i) + "attn.c_proj.weight~" + h.format(i) + "mlp.c_fc.weight", "o-to-mlp-in"),
            (h.format(i) + "mlp.c_fc.weight~" + h.format(i) + "mlp.c_proj.weight",
             "mlp-in-to-out"),
        ]  # fmt: skip
    expected.insert(5, (h.format(0) + "mlp.c_proj.weight~" + h.format(1) + "attn.c_attn.weight",
                        "mlp-out-to-next-qkv"))  # fmt: skip
    assert [(p.name, p.rule) for p in result.pairs] == expected
    qk = result.pairs[1]
    assert qk.options == {"heads": 4, "kv_heads": 4} and qk.first.shape == (8, 32)
    assert any("transformer.wpe.weight" in n for n in result.notes)  # listed, not dropped


def test_llama_gqa_pairs_and_head_slices(tmp_path, monkeypatch):
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, vocab_size=40, max_position_embeddings=16,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    folder = _hf(tmp_path, model)
    result = pairs_for(folder)
    assert result.preset == "llama"
    L = "model.layers.{}."
    expected = [("model.embed_tokens.weight~" + L.format(0) + "self_attn.q_proj.weight",
                 "embed-to-qkv")]  # fmt: skip
    for i in range(2):
        s, mlp = L.format(i) + "self_attn.", L.format(i) + "mlp."
        expected += [
            (s + "q_proj.weight~" + s + "k_proj.weight", "q-k-per-head"),
            (s + "v_proj.weight~" + s + "o_proj.weight", "v-o-per-head"),
            (s + "o_proj.weight~" + mlp + "gate_proj.weight", "o-to-mlp-in"),
            (s + "o_proj.weight~" + mlp + "up_proj.weight", "o-to-mlp-in"),
            (mlp + "gate_proj.weight~" + mlp + "down_proj.weight", "mlp-in-to-out"),
            (mlp + "up_proj.weight~" + mlp + "down_proj.weight", "mlp-in-to-out"),
        ]
    expected.insert(7, (L.format(0) + "mlp.down_proj.weight~" + L.format(1)
                        + "self_attn.q_proj.weight", "mlp-out-to-next-qkv"))  # fmt: skip
    assert sorted((p.name, p.rule) for p in result.pairs) == sorted(expected)
    pairs = _by_name(result)
    s = L.format(0) + "self_attn."
    qk = pairs[s + "q_proj.weight~" + s + "k_proj.weight"]
    assert qk.options == {"heads": 4, "kv_heads": 2}
    assert (qk.first.blocks, qk.second.blocks, qk.first.dim) == (4, 2, 8)

    x = torch.randn(1, 5, 32)
    seen = _capture("transformers.models.llama.modeling_llama", model, x, monkeypatch)
    x0 = model.model.layers[0].input_layernorm(x).detach()[0]
    mats = views_of(folder).matrices
    # query heads 0, 1 share kv head 0; 2, 3 share kv head 1
    _check_heads(qk, mats, x0, seen["q"], seen["k"], [(0, 0), (1, 0), (2, 1), (3, 1)])
    vo = pairs[s + "v_proj.weight~" + s + "o_proj.weight"]
    assert head_pairs(vo.first.blocks, vo.second.blocks) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    for h, block in enumerate(vo.first.apply(mats[vo.first.matrix])):
        torch.testing.assert_close(x0 @ block.T, seen["v"][0, h], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ shape chain


class _Odd(nn.Module):
    def __init__(self, second_in: int):
        super().__init__()
        self.token_embed = nn.Embedding(10, 6)
        self.mix = nn.Linear(6, 7)
        self.proj = nn.Linear(second_in, 3)


def test_unrecognised_architecture_shape_chain_or_hint(tmp_path):
    chained = pairs_for(_save(tmp_path / "a", _Odd(7)))
    assert chained.preset == "shape-chain"
    assert [(p.name, p.rule) for p in chained.pairs] == [
        ("token_embed.weight~mix.weight", "shape-chain"),
        ("mix.weight~proj.weight", "shape-chain"),
    ]
    assert "shape chain" in chained.notes[0]
    broken = pairs_for(_save(tmp_path / "b", _Odd(5)))
    assert broken.preset == "none" and broken.pairs == []
    assert "write a pairs file" in broken.notes[0] and "mix.weight has 7 outputs" in broken.notes[0]


# ------------------------------------------------------------------ pairs files


def _mlp_folder(tmp_path):
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3))
    return _save(tmp_path, net)


def test_pairs_file_adds_removes_replaces(tmp_path):
    folder = _mlp_folder(tmp_path)
    f = tmp_path / "pairs.toml"
    f.write_text(
        'remove = ["1.weight~2.weight"]\n'
        '[[pair]]\nfirst = "0.weight"\nsecond = "2.weight"\n'
        '[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\nsides = "uu"\n'
        '[[pair]]\nfirst = "1.weight"\nsecond = "1.weight"\nsides = "uu"\nheads = 3\n'
    )
    result = pairs_for(folder, pairs_file=f)
    assert result.preset == "sequential+file"
    got = {p.name: (p.rule, p.first.side + p.second.side) for p in result.pairs}
    assert got == {
        "0.weight~1.weight": ("file", "uu"),  # replaced the preset's uv pair
        "0.weight~2.weight": ("file", "uv"),
        "1.weight~1.weight": ("file", "uu"),
    }
    heads = _by_name(result)["1.weight~1.weight"]
    assert heads.first.ops == (("row_blocks", 3),) and heads.options["heads"] == 3
    assert any("replaced 0.weight~1.weight (sequential)" in n for n in result.notes)
    assert any("removed 1.weight~2.weight" in n for n in result.notes)
    f.write_text('replace = true\n[[pair]]\nfirst = "1.weight"\nsecond = "2.weight"\n')
    only = pairs_for(folder, pairs_file=f)
    assert [(p.name, p.rule) for p in only.pairs] == [("1.weight~2.weight", "file")]


def test_pairs_file_conv_tap_gate_and_half(tmp_path):
    folder = _save(tmp_path, _Rnn())
    f = tmp_path / "p.toml"
    f.write_text(
        'replace = true\n[[pair]]\nfirst = "lstm.weight_hh_l1_reverse"\n'
        'second = "lstm.weight_ih_l2"\ngate = "o"\nhalf = "reverse"\n'
    )
    (pair,) = pairs_for(folder, pairs_file=f).pairs
    assert pair.name == "lstm.weight_hh_l1_reverse[o]~lstm.weight_ih_l2[o]"
    assert pair.second.ops == (("cols", 16, 32, 1),) and pair.options["half"] == "reverse"
    cnn = _save(tmp_path / "c", nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 5, 3)))
    f.write_text(
        'replace = true\n[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\ntap = [0, 2]\n'
    )
    (conv,) = pairs_for(cnn, pairs_file=f).pairs
    # default basis "kernel": the tap's columns are cut from the kernel's v, after its SVD
    assert conv.second.ops == () and conv.second.cut == (("rows", 2, 36, 9),)
    assert conv.options["tap"] == [0, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[pair]\nfirst = 1", "not valid TOML"),
        ('[[pair]]\nfirst = "0.weigth"\nsecond = "1.weight"', "unknown matrix '0.weigth'; did you mean '0.weight'"),
        ('[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\nheads = 0', "heads 0: must be a positive integer"),
        ('[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\ncolour = 1', "unknown option 'colour'"),
        ('[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\nsides = "ux"', "sides 'ux'"),
        ('[[pair]]\nfirst = "0.weight"\nsecond = "2.weight"', "vectors have length 6 but 2.weight v vectors 6"),
        ('[[pair]]\nfirst = "0.weight"\nsecond = "1.weight"\ntap = "centre"', "tap: neither operand"),
        ('remove = ["0.weight~9.weight"]', "no pair named '0.weight~9.weight'; did you mean"),
        ("colour = 2", "unknown top-level key 'colour'"),
        ('[[pair]]\nfirst = "0.bias"\nsecond = "1.weight"', "not analysed: 1-D parameter"),
    ],
)  # fmt: skip
def test_bad_pairs_files_give_one_line_errors(tmp_path, text, message):
    folder = _mlp_folder(tmp_path)
    f = tmp_path / "bad.toml"
    f.write_text(text)
    if "2.weight" in text and "vectors" in message:
        # 0 (6×4) against 2 (3×6) compared vv: 4 ≠ 6
        f.write_text(text + '\nsides = "vv"')
        message = "0.weight v vectors have length 4 but 2.weight v vectors 6"
    with pytest.raises(PairsFileError) as info:
        pairs_for(folder, pairs_file=f)
    text_err = str(info.value)
    assert message in text_err and str(f) in text_err and "\n" not in text_err


def test_plan_pairs_raw_key_hint(tmp_path):
    """A raw (wrapped) key in a pairs file is answered with its canonical matrix name."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, folder / "s.pt")
    plan, infos, config, _ = views_of(folder)
    f = tmp_path / "p.toml"
    f.write_text('[[pair]]\nfirst = "model.0.weight"\nsecond = "1.weight"\n')
    with pytest.raises(PairsFileError, match="raw checkpoint key; its matrix is '0.weight'"):
        plan_pairs(plan, infos, config=config, pairs_file=f)


# ------------------------------------------------------------------ fixtures


def test_fixture_presets():
    neox = pairs_for("fixtures/neox-trainer")
    assert neox.preset == "gpt-neox"
    rules = {p.rule for p in neox.pairs}
    assert {"parallel-residual:o-to-next-qkv", "parallel-residual:o-to-next-mlp-in"} <= rules
    assert "o-to-mlp-in" not in rules
    mlp = pairs_for("fixtures/mlp-wd")
    assert [p.name for p in mlp.pairs] == [
        "layers.0.weight~layers.1.weight", "layers.1.weight~layers.2.weight",
        "layers.2.weight~layers.3.weight",
    ]  # fmt: skip
    cnn = pairs_for("fixtures/cnn-lightning")
    assert [p.rule for p in cnn.pairs] == ["conv-centre-tap", "conv-centre-tap", "sequential"]
    assert [d for d, _ in cnn.skipped] == ["conv3.weight → fc1.weight"]
    lstm = pairs_for("fixtures/lstm")
    assert len(lstm.pairs) == 4 + 4 + 2 + 2  # depth, hh→ih, ih→hh on two layers
    # JSON-able, for the CLI
    json.dumps([p.options for p in lstm.pairs])
    assert np.all([p.first.dim == p.second.dim for p in lstm.pairs])
