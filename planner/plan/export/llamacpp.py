"""llama.cpp: a `llama-server` command line with draft-model flags.

Flags from common/arg.cpp (sources in profiles/engines.yaml): -md/--model-draft, --draft-max
(tokens drafted), --draft-min, --draft-p-min (a draft token's minimum greedy probability;
0 keeps drafting to --draft-max), -np (parallel sequences). Newer builds renamed the
draft flags to --spec-draft-*; specplan has not pinned the build numbers of that rename,
so no --engine-version is accepted and the header says which flag set was written.
llama.cpp quantizes through the GGUF file: int8 and int4 plans name Q8_0 and Q4_0 files.
llama-server has no per-batch-size draft length: one gamma is written.
"""

from __future__ import annotations

import shlex

from planner.plan.export._header import comment_block
from planner.plan.export._resolve import Resolved
from planner.plan.schema import Plan

SUFFIX = ".sh"
GGUF_TYPE = {"none": "F16", "int8": "Q8_0", "int4": "Q4_0"}


def dropped(resolved: Resolved, info, version) -> tuple[str, ...]:
    return ()


def gguf_path(source: str, quant: str) -> str:
    """The GGUF file the user is expected to convert the checkpoint into."""
    name = source.rstrip("/").split("/")[-1]
    return f"{name}-{GGUF_TYPE[quant]}.gguf"


def render(plan: Plan, resolved: Resolved, version: str | None, header: list[str]) -> str:
    d = resolved.decoding
    args = ["llama-server", "-m", gguf_path(plan.model.source, d.quant), "-c", str(plan.constraints.context),
            "-np", str(plan.constraints.batch_size)]
    if d.method == "draft_model":
        args += ["-md", gguf_path(d.draft_model, d.draft_quant), "--draft-max", str(d.gamma),
                 "--draft-min", "0", "--draft-p-min", "0"]
    notes = [f"convert the checkpoints to GGUF first: {args[2]}" + (f" and {args[args.index('-md') + 1]}" if "-md" in args else "")]
    return "#!/bin/sh\n" + comment_block(header + notes) + "exec " + shlex.join(args) + "\n"
