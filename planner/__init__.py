"""specplan: hardware-aware auto-configuration of speculative decoding.

The public surface is small and lazy: planning never imports torch.

    from planner import load_profile, load_model_spec, plan, SearchRequest, predict, run_plan, profile_device, tune, TuneRequest
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "SpecplanError": "planner.errors",
    "HardwareProfile": "planner.hardware",
    "load_profile": "planner.hardware",
    "profile_device": "planner.hardware",
    "ModelSpec": "planner.models",
    "load_model_spec": "planner.models",
    "Plan": "planner.plan",
    "load_plan": "planner.plan",
    "save_plan": "planner.plan",
    "predict": "planner.perf",
    "plan": "planner.search",
    "SearchRequest": "planner.search",
    "run_plan": "planner.runtime",
    "compare_decodings": "planner.runtime",
    "tune": "planner.tune",
    "TuneRequest": "planner.tune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`planner.plan` is the function `plan` (and `planner.tune` the function `tune`), although
    a subpackage has that name: importing a subpackage binds it as an attribute of its parent,
    which would shadow the function for every later `from planner import plan`. The subpackage stays importable by its full name
    (`from planner.plan import Plan`)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
