"""Exporters: a plan written as a complete launch for each serving engine.

    export_plan(plan, "vllm") -> Export   # the script (or Python file), its suffix, the versions written for
    write_export(export, path)             # atomic, never half-written
    write_compose(export, path)            # a docker compose file beside it, where the engine has an image

One module per engine (vllm, sglang, trtllm, hf, llamacpp) turns the resolved set-up into
a script whose settings (model, draft model, address, memory share) are variables with
the plan's values as defaults; what each engine can express, and the field tables each
exporter writes from, are data in planner/profiles/engines.yaml (planner.plan.export.engines).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from planner._files import write_atomic
from planner.plan.export import hf, llamacpp, sglang, trtllm, vllm
from planner.plan.export._compose import compose_text
from planner.plan.export._header import header_lines, written_for
from planner.plan.export._launch import launch_for
from planner.plan.export._resolve import ExportError, resolve
from planner.plan.export.engines import EngineInfo, check_version, engine_info, engine_names
from planner.plan.schema import Plan

__all__ = ["Export", "ExportError", "EngineInfo", "engine_info", "engine_names", "export_plan", "write_export",
           "compose_path", "write_compose"]

_RENDERERS = {"vllm": vllm, "sglang": sglang, "trtllm": trtllm, "hf": hf, "llamacpp": llamacpp}


@dataclass(frozen=True)
class Export:
    engine: str
    text: str
    suffix: str  # .sh, .py or .yaml
    version_range: str  # the engine versions written for
    image: str | None = None  # the engine's container image, for write_compose
    port: int | None = None
    compose_env: dict[str, str] = field(default_factory=dict)  # settings the image needs


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
    """`plan` as a launch for `engine` (vllm, sglang, trtllm, hf or llamacpp), written for
    `engine_version` (None: the newest field table); `plan_label` names the plan in the header.

    Raises:
        NotFoundError: an unknown engine (with the near names).
        InputError: an engine_version no field table covers.
        ExportError: a set-up the engine cannot run (with the nearest one in the plan it can).
    """
    info = engine_info(engine)
    version = check_version(info, engine_version)
    table = info.table(version)
    renderer = _RENDERERS[engine]
    launch = launch_for(plan, engine)
    plan = _loadable(plan)
    resolved = resolve(plan, info)
    method = resolved.decoding.method
    if not info.has_feature(method, version):
        raise ExportError(f"{info.display} {version} cannot run {method}: it is exported for {info.features[method]} "
                          f"on (`engine_version` {info.features[method]} or later)")
    resolved = dataclasses.replace(resolved, dropped=resolved.dropped + renderer.dropped(resolved, table))
    header = header_lines(plan, info, table, version, resolved, launch, plan_label, serves=info.port is not None)
    text = renderer.render(plan, resolved, launch, info, table, header)
    image = info.image.format(version=version or table.version_max) if info.image else None
    return Export(engine=engine, text=text, suffix=renderer.SUFFIX,
                  version_range=written_for(info, table, version, method), image=image, port=info.port,
                  compose_env=dict(renderer.COMPOSE_ENV))


def compose_path(path: str | os.PathLike) -> Path:
    """Where write_compose puts the compose file for the script at `path`: NAME.compose.yaml beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.compose.yaml")


def write_compose(export: Export, path: str | os.PathLike) -> Path | None:
    """Write a docker compose file running the script written at `path` in the engine's image;
    None (nothing written) when the engine publishes no image."""
    if export.image is None:
        return None
    text = compose_text(engine=export.engine, display=engine_info(export.engine).display, image=export.image,
                        port=export.port, env=export.compose_env, script_name=Path(path).name)
    target = compose_path(path)
    write_export(Export(engine=export.engine, text=text, suffix=".yaml", version_range=export.version_range), target)
    return target


def write_export(export: Export, path: str | os.PathLike) -> None:
    """Write `export` to `path`, never half-written; a shell script is made executable.

    Raises:
        InputError: `path` cannot be written.
    """
    write_atomic(path, export.text, executable=export.suffix == ".sh")
