"""S3D adaptation as a draft-only adapter: the checkpoint stays frozen and untouched; a few
MB of LoRA on the kept layers' linear modules and the mask token's own input embedding
teach its mid-layer-skipped self to draft gamma tokens in one forward of
[pending, <mask> x (gamma-1)].

Training (recorded in s3d.json): the data is the checkpoint's own greedy continuations of
a prompt set (planner.train.distill). Each step takes `batch` draft blocks that start at
one position t in different sequences: the runtime's cache is filled with the full model's
keys and values of the kept layers for positions < t (what the verify forward leaves
there), the block runs through the adapter's draft view (the runtime's own draft forward,
planner.runtime.adapter), and its loss is the cross-entropy of the draft logits against the
full model's argmax at positions t..t+gamma-1, the tokens a greedy verify accepts. Prompts
are split by a hash of their text; the held-out ones give the greedy draft's expected tokens
per iteration (1 + the mean number of leading draft tokens that match) and its loss, before
and after. A held-out loss that is not finite refuses the result: nothing is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from planner._files import ensure_writable_dir, write_atomic
from planner.errors import InputError
from planner.profiles import PROFILES_DIR
from planner.plan.schema import MAX_GAMMA  # what a plan's decoding.gamma may be
from planner.runtime.adapter import WEIGHTS_FILE

HELD_OUT_BUCKETS = 8  # one prompt in 8 is held out (by a hash of its text)
EVAL_STRIDE = 4  # held-out draft blocks start every 4th position of each continuation
CHECKPOINTS = "checkpoints"
DRAFT_VOCAB_SIZE = 16384  # tokens of an adapter's draft vocabulary by default (planner.runtime.adapter; BENCHMARKS.md)
DEFAULT_PROMPTS = PROFILES_DIR / "prompts" / "adapt.jsonl"


@dataclass(frozen=True)
class AdaptResult:
    out: Path
    skip_layers: tuple[int, ...]
    gamma: int
    rank: int
    adapter_mb: float  # adapter.safetensors, MB (10^6 bytes)
    tokens_per_iteration_before: float  # held-out greedy estimate, adapter at its start (plain layer skip)
    tokens_per_iteration_after: float
    draft_loss_before: float  # held-out cross-entropy of the draft against the full model's argmax
    draft_loss_after: float
    seconds: float  # wall time, data included
    draft_vocab_size: int | None = None  # the draft vocabulary's tokens; None: the whole vocabulary


def _check_options(*, gamma: int, lr: float, steps: int, batch: int, rank: int, max_new_tokens: int) -> None:
    if not 1 <= gamma <= MAX_GAMMA:
        raise InputError(f"`gamma` must be between 1 and {MAX_GAMMA}, got {gamma}")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"`lr` must be a positive finite number, got {lr}")
    for name, value in (("steps", steps), ("batch", batch), ("rank", rank), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise InputError(f"`{name}` must be at least 1, got {value}")


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


def _check_held_out(before: float, after: float) -> None:
    if not math.isfinite(after):
        raise InputError(f"adaptation made the draft's held-out loss {after} (from {before:.4f}); nothing was saved: "
                         "try a lower `lr`")


def is_held_out(prompt: str) -> bool:
    return int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS == 0


def _encode_prompts(tokenizer, prompts: list[str], chat: bool | None, max_prompt_tokens: int):
    """(token ids of each prompt, whether the chat template was used); over-long and empty
    prompts are refused."""
    from planner.runtime.run import _prompt_ids, _use_chat

    if not prompts:
        raise InputError("`prompts`: no prompt given")
    chat = _use_chat(tokenizer, chat)
    encoded = []
    for number, prompt in enumerate(prompts, 1):
        ids = _prompt_ids(tokenizer, prompt, chat, number) if prompt.strip() else []
        if not ids:
            raise InputError(f"`prompts`: prompt {number} is empty")
        if len(ids) > max_prompt_tokens:
            raise InputError(f"`prompts`: prompt {number} has {len(ids)} tokens, more than the {max_prompt_tokens} "
                             "this model's positions leave room for")
        encoded.append(ids)
    return encoded, chat


def _blocks(teacher, rows, gamma: int, stride: int = 1) -> list[tuple[int, int]]:
    """(sequence, t) for every draft block whose pending token t is a generated position and
    whose gamma labels exist: prompt_len <= t <= L - gamma, every `stride`-th t."""
    return [(r, t) for r in rows for t in range(teacher.prompt_lens[r], len(teacher.tokens[r]) - gamma + 1, stride)]


def _draft_logits(decoder, key, teacher, rows, t: int, gamma: int, kept, mask_id: int):
    """Draft logits (B, gamma, V) of blocks starting at t in sequences `rows`: the cache holds
    the full model's keys and values of positions < t, as the runtime's does when it drafts."""
    import torch

    from planner.runtime.model import PositionCache

    cache = PositionCache(decoder.num_layers, decoder.max_seq_len)
    for i in kept:
        for buffers, source in ((cache.keys, teacher.keys), (cache.values, teacher.values)):
            first = source[rows[0]][i]  # (H_kv, L, D)
            buffer = first.new_zeros(len(rows), first.shape[0], decoder.max_seq_len, first.shape[2])
            buffer[:, :, :t] = torch.stack([source[r][i][:, :t] for r in rows])
            buffers[i] = buffer  # (B, H_kv, S_max, D)
    decoder.cache = cache
    pending = torch.stack([teacher.tokens[r][t] for r in rows])[:, None]  # (B, 1)
    tokens = torch.cat([pending, pending.new_full((len(rows), gamma - 1), mask_id)], 1)  # (B, gamma)
    return decoder(tokens, decoder.positions[t : t + gamma], key)


def _labels(teacher, rows, t: int, gamma: int):
    import torch

    return torch.stack([teacher.labels[r][t : t + gamma] for r in rows])  # (B, gamma)


def evaluate(decoder, key, teacher, rows, gamma: int, kept, mask_id: int, vocab=None) -> tuple[float, float, list[float]]:
    """(greedy tokens per iteration, draft cross-entropy, acceptance at each draft position)
    over the held-out blocks of sequences `rows`; with `vocab` (ascending ids (N,), a draft
    vocabulary) the greedy draft picks among those tokens only, as the runtime's does."""
    import torch
    import torch.nn.functional as F

    by_start: dict[int, list[int]] = {}
    for r, t in _blocks(teacher, rows, gamma, EVAL_STRIDE):
        by_start.setdefault(t, []).append(r)
    accepted, loss, count = 0.0, 0.0, 0
    position_hits = torch.zeros(gamma)
    with torch.no_grad():
        for t, group in sorted(by_start.items()):
            logits = _draft_logits(decoder, key, teacher, group, t, gamma, kept, mask_id)  # (B, gamma, V)
            labels = _labels(teacher, group, t, gamma)
            picked = logits.argmax(-1) if vocab is None else vocab[logits.index_select(-1, vocab).argmax(-1)]
            match = (picked == labels).int()  # (B, gamma)
            leading = match.cumprod(1)  # 1 while every earlier draft token matched
            accepted += float(leading.sum())
            position_hits += leading.sum(0).float().cpu()
            loss += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")) / gamma
            count += len(group)
    if not count:
        raise InputError(f"the held-out prompts' continuations are too short for blocks of {gamma} tokens")
    alphas = [float(position_hits[i] / position_hits[i - 1]) if i and position_hits[i - 1] else float(position_hits[0] / count)
              for i in range(gamma)]
    return 1 + accepted / count, loss / count, alphas


