"""A zoo of tiny real models, saved the way their libraries save them (issue 13, item 7).

Each entry builds a tiny model with the real library class (transformers, diffusers) or,
where the library does not load here (timm, torchvision), a hand-written nn.Module with
that library's exact module names and a real forward. Trajectories are saved per step:

    entry = ZOO["llama"]
    paths = save_trajectory(entry, tmp_path / "llama")       # steps 0, 1, 2
    model = entry.build(0)
    ops = operator_weights(model)                            # what specdyn must analyse
    train_step(model, seed=1)                                # one AdamW step (lr 1e-2)
    kwargs = entry.inputs(model, torch.Generator().manual_seed(0))  # a random input
    out = model(**kwargs)

Layouts: transformers `save_pretrained(root/"checkpoint-N")` (safetensors; T5 as the
`pytorch_model.bin` transformers < 5 wrote with `safe_serialization=False`; Whisper sharded
with an `.index.json`), diffusers `save_pretrained(root/"checkpoint-N"/"unet")`, plain torch
`torch.save(state_dict, root/"epoch_N.pt")`, timm/torchvision-style `safetensors.torch.save_file`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ZooModel",
    "ZOO",
    "operator_weights",
    "tied_groups",
    "saved_operator_keys",
    "forward_order",
    "train_step",
    "save_trajectory",
    "output_loss",
    "TimmViT",
    "TorchvisionResNet",
]

Inputs = Callable[[nn.Module, torch.Generator], dict[str, Any]]


@dataclass(frozen=True)
class ZooModel:
    """One zoo architecture: how to build, configure, feed and save it.

    name: zoo key; library: "transformers" | "diffusers" | "torch"; layout: one line saying
    how the trajectory is saved; build(seed) → the tiny model; config(model) → the
    config.json written beside the weights (None when there is none); save(model, root, step)
    → the path written (a checkpoint folder or file); inputs(model, generator) → keyword
    arguments of one forward on a random input; step_unit: the unit of the saved step names
    ("step" or "epoch"); saved_keys(name) → the state-dict keys a model parameter is saved
    under, where the library renames on save (Mixtral's stacked experts); None = unchanged.
    """

    name: str
    library: str
    layout: str
    build: Callable[[int], nn.Module]
    config: Callable[[nn.Module], dict | None]
    save: Callable[[nn.Module, Path, int], Path]
    inputs: Inputs = field(default=lambda model, g: {})
    step_unit: str = "step"
    saved_keys: Callable[[str], tuple[str, ...]] | None = None


# ------------------------------------------------------------------ operator weights


def _transformers_conv1d() -> type | None:
    """transformers' GPT-2 Conv1D class, or None without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - the dev extra installs transformers
        return None
    return Conv1D


def _module_weights(module: nn.Module) -> list[str]:
    """Local names of the operator weights one module owns (not its children's)."""
    conv1d = _transformers_conv1d()
    linear_like = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                   nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding, nn.EmbeddingBag)  # fmt: skip
    if isinstance(module, linear_like) or (conv1d is not None and isinstance(module, conv1d)):
        return ["weight"] if getattr(module, "weight", None) is not None else []
    if isinstance(module, nn.RNNBase):
        return [n for n, _ in module.named_parameters(recurse=False)
                if n.startswith(("weight_ih", "weight_hh", "weight_hr"))]  # fmt: skip
    if isinstance(module, nn.MultiheadAttention):
        own = [n for n, _ in module.named_parameters(recurse=False)]
        return [
            n
            for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
            if n in own
        ]  # fmt: skip  (out_proj is an nn.Linear child)
    if type(module).__name__.endswith("Router"):
        # transformers 5's MoE routers (MixtralTopKRouter): a bare (experts, d) `weight`
        # applied with F.linear
        w = getattr(module, "weight", None)
        return ["weight"] if isinstance(w, nn.Parameter) and w.dim() == 2 else []
    if type(module).__name__.endswith("Experts"):
        # transformers 5's stacked mixture-of-experts tensors (E, out, in)
        return [n for n, p in module.named_parameters(recurse=False) if p.dim() == 3]
    return []


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names that share one tensor, per tensor, in named_modules order (≥ 2 names)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def operator_weights(model: nn.Module) -> set[str]:
    """State-dict names of the model's operator weights, found from `model.named_modules()`.

    Operators: nn.Linear, nn.Conv1d/2d/3d, nn.ConvTranspose1d/2d/3d, nn.Embedding(Bag),
    nn.RNN/LSTM/GRU `weight_ih_l*`/`weight_hh_l*`/`weight_hr_l*`, transformers' `Conv1D`,
    nn.MultiheadAttention `in_proj_weight` (its `out_proj` is a Linear), transformers 5's
    stacked expert tensors (3-D parameters of an `…Experts` module) and MoE routers (the 2-D
    `weight` of a `…Router` module). A tensor tied under
    several names is returned once, under its first name in `named_parameters` order.
    """
    found: set[str] = set()
    seen: set[int] = set()
    first_name = {
        id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))
    }
    for prefix, module in model.named_modules(remove_duplicate=False):
        for local in _module_weights(module):
            p = getattr(module, local)
            if id(p) in seen:
                continue
            seen.add(id(p))
            found.add(first_name.get(id(p), f"{prefix}.{local}" if prefix else local))
    return found


