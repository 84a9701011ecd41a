"""The checkpoint's own transformers modules, driven by the runtime's cache and layer subsets.

`Decoder` wraps a loaded transformers causal LM. `decoder(tokens, input_pos, layers)` runs
the model's own forward (its embeddings and their scaling, rotary tables, decoder layers,
final norm, LM head and logit scaling or soft-capping) over any ascending subset of the
decoder layers: a skip set, the first E layers, all of them. A subset is a *view*: a
shallow copy of the model whose layer list holds only those layers (the same modules, no
weight copied), built once per subset. So every architecture transformers runs is run the
same way, and a step over all layers computes exactly what plain decoding of the
checkpoint computes. A draft whose modules differ from the checkpoint's (an S3D adapter's
layer copies, planner.runtime.adapter) is a *registered* view: the same shallow copy with
those modules standing in for the originals, run under its own key; every other view, the
full model included, still runs the checkpoint's own modules.

The KV cache is preallocated per layer, (B, H_kv, S_max, D), and written at `input_pos`
(transformers' cache interface: each attention calls `cache.update(k, v, layer_idx)`).
The attention mask is built from positions, so rejected draft tokens need no clean-up:
their slots are simply overwritten later.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from planner.errors import InputError

ATTENTION_TYPES = ("full_attention", "sliding_attention")


class PositionCache:
    """transformers' KV-cache interface over preallocated (B, H_kv, S_max, D) buffers per
    layer, written in place at `input_pos` (set before each forward). Buffers are allocated
    at the first write of each layer (the prefill, which runs every layer), so their head
    count and width are whatever the architecture's attention produces."""

    is_compileable = True

    def __init__(self, num_layers: int, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.input_pos: torch.Tensor | None = None  # (T,) positions of this forward's tokens

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write k, v (B, H_kv, T, D) at input_pos; return the whole (B, H_kv, S_max, D) buffers."""
        if self.keys[layer_idx] is None:
            self.keys[layer_idx] = self._buffer(key_states)
            self.values[layer_idx] = self._buffer(value_states)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.input_pos, key_states.to(keys.dtype))
        values.index_copy_(2, self.input_pos, value_states.to(values.dtype))
        return keys, values

    def _buffer(self, states: torch.Tensor) -> torch.Tensor:
        batch, heads, _, width = states.shape
        buffer = torch.zeros(batch, heads, self.max_seq_len, width, dtype=states.dtype, device=states.device)
        torch._dynamo.mark_static_address(buffer)  # graphs replay on the same storage
        return buffer

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # Models ask this only to derive positions when none are given; the runtime always gives them.
        return 0


def check_runnable(hf_config) -> None:
    """InputError for configs the runtime cannot decode losslessly, before any weight loads."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(hf_config, "model_type", "?")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InputError(f"model_type '{model_type}' is not a causal LM transformers can decode")
    rope = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type")) == "dynamic":
        raise InputError("dynamic RoPE scaling is not supported by the runtime (its tables change with the length)")
    if getattr(hf_config, "alibi", False):
        raise InputError(f"model_type '{model_type}' with ALiBi is not supported by the runtime")
    unknown = set(getattr(hf_config, "layer_types", None) or ()) - set(ATTENTION_TYPES)
    if unknown:
        raise InputError(f"attention type {sorted(unknown)[0]!r} is not supported by the runtime")


def _layer_list_path(hf_model, num_layers: int) -> tuple[str, ...]:
    """Attribute path from the causal LM to its list of decoder layers (e.g. model.layers,
    model.decoder.layers for OPT, transformer.h for Falcon): the shallowest ModuleList
    with one entry per hidden layer."""
    lists = [name for name, m in hf_model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if not lists:
        raise InputError(f"model_type '{hf_model.config.model_type}': no list of {num_layers} decoder layers found")
    return tuple(min(lists, key=lambda name: name.count(".")).split("."))


def _with_stand_ins(module: nn.Module, stand_ins: dict) -> nn.Module:
    """`module`, or a shallow copy of it along every path to a module that `stand_ins`
    replaces (an identity-keyed dict: original -> stand-in); nothing else is copied."""
    if module in stand_ins:
        return stand_ins[module]
    children = {name: _with_stand_ins(child, stand_ins) for name, child in module._modules.items()}
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    out = copy.copy(module)
    out._modules = children
    return out


def _view(module: nn.Module, path: tuple[str, ...], layers: nn.ModuleList, config) -> nn.Module:
    """A shallow copy of `module` whose submodule at `path` is `layers`; everything else
    (weights included) is shared. Modules that hold the config get the view's config."""
    out = copy.copy(module)
    out._modules = dict(module._modules)
    head, *rest = path
    out._modules[head] = layers if not rest else _view(module._modules[head], tuple(rest), layers, config)
    if "config" in module.__dict__:
        out.config = config
    return out


class Decoder:
    """A transformers causal LM with a position-indexed KV cache and layer-subset forwards.

    `decoder(tokens, input_pos, layers)` -> logits (B, T, V) in fp32, for tokens (B, T) at
    positions input_pos (T,), through decoder layers `layers` (ascending indices)."""

    def __init__(self, hf_model: nn.Module, max_seq_len: int):
        config = hf_model.config
        check_runnable(config)
        self.hf_model = hf_model.eval().requires_grad_(False)
        self.num_layers = config.num_hidden_layers
        self.vocab_size = config.get_text_config().vocab_size
        self.max_seq_len = max_seq_len
        self.device = next(hf_model.parameters()).device
        self.dtype = next(hf_model.parameters()).dtype
        self.cache = PositionCache(self.num_layers, max_seq_len)
        self.positions = torch.arange(max_seq_len, device=self.device)
        self._zero = torch.zeros((), dtype=self.dtype, device=self.device)  # the additive mask's "visible"
        self._path = _layer_list_path(hf_model, self.num_layers)
        self._all_layers = self._layers_at(hf_model)
        self._views: dict[tuple[int, ...], nn.Module] = {tuple(range(self.num_layers)): hf_model}
        # transformers 5 names the cache argument `cache`; earlier releases `past_key_values`
        self.cache_kwarg = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
        self._layer_types = tuple(getattr(config, "layer_types", None) or ())
        self._window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None

    def _layers_at(self, module: nn.Module) -> nn.ModuleList:
        for name in self._path:
            module = getattr(module, name)
        return module

    def view(self, layers: tuple[int, ...]) -> nn.Module:
        """The causal LM over decoder layers `layers` (or the view registered under that key),
        built on first use."""
        if layers not in self._views:
            if not layers or list(layers) != sorted(set(layers)) or layers[-1] >= self.num_layers:
                raise InputError(f"layer subset {layers} is not an ascending set of layers below {self.num_layers}")
            config = copy.copy(self.hf_model.config)
            if self._layer_types:  # some models index per-layer attention types by position in the list
                config.layer_types = [self._layer_types[i] for i in layers]
            subset = nn.ModuleList(self._all_layers[i] for i in layers)
            self._views[layers] = _view(self.hf_model, self._path, subset, config)
        return self._views[layers]

    @property
    def layers(self) -> nn.ModuleList:
        """The checkpoint's decoder layers, in order."""
        return self._all_layers

    def register_view(self, key: tuple, layers: tuple[int, ...], stand_ins: dict) -> None:
        """Make `decoder(tokens, input_pos, key)` run the view of `layers` with some of its
        modules replaced: `stand_ins` maps modules of the checkpoint (decoder layers, the
        input embedding) to the modules that run in their place. The checkpoint and its
        other views are untouched. `key` is a tuple that starts with a name, so it never
        equals a layer subset. Raises InputError for another key."""
        if not (isinstance(key, tuple) and key and isinstance(key[0], str)):
            raise InputError(f"view key {key!r}: expected a tuple that starts with a name")
        self._views[key] = _with_stand_ins(self.view(layers), stand_ins)

    def masks(self, input_pos: torch.Tensor):
        """Additive attention masks (1, 1, T, S_max) by position: 0 where query i may see key
        j (j <= pos_i, and within the sliding window for windowed layers), -inf-like elsewhere.
        A dict by attention type for models with per-layer types, else one tensor."""
        query, key = input_pos[:, None], self.positions[None, :]
        blocked = torch.finfo(self.dtype).min

        def mask(window):
            visible = key <= query
            if window:
                visible = visible & (query - key < window)
            return torch.where(visible, self._zero, blocked)[None, None]  # (1, 1, T, S_max)

        if self._layer_types:  # only the types the model has: this runs every step
            return {kind: mask(self._window if kind == "sliding_attention" else None) for kind in set(self._layer_types)}
        return mask(self._window)

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
        self.cache.input_pos = input_pos
        out = self.view(layers)(
            input_ids=tokens,
            attention_mask=self.masks(input_pos),
            position_ids=input_pos[None].expand(tokens.shape[0], -1),
            use_cache=True,
            **{self.cache_kwarg: self.cache},
        )
        return out.logits.float()  # (B, T, V)
