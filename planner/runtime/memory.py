"""Memory before loading: the runtime's own estimate of a plan's footprint from the
checkpoint's config alone, and the refusal of plans that cannot fit the budget."""

from __future__ import annotations

from planner.errors import BudgetError
from planner.models import ModelSpec, spec_from_hf_config

GIB = 1024**3


def spec_from_config(hf_config) -> ModelSpec:
    """The planner's ModelSpec of a loaded checkpoint's transformers config."""
    name = getattr(hf_config, "_name_or_path", "") or hf_config.model_type
    return spec_from_hf_config(hf_config.to_dict(), name)


def estimate_vram_gib(hf_config, *, quant: str, max_seq_len: int, dtype: str, draft_config=None) -> float:
    """Weights at `quant` plus the preallocated KV cache, for the target and any draft model."""
    spec = spec_from_config(hf_config)
    total = spec.weight_bytes(quant, dtype) + max_seq_len * spec.kv_bytes_per_token(dtype)
    if draft_config is not None:
        draft = spec_from_config(draft_config)
        total += draft.weight_bytes("none", dtype) + max_seq_len * draft.kv_bytes_per_token(dtype)
    return total / GIB


def check_budget(*, estimate_gib: float, predicted_gib: float, budget_gib: float | None, where: str) -> None:
    """BudgetError when the larger of the runtime's estimate and the plan's prediction exceeds
    the budget (None: no known limit, e.g. host memory on CPU)."""
    if budget_gib is None:
        return
    need = max(estimate_gib, predicted_gib)
    if need > budget_gib:
        raise BudgetError(
            f"the plan needs {need:.2f} GiB (weights + KV cache {estimate_gib:.2f} GiB, plan prediction "
            f"{predicted_gib:.2f} GiB) but {where} allows {budget_gib:.2f} GiB; nothing was loaded"
        )
