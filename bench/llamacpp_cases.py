"""Print the llama.cpp field cases (tests/test_field_cases.py) with each prediction's error, and
the verify's cost over a one-token step, for BENCHMARKS.md.

    python bench/llamacpp_cases.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_field_cases import (  # noqa: E402
    PR10455_CONTEXT, PR10455_FIRST_RUN_TOK_S, PR10455_PLAIN_TOK_S, QWEN25_32B, _best_draft, _llamacpp,
)

from planner.hardware import load_profile  # noqa: E402
from planner.models import load_model_spec  # noqa: E402
from planner.models.architectures import spec_from_hf_config  # noqa: E402
from planner.perf import forward_latency_s, predict  # noqa: E402
from planner.plan import Decoding  # noqa: E402

# (case, target, draft, target quant, draft quant, context, published no-draft tok/s, published with draft tok/s)
CASES = [
    ("Qwen2.5-7B Q4_K_M + 0.5B Q8_0", "qwen2.5-7b", "qwen2.5-0.5b", "int4", "int8", 512, 205.4 / 1.50, 205.4),
    ("Qwen2.5-14B Q8_0 + 0.5B Q4_K_M", "qwen2.5-14b", "qwen2.5-0.5b", "int8", "int4", 512, 137.5 / 2.86, 137.5),
    ("Qwen2.5-32B Q4_K_M + 1.5B Q4_K_M", "qwen2.5-32b", "qwen2.5-1.5b", "int4", "int4", 512, 91.0 / 2.56, 91.0),
    ("PR 10455: Qwen2.5-Coder-32B Q4_K_M + 0.5B Q4_K_M, 8.5k context", "qwen2.5-32b", "qwen2.5-0.5b", "int4", "int4",
     PR10455_CONTEXT, PR10455_PLAIN_TOK_S, PR10455_FIRST_RUN_TOK_S),
]


def _spec(name):
    return spec_from_hf_config(QWEN25_32B, name) if name == "qwen2.5-32b" else load_model_spec(name)


profile = load_profile("rtx3090")
ex = _llamacpp(profile)
print("| case (llama.cpp, RTX 3090) | verify 17 / 1 token | no draft tok/s (published) | error | best gamma | "
      "tok/s (published) | error | speedup (published) | error |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for case, target, draft, quant, draft_quant, context, plain_pub, spec_pub in CASES:
    t, d = _spec(target), load_model_spec(draft)
    one, verify = (forward_latency_s(t, profile, new_tokens=n, context=context, quant=quant, execution=ex) for n in (1, 17))
    plain = predict(t, profile, Decoding("autoregressive", quant=quant), context=context, execution=ex)
    best = _best_draft(t, d, profile, quant=quant, draft_quant=draft_quant, context=context)
    gamma = next(g for g in range(1, 17) if predict(t, profile, Decoding(
        "draft_model", gamma=g, quant=quant, draft_model=d.name, draft_quant=draft_quant), context=context, draft_spec=d,
        execution=ex).tokens_per_s == best.tokens_per_s)
    speedup_pub = spec_pub / plain_pub
    print(f"| {case} | {verify / one:.2f}x | {plain.tokens_per_s:.1f} ({plain_pub:.1f}) | "
          f"{plain.tokens_per_s / plain_pub - 1:+.1%} | {gamma} | {best.tokens_per_s:.1f} ({spec_pub:.1f}) | "
          f"{best.tokens_per_s / spec_pub - 1:+.1%} | {best.speedup:.2f}x ({speedup_pub:.2f}x) | {best.speedup / speedup_pub - 1:+.1%} |")
