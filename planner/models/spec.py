"""ModelSpec: a decoder LLM's shape from its Hugging Face config alone (no weights).

The shape is one description: the weight matrices of a decoder layer (`Linear`: in and out
features, bias, and whether it is one routed expert's), the norm weights of a layer, and what
sits outside the layers (token and learned position embeddings, projections between the
embedding and hidden widths, final norms, LM head). Parameter counts, resident bytes, the
bytes a forward reads and FLOPs are all derived from it.

Bytes per layer for each quantization count what a weight-only kernel actually reads:
int8 stores one byte per weight plus one bf16 scale per output channel; int4 stores half
a byte per weight plus a bf16 scale and a bf16 zero point per group of 128 weights
(torchao's int4 weight-only layout, as AWQ/GPTQ W4A16 kernels read); fp8 (W8A8) stores one byte
per weight and one fp32 scale per matrix (vLLM's online `--quantization fp8`: per-tensor
weight scales). Biases, embeddings and norms stay in the activation dtype.

A mixture-of-experts layer holds `num_experts` copies of its expert matrices in memory
(`layer_bytes`, `weight_bytes`); a token runs through `num_experts_per_tok` of them
(`active_param_count`, `layer_flops`). How many distinct experts a whole forward reads is the
performance model's business (planner.perf.cost.expected_experts_read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QUANTIZATIONS = ("none", "int8", "int4", "fp8")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
INT4_GROUP_SIZE = 128
ATTENTION_LINEARS = ("q", "k", "v", "o")


def quantized_weight_bytes(in_features: int, out_features: int, quant: str = "none", dtype: str = "bf16") -> float:
    """Bytes a weight-only kernel reads for one (out_features, in_features) matrix.

    Raises ValueError for an unknown quantization."""
    params = in_features * out_features
    if quant == "none":
        return params * DTYPE_BYTES[dtype]
    if quant == "int8":
        return params + out_features * 2
    if quant == "int4":
        groups = out_features * math.ceil(in_features / INT4_GROUP_SIZE)
        return params / 2 + groups * 4
    if quant == "fp8":
        return params + 4
    raise ValueError(f"unknown quantization {quant!r}; expected one of {QUANTIZATIONS}")


@dataclass(frozen=True)
class Linear:
    """One weight matrix, y = x W^T (+ b), W of shape (out_features, in_features).

    Fused matrices (Phi-3's qkv_proj, GPT-NeoX's query_key_value, stacked expert tensors)
    hold the same weights as their parts, so they are described as the parts."""

    name: str  # q, k, v, o, gate, up, down, router, shared_gate, shared_up, shared_down, ...
    in_features: int
    out_features: int
    bias: bool = False
    expert: bool = False  # one routed expert's matrix: the layer holds num_experts of them

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """The weight at `quant` plus the bias in `dtype`."""
        bias = self.out_features * DTYPE_BYTES[dtype] if self.bias else 0
        return quantized_weight_bytes(self.in_features, self.out_features, quant, dtype) + bias


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # HF model_type, e.g. "llama", "qwen2", "gemma2"
    num_layers: int
    hidden_size: int
    intermediate_size: int  # the MLP's width; one expert's in a mixture-of-experts layer
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    layer_linears: tuple[Linear, ...]  # one decoder layer's matrices (one copy of each expert matrix)
    layer_norm_params: int  # one layer's norm weights and biases, q/k norms included
    final_norm_params: int  # norms outside the layers (the final norm; BLOOM's embedding norm)
    num_experts: int = 0  # routed experts per layer; 0 for a dense MLP
    num_experts_per_tok: int = 0  # routed experts each token runs through
    embedding_dim: int = 0  # token embedding and LM head width; 0 means hidden_size (OPT's word_embed_proj_dim)
    position_embeddings: int = 0  # rows of learned absolute position embeddings, hidden_size wide (OPT, GPT-2)
    lm_head_bias: bool = False
    max_position_embeddings: int = 4096
    tokenizer_family: str = ""  # models sharing a tokenizer can draft for each other, e.g. "llama3"
    checkpoint_dtype: str = "bf16"  # the released weights' dtype (config.json torch_dtype)
    mtp_layers: int = 0  # multi-token-prediction layers the checkpoint ships (DeepSeek-V3's num_nextn_predict_layers)

    # -- the description ----------------------------------------------------------------
    @property
    def embedding_width(self) -> int:
        return self.embedding_dim or self.hidden_size

    @property
    def lm_head(self) -> Linear:
        return Linear("lm_head", self.embedding_width, self.vocab_size, self.lm_head_bias)

    @property
    def projections(self) -> tuple[Linear, ...]:
        """Matrices between a narrower embedding and the hidden width, run on every forward (OPT-350m)."""
        if self.embedding_width == self.hidden_size:
            return ()
        return (Linear("project_in", self.embedding_width, self.hidden_size),
                Linear("project_out", self.hidden_size, self.embedding_width))

    @property
    def qkv_bias(self) -> bool:
        return any(lin.bias for lin in self.layer_linears if lin.name in ("q", "k", "v"))

    @property
    def active_intermediate_size(self) -> int:
        """The MLP width one token passes through: the inputs of the down projections,
        num_experts_per_tok routed experts' plus any shared expert's."""
        downs = (lin for lin in self.layer_linears if lin.name.endswith("down"))
        return sum(lin.in_features * (self.num_experts_per_tok if lin.expert else 1) for lin in downs)

    # -- parameters -----------------------------------------------------------------------
    def _linear_params(self, experts: int, names=None) -> int:
        """Weights and biases of the layer's matrices, counting `experts` copies of each expert matrix."""
        chosen = (lin for lin in self.layer_linears if names is None or lin.name in names)
        return sum(lin.params * (experts if lin.expert else 1) for lin in chosen)

    @property
    def attention_params(self) -> int:
        return self._linear_params(self.num_experts, ATTENTION_LINEARS)

    @property
    def mlp_params(self) -> int:
        """Dense MLP, or router, all routed experts and any shared expert."""
        return self.layer_linear_params - self.attention_params

    @property
    def layer_linear_params(self) -> int:
        """Weights and biases of one decoder layer that sit in linear layers, all experts held."""
        return self._linear_params(self.num_experts)

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + self.layer_norm_params

    @property
    def active_layer_params(self) -> int:
        """Parameters of one layer that one token runs through (num_experts_per_tok experts)."""
        return self._linear_params(self.num_experts_per_tok) + self.layer_norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.embedding_width + self.position_embeddings * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.lm_head.params

    @property
    def _outside_layer_params(self) -> int:
        head = self.lm_head_params
        if self.tie_embeddings:  # the head's weight is the embedding; a bias is its own
            head -= self.vocab_size * self.embedding_width
        return self.embedding_params + head + sum(p.params for p in self.projections) + self.final_norm_params

    @property
    def param_count(self) -> int:
        """Every parameter held, tied embeddings once (what transformers' model.parameters() counts)."""
        return self._outside_layer_params + self.num_layers * self.layer_params

    @property
    def active_param_count(self) -> int:
        """Parameters one token runs through: param_count less the experts it is not routed to."""
        return self._outside_layer_params + self.num_layers * self.active_layer_params

    # -- bytes ----------------------------------------------------------------------------
    def layer_dense_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """Weight bytes of one layer outside its routed experts (all of it for a dense model):
        what every forward reads, whatever the routing. Norms and biases stay in `dtype`."""
        shared = sum(lin.bytes(quant, dtype) for lin in self.layer_linears if not lin.expert)
        return shared + self.layer_norm_params * DTYPE_BYTES[dtype]

    def expert_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """Weight bytes of one routed expert of one layer (0 for a dense model)."""
        return sum(lin.bytes(quant, dtype) for lin in self.layer_linears if lin.expert)

    def layer_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """Weight bytes one decoder layer holds in memory: every expert of a MoE layer."""
        return self.layer_dense_bytes(quant, dtype) + self.num_experts * self.expert_bytes(quant, dtype)

    def lm_head_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        return self.lm_head.bytes(quant, dtype)

    def head_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """Weight bytes every forward reads outside the layers: final norms, projections, LM head."""
        projections = sum(p.bytes(quant, dtype) for p in self.projections)
        return self.final_norm_params * DTYPE_BYTES[dtype] + projections + self.lm_head_bytes(quant, dtype)

    def embedding_bytes(self, dtype: str = "bf16") -> float:
        return self.embedding_params * DTYPE_BYTES[dtype]

    def weight_bytes(self, quant: str = "none", dtype: str = "bf16") -> float:
        """All weights resident in memory at this quantization (a tied LM head is the embedding)."""
        head = self.lm_head_bytes(quant, dtype)
        if self.tie_embeddings:  # counted in embedding_bytes but for a bias of its own
            head = self.vocab_size * DTYPE_BYTES[dtype] if self.lm_head_bias else 0.0
        return (
            self.embedding_bytes(dtype)
            + head
            + sum(p.bytes(quant, dtype) for p in self.projections)
            + self.num_layers * self.layer_bytes(quant, dtype)
            + self.final_norm_params * DTYPE_BYTES[dtype]
        )

    def kv_bytes_per_token_per_layer(self, dtype: str = "bf16") -> int:
        return 2 * self.num_kv_heads * self.head_dim * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str = "bf16") -> int:
        return self.num_layers * self.kv_bytes_per_token_per_layer(dtype)

    # -- FLOPs ----------------------------------------------------------------------------
    def layer_flops(self, new_tokens: int, context: int) -> float:
        """FLOPs of one decoder layer over `new_tokens` tokens attending to `context` tokens:
        2 per weight a token runs through (its num_experts_per_tok experts) plus attention's
        4 x context x heads x head_dim (scores and weighted sum)."""
        weights = sum(
            lin.in_features * lin.out_features * (self.num_experts_per_tok if lin.expert else 1)
            for lin in self.layer_linears
        )
        attention = 4 * new_tokens * context * self.num_heads * self.head_dim
        return 2 * new_tokens * weights + attention

    def lm_head_flops(self, new_tokens: int) -> float:
        return 2 * new_tokens * self.vocab_size * self.embedding_width

    def head_flops(self, new_tokens: int) -> float:
        """FLOPs outside the layers on every forward: projections and LM head."""
        projections = sum(p.in_features * p.out_features for p in self.projections)
        return 2 * new_tokens * projections + self.lm_head_flops(new_tokens)
