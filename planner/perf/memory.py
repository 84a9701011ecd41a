"""VRAM a set-up needs: weights, KV cache, activations, draft extras, runtime overhead, and
a serving engine's own reserve; the budget a set-up must fit.

The one rule for memory: `predict` uses it for a plan, and the runtime for its budget check
before loading (planner.runtime.memory), so a plan's figure and a run's refusal agree.

A serving engine sets memory aside by policy (`EngineMemory`, figures in
planner/profiles/engines.yaml with their sources): vLLM allocates at most
gpu_memory_utilization of the device (the budget, when none is given) and captures CUDA
graphs beside it; SGLang keeps (1 - mem_fraction_static) of the device for activations,
CUDA graphs and metadata, a reserve that then stands for this module's own activation and
runtime estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import BudgetError, InputError
from planner.models.spec import DTYPE_BYTES, ModelSpec
from planner.plan.schema import HEAD_METHODS

GIB = 2**30
# CUDA context, cuBLAS workspaces and the allocator's slack on a GPU; interpreter and
# library state on a CPU. About what `torch.cuda.memory_reserved` adds beyond tensors.
RUNTIME_OVERHEAD_GIB = {"gpu": 0.75, "cpu": 0.3}
CAPTURED_STEPS = 3  # decode/verify, draft and prefill shapes each keep an activation pool under graphs


MIB = 2**20


@dataclass(frozen=True)
class ReserveTier:
    """SGLang's defaults for devices below `below_gib` GiB (None: every larger one)."""

    below_gib: float | None
    prefill_tokens: int  # chunked_prefill_size
    graph_batch: int  # cuda_graph_max_bs (one GPU, tensor parallel below 4)


@dataclass(frozen=True)
class EngineMemory:
    """How a serving engine sets memory aside (planner/profiles/engines.yaml, `memory`)."""

    share: float = 1.0  # of the device the engine allocates when no budget is given
    graph_mib_per_batch: float = 0.0  # CUDA-graph capture, per captured batch size
    graph_max_batch: int = 0  # the largest batch size captured
    # A reserve for activations, CUDA graphs and metadata, as the engine computes it:
    # base + per_prefill_token x prefill_tokens + graph_mib_per_batch x graph_batch
    # + tensor_parallel_mib x tensor parallel,
    # at least floor_mib on devices above floor_above_gib, plus draft_model_mib with a draft model.
    reserve_tiers: tuple[ReserveTier, ...] = ()  # none: no reserve (graphs are added instead)
    base_mib: float = 0.0
    per_prefill_token_mib: float = 0.0
    tensor_parallel_mib: float = 0.0
    floor_mib: float = 0.0
    floor_above_gib: float = 0.0
    draft_model_mib: float = 0.0

    def budget_gib(self, memory_gib: float) -> float:
        """What the engine allocates on a device of `memory_gib` GiB, given no budget."""
        return self.share * memory_gib

    def reserve_bytes(self, *, memory_gib: float, method: str, graphs: bool, tensor_parallel: int = 1) -> float:
        """Bytes the engine holds on each GPU beside weights and KV cache: its reserve (which
        grows with `tensor_parallel`), or CUDA-graph capture."""
        if not self.reserve_tiers:
            return self.graph_mib_per_batch * self.graph_max_batch * MIB if graphs else 0.0
        tier = next(t for t in self.reserve_tiers if t.below_gib is None or memory_gib < t.below_gib)
        reserve = (self.base_mib + self.per_prefill_token_mib * tier.prefill_tokens
                   + self.graph_mib_per_batch * tier.graph_batch + self.tensor_parallel_mib * tensor_parallel)
        if memory_gib > self.floor_above_gib:
            reserve = max(reserve, self.floor_mib)
        return (reserve + (self.draft_model_mib if method == "draft_model" else 0.0)) * MIB


