"""Memory before loading: a decoding's footprint on this device, by the perf model's own rule
(planner.perf.memory), and the refusal of plans that cannot fit the budget."""

from __future__ import annotations

from planner.errors import BudgetError
from planner.models import ModelSpec, spec_from_hf_config
from planner.perf.memory import vram_gib


def spec_from_config(hf_config) -> ModelSpec:
    """The planner's ModelSpec of a loaded checkpoint's transformers config."""
    name = getattr(hf_config, "_name_or_path", "") or hf_config.model_type
    return spec_from_hf_config(hf_config.to_dict(), name)


def estimate_vram_gib(hf_config, decoding, *, context: int, max_gamma: int, device_type: str, dtype: str,
                      draft_config=None) -> float:
    """GiB that `decoding` (a planner.plan.Decoding) of the checkpoint with `hf_config` needs on
    a torch device of `device_type` ("cuda" or "cpu") with weights in `dtype` (bf16, fp16,
    fp32), by planner.perf.memory.vram_gib: what `predict` gives for the same set-up.

    The runtime decodes one sequence, with CUDA graphs on CUDA and eager on a CPU, in a cache
    of `context` + max_gamma + 1 slots (sized once for every decoding of a session), and loads
    a draft model (`draft_config`, its transformers config) unquantized. Raises InputError as
    spec_from_hf_config does for a config the planner cannot read."""
    cuda = device_type == "cuda"
    return vram_gib(
        spec_from_config(hf_config), device_kind="gpu" if cuda else "cpu", method=decoding.method, gamma=max_gamma,
        quant=decoding.quant, context=context, dtype=dtype, graphs=cuda,
        draft_spec=None if draft_config is None else spec_from_config(draft_config), draft_quant="none",
    )


def check_budget(*, estimate_gib: float, predicted_gib: float, budget_gib: float | None, where: str) -> None:
    """BudgetError when the larger of this device's estimate and the plan's prediction exceeds
    the budget (None: no known limit, e.g. host memory on CPU)."""
    if budget_gib is None:
        return
    need = max(estimate_gib, predicted_gib)
    if need > budget_gib:
        raise BudgetError(
            f"the plan needs {need:.2f} GiB (estimate on this device {estimate_gib:.2f} GiB, plan prediction "
            f"{predicted_gib:.2f} GiB) but {where} allows {budget_gib:.2f} GiB; nothing was loaded"
        )
