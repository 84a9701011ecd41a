"""The search space a set of serving engines can express (`specplan plan --engine vllm`).

Restricting the search, rather than refusing at export time, makes the exported plan the
best that engine can do instead of a fallback from a plan it cannot run.
"""

from __future__ import annotations

from collections.abc import Iterable

from planner.errors import InputError
from planner.plan.export import engine_info
from planner.plan.schema import METHODS, Decoding


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
