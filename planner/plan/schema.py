"""The Plan: what was decided and why, as a versioned YAML file validated on load.

Validation is driven by the dataclass fields below (planner._fields): unknown keys, wrong
types, numbers that are not finite, values out of range and layer indices beyond the model
each raise one PlanError naming the field by its dotted path (e.g. `decoding.skip_layers[3]`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from planner._fields import from_mapping, to_plain
from planner._yaml import read_yaml, write_yaml_atomic
from planner.errors import PlanError
from planner.models.spec import QUANTIZATIONS  # one list; re-exported for plan readers

SCHEMA_VERSION = 1
METHODS = ("autoregressive", "layer_skip", "early_exit", "s3d", "draft_model", "prompt_lookup",
           "eagle", "eagle3", "mtp", "medusa")
HEAD_METHODS = ("eagle", "eagle3", "mtp", "medusa")  # learned heads (planner.perf.heads); serving engines run them
TREE_METHODS = ("eagle", "eagle3", "mtp")  # can draft a tree (topk > 1)
MAX_TREE_TOKENS = 64  # SGLang's largest num_draft_tokens (its EAGLE kernels' limit, sgl-project/sglang pull 1498)
BASES = ("analytical", "calibrated", "measured")
MAX_GAMMA = 16


@dataclass(frozen=True)
class ModelRef:
    name: str  # card name or the checkpoint's directory name
    source: str  # what to load: a local directory, a card name or a hub id
    num_layers: int
    vocab_size: int
    hidden_size: int = 0  # 0 when unknown; checked against the checkpoint when known


@dataclass(frozen=True)
class HardwareRef:
    profile: str  # the profile's name (a shipped profile's, or a measured profile file's own `name`)
    device_name: str
    tensor_parallel: int = 1  # GPUs of this profile each forward is split over
    memory_gib: float | None = None  # the device's memory, so that exports need not find the profile again; None: older plans


@dataclass(frozen=True)
class Constraints:
    context: int = 2048  # prompt plus generated tokens the KV cache must hold
    vram_gib: float | None = None  # None: the device's memory (the share the engine allocates, for an engine)
    batch_size: int = 1
    engine: str | None = None  # the serving engine planned for (its methods and memory policy); None: none named
    workload: str | None = None  # the workload whose acceptance priors were planned with (chat, summarisation, rag); None: chat


@dataclass(frozen=True)
class Decoding:
    method: str
    gamma: int = 0  # drafted tokens per iteration (S3D: token predictors); 0 = no speculation
    skip_layers: tuple[int, ...] = ()  # layer_skip and s3d: layers the draft skips
    exit_layer: int | None = None  # early_exit: the draft runs layers [0, exit_layer)
    quant: str = "none"  # weight-only quantization of the target
    draft_model: str | None = None  # draft_model: card name, path or hub id; eagle/eagle3/mtp/medusa: the head's
    draft_quant: str = "none"
    topk: int = 1  # eagle/eagle3/mtp: children per expanded node of the draft tree (SGLang's meaning); 1: a chain
    num_draft_tokens: int = 0  # tokens verified per iteration, the root included (SGLang's); 0: a chain's gamma + 1
    draft_tensor_parallel: int | None = None  # the head's or draft's own tensor parallel (vLLM: 1 or the target's); None: the target's
    ngram: int = 3  # prompt_lookup: longest n-gram matched in the context
    adapter: str | None = None  # s3d: the draft adapter's directory; None: the checkpoint's own or a shipped one
    draft_vocab_size: int | None = None  # s3d: tokens its draft's LM head scores (the adapter's draft vocabulary); None: all


@dataclass(frozen=True)
class Prediction:
    basis: str  # analytical | calibrated | measured
    tokens_per_s: float
    speedup: float
    tokens_per_iteration: float
    acceptance: float
    target_latency_ms: float  # one full-model forward of one token
    draft_latency_ms: float  # all drafting in one iteration
    iteration_ms: float
    vram_gib: float


@dataclass(frozen=True)
class Candidate:
    decoding: Decoding
    prediction: Prediction


@dataclass(frozen=True)
class ScheduleEntry:
    """One batch-size range of a load-aware plan; gamma = 0 means "don't speculate"."""

    batch_min: int
    batch_max: int
    method: str
    gamma: int
    tokens_per_s_per_sequence: float
    tokens_per_s_total: float
    vram_gib: float | None = None  # at the largest batch size the search evaluated in this range; None: older plans


@dataclass(frozen=True)
class SearchSettings:
    sampler: str = "TPESampler"
    seed: int | None = None
    trials: int = 0
    objective: str = "speed"
    methods: tuple[str, ...] = ()
    storage: str | None = None
    study: str | None = None
    engine: str | None = None  # the serving engine whose step cost the trials paid; None: specplan's runtime
    execution: str | None = None  # graphs or eager, as the trials were costed


@dataclass(frozen=True)
class GroupSpeedup:
    """One prompt group's median paired speedup over autoregressive decoding."""

    group: str
    tuning: float  # on the tuning prompts of the group
    held_out: float | None = None  # on its held-out prompts; None when it has none