def budget_gib(vram_gib: float | None, *, memory_gib: float, device: str, engine: EngineMemory | None = None) -> float:
    """The memory budget in GiB on `device` (a profile name) of `memory_gib` GiB: `vram_gib`, or
    what the engine allocates of the device (all of it without an engine).

    Raises:
        InputError: `vram_gib` above the device's memory.
    """
    if vram_gib is not None and vram_gib > memory_gib:
        raise InputError(f"`vram_gib` {vram_gib:g} is above the {memory_gib:.1f} GiB of {device}")
    if vram_gib is not None:
        return vram_gib
    return engine.budget_gib(memory_gib) if engine else memory_gib


def require_fit(needed_gib: float, budget: float, *, what: str, parts: dict[str, float] | None = None,
                hint: str = "") -> None:
    """Nothing, when `needed_gib` fits `budget` (GiB).

    Raises:
        BudgetError: it does not; the message names `what`, the GiB it needs (by part, when
            `parts` gives bytes per component), the budget, and `hint` (what would fit) where given.
    """
    if needed_gib <= budget:
        return
    detail = ", ".join(f"{name.replace('_', ' ')} {size / GIB:.2f}" for name, size in (parts or {}).items()
                       if size >= 0.005 * GIB)
    raise BudgetError(f"{what} needs {needed_gib:.2f} GiB" + (f" ({detail})" if detail else "")
                      + f", over the {budget:.1f} GiB budget" + (f"; {hint}" if hint else ""))


def activation_bytes(spec: ModelSpec, *, tokens: int, batch_size: int, dtype: str) -> float:
    """Live activations of one forward step: residual stream, MLP intermediate (of the experts
    a token is routed to in a MoE layer), fp32 logits."""
    per_token = (4 * spec.hidden_size + 2 * spec.active_intermediate_size) * DTYPE_BYTES[dtype] + 2 * spec.vocab_size * 4
    return batch_size * tokens * per_token


def vram_bytes(
    spec: ModelSpec, *, device_kind: str, method: str, gamma: int, quant: str, context: int,
    batch_size: int = 1, dtype: str = "bf16", graphs: bool = False, draft_spec: ModelSpec | None = None,
    draft_quant: str = "none", tensor_parallel: int = 1, decoding=None, engine: EngineMemory | None = None,
    memory_gib: float = 0.0,
) -> dict[str, float]:
    """Bytes by component on each GPU of `tensor_parallel` (one: the whole set-up) of a device of
    `device_kind` ("gpu" or "cpu", HardwareProfile.kind) with `memory_gib` GiB; the KV cache holds
    `context` tokens plus the verified slots (gamma + 1, a tree's num_draft_tokens where
    `decoding` has one). Weights are all that is resident: every expert of a mixture-of-experts
    model. Under tensor parallel each GPU holds 1/N of the weights and its KV heads' cache
    (planner.perf.cost.kv_share); a draft head or model split as `decoding.draft_tensor_parallel`
    says (default: as the target). A serving `engine` adds its part on each GPU: CUDA-graph
    capture, or a reserve that replaces the activation and runtime estimates (see the module
    docstring)."""
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
        if decoding is not None and decoding.draft_vocab_size:  # the draft vocabulary's LM head rows, copied
            parts["draft"] += decoding.draft_vocab_size * spec.embedding_width * DTYPE_BYTES[dtype]
    elif method == "draft_model" and draft_spec is not None:
        # A separate draft keeps its own weights and its own cache for every target token.
        draft_tp = (decoding.draft_tensor_parallel if decoding is not None else None) or tp
        parts["draft"] = (draft_spec.weight_bytes(draft_quant, dtype) / draft_tp
                          + batch_size * slots * draft_spec.kv_bytes_per_token(dtype) * kv_share(draft_spec, draft_tp))
    elif method in HEAD_METHODS and decoding is not None:
        parts["draft"] = _head_bytes(spec, decoding, draft_spec, dtype=dtype, slots=slots, batch_size=batch_size, tp=tp)
    if engine is not None:
        parts["engine"] = engine.reserve_bytes(memory_gib=memory_gib, method=method, graphs=graphs, tensor_parallel=tp)
        if engine.reserve_tiers:
            parts["activations"] = parts["runtime"] = 0.0
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
