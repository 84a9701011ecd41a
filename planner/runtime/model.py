"""A compact decoder: the model and nothing else.

Built from a Hugging Face config and state_dict for llama, mistral, qwen2 (qkv bias),
phi3 (fused qkv/gate_up) and gemma (scaled embedding, RMSNorm (1 + w), gelu-tanh MLP).
`forward(tokens, input_pos, layers)` runs any subset of the decoder layers (a skip set, the
first E layers) then the final norm and LM head. Each layer's KV cache is a preallocated
(B, H_kv, S_max, D) buffer written at `input_pos`; attention masks by position, so rejected
draft tokens need no clean-up: their slots are simply overwritten later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from planner.errors import InputError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "phi3", "gemma")


@dataclass(frozen=True)
class DecoderConfig:
    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    qkv_bias: bool = False
    gelu_mlp: bool = False  # gemma: gelu(tanh) gate instead of silu
    gemma_norm: bool = False  # gemma: RMSNorm scales by (1 + w) and embeddings by sqrt(hidden)
    tie_embeddings: bool = False
    attention_scale: float = 0.0  # 0: head_dim ** -0.5
    sliding_windows: tuple[int | None, ...] = ()  # per layer; empty: full attention everywhere


def decoder_config(hf_config) -> DecoderConfig:
    """The decoder's shape from a transformers config, or InputError for other architectures."""
    arch = hf_config.model_type
    if arch not in SUPPORTED_ARCHITECTURES:
        raise InputError(f"model type '{arch}' is not supported by the runtime (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    scalar = getattr(hf_config, "query_pre_attn_scalar", None)
    return DecoderConfig(
        architecture=arch,
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_heads=hf_config.num_attention_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
        head_dim=head_dim,
        vocab_size=hf_config.vocab_size,
        rms_eps=hf_config.rms_norm_eps,
        qkv_bias=arch == "qwen2" or bool(getattr(hf_config, "attention_bias", False)),
        gelu_mlp=arch == "gemma",
        gemma_norm=arch == "gemma",
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        attention_scale=scalar ** -0.5 if scalar else 0.0,
        sliding_windows=_sliding_windows(hf_config),
    )


def _sliding_windows(hf_config) -> tuple[int | None, ...]:
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None:
        return tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    return (window,) * hf_config.num_hidden_layers if window else ()


def rope_tables(hf_config, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (max_seq_len, rotary_dim), computed with transformers' own RoPE
    initialisers so scaled variants (llama3, yarn, linear) match the checkpoint exactly."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "dynamic":
        raise InputError("dynamic RoPE scaling is not supported by the runtime (its tables change with length)")
    if rope_type == "default":
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
    freqs = torch.arange(max_seq_len, dtype=torch.float)[:, None] * inv_freq.float()[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)  # (S, rotary_dim), HF's rotate-half layout
    return angles.cos() * scaling, angles.sin() * scaling


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, gemma: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.gemma = gemma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:  # gemma scales in fp32 by (1 + w) before the cast back
            return (normed * (1.0 + self.weight.float())).type_as(x)
        return self.weight * normed.type_as(x)


class KVCache(nn.Module):
    def __init__(self, batch: int, kv_heads: int, max_seq_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k)  # (B, H_kv, T, D) into slots input_pos
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]  # partial rotary (phi3): only the first `rot` dims turn
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = x_rot.shape[-1] // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, q_dim + 2 * kv_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(q_dim, cfg.hidden_size, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos):
        cfg = self.cfg
        B, T, _ = x.shape
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        q, k, v = self.wqkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = self.cache.update(input_pos, k, v)  # (B, H_kv, S_max, D)
        scale = cfg.attention_scale or None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(B, T, q_dim))


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)  # [gate; up]
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gelu = cfg.gelu_mlp

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)
        act = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.w2(act * up)


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig, window: int | None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, cfg.gemma_norm)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, cfg.gemma_norm)
        self.mlp = MLP(cfg)
        self.window = window

    def forward(self, x, cos, sin, mask, input_pos):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, input_pos)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        windows = cfg.sliding_windows or (None,) * cfg.num_layers
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, windows[i]) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, cfg.gemma_norm)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.max_seq_len = 0

    def setup_cache(self, max_seq_len: int, cos: torch.Tensor, sin: torch.Tensor, batch: int = 1) -> None:
        """Allocate every layer's KV cache once; rope tables cover the same positions."""
        cfg, weight = self.cfg, self.lm_head.weight
        dtype = self.embed.weight.dtype
        for layer in self.layers:
            layer.attn.cache = KVCache(batch, cfg.num_kv_heads, max_seq_len, cfg.head_dim, dtype, weight.device)
        self.register_buffer("cos", cos[:max_seq_len].to(weight.device, dtype), persistent=False)
        self.register_buffer("sin", sin[:max_seq_len].to(weight.device, dtype), persistent=False)
        self.register_buffer("positions", torch.arange(max_seq_len, device=weight.device), persistent=False)
        self.max_seq_len = max_seq_len

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)  # (B, T, hidden)
        if self.cfg.gemma_norm:
            h = h * torch.tensor(self.cfg.hidden_size ** 0.5, dtype=h.dtype)
        return h

    def run_layers(self, h: torch.Tensor, input_pos: torch.Tensor, layers) -> torch.Tensor:
        """Decoder layers `layers` (indices, ascending) over h at positions input_pos (T,)."""
        cos, sin = self.cos[input_pos], self.sin[input_pos]  # (T, rotary_dim)
        causal = self.positions[None, :] <= input_pos[:, None]  # (T, S_max): key j visible to query i
        masks = {}
        for i in layers:
            block = self.layers[i]
            if block.window not in masks:
                window_ok = input_pos[:, None] - self.positions[None, :] < (block.window or self.max_seq_len)
                masks[block.window] = causal & window_ok
            h = block(h, cos, sin, masks[block.window], input_pos)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h)).float()  # (B, T, vocab)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor, layers=None, head: bool = True) -> torch.Tensor:
        """x: token ids (B, T), or hidden states (B, T, hidden) to continue from (early exit).
        Returns logits (B, T, V), or the hidden states after `layers` when head=False."""
        layers = range(self.cfg.num_layers) if layers is None else layers
        h = self.embed_tokens(x) if x.dtype == torch.long else x
        h = self.run_layers(h, input_pos, layers)
        return self.head(h) if head else h


