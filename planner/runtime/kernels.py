"""The CPU decode step's kernels, and swapping them into a loaded model.

On a CPU a decode step is a few hundred matrix-vector products over weights that do not fit
in cache, so its speed is how fast those products stream the weights. torch's bf16 `linear`
(oneDNN) streams them at a fraction of the read bandwidth when the batch is one token
(BENCHMARKS.md, "A lean CPU step"); `specplan::linear` (csrc/lean_linear.cpp) reads each
weight row once per call, multiplies it with every token's row in fp32, and splits rows over
torch's threads. Once the linears are lean, what is left of a step is the dispatch of a few
hundred tiny ops; `specplan::rms_norm`, `specplan::rotary` and `specplan::attention`
(csrc/lean_step.cpp) do an RMSNorm, a layer's rotary embeddings and its attention over the
KV cache in one call each (BENCHMARKS.md, "The rest of the CPU step").

Their second property is the numerics rule the runtime states: each output is computed per
token row in one fixed order whatever the number of tokens in the step, so the logits of a
token inside a k-token verify forward equal, bit for bit, those of the one-token step.

`use_lean_kernels(model)` swaps them in module by module, sharing the parameters: every
plain nn.Linear, and the norms, attentions and MLPs of the architectures whose transformers
modules compute exactly what the ops compute (LEAN_NORMS, LEAN_ATTENTIONS, LEAN_MLPS: Llama's
RMSNorm, Llama's attention with rotate-half rotary over the whole head, Llama's silu-gated MLP,
as Llama, Mistral, Qwen2 and Qwen3 run them); an attention's q, k and v projections are then
one `specplan::linears` call and an MLP's gate and up one `specplan::silu_gated_linear`. With
all of a decoder layer's modules lean, the layer itself (LEAN_DECODER_LAYERS) is one
`specplan::decoder_layer` call: the same ops in the same order, minus a few dozen Python-level
calls per layer. A swapped module falls back to its own forward wherever the op does not
apply (gradients on, no KV cache, another mask). Other architectures keep their modules and
still get the lean linears.

The kernels are compiled on first use with the machine's own instruction set (-march=native:
AMX tiles for bf16 linears where the CPU has them and Linux grants the tile state, which makes a
k-token verify cost about a one-token step; AVX-512 or AVX2 with FMA, else a plain loop;
`SPECPLAN_AMX=0` (or false, no, off) keeps the vector kernel) into $SPECPLAN_CACHE/kernels, by torch's C++
extension builder (a C++ compiler and ninja). When they cannot be built, one line says why and
decoding uses torch's own modules.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import weakref
from pathlib import Path

import torch
from torch import nn

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "lean_linear.cpp", CSRC / "lean_step.cpp")
HEADERS = (CSRC / "lean_vec.h",)
LEAN_DTYPES = (torch.bfloat16, torch.float32)
# -fopenmp: ATen's parallel_for is inline; -ffp-contract=off: the scalar tail's multiply and add
# are never fused in one tile shape and not in another (batch invariance)
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off")


@functools.cache
def available() -> bool:
    """True once `torch.ops.specplan.linear` is loaded (built now if not cached); False, with
    one line on stderr saying why, when it cannot be built here."""
    try:
        _build()
        if torch.ops.specplan.simd_width() == 0:
            raise RuntimeError("no AVX2 or AVX-512 on this CPU")
        return True
    except Exception as e:  # a missing compiler, ninja or header: decoding still works, slower
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        print(f"specplan: the lean CPU kernel could not be built ({reason[:200]}); decoding uses torch's own modules", file=sys.stderr)
        return False


def build_directory() -> Path:
    """$SPECPLAN_CACHE/kernels/lean_linear-<tag>, the tag a hash of the sources, torch's version
    and the flags: one directory (and library) per build that differs."""
    from planner.runtime.checkpoint import cache_root

    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    tag = hashlib.sha256(source + " ".join((torch.__version__, *CFLAGS)).encode()).hexdigest()[:12]
    return cache_root() / "kernels" / f"lean_linear-{tag}"


def _build() -> None:
    """Load the kernels' library from `build_directory()`, compiling it first if it is not
    there. The directory's tag hashes the sources, torch's version and the flags, so a
    library once built is loaded as is (no ninja run, whatever the sources' file times). One
    process builds at a time (a lock the OS releases when its holder dies); a build killed
    half-way leaves torch's own lock file behind, which would make every later build wait for
    ever, so it is removed under that lock.

    Raises:
        RuntimeError: no C++ compiler, or the build failed (the caller falls back to torch).
    """
    import fcntl
    import os
    import shutil

    build = build_directory()
    name = f"specplan_{build.name.replace('-', '_')}"
    library = build / f"{name}.so"
    if library.is_file():
        torch.ops.load_library(str(library))
        return
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: '{compiler}' not found")
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "specplan.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process building: wait for it
        if library.is_file():  # it built the library meanwhile
            torch.ops.load_library(str(library))
            return
        (build / "lock").unlink(missing_ok=True)  # torch's lock, left by a killed build
        from torch.utils.cpp_extension import load

        load(
            name=name,
            sources=[str(path) for path in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            is_python_module=False,  # registers torch.ops.specplan.*
            verbose=False,
        )


class LeanLinear(nn.Linear):
    """nn.Linear (same parameters, no copy) whose forward is `torch.ops.specplan.linear`;
    torch's linear where a gradient is wanted (the kernels have no backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_grad(x, self.weight):
            return super().forward(x)
        return torch.ops.specplan.linear(x, self.weight, self.bias)


def _needs_grad(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def use_lean_kernels(model: nn.Module) -> int:
    """Swap the lean kernels into `model` (see the module docstring): linears, then the
    norms, attentions and MLPs of LEAN_NORMS, LEAN_ATTENTIONS and LEAN_MLPS classes; returns how many modules
    were swapped (0 when the kernels are not available). Parameters are shared, not copied."""
    swapped = use_lean_linears(model)
    if not swapped:
        return 0
    for module in model.modules():
        mixin = _LEAN_MIXINS.get(type(module).__name__) if type(module).__module__.startswith("transformers.") else None
        if mixin is not None and _fits(next(module.parameters())):
            module.__class__ = _lean_class(type(module), mixin)
            swapped += 1
    return swapped


def use_lean_linears(model: nn.Module) -> int:
    """Replace every plain nn.Linear of `model` whose weight is a contiguous bf16 or fp32
    CPU tensor by a LeanLinear sharing its parameters; returns how many were replaced (0
    when the kernel is not available). Linears of other types (quantized, Conv1D, LoRA
    wrappers) are left as they are."""
    candidates = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and _fits(child.weight)
    ]
    if not candidates or not available():
        return 0
    for parent, name, child in candidates:
        lean = LeanLinear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        lean.weight, lean.bias = child.weight, child.bias
        setattr(parent, name, lean)
    return len(candidates)


def drop_lean_linears(model: nn.Module) -> None:
    """Give every LeanLinear of `model` nn.Linear's own forward back and forget the parts of its
    fused layers, before a quantizer swaps weights for tensor subclasses the lean ops cannot
    read (the modules built on the lean linears then run their own forwards)."""
    for module in model.modules():
        if type(module) is LeanLinear:
            module.__class__ = nn.Linear
        _FUSED_PARTS.pop(module, None)
        _LORA_STATE.pop(module, None)


class _LeanRMSNorm:
    """LlamaRMSNorm's forward, y = w * (x * rsqrt(mean(x^2) + eps)).to(dtype) with fp32
    statistics, as one `specplan::rms_norm` call."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if _needs_grad(hidden_states, self.weight) or hidden_states.dtype != self.weight.dtype:
            return super().forward(hidden_states)
        return torch.ops.specplan.rms_norm(hidden_states, self.weight, self.variance_epsilon)


class _LeanAttention:
    """LlamaAttention's forward (q, k, v projections, Qwen3's per-head q and k norms, rotate-
    half rotary over the whole head, the KV cache's update, softmax attention with the
    additive mask, the output projection) with rotary and attention as one op each. The
    runtime's mask already holds sliding windows (planner.runtime.model.Decoder.masks)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))  # transformers 5, 4.5x, 4.4x
        if (_needs_grad(hidden_states, self.o_proj.weight) or args or cache is None or position_embeddings is None
                or not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != hidden_states.dtype
                or position_embeddings[0].shape[-1] != self.head_dim):
            return super().forward(hidden_states, position_embeddings, attention_mask, *args, **kwargs)
        tokens = hidden_states.shape[:-1]
        q, k, v = (y.view(*tokens, -1, self.head_dim) for y in _project(hidden_states, self.q_proj, self.k_proj, self.v_proj))
        if hasattr(self, "q_norm"):  # Qwen3: RMSNorm over each head before rotary
            q, k = self.q_norm(q), self.k_norm(k)
        v = v.transpose(1, 2)
        q, k = torch.ops.specplan.rotary(q.transpose(1, 2), k.transpose(1, 2), *position_embeddings)
        k, v = cache.update(k, v, self.layer_idx)
        out = torch.ops.specplan.attention(q, k, v, attention_mask, self.scaling)  # (B, T, H, D)
        return self.o_proj(out.view(*tokens, -1)), None


