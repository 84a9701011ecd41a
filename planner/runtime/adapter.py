"""S3D draft adapters: a few MB that make a checkpoint's kept layers draft gamma tokens in
one forward, with the checkpoint itself unchanged.

An adapter is a directory (or two files inside a model directory) holding
- s3d.json: the skip set and gamma it was trained for, its LoRA rank and scaling, the
  linear modules it adapts (names inside a decoder layer), the mask token's id, the base
  checkpoint's content fingerprint and shape, and how it was made (AdapterInfo);
- adapter.safetensors: "layers.{i}.{module}.lora_A" (r, in) and ".lora_B" (out, r) for
  each kept layer i, "mask_embedding" (H,): the mask token's input embedding, and, when
  s3d.json gives a draft_vocab_size, "draft_vocab" (N,): the ascending token ids the draft's
  LM head scores (its draft vocabulary, below).

The draft is a registered view of the runtime's Decoder (planner.runtime.model): the kept
layers as copies whose linear modules peft wraps with LoRA (each copy shares every weight
of the original; only the low-rank matrices are new), and the input embedding wrapped so
that the mask id, one past the vocabulary, embeds as the adapter's vector. The mask never
reaches the LM head as an input of the verify forward, which runs the original modules:
decoding with an adapter is lossless against the checkpoint it was trained on, and an
adapter for another checkpoint is refused by its fingerprint.

A draft vocabulary (FR-Spec: Zhao et al. 2025, "FR-Spec: Accelerating Large-Vocabulary
Language Models via Frequency-Ranked Speculative Sampling", arXiv:2502.14856; EAGLE-3's heads
do the same with 32k of Llama-3's 128k tokens) makes the draft's LM head read N of the V
rows of the checkpoint's: the N tokens most frequent in the adapter's training data. The
draft then never proposes a token outside them (the logits there are -inf), which costs
acceptance only where the checkpoint's own next token lies outside; the verify scores the
whole vocabulary, so the output is unchanged. The N rows are copied once when the draft is
attached (N x H in the runtime dtype: 18.9 MB for the default 16,384 rows of SmolLM2's 576).

Only the standard library is imported at module level: planning finds adapters without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from planner._fields import from_mapping, to_plain
from planner.errors import InputError, NotFoundError
from planner.profiles import PROFILES_DIR

INFO_FILE = "s3d.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT = "specplan-s3d-adapter/1"
SHIPPED_DIR = PROFILES_DIR / "adapters"
MASK_EMBEDDING = "mask_embedding"
DRAFT_VOCAB = "draft_vocab"


@dataclass(frozen=True)
class BaseRef:
    """The checkpoint an adapter was trained on."""

    sha256: str  # planner.runtime.checkpoint.content_fingerprint of it
    name: str  # what it was called when trained (a file or directory name): for people, not matched
    num_layers: int
    hidden_size: int
    vocab_size: int


@dataclass(frozen=True)
class AdapterInfo:
    """s3d.json: what an adapter is for and how it was made."""

    format: str
    skip_layers: tuple[int, ...]
    gamma: int  # the draft length it was trained for: gamma - 1 mask tokens after the pending one
    rank: int  # LoRA rank r
    alpha: float  # LoRA scaling alpha (the update is alpha / r * B A x)
    target_modules: tuple[str, ...]  # linear modules adapted, named inside a decoder layer
    mask_token_id: int  # the base's vocabulary size: one past its last token
    base: BaseRef
    data: dict | None = None  # the distillation data: its sha256, prompts, tokens, settings
    training: dict | None = None  # steps, learning rate, seconds, held-out figures before and after
    draft_vocab_size: int | None = None  # tokens the draft's LM head scores (adapter.safetensors' draft_vocab); None: all


@dataclass(frozen=True)
class Adapter:
    path: Path  # the directory holding s3d.json and adapter.safetensors
    info: AdapterInfo

    @property
    def key(self) -> tuple:
        """The runtime view key of this adapter's draft (planner.runtime.model.Decoder.register_view)."""
        return ("s3d-adapter", str(self.path.resolve()))