def _layer_tensors(sd: dict, arch: str, i: int) -> dict:
    """Pop layer i's HF tensors from sd as this decoder's fused names (frees them as it goes)."""
    p = f"model.layers.{i}."
    out = {
        f"layers.{i}.attn_norm.weight": sd.pop(p + "input_layernorm.weight"),
        f"layers.{i}.mlp_norm.weight": sd.pop(p + "post_attention_layernorm.weight"),
        f"layers.{i}.attn.wo.weight": sd.pop(p + "self_attn.o_proj.weight"),
        f"layers.{i}.mlp.w2.weight": sd.pop(p + "mlp.down_proj.weight"),
    }
    if arch == "phi3":  # already fused, in the same [q; k; v] and [gate; up] order
        out[f"layers.{i}.attn.wqkv.weight"] = sd.pop(p + "self_attn.qkv_proj.weight")
        out[f"layers.{i}.mlp.w13.weight"] = sd.pop(p + "mlp.gate_up_proj.weight")
        return out
    for kind in ("weight", "bias"):
        names = [p + f"self_attn.{x}_proj.{kind}" for x in "qkv"]
        if names[0] in sd:
            out[f"layers.{i}.attn.wqkv.{kind}"] = torch.cat([sd.pop(n) for n in names])
    out[f"layers.{i}.mlp.w13.weight"] = torch.cat([sd.pop(p + "mlp.gate_proj.weight"), sd.pop(p + "mlp.up_proj.weight")])
    return out


def decoder_from_hf(hf_model) -> Decoder:
    """Convert a loaded transformers causal LM; the weights move over without a second copy
    of the whole model (each layer is fused then its HF tensors are dropped)."""
    cfg = decoder_config(hf_model.config)
    sd = dict(hf_model.state_dict())
    del hf_model
    tensors = {"embed.weight": sd.pop("model.embed_tokens.weight"), "norm.weight": sd.pop("model.norm.weight")}
    head = sd.pop("lm_head.weight", None)
    tensors["lm_head.weight"] = tensors["embed.weight"] if cfg.tie_embeddings or head is None else head
    for i in range(cfg.num_layers):
        tensors.update(_layer_tensors(sd, cfg.architecture, i))
    with torch.device("meta"):
        model = Decoder(cfg)
    model.load_state_dict(tensors, assign=True, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval().requires_grad_(False)
