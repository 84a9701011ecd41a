"""What every serving launch needs beside the speculative set-up: concurrency and a memory share.

Concurrency is the largest batch size the plan covers (its schedule's last range, or the
plan's own batch size). The memory share is the fraction of the GPU an engine may take:
the plan's memory budget (its largest batch was planned to fit it), or, with no budget,
the 90% engines leave by default; never less than the plan's VRAM figure at its largest
batch plus 10%. An engine that sets a reserve aside outside the share (SGLang: activations,
CUDA graphs, a draft worker; planner/profiles/engines.yaml `memory`) gets the share of its
static pool, weights and KV cache: the budget (or the whole GPU, as SGLang's own default
takes it) less that reserve, as SGLang's `mem_fraction_static` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.errors import SpecplanError
from planner.plan.schema import Plan

HEADROOM = 1.10  # over the plan's VRAM figure: allocator fragmentation, CUDA graphs, the engine's sampler
DEFAULT_SHARE = 0.90  # with no budget and no engine policy: room for the CUDA context
MAX_SHARE = 0.95


@dataclass(frozen=True)
class Launch:
    max_batch: int  # sequences served at once
    memory_share: float | None  # fraction of the GPU's memory; None when the profile cannot be read
    memory_note: str  # how the share was reached, for the header
    tensor_parallel: int = 1  # GPUs of the plan's profile each forward is split over
    memory_gib: float | None = None  # of one GPU of the plan's profile
    weights_gib: float | None = None  # per GPU, target and draft model (TensorRT-LLM's launch only); None: not known


def max_batch(plan: Plan) -> int:
    return max((e.batch_max for e in plan.schedule), default=plan.constraints.batch_size)


def planned_vram(plan: Plan) -> tuple[float, int]:
    """(GiB, batch size): the plan's VRAM figure at the largest batch it covers (the schedule's
    last range where it records one, else the plan's own)."""
    last = plan.schedule[-1] if plan.schedule else None
    if last is not None and last.vram_gib is not None and last.vram_gib > plan.prediction.vram_gib:
        return last.vram_gib, last.batch_max
    return plan.prediction.vram_gib, plan.constraints.batch_size


def _share(plan: Plan, memory_gib: float, engine: str | None) -> tuple[float, str]:
    from planner.perf.memory import GIB
    from planner.search.engines import engine_memory

    policy = engine_memory(engine) if engine else None
    reserve = 0.0
    if policy is not None and policy.reserve_tiers:
        reserve = policy.reserve_bytes(memory_gib=memory_gib, method=plan.decoding.method, graphs=True,
                                       tensor_parallel=plan.hardware.tensor_parallel) / GIB
    budget = plan.constraints.vram_gib
    vram, batch = planned_vram(plan)
    # the plan's figure holds this engine's reserve only when it was planned for this engine
    static = vram - reserve if plan.constraints.engine == engine else vram
    # with no budget, the share the engine takes by its own default (engines.yaml), as planning counts it
    default = policy.share if policy is not None else DEFAULT_SHARE
    if reserve:
        wanted = ((budget or memory_gib * default) - reserve) / memory_gib
    else:
        wanted = budget / memory_gib if budget else default
    needed = static * HEADROOM / memory_gib
    share = math.ceil(min(MAX_SHARE, max(wanted, needed)) * 100) / 100
    basis = f"budget {budget:.1f} GiB" if budget else f"no budget: {default:.0%}" + (" of the GPU" if reserve else "")
    if reserve:
        basis += f", less the engine's {reserve:.1f} GiB reserve kept outside this share"
    note = (f"{share:.2f} of {memory_gib:.1f} GiB ({basis}; the plan predicts {vram:.1f} GiB at batch size {batch}, "
            f"+{HEADROOM - 1:.0%} headroom)")
    if needed > MAX_SHARE:
        note += f"; the prediction plus headroom exceeds {MAX_SHARE:.0%} of the GPU"
    elif reserve and wanted < needed:
        note += "; the plan needs more than the budget leaves the static pool: expect less KV cache than planned or an OOM"
    return share, note


def _weights_gib(plan: Plan) -> float | None:
    """Weights per GPU of the plan's target (and its draft model), in GiB; None when a model's
    config cannot be read here (a hub id without a card)."""
    from planner.models import load_model_spec
    from planner.perf.memory import GIB

    d = plan.decoding
    try:
        total = load_model_spec(plan.model.name).weight_bytes(d.quant)
        if d.method == "draft_model" and d.draft_model:
            total += load_model_spec(d.draft_model).weight_bytes(d.draft_quant)
    except SpecplanError:
        return None
    return total / plan.hardware.tensor_parallel / GIB


def free_memory_fraction(launch: "Launch") -> tuple[float | None, str]:
    """TensorRT-LLM's kv_cache_free_gpu_memory_fraction for `launch`: the share of the memory
    left after the weights that the KV cache may take, so that weights and cache fill the
    launch's whole-GPU share, (share x memory - weights) / (memory - weights); None (its
    default, 0.9) when the weights cannot be known here. The note says which."""
    weights, memory_gib = launch.weights_gib, launch.memory_gib
    if weights is None or launch.memory_share is None or memory_gib is None or weights >= memory_gib:
        return None, "TensorRT-LLM's default KV fraction (the weights of this plan's models are not known here)"
    fraction = (launch.memory_share * memory_gib - weights) / (memory_gib - weights)
    fraction = min(MAX_SHARE, max(0.01, math.floor(fraction * 100) / 100))
    return fraction, (f"KV cache {fraction:.2f} of the memory left after {weights:.1f} GiB of weights, so weights and "
                      f"cache fill {launch.memory_share:.2f} of the GPU")


def launch_for(plan: Plan, engine: str | None = None) -> Launch:
    """The launch of `plan` on `engine` (a name in planner/profiles/engines.yaml; None: no
    engine's reserve is taken out of the share). `plan` as made (card names, before the
    export swaps them for hub ids), so that its models' weights can be read from their cards."""
    from planner.hardware import load_profile

    memory_gib = plan.hardware.memory_gib  # recorded at planning time (profiles given as files are not found again by name)
    if memory_gib is None:
        try:
            memory_gib = load_profile(plan.hardware.profile).memory_gib
        except SpecplanError as exc:
            return Launch(max_batch(plan), None, f"engine default (profile not readable: {exc})", plan.hardware.tensor_parallel)
    share, note = _share(plan, memory_gib, engine)
    weights = _weights_gib(plan) if engine == "trtllm" else None  # the plan as made: card names, not hub ids
    return Launch(max_batch(plan), share, note, plan.hardware.tensor_parallel, memory_gib, weights)
