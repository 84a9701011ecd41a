"""The plan file: the Plan dataclass, its YAML schema and validation, and exporters."""

from planner.plan.schema import (
    METHODS,
    QUANTIZATIONS,
    Candidate,
    Constraints,
    Decoding,
    HardwareRef,
    ModelRef,
    Plan,
    Prediction,
    ScheduleEntry,
    SearchSettings,
    load_plan,
    plan_from_dict,
    save_plan,
)

__all__ = [
    "METHODS", "QUANTIZATIONS", "Candidate", "Constraints", "Decoding", "HardwareRef", "ModelRef",
    "Plan", "Prediction", "ScheduleEntry", "SearchSettings", "load_plan", "plan_from_dict", "save_plan",
]
