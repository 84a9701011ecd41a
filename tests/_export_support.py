"""Plans and a script runner shared by the export tests.

`run_script` executes an exported shell script with every engine binary replaced by a stub
that records its arguments, so a test sees exactly what the engine would have been given.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from planner.plan.schema import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction, ScheduleEntry

ENGINE_BINARY = {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm-serve", "llamacpp": "llama-server"}

DRAFT = Decoding(method="draft_model", gamma=4, draft_model="meta-llama/Llama-3.2-1B")
LOOKUP = Decoding(method="prompt_lookup", gamma=3, ngram=4)
SKIP = Decoding(method="layer_skip", gamma=3, skip_layers=(10, 11, 12))
EARLY = Decoding(method="early_exit", gamma=3, exit_layer=1)
EAGLE3 = Decoding(method="eagle3", gamma=5, draft_model="yuhuili/EAGLE3-LLaMA3.1-Instruct-8B")  # a chain
MTP = Decoding(method="mtp", gamma=3)  # the target's own MTP layers


def prediction(tokens_per_s: float = 150.0, vram_gib: float = 20.0) -> Prediction:
    return Prediction(basis="analytical", tokens_per_s=tokens_per_s, speedup=1.5, tokens_per_iteration=2.5,
                      acceptance=0.7, target_latency_ms=10.0, draft_latency_ms=2.0, iteration_ms=12.0,
                      vram_gib=vram_gib)


def make_plan(decoding=DRAFT, schedule=(), alternatives=(), batch_size=1, *, vram_budget=None,
              model=None, hardware=None) -> Plan:
    return Plan(
        model=model or ModelRef(name="llama-3.1-8b", source="meta-llama/Llama-3.1-8B-Instruct", num_layers=32,
                                vocab_size=128256),
        hardware=hardware or HardwareRef(profile="h100-sxm", device_name="NVIDIA H100 80GB HBM3"),
        decoding=decoding, prediction=prediction(),
        constraints=Constraints(context=4096, batch_size=batch_size, vram_gib=vram_budget),
        alternatives=alternatives, schedule=schedule,
    )


def entry(lo, hi, gamma, method="draft_model"):
    return ScheduleEntry(batch_min=lo, batch_max=hi, method=method if gamma else "autoregressive", gamma=gamma,
                         tokens_per_s_per_sequence=100.0, tokens_per_s_total=100.0 * lo)


SCHEDULE = (entry(1, 3, 4), entry(4, 15, 2), entry(16, 63, 1), entry(64, 128, 0))

_STUB = """#!/bin/sh
out="$STUB_DIR/$(basename "$0").args"
: > "$out"
for arg in "$@"; do printf '%s\\0' "$arg" >> "$out"; done
if [ "$(basename "$0")" = llama-quantize ]; then cp "$1" "$2"; fi
"""
_FAKE_CONVERT = """import sys
out = sys.argv[sys.argv.index("--outfile") + 1]
open(out, "w").write("gguf of " + sys.argv[1])
"""


def stub_bin(tmp_path: Path) -> Path:
    """A directory of stub engine binaries (and llama-quantize) that record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in (*ENGINE_BINARY.values(), "llama-quantize"):
        stub = bin_dir / name
        stub.write_text(_STUB)
        stub.chmod(0o755)
    return bin_dir


def run_script(text: str, tmp_path: Path, env: dict[str, str] | None = None,
               args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `text` with sh in `tmp_path`, engine binaries stubbed; a fake llama.cpp converter in place."""
    script = tmp_path / "launch.sh"
    script.write_text(text)
    llama_cpp = tmp_path / "llama.cpp"
    llama_cpp.mkdir(exist_ok=True)
    (llama_cpp / "convert_hf_to_gguf.py").write_text(_FAKE_CONVERT)
    base = {"PATH": f"{stub_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}", "STUB_DIR": str(tmp_path / "bin"),
            "HOME": str(tmp_path), "LLAMA_CPP_DIR": str(llama_cpp), "GGUF_DIR": str(tmp_path)}
    return subprocess.run(["sh", str(script), *args], cwd=tmp_path, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=30)


def engine_args(tmp_path: Path, binary: str) -> list[str]:
    """The arguments the stub `binary` received."""
    return (tmp_path / "bin" / f"{binary}.args").read_bytes().decode().split("\0")[:-1]


def launched_args(text: str, engine: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run an exported script and return the engine's arguments (checking the script succeeded)."""
    result = run_script(text, tmp_path, env)
    assert result.returncode == 0, result.stderr
    return engine_args(tmp_path, ENGINE_BINARY[engine])


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]