def _check(name: str, path: str, value) -> None:
    if name in ("gamma", "rank", "num_layers", "hidden_size", "vocab_size", "draft_vocab_size") and value < 1:
        raise InputError(f"{path}: must be at least 1, got {value}")
    if name in ("skip_layers", "mask_token_id") and value < 0:
        raise InputError(f"{path}: must not be negative, got {value}")
    if name == "format" and value != FORMAT:
        raise InputError(f"{path}: '{value}' is not {FORMAT}")


def read_adapter(path) -> Adapter:
    """The adapter in directory `path`.

    Raises NotFoundError when `path` has no s3d.json or adapter.safetensors; InputError when
    s3d.json is not an adapter's (a field missing, of the wrong type or out of range; the
    message names it)."""
    directory = Path(path)
    info_path = directory / INFO_FILE
    for needed in (info_path, directory / WEIGHTS_FILE):
        if not needed.is_file():
            raise NotFoundError(f"{directory}: no S3D adapter here (no {needed.name})")
    try:
        data = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{info_path}: not readable JSON ({exc})") from None
    try:
        info = from_mapping(AdapterInfo, data, check=_check)
    except InputError as exc:
        raise InputError(f"{info_path}: {exc}") from None
    if not info.skip_layers or list(info.skip_layers) != sorted(set(info.skip_layers)) \
            or info.skip_layers[-1] >= info.base.num_layers or len(info.skip_layers) == info.base.num_layers:
        raise InputError(f"{info_path}: skip_layers {list(info.skip_layers)} is not an ascending set of some of "
                         f"the base's {info.base.num_layers} layers")
    if info.mask_token_id < info.base.vocab_size:
        raise InputError(f"{info_path}: mask_token_id {info.mask_token_id} is a token of the vocabulary; the mask is one "
                         f"past it ({info.base.vocab_size})")
    if info.draft_vocab_size is not None and info.draft_vocab_size > info.base.vocab_size:
        raise InputError(f"{info_path}: draft_vocab_size {info.draft_vocab_size} is more than the base's vocabulary "
                         f"({info.base.vocab_size})")
    _check_weights_header(directory / WEIGHTS_FILE, info.draft_vocab_size)
    return Adapter(directory, info)


def _check_weights_header(path: Path, draft_vocab_size: int | None = None) -> None:
    """InputError, one line, when `path` is not a whole safetensors file holding the mask
    embedding, and the draft vocabulary of `draft_vocab_size` ids when one is given (its
    header and sizes only are read: a damaged file is refused when planning, not first when
    decoding)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            vocab_shape = f.get_slice(DRAFT_VOCAB).get_shape() if DRAFT_VOCAB in names else None
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable safetensors file ({reason[:160]})") from None
    if MASK_EMBEDDING not in names:
        raise InputError(f"{path}: holds no '{MASK_EMBEDDING}' tensor: not an S3D adapter's weights")
    if draft_vocab_size is not None and list(vocab_shape or []) != [draft_vocab_size]:
        found = "none" if vocab_shape is None else f"shape {list(vocab_shape)}"
        raise InputError(f"{path}: '{DRAFT_VOCAB}' should hold the {draft_vocab_size} ids s3d.json's draft_vocab_size "
                         f"gives; found {found}")


def write_info(directory: Path, info: AdapterInfo) -> None:
    from planner._files import write_atomic

    write_atomic(directory / INFO_FILE, json.dumps(to_plain(info), indent=2, allow_nan=False) + "\n")


def shipped_adapters() -> list[Adapter]:
    """The adapters under planner/profiles/adapters/, by directory name."""
    if not SHIPPED_DIR.is_dir():
        return []
    return [read_adapter(p) for p in sorted(SHIPPED_DIR.iterdir()) if (p / INFO_FILE).is_file()]


def config_shape(hf_config) -> tuple[int, int, int]:
    """(layers, hidden size, vocabulary) of a transformers config: what an adapter's base must have."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return text.num_hidden_layers, text.hidden_size, text.vocab_size


def _base_shape(adapter: Adapter) -> tuple[int, int, int]:
    base = adapter.info.base
    return base.num_layers, base.hidden_size, base.vocab_size


