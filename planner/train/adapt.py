"""S3D adaptation: teach a causal LM to draft gamma tokens in one forward of its
mid-layer-skipped self, fed [last token, <mask> x (gamma-1)].

The scheme (recorded in s3d.json as "method"): the skipped layers, the embeddings and the head
stay frozen; the kept layers and the mask token's embedding row are trained on
    CE(draft positions vs the next gamma tokens) + KL(frozen full model || full model)
where the KL runs over the ordinary text in the same forward, so the full model's own
predictions stay put. The full model's held-out loss is measured before and after; a rise of
more than 1% refuses the result and nothing is saved.

One forward serves both terms: the prefix runs through every layer (exactly as the runtime's
verify fills the KV cache), the draft positions pass through skipped layers unchanged and,
being causal, never disturb the prefix.
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from planner._files import ensure_writable_dir, write_atomic
from planner.errors import InputError
from planner.plan.schema import MAX_GAMMA  # what a plan's decoding.gamma may be

MAX_LOSS_RISE = 0.01
KL_WEIGHT = 2.0
HELD_OUT_FRACTION = 0.1  # the stream's tail: never trained on
MIN_PREFIX, MAX_PREFIX = 16, 192


@dataclass(frozen=True)
class AdaptResult:
    out: Path
    mask_token_id: int
    skip_layers: tuple[int, ...]
    gamma: int
    loss_before: float  # full model, held-out next-token cross-entropy
    loss_after: float
    draft_loss: float | None  # mean draft CE over the last 10% of the steps run here (None: none ran)


def _check_options(*, gamma: int, lr: float, steps: int, batch: int) -> None:
    if not 1 <= gamma <= MAX_GAMMA:
        raise InputError(f"`gamma` must be between 1 and {MAX_GAMMA}, got {gamma}")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"`lr` must be a positive finite number, got {lr}")
    for name, value in (("steps", steps), ("batch", batch)):
        if value < 1:
            raise InputError(f"`{name}` must be at least 1, got {value}")


def _check_held_out_loss(before: float, after: float) -> None:
    """Refuse an adapted model whose full-model held-out loss is not finite or rose by more
    than MAX_LOSS_RISE."""
    if not math.isfinite(after):
        raise InputError(f"adaptation made the full model's held-out loss {after} (from {before:.4f}); "
                         "the model was not saved: try a lower `lr`")
    if after > before * (1 + MAX_LOSS_RISE):
        raise InputError(
            f"adaptation raised the full model's held-out loss from {before:.4f} to {after:.4f} "
            f"(more than {MAX_LOSS_RISE:.0%}); the model was not saved: try a lower `lr` or fewer `steps`"
        )


def _check_skip_layers(skip_layers, num_layers: int) -> tuple[int, ...]:
    """`skip_layers` as a tuple, refused unless ascending layer indices, each once, inside the
    model and leaving at least one layer."""
    if isinstance(skip_layers, str) or not isinstance(skip_layers, (tuple, list, range)):
        raise InputError(f"`skip_layers`: expected a tuple of layer indices, got {type(skip_layers).__name__} {skip_layers!r:.40}")
    layers = tuple(skip_layers)
    if not layers:
        raise InputError("`skip_layers` names no layer: the draft must skip at least one")
    if any(not isinstance(i, int) or isinstance(i, bool) for i in layers) or list(layers) != sorted(set(layers)):
        raise InputError(f"`skip_layers` {list(layers)}: expected ascending layer indices, each once")
    outside = [i for i in layers if not 0 <= i < num_layers]
    if outside:
        raise InputError(f"`skip_layers`: layer {outside[0]} is outside the model's 0-{num_layers - 1}")
    if len(layers) == num_layers:
        raise InputError(f"`skip_layers`: skips all {num_layers} layers; the draft must keep one")
    return layers


def _mask_token_id(tokenizer, model) -> int:
    """The tokenizer's mask token, added (and the embeddings grown) when it has none."""
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": "<mask>"})
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.mask_token_id