class _LeanGatedMLP:
    """LlamaMLP's forward, down(silu(gate(x)) * up(x)), with silu(gate) * up as one
    `specplan::silu_gated_linear` call when both projections are lean linears, and as one
    `specplan::silu_mul` after them when both are an adapter's lean LoRA linears (S3D's draft),
    when the activation is silu."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj, self.up_proj
        if _needs_grad(x, gate.weight) or type(self.act_fn).__name__ != "SiLUActivation":
            return super().forward(x)
        if type(gate) is type(up) is LeanLinear:
            return self.down_proj(torch.ops.specplan.silu_gated_linear(x, gate.weight, gate.bias, up.weight, up.bias))
        if _lora_pair(gate) is not None and _lora_pair(up) is not None:
            return self.down_proj(torch.ops.specplan.silu_mul(gate(x), up(x)))
        return super().forward(x)


class _LeanDecoderLayer:
    """LlamaDecoderLayer's forward (input norm, attention, residual add, post-attention norm,
    MLP, residual add) as one `specplan::decoder_layer` call: the same lean ops in the same
    order as the swapped modules calling them one by one, so the same bits, without a few
    dozen Python-level calls per layer. An S3D draft's copy of a kept layer, whose linears are
    lean LoRA linears (one adapter, one scaling), is one call too, its LoRA pairs passed along.
    Where any of its modules is not a lean one (another activation, a LoRA layer peft would run
    differently) or the step is not the runtime's (gradients, no cache buffer yet, another
    mask), the modules run one by one as before."""

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))
        position_embeddings = kwargs.get("position_embeddings")
        parts = _fused_parts(self)
        attn = self.self_attn
        if (parts is None or args or torch.is_grad_enabled() or position_embeddings is None
                or getattr(cache, "input_pos", None) is None or cache.keys[attn.layer_idx] is None
                or not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != hidden_states.dtype
                or hidden_states.dtype != parts[0][0].dtype or hidden_states.dim() != 3
                or position_embeddings[0].shape[-1] != attn.head_dim):
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        weights, biases, head_norms, eps, lora_a, lora_b, scaling = parts
        return torch.ops.specplan.decoder_layer(
            hidden_states, weights, biases, head_norms, eps, *position_embeddings, cache.keys[attn.layer_idx],
            cache.values[attn.layer_idx], cache.input_pos, attention_mask, attn.head_dim, attn.scaling, lora_a, lora_b,
            scaling)


_FUSED_PARTS = weakref.WeakKeyDictionary()  # decoder layer -> its parts or None; a copy of a layer (an adapter's) is looked at anew


def _fused_parts(layer: nn.Module):
    """(weights, biases, head norms, eps, LoRA A's, LoRA B's, LoRA scaling) of a decoder layer
    whose modules are all the lean ones `specplan::decoder_layer` computes (its linears all
    plain lean linears, or all lean LoRA linears of one scaling), else None; worked out once per
    layer object (the tensors are the live parameters, so later in-place updates are seen)."""
    if layer not in _FUSED_PARTS:
        attn, mlp = layer.self_attn, layer.mlp
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        head_norms = [attn.q_norm, attn.k_norm] if hasattr(attn, "q_norm") else []
        linears = _linears_of(layer)
        eps = {n.variance_epsilon for n in norms + head_norms if isinstance(n, _LeanRMSNorm)}
        pairs = [_lora_pair(m) for m in linears]
        bases = [m if type(m) is LeanLinear else getattr(m, "base_layer", None) for m in linears]
        lora = all(p is not None for p in pairs) and len({p[2] for p in pairs}) == 1
        fits = (isinstance(attn, _LeanAttention) and isinstance(mlp, _LeanGatedMLP)
                and all(isinstance(n, _LeanRMSNorm) for n in norms + head_norms) and len(eps) == 1
                and (all(type(m) is LeanLinear for m in linears) or lora)
                and type(mlp.act_fn).__name__ == "SiLUActivation"
                and len({p.dtype for p in layer.parameters()}) == 1)
        _FUSED_PARTS[layer] = ([n.weight for n in norms] + [m.weight for m in bases], [m.bias for m in bases],
                               [n.weight for n in head_norms], float(eps.pop()),
                               [p[0] for p in pairs] if lora else [], [p[1] for p in pairs] if lora else [],
                               pairs[0][2] if lora else 0.0) if fits else None
    parts = _FUSED_PARTS[layer]
    if parts is None or not parts[4]:
        return parts
    # an adapted copy: its LoRA linears may have been switched off, merged or trained since;
    # peft's own state read directly (its properties cost ~15 us per linear per step)
    linears = _linears_of(layer)
    stamp = [(m._disable_adapters, m.merged_adapters, m._active_adapter, b._version, b.data_ptr())
             for m, b in zip(linears, parts[5])]
    seen = _LORA_STATE.get(layer)
    if seen is None or seen[0] != stamp:
        ok = all(_lora_pair(m) is not None for m in linears)
        transposed = [b.detach().t().contiguous() for b in parts[5]]
        seen = _LORA_STATE[layer] = (stamp, (*parts[:5], transposed, parts[6]) if ok else None)
    return seen[1]


_LORA_STATE = weakref.WeakKeyDictionary()  # adapted decoder layer -> (its LoRA linears' state, its parts, B transposed)


def _linears_of(layer: nn.Module) -> list[nn.Module]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


def _lora_pair(module: nn.Module):
    """(A weight, B weight, scaling) of a lean LoRA linear that `specplan::lora_linear` runs as
    is (one active plain adapter, no dropout, variant or bias of its own, one dtype), else None."""
    if not isinstance(module, _LeanLoraLinear) or module.disable_adapters or module.merged or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name not in module.lora_B or name in module.lora_variant:
        return None
    a, b = module.lora_A[name], module.lora_B[name]
    if (not isinstance(module.lora_dropout[name], nn.Identity) or a.bias is not None or b.bias is not None
            or type(module.base_layer) is not LeanLinear or not a.weight.dtype == b.weight.dtype == module.base_layer.weight.dtype):
        return None
    return a.weight, b.weight, float(module.scaling[name])


class _LeanLoraLinear:
    """peft's LoRA Linear forward, result + lora_B(lora_A(x)) * scaling, as one
    `specplan::lora_linear` call when its base is a lean linear and one plain LoRA adapter is
    active (no dropout, no variant, no bias of its own); peft's forward otherwise, and always
    where a gradient is wanted (training)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        pair = None if args or kwargs or torch.is_grad_enabled() else _lora_pair(self)
        if pair is None or x.dtype != pair[0].dtype:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        return torch.ops.specplan.lora_linear(x, base.weight, base.bias, *pair)