def check_base(adapter: Adapter, source: str, shape: tuple[int, int, int]) -> None:
    """InputError unless `adapter` was trained on the checkpoint `source` of `shape` (see
    config_shape): its shape, then its content fingerprint."""
    from planner.runtime.checkpoint import content_fingerprint

    base = adapter.info.base
    if shape != _base_shape(adapter):
        layers, hidden, vocab = shape
        raise InputError(f"adapter {adapter.path} was trained for a {base.num_layers}-layer model of width "
                         f"{base.hidden_size} and vocabulary {base.vocab_size}, not this {layers}-layer one of width "
                         f"{hidden} and vocabulary {vocab}")
    found = content_fingerprint(source)
    if found != base.sha256:
        raise InputError(f"adapter {adapter.path} was trained on {base.name} (sha256 {base.sha256[:12]}), not on this "
                         f"checkpoint (sha256 {found[:12]}): an adapter drafts only for its own base")


def find_adapter(source: str, shape: tuple[int, int, int], *, given: str | None = None) -> Adapter | None:
    """The S3D adapter for the checkpoint `source` (a local checkpoint directory or a .gguf
    file) of `shape` (see config_shape): `given` (a directory) when given, else one saved in
    the checkpoint's directory, else a shipped one whose base has this shape and content
    fingerprint; None when there is none.

    Raises what read_adapter raises; InputError when `given`, or one in the checkpoint's
    directory, was trained on another checkpoint."""
    from planner.runtime.checkpoint import content_fingerprint

    own = Path(source) / INFO_FILE
    if given is not None or own.is_file():
        adapter = read_adapter(given if given is not None else own.parent)
        check_base(adapter, source, shape)
        return adapter
    shaped = [a for a in shipped_adapters() if _base_shape(a) == shape]
    if not shaped:
        return None  # no fingerprint to compute: nothing shipped could match
    sha256 = content_fingerprint(source)
    return next((a for a in shaped if a.info.base.sha256 == sha256), None)


def planned_s3d(model: str, shape: tuple[int, int, int], *, given: str | None = None):
    """(the s3d Decoding its adapter fixes, the adapter's held-out acceptance or None) for
    planning the model named `model` (a directory or .gguf file; see find_adapter), or None
    when it has no adapter. An adapter drafts only for its own skip set, so the plan takes
    its skipped layers and gamma as they are; `given` is recorded in the plan (a found one
    is found again when the plan runs).

    Raises InputError for `given` with a model that is not a local checkpoint (a card or hub
    id: nothing to check the adapter against); what find_adapter raises."""
    from planner.perf.speedup import alpha_from_tokens_per_iteration
    from planner.plan.schema import Decoding

    path = Path(model).expanduser()
    local = path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf")
    if not local:
        if given is not None:
            raise InputError(f"`adapter` needs `model` to be a checkpoint (a directory or .gguf file) to check it against, "
                             f"not '{model}'")
        return None
    adapter = find_adapter(str(path), shape, given=given)
    if adapter is None:
        return None
    info = adapter.info
    decoding = Decoding(method="s3d", gamma=info.gamma, skip_layers=info.skip_layers, adapter=given,
                        draft_vocab_size=info.draft_vocab_size)
    tau = ((info.training or {}).get("held_out") or {}).get("tokens_per_iteration_after")
    return decoding, (alpha_from_tokens_per_iteration(tau, info.gamma) if isinstance(tau, (int, float)) else None)


# ---------------------------------------------------------------- the draft (torch from here on)


def _mask_embedding_class():
    import torch
    from torch import nn

    class MaskEmbedding(nn.Module):
        """The input embedding, with one more id (`mask_id`) embedded as `vector` (H,)."""

        def __init__(self, embedding: nn.Module, mask_id: int, vector: torch.Tensor):
            super().__init__()
            self.embedding = embedding
            self.mask_id = mask_id
            self.vector = nn.Parameter(vector)

        def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            is_mask = ids == self.mask_id  # (B, T)
            hidden = self.embedding(ids.masked_fill(is_mask, 0), *args, **kwargs)  # (B, T, H)
            return torch.where(is_mask[..., None], self.vector.to(hidden.dtype), hidden)

    return MaskEmbedding


