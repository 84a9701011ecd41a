"""Batch-size schedules: for each batch size, the draft length that decodes fastest.

Engines switch the draft length by batch size, not the method (vLLM's per-batch token
table, TensorRT-LLM's draft-length schedule), so a schedule keeps one speculative method
for every range and picks gamma per batch size, gamma = 0 where speculating no longer
beats plain decoding (verification of B x (gamma + 1) tokens turns compute-bound).

`build_schedule` is pure over an `evaluate(method, gamma, batch_size) -> Prediction`
callable, so the caller decides how a set-up is predicted (the analytical model, or
measurements). Prediction.tokens_per_s is read as tokens/s per sequence.

`schedule_search` is the planner's use of it: the Optuna search at the smallest batch size
picks each method's set-up (quantization, skipped layers, draft model), then gamma is swept
per batch size with the performance model. The memory budget holds at the largest batch.
Where the plan's engine takes no draft-length table for a method (SGLang, transformers,
llama.cpp, TensorRT-LLM's EAGLE-3 and MTP: engines.yaml schedule, schedule_methods), that
method drafts one length over the whole range, so the plan states what is deployed: the length
whose worst speedup over the range is highest, and none when every length loses to plain
decoding at some planned batch size.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from planner.errors import BudgetError, InputError
from planner.hardware.profile import HardwareProfile
from planner.models.spec import ModelSpec
from planner.plan.schema import MAX_GAMMA, QUANTIZATIONS, Candidate, Decoding, Plan, Prediction, ScheduleEntry
from planner.search.engines import takes_schedule
from planner.search.space import MAX_PREDICTORS, usable_quants
from planner.search.request import SearchRequest
from planner.search.study import resolve_quants, search

Evaluate = Callable[[str, int, int], Prediction]

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,2,4,8' as given; '1-256' as the powers of two from 1 to 256 (ends included).

    Raises:
        InputError: not a list of positive numbers or a range LOW-HIGH with 1 <= LOW <= HIGH.
    """
    match = _RANGE.match(text.strip())
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if not 1 <= low <= high:
            raise InputError(f"`batch_sizes` {text}: expected LOW-HIGH with 1 <= LOW <= HIGH")
        sizes = {low, high} | {2**k for k in range(high.bit_length()) if low <= 2**k <= high}
        return tuple(sorted(sizes))
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise InputError(f"`batch_sizes` {text!r}: an empty item; expected numbers like 1,2,4 or a range like 1-256")
    try:
        sizes = sorted({int(part) for part in parts})
    except ValueError:
        raise InputError(f"`batch_sizes` {text!r}: expected numbers like 1,2,4 or a range like 1-256") from None
    if sizes[0] < 1:
        raise InputError(f"`batch_sizes` {text!r}: batch sizes must be positive")
    return tuple(sizes)


def _best_gammas(evaluate: Evaluate, method: str, batch_sizes, max_gamma: int, vram_gib: float) -> list[tuple[int, Prediction]]:
    """Per batch size: (gamma, prediction) of the fastest draft length, gamma 0 when none beats plain decoding.

    An engine allocates for its largest draft length at its largest batch, so only draft
    lengths that fit the budget there are candidates."""
    largest = batch_sizes[-1]
    gammas = [g for g in range(1, max_gamma + 1) if evaluate(method, g, largest).vram_gib <= vram_gib]
    best = []
    for batch in batch_sizes:
        choice = (0, evaluate("autoregressive", 0, batch))
        for gamma in gammas:
            prediction = evaluate(method, gamma, batch)
            if prediction.tokens_per_s > choice[1].tokens_per_s:
                choice = (gamma, prediction)
        best.append(choice)
    return best


def _mean_speedup(choices, baseline) -> float:
    return sum(c.tokens_per_s / b.tokens_per_s for (_, c), (_, b) in zip(choices, baseline)) / len(choices)


