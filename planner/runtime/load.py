"""Loading a checkpoint into the runtime's decoder, with its cache and compiled steps.

`Target.step` is the fixed-shape call every decoding step goes through (decode one token,
draft step, verify gamma + 1). On CUDA it is captured with torch.compile's
"reduce-overhead" mode (CUDA graphs); on CPU it runs eager, where graphs do not exist.
The prefill has a prompt-dependent length and always runs eager.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.errors import DeviceError
from planner.runtime.checkpoint import load_causal_lm, read_hf_config
from planner.runtime.model import Decoder, decoder_config, decoder_from_hf, rope_tables

RECOMPILE_LIMIT = 64  # compiled step graphs per process (dynamo's default is 8)


@dataclass
class Target:
    decoder: Decoder
    hf_config: object
    device: torch.device
    compiled: bool

    def __post_init__(self):
        if self.compiled:
            # Each (tokens, layer subset, head) of a step is its own graph, and autotune decodes
            # with a dozen set-ups in one process; past dynamo's recompile limit (8) a
            # fullgraph compile fails hard instead of falling back.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._step = torch.compile(self.decoder, mode="reduce-overhead", fullgraph=True) if self.compiled else self.decoder
        self._all = tuple(range(self.decoder.cfg.num_layers))

    @property
    def num_layers(self) -> int:
        return self.decoder.cfg.num_layers

    @property
    def vocab_size(self) -> int:
        return self.decoder.cfg.vocab_size

    def positions(self, start: int, count: int) -> torch.Tensor:
        return self.decoder.positions[start : start + count]

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens, input_pos, self._all)

    @torch.inference_mode()
    def step(self, x: torch.Tensor, input_pos: torch.Tensor, layers=None, head: bool = True) -> torch.Tensor:
        """Logits (B, T, V), or hidden states when head=False, of layers `layers` (all by default)."""
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._step(x, input_pos, self._all if layers is None else layers, head=head)
        return out.clone() if self.compiled else out  # graph outputs are overwritten by the next replay


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{device}' was requested but no CUDA GPU is available (use --device cpu)")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device '{device}' (expected auto, cpu or cuda)")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_target(source: str, *, device: torch.device, max_seq_len: int, dtype=None, compiled=None, quant: str = "none") -> Target:
    """Load a checkpoint (anything checkpoint.local_checkpoint takes: a directory, a .gguf
    file, a hub id) as a runtime Target with its KV cache.

    Raises what checkpoint.local_checkpoint raises; InputError for weights that cannot be
    loaded or an architecture the runtime does not support."""
    from planner.runtime.quantize import quantize

    hf_config = read_hf_config(source)  # a .gguf file is converted here, once
    decoder_config(hf_config)  # refuse unsupported architectures before loading weights
    hf_model = load_causal_lm(source, dtype=dtype or default_dtype(device))
    decoder = decoder_from_hf(hf_model).to(device)  # loaded on the host: no `accelerate` needed
    del hf_model
    quantize(decoder, quant)
    return _with_cache(decoder, hf_config, device, max_seq_len, compiled)


def random_target(hf_config, *, device: torch.device, max_seq_len: int, dtype=None, compiled=None, seed: int = 0) -> Target:
    """A Target with random weights in the config's shape, for timing without a checkpoint."""
    torch.manual_seed(seed)
    with torch.device(device):
        decoder = Decoder(decoder_config(hf_config)).to(dtype or default_dtype(device))
    for p in decoder.parameters():
        p.data.normal_(0.0, 0.02)
    return _with_cache(decoder.eval().requires_grad_(False), hf_config, device, max_seq_len, compiled)


def _with_cache(decoder: Decoder, hf_config, device, max_seq_len: int, compiled) -> Target:
    cos, sin = rope_tables(hf_config, max_seq_len)
    decoder.setup_cache(max_seq_len, cos, sin)
    compiled = device.type == "cuda" if compiled is None else compiled
    return Target(decoder, hf_config, device, compiled)
