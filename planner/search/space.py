"""The search space, declared once: what Optuna samples and what exhaustive enumeration walks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from planner.errors import InputError, near_matches
from planner.models.spec import ModelSpec
from planner.perf.speedup import middle_block
from planner.plan.schema import HEAD_METHODS, MAX_TREE_TOKENS, METHODS, QUANTIZATIONS, TREE_METHODS, Decoding

MAX_PREDICTORS = 12  # token predictors / draft length per iteration
DEFAULT_QUANTS = ("none", "int8", "int4")  # fp8 is searched only when asked for
TOPKS = (1, 2, 4, 8)  # a head's tree width: 1 is a chain (SGLang takes topk up to 10)
TREE_TOKENS = (8, 16, 32, 64)  # verified tokens of a tree, clamped to what its depth and width allow


def usable_quants(profile, quants=None) -> tuple[str, ...]:
    """The quantizations to search on `profile` (a HardwareProfile): the allowed set `quants`
    (default DEFAULT_QUANTS) less fp8 where the profile has no fp8 tensor cores.

    Raises:
        InputError: an unknown quantization, or only fp8 allowed on a profile without fp8 tensor cores.
    """
    chosen = tuple(quants or DEFAULT_QUANTS)
    for quant in chosen:
        if quant not in QUANTIZATIONS:
            raise InputError(f"unknown quantization '{quant}'{near_matches(quant, QUANTIZATIONS)}")
    if "fp8" in chosen and "fp8" not in profile.peak_tflops:
        if chosen == ("fp8",):
            raise InputError(f"fp8 needs fp8 tensor cores (Ada, Hopper or newer); {profile.name} has none")
        chosen = tuple(q for q in chosen if q != "fp8")
    return chosen


@dataclass(frozen=True)
class Space:
    num_layers: int
    methods: tuple[str, ...] = METHODS
    quants: tuple[str, ...] = DEFAULT_QUANTS
    drafts: tuple[str, ...] = ()  # draft model names for method draft_model
    max_gamma: int = MAX_PREDICTORS
    skip_pattern: str = "middle"  # "middle": a centred block of any size; "any": arbitrary subsets
    ngrams: tuple[int, int] | None = None  # prompt_lookup: the n-gram sizes searched (None: the default 3)
    s3d: Decoding | None = None  # an adapter's set-up: s3d trials take its skipped layers and gamma as they are
    gamma_caps: tuple[tuple[str, int], ...] = ()  # (method, most drafted tokens): per-position acceptance ends there
    heads: tuple[tuple[str, str | None], ...] = ()  # (head method, the head's name; None: the model's own MTP layers)
    trees: bool = False  # heads draft trees (topk > 1) as well as chains

    @classmethod
    def for_model(cls, spec: ModelSpec, *, methods=None, quants=None, drafts=(), skip_pattern="middle", s3d=None,
                  gamma_caps=None, heads=None, trees=False) -> "Space":
        heads = dict(heads or {})
        chosen = tuple(m for m in (methods or METHODS) if (m != "draft_model" or drafts)
                       and (m not in HEAD_METHODS or m in heads))
        return cls(spec.num_layers, chosen, tuple(quants or DEFAULT_QUANTS), tuple(drafts), skip_pattern=skip_pattern, s3d=s3d,
                   gamma_caps=tuple(sorted((gamma_caps or {}).items())), heads=tuple(sorted(heads.items())), trees=trees)


def tree_tokens(gamma: int, topk: int, wanted: int) -> int:
    """`wanted` verified tokens clamped to what a tree `gamma` deep and `topk` wide can hold:
    at least the chain (gamma + 1), at most every expanded node plus the root and MAX_TREE_TOKENS."""
    most = min(MAX_TREE_TOKENS, 1 + topk + (gamma - 1) * topk * topk)
    return min(max(wanted, gamma + 1), most)


def _head(space: Space, method: str, gamma: int, quant: str, topk: int = 1, wanted: int = 0) -> Decoding:
    tokens = tree_tokens(gamma, topk, wanted) if topk > 1 else 0
    return Decoding(method=method, gamma=gamma, quant=quant, draft_model=dict(space.heads)[method], topk=topk,
                    num_draft_tokens=tokens)


def _topks(space: Space, method: str) -> tuple[int, ...]:
    return TOPKS if space.trees and method in TREE_METHODS else (1,)


def suggest(trial, space: Space) -> Decoding:
    """Define-by-run: one configuration from an Optuna trial."""
    method = trial.suggest_categorical("method", list(space.methods))
    quant = trial.suggest_categorical("quant", list(space.quants))
    if method == "autoregressive":
        return Decoding(method=method, quant=quant)
    cap = dict(space.gamma_caps).get(method, space.max_gamma)
    if method == "s3d" and space.s3d is not None:
        return replace(space.s3d, quant=quant, gamma=min(space.s3d.gamma, cap))
    # A capped method keeps the one `gamma` distribution (Optuna's grouped TPE models a parameter
    # whose range changed between trials poorly) and clamps it instead.
    gamma = min(trial.suggest_int("gamma", 1, space.max_gamma), cap)
    L = space.num_layers
    if method == "s3d" and space.s3d is not None:  # the skip set it was adapted for; gamma up to the adapted one
        gamma = min(gamma, space.s3d.gamma)
        return Decoding(method=method, gamma=gamma, quant=quant, skip_layers=space.s3d.skip_layers)
    if method in ("layer_skip", "s3d"):
        if space.skip_pattern == "any":
            skipped = tuple(i for i in range(1, L - 1) if trial.suggest_categorical(f"skip_{i}", [False, True]))
            skipped = skipped or (L // 2,)
        else:
            skipped = middle_block(L, trial.suggest_int("skip_count", 1, L - 2))
        return Decoding(method=method, gamma=gamma, quant=quant, skip_layers=skipped)
    if method == "early_exit":
        return Decoding(method=method, gamma=gamma, quant=quant, exit_layer=trial.suggest_int("exit_layer", 1, L - 1))
    if method in HEAD_METHODS:
        topk = trial.suggest_categorical("topk", list(_topks(space, method)))
        wanted = trial.suggest_categorical("num_draft_tokens", list(TREE_TOKENS)) if topk > 1 else 0
        return _head(space, method, gamma, quant, topk, wanted)
    if method == "draft_model":
        return Decoding(method=method, gamma=gamma, quant=quant, draft_model=trial.suggest_categorical("draft_model", list(space.drafts)),
                        draft_quant=trial.suggest_categorical("draft_quant", list(space.quants)))
    ngram = trial.suggest_int("ngram", *space.ngrams) if space.ngrams else Decoding.ngram
    return Decoding(method=method, gamma=gamma, quant=quant, ngram=ngram)  # prompt_lookup


def params_of(decoding: Decoding, space: Space) -> dict:
    """The trial parameters under which `suggest` returns `decoding` (for study.enqueue_trial)."""
    d = decoding
    params = {"method": d.method, "quant": d.quant}
    if d.method == "autoregressive":
        return params
    params["gamma"] = min(d.gamma, space.max_gamma)
    if d.method in ("layer_skip", "s3d") and not (d.method == "s3d" and space.s3d is not None):
        if space.skip_pattern == "any":
            params |= {f"skip_{i}": i in d.skip_layers for i in range(1, space.num_layers - 1)}
        else:
            params["skip_count"] = len(d.skip_layers)
    elif d.method == "early_exit":
        params["exit_layer"] = d.exit_layer
    elif d.method == "draft_model":
        params["draft_model"] = d.draft_model
        params["draft_quant"] = d.draft_quant
    elif d.method in HEAD_METHODS:
        params["topk"] = d.topk
        if d.topk > 1:
            params["num_draft_tokens"] = d.num_draft_tokens
    elif d.method == "prompt_lookup" and space.ngrams:
        params["ngram"] = min(max(d.ngram, space.ngrams[0]), space.ngrams[1])
    return params


def enumerate_space(space: Space):
    """Every configuration of a middle-block space (for tests and small models)."""
    L, gammas = space.num_layers, range(1, space.max_gamma + 1)
    for method, quant in itertools.product(space.methods, space.quants):
        if method == "autoregressive":
            yield Decoding(method=method, quant=quant)
        elif method == "s3d" and space.s3d is not None:
            yield replace(space.s3d, quant=quant)
        elif method in ("layer_skip", "s3d"):
            for count, gamma in itertools.product(range(1, L - 1), gammas):
                yield Decoding(method=method, gamma=gamma, quant=quant, skip_layers=middle_block(L, count))
        elif method == "early_exit":
            for exit_layer, gamma in itertools.product(range(1, L), gammas):
                yield Decoding(method=method, gamma=gamma, quant=quant, exit_layer=exit_layer)
        elif method in HEAD_METHODS:
            for gamma, topk in itertools.product(gammas, _topks(space, method)):
                for wanted in (TREE_TOKENS if topk > 1 else (0,)):
                    yield _head(space, method, gamma, quant, topk, wanted)
        elif method == "draft_model":
            for draft, gamma, draft_quant in itertools.product(space.drafts, gammas, space.quants):
                yield Decoding(method=method, gamma=gamma, quant=quant, draft_model=draft, draft_quant=draft_quant)
        else:
            for gamma in gammas:
                yield Decoding(method=method, gamma=gamma, quant=quant)


def seeds(space: Space) -> list[dict]:
    """Known-good starting points (enqueued): plain decoding and S3D-style mid-layer skipping."""
    L, points = space.num_layers, []
    for quant in space.quants:
        for method in space.methods:
            if method == "autoregressive" or (method == "s3d" and space.s3d is not None):
                points.append({"method": method, "quant": quant})
            elif method in ("layer_skip", "s3d") and space.skip_pattern == "middle":
                points.append({"method": method, "quant": quant, "gamma": 4, "skip_count": max(1, L // 2 - 2)})
            elif method == "early_exit":
                points.append({"method": method, "quant": quant, "gamma": 4, "exit_layer": max(1, 3 * L // 4)})
            elif method in HEAD_METHODS:  # a chain, and where trees are searched SGLang's EAGLE-3 example tree
                points.append({"method": method, "quant": quant, "gamma": 3, "topk": 1})
                if space.trees and method in TREE_METHODS:
                    points.append({"method": method, "quant": quant, "gamma": 5, "topk": 8, "num_draft_tokens": 32})
    return points