def _one_gamma(evaluate: Evaluate, method: str, batch_sizes, max_gamma: int, vram_gib: float,
               baseline) -> list[tuple[int, Prediction]]:
    """One draft length at every batch size, for an engine that cannot switch it with load: the
    one whose worst speedup over the batch sizes is highest (ties: the higher mean), and gamma 0
    everywhere when every length is slower than plain decoding at some planned batch size: a
    fixed draft length is deployed at every load the plan covers, so it must not lose at any."""
    largest = batch_sizes[-1]
    gammas = [g for g in range(1, max_gamma + 1) if evaluate(method, g, largest).vram_gib <= vram_gib]
    runs = [[(g, evaluate(method, g, b)) for b in batch_sizes] for g in gammas]

    def worst(run) -> float:
        return min(c.tokens_per_s / b.tokens_per_s for (_, c), (_, b) in zip(run, baseline))

    best = max(runs, key=lambda run: (worst(run), _mean_speedup(run, baseline)), default=None)
    return best if best is not None and worst(best) >= 1.0 else list(baseline)


def _one_length_note(evaluate: Evaluate, sizes, fixed, max_gamma: int, engine: str | None, chosen: Prediction,
                     method: str) -> str | None:
    """Why a plan passed over a method the engine drafts at one length at every load although it
    is faster than the plan's choice at the smallest batch size, and the batch range over which
    it would be chosen; None when no such method is faster there."""
    best = None
    for m in fixed:
        g = max(range(1, max_gamma + 1), key=lambda g: evaluate(m, g, sizes[0]).tokens_per_s)
        speedups = [evaluate(m, g, b).tokens_per_s / evaluate("autoregressive", 0, b).tokens_per_s for b in sizes]
        faster = evaluate(m, g, sizes[0]).tokens_per_s > chosen.tokens_per_s
        if faster and speedups[0] > 1.0 and min(speedups) < 1.0 and (best is None or speedups[0] > best[2][0]):
            best = (m, g, speedups)
    if best is None or len(sizes) < 2:
        return None
    m, g, speedups = best
    lost = next(i for i, s in enumerate(speedups) if s < 1.0)
    instead = "does not speculate" if method == "autoregressive" else f"takes {method}"
    fits = "" if not lost else f"; --batch-sizes {sizes[0]}-{sizes[lost - 1]} would take it" if lost > 1 else \
        f"; --batch-sizes {sizes[0]} would take it"
    return (f"{engine or 'the engine'} drafts {m} at one length at every batch size: gamma {g} is {speedups[0]:.2f}x plain "
            f"decoding at batch {sizes[0]} but {speedups[lost]:.2f}x at batch {sizes[lost]}, so this plan {instead}{fits}")


def _ranges(batch_sizes, choices, method: str) -> tuple[ScheduleEntry, ...]:
    """Each batch size covers up to the next one; neighbours with the same gamma merge.
    A range's figures are those of its largest evaluated batch size."""
    entries: list[ScheduleEntry] = []
    for i, (batch, (gamma, prediction)) in enumerate(zip(batch_sizes, choices)):
        upper = batch_sizes[i + 1] - 1 if i + 1 < len(batch_sizes) else batch
        entry = ScheduleEntry(
            batch_min=batch, batch_max=upper, method=method if gamma else "autoregressive", gamma=gamma,
            tokens_per_s_per_sequence=prediction.tokens_per_s, tokens_per_s_total=prediction.tokens_per_s * batch,
            vram_gib=prediction.vram_gib,
        )
        if entries and entries[-1].gamma == gamma:
            first = entries.pop()
            entry = ScheduleEntry(first.batch_min, upper, entry.method, gamma,
                                  entry.tokens_per_s_per_sequence, entry.tokens_per_s_total, entry.vram_gib)
        entries.append(entry)
    return tuple(entries)


def _check_budget(evaluate: Evaluate, batch_sizes, vram_gib: float) -> None:
    """A batch-size range whose largest batch does not fit even plain decoding is refused."""
    needed = {batch: evaluate("autoregressive", 0, batch).vram_gib for batch in batch_sizes}
    largest = batch_sizes[-1]
    if needed[largest] <= vram_gib:
        return
    fitting = [batch for batch in batch_sizes if needed[batch] <= vram_gib]
    hint = f"the largest batch size that fits is {fitting[-1]}" if fitting else "no batch size in the list fits"
    raise BudgetError(
        f"batch size {largest} needs {needed[largest]:.1f} GiB even without speculation, "
        f"over the {vram_gib:.1f} GiB budget; {hint}"
    )


