"""The calibration of a finished `specplan tune` study, again: its held-out set-ups' predicted
against measured speedup before and after the fit (planner.tune.fit), as markdown; with
--export, the study's trials and starting profile as the JSON tests/test_calibration.py reads.

    python bench/tune_calibration.py --plan /tmp/demo/plan.yaml [--export tests/data/demo-study.json]

The plan, its NAME.calibration.yaml and the study (the plan's search.storage/study) come from
one tune run; the starting profile is the calibration's profile with its fitted fields as they
were before the fit (fit.before).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import optuna

    from planner.autotune import DEMO_DIR, DEMO_PRIORS
    from planner.models import load_model_spec
    from planner.plan.schema import load_plan
    from planner.tune.calibration import load_calibration
    from planner.tune.fit import calibrate
    from planner.tune.report import HELD_OUT_HEADERS, calibration_path
    from planner.tune.study import _measured

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--export", type=Path, help="write the trials and the starting profile here (JSON)")
    args = parser.parse_args()
    plan = load_plan(args.plan)
    fitted = load_calibration(calibration_path(args.plan))
    start = dataclasses.replace(fitted.profile, **fitted.fit.before)
    study = optuna.load_study(study_name=plan.search.study, storage=plan.search.storage)
    trials = [_measured(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished() and "decoding" in t.user_attrs]
    source = Path(plan.model.source)
    spec = load_model_spec(str(source))
    demo = source.resolve() == DEMO_DIR.resolve()
    drafts = {m.decoding.draft_model: load_model_spec(m.decoding.draft_model) for m in trials if m.decoding.draft_model}
    c = calibrate(spec, start, str(DEMO_PRIORS) if demo else None, trials, context=fitted.fit.context, draft_specs=drafts,
                  study=plan.search.study)
    print(f"{len(c.fit.held_out)} held-out set-ups of {c.fit.set_ups} ({c.fit.trials} trials measured in full): mean |error| "
          f"{c.fit.error_before:.1%} before the fit, {c.fit.error_after:.1%} after\n")
    print("| " + " | ".join(HELD_OUT_HEADERS) + " |\n|" + "---|" * len(HELD_OUT_HEADERS))
    for h in c.fit.held_out:
        print(f"| {h.set_up} | {h.measured_speedup:.2f}x | {h.before_speedup:.2f}x ({h.before_speedup / h.measured_speedup - 1:+.0%})"
              f" | {h.after_speedup:.2f}x ({h.after_speedup / h.measured_speedup - 1:+.0%}) |")
    if args.export:
        plain = [dict(dataclasses.asdict(m), decoding=dict(dataclasses.asdict(m.decoding),
                                                           draft_model=m.decoding.draft_model and Path(m.decoding.draft_model).name))
                 for m in trials]
        args.export.write_text(json.dumps({"command": "python bench/tune_calibration.py " + " ".join(sys.argv[1:]),
                                           "context": fitted.fit.context, "start_profile": start.to_dict(),
                                           "trials": plain}, indent=1) + "\n")


if __name__ == "__main__":
    main()
