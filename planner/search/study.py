"""The Optuna study: one trial = one configuration, scored by the performance model.

Optuna does the sampling (seeded TPE), the constraint handling (constraints_func), the
Pareto front (multi-objective) and the persistence (any storage URL, resumed with
load_if_exists): nothing here re-implements them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass

from planner._signals import sigint_handler
from planner.errors import BudgetError, InputError
from planner.hardware.profile import HardwareProfile
from planner.models.spec import ModelSpec
from planner.perf.memory import GIB
from planner.plan.export import engine_info
from planner.plan.schema import (
    HEAD_METHODS, Candidate, Decoding, HardwareRef, ModelRef, Plan, Prediction, SearchSettings,
)
from planner.search.engines import RUNTIME, deployable_methods, engine_space
from planner.search.request import SearchRequest
from planner.search.space import DEFAULT_QUANTS, Space, seeds, suggest, usable_quants
from planner.search.storage import open_study, storage_errors

ALTERNATIVES = 5


@dataclass(frozen=True)
class SearchResult:
    plan: Plan
    evaluated: tuple[Candidate, ...]  # every completed trial's set-up and prediction, in trial order
    feasible: tuple[bool, ...]
    budget_gib: float


def check_draft(spec: ModelSpec, draft: ModelSpec) -> ModelSpec:
    """`draft`, when it can draft for `spec`: the runtime verifies draft tokens against the
    target's logits, so both must have the same vocabulary.

    Raises:
        InputError: the vocabularies differ.
    """
    if draft.vocab_size != spec.vocab_size:
        raise InputError(f"draft model {draft.name} has a vocabulary of {draft.vocab_size} tokens and {spec.name} "
                         f"one of {spec.vocab_size}: a draft must share the target's vocabulary")
    return draft


def check_tensor_parallel(spec: ModelSpec, profile: HardwareProfile, tensor_parallel: int,
                          draft_tensor_parallel: int | None = None) -> None:
    """Nothing, when `spec` can be split over `tensor_parallel` GPUs of `profile`.

    Raises:
        InputError: attention heads that do not divide evenly (vLLM and SGLang require it), a
            profile with no interconnect figure, or a draft's own tensor parallel other than 1 or
            the target's (vLLM's rule for draft_tensor_parallel_size).
    """
    if tensor_parallel == 1:
        return
    if spec.num_heads % tensor_parallel:
        raise InputError(f"`tensor_parallel` {tensor_parallel}: {spec.name}'s {spec.num_heads} attention heads do not "
                         "split evenly over that many GPUs")
    if profile.interconnect_gbps <= 0:
        raise InputError(f"`tensor_parallel` {tensor_parallel}: {profile.name} states no interconnect bandwidth")
    if draft_tensor_parallel not in (None, 1, tensor_parallel):
        raise InputError(f"a draft runs on 1 GPU or on the target's {tensor_parallel}, not {draft_tensor_parallel}")


def fitting_tensor_parallel(spec: ModelSpec, profile: HardwareProfile, tensor_parallel: int = 1) -> int | None:
    """The smallest tensor parallel above `tensor_parallel` over which `spec`'s unquantized
    weights take under 90% of each GPU of `profile` (its attention heads splitting evenly), or None."""
    weights_gib = spec.weight_bytes("none") / GIB
    return next((n for n in (2, 4, 8, 16) if n > tensor_parallel and spec.num_heads % n == 0
                 and weights_gib / n < 0.9 * profile.memory_gib), None)


def split_hint(spec: ModelSpec, profile: HardwareProfile, needed_gib: float, tensor_parallel: int = 1) -> str:
    """Where a set-up needing `needed_gib` GiB per GPU is over one GPU of `profile`: the
    tensor parallel that would fit it, in words; else ""."""
    fits = fitting_tensor_parallel(spec, profile, tensor_parallel) if needed_gib > profile.memory_gib else None
    return f"split it with `tensor_parallel` {fits}" if fits else ""


def search_heads(spec: ModelSpec, request: SearchRequest) -> dict[str, str | None]:
    """Head methods the search may plan, method -> the head's name: the heads `request` gives,
    else the public heads planner/profiles/heads.yaml names for the model; mtp (the model's own
    layers, None) where `request.methods` names it and the checkpoint has MTP layers (refused in
    words when it is the only method asked for); medusa only with a measured acceptance (no
    published prior)."""
    from planner.perf.heads import published_head

    heads = {m: published_head(spec.name, m) for m in HEAD_METHODS if published_head(spec.name, m)}
    heads |= dict(request.heads)
    if request.methods and "mtp" in request.methods:
        if spec.mtp_layers:
            heads.setdefault("mtp", None)
        elif set(request.methods) <= {"mtp", "autoregressive"}:  # asked for mtp alone: say why not
            from planner.perf.speedup import no_mtp_layers

            raise InputError(no_mtp_layers(spec))
    if "medusa" in heads and request.acceptance_for("medusa") is None and "medusa" not in request.priors:
        del heads["medusa"]
    return heads


def _head_configs(heads: dict[str, str | None]) -> dict[str, ModelSpec]:
    """The heads given as a local config or directory, as specs (their own shapes); hub ids
    only name a head, which is then costed in the target's shape (planner.perf.heads)."""
    from pathlib import Path

    from planner.models import load_model_spec

    return {m: load_model_spec(name) for m, name in heads.items() if name and Path(name).exists()}


