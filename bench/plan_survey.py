"""Plan every shipped card on every shipped GPU; print one row each.

    python bench/plan_survey.py             self-drafting methods, any quantization (about 3 minutes on 2 cores)
    python bench/plan_survey.py --default   what `specplan plan` searches with no options: deployable, unquantized
"""

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.errors import BudgetError  # noqa: E402
from planner.hardware import load_profile, shipped_profile_names  # noqa: E402
from planner.models import load_model_spec, shipped_model_names  # noqa: E402
from planner.plan import QUANTIZATIONS  # noqa: E402
from planner.search import SearchRequest, search  # noqa: E402

SELF_DRAFTING = ["autoregressive", "layer_skip", "s3d", "early_exit"]
DEFAULT = "--default" in sys.argv[1:]
REQUEST = SearchRequest(trials=150, seed=0) if DEFAULT else \
    SearchRequest(trials=150, seed=0, methods=SELF_DRAFTING, quants=QUANTIZATIONS)

chosen = collections.Counter()
for card in shipped_model_names():
    spec = load_model_spec(card)
    for gpu in shipped_profile_names():
        try:
            plan = search(spec, load_profile(gpu), REQUEST).plan
        except BudgetError as exc:
            print(f"{card:15s} {gpu:10s} {exc}")
            continue
        d = plan.decoding
        block = f"{d.skip_layers[0]}-{d.skip_layers[-1]} of {spec.num_layers}" if d.skip_layers else ""
        chosen[(d.method, d.quant) if DEFAULT else (d.method, d.gamma)] += 1
        print(f"{card:15s} {gpu:10s} {d.method:14s} gamma {d.gamma:2d} {block:12s} {d.quant:5s} "
              f"{plan.prediction.speedup:.2f}x {plan.prediction.vram_gib:.1f} GiB" + (" (quantized: too large)" if plan.notes else ""))
print(dict(chosen))
