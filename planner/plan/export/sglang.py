"""SGLang: a `sglang serve` script with speculative flags.

Flags from the field table in planner/profiles/engines.yaml (sglang 0.5.5 and 0.5.23 wheels);
`sglang serve` is the entrypoint in the whole range (0.5.23 warns on the older
`python -m sglang.launch_server`):
- a separate draft model is algorithm STANDALONE: --speculative-num-steps gamma,
  --speculative-eagle-topk 1 (a chain, not a tree), --speculative-num-draft-tokens gamma+1
  (the verified window counts the last accepted token, as STANDALONE's own defaults 3/1/4 do);
- prompt lookup is algorithm NGRAM: --speculative-num-draft-tokens gamma+1 (its draft tree
  counts the root token) and --speculative-ngram-max-bfs-breadth 1 for a chain;
- the draft's quantization: from 0.5.7 --speculative-draft-model-quantization, always written
  because left out the draft takes the target's --quantization (fp8, or unquant for none);
  before 0.5.7 the draft is quantized as the target, so a plan quantizing the two apart is
  refused for those versions.
- a learned head is algorithm EAGLE (EAGLE-1/2 heads; the model's own MTP layers run as
  EAGLE too, with no draft path) or EAGLE3: --speculative-num-steps gamma (the tree's depth),
  --speculative-eagle-topk topk, --speculative-num-draft-tokens the verified tokens (gamma + 1
  for a chain); a head of its own takes the draft's quantization flag as a draft model does;
SGLang has no per-batch-size draft length: one gamma is written.
"""

from __future__ import annotations

from planner.plan.export._launch import Launch
from planner.plan.export._resolve import ExportError, Resolved
from planner.plan.export._shell import Ref, script, serving_variables, words
from planner.plan.export.engines import EngineInfo, FieldTable
from planner.plan.schema import Plan

SUFFIX = ".sh"
COMPOSE_ENV: dict[str, str] = {}


DRAFT_QUANT_FLAG = "--speculative-draft-model-quantization"


def dropped(resolved: Resolved, table: FieldTable) -> tuple[str, ...]:
    return ()


def _draft_quant_args(resolved: Resolved, table: FieldTable) -> list:
    """The draft's quantization flag; before it existed, the target's --quantization was the draft's.

    Raises:
        ExportError: a draft quantized apart from the target, for versions without the flag.
    """
    d = resolved.decoding
    if DRAFT_QUANT_FLAG in table.fields:
        return [DRAFT_QUANT_FLAG, "unquant" if d.draft_quant == "none" else d.draft_quant]
    if d.draft_quant != d.quant:
        raise ExportError(f"SGLang {table.version_min}-{table.version_max} quantizes the draft as the target "
                          f"({d.quant}), not {d.draft_quant}: export for `engine_version` 0.5.7 or later")
    return []


def speculative_args(resolved: Resolved, table: FieldTable) -> list:
    """SGLang's speculative flags for the resolved set-up, as `table`'s version range names them.

    Raises:
        ExportError: as `_draft_quant_args`.
    """
    d = resolved.decoding
    if d.method == "autoregressive":
        return []
    window = str(d.gamma + 1)
    if d.method in ("eagle", "eagle3", "mtp"):
        args = ["--speculative-algorithm", "EAGLE3" if d.method == "eagle3" else "EAGLE"]
        args += ["--speculative-num-steps", str(d.gamma), "--speculative-eagle-topk", str(d.topk),
                 "--speculative-num-draft-tokens", str(d.num_draft_tokens or d.gamma + 1)]
        if d.draft_model:  # a head of its own is loaded as a draft model, quantized as one
            args[2:2] = ["--speculative-draft-model-path", Ref("DRAFT_MODEL")]
            args += _draft_quant_args(resolved, table)
        return args
    if d.method == "draft_model":
        return ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", Ref("DRAFT_MODEL"),
                "--speculative-num-steps", str(d.gamma), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", window, *_draft_quant_args(resolved, table)]
    return ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", window,
            "--speculative-ngram-max-bfs-breadth", "1"]


def render(plan: Plan, resolved: Resolved, launch: Launch, info: EngineInfo, table: FieldTable,
           header: list[str]) -> str:
    d = resolved.decoding
    variables = serving_variables(plan.model.source, d.draft_model if d.method in ("draft_model", "eagle", "eagle3") else None,
                                  info.port, launch.tensor_parallel)
    args = ["sglang", "serve", "--model-path", Ref("MODEL"), "--host", Ref("HOST"), "--port", Ref("PORT"),
            "--tp-size", Ref("TP")]
    if launch.memory_share is not None:
        variables.append(("MEM_FRACTION_STATIC", f"{launch.memory_share:.2f}",
                          "share of the GPU's memory for weights and KV cache"))
        args += ["--mem-fraction-static", Ref("MEM_FRACTION_STATIC")]
    args += ["--context-length", str(plan.constraints.context), "--max-running-requests", str(launch.max_batch)]
    if plan.decoding.quant == "fp8":  # W8A8 fp8 applied by the engine at load
        args += ["--quantization", "fp8"]
    args += speculative_args(resolved, table)
    return script(header, variables, "exec " + words(args) + "\n")
