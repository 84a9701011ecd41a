"""Batch-size schedules over a small roofline evaluator: speculation turns off at large batch,
ranges merge, the budget is checked at the largest batch size."""

from __future__ import annotations

import dataclasses

import pytest

from planner.errors import BudgetError, InputError
from planner.plan.schema import Prediction
from planner.search.schedule import build_schedule, parse_batch_sizes

ALPHA = 0.8  # acceptance of the draft model


def roofline(method: str, gamma: int, batch: int) -> Prediction:
    """Weights read once per forward (10 ms); compute grows with B*(gamma+1) tokens (0.05 ms each)."""
    verify_ms = max(10.0, 0.05 * batch * (gamma + 1))
    draft_ms = 1.0 * gamma if method == "draft_model" else 0.0
    tau = (1 - ALPHA ** (gamma + 1)) / (1 - ALPHA)
    iteration_ms = verify_ms + draft_ms
    vram_gib = 16.0 + 0.125 * batch + (2.0 if method == "draft_model" else 0.0)
    return Prediction(basis="analytical", tokens_per_s=1000 * tau / iteration_ms, speedup=1.0,
                      tokens_per_iteration=tau, acceptance=ALPHA, target_latency_ms=10.0,
                      draft_latency_ms=draft_ms, iteration_ms=iteration_ms, vram_gib=vram_gib)


def test_parse_batch_sizes():
    assert parse_batch_sizes("1-128") == (1, 2, 4, 8, 16, 32, 64, 128)
    assert parse_batch_sizes("3-10") == (3, 4, 8, 10)
    assert parse_batch_sizes("8,1,2") == (1, 2, 8)
    for bad in ("0-4", "a,b", "9-2", "0"):
        with pytest.raises(InputError):
            parse_batch_sizes(bad)


def test_speculation_turns_off_at_large_batch_and_ranges_merge():
    schedule = build_schedule(roofline, parse_batch_sizes("1-256"), methods=["draft_model"], vram_gib=80.0)
    gammas = [e.gamma for e in schedule]
    assert gammas[0] > 0 and gammas[-1] == 0
    assert gammas == sorted(gammas, reverse=True)  # draft lengths only shrink as load grows
    assert len(set(gammas)) == len(gammas)  # neighbours with equal gamma are merged
    assert schedule[0].batch_min == 1 and schedule[-1].batch_max == 256
    assert all(a.batch_max + 1 == b.batch_min for a, b in zip(schedule, schedule[1:]))
    assert schedule[-1].method == "autoregressive" and schedule[0].method == "draft_model"
    # At 256 sequences one token per sequence already costs 12.8 ms > 10 ms of weights: no gain left.
    last = schedule[-1]
    assert last.tokens_per_s_total == pytest.approx(last.tokens_per_s_per_sequence * 256)


def test_each_range_holds_the_fastest_gamma_of_its_batch_sizes():
    schedule = build_schedule(roofline, (1, 16, 64), methods=["draft_model"], vram_gib=80.0)
    for entry in schedule:
        best = max(range(0, 9), key=lambda g: roofline("draft_model" if g else "autoregressive", g, entry.batch_min).tokens_per_s)
        assert entry.gamma == best


def test_budget_is_checked_at_the_largest_batch_size():
    with pytest.raises(BudgetError, match="batch size 256 needs 48.0 GiB even without speculation.*largest batch size that fits is 64"):
        build_schedule(roofline, parse_batch_sizes("1-256"), methods=["draft_model"], vram_gib=30.0)
    with pytest.raises(BudgetError, match="no batch size in the list fits"):
        build_schedule(roofline, (1, 2), methods=["draft_model"], vram_gib=10.0)


def test_only_draft_lengths_that_fit_at_the_largest_batch_are_scheduled():
    def heavy_drafts(method, gamma, batch):  # each drafted token's slots and activations cost 1 GiB here
        p = roofline(method, gamma, batch)
        return dataclasses.replace(p, vram_gib=p.vram_gib + gamma)

    schedule = build_schedule(heavy_drafts, (1, 2, 4), methods=["draft_model"], vram_gib=16.0 + 0.5 + 2.0 + 2.0)
    assert max(e.gamma for e in schedule) == 2  # unconstrained, batch 1 would draft more than 2
    assert max(range(1, 9), key=lambda g: roofline("draft_model", g, 1).tokens_per_s) > 2


def test_a_method_the_engine_cannot_switch_drafts_one_length_that_loses_at_no_planned_batch_size():
    sizes = parse_batch_sizes("1-64")

    def speedups(gamma):
        return [roofline("draft_model", gamma, b).tokens_per_s / roofline("autoregressive", 0, b).tokens_per_s for b in sizes]

    assert min(speedups(1)) > 1.0  # the roofline's draft still wins at 64 at some length
    schedule = build_schedule(roofline, sizes, methods=["draft_model"], vram_gib=80.0, fixed=["draft_model"])
    assert len(schedule) == 1 and (schedule[0].batch_min, schedule[0].batch_max) == (1, 64)
    assert schedule[0].gamma == max(range(1, 9), key=lambda g: min(speedups(g))) and schedule[0].method == "draft_model"
    switched = build_schedule(roofline, sizes, methods=["draft_model"], vram_gib=80.0)
    assert switched[0].gamma > schedule[0].gamma  # switched by batch size, batch 1 drafts longer


def test_one_length_is_not_speculated_where_it_loses_at_the_largest_batch_size():
    sizes = parse_batch_sizes("1-256")
    # switched by batch size the draft stops at 256; one length would lose there, however well it does at 1
    assert build_schedule(roofline, sizes, methods=["draft_model"], vram_gib=80.0)[-1].gamma == 0
    schedule = build_schedule(roofline, sizes, methods=["draft_model"], vram_gib=80.0, fixed=["draft_model"])
    assert [(e.method, e.gamma, e.batch_min, e.batch_max) for e in schedule] == [("autoregressive", 0, 1, 256)]


def test_one_length_that_loses_on_the_mean_is_not_speculated():
    def slow_drafts(method, gamma, batch):  # a draft costing 40 ms a token loses at every batch size
        p = roofline(method, gamma, batch)
        return dataclasses.replace(p, tokens_per_s=p.tokens_per_s / (1 + 4 * gamma))

    schedule = build_schedule(slow_drafts, (1, 64), methods=["draft_model"], vram_gib=80.0, fixed=["draft_model"])
    assert [(e.method, e.gamma) for e in schedule] == [("autoregressive", 0)]


def test_a_batch_range_only_a_quantization_the_engine_lacks_would_fit_is_one_line_not_a_traceback():
    """The range check counts only the quantizations the search may use (the engine's): SGLang
    on an A10G at batch 16 needs 22.6 GiB unquantized, which int4 (not SGLang's) would have met."""
    from click.testing import CliRunner

    from planner.cli import cli

    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--engine", "sglang",
                                      "--batch-sizes", "1-16", "--trials", "20"])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.output.count("\n") == 1 and "the largest batch size that fits is 8" in result.output
