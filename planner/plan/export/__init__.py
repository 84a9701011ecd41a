"""Exporters: a plan written as the file each serving engine takes.

    export_plan(plan, "vllm") -> Export   # text, suffix and the engine's known versions
    write_export(export, path)             # atomic, never half-written

One module per engine (vllm, sglang, trtllm, hf, llamacpp) turns the resolved set-up into
text; what each engine can express and which versions it knows is data in
profiles/engines.yaml (planner.plan.export.engines).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from planner._files import write_atomic
from planner.plan.export import hf, llamacpp, sglang, trtllm, vllm
from planner.plan.export._header import header_lines
from planner.plan.export._resolve import ExportError, resolve
from planner.plan.export.engines import EngineInfo, check_version, engine_info, engine_names
from planner.plan.schema import Plan

__all__ = ["Export", "ExportError", "EngineInfo", "engine_info", "engine_names", "export_plan", "write_export"]

_RENDERERS = {"vllm": vllm, "sglang": sglang, "trtllm": trtllm, "hf": hf, "llamacpp": llamacpp}


@dataclass(frozen=True)
class Export:
    engine: str
    text: str
    suffix: str  # .sh, .yaml or .json
    version_range: str


def _hub_id(name: str | None) -> str | None:
    """An engine cannot load a shipped card name (llama-3.1-8b); it can load the card's hub id."""
    from planner.models import load_card, shipped_model_names

    return load_card(name)["hf_id"] if name in shipped_model_names() else name


def _loadable(plan: Plan) -> Plan:
    """The plan with card names replaced by the hub ids an engine loads."""
    def drafts(decoding):
        return dataclasses.replace(decoding, draft_model=_hub_id(decoding.draft_model))

    return plan.replace(
        model=dataclasses.replace(plan.model, source=_hub_id(plan.model.source)),
        decoding=drafts(plan.decoding),
        alternatives=tuple(dataclasses.replace(c, decoding=drafts(c.decoding)) for c in plan.alternatives),
    )


def export_plan(plan: Plan, engine: str, *, engine_version: str | None = None, plan_label: str = "plan") -> Export:
    """`plan` as the file `engine` (vllm, sglang, trtllm, hf or llamacpp) takes, for
    `engine_version` or the whole version range the exporter knows; `plan_label` names the
    plan in the file's header.

    Raises:
        NotFoundError: an unknown engine (with the near names).
        InputError: an engine_version that is not a version or outside the known range.
        ExportError: a set-up the engine cannot run (with the nearest one in the plan it can).
    """
    info = engine_info(engine)
    version = check_version(info, engine_version)
    renderer = _RENDERERS[engine]
    plan = _loadable(plan)
    resolved = resolve(plan, info)
    method = resolved.decoding.method
    if not info.has_feature(method, version):
        raise ExportError(f"{info.display} {version} cannot run {method} (added in {info.features[method]})")
    resolved = dataclasses.replace(resolved, dropped=resolved.dropped + renderer.dropped(resolved, info, version))
    header = header_lines(plan, info, version, resolved, plan_label)
    text = renderer.render(plan, resolved, version, header)
    return Export(engine=engine, text=text, suffix=renderer.SUFFIX, version_range=info.version_range)


def write_export(export: Export, path: str | os.PathLike) -> None:
    """Write `export` to `path`, never half-written; a shell script is made executable.

    Raises:
        InputError: `path` cannot be written.
    """
    write_atomic(path, export.text, executable=export.suffix == ".sh")