def use_lean_lora(model: nn.Module) -> int:
    """Swap `_LeanLoraLinear` into every peft LoRA Linear of `model` whose base is a lean
    linear (an S3D adapter's copies of the kept layers); returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    swapped = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and type(module.base_layer) is LeanLinear and not isinstance(module, _LeanLoraLinear):
            module.__class__ = _lean_lora_class(type(module))
            swapped += 1
    return swapped


def _project(x: torch.Tensor, *linears: nn.Module) -> list[torch.Tensor]:
    """Each module applied to x: in one `specplan::linears` call when all are lean linears."""
    if all(type(m) is LeanLinear for m in linears):
        return torch.ops.specplan.linears(x, [m.weight for m in linears], [m.bias for m in linears])
    return [m(x) for m in linears]


# transformers classes whose forward the lean ops compute (checked per class in tests/test_kernels.py)
LEAN_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
LEAN_ATTENTIONS = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")
LEAN_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
LEAN_DECODER_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")
_LEAN_MIXINS = {**dict.fromkeys(LEAN_NORMS, _LeanRMSNorm), **dict.fromkeys(LEAN_ATTENTIONS, _LeanAttention),
                **dict.fromkeys(LEAN_MLPS, _LeanGatedMLP), **dict.fromkeys(LEAN_DECODER_LAYERS, _LeanDecoderLayer)}


@functools.cache
def _lean_lora_class(cls: type) -> type:
    return type(f"LeanLora{cls.__name__}", (_LeanLoraLinear, cls), {"__module__": __name__})


@functools.cache
def _lean_class(cls: type, mixin: type) -> type:
    return type(f"Lean{cls.__name__}", (mixin, cls), {"__module__": __name__})


def _fits(weight: torch.Tensor) -> bool:
    return (
        type(weight.data) is torch.Tensor  # not a quantized tensor subclass
        and weight.device.type == "cpu"
        and weight.dtype in LEAN_DTYPES
        and weight.is_contiguous()
    )
