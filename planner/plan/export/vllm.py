"""vLLM: a `vllm serve` command line with its --speculative-config JSON.

Field names (SpeculativeConfig, vllm/config/speculative.py; schedule format in
vllm/v1/spec_decode/dynamic/utils.py), vLLM 0.25.0 to 0.33.0 — sources in
profiles/engines.yaml:
- method "draft_model" with `model`; its `quantization` names the method a pre-quantized
  draft checkpoint was made with, not a bit width, so a planned draft_quant is dropped;
  method "ngram" with prompt_lookup_min/max (the n-gram window);
- num_speculative_tokens is the startup maximum; num_speculative_tokens_per_batch_size
  is a list of [batch_min, batch_max, K], inclusive, first range starting at 1, K = 0
  turning speculation off, gaps inheriting the previous K.
"""

from __future__ import annotations

import json
import shlex

from planner.plan.export._header import comment_block
from planner.plan.export._resolve import Resolved
from planner.plan.schema import Plan

SUFFIX = ".sh"


def dropped(resolved: Resolved, info, version) -> tuple[str, ...]:
    if resolved.decoding.method == "draft_model" and resolved.decoding.draft_quant != "none":
        return (f"draft quantization {resolved.decoding.draft_quant}: vLLM's `quantization` names the "
                "method of a pre-quantized draft checkpoint; quantize the draft first and add it",)
    return ()


def speculative_config(resolved: Resolved) -> dict | None:
    d = resolved.decoding
    if d.method == "autoregressive":
        return None
    config: dict = {"num_speculative_tokens": d.gamma}
    if d.method == "draft_model":
        config.update(method="draft_model", model=d.draft_model)
    else:  # prompt_lookup
        config.update(method="ngram", prompt_lookup_min=1, prompt_lookup_max=d.ngram)
    if resolved.table:
        table = [list(row) for row in resolved.table]
        table[0][0] = 1  # vLLM requires the first range to start at batch size 1
        config["num_speculative_tokens_per_batch_size"] = table
    return config


def render(plan: Plan, resolved: Resolved, version: str | None, header: list[str]) -> str:
    max_seqs = max((row[1] for row in resolved.table), default=plan.constraints.batch_size)
    args = ["vllm", "serve", plan.model.source, "--max-model-len", str(plan.constraints.context),
            "--max-num-seqs", str(max_seqs)]
    config = speculative_config(resolved)
    if config is not None:
        args += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
    return "#!/bin/sh\n" + comment_block(header) + "exec " + shlex.join(args) + "\n"
