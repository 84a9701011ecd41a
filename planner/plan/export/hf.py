"""transformers: keyword arguments for `model.generate()` plus the models to load.

Field names from transformers/generation/configuration_utils.py, 4.46.0 to 5.23.0 (sources in
profiles/engines.yaml). Defaults changed between releases (4.46: num_assistant_tokens 20,
schedule "constant", assistant_confidence_threshold 0.4; 5.x: None, resolved inside
generate()), so every speculative field is written explicitly:
- draft_model: `assistant_model` is an object, not a keyword value: the file names it under
  "assistant_model" and the caller loads it and passes it; num_assistant_tokens = gamma with
  schedule "constant" and confidence threshold 0 so exactly gamma tokens are drafted;
- prompt_lookup: prompt_lookup_num_tokens = gamma, max_matching_ngram_size = n-gram size;
- early_exit: assistant_early_exit = exit layer (from 4.47.0).
Assisted generation runs batch size 1 only, so no schedule is written.
"""

from __future__ import annotations

import json

from planner.plan.export._resolve import Resolved
from planner.plan.schema import Plan

SUFFIX = ".json"


def dropped(resolved: Resolved, info, version) -> tuple[str, ...]:
    if resolved.decoding.method == "draft_model" and resolved.decoding.draft_quant != "none":
        return (f"draft quantization {resolved.decoding.draft_quant}: quantize the assistant when loading it",)
    return ()


def generate_kwargs(resolved: Resolved) -> dict:
    d = resolved.decoding
    # Greedy and one beam: assisted generation's lossless greedy path.
    kwargs: dict = {"do_sample": False, "num_beams": 1}
    if d.method == "draft_model":
        kwargs.update(num_assistant_tokens=d.gamma, num_assistant_tokens_schedule="constant",
                      assistant_confidence_threshold=0.0)
    elif d.method == "prompt_lookup":
        kwargs.update(prompt_lookup_num_tokens=d.gamma, max_matching_ngram_size=d.ngram)
    elif d.method == "early_exit":
        kwargs.update(assistant_early_exit=d.exit_layer, num_assistant_tokens=d.gamma,
                      num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
    return kwargs


def render(plan: Plan, resolved: Resolved, version: str | None, header: list[str]) -> str:
    d = resolved.decoding
    document = {
        "specplan_header": header,
        "model": plan.model.source,
        "assistant_model": d.draft_model if d.method == "draft_model" else None,
        "generate_kwargs": generate_kwargs(resolved),
    }
    return json.dumps(document, indent=2) + "\n"
