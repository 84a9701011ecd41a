"""Benchmark (b): each method's measured iteration time against planner.perf's analytical
prediction from the device's profile (`--profile FILE`, default: measured now with
`profile_device(quick=True)`), and beside the same iteration formula evaluated on forward
times measured in this run (draft + verify), which separates formula error from cost-model error.

    python bench/runtime_methods.py --out bench/results/runtime_methods.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runtime_shapes import base_parser, sync  # noqa: E402
from planner._files import write_atomic  # noqa: E402

GAMMA = 4


def forward_ms(target, tokens: int, layers, repeats: int = 20) -> float:
    import torch

    x = torch.full((1, tokens), 7, device=target.device)
    pos = target.positions(64, tokens)
    for _ in range(3):
        target.step(x, pos, layers)
    sync(target.device)
    start = time.perf_counter()
    for _ in range(repeats):
        target.step(x, pos, layers)
    sync(target.device)
    return 1000 * (time.perf_counter() - start) / repeats



def main() -> None:
    parser = base_parser(__doc__, tokens=128)
    parser.add_argument("--profile", help="profile YAML of this device (default: measure it now)")
    args = parser.parse_args()

    from _runtime_shapes import default_shape, llama_config
    from planner.runtime import drafters
    from planner.runtime.adapter import untrained_draft
    from planner.runtime.decode import generate
    from planner.runtime.load import random_target, resolve_device

    device = resolve_device(args.device)
    config = llama_config(args.shape or default_shape(device))
    draft_config = llama_config("tiny")
    seq = args.tokens + 128
    target = random_target(config, device=device, max_seq_len=seq)
    draft = random_target(draft_config, device=device, max_seq_len=seq, seed=1)
    L = target.num_layers
    skip = tuple(range(L // 4, 3 * L // 4))
    kept = tuple(i for i in range(L) if i not in skip)
    exit_layer = L // 2
    t_all_1, t_verify = forward_ms(target, 1, None), forward_ms(target, GAMMA + 1, None)
    s3d_key = untrained_draft(target.decoder, skip)  # a rank-8 adapter's cost; it drafts like plain layer skipping
    t_kept_1, t_kept_g = forward_ms(target, 1, kept), forward_ms(target, GAMMA, s3d_key)
    t_lower_1 = forward_ms(target, 1, tuple(range(exit_layer)))
    t_upper_v = forward_ms(target, GAMMA + 1, tuple(range(exit_layer, L)))
    t_draft_1 = forward_ms(draft, 1, None)
    methods = {
        "autoregressive": (drafters.Autoregressive(), t_all_1),
        "layer_skip": (drafters.LayerSkip(target, GAMMA, skip), GAMMA * t_kept_1 + t_verify),
        "early_exit": (drafters.EarlyExit(target, GAMMA, exit_layer), GAMMA * t_lower_1 + t_lower_1 + t_upper_v),
        "s3d": (drafters.S3D(target, GAMMA, s3d_key, target.vocab_size), t_kept_g + t_verify),
        "draft_model": (drafters.DraftModel(draft, GAMMA), GAMMA * t_draft_1 + t_verify),
        "prompt_lookup": (drafters.PromptLookup(target, GAMMA, 3), t_verify),
    }
    prompt = list(range(10, 42))
    analytical = analytical_ms(config, draft_config, args.profile, device, skip, exit_layer, context=len(prompt) + args.tokens // 2)
    rows = []
    for name, (drafter, predicted_ms) in methods.items():
        generate(target, drafter, prompt, max_new_tokens=16)
        run = generate(target, drafter, prompt, max_new_tokens=args.tokens)
        measured_ms = 1000 * run.decode_s / run.iterations
        rows.append({"method": name, "gamma": drafter.gamma, "iteration_ms": measured_ms, "predicted_ms": predicted_ms,
                     "error": measured_ms / predicted_ms - 1, "analytical_ms": analytical[name],
                     "analytical_error": measured_ms / analytical[name] - 1,
                     "tokens_per_iteration": run.decode_tokens / run.iterations})
    result = {"benchmark": "runtime iteration time per method", "device": str(device), "compiled": target.compiled,
              "shape": args.shape or default_shape(device), "rows": rows}
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['method']:15s} measured {row['iteration_ms']:8.3f} ms  formula {row['predicted_ms']:8.3f} ms "
              f"{100 * row['error']:+6.1f}%  planner.perf {row['analytical_ms']:8.3f} ms {100 * row['analytical_error']:+6.1f}%")


def analytical_ms(config, draft_config, profile_path, device, skip, exit_layer, *, context: int) -> dict:
    """planner.perf's iteration time per method, from the device's profile."""
    from planner.hardware import load_profile, profile_device
    from planner.perf import predict
    from planner.plan import Decoding
    from planner.runtime.memory import spec_from_config

    profile = load_profile(profile_path) if profile_path else profile_device(str(device), quick=True)
    spec, draft_spec = spec_from_config(config), spec_from_config(draft_config)
    decodings = {
        "autoregressive": Decoding("autoregressive"),
        "layer_skip": Decoding("layer_skip", gamma=GAMMA, skip_layers=skip),
        "early_exit": Decoding("early_exit", gamma=GAMMA, exit_layer=exit_layer),
        "s3d": Decoding("s3d", gamma=GAMMA, skip_layers=skip),
        "draft_model": Decoding("draft_model", gamma=GAMMA, draft_model="tiny"),
        "prompt_lookup": Decoding("prompt_lookup", gamma=GAMMA),
    }
    return {name: predict(spec, profile, d, context=context, draft_spec=draft_spec).iteration_ms for name, d in decodings.items()}


if __name__ == "__main__":
    main()
