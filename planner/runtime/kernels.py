"""The CPU decode step's matrix-vector kernel, and swapping it into a model's linears.

On a CPU a decode step is a few hundred matrix-vector products over weights that do not fit
in cache, so its speed is how fast those products stream the weights. torch's bf16 `linear`
(oneDNN) streams them at a fraction of the read bandwidth when the batch is one token
(BENCHMARKS.md, "A lean CPU step"); `specplan::linear` (csrc/lean_linear.cpp) reads each
weight row once per call, multiplies it with every token's row in fp32, and splits rows over
torch's threads.

Its second property is the numerics rule the runtime states: each output is accumulated in
one fixed order whatever the number of tokens in the step, so the logits of a token inside a
k-token verify forward equal, bit for bit, those of the one-token step (the linears are where
a verify and a decode step would otherwise differ; attention and norms are per token).

The kernel is compiled on first use with the machine's own instruction set (-march=native:
AVX-512 or AVX2 with FMA, else a plain loop) into $SPECPLAN_CACHE/kernels, by torch's C++
extension builder (a C++ compiler and ninja). When it cannot be built, one line says why and
decoding uses torch's linear.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

import torch
from torch import nn

SOURCE = Path(__file__).resolve().parent / "csrc" / "lean_linear.cpp"
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
        print(f"specplan: the lean CPU kernel could not be built ({reason[:200]}); decoding uses torch's linear", file=sys.stderr)
        return False


def _build() -> None:
    from torch.utils.cpp_extension import load

    from planner.runtime.checkpoint import cache_root

    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + " ".join((torch.__version__, *CFLAGS)).encode()).hexdigest()[:12]
    build = cache_root() / "kernels" / f"lean_linear-{tag}"
    build.mkdir(parents=True, exist_ok=True)
    load(
        name=f"specplan_lean_linear_{tag}",
        sources=[str(SOURCE)],
        extra_cflags=list(CFLAGS),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
        is_python_module=False,  # registers torch.ops.specplan.linear
        verbose=False,
    )


class LeanLinear(nn.Linear):
    """nn.Linear (same parameters, no copy) whose forward is `torch.ops.specplan.linear`.
    Inference only: the kernel has no backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.specplan.linear(x, self.weight, self.bias)


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


def _fits(weight: torch.Tensor) -> bool:
    return (
        type(weight.data) is torch.Tensor  # not a quantized tensor subclass
        and weight.device.type == "cpu"
        and weight.dtype in LEAN_DTYPES
        and weight.is_contiguous()
    )