def forward_order(model: nn.Module, inputs: dict[str, Any]) -> list[str]:
    """Operator weights (`operator_weights` names) in the order the model's own forward first
    uses them on `inputs` (a pre-hook on every module that owns one; a module's weights in
    `named_parameters` order). Operators the forward never reaches are left out."""
    first_name = {
        id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))
    }
    order: list[str] = []
    handles = []

    def hook(module: nn.Module, args: Any) -> None:
        for local in _module_weights(module):
            name = first_name[id(getattr(module, local))]
            if name not in order:
                order.append(name)

    for _, module in model.named_modules():
        if _module_weights(module):
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def saved_operator_keys(model: nn.Module, saved: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Operator weight (model name) → the keys of `saved` (a state dict read back from the
    saved files) that hold its values, found by value, not by name.

    transformers 5 renames on save (ViT's `layers.N.attention.q_proj` is saved as
    `encoder.layer.N.attention.attention.query`, GPT-NeoX's `lm_head` as `embed_out`, Mixtral's
    stacked experts as `block_sparse_moe.experts.E.w1/w2/w3`), so names cannot be trusted. A
    stacked expert tensor (E, a, b) maps to the keys of each expert e: the key equal to its
    [e] slice, else the two keys equal to its halves [e, :a/2] and [e, a/2:] (gate, up). Tied
    weights saved under several names map to all of them. An operator found nowhere maps to [].
    """
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for key, t in saved.items():
        by_shape.setdefault(tuple(t.shape), []).append(key)

    def equal(target: torch.Tensor) -> list[str]:
        target = target.detach()
        return [k for k in by_shape.get(tuple(target.shape), [])
                if saved[k].dtype == target.dtype and torch.equal(saved[k], target)]  # fmt: skip

    params = dict(model.named_parameters(remove_duplicate=False))
    found: dict[str, list[str]] = {}
    for name in sorted(operator_weights(model)):
        p = params[name]
        keys = equal(p)
        if not keys and p.dim() == 3:
            for e in range(p.shape[0]):
                half = p.shape[1] // 2
                keys += equal(p[e]) or (equal(p[e, :half]) + equal(p[e, half:]))
        found[name] = keys
    return found


# ------------------------------------------------------------------ training


def _float_tensors(out: Any) -> list[torch.Tensor]:
    """Every floating tensor in a forward's output (tensor, tuple, dict, ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):  # transformers ModelOutput and diffusers BaseOutput are dicts
        return [t for v in out.values() for t in _float_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _float_tensors(v)]
    return []


def output_loss(out: Any) -> torch.Tensor:
    """A scalar loss from a forward's output: the sum of each float output's mean square."""
    tensors = _float_tensors(out)
    if not tensors:
        raise ValueError(f"forward returned no floating tensor: {type(out).__name__}")
    return sum(t.float().pow(2).mean() for t in tensors)


def _entry_of(model: nn.Module) -> ZooModel:
    """The zoo entry a model was built from (recorded by the builders)."""
    return ZOO[model._zoo_name]  # type: ignore[attr-defined]


def train_step(model: nn.Module, seed: int) -> None:
    """One real optimizer step: AdamW (lr 1e-2) on `output_loss` of the model's own forward
    on a random input drawn with `seed`. Buffers (BN running stats) update as in training."""
    entry = _entry_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        opt.zero_grad()
        output_loss(model(**entry.inputs(model, g))).backward()
        opt.step()
    model.eval()


def save_initial(name: str, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """(model, checkpoint path) of zoo model `name` built (seed 0) and saved at step 0 in
    ``tmp_path/<name>/``."""
    entry = ZOO[name]
    model = entry.build(0)
    (Path(tmp_path) / name).mkdir()
    return model, entry.save(model, Path(tmp_path) / name, 0)


def save_trajectory(entry: ZooModel, root: Path, steps: tuple[int, ...] = (0, 1, 2)) -> list[Path]:
    """Build `entry` (seed 0), save it at steps[0], then train_step and save for each later
    step; returns the paths written, in step order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model = entry.build(0)
    paths = []
    for i, step in enumerate(steps):
        if i:
            train_step(model, seed=step)
        paths.append(entry.save(model, root, step))
    return paths


# ------------------------------------------------------------------ savers


def _save_pretrained(**kwargs: Any) -> Callable[[nn.Module, Path, int], Path]:
    """transformers/diffusers `save_pretrained(root/checkpoint-N[/sub])`."""
    sub = kwargs.pop("sub", None)

    def save(model: nn.Module, root: Path, step: int) -> Path:
        folder = Path(root) / f"checkpoint-{step}"
        if sub:
            folder = folder / sub
        model.save_pretrained(folder, **kwargs)
        return folder

    return save


def _save_legacy_bin(model: nn.Module, root: Path, step: int) -> Path:
    """What transformers < 5 `save_pretrained(safe_serialization=False)` wrote (transformers 5
    writes only safetensors): its config.json + torch.save(state_dict) as pytorch_model.bin,
    tied weights kept under every name with one storage."""
    folder = Path(root) / f"checkpoint-{step}"
    model.save_pretrained(folder)  # the config.json exactly as transformers writes it
    for weights in folder.glob("*.safetensors*"):
        weights.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def _save_torch(model: nn.Module, root: Path, step: int) -> Path:
    """torch.save(model.state_dict(), root/epoch_N.pt)."""
    path = Path(root) / f"epoch_{step}.pt"
    torch.save(model.state_dict(), path)
    return path


def _save_safetensors(pattern: str) -> Callable[[nn.Module, Path, int], Path]:
    """safetensors.torch.save_file(state_dict, root/pattern.format(step=N))."""

    def save(model: nn.Module, root: Path, step: int) -> Path:
        path = Path(root) / pattern.format(step=step)
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(sd, str(path))
        return path

    return save


def _hf_config(model: nn.Module) -> dict:
    """The config.json transformers' save_pretrained writes (it adds `architectures` and
    `dtype` to the model's config), read back from a scratch save."""
    with tempfile.TemporaryDirectory(prefix="zoo-config-") as tmp:
        model.save_pretrained(tmp)
        return json.loads((Path(tmp) / "config.json").read_text(encoding="utf-8"))


def _diffusers_config(model: nn.Module) -> dict:
    """The config.json diffusers' save_pretrained writes."""
    return json.loads(model.to_json_string())


def _no_config(model: nn.Module) -> None:
    """Plain torch checkpoints have no config.json."""
    return None


# ------------------------------------------------------------------ hand-written timm / torchvision


class _TimmAttention(nn.Module):
    """timm's Attention: fused qkv Linear (3D, D), rows Q | K | V, then proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention as timm computes it."""
        b, n, c = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _TimmMlp(nn.Module):
    """timm's Mlp: fc1 → GELU → fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fc2(gelu(fc1(x)))."""
        return self.fc2(self.act(self.fc1(x)))


class _TimmBlock(nn.Module):
    """timm's pre-norm Block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _TimmAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _TimmMlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One transformer block."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TimmPatchEmbed(nn.Module):
    """timm's PatchEmbed: a patch-size-strided Conv2d `proj`, flattened to tokens."""

    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] → [B, patches, D]."""
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
    """timm's VisionTransformer key layout (patch_embed.proj, cls_token, pos_embed,
    blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head)."""

    def __init__(self, img: int = 16, patch: int = 4, dim: int = 32, depth: int = 2,
                 num_heads: int = 4, hidden: int = 64, num_classes: int = 10):  # fmt: skip
        super().__init__()
        self.num_heads = num_heads
        self.patch_embed = _TimmPatchEmbed(patch, 3, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[_TimmBlock(dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images → [B, classes] logits (class-token pooling)."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1/bn1/relu/conv2/bn2 plus the downsample shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet key layout (conv1, bn1, layer1, layer2 of two BasicBlocks each,
    layer2.0.downsample.0/1 where stride and channels change, fc), 8 → 16 channels."""

    def __init__(self, widths: tuple[int, int] = (8, 16), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_BasicBlock(widths[0], widths[0], 1),
                                    _BasicBlock(widths[0], widths[0], 1))  # fmt: skip
        self.layer2 = nn.Sequential(_BasicBlock(widths[0], widths[1], 2),
                                    _BasicBlock(widths[1], widths[1], 1))  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images → [B, classes] logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