def forward_logits(model, ids, *, embed_weight=None, skip=(), draft_from: int | None = None):
    """Logits (B, T, V) of a Llama-style HF model run layer by layer.

    embed_weight replaces the input (and tied output) embedding matrix; positions from
    draft_from on pass through the `skip` layers unchanged (the S3D draft path)."""
    import torch
    import torch.nn.functional as F

    inner = model.model
    weight = inner.embed_tokens.weight if embed_weight is None else embed_weight
    h = F.embedding(ids, weight)  # (B, T, H)
    T = ids.shape[1]
    pos = torch.arange(T, device=ids.device)[None]
    rope = inner.rotary_emb(h, position_ids=pos)
    causal = torch.full((T, T), float("-inf"), device=ids.device, dtype=h.dtype).triu(1)[None, None]
    drafting = (torch.arange(T, device=ids.device) >= (T if draft_from is None else draft_from))[None, :, None]
    for i, layer in enumerate(inner.layers):
        out = layer(h, attention_mask=causal, position_ids=pos, position_embeddings=rope)
        out = out[0] if isinstance(out, tuple) else out
        h = torch.where(drafting, h, out) if i in skip else out
    h = inner.norm(h)
    tied = model.lm_head.weight is inner.embed_tokens.weight
    return F.linear(h, weight) if tied else model.lm_head(h)


def _embedding_with_mask(model, mask_vec, mask_id: int):
    import torch

    w = model.model.embed_tokens.weight
    return torch.cat([w[:mask_id], mask_vec[None], w[mask_id + 1 :]])


def _split_stream(stream, seq_len: int, held_out):
    """(training tokens, held-out tokens): the given held-out stream, else the data's tail."""
    cut = len(stream) if held_out is not None else int(len(stream) * (1 - HELD_OUT_FRACTION))
    held = stream[cut:] if held_out is None else held_out
    if cut < MAX_PREFIX + 64 or len(held) < seq_len + 1:
        raise InputError(f"`data` holds {len(stream)} tokens: too little text to adapt on (need ~{10 * (MAX_PREFIX + 64)})")
    return stream[:cut], held