def draft_candidates(spec: ModelSpec, names=None) -> dict[str, ModelSpec]:
    """Draft models for method draft_model: the given names, else shipped cards with the same
    tokenizer and vocabulary and at most a quarter of the target's parameters.

    Raises:
        NotFoundError: a name that is no card, directory or config.
        InputError: a named draft whose vocabulary differs from the target's.
    """
    from planner.models import load_model_spec, shipped_model_names

    if names:
        return {name: check_draft(spec, load_model_spec(name)) for name in names}
    if not spec.tokenizer_family:
        return {}
    found = {}
    for name in shipped_model_names():
        card = load_model_spec(name)
        if (card.tokenizer_family, card.vocab_size) == (spec.tokenizer_family, spec.vocab_size) \
                and card.param_count <= spec.param_count / 4:
            found[name] = card
    return found


def search(spec: ModelSpec, profile: HardwareProfile, request: SearchRequest | None = None, *,
           progress: bool = False) -> SearchResult:
    """The Optuna search over decoding set-ups of `spec` on `profile` for `request` (its
    options, each documented on planner.search.request.SearchRequest; None: the defaults),
    each trial scored by the performance model; the fastest that fits, as a Plan with up to
    five alternatives, and every evaluated set-up. `progress` draws Optuna's progress bar.

    Raises:
        InputError: a request with several batch sizes, a context beyond the model's positions,
            a budget above the device's memory, a method or quantization the engine cannot run,
            a storage that cannot be opened, no method left to search, or a draft with another
            vocabulary.
        NotFoundError: a draft name that is no model, an unknown engine.
        BudgetError: nothing fits the budget (the message names the smallest that would).
        MissingDependencyError: the storage's database driver is not installed.
    """
    import optuna

    r = request or SearchRequest()
    batch_size, budget = r.batch_size, r.budget_gib(profile)
    if r.context > spec.max_position_embeddings:
        raise InputError(f"`context` {r.context} is beyond the {spec.max_position_embeddings} positions of {spec.name}")
    check_tensor_parallel(spec, profile, r.tensor_parallel)
    methods = searched_methods(r)
    quants, note = resolve_quants(spec, profile, r, batch_size)
    draft_specs = draft_candidates(spec, r.drafts) if "draft_model" in methods else {}
    heads = search_heads(spec, r)
    head_configs = _head_configs(heads)
    space = Space.for_model(spec, methods=methods, quants=quants, drafts=tuple(draft_specs),
                            skip_pattern=r.skip_pattern, s3d=r.s3d, gamma_caps=r.gamma_caps(), heads=heads,
                            trees=r.drafts_trees())
    if not space.methods:
        raise InputError("no method left to search (draft_model needs a draft model with the same tokenizer and vocabulary)")
    execution = r.execution_on(profile)

    def evaluate(decoding: Decoding) -> Prediction:
        draft = draft_specs.get(decoding.draft_model) if decoding.method == "draft_model" else head_configs.get(decoding.method)
        return r.predict(spec, profile, decoding, draft_spec=draft)

    def objective_fn(trial):
        decoding = suggest(trial, space)
        prediction = evaluate(decoding)
        trial.set_constraint("vram_gib", prediction.vram_gib - budget)  # feasible when <= 0
        _record(trial, Candidate(decoding, prediction))
        total = prediction.tokens_per_s * batch_size
        return total if r.objective == "speed" else (total, prediction.vram_gib)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported once, by the CLI, not logged too
    with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=r.seed, n_startup_trials=min(20, r.trials), multivariate=True, group=True)
    fingerprint = {"model": spec.name, "gpu": profile.name, "vram_gib": budget, "context": r.context,
                   "batch_size": batch_size, "space": repr(space), "engine": r.engine or "specplan",
                   "execution": execution.mode}
    completed, finished = _run_study(r.storage, r.study_name, sampler=sampler, fingerprint=fingerprint, space=space,
                                     directions=["maximize"] if r.objective == "speed" else ["maximize", "minimize"],
                                     objective_fn=objective_fn, trials=r.trials, progress=progress)
    # Every completed trial of the study, this worker's and any other's sharing the storage.
    evaluated = [_recorded(t) for t in completed]
    feasible = tuple(c.prediction.vram_gib <= budget for c in evaluated)
    chosen = _rank([c for c, ok in zip(evaluated, feasible) if ok])
    if not chosen:
        raise BudgetError(_nothing_fits(spec, profile, budget, r, space))
    winner, alternatives = chosen[0], _alternatives(chosen)
    plan = Plan(
        model=ModelRef(name=spec.name, source=r.model_source or spec.name, num_layers=spec.num_layers,
                       vocab_size=spec.vocab_size, hidden_size=spec.hidden_size),
        hardware=HardwareRef(profile=profile.name, device_name=profile.device_name, tensor_parallel=r.tensor_parallel,
                             memory_gib=profile.memory_gib),
        decoding=winner.decoding,
        prediction=winner.prediction,
        constraints=r.constraints(),
        alternatives=alternatives,
        search=SearchSettings(sampler="TPESampler", seed=r.seed, trials=finished, objective=r.objective,
                              methods=space.methods, storage=r.storage, study=r.study_name, engine=r.engine,
                              execution="graphs" if execution.graphs else "eager"),
        notes=(note,) if note else (),
    )
    return SearchResult(plan, tuple(evaluated), feasible, budget)


