"""Acceptance: S3D's alpha(beta), position decay, and expected tokens per iteration.

    alpha(beta) = U / (1 + exp(k (beta - beta0)))        (S3D, Zhong & Bharadwaj 2024)
    alpha_i     = alpha_1 * delta^(i-1)                   (drafted position i = 1..gamma)
    draft_model: the same logistic over log10(target params / draft params) instead of beta
    tau         = 1 + sum_{k=1..gamma} prod_{i<=k} alpha_i (bonus token included)

Priors per method live in planner/profiles/priors.yaml; measured values replace them. A
workload (chat, summarisation, rag: `resolve_priors(workload=...)`) replaces the figures
priors.yaml gives for it, each from a published per-task comparison.

A tree of drafts (SGLang's EAGLE: `steps` deep, `topk` children per expanded node,
`num_draft_tokens` verified) accepts along at most one root-to-leaf path. Under Sequoia's
positional acceptance assumption (Chen et al. 2024, arXiv:2402.12374, §3.1) its expected
accepted length is the sum over its nodes of the probability that the path to the node is
accepted:
    tau_tree = 1 + sum_{v in T} prod_{u on path(v)} q(depth u, rank u)
where q(d, r) is the probability that the rank-r child at depth d is the target's token
given its parent was accepted. The draft's candidates at depth d are its top-k tokens; with
greedy verification exactly one child can match, and EAGLE-2 found the draft's confidence
calibrated to acceptance (Li et al. 2024, arXiv:2406.16858, §3). The shape of the ranked
shares is an assumption: geometric, q(d, r) = alpha_d (1 - alpha_d)^(r-1), whose top share
is the chain's per-position acceptance alpha_d (so a tree with topk 1 is the chain). The
tree is the one SGLang builds (sglang/srt/speculative/eagle_utils.py, EAGLE-2's expansion and
re-ranking): from the root, keep the topk best children; at each next depth expand those topk
nodes into topk children each and keep the topk best by path score; finally verify the
num_draft_tokens - 1 best nodes by path score among all expanded (scores fall along a path,
so the chosen set is a tree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
    positions: int = 0  # drafted positions the source measured (0: any); the search drafts no further

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


def resolve_priors(priors, *, workload: str | None = None) -> dict[str, Prior]:
    """The shipped priors for `workload` (None: the default, chat), with the methods that
    `priors` (Prior objects, a priors mapping or a YAML path) gives replaced: measured values
    for some methods leave the others' priors.

    Raises:
        InputError: an unknown `workload` (with the near names), or `priors` that cannot be read.
        NotFoundError: `priors` names a file that does not exist.
    """
    table = load_priors() | workload_priors(workload)
    if priors is None:
        return table
    if isinstance(priors, dict) and all(isinstance(p, Prior) for p in priors.values()):
        table.update(priors)
    else:
        table.update(load_priors(priors))
    return table


def workloads() -> tuple[str, ...]:
    """The workloads priors.yaml has figures for, the default first."""
    default, table = _workloads_from_file(str(PRIORS_PATH), PRIORS_PATH.stat().st_mtime_ns)
    return (default, *(w for w in table if w != default))


def workload_priors(workload: str | None) -> dict[str, Prior]:
    """The priors `workload` replaces in the shipped table (empty for the default workload).

    Raises:
        InputError: a workload priors.yaml does not name.
    """
    default, table = _workloads_from_file(str(PRIORS_PATH), PRIORS_PATH.stat().st_mtime_ns)
    if workload is None:
        workload = default
    if workload not in table:
        raise InputError(f"unknown `workload` '{workload}': expected one of {', '.join(workloads())}")
    base = load_priors()
    return {method: replace(base[method], **fields) for method, fields in table[workload].items()}


@lru_cache(maxsize=2)
def _workloads_from_file(path: str, mtime) -> tuple[str, dict[str, dict[str, dict]]]:
    data = read_yaml(path)
    table = {}
    for workload, methods in (data.get("workloads") or {}).items():
        table[workload] = {}
        for method, fields in (methods or {}).items():
            fields = dict(fields)
            if "alpha" in fields:
                fields["ceiling"] = fields.pop("alpha")
            table[workload][method] = fields
    return data.get("default_workload", "chat"), table


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


def tree_tokens_per_iteration(alphas: list[float], topk: int, num_draft_tokens: int) -> float:
    """Expected tokens one iteration of a draft tree emits (bonus token included): the tree
    SGLang builds `len(alphas)` deep with `topk` children per expanded node, verifying the
    `num_draft_tokens` - 1 best nodes (the root is the last accepted token), each depth's
    per-position acceptance in `alphas`. See the module docstring for the formula and sources;
    topk 1 is the chain, tokens_per_iteration(alphas[: num_draft_tokens - 1])."""
    if topk <= 1:
        return tokens_per_iteration(alphas[: max(0, num_draft_tokens - 1)])
    frontier, expanded = [1.0], []
    for alpha in alphas:
        shares = [alpha * (1 - alpha) ** rank for rank in range(topk)]
        children = sorted((score * share for score in frontier for share in shares), reverse=True)
        expanded += children
        frontier = children[:topk]
    return 1.0 + sum(sorted(expanded, reverse=True)[: num_draft_tokens - 1])


def skipped_fraction(method: str, num_layers: int, *, skip_layers=(), exit_layer: int | None = None) -> float:
    """beta: the fraction of the target's layers the draft does not run."""
    if method == "early_exit":
        return 1.0 - (exit_layer or num_layers) / num_layers
    return len(skip_layers) / num_layers


def size_gap(target_params: int, draft_params: int) -> float:
    """A separate draft's counterpart of beta: log10 of how many times smaller than the target it is."""
    return math.log10(target_params / draft_params)