def draft_vocabulary(sequences, size: int, vocab_size: int):
    """The draft vocabulary of an adapter trained on `sequences` (token ids): the `size` ids
    most frequent in them (ties to the lower id), topped up with the lowest ids not among them
    (byte-pair merges number frequent tokens first), as an ascending LongTensor (size,); None
    when `size` covers the whole vocabulary."""
    import collections

    import torch

    if size >= vocab_size:
        return None
    counts = collections.Counter(t for s in sequences for t in s)
    chosen = {t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]}
    for t in range(vocab_size):
        if len(chosen) >= size:
            break
        chosen.add(t)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def _sampler(teacher, rows, gamma: int, batch: int, seed: int):
    """sample(step) -> (t, sequences): a block start drawn uniformly over every training block,
    then `batch` sequences that have a block there (with replacement when fewer do); the same
    for a step whichever run draws it, so a resumed run sees the batches it would have seen."""
    import torch

    from planner.train.loop import batch_generator

    blocks = _blocks(teacher, rows, gamma)
    if not blocks:
        raise InputError(f"the prompts' continuations are too short for blocks of {gamma} tokens: raise `max_new_tokens`")
    by_start: dict[int, list[int]] = {}
    for r, t in blocks:
        by_start.setdefault(t, []).append(r)

    def sample(step: int):
        g = batch_generator(seed, step)
        t = blocks[int(torch.randint(len(blocks), (1,), generator=g))][1]
        there = by_start[t]
        picks = torch.randint(len(there), (batch,), generator=g) if len(there) < batch else torch.randperm(len(there), generator=g)[:batch]
        return t, [there[int(i)] for i in picks]

    return sample


