"""Print the model-card parameter check (markdown) for BENCHMARKS.md.

    python bench/model_params.py   (paste into the "Model cards" section of BENCHMARKS.md)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.models import load_card, load_model_spec, param_count_errors  # noqa: E402

print("# Model cards: parameters computed from the config vs published\n")
print("Command: `python bench/model_params.py` (pure arithmetic, no weights).")
print("Tested in tests/test_models.py: every card within 1%.\n")
print("| card | arch | layers | hidden | computed params | published params | error | bf16 GiB | int8 GiB | int4 GiB | source |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for name, computed, published, error in param_count_errors():
    spec, card = load_model_spec(name), load_card(name)
    gib = [spec.weight_bytes(q) / 2**30 for q in ("none", "int8", "int4")]
    print(f"| {name} | {spec.architecture} | {spec.num_layers} | {spec.hidden_size} | {computed:,} | {published:,} | "
          f"{error:+.3%} | {gib[0]:.2f} | {gib[1]:.2f} | {gib[2]:.2f} | {card['sources']['published_params']} |")
worst = max(param_count_errors(), key=lambda row: abs(row[3]))
print(f"\nlargest absolute error: {worst[0]} {worst[3]:+.3%}")
