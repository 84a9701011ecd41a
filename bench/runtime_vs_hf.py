"""Benchmark (c): the runtime's speculative methods against transformers' generate with its
own speculative options (assistant model, prompt lookup, early exit), same model, prompt
and device; every output is compared with the runtime's plain greedy output.

    python bench/runtime_vs_hf.py --out bench/results/runtime_vs_hf.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runtime_shapes import base_parser, sync  # noqa: E402
from planner._files import write_atomic  # noqa: E402

GAMMA = 4


def _save(config, path: str, dtype, seed: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(path)
    return path


def _hf_run(model, prompt, new_tokens: int, **kwargs):
    import torch

    ids = torch.tensor([prompt], device=model.device)
    model.generate(ids, do_sample=False, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
    sync(model.device)
    start = time.perf_counter()
    out = model.generate(ids, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    sync(model.device)
    return out[0, len(prompt):].tolist(), new_tokens / (time.perf_counter() - start)



def main() -> None:
    parser = base_parser(__doc__, tokens=96)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from _runtime_shapes import default_shape, llama_config
    from planner.runtime import drafters
    from planner.runtime.decode import generate
    from planner.runtime.load import default_dtype, load_target, resolve_device

    device = resolve_device(args.device)
    dtype = default_dtype(device)
    shape = args.shape or default_shape(device)
    config, draft_config = llama_config(shape), llama_config("tiny")
    draft_config.vocab_size = config.vocab_size
    tmp = tempfile.mkdtemp(prefix="specplan-bench-")
    target_dir = _save(config, f"{tmp}/target", dtype, 0)
    draft_dir = _save(draft_config, f"{tmp}/draft", dtype, 1)
    prompt = [11, 12, 13, 14, 15, 11, 12, 13, 20, 21] * 3
    seq = len(prompt) + args.tokens + GAMMA + 8
    target = load_target(target_dir, device=device, max_seq_len=seq)
    draft = load_target(draft_dir, device=device, max_seq_len=seq)
    L = target.num_layers
    ours = {
        "autoregressive": drafters.Autoregressive(),
        "layer_skip": drafters.LayerSkip(target, GAMMA, tuple(range(L // 4, 3 * L // 4))),
        "early_exit": drafters.EarlyExit(target, GAMMA, L // 2),
        "draft_model": drafters.DraftModel(draft, GAMMA),
        "prompt_lookup": drafters.PromptLookup(target, GAMMA, 3),
    }
    rows, reference = [], None
    for name, drafter in ours.items():
        generate(target, drafter, prompt, max_new_tokens=8)
        run = generate(target, drafter, prompt, max_new_tokens=args.tokens)
        reference = reference or run.tokens
        rows.append({"engine": "specplan", "method": name, "tokens_per_s": run.decode_tokens / run.decode_s,
                     "identical_to_greedy": run.tokens == reference})
    del target, draft
    hf = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype).to(device)
    assistant = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=dtype).to(device)
    hf_options = {
        "autoregressive (dynamic cache)": {},
        "autoregressive (static cache)": {"cache_implementation": "static"},
        "assistant_model": {"assistant_model": assistant},
        "prompt_lookup": {"prompt_lookup_num_tokens": GAMMA},
        "early_exit": {"assistant_early_exit": L // 2},
    }
    for name, kwargs in hf_options.items():
        try:
            tokens, tokens_per_s = _hf_run(hf, prompt, args.tokens, **kwargs)
            rows.append({"engine": "transformers", "method": name, "tokens_per_s": tokens_per_s,
                         "identical_to_greedy": tuple(tokens) == reference})
        except Exception as exc:  # a failing engine option is a result to record, not a crash
            rows.append({"engine": "transformers", "method": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        if "tokens_per_s" in row:
            row["speedup_vs_specplan_ar"] = row["tokens_per_s"] / base
    result = {"benchmark": "runtime vs transformers generate", "device": str(device), "shape": shape,
              "compiled": device.type == "cuda", "tokens": args.tokens, "rows": rows}
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")
    for row in rows:
        figures = f"{row['tokens_per_s']:9.1f} tok/s  x{row['speedup_vs_specplan_ar']:.2f}  identical={row['identical_to_greedy']}" if "tokens_per_s" in row else row["error"]
        print(f"{row['engine']:12s} {row['method']:32s} {figures}")


if __name__ == "__main__":
    main()
