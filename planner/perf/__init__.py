"""The performance model: pure functions over ModelSpec, HardwareProfile and Decoding.

Importable without torch. See docs/performance-model.md for every formula and its source.
"""

from planner.perf.acceptance import Prior, load_priors, position_acceptances, tokens_per_iteration
from planner.perf.cost import Execution, forward_latency_s
from planner.perf.memory import vram_bytes, vram_gib
from planner.perf.speedup import Detail, alpha_from_tokens_per_iteration, middle_block, predict, predict_detail

__all__ = [
    "Detail", "Execution", "Prior", "alpha_from_tokens_per_iteration", "forward_latency_s", "load_priors",
    "middle_block", "position_acceptances", "predict", "predict_detail", "tokens_per_iteration", "vram_bytes", "vram_gib",
]
