"""What an engine is asked to run: the plan's set-up reduced to what that engine expresses.

A plan holds one decoding set-up and, for load-aware plans, a batch-size schedule. An
engine either takes the schedule as a draft-length table (vLLM, TensorRT-LLM's Draft_Target
and NGram) or takes one draft length, in which case the one for the plan's own batch size is written and the
header says what was dropped. Set-ups the engine cannot run raise one line naming the
nearest set-up in the plan that it can run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planner.errors import InputError
from planner.plan.export.engines import EngineInfo
from planner.plan.schema import Candidate, Decoding, Plan


class ExportError(InputError):
    """A plan the engine cannot express."""


@dataclass(frozen=True)
class Resolved:
    decoding: Decoding  # the set-up to write (gamma: the largest drafted in any range)
    table: tuple[tuple[int, int, int], ...]  # (batch_min, batch_max, gamma); () = one gamma
    dropped: tuple[str, ...]  # what the engine could not take, for the header


def _nearest(plan: Plan, info: EngineInfo) -> str:
    candidates = (Candidate(plan.decoding, plan.prediction),) + plan.alternatives
    runnable = [c for c in candidates if info.cannot_run(c.decoding) is None]
    if not runnable:
        return "autoregressive (the plan holds no prediction for it)"
    best = max(runnable, key=lambda c: c.prediction.tokens_per_s)
    d = best.decoding
    gamma = f" gamma={d.gamma}" if d.method != "autoregressive" else ""
    return f"{d.method}{gamma} quant={d.quant} at {best.prediction.tokens_per_s:.1f} tokens/s predicted"


def _refuse(plan: Plan, info: EngineInfo, why: str) -> ExportError:
    return ExportError(
        f"{why}; nearest set-up in this plan that {info.display} can run: {_nearest(plan, info)}"
        f" (plan for engine {info.name} for its best)"
    )


def _decoding_for(plan: Plan, method: str) -> Decoding:
    """The full set-up (draft model, n-gram size, quantization) behind a schedule's method."""
    for decoding in (plan.decoding, *(c.decoding for c in plan.alternatives)):
        if decoding.method == method:
            return decoding
    raise ExportError(f"schedule: method {method} has no matching set-up in decoding or alternatives")


def _schedule_method(plan: Plan) -> str:
    methods = {e.method for e in plan.schedule if e.gamma > 0}
    if len(methods) > 1:
        raise ExportError(
            f"schedule: speculates with {', '.join(sorted(methods))}; an engine switches draft length "
            "by batch size, not method (plan for one engine)"
        )
    return methods.pop() if methods else "autoregressive"


def _one_gamma(plan: Plan, decoding: Decoding, info: EngineInfo) -> Resolved:
    batch = plan.constraints.batch_size
    entry = next((e for e in plan.schedule if e.batch_min <= batch <= e.batch_max), None)
    if entry is None:
        return Resolved(decoding, (), ())
    if len({e.gamma for e in plan.schedule}) == 1:  # planned as one length (schedule_search): nothing dropped
        return Resolved(_with_gamma(decoding, entry.gamma), (), ())
    why = (f"{info.display} takes none for {decoding.method}" if info.schedule
           else f"{info.display} has no per-batch draft-length field")
    dropped = (
        f"per-batch-size schedule ({why}); "
        f"wrote gamma={entry.gamma} of batch sizes {entry.batch_min}-{entry.batch_max}, "
        f"which holds the plan's batch size {batch}",
    )
    if entry.gamma == 0:
        return Resolved(Decoding(method="autoregressive", quant=decoding.quant), (), dropped)
    return Resolved(_with_gamma(decoding, entry.gamma), (), dropped)


def _with_gamma(decoding: Decoding, gamma: int) -> Decoding:
    return dataclasses.replace(decoding, gamma=gamma)


def resolve(plan: Plan, info: EngineInfo) -> Resolved:
    why = info.cannot_run(plan.decoding)
    if why:
        raise _refuse(plan, info, why)
    if not plan.schedule:
        return Resolved(plan.decoding, (), ())
    method = _schedule_method(plan)
    decoding = _decoding_for(plan, method) if method != "autoregressive" else plan.decoding
    why = info.cannot_run(decoding)
    if why:
        raise _refuse(plan, info, f"schedule: {why}")
    if method == "autoregressive":
        return Resolved(Decoding(method="autoregressive", quant=decoding.quant), (), ())
    if not info.takes_schedule(method):
        return _one_gamma(plan, decoding, info)
    table = tuple((e.batch_min, e.batch_max, e.gamma) for e in plan.schedule)
    return Resolved(_with_gamma(decoding, max(g for _, _, g in table)), table, ())