def build_schedule(
    evaluate: Evaluate,
    batch_sizes: Iterable[int],
    *,
    methods: Iterable[str],
    vram_gib: float,
    max_gamma: int = MAX_GAMMA,
    fixed: Iterable[str] = (),
) -> tuple[ScheduleEntry, ...]:
    """The schedule of the speculative method with the highest mean speedup over batch sizes.
    Methods in `fixed` draft one length at every batch size (the engine takes no schedule for
    them), so their schedule is one range.

    Raises:
        BudgetError: the largest batch size does not fit `vram_gib` even without speculation.
    """
    sizes = tuple(sorted(set(batch_sizes)))
    _check_budget(evaluate, sizes, vram_gib)  # speculative draft lengths are kept to those that fit (_best_gammas)
    baseline = [(0, evaluate("autoregressive", 0, b)) for b in sizes]
    fixed = set(fixed)
    candidates = [(m, _one_gamma(evaluate, m, sizes, max_gamma, vram_gib, baseline) if m in fixed
                   else _best_gammas(evaluate, m, sizes, max_gamma, vram_gib))
                  for m in methods if m != "autoregressive"]
    candidates = [(m, c) for m, c in candidates if any(g for g, _ in c)]
    if not candidates:
        return _ranges(sizes, baseline, "autoregressive")
    method, choices = max(candidates, key=lambda mc: _mean_speedup(mc[1], baseline))
    return _ranges(sizes, choices, method)


# -- the planner's schedule: search at the smallest batch size, sweep gamma per batch size --


@dataclass(frozen=True)
class ScheduleResult:
    plan: Plan  # plan.schedule holds the ranges; plan.decoding the set-up at the smallest batch size
    batch_sizes: tuple[int, ...]
    curves: dict[int, tuple[Prediction, ...]]  # gamma -> prediction per batch size (0: autoregressive)
    chosen: tuple[Prediction, ...]  # the schedule's set-up at each batch size: the envelope of the curves
    budget_gib: float


def _autoregressive_gib(spec, profile, quant, batch, request: SearchRequest) -> float:
    return request.predict(spec, profile, Decoding("autoregressive", quant=quant), batch_size=batch).vram_gib


def _range_quants(profile: HardwareProfile, request: SearchRequest) -> tuple[str, ...]:
    """The quantizations a plan for `request` may end up at, as the search resolves them: those it
    allows (every one when it names none: memory may force one), within what its engine applies."""
    engine_quants = request.engine_quants()
    quants = tuple(q for q in (request.quants or QUANTIZATIONS) if engine_quants is None or q in engine_quants)
    return usable_quants(profile, quants or request.quants or QUANTIZATIONS)  # none left: the search refuses in words


def fitting_batch_sizes(spec: ModelSpec, profile: HardwareProfile, request: SearchRequest) -> tuple[int, ...]:
    """The batch sizes of `request` at which its smallest set-up (autoregressive, smallest
    allowed quantization) fits the request's budget on `profile`.

    Raises:
        InputError: the request's budget is above the device's memory.
    """
    budget = request.budget_gib(profile)
    return tuple(b for b in request.batch_sizes
                 if min(_autoregressive_gib(spec, profile, q, b, request) for q in _range_quants(profile, request)) <= budget)


def _require_batch_range(spec, profile, request: SearchRequest) -> None:
    fitting = fitting_batch_sizes(spec, profile, request)
    sizes = request.batch_sizes
    if fitting and fitting[-1] == sizes[-1]:
        return
    needed, quant = min((_autoregressive_gib(spec, profile, q, sizes[-1], request), q)
                        for q in _range_quants(profile, request))
    hint = f"the largest batch size that fits is {fitting[-1]}" if fitting else "no batch size in the list fits"
    raise BudgetError(
        f"batch size {sizes[-1]} does not fit {request.budget_gib(profile):.1f} GiB on {profile.name}: even "
        f"autoregressive {quant} needs {needed:.1f} GiB at context {request.context}; {hint} (use smaller "
        f"`batch_sizes` or a shorter `context`)"
    )


