"""Did `tune`'s pruning lose anything? Every set-up a study pruned (by the calibrated model
before decoding, or after a round under 0.7x) is measured in full, in the same interleaved
rounds against autoregressive decoding, on the same tuning prompts, beside the set-up the
study chose; a pruned set-up that beats it is a loss.

    python bench/tune_pruning.py --plan plan.yaml --prompts PROMPTS [--held-out 0.5] [--rounds 2]

The plan is `tune`'s (its search section names the study; its tuning section the settings).
"""

from __future__ import annotations

import argparse

from planner.autotune import describe
from planner.plan.schema import load_plan
from planner.runtime import DecodingBench, read_grouped_prompts
from planner.search.space import MAX_PREDICTORS
from planner.tune.request import split_prompts
from planner.tune.study import _measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--prompts", required=True, help="the prompts file tune was given")
    parser.add_argument("--held-out", type=float, default=0.5, help="tune's --held-out fraction")
    parser.add_argument("--rounds", type=int, default=None, help="default: the plan's")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import optuna

    plan = load_plan(args.plan)
    study = optuna.load_study(study_name=plan.search.study, storage=plan.search.storage)
    stamp = study.user_attrs["fingerprint"]  # the dtype and chat setting the trials ran with
    trials = [_measured(t) for t in study.trials if t.state.is_finished() and "decoding" in t.user_attrs]
    pruned = list(dict.fromkeys(m.decoding for m in trials if m.state == "pruned"))
    chosen = [plan.decoding] if plan.decoding.method != "autoregressive" else []
    tuning, _ = split_prompts(read_grouped_prompts(args.prompts), args.held_out)
    rounds = args.rounds or plan.tuning.rounds
    print(f"{len(pruned)} pruned set-ups of {len(trials)} trials, measured in full with the chosen one "
          f"({describe(plan.decoding)}), {rounds} rounds, {len(tuning)} tuning prompts x {plan.tuning.max_new_tokens} tokens")
    bench = DecodingBench(plan, [p for p, _ in tuning], groups=[g for _, g in tuning],
                          max_new_tokens=plan.tuning.max_new_tokens, max_gamma=MAX_PREDICTORS, device=args.device, dtype=stamp["dtype"],
                          chat=stamp["chat"])
    reasons = {m.decoding: m.why for m in trials if m.state == "pruned"}
    for c in bench.compare(chosen + pruned, rounds):
        label = "chosen" if c.decoding in chosen else reasons.get(c.decoding, "")
        print(f"| {describe(c.decoding)} | {c.speedup:.2f}x ({c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f}) | "
              f"{min(v for _, v in c.group_speedups):.2f}x | {'identical' if c.identical else 'DIFFERS'} | {label} |")


if __name__ == "__main__":
    main()
