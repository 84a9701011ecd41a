"""The header every export carries: which plan, which GPU, which engine versions, what was dropped."""

from __future__ import annotations

from planner.plan.export._resolve import Resolved
from planner.plan.export.engines import EngineInfo
from planner.plan.schema import Plan


def header_lines(plan: Plan, info: EngineInfo, version: str | None, resolved: Resolved, plan_label: str) -> list[str]:
    d = resolved.decoding
    gamma = f", gamma {d.gamma}" if d.method != "autoregressive" else ""
    table = " (per batch size: see the table below)" if resolved.table else ""
    written_for = f"{info.display} {version}" if version else info.version_range
    lines = [
        f"specplan export for {info.display}",
        f"plan: {plan_label} (model {plan.model.name}, {plan.model.source})",
        f"GPU: {plan.hardware.device_name} (profile {plan.hardware.profile})",
        f"set-up: {d.method}{gamma}{table}, target quantization {d.quant}",
        f"predicted: {plan.prediction.tokens_per_s:.1f} tokens/s ({plan.prediction.basis}) at batch size {plan.constraints.batch_size}",
        f"written for: {written_for}",
    ]
    lines += [f"field names from: {source}" for source in info.sources]
    lines += [f"dropped: {note}" for note in resolved.dropped]
    return lines


def comment_block(lines: list[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)
