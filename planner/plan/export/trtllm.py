"""TensorRT-LLM: a script that writes the LLM-API options YAML and runs `trtllm-serve` on it.

Names from the field tables in planner/profiles/engines.yaml:
- speculative_config.decoding_type is "Draft_Target" (with speculative_model) or "NGram"
  (with max_matching_ngram_size), max_draft_len the largest draft: the Literal tags of
  DraftTargetDecodingConfig and NGramDecodingConfig in llm_args.py, where the union is
  discriminated on decoding_type and "DraftTarget" (the docs' name) is no alias;
- from 1.3.0rc27 (Eagle3DecodingConfig and MTPDecodingConfig reference pages, 1.3.0rc27 and
  1.4.0rc1): "Eagle3" with speculative_model (the EAGLE-3 head) and "MTP" with
  num_nextn_predict_layers equal to max_draft_len (the target's own MTP layers; the two must
  match), each a chain of the plan's gamma. Their default one-model path takes no dynamic
  draft length, so they get no draft_len_schedule (a plan for trtllm holds one length for them;
  an older plan's schedule is reduced to its batch size's length and the header says so); EAGLE-1/2 heads and a separate MTP head are refused;
- draft_len_schedule maps batch sizes to draft lengths, and what a key means depends on
  the version: in 1.2 a key is the first batch size of its range (key 1 required, the last
  length holds for every larger batch); from 1.3.0rc27 a key is the last batch size of its
  range (batches above the largest key draft 0). Either way the smallest key holds
  max_draft_len, so longer drafts at larger batch sizes are capped to it.
The YAML is written by the script (a here-document), so the draft model stays a variable.
"""

from __future__ import annotations

import yaml

from planner.plan.export._launch import Launch, free_memory_fraction
from planner.plan.export._resolve import ExportError, Resolved
from planner.plan.export._shell import Ref, script, serving_variables, words
from planner.plan.export.engines import EngineInfo, FieldTable
from planner.plan.schema import Plan

SUFFIX = ".sh"
COMPOSE_ENV: dict[str, str] = {}


def _capped(resolved: Resolved) -> list[tuple[int, int, int]]:
    first = resolved.table[0][2]
    return [(lo, hi, min(gamma, first)) for lo, hi, gamma in resolved.table]


def draft_len_schedule(resolved: Resolved, reading: str) -> dict[int, int]:
    """The plan's (batch_min, batch_max, gamma) ranges as the keys `reading` expects."""
    rows = _capped(resolved)
    if reading == "lower_bound":  # a key starts its range; key 1 must exist
        schedule: dict[int, int] = {}
        for i, (lo, _, gamma) in enumerate(rows):
            if i == 0 or gamma != rows[i - 1][2]:
                schedule[1 if i == 0 else lo] = gamma
        return schedule
    # upper_bound: a key ends its range; runs of one length keep their last key; 0 above the largest key
    schedule = {hi: gamma for i, (_, hi, gamma) in enumerate(rows) if i + 1 == len(rows) or rows[i + 1][2] != gamma}
    while len(schedule) > 1 and schedule[max(schedule)] == 0:
        del schedule[max(schedule)]
    return schedule


def dropped(resolved: Resolved, table: FieldTable) -> tuple[str, ...]:
    notes = []
    if resolved.table and max(g for _, _, g in resolved.table) > resolved.table[0][2]:
        notes.append("draft lengths above the smallest batch range's were capped to it "
                     "(TensorRT-LLM requires the smallest key to hold max_draft_len)")
    if resolved.decoding.method == "draft_model" and resolved.decoding.draft_quant != "none":
        notes.append(f"draft quantization {resolved.decoding.draft_quant}: the LLM API quantizes no draft model")
    if resolved.decoding.method in ("eagle3", "mtp") and resolved.decoding.draft_tensor_parallel is not None:
        notes.append(f"the head's own tensor parallel {resolved.decoding.draft_tensor_parallel}: "
                     "the LLM API runs the head with the target's")
    return tuple(notes)


