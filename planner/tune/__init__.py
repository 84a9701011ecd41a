"""Measured tuning: an Optuna study over decodings timed on the user's prompts (`specplan tune`)."""

from planner.tune.request import OBJECTIVES, TuneRequest
from planner.tune.study import Measured, TuneResult, choose, ranked, tune

__all__ = ["OBJECTIVES", "Measured", "TuneRequest", "TuneResult", "choose", "ranked", "tune"]
