"""vLLM: a `vllm serve` script, every speculative key one `--speculative-config.KEY` word.

Names from the field table in planner/profiles/engines.yaml (vLLM 0.25.0 to 0.33.0 wheels):
- method "eagle", "eagle3", "medusa" with `model` (the head) and "mtp" (the model's own
  layers), `num_speculative_tokens` the chain's length, `draft_tensor_parallel_size` where the
  plan runs the head on fewer GPUs than the target (vLLM allows 1 or the target's);
- method "draft_model" with `model`; `quantization` fp8 where the plan quantizes the draft
  (the draft's ModelConfig quantizes an unquantized checkpoint at load, as --quantization
  fp8 does the target's); left out, an unquantized draft stays unquantized;
  method "ngram" with prompt_lookup_min/max (the n-gram window);
- num_speculative_tokens is the startup maximum; num_speculative_tokens_per_batch_size
  is a list of [batch_min, batch_max, K], inclusive, first range starting at 1, K = 0
  turning speculation off, gaps inheriting the previous K.
The dotted form keeps the draft model a shell variable instead of text inside JSON.
"""

from __future__ import annotations

import json

from planner.plan.export._launch import Launch
from planner.plan.export._resolve import Resolved
from planner.plan.export._shell import Ref, script, serving_variables, words
from planner.plan.export.engines import EngineInfo, FieldTable
from planner.plan.schema import HEAD_METHODS, Plan

SUFFIX = ".sh"
COMPOSE_ENV: dict[str, str] = {}


def dropped(resolved: Resolved, table: FieldTable) -> tuple[str, ...]:
    return ()


def speculative_config(resolved: Resolved) -> dict | None:
    d = resolved.decoding
    if d.method == "autoregressive":
        return None
    config: dict = {"num_speculative_tokens": d.gamma}
    if d.method == "draft_model":
        config.update(method="draft_model", model=d.draft_model)
        if d.draft_quant != "none":  # fp8: engines.yaml lets vLLM quantize a draft to nothing else
            config["quantization"] = d.draft_quant
    elif d.method in HEAD_METHODS:
        config["method"] = d.method
        if d.draft_model:
            config["model"] = d.draft_model
    else:  # prompt_lookup
        config.update(method="ngram", prompt_lookup_min=1, prompt_lookup_max=d.ngram)
    if d.draft_tensor_parallel is not None:
        config["draft_tensor_parallel_size"] = d.draft_tensor_parallel
    if resolved.table:
        table = [list(row) for row in resolved.table]
        table[0][0] = 1  # vLLM requires the first range to start at batch size 1
        config["num_speculative_tokens_per_batch_size"] = table
    return config


def _speculative_args(config: dict | None) -> list:
    args: list = []
    for key, value in (config or {}).items():
        if key == "model":
            value = Ref("DRAFT_MODEL")
        elif not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        args += [f"--speculative-config.{key}", value]
    return args


def render(plan: Plan, resolved: Resolved, launch: Launch, info: EngineInfo, table: FieldTable,
           header: list[str]) -> str:
    d = resolved.decoding
    variables = serving_variables(plan.model.source, d.draft_model if d.method in ("draft_model", *HEAD_METHODS) else None,
                                  info.port, launch.tensor_parallel)
    args = ["vllm", "serve", Ref("MODEL"), "--host", Ref("HOST"), "--port", Ref("PORT"),
            "--tensor-parallel-size", Ref("TP")]
    if launch.memory_share is not None:
        variables.append(("GPU_MEMORY_UTILIZATION", f"{launch.memory_share:.2f}", "share of the GPU's memory"))
        args += ["--gpu-memory-utilization", Ref("GPU_MEMORY_UTILIZATION")]
    args += ["--max-model-len", str(plan.constraints.context), "--max-num-seqs", str(launch.max_batch)]
    if plan.decoding.quant == "fp8":  # W8A8 fp8 applied by the engine at load
        args += ["--quantization", "fp8"]
    args += _speculative_args(speculative_config(resolved))
    return script(header, variables, "exec " + words(args) + "\n")
