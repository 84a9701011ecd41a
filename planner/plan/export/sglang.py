"""SGLang: a `python -m sglang.launch_server` command line with speculative flags.

Flags from sglang's server arguments (0.5.5 server_args.py; 0.5.23 arg_groups/fields/spec.py
and speculative_hook.py — sources in profiles/engines.yaml):
- a separate draft model is algorithm STANDALONE: --speculative-num-steps gamma,
  --speculative-eagle-topk 1 (a chain, not a tree), --speculative-num-draft-tokens gamma+1
  (the verified window counts the last accepted token, as STANDALONE's own defaults 3/1/4 do);
- prompt lookup is algorithm NGRAM: --speculative-num-draft-tokens gamma+1 (its draft tree
  counts the root token) and --speculative-ngram-max-bfs-breadth 1 for a chain;
- --speculative-draft-model-quantization (0.5.23, absent in 0.5.5) names a method for a
  pre-quantized draft, not a bit width: a planned draft_quant is reported as dropped.
SGLang has no per-batch-size draft length: one gamma is written.
"""

from __future__ import annotations

import shlex

from planner.plan.export._header import comment_block
from planner.plan.export._resolve import Resolved
from planner.plan.schema import Plan

SUFFIX = ".sh"


def dropped(resolved: Resolved, info, version) -> tuple[str, ...]:
    d = resolved.decoding
    if d.method == "draft_model" and d.draft_quant != "none":
        return (f"draft quantization {d.draft_quant}: SGLang takes a quantization method for a "
                "pre-quantized draft, not a bit width",)
    return ()


def speculative_args(resolved: Resolved) -> list[str]:
    d = resolved.decoding
    if d.method == "autoregressive":
        return []
    window = str(d.gamma + 1)
    if d.method == "draft_model":
        return ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", d.draft_model,
                "--speculative-num-steps", str(d.gamma), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", window]
    return ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", window,
            "--speculative-ngram-max-bfs-breadth", "1"]


def render(plan: Plan, resolved: Resolved, version: str | None, header: list[str]) -> str:
    args = ["python", "-m", "sglang.launch_server", "--model-path", plan.model.source,
            "--context-length", str(plan.constraints.context),
            "--max-running-requests", str(plan.constraints.batch_size)]
    args += speculative_args(resolved)
    return "#!/bin/sh\n" + comment_block(header) + "exec " + shlex.join(args) + "\n"