def _head_config(resolved: Resolved) -> dict:
    """Eagle3 or MTP, a chain of the plan's gamma.

    Raises:
        ExportError: an EAGLE-3 plan without its head, a separate MTP head, or a quantized head.
    """
    d = resolved.decoding
    if d.method == "mtp":
        if d.draft_model:
            raise ExportError(f"TensorRT-LLM runs MTP from the target checkpoint's own layers, not a separate head "
                              f"({d.draft_model}): plan mtp without `draft_model`, or export to vllm or sglang")
        return {"decoding_type": "MTP", "max_draft_len": d.gamma, "num_nextn_predict_layers": d.gamma}
    if not d.draft_model:
        raise ExportError("TensorRT-LLM's Eagle3 config needs the EAGLE-3 head's checkpoint: "
                          "the plan has no `draft_model`")
    if d.draft_quant != "none":
        raise ExportError(f"TensorRT-LLM cannot apply {d.draft_quant} weight quantization to the EAGLE-3 head")
    return {"decoding_type": "Eagle3", "max_draft_len": d.gamma, "speculative_model": d.draft_model}


def llm_api_options(resolved: Resolved, table: FieldTable) -> dict:
    """The YAML's content (the draft model written as it is in the plan).

    Raises:
        ExportError: as `_head_config`.
    """
    d = resolved.decoding
    if d.method == "autoregressive":
        return {}
    if d.method in ("eagle3", "mtp"):
        return {"speculative_config": _head_config(resolved)}
    max_draft_len = resolved.table[0][2] if resolved.table else d.gamma
    if d.method == "draft_model":
        config: dict = {"decoding_type": "Draft_Target", "max_draft_len": max_draft_len}
    else:  # prompt_lookup
        config = {"decoding_type": "NGram", "max_draft_len": max_draft_len, "max_matching_ngram_size": d.ngram}
    if resolved.table:
        config["draft_len_schedule"] = draft_len_schedule(resolved, table.draft_len_schedule)
    if d.method == "draft_model":
        config["speculative_model"] = d.draft_model
    return {"speculative_config": config}


def _write_options(options: dict) -> str:
    """Shell lines writing `options` to "$CONFIG"; speculative_model becomes "${DRAFT_MODEL}"."""
    config = dict(options["speculative_config"])
    draft = config.pop("speculative_model", None)
    text = yaml.safe_dump({"speculative_config": config}, sort_keys=False)
    assert not set(text) & set("$`\\"), text  # numbers and fixed names only: nothing the here-document expands
    if draft is not None:
        text += '  speculative_model: "${DRAFT_MODEL}"\n'
        guard = ('case $DRAFT_MODEL in *\\"*|*\\\\*) echo "DRAFT_MODEL must not contain quotes or backslashes '
                 '(it is written into a YAML string)" >&2; exit 2;; esac\n')
    else:
        guard = ""
    return guard + 'cat > "$CONFIG" <<EOF\n' + text + "EOF\n"


def render(plan: Plan, resolved: Resolved, launch: Launch, info: EngineInfo, table: FieldTable,
           header: list[str]) -> str:
    d = resolved.decoding
    if resolved.table:
        reading = {"lower_bound": "first", "upper_bound": "last"}[table.draft_len_schedule]
        header = header + [f"draft_len_schedule: each key is the {reading} batch size of its range in these versions"]
    variables = serving_variables(plan.model.source, d.draft_model if d.method in ("draft_model", "eagle3") else None,
                                  info.port, launch.tensor_parallel)
    args = ["trtllm-serve", Ref("MODEL"), "--host", Ref("HOST"), "--port", Ref("PORT"), "--backend", "pytorch",
            "--tp_size", Ref("TP"), "--max_batch_size", str(launch.max_batch),
            "--max_seq_len", str(plan.constraints.context)]
    if launch.memory_share is not None:
        fraction, note = free_memory_fraction(launch)
        header = header + [f"memory for TensorRT-LLM: {note}"]
        if fraction is not None:
            variables.append(("KV_CACHE_FREE_GPU_MEMORY_FRACTION", f"{fraction:.2f}",
                              "share of the memory left after the weights for the KV cache"))
            args += ["--kv_cache_free_gpu_memory_fraction", Ref("KV_CACHE_FREE_GPU_MEMORY_FRACTION")]
    options = llm_api_options(resolved, table)
    body = ""
    if options:
        body = '[ -n "${CONFIG:-}" ] || CONFIG=$(mktemp)  # where the LLM-API options YAML is written\n'
        body += _write_options(options)
        args += ["--extra_llm_api_options", Ref("CONFIG")]
    return script(header, variables, body + "exec " + words(args) + "\n")
