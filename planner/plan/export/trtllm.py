"""TensorRT-LLM: an LLM-API YAML (trtllm-serve --config / --extra_llm_api_options, or LLM(**yaml)).

Field names from tensorrt_llm/llmapi/llm_args.py (DecodingBaseConfig, DraftTargetDecodingConfig,
NGramDecodingConfig), TensorRT-LLM 1.3.0rc27 to 1.4.0rc1 — sources in profiles/engines.yaml:
- speculative_config.decoding_type is "Draft_Target" (with speculative_model) or "NGram"
  (with max_matching_ngram_size), max_draft_len the largest draft;
- draft_len_schedule maps inclusive upper batch-size bounds to draft lengths: {4: 4, 8: 2}
  drafts 4 at batch 1-4, 2 at 5-8 and 0 above 8; its smallest key must map to
  max_draft_len and no length may exceed it.
"""

from __future__ import annotations

import yaml

from planner.plan.export._header import comment_block
from planner.plan.export._resolve import Resolved
from planner.plan.schema import Plan

SUFFIX = ".yaml"


def _schedule(resolved: Resolved) -> dict[int, int]:
    """Upper bound -> draft length; trailing zero ranges are left to TensorRT-LLM's implicit 0."""
    first = resolved.table[0][2]
    schedule = {batch_max: min(gamma, first) for _, batch_max, gamma in resolved.table}
    while len(schedule) > 1 and schedule[max(schedule)] == 0:
        del schedule[max(schedule)]
    return schedule


def dropped(resolved: Resolved, info, version) -> tuple[str, ...]:
    notes = []
    if resolved.table and max(g for _, _, g in resolved.table) > resolved.table[0][2]:
        notes.append("draft lengths above the smallest batch range's were capped to it "
                     "(TensorRT-LLM requires the smallest key to hold max_draft_len)")
    if resolved.decoding.method == "draft_model" and resolved.decoding.draft_quant != "none":
        notes.append(f"draft quantization {resolved.decoding.draft_quant}: the LLM API quantizes no draft model")
    return tuple(notes)


def speculative_config(resolved: Resolved) -> dict | None:
    d = resolved.decoding
    if d.method == "autoregressive":
        return None
    max_draft_len = resolved.table[0][2] if resolved.table else d.gamma
    if d.method == "draft_model":
        config = {"decoding_type": "Draft_Target", "max_draft_len": max_draft_len,
                  "speculative_model": d.draft_model}
    else:  # prompt_lookup
        config = {"decoding_type": "NGram", "max_draft_len": max_draft_len,
                  "max_matching_ngram_size": d.ngram}
    if resolved.table:
        config["draft_len_schedule"] = _schedule(resolved)
    return config


def render(plan: Plan, resolved: Resolved, version: str | None, header: list[str]) -> str:
    max_batch = max((row[1] for row in resolved.table), default=plan.constraints.batch_size)
    body: dict = {"backend": "pytorch", "max_batch_size": max_batch, "max_seq_len": plan.constraints.context}
    config = speculative_config(resolved)
    if config is not None:
        body["speculative_config"] = config
    return comment_block(header) + yaml.safe_dump(body, sort_keys=False)