def searched_methods(request: SearchRequest) -> tuple[str, ...]:
    """The methods `request` searches: those it names (each one its engine can run), else the
    ones its engine, or with none some serving engine, can deploy (planner.search.engines).

    Raises:
        InputError: a named method the engine cannot run.
        NotFoundError: an unknown engine.
    """
    if request.methods is not None:
        engines = [] if request.engine in (None, RUNTIME) else [request.engine]
        return engine_space(engines, request.methods)[0]
    return deployable_methods(request.engine, adapted=request.s3d is not None)


def resolve_quants(spec: ModelSpec, profile: HardwareProfile, request: SearchRequest,
                   batch_size: int) -> tuple[tuple[str, ...], str | None]:
    """(the target quantizations to search, a note in words when the plan must quantize).

    Quantization changes the model's outputs, so by default (`request.quants` None) a plan is
    unquantized, unless even autoregressive decoding of the unquantized model does not fit the
    budget at `batch_size`: then the least quantization that fits, with a note saying so. A
    named set is searched as it is, within what the request's engine applies.

    Raises:
        InputError: named quantizations the engine cannot apply.
        NotFoundError: an unknown engine.
    """
    engine_quants = request.engine_quants()
    if request.quants is not None:
        quants = tuple(q for q in request.quants if engine_quants is None or q in engine_quants)
        if not quants:
            raise InputError(f"{engine_info(request.engine).display} applies none of `quants` "
                             f"{', '.join(request.quants)} (it applies {', '.join(engine_quants)})")
        return usable_quants(profile, quants), None
    allowed = usable_quants(profile, engine_quants or DEFAULT_QUANTS)
    budget = request.budget_gib(profile)

    def needed(quant: str) -> float:
        return request.predict(spec, profile, Decoding("autoregressive", quant=quant), batch_size=batch_size).vram_gib

    if "none" in allowed and needed("none") <= budget:
        return ("none",), None
    quant = next((q for q in allowed if q != "none" and needed(q) <= budget), None)
    if quant is None:
        return allowed, None  # nothing fits: the search says what would
    return (quant,), (f"quantized to {quant}: {spec.name} does not fit {budget:.1f} GiB unquantized (it needs "
                      f"{needed('none'):.2f} GiB); outputs differ from the checkpoint's")


def _run_study(storage, study_name, *, sampler, directions, fingerprint, space, objective_fn, trials, progress):
    """Open (or resume) the study, queue the seeds into a new one and run `trials` trials.
    Returns the study's completed trials and how many trials have finished (not the seeds
    still queued)."""
    import optuna

    with _interrupt_between_trials() as interrupted:
        study, created = open_study(storage, study_name, sampler=sampler, directions=directions, fingerprint=fingerprint)
        with storage_errors(storage):
            if created and not interrupted:
                for point in seeds(space):
                    study.enqueue_trial(point, skip_if_exists=True)
            if not interrupted:
                study.optimize(objective_fn, n_trials=trials, show_progress_bar=progress,
                               callbacks=[lambda study, _: interrupted and study.stop()])
            every = study.get_trials(deepcopy=False)
    completed = [t for t in every if t.state == optuna.trial.TrialState.COMPLETE]
    return completed, sum(t.state.is_finished() for t in every)