def _draft_head_class():
    import torch
    from torch import nn

    class DraftHead(nn.Module):
        """The checkpoint's LM head over a draft vocabulary: logits (..., V) whose `ids` (N,)
        columns are those of `head` (a copy of its N rows, so one forward reads N x H
        weights, not V x H) and -inf elsewhere."""

        def __init__(self, head: nn.Linear, ids: torch.Tensor):
            super().__init__()
            self.vocab_size = head.out_features
            self.register_buffer("ids", ids.to(head.weight.device), persistent=False)
            self.rows = nn.Linear(head.in_features, len(ids), bias=head.bias is not None, device="meta")
            self.rows.weight = nn.Parameter(head.weight.detach()[self.ids].contiguous(), requires_grad=False)
            if head.bias is not None:
                self.rows.bias = nn.Parameter(head.bias.detach()[self.ids].contiguous(), requires_grad=False)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            scored = self.rows(hidden)  # (..., N)
            logits = scored.new_full((*scored.shape[:-1], self.vocab_size), float("-inf"))
            return logits.index_copy_(-1, self.ids, scored)

    return DraftHead


def check_draft_vocab(ids, vocab_size: int, where: str) -> None:
    """InputError unless `ids` is a 1-D integer tensor of ascending distinct token ids below
    `vocab_size` (a draft vocabulary)."""
    import torch

    if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64) or not len(ids):
        raise InputError(f"{where}: '{DRAFT_VOCAB}' must be a 1-D tensor of token ids, got {ids.dtype} "
                         f"of shape {list(ids.shape)}")
    if int(ids[0]) < 0 or int(ids[-1]) >= vocab_size or (len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all())):
        raise InputError(f"{where}: '{DRAFT_VOCAB}' must hold distinct token ids in ascending order, "
                         f"from 0 to below {vocab_size}")


def _layer_copy(layer):
    """A copy of a decoder layer's module tree that shares every parameter and buffer."""
    import copy
    import itertools

    shared = {id(t): t for t in itertools.chain(layer.parameters(), layer.buffers())}
    return copy.deepcopy(layer, memo=shared)


def linear_modules(decoder, layers) -> tuple[str, ...]:
    """Names (inside a decoder layer) of every linear module of the decoder layers `layers`."""
    from torch import nn

    return tuple(sorted({name for i in layers for name, m in decoder.layers[i].named_modules()
                         if isinstance(m, nn.Linear)}))


class Draft:
    """An S3D draft attached to a runtime Decoder: LoRA-adapted copies of the kept layers and
    the mask embedding, registered under `key`. `parameters()` are the adapter's tensors
    (trainable); the checkpoint's stay frozen and shared."""

    def __init__(self, decoder, key: tuple, *, skip_layers, rank: int, alpha: float, target_modules, mask_token_id: int,
                 vector=None, draft_vocab=None):
        """vector: the mask embedding (H,); default: the mean input embedding of the vocabulary.
        draft_vocab: ascending token ids (N,) the draft's LM head scores; None: all of them."""
        import torch
        from peft import LoraConfig, inject_adapter_in_model
        from torch import nn

        self.kept = tuple(i for i in range(decoder.num_layers) if i not in set(skip_layers))
        self.key = key
        self.target_modules = tuple(target_modules)
        copies = nn.ModuleList(_layer_copy(decoder.layers[i]) for i in self.kept)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules), bias="none")
        self.lora = inject_adapter_in_model(config, copies)  # in place: the copies' linears become LoRA layers
        from planner.runtime.kernels import use_lean_linears, use_lean_lora

        use_lean_lora(self.lora)  # one lean call per adapted linear when decoding on a CPU (peft's forward when training)
        embedding = decoder.hf_model.get_input_embeddings()
        if vector is None:
            with torch.no_grad():
                vector = embedding(torch.arange(decoder.vocab_size, device=decoder.device)).float().mean(0)  # (H,)
        self.mask = _mask_embedding_class()(embedding, mask_token_id, vector.detach().to(decoder.device, torch.float32))
        stand_ins = {decoder.layers[i]: copy for i, copy in zip(self.kept, self.lora)}
        stand_ins[embedding] = self.mask
        self.draft_vocab = None
        if draft_vocab is not None:
            check_draft_vocab(draft_vocab, decoder.vocab_size, "draft_vocab")
            self.draft_vocab = draft_vocab.to(device=decoder.device, dtype=torch.long)
            head = decoder.hf_model.get_output_embeddings()
            if not isinstance(head, nn.Linear):
                raise InputError(f"model_type '{decoder.hf_model.config.model_type}': its LM head is not a linear layer, "
                                 "so a draft vocabulary cannot select its rows")
            draft_head = _draft_head_class()(head, self.draft_vocab)
            use_lean_linears(draft_head)
            stand_ins[head] = draft_head
        decoder.register_view(key, self.kept, stand_ins)

    def named_tensors(self) -> dict:
        """The adapter's tensors by their adapter.safetensors names (live parameters, not copies)."""
        named = {MASK_EMBEDDING: self.mask.vector}
        for position, layer in zip(self.kept, self.lora):
            for name, p in layer.named_parameters():
                if "lora_" in name:  # e.g. self_attn.q_proj.lora_A.default.weight
                    module, kind = name.split(".lora_")
                    named[f"layers.{position}.{module}.lora_{kind.split('.')[0]}"] = p
        return named

    def parameters(self) -> list:
        return list(self.named_tensors().values())

    def load(self, tensors: dict, where: str) -> None:
        """Copy `tensors` (named as in adapter.safetensors) into the adapter. InputError when
        the names or shapes are not this draft's."""
        import torch

        own = self.named_tensors()
        if set(tensors) != set(own):
            odd = sorted(set(tensors) ^ set(own))[0]
            raise InputError(f"{where}: tensor '{odd}' does not match the adapter's layers and modules")
        with torch.no_grad():
            for name, p in own.items():
                if tuple(tensors[name].shape) != tuple(p.shape):
                    raise InputError(f"{where}: tensor '{name}' is {tuple(tensors[name].shape)}, expected {tuple(p.shape)}")
                p.copy_(tensors[name])

    def save(self, directory: Path, info: AdapterInfo, dtype=None) -> None:
        """adapter.safetensors (the tensors in `dtype`, default bf16) and s3d.json in `directory`."""
        import torch
        from safetensors.torch import save

        from planner._files import write_atomic

        tensors = {name: p.detach().to("cpu", dtype or torch.bfloat16).contiguous() for name, p in self.named_tensors().items()}
        if self.draft_vocab is not None:
            tensors[DRAFT_VOCAB] = self.draft_vocab.to("cpu", torch.int32).contiguous()
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT}))
        write_info(directory, info)