def adapt(
    model_path: str,
    prompts: list[str] | None = None,
    *,
    skip_layers: tuple[int, ...],
    gamma: int,
    out: str,
    rank: int = 8,
    steps: int = 300,
    lr: float = 1e-3,
    batch: int = 16,
    max_new_tokens: int = 128,
    resume: bool = False,
    seed: int = 0,
    device: str = "cpu",
    chat: bool | None = None,
    prompts_name: str | None = None,
    draft_vocab: int = DRAFT_VOCAB_SIZE,
    log=lambda message: None,
) -> AdaptResult:
    """Train an S3D draft adapter for the checkpoint at model_path (a directory, a .gguf file
    or a hub id) and save it (s3d.json, adapter.safetensors) in `out`; the checkpoint is
    never changed. The AdaptResult says what was saved.

    prompts: the distillation prompts (default: the shipped chat and code set,
    planner/profiles/prompts/adapt.jsonl), through the chat template when the tokenizer has one
    (`chat` as in planner.runtime.run_plan); prompts_name: how s3d.json names them.
    skip_layers: ascending layer indices, each once, not every layer; gamma: 1 to MAX_GAMMA
    tokens drafted per forward; rank: the LoRA rank (alpha = 2 x rank); lr: the peak
    learning rate, positive and finite; batch: draft blocks per step; max_new_tokens: the
    length of each greedy continuation; draft_vocab: the tokens the draft's LM head scores,
    the most frequent in the training sequences (draft_vocabulary; 0 or the vocabulary's size
    or more: all of them); device: auto, cpu, cuda or cuda:N. `resume`
    continues from out/checkpoints (written every few steps and removed once the adapter is
    saved). log(message) receives progress lines.

    Raises InputError for bad options or prompts, an `out` that cannot be written, a
    checkpoint that cannot be loaded (see planner.runtime.checkpoint), continuations too
    short for gamma, a resume with other options, training that diverges, or a held-out
    loss that is not finite (then nothing is saved); DeviceError for a device that is not there."""
    import torch

    from planner.hardware.measure import resolve_device
    from planner.runtime.adapter import Draft, linear_modules
    from planner.runtime.checkpoint import read_hf_config
    from planner.runtime.run import read_prompts
    from planner.train.loop import train

    started = time.perf_counter()
    _check_options(gamma=gamma, lr=lr, steps=steps, batch=batch, rank=rank, max_new_tokens=max_new_tokens)
    device = resolve_device(device)
    out = Path(out)
    ensure_writable_dir(out)
    text_config = read_hf_config(model_path).get_text_config()
    skip_layers = _check_skip_layers(skip_layers, text_config.num_hidden_layers)
    if prompts is None:
        prompts, prompts_name = read_prompts(DEFAULT_PROMPTS), prompts_name or DEFAULT_PROMPTS.name
    data = _distillation_data(model_path, prompts, skip_layers=skip_layers, gamma=gamma, max_new_tokens=max_new_tokens,
                              device=device, chat=chat, log=log)
    decoder, teacher, kept = data.decoder, data.teacher, data.kept
    held = [r for r, p in enumerate(prompts) if is_held_out(p)]
    trained = [r for r in range(len(prompts)) if r not in set(held)] or held  # one prompt: train and check on it
    held = held or trained
    vocab = draft_vocabulary([data.sequences.ids[r] for r in trained], draft_vocab or decoder.vocab_size, decoder.vocab_size)
    if vocab is not None:
        vocab = vocab.to(decoder.device)

    mask_id = decoder.vocab_size  # one past the vocabulary: no real token can be mistaken for it
    torch.manual_seed(seed)  # LoRA's A matrices start random
    draft = Draft(decoder, ("s3d-adapt",), skip_layers=skip_layers, rank=rank, alpha=2.0 * rank,
                  target_modules=linear_modules(decoder, kept), mask_token_id=mask_id)
    before = evaluate(decoder, draft.key, teacher, held, gamma, kept, mask_id, vocab)
    log(f"held-out before training: {before[0]:.3f} tokens/iteration, draft loss {before[1]:.4f}")
    options = {"skip_layers": list(skip_layers), "gamma": gamma, "rank": rank, "lr": lr, "steps": steps, "batch": batch,
               "seed": seed, "data": data.sequences.sha256}
    checkpoints = out / CHECKPOINTS
    _check_resume(checkpoints, options, resume)
    sample = _sampler(teacher, trained, gamma, batch, seed)

    def loss_fn(step: int):
        import torch.nn.functional as F

        t, rows = sample(step)
        logits = _draft_logits(decoder, draft.key, teacher, rows, t, gamma, kept, mask_id)  # (B, gamma, V)
        return F.cross_entropy(logits.flatten(0, 1), _labels(teacher, rows, t, gamma).flatten())

    state = torch.nn.ParameterDict({name.replace(".", ":"): p for name, p in draft.named_tensors().items()})
    created = not out.exists()
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_atomic(_options_path(checkpoints), json.dumps(options) + "\n")
        train(state, draft.parameters(), loss_fn, steps=steps, peak_lr=lr, checkpoint_dir=checkpoints, resume=resume,
              desc="adapt")
        after = evaluate(decoder, draft.key, teacher, held, gamma, kept, mask_id, vocab)
        _check_held_out(before[1], after[1])
    except InputError:
        shutil.rmtree(checkpoints, ignore_errors=True)  # a refused run leaves nothing to resume from
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    log(f"held-out after training: {after[0]:.3f} tokens/iteration, draft loss {after[1]:.4f}")
    training = {"steps": steps, "lr": lr, "batch": batch, "seed": seed, "seconds": round(time.perf_counter() - started),
                "held_out": {"tokens_per_iteration_before": round(before[0], 4), "tokens_per_iteration_after": round(after[0], 4),
                             "draft_loss_before": round(before[1], 4), "draft_loss_after": round(after[1], 4),
                             "acceptance_by_position_after": [round(a, 4) for a in after[2]]}}
    draft.draft_vocab = vocab
    draft.save(out, _adapter_info(model_path, data, draft, skip_layers=skip_layers, gamma=gamma, rank=rank,
                                  max_new_tokens=max_new_tokens, prompts_name=prompts_name, held_out=len(held),
                                  training=training))
    shutil.rmtree(checkpoints, ignore_errors=True)  # resumable state, not part of the adapter
    return AdaptResult(out, skip_layers, gamma, rank, (out / WEIGHTS_FILE).stat().st_size / 1e6, before[0], after[0],
                       before[1], after[1], time.perf_counter() - started, None if vocab is None else len(vocab))


