"""How much one timing of the same decoding moves on this machine: autoregressive decoding of
the demo model's prompts 4-6 (autotune's calibration prompts), 32 tokens each, timed
`--repeats` times back to back on one loaded model after a warm-up; then the same for the demo
draft at gamma 4 interleaved with autoregressive, as autotune's calibration does, with the
per-round speedup.

    python bench/timing_noise.py --device cpu --out bench/results/timing_noise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from planner._files import write_atomic
    from planner.autotune import DEMO_DIR
    from planner.models import load_model_spec
    from planner.plan.schema import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction
    from planner.runtime import DecodingBench, read_prompts
    from planner.train.demo import DRAFT_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/timing_noise.json")
    args = parser.parse_args()

    prompts = read_prompts(DEMO_DIR / "prompts.jsonl")[3:6]
    spec = load_model_spec(str(DEMO_DIR))
    plan = Plan(  # only the model, context and quantization matter to compare_decodings
        model=ModelRef(name="demo", source=str(DEMO_DIR), num_layers=spec.num_layers, vocab_size=spec.vocab_size),
        hardware=HardwareRef(profile="this machine", device_name=args.device),
        decoding=Decoding(method="autoregressive"),
        prediction=Prediction(basis="analytical", tokens_per_s=0.0, speedup=1.0, tokens_per_iteration=1.0, acceptance=1.0,
                              target_latency_ms=0.0, draft_latency_ms=0.0, iteration_ms=0.0, vram_gib=0.0),
        constraints=Constraints(context=576),
    )
    bench = DecodingBench(plan, prompts, max_new_tokens=32, max_gamma=4, device=args.device)
    alone = [bench.compare([], rounds=1)[0].tokens_per_s for _ in range(args.repeats)]
    draft = Decoding(method="draft_model", gamma=4, draft_model=str(DEMO_DIR / DRAFT_DIR))
    paired = [bench.compare([draft], rounds=1) for _ in range(args.repeats)]
    result = {
        "device": args.device,
        "autoregressive_tokens_per_s": [round(t, 1) for t in alone],
        "autoregressive_spread": round(max(alone) / min(alone), 3),
        "interleaved_autoregressive_tokens_per_s": [round(p[0].tokens_per_s, 1) for p in paired],
        "interleaved_draft_model_gamma4_tokens_per_s": [round(p[1].tokens_per_s, 1) for p in paired],
        "interleaved_speedup": [round(p[1].speedup, 3) for p in paired],
        "interleaved_speedup_median": round(statistics.median(p[1].speedup for p in paired), 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
