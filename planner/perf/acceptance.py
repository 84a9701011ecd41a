"""Acceptance: S3D's alpha(beta), position decay, and expected tokens per iteration.

    alpha(beta) = U / (1 + exp(k (beta - beta0)))        (S3D, Zhong & Bharadwaj 2024)
    alpha_i     = alpha_1 * delta^(i-1)                   (drafted position i = 1..gamma)
    draft_model: the same logistic over log10(target params / draft params) instead of beta
    tau         = 1 + sum_{k=1..gamma} prod_{i<=k} alpha_i (bonus token included)

Priors per method live in planner/profiles/priors.yaml; measured values replace them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from planner._yaml import read_yaml
from planner.errors import InputError
from planner.profiles import PROFILES_DIR

PRIORS_PATH = PROFILES_DIR / "priors.yaml"
SELF_DRAFTING = ("layer_skip", "s3d", "early_exit")


@dataclass(frozen=True)
class Prior:
    ceiling: float = 1.0  # U: acceptance as beta -> 0 (or the constant alpha of separate drafts)
    steepness: float = 0.0  # k
    midpoint: float = 0.5  # beta0
    decay: float = 1.0  # delta, per drafted position
    source: str = ""

    def alpha(self, beta: float) -> float:
        if self.steepness == 0.0:
            return self.ceiling
        return self.ceiling / (1.0 + math.exp(self.steepness * (beta - self.midpoint)))


def load_priors(source: str | Path | dict | None = None) -> dict[str, Prior]:
    """Priors per method from planner/profiles/priors.yaml, another YAML path, or a dict."""
    if isinstance(source, dict):
        return _priors_from_data(source, "priors")
    path = Path(source or PRIORS_PATH)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None  # read_yaml names the missing file
    return dict(_priors_from_file(str(path), mtime))


def resolve_priors(priors) -> dict[str, Prior]:
    """The shipped priors, with the methods that `priors` (Prior objects, a priors mapping or a
    YAML path) gives replaced: measured values for some methods leave the others' priors."""
    table = load_priors()
    if priors is None:
        return table
    if isinstance(priors, dict) and all(isinstance(p, Prior) for p in priors.values()):
        table.update(priors)
    else:
        table.update(load_priors(priors))
    return table


@lru_cache(maxsize=8)
def _priors_from_file(path: str, mtime) -> dict[str, Prior]:
    # Cached per (path, modification time): the search predicts thousands of set-ups and
    # re-parsing the YAML each time dominated its run time.
    return _priors_from_data(read_yaml(path), path)


def _priors_from_data(data, origin: str) -> dict[str, Prior]:
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict):
        raise InputError(f"{origin}: priors need a 'methods' mapping")
    priors = {}
    for method, fields in methods.items():
        if not isinstance(fields, dict):
            raise InputError(f"{origin}: priors for {method} must be a mapping of ceiling, steepness, ...")
        fields = dict(fields)
        if "alpha" in fields:
            fields["ceiling"] = fields.pop("alpha")
        try:
            priors[method] = Prior(**fields)
        except TypeError as exc:
            raise InputError(f"{origin}: priors for {method}: {exc}") from None
    return priors


def position_acceptances(alpha_1: float, gamma: int, decay: float = 1.0) -> list[float]:
    return [alpha_1 * decay**i for i in range(gamma)]


def tokens_per_iteration(alphas: list[float]) -> float:
    """Expected tokens one iteration emits: accepted drafts plus the target's own token."""
    tau, survive = 1.0, 1.0
    for alpha in alphas:
        survive *= alpha
        tau += survive
    return tau


def skipped_fraction(method: str, num_layers: int, *, skip_layers=(), exit_layer: int | None = None) -> float:
    """beta: the fraction of the target's layers the draft does not run."""
    if method == "early_exit":
        return 1.0 - (exit_layer or num_layers) / num_layers
    return len(skip_layers) / num_layers


def size_gap(target_params: int, draft_params: int) -> float:
    """A separate draft's counterpart of beta: log10 of how many times smaller than the target it is."""
    return math.log10(target_params / draft_params)
