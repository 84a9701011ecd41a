"""ModelSpec: a decoder LLM's shape from its Hugging Face config alone (no weights).

Bytes per layer for each quantization count what a weight-only kernel actually reads:
int8 stores one byte per weight plus one bf16 scale per output channel; int4 stores half
a byte per weight plus a bf16 scale and a bf16 zero point per group of 128 weights
(torchao's int4 weight-only layout). Embeddings and norms stay in the activation dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QUANTIZATIONS = ("none", "int8", "int4")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
INT4_GROUP_SIZE = 128


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # HF model_type, e.g. "llama", "qwen2", "gemma2"
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    gated_mlp: bool = True  # SwiGLU/GeGLU: gate, up and down projections
    norms_per_layer: int = 2  # Gemma-2 has 4 (pre/post attention and feed-forward)
    tokenizer_family: str = ""  # models sharing a tokenizer can draft for each other, e.g. "llama3"
    checkpoint_dtype: str = "bf16"  # the released weights' dtype (config.json torch_dtype)

    # -- parameters -------------------------------------------------------------------
    @property
    def layer_linear_shapes(self) -> tuple[tuple[int, int], ...]:
        """(in_features, out_features) of each weight matrix of one decoder layer: q, k, v, o,
        then the MLP's (gate,) up and down. Phi-3's fused qkv/gate_up hold the same weights."""
        h, inter = self.hidden_size, self.intermediate_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = ((h, q_out), (h, kv_out), (h, kv_out), (q_out, h))
        mlp = ((h, inter), (h, inter), (inter, h)) if self.gated_mlp else ((h, inter), (inter, h))
        return attention + mlp

    @property
    def qkv_bias_params(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0

    @property
    def attention_params(self) -> int:
        return sum(i * o for i, o in self.layer_linear_shapes[:4]) + self.qkv_bias_params

    @property
    def mlp_params(self) -> int:
        return sum(i * o for i, o in self.layer_linear_shapes[4:])

    @property
    def layer_linear_params(self) -> int:
        """Weights of one decoder layer that sit in linear layers (the quantizable ones)."""
        return self.attention_params + self.mlp_params

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + self.norms_per_layer * self.hidden_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def param_count(self) -> int:
        head = 0 if self.tie_embeddings else self.lm_head_params
        return self.embedding_params + head + self.num_layers * self.layer_params + self.hidden_size

    # -- bytes ------------------------------------------------------------------------
    def linear_bytes(self, params: int, in_features: int, quant: str = "none", dtype: str = "bf16") -> float:
        """Bytes a weight-only kernel reads for `params` linear weights with `in_features` inputs."""
        if quant == "none":
            return params * DTYPE_BYTES[dtype]
        out_features = params // in_features
        if quant == "int8":
            return params + out_features * 2
        if quant == "int4":
            groups = out_features * math.ceil(in_features / INT4_GROUP_SIZE)
            return params / 2 + groups * 4
        raise ValueError(f"unknown quantization {quant!r}; expected one of {QUANTIZATIONS}")

    def layer_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """Weight bytes read by one decoder layer's forward (biases and norms stay in `dtype`)."""
        linear = sum(self.linear_bytes(i * o, i, quant, dtype) for i, o in self.layer_linear_shapes)
        unquantized = self.qkv_bias_params + self.norms_per_layer * self.hidden_size
        return linear + unquantized * DTYPE_BYTES[dtype]

    def lm_head_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        return self.linear_bytes(self.lm_head_params, self.hidden_size, quant, dtype)

    def embedding_bytes(self, dtype: str = "bf16") -> float:
        return self.embedding_params * DTYPE_BYTES[dtype]

    def weight_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """All weights resident in memory at this quantization."""
        head = 0.0 if self.tie_embeddings else self.lm_head_bytes(quant, dtype)
        return (
            self.embedding_bytes(dtype)
            + head
            + self.num_layers * self.layer_bytes(quant, dtype)
            + self.hidden_size * DTYPE_BYTES[dtype]
        )

    def kv_bytes_per_token_per_layer(self, dtype: str = "bf16") -> int:
        return 2 * self.num_kv_heads * self.head_dim * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str = "bf16") -> int:
        return self.num_layers * self.kv_bytes_per_token_per_layer(dtype)

    # -- FLOPs ------------------------------------------------------------------------
    def layer_flops(self, new_tokens: int, context: int) -> float:
        """FLOPs of one decoder layer over `new_tokens` tokens attending to `context` tokens."""
        matmul = 2 * new_tokens * self.layer_linear_params
        attention = 4 * new_tokens * context * self.num_heads * self.head_dim
        return matmul + attention

    def lm_head_flops(self, new_tokens: int) -> float:
        return 2 * new_tokens * self.lm_head_params
