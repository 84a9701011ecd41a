"""Model shapes as data: ModelSpec from a Hugging Face config, and the shipped model cards."""

from planner.models.spec import QUANTIZATIONS, ModelSpec

__all__ = ["ModelSpec", "QUANTIZATIONS"]
