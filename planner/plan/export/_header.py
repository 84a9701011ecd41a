"""The header every export carries: which plan, which GPU, what was written, for which engine
versions, read from where, and what was dropped. Each line becomes one comment line
(control characters escaped), whatever the plan's free text holds."""

from __future__ import annotations

from packaging.version import Version

from planner.plan.export._launch import Launch
from planner.plan.export._resolve import Resolved
from planner.plan.export.engines import EngineInfo, FieldTable
from planner.plan.schema import Plan


def setup_text(resolved: Resolved) -> str:
    d = resolved.decoding
    if d.method == "autoregressive":
        return f"autoregressive (no speculation), target quantization {d.quant}"
    tree = f", a tree of {d.num_draft_tokens} tokens, topk {d.topk}" if d.topk > 1 else ""
    head = f"{d.method} (head {d.draft_model or 'the model own MTP layers'}{tree})"
    what = {"draft_model": f"draft_model ({d.draft_model}, draft quantization {d.draft_quant})",
            "prompt_lookup": f"prompt_lookup (n-grams up to {d.ngram})",
            "early_exit": f"early_exit (draft: layers below {d.exit_layer})"}.get(d.method, head)
    if resolved.table:
        lengths = ", ".join(f"{lo}-{hi}: {gamma}" for lo, hi, gamma in resolved.table)
        return f"{what}, target quantization {d.quant}; draft length by batch size {lengths}"
    return f"{what}, target quantization {d.quant}; draft length {d.gamma}"


def written_for(info: EngineInfo, table: FieldTable, version: str | None, method: str) -> str:
    if version is not None:
        return f"{info.display} {version}"
    first = info.features.get(method)
    if first is not None and Version(first) > Version(table.version_min):
        return f"{info.display} {first} to {table.version_max}"
    return table.range_text(info.display)


def _serving(plan: Plan, launch: Launch, serves: bool) -> str:
    if not serves:
        return f"runs: one sequence (assisted generation is batch size 1), context {plan.constraints.context} tokens"
    return (f"serving: up to {launch.max_batch} sequences at once, context {plan.constraints.context} tokens, "
            f"tensor parallel {launch.tensor_parallel}; memory: {launch.memory_note}")


def header_lines(plan: Plan, info: EngineInfo, table: FieldTable, version: str | None, resolved: Resolved,
                 launch: Launch, plan_label: str, *, serves: bool) -> list[str]:
    """The header's lines; `serves`: the export is a server (concurrency and memory apply)."""
    p = plan.prediction
    lines = [
        f"specplan export for {info.display}",
        f"plan: {plan_label} (model {plan.model.name}, {plan.model.source})",
        f"GPU: {plan.hardware.device_name} (profile {plan.hardware.profile})",
        f"set-up: {setup_text(resolved)}",
        _serving(plan, launch, serves),
        f"predicted: {p.tokens_per_s:.1f} tokens/s per sequence ({p.basis}) at batch size {plan.constraints.batch_size}",
        f"written for: {written_for(info, table, version, resolved.decoding.method)}",
    ]
    lines += [f"source: {source}" for source in table.sources]
    lines += [f"dropped: {note}" for note in resolved.dropped]
    return lines
