"""Training data the model makes itself (sequence-level distillation): the checkpoint's own
greedy continuations of a prompt set, and what its full forward says about them.

A draft is only useful where it agrees with the verify forward, so the draft is trained on
the target's own outputs rather than on human text (the alignment recipe of the
speculative-decoding survey, Xia et al. 2024, section 4.2; DistillSpec, Zhou et al. 2024):
1. continuations: each prompt (through the chat template when the tokenizer has one, as
   `specplan run` serves it) continued greedily by transformers' `generate`, in left-padded
   batches. They are cached under $SPECPLAN_CACHE/distill/ by a sha256 of the checkpoint's
   fingerprint, the prompts' tokens and the settings, so another adaptation of the same
   checkpoint on the same prompts reuses them.
2. the teacher pass: one full forward of each sequence through the runtime's Decoder (the
   verify forward), keeping the kept layers' keys and values, exactly what the runtime's
   cache holds when the draft runs, and the full model's argmax at every position: the
   token the verify forward accepts there, which is the draft's training label.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from planner.errors import InputError

GENERATE_BATCH = 16


@dataclass(frozen=True)
class Sequences:
    """Prompts with their greedy continuations."""

    ids: tuple[tuple[int, ...], ...]  # prompt + continuation tokens, one tuple per prompt
    prompt_lens: tuple[int, ...]
    sha256: str  # of the base fingerprint, the prompt tokens and max_new_tokens: what made them


def sequences_sha256(base_sha256: str, prompts: list[list[int]], max_new_tokens: int) -> str:
    text = json.dumps({"base": base_sha256, "prompts": prompts, "max_new_tokens": max_new_tokens, "decoding": "greedy"})
    return hashlib.sha256(text.encode()).hexdigest()


def greedy_continuations(hf_model, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_ids,
                         base_sha256: str, cache: bool = True, log=lambda message: None) -> Sequences:
    """Each prompt (token ids) continued greedily for up to max_new_tokens tokens (stopping
    after an end-of-sequence token); read from the distillation cache when it holds them."""
    from planner.runtime.checkpoint import cache_root

    sha256 = sequences_sha256(base_sha256, prompts, max_new_tokens)
    path = cache_root() / "distill" / f"{sha256}.json"
    if cache and path.is_file():
        try:
            ids = json.loads(path.read_text())["ids"]
            return Sequences(tuple(tuple(s) for s in ids), tuple(len(p) for p in prompts), sha256)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is made again
    continuations = []
    for start in range(0, len(prompts), GENERATE_BATCH):
        log(f"greedy continuations {start + 1}-{min(start + GENERATE_BATCH, len(prompts))} of {len(prompts)}")
        continuations += _generate(hf_model, prompts[start : start + GENERATE_BATCH], max_new_tokens, pad_id, eos_ids)
    ids = tuple(tuple(p) + tuple(c) for p, c in zip(prompts, continuations))
    if cache:
        _write_cache(path, ids)
    return Sequences(ids, tuple(len(p) for p in prompts), sha256)


def _write_cache(path, ids) -> None:
    from planner._files import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"ids": ids}))
    except (OSError, InputError):
        pass  # a cache that cannot be written costs time, not correctness


def _generate(hf_model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_ids) -> list[list[int]]:
    """Greedy continuations of a left-padded batch, each cut after its first end-of-sequence token."""
    import torch
    from transformers import GenerationConfig

    device = next(hf_model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)  # (B, width)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                              eos_token_id=list(eos_ids) or None)  # none of the checkpoint's sampling defaults
    with torch.no_grad():
        out = hf_model.generate(input_ids=ids, attention_mask=attention, generation_config=config)[:, width:].tolist()
    cut = []
    for row in out:
        end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        cut.append(row[:end])
    return cut


@dataclass
class Teacher:
    """The full model's view of some sequences: per sequence, its tokens (L,), prompt length,
    the argmax label at each position (L,) (the token the verify forward accepts after that
    position) and, per kept layer, the keys and values (H_kv, L, D) the runtime's cache holds."""

    tokens: list
    prompt_lens: list[int]
    labels: list
    keys: list[dict]  # [sequence][layer] -> (H_kv, L, D)
    values: list[dict]


def teacher_pass(decoder, sequences: list[tuple[int, ...]], prompt_lens, kept: tuple[int, ...], *, batch: int = 8) -> Teacher:
    """Run every sequence through all layers of `decoder` (a runtime Decoder whose
    max_seq_len holds the longest), right-padded in batches (a causal model's positions
    never see what follows them, so the padding changes nothing before it)."""
    import torch

    from planner.runtime.model import PositionCache

    teacher = Teacher([], list(prompt_lens), [], [], [])
    everything = tuple(range(decoder.num_layers))
    with torch.no_grad():
        for start in range(0, len(sequences), batch):
            chunk = sequences[start : start + batch]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([list(s) + [0] * (width - len(s)) for s in chunk], device=decoder.device)  # (B, width)
            decoder.cache = PositionCache(decoder.num_layers, decoder.max_seq_len)
            labels = decoder(ids, decoder.positions[:width], everything).argmax(-1)  # (B, width)
            for row, s in enumerate(chunk):
                n = len(s)
                teacher.tokens.append(ids[row, :n].clone())
                teacher.labels.append(labels[row, :n].clone())
                teacher.keys.append({i: decoder.cache.keys[i][row, :, :n].clone() for i in kept})
                teacher.values.append({i: decoder.cache.values[i][row, :, :n].clone() for i in kept})
    return teacher