def _setups(ranked: list[Candidate]) -> dict[str, Decoding]:
    """Each method's fastest set-up, all at the quantization of the fastest: an engine loads the
    target's weights once and switches only the draft length with load."""
    quant = ranked[0].decoding.quant
    setups = {"autoregressive": Decoding("autoregressive", quant=quant)}
    for candidate in ranked:
        if candidate.decoding.quant == quant:
            setups.setdefault(candidate.decoding.method, candidate.decoding)
    return setups


def schedule_search(spec: ModelSpec, profile: HardwareProfile, request: SearchRequest, *,
                    max_gamma: int = MAX_PREDICTORS) -> ScheduleResult:
    """The fastest set-up per batch-size range of `request.batch_sizes`, gamma = 0 where
    speculating stops paying; max_gamma caps the draft lengths swept.

    One batch size gives a plan without a schedule (its gamma swept all the same).

    Raises:
        BudgetError: the largest batch size does not fit even autoregressive decoding.
        InputError: a request for the Pareto front or with a storage (a schedule is planned
            for speed, in one process); otherwise as `search`.
        NotFoundError: as `search`.
    """
    from pathlib import Path

    from planner.models import load_model_spec

    if request.objective != "speed" or request.storage:
        raise InputError("a schedule is planned for speed in one process: leave out `objective` pareto and `storage`")
    sizes = request.batch_sizes
    budget = request.budget_gib(profile)
    _require_batch_range(spec, profile, request)
    quants, note = resolve_quants(spec, profile, request, sizes[-1])  # what fits the largest batch
    result = search(spec, profile, request.replace(batch_sizes=sizes[:1], quants=quants))

    @functools.cache
    def at(decoding: Decoding, batch: int) -> Prediction:
        draft = None
        if decoding.method == "draft_model" or (decoding.draft_model and Path(decoding.draft_model).exists()):
            draft = load_model_spec(decoding.draft_model)  # a head named by hub id is costed in the target's shape
        return request.predict(spec, profile, decoding, batch_size=batch, draft_spec=draft)

    def fits_largest(decoding: Decoding) -> bool:
        return at(decoding, sizes[-1]).vram_gib <= budget

    feasible = [c for c, ok in zip(result.evaluated, result.feasible) if ok]
    ranked = [c for c in sorted(feasible, key=lambda c: -c.prediction.tokens_per_s) if fits_largest(c.decoding)]
    if not ranked:  # _require_batch_range let an autoregressive set-up through; the search's own quantizations found none
        raise BudgetError(f"no set-up the search found fits {budget:.1f} GiB on {profile.name} at batch size {sizes[-1]} "
                          f"(use smaller `batch_sizes` or a shorter `context`)")
    setups = _setups(ranked)

    caps = request.gamma_caps()

    def evaluate(method: str, gamma: int, batch: int) -> Prediction:
        return at(dataclasses.replace(setups[method], gamma=min(gamma, caps.get(method, gamma))), batch)

    fixed = tuple(m for m in setups if not takes_schedule(request.engine, m))
    schedule = build_schedule(evaluate, sizes, methods=tuple(setups), vram_gib=budget, max_gamma=max_gamma, fixed=fixed)
    method = next((e.method for e in schedule if e.gamma), "autoregressive")
    gammas = [next(e.gamma for e in schedule if e.batch_min <= b <= e.batch_max) for b in sizes]
    first_gamma = next((g for g in gammas if g), 0)
    decoding = dataclasses.replace(setups[method], gamma=first_gamma)
    alternatives = tuple(c for c in (Candidate(result.plan.decoding, result.plan.prediction), *result.plan.alternatives)
                         if c.decoding != decoding and fits_largest(c.decoding))
    notes = tuple(n for n in (note, _one_length_note(evaluate, sizes, fixed, max_gamma, request.engine,
                                                     at(decoding, sizes[0]), method)) if n)
    plan = result.plan.replace(
        decoding=decoding, prediction=at(decoding, sizes[0]), alternatives=alternatives,
        constraints=request.constraints(),
        schedule=schedule if len(sizes) > 1 else (), notes=notes,
    )
    curve_gammas = range(0, max_gamma + 1) if method != "autoregressive" else (0,)
    curves = {g: tuple(evaluate(method if g else "autoregressive", g, b) for b in sizes) for g in curve_gammas}
    chosen = tuple(curves[g][i] for i, g in enumerate(gammas))
    return ScheduleResult(plan, sizes, curves, chosen, budget)