@dataclass(frozen=True)
class _Data:
    decoder: object  # planner.runtime.model.Decoder over the checkpoint, in fp32 on the device
    sequences: object  # planner.train.distill.Sequences
    teacher: object  # planner.train.distill.Teacher
    kept: tuple[int, ...]
    chat: bool  # the prompts went through the chat template
    base_sha256: str
    hidden_size: int


def _distillation_data(model_path: str, prompts: list[str], *, skip_layers, gamma: int, max_new_tokens: int, device,
                       chat: bool | None, log) -> _Data:
    """The checkpoint loaded (fp32) as a runtime Decoder, its greedy continuations of the
    prompts and the teacher pass over them (planner.train.distill)."""
    import torch

    from planner.runtime.checkpoint import content_fingerprint, load_causal_lm, load_tokenizer, read_hf_config
    from planner.runtime.model import Decoder
    from planner.train.distill import greedy_continuations, teacher_pass

    text_config = read_hf_config(model_path).get_text_config()
    tokenizer = load_tokenizer(model_path)
    positions = getattr(text_config, "max_position_embeddings", None) or 4096
    encoded, chat = _encode_prompts(tokenizer, prompts, chat, positions - max_new_tokens - gamma)
    base_sha256 = content_fingerprint(model_path)
    hf_model = load_causal_lm(model_path, dtype=torch.float32).to(device)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    sequences = greedy_continuations(hf_model, encoded, max_new_tokens=max_new_tokens, pad_id=pad,
                                     eos_ids=() if eos is None else (eos,), base_sha256=base_sha256, log=log)
    decoder = Decoder(hf_model, max(len(s) for s in sequences.ids) + gamma)
    kept = tuple(i for i in range(decoder.num_layers) if i not in skip_layers)
    log(f"teacher pass over {len(sequences.ids)} sequences ({sum(map(len, sequences.ids))} tokens)")
    teacher = teacher_pass(decoder, sequences.ids, sequences.prompt_lens, kept)
    return _Data(decoder, sequences, teacher, kept, chat, base_sha256, text_config.hidden_size)


