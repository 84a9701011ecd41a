"""The search space a set of serving engines can express (`specplan plan --engine vllm`), and
what a plan searches by default: what the user can deploy.

Restricting the search, rather than refusing at export time, makes the exported plan the
best that engine can do instead of a fallback from a plan it cannot run. With no engine
named, a plan searches the methods some serving engine runs, and s3d only with an adapter
(its draft is trained; `specplan adapt` makes one); the self-drafting methods only the
built-in runtime runs are searched when it is the target (`engine` "specplan") or named.
"""

from __future__ import annotations

from collections.abc import Iterable

from planner.errors import InputError
from planner.perf.cost import RUNTIME as RUNTIME_COST, EngineCost
from planner.perf.memory import EngineMemory
from planner.plan.export import engine_info, engine_names
from planner.plan.schema import HEAD_METHODS, METHODS, Decoding

RUNTIME = "specplan"  # the built-in runtime (specplan run): every method, not an export target


def engine_memory(engine: str | None) -> EngineMemory | None:
    """The memory policy of `engine` (planner/profiles/engines.yaml); None for no engine, the
    built-in runtime, or an engine without one.

    Raises:
        NotFoundError: an unknown engine.
    """
    if engine is None or engine == RUNTIME:
        return None
    return engine_info(engine).memory


def engine_cost(engine: str | None) -> EngineCost:
    """What `engine` adds to a decoding step (planner/profiles/engines.yaml); the built-in
    runtime's (only its kernels) for no engine or the built-in runtime.

    Raises:
        NotFoundError: an unknown engine.
    """
    if engine is None or engine == RUNTIME:
        return RUNTIME_COST
    return engine_info(engine).cost


def engine_space(engines: Iterable[str], methods=None, quants=None) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """(methods, quants) every engine in `engines` can run, within `methods` and `quants`
    (the allowed quantizations; default: the search's DEFAULT_QUANTS) when given.

    No engine: (methods, quants) as given (None: the search's defaults). A method or a
    quantization asked for explicitly that an engine cannot run is refused with that engine's
    reason, not silently dropped.

    Raises:
        NotFoundError: an unknown engine.
        InputError: a method or quantization an engine cannot run, or engines that share no quantization.
    """
    from planner.search.space import DEFAULT_QUANTS

    infos = [engine_info(name) for name in dict.fromkeys(engines)]
    if not infos:
        return (tuple(methods) if methods else None), (tuple(quants) if quants else None)
    for info in infos:
        for method in methods or ():
            why = info.cannot_run(Decoding(method=method))
            if why:
                raise InputError(f"{why} (drop it from `methods`, or plan without `engine`/`exports` {info.name})")
        for quant in quants or ():
            if quant not in info.quants:
                raise InputError(f"{info.display} cannot apply {quant} weight quantization to the target "
                                 f"(it applies {', '.join(info.quants)})")
    chosen = tuple(m for m in (methods or METHODS) if all(m in info.methods for info in infos))
    quants = tuple(q for q in (quants or DEFAULT_QUANTS) if all(q in info.quants for info in infos))
    if not quants:
        names = ", ".join(info.display for info in infos)
        raise InputError(f"{names} share no target quantization; export to them from separate plans")
    return chosen, quants


def deployable_methods(engine: str | None, *, adapted: bool) -> tuple[str, ...]:
    """The methods a plan for `engine` searches when none are named: the engine's; for no
    engine, those some serving engine runs; every method but the learned heads on the built-in
    runtime. s3d only when `adapted` (an adapter was given or found for the checkpoint).

    Raises:
        NotFoundError: an unknown engine.
    """
    if engine == RUNTIME:
        runnable = set(METHODS) - set(HEAD_METHODS)  # learned heads are served by engines, not run here
    elif engine is not None:
        runnable = set(engine_info(engine).methods)
    else:
        runnable = {m for name in engine_names() for m in engine_info(name).methods}
    if adapted and engine in (None, RUNTIME):
        runnable.add("s3d")
    elif not adapted:
        runnable.discard("s3d")
    return tuple(m for m in METHODS if m in runnable)


def takes_schedule(engine: str | None, method: str) -> bool:
    """Whether a plan for `engine` may switch `method`'s draft length by batch size: with no
    engine named or the built-in runtime, or an engine that takes a draft-length table for it
    (planner/profiles/engines.yaml schedule, schedule_methods).

    Raises:
        NotFoundError: an unknown engine.
    """
    return engine in (None, RUNTIME) or engine_info(engine).takes_schedule(method)


def drafts_trees(engine: str | None) -> bool:
    """Whether a plan for `engine` may draft trees from a learned head (topk > 1): with no
    engine named (SGLang among those it may be served by), or an engine that drafts trees.

    Raises:
        NotFoundError: an unknown engine.
    """
    return engine in (None, RUNTIME) or engine_info(engine).trees
