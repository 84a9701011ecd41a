"""Weight-only int8 / int4 quantization of the decoder's linear layers through torchao.

torchao swaps each nn.Linear's weight for a quantized tensor subclass; the model does
not know. A tied LM head stays unquantized: it is also the embedding table.
"""

from __future__ import annotations

from planner.errors import InputError, MissingDependencyError

from planner.models.spec import INT4_GROUP_SIZE  # the group size ModelSpec's int4 byte count assumes


def require_backend(quant: str) -> None:
    """Raise before any weight is loaded: InputError for fp8 (the runtime has no W8A8 fp8
    path: serving engines run it on Ada/Hopper), MissingDependencyError when torchao is missing."""
    if quant == "none":
        return
    if quant == "fp8":
        raise InputError("the built-in runtime has no fp8 (W8A8) path; serve an fp8 plan with an engine (vLLM, SGLang)")
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f'{quant} needs torchao: pip install ".[quant]" (from a clone of specplan)') from None


def quantize(model, quant: str) -> None:
    """Quantize the linear layers of `model` (a torch module) in place: quant is 'none',
    'int8' or 'int4'. Raises InputError for fp8 and MissingDependencyError when torchao or its
    kernel is missing."""
    if quant == "none":
        return
    require_backend(quant)
    from torch import nn
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if quant == "int8" else Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and head.weight is embedding.weight

    def is_quantized(module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and not (tied and fqn == "lm_head")

    from planner.runtime.kernels import drop_lean_linears

    drop_lean_linears(model)  # the lean ops read plain tensors, not torchao's quantized subclasses
    try:
        quantize_(model, config, filter_fn=is_quantized)
    except (ImportError, NotImplementedError, RuntimeError) as exc:
        # e.g. torchao's int4 layout needs a kernel package or a GPU this machine lacks
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingDependencyError(f"{quant} weight-only quantization is not available here (torchao: {reason})") from None