def _adapter_info(model_path: str, data: _Data, draft, *, skip_layers, gamma: int, rank: int, max_new_tokens: int,
                  prompts_name, held_out: int, training: dict):
    """s3d.json of the adapter trained on `data`."""
    from planner.runtime.adapter import FORMAT, AdapterInfo, BaseRef

    sequences, decoder = data.sequences, data.decoder
    return AdapterInfo(
        format=FORMAT, skip_layers=skip_layers, gamma=gamma, rank=rank, alpha=2.0 * rank,
        target_modules=draft.target_modules, mask_token_id=draft.mask.mask_id,
        base=BaseRef(sha256=data.base_sha256, name=Path(model_path).name, num_layers=decoder.num_layers,
                     hidden_size=data.hidden_size, vocab_size=decoder.vocab_size),
        data={"sha256": sequences.sha256, "prompts": prompts_name or "given", "sequences": len(sequences.ids),
              "held_out_sequences": held_out, "tokens": sum(map(len, sequences.ids)),
              "generated_tokens": sum(len(s) - p for s, p in zip(sequences.ids, sequences.prompt_lens)),
              "max_new_tokens": max_new_tokens, "chat_template": data.chat},
        training=training,
        draft_vocab_size=None if draft.draft_vocab is None else len(draft.draft_vocab),
    )


def _options_path(checkpoints: Path) -> Path:
    return checkpoints / "options.json"


def _check_resume(checkpoints: Path, options: dict, resume: bool) -> None:
    """InputError when `resume` would continue a run made with other options or data."""
    path = _options_path(checkpoints)
    if not (resume and path.is_file()):
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}
    differ = sorted(k for k in options if before.get(k) != options[k])
    if differ:
        raise InputError(f"`resume`: {checkpoints} was written by a run with another {differ[0]} "
                         f"({before.get(differ[0])!r}, now {options[differ[0]]!r}); resume with the same options, "
                         "or leave out `resume` to start again")
