"""Canonical names and forward order, checked against real models' registration order."""

from __future__ import annotations

import random

import pytest
from torch import nn

from specdyn.errors import ViewError
from specdyn.naming import canonicalize, forward_sort, split_slice


def _matrix_params(model: nn.Module) -> list[str]:
    """≥2-D parameter names in registration order, which is forward order for these models."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2]


def _shuffled(names: list[str], seed: int = 0) -> list[str]:
    out = list(names)
    random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------- canonicalize


def test_strips_module_and_orig_mod_in_any_combination():
    keys = ["module._orig_mod.fc1.weight", "_orig_mod.module.fc2.weight", "module.module.fc3.bias"]
    assert canonicalize(keys) == {
        "module._orig_mod.fc1.weight": "fc1.weight",
        "_orig_mod.module.fc2.weight": "fc2.weight",
        "module.module.fc3.bias": "fc3.bias",
    }


def test_orig_mod_of_a_compiled_submodule_is_stripped_inside():
    assert canonicalize(["encoder._orig_mod.layers.0.weight", "head.weight"]) == {
        "encoder._orig_mod.layers.0.weight": "encoder.layers.0.weight",
        "head.weight": "head.weight",
    }


def test_lightning_model_prefix_stripped_only_when_every_key_has_it():
    keys = ["model.0.weight", "model.0.bias", "model.2.weight"]
    assert list(canonicalize(keys).values()) == ["0.weight", "0.bias", "2.weight"]
    # HF Llama: `model.` beside `lm_head`: nothing stripped
    hf = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"]
    assert canonicalize(hf) == {k: k for k in hf}


def test_lightning_wrapping_hf_llama_strips_one_level_only():
    keys = ["model.model.embed_tokens.weight", "model.model.layers.0.self_attn.q_proj.weight",
            "model.lm_head.weight"]  # fmt: skip
    assert list(canonicalize(keys).values()) == [
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight",
    ]  # fmt: skip


def test_wrappers_combine_repeatedly():
    keys = ["module.model._orig_mod.net.0.weight", "module.model._orig_mod.net.2.weight"]
    assert list(canonicalize(keys).values()) == ["0.weight", "2.weight"]


def test_hf_config_keeps_model_prefix():
    # a tied-embedding Llama saved by save_pretrained has only `model.*` keys
    keys = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"]
    assert canonicalize(keys) == {
        "model.embed_tokens.weight": "embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight": "layers.0.mlp.up_proj.weight",
    }
    assert canonicalize(keys, config={"model_type": "llama"}) == {k: k for k in keys}


def test_net_wrapper_and_identity():
    assert list(canonicalize(["net.fc.weight", "net.out.weight"]).values()) == [
        "fc.weight", "out.weight"
    ]  # fmt: skip
    keys = ["features.0.weight", "classifier.0.weight"]
    assert canonicalize(keys) == {k: k for k in keys}


def test_collision_after_stripping_is_an_error():
    with pytest.raises(ViewError, match="module.fc.weight"):
        canonicalize(["module.fc.weight", "fc.weight"])


def test_split_slice():
    assert split_slice("a.b.weight[q]") == ("a.b.weight", "q")
    assert split_slice("x.experts.down_proj[7,gate]") == ("x.experts.down_proj", "7,gate")
    assert split_slice("a.weight") == ("a.weight", None)


# ---------------------------------------------------------------- forward_sort


@pytest.fixture(scope="module")
def transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def test_gpt_neox_from_alphabetical_keys(transformers):
    cfg = transformers.GPTNeoXConfig(
        hidden_size=16, num_hidden_layers=11, num_attention_heads=2, intermediate_size=32,
        vocab_size=40,
    )  # fmt: skip
    model = transformers.GPTNeoXForCausalLM(cfg)
    expected = _matrix_params(model)
    # the output head keeps its Pythia name `embed_out` whatever transformers calls it
    expected = [n.replace("lm_head", "embed_out") for n in expected]
    alphabetical = sorted(expected)  # safetensors header order
    assert alphabetical != expected
    assert forward_sort(alphabetical, source_order=alphabetical) == expected
    assert forward_sort(alphabetical) == expected
    assert expected.index("gpt_neox.layers.10.attention.query_key_value.weight") > expected.index(
        "gpt_neox.layers.9.mlp.dense_4h_to_h.weight"
    )


def test_gpt2(transformers):
    cfg = transformers.GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=40, n_positions=8)
    model = transformers.GPT2LMHeadModel(cfg)
    expected = _matrix_params(model) + ["lm_head.weight"]  # tied: state_dict has it too
    assert forward_sort(sorted(expected)) == expected
    assert forward_sort(_shuffled(expected)) == expected
    assert expected[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert expected[2:6] == [
        "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
    ]  # fmt: skip


def test_llama(transformers):
    cfg = transformers.LlamaConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, vocab_size=40,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    expected = _matrix_params(model)
    assert expected[1:8] == [
        f"model.layers.0.{m}.weight"
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]  # fmt: skip
    assert forward_sort(sorted(expected)) == expected
    # with the 1-D norms and the real state-dict order as source order
    everything = list(model.state_dict())
    ordered = forward_sort(sorted(everything), source_order=everything)
    assert [n for n in ordered if n in expected] == expected
    assert ordered[0] == "model.embed_tokens.weight" and ordered[-1] == "lm_head.weight"


def test_sequential_mlp_numeric():
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(4, 4), nn.ReLU())])
    expected = list(model.state_dict())
    assert expected[-2:] == ["10.weight", "10.bias"]
    names = sorted(expected)
    assert names.index("10.weight") < names.index("2.weight")
    assert forward_sort(names) == expected


def test_vgg_like_cnn():
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
    )  # fmt: skip
    model.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 4))
    expected = list(model.state_dict())
    assert forward_sort(sorted(expected)) == expected
    assert forward_sort(_shuffled(expected, 3)) == expected


def test_bidirectional_three_layer_lstm():
    model = nn.Module()
    model.embedding = nn.Embedding(10, 8)
    model.lstm = nn.LSTM(8, 16, num_layers=3, bidirectional=True)
    model.fc = nn.Linear(32, 3)
    expected = list(model.state_dict())  # PyTorch's order: l0, l0_reverse, l1, …
    assert forward_sort(sorted(expected)) == expected
    gates = [f"lstm.weight_{w}_l{layer}{d}[{g}]" for layer in range(3) for d in ("", "_reverse")
             for w in ("ih", "hh") for g in "ifgo"]  # fmt: skip
    assert forward_sort(_shuffled(gates)) == gates


def test_lstm_projection_order():
    names = ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0", "weight_ih_l0_reverse",
             "weight_hh_l0_reverse", "weight_hr_l0_reverse", "weight_ih_l1"]  # fmt: skip
    assert forward_sort(sorted(names)) == names


def test_slices_natural_order():
    base = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert forward_sort([f"{base}[v]", f"{base}[k]", base, f"{base}[q]"]) == [
        base, f"{base}[q]", f"{base}[k]", f"{base}[v]"
    ]  # fmt: skip
    gru = [f"rnn.weight_ih_l0[{g}]" for g in "rzn"]
    assert forward_sort(sorted(gru)) == gru
    experts = [f"m.experts.down_proj[{e}]" for e in range(12)]
    assert forward_sort(sorted(experts)) == experts
    fused = [f"m.experts.gate_up_proj[{e},{p}]" for e in range(11) for p in ("gate", "up")]
    assert forward_sort(sorted(fused)) == fused
    heads = [f"a.weight[q,h{h}]" for h in range(12)]
    assert forward_sort(sorted(heads)) == heads


def test_unranked_names_keep_source_order():
    source = ["zeta.weight", "alpha.weight", "mid.weight", "head.weight"]
    assert forward_sort(sorted(source), source_order=source) == source
    # without a source order: natural text order, heads last
    assert forward_sort(source) == ["alpha.weight", "mid.weight", "zeta.weight", "head.weight"]
    # names missing from the source order go after those present
    assert forward_sort(["b.weight", "a.weight", "c.weight"], source_order=["c.weight"]) == [
        "c.weight", "a.weight", "b.weight"
    ]  # fmt: skip


def test_top_level_fc_names_sort_naturally():
    names = [f"fc{i}.weight" for i in (1, 2, 3, 10)]
    assert forward_sort(_shuffled(names)) == names


def test_deterministic_under_input_order():
    names = [
        f"blocks.{i}.{m}.weight"
        for i in range(12)
        for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]
    results = {tuple(forward_sort(_shuffled(names, seed))) for seed in range(5)}
    assert len(results) == 1
    (result,) = results
    assert result[:4] == tuple(
        f"blocks.0.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    )


def test_bert_block_order():
    names = [f"bert.encoder.layer.0.{m}.weight" for m in (
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense")]  # fmt: skip
    full = ["bert.embeddings.word_embeddings.weight", *names, "bert.pooler.dense.weight",
            "classifier.weight"]  # fmt: skip
    assert forward_sort(sorted(full)) == full


def test_empty_and_duplicates():
    assert forward_sort([]) == []
    assert forward_sort(["a.weight", "a.weight"]) == ["a.weight"]
