"""VRAM a set-up needs: weights, KV cache, activations, draft extras, runtime overhead.

The one rule for memory: `predict` uses it for a plan, and the runtime for its budget check
before loading (planner.runtime.memory), so a plan's figure and a run's refusal agree."""

from __future__ import annotations

from planner.models.spec import DTYPE_BYTES, ModelSpec
from planner.plan.schema import HEAD_METHODS

GIB = 2**30
# CUDA context, cuBLAS workspaces and the allocator's slack on a GPU; interpreter and
# library state on a CPU. About what `torch.cuda.memory_reserved` adds beyond tensors.
RUNTIME_OVERHEAD_GIB = {"gpu": 0.75, "cpu": 0.3}
CAPTURED_STEPS = 3  # decode/verify, draft and prefill shapes each keep an activation pool under graphs


def activation_bytes(spec: ModelSpec, *, tokens: int, batch_size: int, dtype: str) -> float:
    """Live activations of one forward step: residual stream, MLP intermediate (of the experts
    a token is routed to in a MoE layer), fp32 logits."""
    per_token = (4 * spec.hidden_size + 2 * spec.active_intermediate_size) * DTYPE_BYTES[dtype] + 2 * spec.vocab_size * 4
    return batch_size * tokens * per_token


def vram_bytes(
    spec: ModelSpec, *, device_kind: str, method: str, gamma: int, quant: str, context: int,
    batch_size: int = 1, dtype: str = "bf16", graphs: bool = False, draft_spec: ModelSpec | None = None,
    draft_quant: str = "none", tensor_parallel: int = 1, decoding=None,
) -> dict[str, float]:
    """Bytes by component on each GPU of `tensor_parallel` (one: the whole set-up) of a device of
    `device_kind` ("gpu" or "cpu", HardwareProfile.kind); the KV cache holds `context` tokens
    plus the verified slots (gamma + 1, a tree's num_draft_tokens where `decoding` has one).
    Weights are all that is resident: every expert of a mixture-of-experts model. Under tensor
    parallel each GPU holds 1/N of the weights and its KV heads' cache (planner.perf.cost.kv_share);
    a draft head or model split as `decoding.draft_tensor_parallel` says (default: as the target)."""
    from planner.perf.cost import kv_share

    slots = context + max(gamma + 1, decoding.num_draft_tokens if decoding is not None else 0)
    tp = tensor_parallel
    parts = {
        "weights": spec.weight_bytes(quant, dtype) / tp,
        "kv_cache": batch_size * slots * spec.kv_bytes_per_token(dtype) * kv_share(spec, tp),
        "activations": activation_bytes(spec, tokens=gamma + 1, batch_size=batch_size, dtype=dtype)
        * (CAPTURED_STEPS if graphs else 1),
        "draft": 0.0,
        "runtime": RUNTIME_OVERHEAD_GIB[device_kind] * GIB,
    }
    if method == "s3d":
        parts["draft"] = spec.hidden_size * DTYPE_BYTES[dtype]  # the mask token's embedding row
    elif method == "draft_model" and draft_spec is not None:
        # A separate draft keeps its own weights and its own cache for every target token.
        draft_tp = (decoding.draft_tensor_parallel if decoding is not None else None) or tp
        parts["draft"] = (draft_spec.weight_bytes(draft_quant, dtype) / draft_tp
                          + batch_size * slots * draft_spec.kv_bytes_per_token(dtype) * kv_share(draft_spec, draft_tp))
    elif method in HEAD_METHODS and decoding is not None:
        parts["draft"] = _head_bytes(spec, decoding, draft_spec, dtype=dtype, slots=slots, batch_size=batch_size, tp=tp)
    return parts


def _head_bytes(spec, d, given, *, dtype, slots, batch_size, tp) -> float:
    """A head's weights (its layers, its own LM head where it has one: EAGLE-3's, Medusa's) and
    its one layer's KV cache, on each of its tensor-parallel GPUs."""
    from planner.perf.cost import kv_share
    from planner.perf.heads import head_spec, medusa_spec

    head_tp = d.draft_tensor_parallel or tp
    if d.method == "medusa":
        heads = medusa_spec(spec, d.gamma)
        return heads.num_layers * heads.layer_bytes(d.draft_quant, dtype) / head_tp
    head = head_spec(d.method, spec, given)
    weights = head.layer_bytes(d.draft_quant, dtype) + (head.head_bytes("none", dtype) if d.method == "eagle3" else 0.0)
    return weights / head_tp + batch_size * slots * head.kv_bytes_per_token(dtype) * kv_share(head, head_tp)


def vram_gib(spec: ModelSpec, **kwargs) -> float:
    """The sum of vram_bytes(spec, **kwargs), in GiB."""
    return sum(vram_bytes(spec, **kwargs).values()) / GIB
