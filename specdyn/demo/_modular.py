"""Modular addition data and the one-layer transformer of Nanda et al. (2023), in plain torch.

Parameter names follow the Llama/GPT-J conventions that `specdyn.views` and the pair
presets recognise (``embed_tokens``, ``layers.0.self_attn.q_proj``, ``…o_proj``,
``layers.0.mlp.fc_in``/``fc_out``, ``lm_head``), so that ``specdyn pairs`` finds
embedding → QKV, Q ↔ K and V → O per head, O → MLP_in and MLP_in → MLP_out.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def is_prime(n: int) -> bool:
    """Whether `n` is a prime (trial division; moduli here are small)."""
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def modular_addition_data(
    modulus: int, train_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs `a b =` → (a+b) mod p, shuffled and split: (train_x, train_y, val_x, val_y).

    x: int64 [n, 3] (the "=" token is `modulus`); y: int64 [n].
    """
    a, b = torch.meshgrid(torch.arange(modulus), torch.arange(modulus), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, modulus)], dim=1)
    y = (a + b) % modulus
    order = torch.randperm(modulus * modulus, generator=generator)
    n_train = train_size(modulus, train_fraction)
    train, val = order[:n_train], order[n_train:]
    return x[train], y[train], x[val], y[val]


def train_size(modulus: int, train_fraction: float) -> int:
    """Number of training pairs: round(fraction · p²)."""
    return int(round(train_fraction * modulus * modulus))


class SelfAttention(nn.Module):
    """Multi-head attention without biases; only the last position queries (see forward)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def forward(self, table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Attention output at the last position, [n, d].

        table: [V, T, d], the residual stream of every token at every position (in a
        one-layer model it depends on (token, position) only, so Q/K/V are projected once
        per table entry rather than once per example); tokens: int64 [n, T]. Only the last
        position reaches the loss, and under a causal mask it attends to every position,
        so only its query is used. Rows of Q/K/V (columns of O) are grouped head by head,
        as the pair presets slice them.
        """
        n, t = tokens.shape
        d = table.shape[-1]
        hd = d // self.heads
        # index_select (backward: index_add) rather than advanced indexing, whose
        # deterministic backward sorts and is several times slower on CPU
        rows = (tokens * t + torch.arange(t)).reshape(-1)
        last = tokens[:, -1] * t + (t - 1)
        q = self.q_proj(table).reshape(-1, d).index_select(0, last).view(n, 1, self.heads, hd)
        k = self.k_proj(table).reshape(-1, d).index_select(0, rows).view(n, t, self.heads, hd)
        v = self.v_proj(table).reshape(-1, d).index_select(0, rows).view(n, t, self.heads, hd)
        # products and sums instead of einsum: einsum makes n·heads tiny batched matmuls
        scores = (q * k).sum(-1, keepdim=True) / math.sqrt(hd)  # [n, t, heads, 1]
        z = (scores.softmax(dim=1) * v).sum(1)  # [n, heads, hd]
        return self.o_proj(z.reshape(n, d))


class MLP(nn.Module):
    """ReLU MLP d → m → d with biases (as in Nanda et al.)."""

    def __init__(self, width: int, mlp: int):
        super().__init__()
        self.fc_in = nn.Linear(width, mlp)
        self.fc_out = nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, d] → [n, d]."""
        return self.fc_out(torch.relu(self.fc_in(x)))


class Block(nn.Module):
    """One residual block, attention then MLP, no LayerNorm."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.self_attn = SelfAttention(width, heads)
        self.mlp = MLP(width, mlp)

    def forward(self, table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream at the last position, [n, d] (table, tokens as in SelfAttention)."""
        t = tokens.shape[1]
        h = table.reshape(-1, table.shape[-1]).index_select(0, tokens[:, -1] * t + (t - 1))
        h = h + self.self_attn(table, tokens)
        return h + self.mlp(h)


class ModularTransformer(nn.Module):
    """One-layer transformer for `a b =` → (a+b) mod p: learned token and position embeddings,
    one attention + ReLU-MLP block without LayerNorm, an unembedding to p classes."""

    def __init__(self, modulus: int, width: int, heads: int, mlp: int, seq_len: int = 3):
        super().__init__()
        self.embed_tokens = nn.Embedding(modulus + 1, width)
        self.embed_positions = nn.Embedding(seq_len, width)
        self.layers = nn.ModuleList([Block(width, heads, mlp)])
        self.lm_head = nn.Linear(width, modulus, bias=False)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Nanda et al.'s init: N(0, 1/fan_in) weights, zero biases, drawn from `generator`."""
        width = self.embed_tokens.embedding_dim
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif name.endswith("fc_out.weight"):
                    p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=generator)
                elif name == "lm_head.weight":
                    p.normal_(0.0, 1.0 / math.sqrt(p.shape[0]), generator=generator)
                else:
                    p.normal_(0.0, 1.0 / math.sqrt(width), generator=generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: int64 [n, 3] → logits float32 [n, p] at the last position."""
        t = tokens.shape[1]
        table = self.embed_tokens.weight[:, None, :] + self.embed_positions.weight[None, :t, :]
        (block,) = self.layers
        return self.lm_head(block(table, tokens))
