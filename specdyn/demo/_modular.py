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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, T, d] → attention output at the last position, [n, d].

        In a one-layer model only the last position reaches the loss, and with a causal
        mask it attends to every position; the other queries are therefore not computed.
        Rows of Q/K/V (columns of O) are grouped head by head, as the presets slice them.
        """
        n, t, d = x.shape
        hd = d // self.heads
        q = self.q_proj(x[:, -1]).view(n, self.heads, hd)
        k = self.k_proj(x).view(n, t, self.heads, hd)
        v = self.v_proj(x).view(n, t, self.heads, hd)
        scores = torch.einsum("nhe,nthe->nht", q, k) / math.sqrt(hd)
        z = torch.einsum("nht,nthe->nhe", scores.softmax(dim=-1), v)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, T, d] → residual stream at the last position, [n, d]."""
        h = x[:, -1] + self.self_attn(x)
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
        x = self.embed_tokens(tokens) + self.embed_positions.weight[: tokens.shape[1]]
        for block in self.layers:
            h = block(x)
        return self.lm_head(h)
