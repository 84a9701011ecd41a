"""Model shapes as data: ModelSpec from a Hugging Face config, and the shipped model cards."""

from planner.models.architectures import spec_from_hf_config
from planner.models.cards import load_card, param_count_errors, shipped_model_names
from planner.models.load import load_model_spec
from planner.models.spec import QUANTIZATIONS, ModelSpec

__all__ = [
    "ModelSpec",
    "QUANTIZATIONS",
    "load_card",
    "load_model_spec",
    "param_count_errors",
    "shipped_model_names",
    "spec_from_hf_config",
]
