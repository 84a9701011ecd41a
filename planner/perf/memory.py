"""VRAM a set-up needs: weights, KV cache, activations, draft extras, runtime overhead.

The one rule for memory: `predict` uses it for a plan, and the runtime for its budget check
before loading (planner.runtime.memory), so a plan's figure and a run's refusal agree."""

from __future__ import annotations

from planner.models.spec import DTYPE_BYTES, ModelSpec

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
    draft_quant: str = "none",
) -> dict[str, float]:
    """Bytes by component on a device of `device_kind` ("gpu" or "cpu", HardwareProfile.kind);
    the KV cache holds `context` tokens plus gamma + 1 verify slots. Weights are all that is
    resident: every expert of a mixture-of-experts model."""
    slots = context + gamma + 1
    parts = {
        "weights": spec.weight_bytes(quant, dtype),
        "kv_cache": batch_size * slots * spec.kv_bytes_per_token(dtype),
        "activations": activation_bytes(spec, tokens=gamma + 1, batch_size=batch_size, dtype=dtype)
        * (CAPTURED_STEPS if graphs else 1),
        "draft": 0.0,
        "runtime": RUNTIME_OVERHEAD_GIB[device_kind] * GIB,
    }
    if method == "s3d":
        parts["draft"] = spec.hidden_size * DTYPE_BYTES[dtype]  # the mask token's embedding row
    elif method == "draft_model" and draft_spec is not None:
        # A separate draft keeps its own weights and its own cache for every target token.
        parts["draft"] = draft_spec.weight_bytes(draft_quant, dtype) + batch_size * slots * draft_spec.kv_bytes_per_token(dtype)
    return parts


def vram_gib(spec: ModelSpec, **kwargs) -> float:
    """The sum of vram_bytes(spec, **kwargs), in GiB."""
    return sum(vram_bytes(spec, **kwargs).values()) / GIB
