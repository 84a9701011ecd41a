"""Benchmark (a): autoregressive decoding's share of the memory bandwidth.

utilisation = tokens/s x weight bytes / read bandwidth, for a random-weight model of the
given shape (Llama-3-8B on a GPU, tiny on CPU). The read bandwidth is measured here by
summing a large buffer, or given with --bandwidth-gbps (a profile's measured figure).

    python bench/runtime_decode.py --out bench/results/runtime_decode.json
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


def read_bandwidth_gbps(device, gib: float) -> float:
    import torch

    x = torch.ones(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        x.sum()
    best = float("inf")
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return x.numel() * 2 / best / 1e9



def main() -> None:
    parser = base_parser(__doc__, tokens=256)
    parser.add_argument("--bandwidth-gbps", type=float, default=None)
    args = parser.parse_args()

    import torch

    from _runtime_shapes import default_shape, llama_config
    from planner.runtime.decode import generate
    from planner.runtime.drafters import Autoregressive
    from planner.runtime.load import random_target, resolve_device
    from planner.runtime.memory import spec_from_config

    device = resolve_device(args.device)
    shape = args.shape or default_shape(device)
    config = llama_config(shape)
    target = random_target(config, device=device, max_seq_len=args.tokens + 64)
    dtype = "bf16" if target.decoder.dtype == torch.bfloat16 else "fp32"
    prompt = list(range(10, 42))
    generate(target, Autoregressive(), prompt, max_new_tokens=16)  # compile / capture, warm caches
    run = generate(target, Autoregressive(), prompt, max_new_tokens=args.tokens)
    tokens_per_s = run.decode_tokens / run.decode_s
    spec = spec_from_config(config)
    weight_bytes = spec.weight_bytes("none", dtype) - spec.embedding_bytes(dtype)  # decoding reads one embedding row
    bandwidth = args.bandwidth_gbps or read_bandwidth_gbps(device, 4.0 if device.type == "cuda" else 0.5)
    result = {
        "benchmark": "runtime autoregressive bandwidth utilisation",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": shape, "dtype": dtype, "compiled": target.compiled, "tokens": run.decode_tokens,
        "tokens_per_s": tokens_per_s, "weight_gb": weight_bytes / 1e9, "read_bandwidth_gbps": bandwidth,
        "utilisation": tokens_per_s * weight_bytes / (bandwidth * 1e9),
    }
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