class _Mlp(nn.Module):
    """A plain MLP with named layers fc1 → fc2 → fc3."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 12] → [B, 5]."""
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class _Cnn(nn.Module):
    """A VGG-style CNN: `features` (conv, BN, conv) and `classifier` after global pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 16, 16] → [B, 4]."""
        return self.classifier(self.features(x))


class _Lstm(nn.Module):
    """A token LSTM language model: embedding → 2-layer LSTM → linear head."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(40, 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2, batch_first=True)
        self.head = nn.Linear(24, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] token ids → [B, T, 40] logits."""
        return self.head(self.lstm(self.embedding(x))[0])


# ------------------------------------------------------------------ builders


def _seeded(name: str, make: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """A build(seed) that constructs `make()` under torch.manual_seed(seed), in eval mode."""

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make()
        model._zoo_name = name  # so train_step finds the model's inputs
        return model.eval()

    return build


def _tokens(model: nn.Module, g: torch.Generator) -> dict[str, Any]:
    """input_ids [2, 8] for a causal/masked LM."""
    return {"input_ids": torch.randint(0, model.config.vocab_size, (2, 8), generator=g)}


def _seq2seq(model: nn.Module, g: torch.Generator) -> dict[str, Any]:
    """input_ids [2, 8] and decoder_input_ids [2, 5]."""
    vocab = model.config.vocab_size
    return {"input_ids": torch.randint(0, vocab, (2, 8), generator=g),
            "decoder_input_ids": torch.randint(0, vocab, (2, 5), generator=g)}  # fmt: skip


def _whisper_inputs(model: nn.Module, g: torch.Generator) -> dict[str, Any]:
    """log-mel input_features [2, mels, 2·max_source_positions] and decoder ids [2, 5]."""
    c = model.config
    return {"input_features": torch.randn(2, c.num_mel_bins, 2 * c.max_source_positions, generator=g),
            "decoder_input_ids": torch.randint(0, c.vocab_size, (2, 5), generator=g)}  # fmt: skip


def _pixels(model: nn.Module, g: torch.Generator) -> dict[str, Any]:
    """pixel_values [2, 3, 16, 16]."""
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def _images(model: nn.Module, g: torch.Generator) -> dict[str, Any]:
    """x [2, 3, 16, 16]."""
    return {"x": torch.randn(2, 3, 16, 16, generator=g)}


def _unet_inputs(model: nn.Module, g: torch.Generator) -> dict[str, Any]:
    """sample [2, C, 16, 16], timestep [2] (and encoder_hidden_states [2, 4, cross_dim])."""
    c = model.config
    kwargs = {"sample": torch.randn(2, c.in_channels, 16, 16, generator=g),
              "timestep": torch.randint(0, 1000, (2,), generator=g)}  # fmt: skip
    if getattr(c, "cross_attention_dim", None):
        kwargs["encoder_hidden_states"] = torch.randn(2, 4, c.cross_attention_dim, generator=g)
    return kwargs


def _mixtral_saved_keys(name: str) -> tuple[str, ...]:
    """transformers 5 saves Mixtral in the original layout: `mlp` → `block_sparse_moe`,
    stacked gate_up_proj (E, 2I, H) → experts.e.w1 (gate half) and experts.e.w3 (up half),
    down_proj (E, H, I) → experts.e.w2."""
    name = name.replace(".mlp.", ".block_sparse_moe.")
    prefix, _, last = name.rpartition(".")
    if last == "gate_up_proj":
        return tuple(
            f"{prefix}.{e}.{w}.weight" for e in range(_MIXTRAL_EXPERTS) for w in ("w1", "w3")
        )
    if last == "down_proj":
        return tuple(f"{prefix}.{e}.w2.weight" for e in range(_MIXTRAL_EXPERTS))
    return (name,)


_MIXTRAL_EXPERTS = 4


def _transformers_models() -> dict[str, Callable[[], nn.Module]]:
    """The tiny transformers models, imported lazily."""
    import transformers as tf

    eager = {"attn_implementation": "eager"}
    causal = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
              "max_position_embeddings": 32, "use_cache": False, **eager}  # fmt: skip
    return {
        "bert": lambda: tf.BertForMaskedLM(tf.BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **eager)),
        "t5": lambda: tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
            dropout_rate=0.0, use_cache=False, decoder_start_token_id=0, **eager)),
        "vit": lambda: tf.ViTModel(tf.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, **eager)),
        "whisper": lambda: tf.WhisperForConditionalGeneration(tf.WhisperConfig(
            vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_source_positions=8, max_target_positions=16,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
            use_cache=False, dropout=0.0, **eager)),
        "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(
            **{**causal, "intermediate_size": 48}, num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=_MIXTRAL_EXPERTS, num_experts_per_tok=2)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, use_cache=False,
            bos_token_id=1, eos_token_id=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **eager)),
        "gpt-neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            **causal, num_attention_heads=4, use_parallel_residual=True)),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            **causal, num_attention_heads=4, num_key_value_heads=2)),
    }  # fmt: skip