@dataclass(frozen=True)
class Tuning:
    """What `tune` measured for the plan's decoding: on the prompts the study chose it on,
    and on held-out prompts it never saw (the figure to believe)."""

    objective: str  # mean | worst-group: what the trial value was
    tuning_prompts: int
    held_out_prompts: int  # 0: no held-out check
    tuning_speedup: float  # median over rounds of the paired speedup, all tuning prompts
    held_out_speedup: float | None  # the same on the held-out prompts
    held_out_range: tuple[float, ...] = ()  # slowest and fastest held-out round
    groups: tuple[GroupSpeedup, ...] = ()
    max_new_tokens: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class Plan:
    model: ModelRef
    hardware: HardwareRef
    decoding: Decoding
    prediction: Prediction
    constraints: Constraints = field(default_factory=Constraints)
    alternatives: tuple[Candidate, ...] = ()
    schedule: tuple[ScheduleEntry, ...] = ()
    search: SearchSettings | None = None
    measured: dict | None = None
    tuning: Tuning | None = None  # set by `tune`; plans without it (older ones too) read as before
    notes: tuple[str, ...] = ()  # what the user must know about the set-up, in words (e.g. why it is quantized)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        data = to_plain(self)
        return {"schema_version": data.pop("schema_version"), **data}

    def save(self, path) -> None:
        write_yaml_atomic(path, self.to_dict())

    def replace(self, **changes) -> "Plan":
        return dataclasses.replace(self, **changes)


# -- ranges and cross-field checks ----------------------------------------------------

_CHOICES = {
    "method": METHODS,
    "quant": QUANTIZATIONS,
    "draft_quant": QUANTIZATIONS,
    "basis": BASES,
    "objective": ("speed", "pareto", "mean", "worst-group"),  # plan's, then tune's
}
_POSITIVE = {"num_layers", "vocab_size", "context", "batch_size", "batch_min", "batch_max", "ngram", "vram_gib", "memory_gib",
             "topk", "tensor_parallel", "draft_tensor_parallel", "draft_vocab_size"}
_NON_NEGATIVE = {
    "tokens_per_s", "speedup", "tokens_per_iteration", "target_latency_ms", "draft_latency_ms",
    "iteration_ms", "hidden_size", "trials", "tokens_per_s_per_sequence", "tokens_per_s_total",
    "tuning", "held_out", "tuning_prompts", "held_out_prompts", "tuning_speedup", "held_out_speedup", "max_new_tokens",
    "rounds", "num_draft_tokens",
}


def _check_range(name: str, path: str, value) -> None:
    if name in _CHOICES and value not in _CHOICES[name]:
        raise PlanError(f"{path}: '{value}' is not one of {', '.join(_CHOICES[name])}")
    if name in _POSITIVE and value is not None and value <= 0:
        raise PlanError(f"{path}: must be positive, got {value}")
    if name in _NON_NEGATIVE and value < 0:
        raise PlanError(f"{path}: must not be negative, got {value}")
    if name == "gamma" and not 0 <= value <= MAX_GAMMA:
        raise PlanError(f"{path}: must be between 0 and {MAX_GAMMA}, got {value}")
    if name == "acceptance" and not 0.0 <= value <= 1.0:
        raise PlanError(f"{path}: must be between 0 and 1, got {value}")
    if name == "workload" and value is not None:
        from planner.perf.acceptance import workloads

        if value not in workloads():
            raise PlanError(f"{path}: '{value}' is not one of {', '.join(workloads())}")
    if name == "methods" and value not in METHODS:  # called per element of the list
        raise PlanError(f"{path}: '{value}' is not one of {', '.join(METHODS)}")


