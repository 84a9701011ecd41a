"""Loading a checkpoint into the runtime's decoder, with its cache and compiled steps.

`Target.step` is the fixed-shape call every decoding step goes through (decode one token,
draft step, verify gamma + 1). On CUDA it is captured with torch.compile's
"reduce-overhead" mode (CUDA graphs); on CPU it runs eager, where graphs do not exist, with
the lean kernels swapped in (planner/runtime/kernels.py: linears that stream the weights once
per step, one-call norms, rotary and attention; each token's row computed in the same order
whatever the step's width).
The prefill has a prompt-dependent length and always runs eager.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from planner.errors import InputError
from planner.hardware.measure import resolve_device  # noqa: F401  (the one rule for device names, re-exported)
from planner.runtime.checkpoint import load_causal_lm, read_hf_config
from planner.runtime.kernels import use_lean_kernels
from planner.runtime.model import Decoder, check_runnable

RECOMPILE_LIMIT = 64  # compiled step graphs per process (dynamo's default is 8)


@dataclass
class Target:
    decoder: Decoder
    hf_config: object
    device: torch.device
    compiled: bool

    def __post_init__(self):
        if self.compiled:
            # Each (tokens, layer subset) of a step is its own graph, and autotune decodes
            # with a dozen set-ups in one process; past dynamo's recompile limit (8) a
            # fullgraph compile fails hard instead of falling back.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._step = torch.compile(self.decoder, mode="reduce-overhead", fullgraph=True) if self.compiled else self.decoder
        self._all = tuple(range(self.decoder.num_layers))

    @property
    def num_layers(self) -> int:
        return self.decoder.num_layers

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def positions(self, start: int, count: int) -> torch.Tensor:
        return self.decoder.positions[start : start + count]

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens, input_pos, self._all)

    @torch.inference_mode()
    def step(self, x: torch.Tensor, input_pos: torch.Tensor, layers=None) -> torch.Tensor:
        """Logits (B, T, V) of tokens x (B, T) at input_pos (T,) through `layers` (all by default)."""
        layers = self._all if layers is None else tuple(layers)
        self.decoder.view(layers)  # built outside the compiled region, once per subset
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._step(x, input_pos, layers)
        return out.clone() if self.compiled else out  # graph outputs are overwritten by the next replay


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_dtype(device: torch.device, profile=None) -> torch.dtype:
    """The dtype unquantized weights decode in: the profile's decode_dtype when `profile` (a
    HardwareProfile) is of this device's kind; else bf16 on CUDA and, on a CPU, what a quick
    matmul measurement of this CPU says (planner.hardware.profile.decode_dtype_for)."""
    kind = "gpu" if device.type == "cuda" else "cpu"
    if profile is not None and profile.kind == kind:
        return DTYPES[profile.decode_dtype]
    return torch.bfloat16 if kind == "gpu" else DTYPES[_cpu_decode_dtype()]


@functools.cache
def _cpu_decode_dtype() -> str:
    from planner.hardware.measure import cpu_decode_dtype

    return cpu_decode_dtype()  # measured once per process


def resolve_dtype(name: str, device: torch.device, profile=None) -> torch.dtype:
    """`name` is auto (default_dtype), bf16, fp16 or fp32; InputError otherwise."""
    if name == "auto":
        return default_dtype(device, profile)
    if name not in DTYPES:
        raise InputError(f"unknown dtype '{name}' (expected auto, {', '.join(DTYPES)})")
    return DTYPES[name]


def load_target(source: str, *, device: torch.device, max_seq_len: int, dtype=None, compiled=None, quant: str = "none",
                lean: bool = True) -> Target:
    """Load a checkpoint (anything checkpoint.local_checkpoint takes: a directory, a .gguf
    file, a hub id) as a runtime Target with its KV cache.

    Raises what checkpoint.local_checkpoint raises; InputError for weights that cannot be
    loaded or an architecture the runtime does not support. `lean=False` keeps torch's own
    linears on a CPU (for comparisons)."""
    from planner.runtime.quantize import quantize

    hf_config = read_hf_config(source)  # a .gguf file is converted here, once
    check_runnable(hf_config)  # refuse unsupported architectures before loading weights
    hf_model = load_causal_lm(source, dtype=dtype or default_dtype(device))
    hf_model = hf_model.to(device)  # loaded on the host: no `accelerate` needed
    quantize(hf_model, quant)
    return _target(hf_model, hf_config, device, max_seq_len, compiled, lean)


def random_target(hf_config, *, device: torch.device, max_seq_len: int, dtype=None, compiled=None, seed: int = 0,
                  lean: bool = True) -> Target:
    """A Target with random weights (normal, std 0.02) in the config's shape, for timing
    without a checkpoint. Raises InputError for an architecture the runtime cannot decode."""
    from transformers import AutoModelForCausalLM

    check_runnable(hf_config)
    torch.manual_seed(seed)
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype or default_dtype(device))
    for p in hf_model.parameters():
        p.data.normal_(0.0, 0.02)
    return _target(hf_model, hf_config, device, max_seq_len, compiled, lean)


def _target(hf_model, hf_config, device, max_seq_len: int, compiled, lean: bool = True) -> Target:
    compiled = device.type == "cuda" if compiled is None else compiled
    if lean and device.type == "cpu":
        use_lean_kernels(hf_model)
    return Target(Decoder(hf_model, max_seq_len), hf_config, device, compiled)
