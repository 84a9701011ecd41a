"""llama.cpp: a script that converts the checkpoints to GGUF, quantizes them and runs `llama-server`.

Flags and tools from the field table in planner/profiles/engines.yaml (tools/server/README.md,
convert_hf_to_gguf.py and tools/quantize/README.md at the commits named there): each
checkpoint is converted to an F16 GGUF file (a hub id is downloaded first; conversion
needs a directory), then quantized with llama-quantize where the plan quantizes the target or
the draft, each at its own type (int8 -> Q8_0, int4 -> Q4_0; fp8 is refused: GGUF has no
W8A8 fp8 type); both steps are skipped when the file exists, and `sh SCRIPT convert`
stops after them. The server holds every layer on the GPU (-ngl, -ngld), serves the plan's
concurrency as -np slots and splits -c among them, so -c is the plan's context times the
slots. --draft-p-min 0 keeps drafting to --draft-max. One gamma: llama-server has no
per-batch-size draft length.
"""

from __future__ import annotations

from planner.plan.export._launch import Launch
from planner.plan.export._resolve import Resolved
from planner.plan.export._shell import Ref, script, serving_variables, words
from planner.plan.export.engines import EngineInfo, FieldTable
from planner.plan.schema import Plan

SUFFIX = ".sh"
COMPOSE_ENV = {"LLAMA_SERVER": "/app/llama-server", "GGUF_DIR": "/models"}
GGUF_TYPE = {"none": "F16", "int8": "Q8_0", "int4": "Q4_0"}
ALL_LAYERS = 999  # more than any model has: every layer on the GPU

# gguf CHECKPOINT TYPE prints the GGUF file of CHECKPOINT (hub id or directory) at TYPE,
# converting and quantizing it first when the file is missing.
_GGUF_FUNCTION = """\
gguf() {
  name=${1%/}; name=${name##*/}
  out="$GGUF_DIR/$name-$2.gguf"; f16="$GGUF_DIR/$name-F16.gguf"
  if [ ! -f "$out" ]; then
    if [ ! -f "$f16" ]; then
      dir=$1
      [ -d "$dir" ] || dir=$(python3 -c 'import sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1]))' "$1")
      python3 "$LLAMA_CPP_DIR/convert_hf_to_gguf.py" "$dir" --outtype f16 --outfile "$f16" >&2
    fi
    [ "$2" = F16 ] || "$LLAMA_QUANTIZE" "$f16" "$out" "$2" >&2
  fi
  printf '%s\\n' "$out"
}
"""


def dropped(resolved: Resolved, table: FieldTable) -> tuple[str, ...]:
    return ()


def render(plan: Plan, resolved: Resolved, launch: Launch, info: EngineInfo, table: FieldTable,
           header: list[str]) -> str:
    d = resolved.decoding
    draft = d.method == "draft_model"
    variables = [v for v in serving_variables(plan.model.source, d.draft_model if draft else None, info.port,
                                              launch.tensor_parallel) if v[0] != "TP"]
    variables += [("GGUF_DIR", ".", "where the GGUF files are written and read"),
                  ("LLAMA_CPP_DIR", "llama.cpp", "a llama.cpp checkout (convert_hf_to_gguf.py)"),
                  ("LLAMA_QUANTIZE", "llama-quantize", "llama.cpp's quantize tool"),
                  ("LLAMA_SERVER", "llama-server", "llama.cpp's server")]
    body = _GGUF_FUNCTION + f"TARGET_GGUF=$(gguf \"$MODEL\" {GGUF_TYPE[d.quant]})\n"
    if draft:
        body += f"DRAFT_GGUF=$(gguf \"$DRAFT_MODEL\" {GGUF_TYPE[d.draft_quant]})\n"
    body += 'if [ "${1:-}" = convert ]; then exit 0; fi\n'
    args = [Ref("LLAMA_SERVER"), "-m", Ref("TARGET_GGUF"), "-c", str(plan.constraints.context * launch.max_batch),
            "-np", str(launch.max_batch), "-ngl", str(ALL_LAYERS), "--host", Ref("HOST"), "--port", Ref("PORT")]
    if draft:
        args += ["-md", Ref("DRAFT_GGUF"), "-ngld", str(ALL_LAYERS), "--draft-max", str(d.gamma),
                 "--draft-min", "0", "--draft-p-min", "0"]
    return script(header, variables, body + "exec " + words(args) + "\n")