def _check_decoding(decoding: Decoding, num_layers: int, vocab_size: int, path: str) -> None:
    for i, layer in enumerate(decoding.skip_layers):
        if not 0 <= layer < num_layers:
            raise PlanError(f"{path}.skip_layers[{i}]: layer {layer} is beyond the model's {num_layers} layers (0-{num_layers - 1})")
    if len(set(decoding.skip_layers)) != len(decoding.skip_layers):
        raise PlanError(f"{path}.skip_layers: lists a layer twice")
    if decoding.draft_vocab_size is not None and decoding.draft_vocab_size > vocab_size:
        raise PlanError(f"{path}.draft_vocab_size: {decoding.draft_vocab_size} is more than the model's vocabulary "
                        f"({vocab_size})")
    if decoding.exit_layer is not None and not 1 <= decoding.exit_layer < num_layers:
        raise PlanError(f"{path}.exit_layer: {decoding.exit_layer} is outside 1-{num_layers - 1} for a {num_layers}-layer model")
    method = decoding.method
    ignored = {"skip_layers": method not in ("layer_skip", "s3d") and decoding.skip_layers,
               "exit_layer": method != "early_exit" and decoding.exit_layer is not None,
               "draft_model": method not in ("draft_model", *HEAD_METHODS) and decoding.draft_model,
               "topk": method not in TREE_METHODS and decoding.topk != 1,
               "num_draft_tokens": method not in TREE_METHODS and decoding.num_draft_tokens,
               "draft_tensor_parallel": method not in ("draft_model", *HEAD_METHODS) and decoding.draft_tensor_parallel,
               "adapter": method != "s3d" and decoding.adapter,
               "draft_vocab_size": method != "s3d" and decoding.draft_vocab_size,
               "gamma": method == "autoregressive" and decoding.gamma}
    for name, given in ignored.items():
        if given:  # a value the method would silently ignore
            raise PlanError(f"{path}.{name}: method {method} has none")
    if method in ("layer_skip", "s3d") and not decoding.skip_layers:
        raise PlanError(f"{path}.skip_layers: method {method} needs at least one skipped layer")
    if method == "early_exit" and decoding.exit_layer is None:
        raise PlanError(f"{path}.exit_layer: method early_exit needs an exit layer")
    if method == "draft_model" and not decoding.draft_model:
        raise PlanError(f"{path}.draft_model: method draft_model needs a draft model")
    if method != "autoregressive" and decoding.gamma < 1:
        raise PlanError(f"{path}.gamma: method {method} needs gamma >= 1")
    why = tree_problem(decoding)
    if why:
        raise PlanError(f"{path}.num_draft_tokens: {why}")


def tree_problem(decoding: Decoding) -> str | None:
    """Why `decoding`'s draft tree cannot be built, or None: SGLang verifies at least the
    chain (gamma + 1 tokens), at most every expanded node plus the root
    (1 + topk + (gamma - 1) x topk^2) and at most MAX_TREE_TOKENS."""
    if decoding.method not in TREE_METHODS or decoding.num_draft_tokens == 0:
        return None
    k, steps, n = decoding.topk, decoding.gamma, decoding.num_draft_tokens
    most = min(MAX_TREE_TOKENS, 1 + k + (steps - 1) * k * k) if k > 1 else steps + 1
    if not steps + 1 <= n <= most:
        return (f"{n} draft tokens with {steps} steps and topk {k}: between {steps + 1} and {most} "
                f"(the chain, up to every expanded node and at most {MAX_TREE_TOKENS})")
    return None


def _check_plan(plan: Plan) -> None:
    layers, vocab = plan.model.num_layers, plan.model.vocab_size
    _check_decoding(plan.decoding, layers, vocab, "decoding")
    for i, alt in enumerate(plan.alternatives):
        _check_decoding(alt.decoding, layers, vocab, f"alternatives[{i}].decoding")
    for i, entry in enumerate(plan.schedule):
        if entry.batch_min > entry.batch_max:
            raise PlanError(f"schedule[{i}]: batch_min {entry.batch_min} exceeds batch_max {entry.batch_max}")


def plan_from_dict(data) -> Plan:
    """A Plan from the mapping a plan file holds, every field checked.

    Raises:
        PlanError: the first field that is unknown, missing, of the wrong type, not finite or
            out of range, or a set-up the model cannot run; the message names its dotted path.
    """
    if not isinstance(data, dict):
        raise PlanError("plan: expected a YAML mapping at the top level")
    version = data.get("schema_version", None)
    if version is None:
        raise PlanError("schema_version: missing")
    if isinstance(version, bool) or version != SCHEMA_VERSION:  # YAML `true` would equal 1
        raise PlanError(f"schema_version: {version!r} is not supported (this specplan reads version {SCHEMA_VERSION})")
    plan = from_mapping(Plan, data, check=_check_range, error=PlanError)
    _check_plan(plan)
    return plan


def load_plan(path) -> Plan:
    """The plan in the YAML file at `path`.

    Raises:
        NotFoundError: no such file.
        InputError: unreadable, not UTF-8 or not YAML (with the line).
        PlanError: a field that does not validate: "<path>: <field path>: <why>".
    """
    data = read_yaml(path)
    try:
        return plan_from_dict(data)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from None


def save_plan(plan: Plan, path) -> None:
    """Write `plan` to `path` as YAML, atomically, after checking it reads back as written.

    Raises:
        PlanError: the plan would not load (e.g. a skipped layer beyond the model); nothing is written.
        InputError: `path` cannot be written.
    """
    plan_from_dict(plan.to_dict())
    plan.save(path)