def adapt(
    model_path: str,
    data,
    *,
    skip_layers: tuple[int, ...],
    gamma: int,
    out: str,
    steps: int = 300,
    lr: float = 5e-4,
    batch: int = 8,
    resume: bool = False,
    seed: int = 0,
    device: str = "cpu",
    held_out_files=None,
) -> AdaptResult:
    """Adapt the model at model_path (a directory, a .gguf file or a hub id) for S3D drafting
    and save it, with s3d.json, to `out`; the AdaptResult says what was saved.

    skip_layers: ascending layer indices, each once, not every layer; gamma: 1 to MAX_GAMMA
    tokens drafted per forward; lr: the peak learning rate, positive and finite; device:
    auto, cpu, cuda or cuda:N. The full model's loss is checked on held_out_files, or on the
    last 10% of `data`'s tokens (then never trained on).

    Raises InputError for bad options, an `out` that cannot be written, a checkpoint that
    cannot be loaded (see planner.runtime.checkpoint), too little data, a full model whose
    held-out loss is not finite, training that diverges, or a full-model held-out loss that
    becomes non-finite or rises by more than MAX_LOSS_RISE (then the model is not saved);
    DeviceError for a device that is not there."""
    import torch
    import torch.nn.functional as F

    from planner.hardware.measure import resolve_device
    from planner.runtime.checkpoint import load_causal_lm, load_tokenizer, read_hf_config
    from planner.train._loss import consecutive_windows, next_token_loss
    from planner.train.data import text_files
    from planner.train.demo import sample_windows, token_stream
    from planner.train.loop import batch_generator, train

    _check_options(gamma=gamma, lr=lr, steps=steps, batch=batch)
    device = resolve_device(device)
    ensure_writable_dir(out)
    files = text_files(data)
    config = read_hf_config(model_path)
    skip_layers = _check_skip_layers(skip_layers, config.num_hidden_layers)
    tokenizer = load_tokenizer(model_path)
    stream = token_stream(tokenizer, files)
    held_tokens = token_stream(tokenizer, text_files(held_out_files, parameter="held_out_files")) if held_out_files else None
    train_stream, held_stream = _split_stream(stream, 128, held_tokens)
    held = consecutive_windows(held_stream, seq_len=128, max_windows=32).to(device)

    model = load_causal_lm(model_path, dtype=torch.float32).to(device)
    saved_dtype = getattr(config, "dtype", None)
    mask_id = _mask_token_id(tokenizer, model)
    loss_before = next_token_loss(model, held)
    if not math.isfinite(loss_before):
        raise InputError(f"{model_path}: the full model's held-out loss is {loss_before} before any training; "
                         "its logits are not finite")
    teacher = copy.deepcopy(model).eval().requires_grad_(False)

    model.requires_grad_(False)
    kept = [layer for i, layer in enumerate(model.model.layers) if i not in skip_layers]
    for layer in kept:
        layer.requires_grad_(True)
    model.mask_vec = torch.nn.Parameter(model.model.embed_tokens.weight[mask_id].detach().clone())
    rng = random.Random(seed)
    prefixes = [rng.randint(MIN_PREFIX, MAX_PREFIX) for _ in range(steps)]
    draft_losses: list[float] = []

    def loss_fn(step: int):
        t = prefixes[step]
        x = sample_windows(train_stream, batch, t + gamma + 1, batch_generator(seed, step)).to(device)  # (B, t+gamma+1)
        ids = torch.cat([x[:, : t + 1], torch.full((batch, gamma - 1), mask_id, device=device)], 1)  # (B, t+gamma)
        weight = _embedding_with_mask(model, model.mask_vec, mask_id)
        logits = forward_logits(model, ids, embed_weight=weight, skip=skip_layers, draft_from=t)
        draft = F.cross_entropy(logits[:, t:].flatten(0, 1), x[:, t + 1 :].flatten())
        with torch.no_grad():
            teacher_logp = F.log_softmax(teacher(input_ids=x[:, :t]).logits, -1)  # (B, t, V)
        kl = F.kl_div(F.log_softmax(logits[:, :t], -1), teacher_logp, log_target=True, reduction="batchmean") / t
        draft_losses.append(draft.item())
        return draft + KL_WEIGHT * kl

    model.train()
    train(model, [model.mask_vec] + [p for layer in kept for p in layer.parameters()], loss_fn,
          steps=steps, peak_lr=lr, checkpoint_dir=Path(out) / "checkpoints", resume=resume, desc="adapt")
    model.eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[mask_id] = model.mask_vec
    del model.mask_vec
    loss_after = next_token_loss(model, held)
    _check_held_out_loss(loss_before, loss_after)
    tail = draft_losses[-max(1, len(draft_losses) // 10) :]
    result = AdaptResult(Path(out), mask_id, skip_layers, gamma, loss_before, loss_after, sum(tail) / len(tail) if tail else None)
    _save(model.to(saved_dtype or torch.float32), tokenizer, result, steps=steps)
    return result


def _save(model, tokenizer, result: AdaptResult, *, steps: int) -> None:
    out = result.out
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "mask_token_id": result.mask_token_id,
        "skip_layers": list(result.skip_layers),
        "gamma": result.gamma,
        "method": "kept layers + mask embedding trained; KL to the frozen full model; embeddings, head, skipped layers frozen",
        "steps": steps,
        "full_model_heldout_loss_before": round(result.loss_before, 5),
        "full_model_heldout_loss_after": round(result.loss_after, 5),
        "draft_loss": None if result.draft_loss is None else round(result.draft_loss, 5),
    }
    write_atomic(out / "s3d.json", json.dumps(meta, indent=2, allow_nan=False) + "\n")
