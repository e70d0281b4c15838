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


# ---------------------------------------------------------------- forward order of the zoo
#
# Each zoo model (tests/_zoo.py) saved as its library saves it: its operator names as specdyn
# names them (the canonical names of the saved keys) in forward_sort order must be the order
# the model's own forward first uses the operators in (`_zoo.forward_order`), whatever key
# order the checkpoint lists them in: the reader's (a safetensors header: dtype groups sorted
# by name, per shard; a torch pickle: module order), a safetensors-like sort of every key, or
# module order (the model's state dict).


def _load_saved(path) -> dict:
    """Every tensor of one saved zoo checkpoint (a file, or a folder of weight files / shards)."""
    import safetensors.torch
    import torch

    files = (
        sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
    )
    tensors: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            tensors.update(safetensors.torch.load_file(str(f)))
        else:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
    return tensors


def _module_order(model, saved: dict, located: dict[str, list[str]]) -> list[str]:
    """The saved keys in the order of the model's state dict (what torch.save would list):
    an operator's keys at its parameter, any other key at the state-dict entry of its name,
    else at the one entry holding equal values (transformers 5 renames some on save)."""
    import torch

    sd = model.state_dict()
    index = {k: i for i, k in enumerate(sd)}
    where: dict[str, tuple[int, int]] = {}
    for op, keys in located.items():
        for j, key in enumerate(keys):
            where.setdefault(key, (index[op], j))
    for key, t in saved.items():
        if key in where:
            continue
        if key in index:
            where[key] = (index[key], 0)
            continue
        equal = [k for k, v in sd.items()
                 if v.shape == t.shape and v.dtype == t.dtype and torch.equal(v, t)]  # fmt: skip
        assert len(equal) == 1, f"{key}: no single state-dict entry holds its values ({equal})"
        where[key] = (index[equal[0]], 0)
    return sorted(saved, key=where.__getitem__)


def _safetensors_like(saved: dict) -> list[str]:
    """The keys as one safetensors file lists them: by dtype alignment (largest first), then
    by name."""
    return sorted(saved, key=lambda k: (-saved[k].element_size(), k))