def _diffusers_models() -> dict[str, Callable[[], nn.Module]]:
    """The tiny diffusers UNets, imported lazily."""
    import diffusers

    return {
        "unet2d": lambda: diffusers.UNet2DModel(
            sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
            attention_head_dim=8),
        "unet2d-cond": lambda: diffusers.UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
            cross_attention_dim=16, attention_head_dim=4),
    }  # fmt: skip


def _lazy(library: str, name: str) -> Callable[[], nn.Module]:
    """A make() that imports the library only when the model is built."""
    if library == "transformers":
        return lambda: _transformers_models()[name]()
    return lambda: _diffusers_models()[name]()


def _zoo() -> dict[str, ZooModel]:
    """Every zoo entry, in a fixed order."""
    hf_layout = "checkpoint-N/ save_pretrained (config.json + model.safetensors)"
    entries: list[ZooModel] = []
    hf_inputs = {"bert": _tokens, "t5": _seq2seq, "vit": _pixels, "whisper": _whisper_inputs,
                 "mixtral": _tokens, "gpt2": _tokens, "gpt-neox": _tokens, "llama": _tokens}  # fmt: skip
    for name, inputs in hf_inputs.items():
        layout, save, saved_keys = hf_layout, _save_pretrained(), None
        if name == "t5":
            layout = ("checkpoint-N/ config.json + pytorch_model.bin (transformers < 5 "
                      "save_pretrained(safe_serialization=False); tied weights share storage)")  # fmt: skip
            save = _save_legacy_bin
        elif name == "whisper":
            layout = ("checkpoint-N/ save_pretrained(max_shard_size='40KB') "
                      "(model-0000i-of-0000n.safetensors + model.safetensors.index.json)")  # fmt: skip
            save = _save_pretrained(max_shard_size="40KB")
        elif name == "mixtral":
            layout = hf_layout + "; experts saved as block_sparse_moe.experts.E.w1/w2/w3"
            saved_keys = _mixtral_saved_keys
        entries.append(ZooModel(name, "transformers", layout, _seeded(name, _lazy("transformers", name)),
                                _hf_config, save, inputs, "step", saved_keys))  # fmt: skip
    unet_layout = (
        "checkpoint-N/unet/ save_pretrained (config.json + diffusion_pytorch_model.safetensors)"
    )
    for name in ("unet2d", "unet2d-cond"):
        entries.append(ZooModel(name, "diffusers", unet_layout, _seeded(name, _lazy("diffusers", name)),
                                _diffusers_config, _save_pretrained(sub="unet"), _unet_inputs))  # fmt: skip
    entries += [
        ZooModel("vit-timm", "torch", "step_N.safetensors (safetensors.torch.save_file, timm key layout)",
                 _seeded("vit-timm", TimmViT), _no_config, _save_safetensors("step_{step}.safetensors"),
                 _images),
        ZooModel("resnet", "torch",
                 "resnet_epoch_N.safetensors (safetensors.torch.save_file, torchvision key layout)",
                 _seeded("resnet", TorchvisionResNet), _no_config,
                 _save_safetensors("resnet_epoch_{step}.safetensors"), _images, "epoch"),
        ZooModel("mlp", "torch", "epoch_N.pt (torch.save(model.state_dict()))", _seeded("mlp", _Mlp),
                 _no_config, _save_torch, lambda m, g: {"x": torch.randn(4, 12, generator=g)}, "epoch"),
        ZooModel("cnn", "torch", "epoch_N.pt (torch.save(model.state_dict()))", _seeded("cnn", _Cnn),
                 _no_config, _save_torch, _images, "epoch"),
        ZooModel("lstm", "torch", "epoch_N.pt (torch.save(model.state_dict()))", _seeded("lstm", _Lstm),
                 _no_config, _save_torch, lambda m, g: {"x": torch.randint(0, 40, (2, 6), generator=g)},
                 "epoch"),
    ]  # fmt: skip
    return {e.name: e for e in entries}


ZOO: dict[str, ZooModel] = _zoo()
