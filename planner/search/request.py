"""What a search is asked for: one frozen request, built once (by the CLI, or by a library
caller) and passed to `search`, `schedule_search` and `plan_fleet`.

Why a class of its own and not `planner.plan.schema.Constraints`: Constraints is what a plan
file records (context, budget, batch size) and its fields are the plan schema's; a request
also holds what is only needed while searching (the resolved priors, an adapter's set-up,
the execution mode, a storage) and none of that belongs in the file. The plan's Constraints
is derived from the request (`constraints`).

The model and the hardware profile travel beside the request, not in it: a fleet plans one
request on many profiles. So the request names the serving engine and the execution mode, and
`execution_on(profile)` builds what a trial is costed with on each profile.

Every option is documented once, on its field. Values are normalised once, when the request
is made: lists become tuples, acceptance becomes one mapping from method to its figure
(`Acceptance`: a per-token float, or per-position figures), priors are resolved against the
shipped table; a value no search could use raises InputError naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from planner.errors import InputError, near_matches
from planner.hardware.profile import HardwareProfile
from planner.models.spec import ModelSpec
from planner.perf.acceptance import workloads, resolve_priors
from planner.perf.cost import Execution
from planner.perf.memory import EngineMemory, budget_gib
from planner.perf.speedup import predict
from planner.plan.schema import HEAD_METHODS, METHODS, QUANTIZATIONS, Constraints, Decoding, Prediction
from planner.search.engines import RUNTIME, drafts_trees, engine_cost, engine_memory

OBJECTIVES = ("speed", "pareto")
SKIP_PATTERNS = ("middle", "any")
EXECUTIONS = ("graphs", "eager")
SPECULATIVE = tuple(m for m in METHODS if m != "autoregressive")

# One method's acceptance: a per-token rate (every drafted position), or per-position rates in
# vLLM's form (the share of drafts whose first i tokens were all accepted, i = 1..len).
Acceptance = float | tuple[float, ...]


@dataclass(frozen=True)
class SearchRequest:
    """The options of one search; `search`, `schedule_search` and `plan_fleet` read them here.

    Raises (on construction):
        InputError: a value no search could use; the message names the parameter.
        NotFoundError: an unknown `engine` (with the near names).
    """

    context: int = 2048  # tokens per sequence the KV cache must hold (prompt plus output)
    vram_gib: float | None = None  # memory budget in GiB per GPU, at most the device's; None: the device's (an engine's share)
    batch_sizes: tuple[int, ...] = (1,)  # sequences decoded together; several: a schedule (schedule_search)
    trials: int = 300  # Optuna trials (a shared study's total grows by this many per worker)
    seed: int = 0  # the TPE sampler's seed: the same request gives the same plan
    objective: str = "speed"  # speed: max tokens/s; pareto: also min VRAM (the Pareto front)
    # Methods to search; None: what the user can deploy (planner.search.engines.deployable_methods).
    methods: tuple[str, ...] | None = None
    # Target quantizations allowed; None: unquantized, unless the unquantized model does not fit
    # (then the least quantization that fits, with a note in the plan: search.resolve_quants).
    quants: tuple[str, ...] | None = None
    drafts: tuple[str, ...] | None = None  # draft model names for draft_model; None: shipped cards that fit
    skip_pattern: str = "middle"  # skipped layers: a centred block, or "any" subset
    # Measured acceptance replacing the priors: one Acceptance for every method, or a mapping
    # method -> Acceptance; normalised to the mapping (methods without one keep their prior).
    acceptance: Acceptance | Mapping[str, Acceptance] | None = None
    # Priors replacing the shipped ones for the methods they name: Prior objects, a priors
    # mapping or a YAML path; resolved to the full table (planner.perf.acceptance.resolve_priors).
    priors: object = None
    # What the prompts ask for (chat, summarisation, rag; None: chat): the priors take that
    # workload's published figures where priors.yaml gives them (resolve_priors).
    workload: str | None = None
    # The serving engine the plan is for (an engines.yaml key: vllm, sglang, trtllm, hf, llamacpp):
    # every trial pays its own cost per step and default execution, and its memory policy counts
    # in VRAM and budget; "specplan": the built-in runtime; None: no engine (the runtime's cost).
    # Which methods it runs is `methods` (engine_space).
    engine: str | None = None
    execution: str | None = None  # "graphs" or "eager", overriding the engine's default; a CPU never has graphs
    # An adapter's set-up (runtime.adapter.planned_s3d): s3d trials take it as it is, and s3d is
    # deployable by default only with one.
    s3d: Decoding | None = None
    storage: str | None = None  # Optuna storage URL shared by workers (sqlite:///, a journal file, postgresql://)
    study_name: str | None = None  # the study in `storage`
    model_source: str | None = None  # what the plan loads (directory, card, hub id); None: the model's name
    tensor_parallel: int = 1  # GPUs of the profile each forward is split over; VRAM is then per GPU
    # Learned heads, method -> the head's hub id or config path (eagle, eagle3, mtp, medusa); a
    # head method is searched where a head is given here or published for the model
    # (planner/profiles/heads.yaml); mtp (the model's own layers) where `methods` names it.
    heads: Mapping[str, str] | None = None
    # Whether heads may draft trees (topk > 1); None: as `engine` drafts (engines.drafts_trees);
    # False where the plan is exported to an engine that drafts chains.
    trees: bool | None = None
    acceptance_by_method: Mapping[str, Acceptance] = field(init=False, repr=False, compare=False)
    engine_memory: EngineMemory | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def set_(name, value):
            object.__setattr__(self, name, value)

        set_("batch_sizes", tuple(sorted(set(_positive_ints("batch_sizes", self.batch_sizes)))))
        set_("methods", _choices("methods", self.methods, METHODS))
        set_("quants", _choices("quants", self.quants, QUANTIZATIONS))
        set_("drafts", None if self.drafts is None else tuple(self.drafts))
        set_("heads", dict(self.heads or {}))
        set_("priors", resolve_priors(self.priors, workload=self.workload))
        set_("acceptance_by_method", normalise_acceptance(self.acceptance))
        if self.workload not in (None, workloads()[0]) and set(self.acceptance_by_method) >= set(SPECULATIVE):
            raise InputError(f"`workload` {self.workload} picks the acceptance priors and `acceptance` replaces them for every "
                             f"method: give one")
        set_("engine_memory", engine_memory(self.engine))
        self._check()

    def _check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown `objective` '{self.objective}': expected speed or pareto")
        if self.skip_pattern not in SKIP_PATTERNS:
            raise InputError(f"unknown `skip_pattern` '{self.skip_pattern}': expected middle or any")
        if self.trials < 1:
            raise InputError(f"`trials` must be at least 1, got {self.trials}")
        if self.context < 1:
            raise InputError(f"`context` must be at least 1, got {self.context}")
        if self.vram_gib is not None and not (math.isfinite(self.vram_gib) and self.vram_gib > 0):
            raise InputError(f"`vram_gib` must be a positive number of GiB, got {self.vram_gib}")
        if self.storage and not self.study_name:
            raise InputError("`storage` needs `study_name`: the study many workers share")
        if self.tensor_parallel < 1:
            raise InputError(f"`tensor_parallel` must be at least 1, got {self.tensor_parallel}")
        for method in self.heads:
            if method not in HEAD_METHODS:
                raise InputError(f"`heads`: '{method}' is not a head method ({', '.join(HEAD_METHODS)})")
        if self.methods == ():
            raise InputError("`methods` is empty: name at least one method")
        if self.quants == ():
            raise InputError("`quants` is empty: allow at least none")
        if self.execution is not None and self.execution not in EXECUTIONS:
            raise InputError(f"unknown `execution` '{self.execution}': expected graphs or eager")

    @property
    def batch_size(self) -> int:
        """The one batch size of a request for `search`.

        Raises:
            InputError: the request holds several (a schedule: schedule_search plans it).
        """
        if len(self.batch_sizes) != 1:
            raise InputError(f"`batch_sizes` {list(self.batch_sizes)}: one search plans one batch size "
                             "(schedule_search plans several)")
        return self.batch_sizes[0]

    def acceptance_for(self, method: str) -> Acceptance | None:
        """The measured acceptance given for `method`, or None (its prior then holds)."""
        return self.acceptance_by_method.get(method)

    def gamma_caps(self) -> dict[str, int]:
        """Per method, the most drafted tokens its acceptance covers: per-position figures say
        nothing about positions beyond the last, so no longer draft is planned; a prior whose
        source measured a few positions (`Prior.positions`) caps its method where no figure is given."""
        caps = {m: p.positions for m, p in self.priors.items() if p.positions and m not in self.acceptance_by_method}
        return caps | {m: len(a) for m, a in self.acceptance_by_method.items() if isinstance(a, tuple)}

    def budget_gib(self, profile: HardwareProfile) -> float:
        """The memory budget in GiB on `profile`: `vram_gib`, or what the engine allocates of
        the device (all of it with no engine).

        Raises:
            InputError: `vram_gib` above the device's memory.
        """
        return budget_gib(self.vram_gib, memory_gib=profile.memory_gib, device=profile.name, engine=self.engine_memory)

    def execution_on(self, profile: HardwareProfile) -> Execution:
        """How a trial's forward runs on `profile`: its decode dtype, the engine's step cost,
        CUDA graphs or eager (`execution`, else the engine's default), and `tensor_parallel`.

        Raises:
            InputError: the engine does not run on a device of `profile`'s kind (TensorRT-LLM on a CPU)."""
        graphs = None if self.execution is None else self.execution == "graphs"
        if self.engine not in (None, RUNTIME):
            from planner.plan.export.engines import engine_info

            info = engine_info(self.engine)
            if profile.kind not in info.devices:
                raise InputError(f"{info.display} runs on {' or '.join(d.upper() for d in info.devices)}s only; "
                                 f"{profile.name} is a {profile.kind.upper()}")
        return Execution.default_for(profile, engine_cost(self.engine), graphs=graphs,
                                     tensor_parallel=self.tensor_parallel)

    def predict(self, spec: ModelSpec, profile: HardwareProfile, decoding: Decoding, *, batch_size: int | None = None,
                draft_spec: ModelSpec | None = None) -> Prediction:
        """The performance model's prediction of `decoding` under this request (its context,
        acceptance, priors, execution and engine) at `batch_size` (None: the smallest).

        Raises:
            InputError: as planner.perf.speedup.predict_detail.
        """
        return predict(spec, profile, decoding, context=self.context, batch_size=batch_size or self.batch_sizes[0],
                       acceptance=self.acceptance_for(decoding.method), priors=self.priors, draft_spec=draft_spec,
                       execution=self.execution_on(profile), engine_memory=self.engine_memory)

    def engine_quants(self) -> tuple[str, ...] | None:
        """The quantizations the request's engine applies (engines.yaml); None for no engine or
        the built-in runtime (every one).

        Raises:
            NotFoundError: an unknown engine.
        """
        from planner.plan.export.engines import engine_info

        return None if self.engine in (None, RUNTIME) else engine_info(self.engine).quants

    def drafts_trees(self) -> bool:
        """Whether the search may plan draft trees for heads (`trees`, else as the engine drafts).

        Raises:
            NotFoundError: an unknown engine.
        """
        return drafts_trees(self.engine) if self.trees is None else self.trees

    def constraints(self) -> Constraints:
        """What the plan file records of the request (at its smallest batch size)."""
        return Constraints(context=self.context, vram_gib=self.vram_gib, batch_size=self.batch_sizes[0], engine=self.engine,
                           workload=self.workload)

    def replace(self, **changes) -> "SearchRequest":
        """A copy with `changes` (keyword: field), normalised and checked like a new request."""
        return replace(self, **changes)


def normalise_acceptance(acceptance) -> dict[str, Acceptance]:
    """`acceptance` (None, one Acceptance for every speculative method, or a mapping method ->
    Acceptance) as a mapping method -> float or tuple of floats, each figure in [0, 1] and
    per-position figures never rising (a draft's first i tokens are accepted no more often
    than its first i - 1).

    Raises:
        InputError: an unknown method, a figure outside [0, 1] or not a number, an empty or
            rising per-position list.
    """
    if acceptance is None:
        return {}
    if not isinstance(acceptance, Mapping):
        acceptance = dict.fromkeys(SPECULATIVE, acceptance)
    normalised = {}
    for method, value in acceptance.items():
        if method not in SPECULATIVE:
            raise InputError(f"`acceptance`: '{method}' is not a speculative method{near_matches(str(method), SPECULATIVE)}")
        normalised[method] = check_acceptance(value)
    return normalised


def check_acceptance(value) -> Acceptance:
    figures = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not figures:
        raise InputError("`acceptance`: an empty list (give one figure, or one per drafted position)")
    for figure in figures:
        if isinstance(figure, bool) or not isinstance(figure, (int, float)) or not 0.0 <= figure <= 1.0:
            raise InputError(f"`acceptance` {figure!r}: expected a number from 0 to 1")
    for i in range(1, len(figures)):
        if figures[i] > figures[i - 1]:
            raise InputError(f"`acceptance`: per-position figures are the share of drafts accepted up to each "
                             f"position, so they cannot rise ({figures[i - 1]:g} at position {i}, then {figures[i]:g})")
    if isinstance(value, (list, tuple)):
        return tuple(float(f) for f in figures)
    return float(figures[0])


def _positive_ints(name: str, values) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise InputError(f"`{name}` {list(values)}: expected positive whole numbers")
    return values


def _choices(name: str, values, allowed) -> tuple[str, ...] | None:
    if values is None:
        return None
    values = tuple(dict.fromkeys(values))
    for value in values:
        if value not in allowed:
            raise InputError(f"`{name}`: unknown '{value}'{near_matches(str(value), allowed)}")
    return values