@pytest.fixture(scope="module")
def zoo_saved(tmp_path_factory):
    """Zoo name → (model after one training step, its forward order, canonical name of each
    saved key, operator → saved keys, source orders by label); built on first use."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    import _zoo  # tests/_zoo.py
    import torch

    from specdyn.sources import discover

    base = tmp_path_factory.mktemp("naming-zoo")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            entry = _zoo.ZOO[name]
            model = entry.build(0)
            _zoo.train_step(model, seed=1)  # distinct values, so renamed keys are found by value
            (base / name).mkdir()
            path = entry.save(model, base / name, 1)
            saved = _load_saved(path)
            with discover(path).runs[0].checkpoints[0].open() as reader:
                reader_order = reader.keys()
            assert set(reader_order) == set(saved)
            canon = canonicalize(list(saved), config=entry.config(model))
            located = _zoo.saved_operator_keys(model, saved)
            assert located and all(located.values()), located
            order = _zoo.forward_order(model, entry.inputs(model, torch.Generator().manual_seed(0)))
            sources = {"reader": reader_order, "safetensors-like": _safetensors_like(saved),
                       "module": _module_order(model, saved, located)}  # fmt: skip
            embeddings = {n + ".weight" for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Embedding)}  # fmt: skip
            cache[name] = (order, canon, located, sources, embeddings)
        return cache[name]

    return get


def _zoo_names() -> list[str]:
    try:
        import _zoo
    except ImportError:  # pragma: no cover - tests/ is on sys.path under pytest
        return []
    return list(_zoo.ZOO)


@pytest.mark.parametrize("source", ["reader", "safetensors-like", "module", "none"])
@pytest.mark.parametrize("name", _zoo_names())
def test_zoo_operators_sort_in_the_models_forward_order(name, source, zoo_saved):
    order, canon, located, sources, embeddings = zoo_saved(name)
    source_order = None if source == "none" else [canon[k] for k in sources[source]]
    ordered = forward_sort(sorted(canon.values()), source_order)
    pos = {n: i for i, n in enumerate(ordered)}
    first = {op: min(pos[canon[k]] for k in located[op]) for op in order}
    # every operator but the embeddings exactly in forward order
    body = [op for op in order if op not in embeddings]
    assert sorted(body, key=first.__getitem__) == body
    # input embeddings are summed in parallel (token, position, type: their order is a
    # convention): each is listed no later than the first operator the forward runs after it
    for i, op in enumerate(order):
        later = [o for o in order[i + 1 :] if o not in embeddings]
        if op in embeddings and later:
            assert first[op] < first[later[0]], (op, later[0])


# ---------------------------------------------------------------- source order: a sort or not


def _safetensors_order(names: list[str], int64: tuple[str, ...] = ()) -> list[str]:
    """How one safetensors file lists `names`: the 8-byte tensors (`int64`) first, then the
    rest, each group sorted by name."""
    return sorted(n for n in names if n in int64) + sorted(n for n in names if n not in int64)


def test_a_sorted_source_order_is_not_a_tie_break():
    # torchvision ResNet: layerN ranks early through its int64 num_batches_tracked
    names = ["conv1.weight", "bn1.weight", "bn1.num_batches_tracked",
             "layer1.0.conv1.weight", "layer1.0.bn1.num_batches_tracked", "layer1.0.conv2.weight",
             "layer2.0.conv1.weight", "layer2.0.bn1.num_batches_tracked",
             "layer2.0.downsample.0.weight", "fc.weight"]  # fmt: skip
    source = _safetensors_order(names, int64=tuple(n for n in names if "num_batches" in n))
    assert source.index("layer2.0.bn1.num_batches_tracked") < source.index("conv1.weight")
    ordered = forward_sort(names, source)
    assert ordered == forward_sort(names)
    matrices = [n for n in ordered if n.endswith(".weight") and "bn" not in n]
    assert matrices == ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight",
                        "layer2.0.conv1.weight", "layer2.0.downsample.0.weight", "fc.weight"]  # fmt: skip


def test_sharded_safetensors_order_is_not_a_tie_break():
    # two shards, each sorted by name: the second holds the encoder's conv front-end
    shard1 = sorted(["model.encoder.layers.0.fc1.weight", "model.encoder.layers.0.fc2.weight",
                     "model.decoder.layers.0.fc1.weight", "model.decoder.layers.0.fc2.weight"])  # fmt: skip
    shard2 = sorted(["model.encoder.conv1.weight", "model.encoder.conv2.weight",
                     "model.encoder.layers.1.fc1.weight", "model.encoder.layers.1.fc2.weight"])  # fmt: skip
    source = shard1 + shard2
    assert forward_sort(source, source) == [
        "model.encoder.conv1.weight", "model.encoder.conv2.weight",
        "model.encoder.layers.0.fc1.weight", "model.encoder.layers.0.fc2.weight",
        "model.encoder.layers.1.fc1.weight", "model.encoder.layers.1.fc2.weight",
        "model.decoder.layers.0.fc1.weight", "model.decoder.layers.0.fc2.weight",
    ]  # fmt: skip


def test_module_order_stays_the_tie_break():
    # a torch pickle lists keys in registration order: weight, bias, next module, …
    model = nn.Module()
    model.zeta = nn.Linear(2, 2)
    model.alpha = nn.Linear(2, 2)
    model.mid = nn.Linear(2, 2)
    source = list(model.state_dict())
    assert forward_sort(sorted(source), source) == source
    # the same names sorted (a safetensors header) give natural text order
    assert forward_sort(source, sorted(source)) == [
        f"{m}.{p}" for m in ("alpha", "mid", "zeta") for p in ("weight", "bias")
    ]


# ---------------------------------------------------------------- encoder–decoder


def test_encoder_before_decoder():
    t5 = ["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
          "encoder.block.0.layer.1.DenseReluDense.wi.weight", "encoder.final_layer_norm.weight",
          "decoder.block.0.layer.0.SelfAttention.q.weight",
          "decoder.block.0.layer.1.EncDecAttention.q.weight",
          "decoder.block.0.layer.2.DenseReluDense.wo.weight", "decoder.final_layer_norm.weight",
          "lm_head.weight"]  # fmt: skip
    bart = ["model.shared.weight", "model.encoder.embed_tokens.weight",
            "model.encoder.embed_positions.weight", "model.encoder.layers.0.self_attn.q_proj.weight",
            "model.encoder.layers.0.fc1.weight", "model.decoder.embed_tokens.weight",
            "model.decoder.layers.0.self_attn.q_proj.weight",
            "model.decoder.layers.0.encoder_attn.q_proj.weight", "model.decoder.layers.0.fc2.weight",
            "lm_head.weight"]  # fmt: skip
    for names in (t5, bart):
        assert forward_sort(sorted(names)) == names
        assert forward_sort(sorted(names), sorted(names)) == names


def test_whisper_conv_front_end_before_the_layers():
    names = ["model.encoder.conv1.weight", "model.encoder.conv2.weight",
             "model.encoder.embed_positions.weight", "model.encoder.layers.0.self_attn.q_proj.weight",
             "model.encoder.layers.0.fc2.weight",
             "model.decoder.embed_tokens.weight", "model.decoder.layers.0.fc1.weight",
             "proj_out.weight"]  # fmt: skip
    ordered = forward_sort(_shuffled(names))
    encoder = [n for n in ordered if ".encoder." in n and "embed" not in n]
    assert encoder[:3] == ["model.encoder.conv1.weight", "model.encoder.conv2.weight",
                           "model.encoder.layers.0.self_attn.q_proj.weight"]  # fmt: skip
    assert ordered.index("model.encoder.layers.0.fc2.weight") < ordered.index(
        "model.decoder.embed_tokens.weight"
    )
    assert ordered[-1] == "proj_out.weight"


def test_word_lm_encoder_rnn_decoder():
    # PyTorch's word_language_model: an `encoder` embedding, the RNN, a `decoder` head
    names = ["encoder.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "decoder.weight"]
    assert forward_sort(sorted(names)) == names


# ---------------------------------------------------------------- diffusers UNets


def test_unet_top_level_order():
    names = ["time_embedding.linear_1.weight", "time_embedding.linear_2.weight", "conv_in.weight",
             "down_blocks.0.resnets.0.conv1.weight", "down_blocks.1.resnets.0.conv1.weight",
             "mid_block.resnets.0.conv1.weight", "up_blocks.0.resnets.0.conv1.weight",
             "up_blocks.1.resnets.0.conv1.weight", "conv_norm_out.weight", "conv_out.weight"]  # fmt: skip
    assert forward_sort(sorted(names)) == names
    # diffusers registers mid_block after up_blocks: a torch pickle lists it there
    registered = [n for n in names if not n.startswith("mid_block")]
    registered.insert(registered.index("conv_norm_out.weight"), "mid_block.resnets.0.conv1.weight")
    assert forward_sort(registered, registered) == names


def test_unet_block_resnets_and_attentions_interleave_by_index():
    block = ["resnets.0.conv1", "attentions.0.to_q", "resnets.1.conv1", "attentions.1.to_q",
             "resnets.2.conv1", "attentions.2.to_q", "upsamplers.0.conv"]  # fmt: skip
    names = [f"up_blocks.0.{m}.weight" for m in block]
    assert forward_sort(sorted(names)) == names
    down = [f"down_blocks.1.{m}.weight" for m in block[:4]] + [
        "down_blocks.1.downsamplers.0.conv.weight"
    ]
    assert forward_sort(sorted(down)) == down
    mid = ["mid_block.resnets.0.conv1.weight", "mid_block.attentions.0.to_q.weight",
           "mid_block.resnets.1.conv1.weight"]  # fmt: skip
    assert forward_sort(sorted(mid)) == mid
    # diffusers registers `attentions` before `resnets`: the forward order wins
    registered = sorted(names, key=lambda n: ("resnets" in n, n))
    assert forward_sort(registered, registered) == names


def test_unet_resnet_attention_and_transformer_block_order():
    resnet = [f"down_blocks.1.resnets.0.{m}.weight" for m in
              ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")]  # fmt: skip
    attention = [f"mid_block.attentions.0.{m}.weight" for m in
                 ("group_norm", "to_q", "to_k", "to_v", "to_out.0")]  # fmt: skip
    transformer = [f"up_blocks.0.attentions.1.{m}.weight" for m in
                   ("norm", "proj_in", "transformer_blocks.0.norm1", "transformer_blocks.0.attn1.to_q",
                    "transformer_blocks.0.attn1.to_k", "transformer_blocks.0.attn1.to_v",
                    "transformer_blocks.0.attn1.to_out.0", "transformer_blocks.0.norm2",
                    "transformer_blocks.0.attn2.to_q", "transformer_blocks.0.attn2.to_k",
                    "transformer_blocks.0.attn2.to_v", "transformer_blocks.0.attn2.to_out.0",
                    "transformer_blocks.0.norm3", "transformer_blocks.0.ff.net.0.proj",
                    "transformer_blocks.0.ff.net.2", "proj_out")]  # fmt: skip
    for names in (resnet, attention, transformer):
        assert forward_sort(sorted(names)) == names
        assert forward_sort(_shuffled(names, 1), sorted(names)) == names


def test_unet_names_outside_a_unet_block_keep_the_usual_rules():
    # `resnets`/`attentions` that are not children of down_blocks.i / mid_block / up_blocks.i
    names = ["attentions.0.weight", "resnets.0.weight"]
    assert forward_sort(names) == names
    # torchvision's stem and stages: conv1 before layer1 (natural order), fc last
    resnet = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
              "layer1.0.conv2.weight", "layer4.1.conv2.weight", "fc.weight"]  # fmt: skip
    assert [n for n in forward_sort(sorted(resnet)) if "bn" not in n] == [
        n for n in resnet if "bn" not in n
    ]
