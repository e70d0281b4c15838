"""One synthetic fp16 checkpoint with Pythia's (GPT-NeoX) exact layout, for the benchmarks.

Every parameter and buffer a hub revision holds, with random N(0, 0.02²) weights: the
causal-mask buffer per layer, masked_bias, rotary inv_freq (rotary_pct 0.25),
LayerNorm weights and biases, fused QKV, dense, the MLP, embed_in and an untied embed_out.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_pythia_checkpoint(
    step_dir: Path, *, hidden: int, layers: int, heads: int, inter: int, vocab: int,
    context: int, seed: int,
) -> Path:  # fmt: skip
    """Write ``step_dir/pytorch_model.bin`` and ``config.json``; returns `step_dir`."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    rotary = (hidden // heads) // 4
    mask = torch.tril(torch.ones(context, context, dtype=torch.bool)).view(1, 1, context, context)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))
    sd: dict[str, torch.Tensor] = {"gpt_neox.embed_in.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            sd[p + f"{norm}.weight"] = torch.ones(hidden).half()
            sd[p + f"{norm}.bias"] = torch.zeros(hidden).half()
        sd[p + "attention.bias"] = mask.clone()  # one buffer per layer, as in the hub's files
        sd[p + "attention.masked_bias"] = torch.tensor(-1e9)
        sd[p + "attention.rotary_emb.inv_freq"] = inv_freq.clone()
        sd[p + "attention.query_key_value.weight"] = rand(3 * hidden, hidden)
        sd[p + "attention.query_key_value.bias"] = rand(3 * hidden)
        sd[p + "attention.dense.weight"] = rand(hidden, hidden)
        sd[p + "attention.dense.bias"] = rand(hidden)
        sd[p + "mlp.dense_h_to_4h.weight"] = rand(inter, hidden)
        sd[p + "mlp.dense_h_to_4h.bias"] = rand(inter)
        sd[p + "mlp.dense_4h_to_h.weight"] = rand(hidden, inter)
        sd[p + "mlp.dense_4h_to_h.bias"] = rand(hidden)
    sd["gpt_neox.final_layer_norm.weight"] = torch.ones(hidden).half()
    sd["gpt_neox.final_layer_norm.bias"] = torch.zeros(hidden).half()
    sd["embed_out.weight"] = rand(vocab, hidden)
    step_dir.mkdir(parents=True, exist_ok=True)
    config = pythia_config(hidden=hidden, layers=layers, heads=heads, inter=inter, vocab=vocab)
    config["max_position_embeddings"] = context
    (step_dir / "config.json").write_text(json.dumps(config))
    torch.save(sd, step_dir / "pytorch_model.bin")
    return step_dir


def pythia_config(*, hidden: int, layers: int, heads: int, inter: int, vocab: int) -> dict:
    """The ``config.json`` of a Pythia (GPT-NeoX) size, as the hub's revisions carry it."""
    return {
        "model_type": "gpt_neox",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rotary_pct": 0.25,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