def attach(decoder, adapter: Adapter) -> tuple:
    """Build `adapter`'s draft on `decoder` (a planner.runtime.model.Decoder), in its dtype;
    returns the view key that runs it. Raises InputError for an unreadable or mismatched
    adapter.safetensors."""
    import torch
    from safetensors.torch import load_file

    from planner.runtime.checkpoint import loading

    weights = adapter.path / WEIGHTS_FILE
    with loading(f"the S3D adapter's weights {weights}"):
        tensors = load_file(str(weights))
    info = adapter.info
    draft_vocab = tensors.pop(DRAFT_VOCAB, None)  # s3d.json's draft_vocab_size says whether it is used
    if info.draft_vocab_size is None:
        draft_vocab = None
    else:
        check_draft_vocab(draft_vocab, info.base.vocab_size, str(weights))
    draft = Draft(decoder, adapter.key, skip_layers=info.skip_layers, rank=info.rank, alpha=info.alpha,
                  target_modules=info.target_modules, mask_token_id=info.mask_token_id, vector=tensors.get(MASK_EMBEDDING),
                  draft_vocab=draft_vocab)
    draft.load(tensors, str(weights))
    for p in draft.parameters():
        if not torch.isfinite(p).all():
            raise InputError(f"{weights}: holds values that are not finite")
        p.data = p.data.to(device=decoder.device, dtype=decoder.dtype)  # the adapter's tensors only: base weights stay as loaded
    return adapter.key


def untrained_draft(decoder, skip_layers, *, rank: int = 8) -> tuple:
    """The view key of an S3D draft whose adapter is where `specplan adapt` starts (LoRA's B
    at zero, the mean input embedding as the mask): it drafts like plain layer skipping with
    a mask token and costs what a trained adapter of this rank costs. For benchmarks and for
    the before-training bound, not for serving."""
    kept = tuple(i for i in range(decoder.num_layers) if i not in set(skip_layers))
    key = ("s3d-untrained", tuple(skip_layers), rank)
    Draft(decoder, key, skip_layers=skip_layers, rank=rank, alpha=2.0 * rank, target_modules=linear_modules(decoder, kept),
          mask_token_id=decoder.vocab_size)
    return key
