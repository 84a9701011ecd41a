"""Batch-size schedules: for each batch size, the draft length that decodes fastest.

Engines switch the draft length by batch size, not the method (vLLM's per-batch token
table, TensorRT-LLM's draft-length schedule), so a schedule keeps one speculative method
for every range and picks gamma per batch size, gamma = 0 where speculating no longer
beats plain decoding (verification of B x (gamma + 1) tokens turns compute-bound).

`build_schedule` is pure over an `evaluate(method, gamma, batch_size) -> Prediction`
callable, so the caller decides how a set-up is predicted (the analytical model, or
measurements). Prediction.tokens_per_s is read as tokens/s per sequence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from planner.errors import BudgetError, InputError
from planner.plan.schema import MAX_GAMMA, Prediction, ScheduleEntry

Evaluate = Callable[[str, int, int], Prediction]

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,2,4,8' as given; '1-256' as the powers of two from 1 to 256 (ends included)."""
    match = _RANGE.match(text.strip())
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if not 1 <= low <= high:
            raise InputError(f"--batch-sizes {text}: expected LOW-HIGH with 1 <= LOW <= HIGH")
        sizes = {low, high} | {2**k for k in range(high.bit_length()) if low <= 2**k <= high}
        return tuple(sorted(sizes))
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--batch-sizes {text!r}: expected numbers like 1,2,4 or a range like 1-256") from None
    if not sizes or sizes[0] < 1:
        raise InputError(f"--batch-sizes {text!r}: batch sizes must be positive")
    return tuple(sizes)


def _best_gammas(evaluate: Evaluate, method: str, batch_sizes, max_gamma: int) -> list[tuple[int, Prediction]]:
    """Per batch size: (gamma, prediction) of the fastest draft length, gamma 0 when none beats plain decoding."""
    best = []
    for batch in batch_sizes:
        choice = (0, evaluate("autoregressive", 0, batch))
        for gamma in range(1, max_gamma + 1):
            prediction = evaluate(method, gamma, batch)
            if prediction.tokens_per_s > choice[1].tokens_per_s:
                choice = (gamma, prediction)
        best.append(choice)
    return best


def _mean_speedup(choices, baseline) -> float:
    return sum(c.tokens_per_s / b.tokens_per_s for (_, c), (_, b) in zip(choices, baseline)) / len(choices)


def _ranges(batch_sizes, choices, method: str) -> tuple[ScheduleEntry, ...]:
    """Each batch size covers up to the next one; neighbours with the same gamma merge.
    A range's figures are those of its largest evaluated batch size."""
    entries: list[ScheduleEntry] = []
    for i, (batch, (gamma, prediction)) in enumerate(zip(batch_sizes, choices)):
        upper = batch_sizes[i + 1] - 1 if i + 1 < len(batch_sizes) else batch
        entry = ScheduleEntry(
            batch_min=batch, batch_max=upper, method=method if gamma else "autoregressive", gamma=gamma,
            tokens_per_s_per_sequence=prediction.tokens_per_s, tokens_per_s_total=prediction.tokens_per_s * batch,
        )
        if entries and entries[-1].gamma == gamma:
            first = entries.pop()
            entry = ScheduleEntry(first.batch_min, upper, entry.method, gamma,
                                  entry.tokens_per_s_per_sequence, entry.tokens_per_s_total)
        entries.append(entry)
    return tuple(entries)


def _check_budget(evaluate: Evaluate, method: str, gamma: int, batch_sizes, vram_gib: float) -> None:
    """The draft stays loaded at every batch size, so memory is checked with the largest gamma."""
    needed = {batch: evaluate(method, gamma, batch).vram_gib for batch in batch_sizes}
    largest = batch_sizes[-1]
    if needed[largest] <= vram_gib:
        return
    fitting = [batch for batch in batch_sizes if needed[batch] <= vram_gib]
    hint = f"the largest batch size that fits is {fitting[-1]}" if fitting else "no batch size in the list fits"
    raise BudgetError(
        f"batch size {largest} needs {needed[largest]:.1f} GiB with {method} gamma={gamma}, "
        f"over the {vram_gib:.1f} GiB budget; {hint}"
    )


def build_schedule(
    evaluate: Evaluate,
    batch_sizes: Iterable[int],
    *,
    methods: Iterable[str],
    vram_gib: float,
    max_gamma: int = MAX_GAMMA,
) -> tuple[ScheduleEntry, ...]:
    """The schedule of the speculative method with the highest mean speedup over batch sizes."""
    sizes = tuple(sorted(set(batch_sizes)))
    baseline = [(0, evaluate("autoregressive", 0, b)) for b in sizes]
    candidates = [(m, _best_gammas(evaluate, m, sizes, max_gamma)) for m in methods if m != "autoregressive"]
    candidates = [(m, c) for m, c in candidates if any(g for g, _ in c)]
    if not candidates:
        _check_budget(evaluate, "autoregressive", 0, sizes, vram_gib)
        return _ranges(sizes, baseline, "autoregressive")
    method, choices = max(candidates, key=lambda mc: _mean_speedup(mc[1], baseline))
    _check_budget(evaluate, method, max(g for g, _ in choices), sizes, vram_gib)
    return _ranges(sizes, choices, method)