@contextlib.contextmanager
def _interrupt_between_trials():
    """Ctrl-C while a study talks to its storage takes effect at the next safe point: a
    KeyboardInterrupt raised inside Optuna's or SQLAlchemy's code can leave a trial
    half-recorded or a lock held (the process then hangs). The first SIGINT is noted (the
    study stops after the current trial) and raised when the block ends; a second one
    interrupts at once."""
    came = []

    def on_sigint(signum, frame):
        if came:
            raise KeyboardInterrupt
        came.append(signum)

    with sigint_handler(on_sigint):
        yield came
    if came:
        raise KeyboardInterrupt


def _record(trial, candidate: Candidate) -> None:
    decoding = dataclasses.asdict(candidate.decoding)
    decoding["skip_layers"] = list(decoding["skip_layers"])  # JSON for database storages
    trial.set_user_attr("decoding", decoding)
    trial.set_user_attr("prediction", dataclasses.asdict(candidate.prediction))


def _recorded(trial) -> Candidate:
    decoding = dict(trial.user_attrs["decoding"], skip_layers=tuple(trial.user_attrs["decoding"]["skip_layers"]))
    return Candidate(Decoding(**decoding), Prediction(**trial.user_attrs["prediction"]))


def plan(spec: ModelSpec, profile: HardwareProfile, request: SearchRequest | None = None, **options) -> Plan:
    """The fastest lossless set-up of `spec` that fits the budget on `profile`, as a Plan:
    `search(spec, profile, request).plan`, where `options` (SearchRequest's fields, e.g.
    vram_gib=12, trials=300) make the request when none is given.

    Raises:
        InputError: `options` beside a `request`, an option SearchRequest has not, or as `search`.
        NotFoundError, BudgetError, MissingDependencyError: as `search`.
    """
    if request is not None and options:
        raise InputError("give a `request` or its options, not both")
    try:
        request = request or SearchRequest(**options)
    except TypeError as exc:  # an unknown keyword
        raise InputError(f"plan: {exc}") from None
    return search(spec, profile, request).plan


def _rank(candidates: list[Candidate]) -> list[Candidate]:
    unique = {repr(c.decoding): c for c in candidates}
    return sorted(unique.values(), key=lambda c: (-c.prediction.tokens_per_s, c.prediction.vram_gib))


def _alternatives(ranked: list[Candidate]) -> tuple[Candidate, ...]:
    """The best set-up of each other method first, then the runners-up, five in all."""
    winner = ranked[0]
    best_per_method: dict[str, Candidate] = {}
    for candidate in ranked[1:]:
        if candidate.decoding.method != winner.decoding.method:
            best_per_method.setdefault(candidate.decoding.method, candidate)
    picked = list(best_per_method.values())
    picked += [c for c in ranked[1:] if c not in picked][: max(0, ALTERNATIVES - len(picked))]
    return tuple(sorted(picked, key=lambda c: -c.prediction.tokens_per_s)[:ALTERNATIVES])


def _nothing_fits(spec, profile, budget, request, space) -> str:
    """Why nothing fits, and a budget that would: one the device holds, else what to change (a
    tensor parallel that splits the weights where they alone are over one GPU)."""
    context, batch_size = request.context, request.batch_size
    smallest, quant = min((request.predict(spec, profile, Decoding("autoregressive", quant=q)).vram_gib, q)
                          for q in space.quants)
    what = (f"nothing fits {budget:.1f} GiB: the smallest set-up (autoregressive, {quant}) needs {smallest:.1f} GiB "
            f"at context {context} and batch {batch_size}")
    memory = profile.memory_gib
    if smallest <= memory:
        return f"{what}; use `vram_gib` {smallest + 0.05:.1f} or more (up to the {memory:.1f} GiB of {profile.name})"
    tp = request.tensor_parallel
    weights = spec.weight_bytes(quant) / GIB / tp
    per_gpu = f" on each of {tp} GPUs" if tp > 1 else ""
    if weights > memory:
        hint = split_hint(spec, profile, smallest, tp)
        return (f"{what}, more than the {memory:.1f} GiB of {profile.name}: its {quant} weights alone need "
                f"{weights:.1f} GiB{per_gpu}" + (f"; {hint}" if hint else ""))
    return f"{what}, more than the {memory:.1f} GiB of {profile.name}: use a shorter `context` or fewer sequences"
