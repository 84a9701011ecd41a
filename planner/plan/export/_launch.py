"""What every serving launch needs beside the speculative set-up: concurrency and a memory share.

Concurrency is the largest batch size the plan covers (its schedule's last range, or the
plan's own batch size). The memory share is the fraction of the GPU an engine may take:
the plan's memory budget (its largest batch was planned to fit it), or, with no budget,
the 90% engines leave by default; never less than the plan's own VRAM figure plus 10%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.errors import SpecplanError
from planner.plan.schema import Plan

HEADROOM = 1.10  # over the plan's VRAM figure: allocator fragmentation, CUDA graphs, the engine's sampler
DEFAULT_SHARE = 0.90  # with no budget: vLLM's default gpu_memory_utilization, room for the CUDA context
MAX_SHARE = 0.95


@dataclass(frozen=True)
class Launch:
    max_batch: int  # sequences served at once
    memory_share: float | None  # fraction of the GPU's memory; None when the profile cannot be read
    memory_note: str  # how the share was reached, for the header
    tensor_parallel: int = 1  # GPUs of the plan's profile each forward is split over


def max_batch(plan: Plan) -> int:
    return max((e.batch_max for e in plan.schedule), default=plan.constraints.batch_size)


def _share(plan: Plan, memory_gib: float) -> tuple[float, str]:
    budget = plan.constraints.vram_gib
    wanted = budget / memory_gib if budget else DEFAULT_SHARE
    needed = plan.prediction.vram_gib * HEADROOM / memory_gib
    share = min(MAX_SHARE, max(wanted, needed))
    share = math.ceil(share * 100) / 100
    basis = f"budget {budget:.1f} GiB" if budget else f"no budget: {DEFAULT_SHARE:.0%}"
    note = (f"{share:.2f} of {memory_gib:.1f} GiB ({basis}; the plan predicts "
            f"{plan.prediction.vram_gib:.1f} GiB at batch size {plan.constraints.batch_size}, "
            f"+{HEADROOM - 1:.0%} headroom)")
    if needed > MAX_SHARE:
        note += f"; the prediction plus headroom exceeds {MAX_SHARE:.0%} of the GPU"
    return share, note


def launch_for(plan: Plan) -> Launch:
    from planner.hardware import load_profile

    try:
        memory_gib = load_profile(plan.hardware.profile).memory_gib
    except SpecplanError as exc:
        return Launch(max_batch(plan), None, f"engine default (profile not readable: {exc})", plan.hardware.tensor_parallel)
    share, note = _share(plan, memory_gib)
    return Launch(max_batch(plan), share, note, plan.hardware.tensor_parallel)
