"""transformers: a runnable Python file that loads the models and runs assisted `generate()`.

transformers reads the draft length and the confidence threshold from the ASSISTANT
model's generation_config (for early exit, the model's own), not from generate()'s
arguments (generation/candidate_generator.py, 4.46.0 to 5.24.0), and fills what is unset
with its defaults (20 tokens, threshold 0.4). So the file sets num_assistant_tokens =
gamma, schedule "constant" and threshold 0 there; prompt_lookup_num_tokens,
max_matching_ngram_size and assistant_early_exit are generate() arguments. Greedy with one
beam: assisted generation's lossless path, batch size 1 only, so no schedule is written.
"""

from __future__ import annotations

from planner.plan.export._launch import Launch
from planner.plan.export._resolve import Resolved
from planner.plan.export._shell import comment_block
from planner.plan.export.engines import EngineInfo, FieldTable
from planner.plan.schema import Plan

SUFFIX = ".py"
COMPOSE_ENV: dict[str, str] = {}
DRAFT_FIELDS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


def dropped(resolved: Resolved, table: FieldTable) -> tuple[str, ...]:
    if resolved.decoding.method == "draft_model" and resolved.decoding.draft_quant != "none":
        return (f"draft quantization {resolved.decoding.draft_quant}: quantize the assistant when loading it",)
    return ()


def drafter_settings(resolved: Resolved) -> dict:
    """What goes on the drafting model's generation_config."""
    d = resolved.decoding
    if d.method not in ("draft_model", "early_exit"):
        return {}
    return dict(zip(DRAFT_FIELDS, (d.gamma, "constant", 0.0)))


def generate_kwargs(resolved: Resolved) -> dict:
    d = resolved.decoding
    kwargs: dict = {"do_sample": False, "num_beams": 1}
    if d.method == "prompt_lookup":
        kwargs.update(prompt_lookup_num_tokens=d.gamma, max_matching_ngram_size=d.ngram)
    elif d.method == "early_exit":
        kwargs.update(assistant_early_exit=d.exit_layer)
    return kwargs


def _load(name: str, source: str, dtype_kwarg: str) -> str:
    return f'    {name} = AutoModelForCausalLM.from_pretrained({source}, {dtype_kwarg}="auto").to(DEVICE)\n'


def render(plan: Plan, resolved: Resolved, launch: Launch, info: EngineInfo, table: FieldTable,
           header: list[str]) -> str:
    d = resolved.decoding
    dtype_kwarg = "dtype" if "dtype" in table.fields else "torch_dtype"
    drafter = {"draft_model": "assistant", "early_exit": "model"}.get(d.method)
    lines = ["#!/usr/bin/env python3\n", comment_block(header),
             '"""Run the plan with transformers: MODEL=... DRAFT_MODEL=... PROMPT=... python3 this_file.py"""\n\n',
             "import os\n\n", "import torch\n", "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n",
             f'MODEL = os.environ.get("MODEL") or {plan.model.source!r}  # hub id or local checkpoint directory\n']
    if d.method == "draft_model":
        lines.append(f'DRAFT_MODEL = os.environ.get("DRAFT_MODEL") or {d.draft_model!r}\n')
    lines += ['PROMPT = os.environ.get("PROMPT") or "Speculative decoding drafts tokens and"\n',
              'MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS") or 128)\n',
              'DEVICE = os.environ.get("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")\n\n\n',
              "def main() -> None:\n", "    tokenizer = AutoTokenizer.from_pretrained(MODEL)\n",
              _load("model", "MODEL", dtype_kwarg)]
    kwargs = generate_kwargs(resolved)
    if d.method == "draft_model":
        lines.append(_load("assistant", "DRAFT_MODEL", dtype_kwarg))
    if drafter:
        lines.append("    # transformers reads these from the drafting model's generation_config, not from generate()\n")
        lines += [f"    {drafter}.generation_config.{key} = {value!r}\n" for key, value in drafter_settings(resolved).items()]
    arguments = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    assistant = ", assistant_model=assistant" if d.method == "draft_model" else ""
    lines += ['    inputs = tokenizer(PROMPT, return_tensors="pt").to(DEVICE)\n',
              f"    output = model.generate(**inputs{assistant}{arguments}, max_new_tokens=MAX_NEW_TOKENS)\n",
              '    print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n\n\n',
              'if __name__ == "__main__":\n', "    main()\n"]
    return "".join(lines)
