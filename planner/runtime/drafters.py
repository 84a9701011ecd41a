"""One drafter interface, one implementation per method.

A drafter proposes gamma tokens after the pending token (the last emitted one, whose KV is
not yet in the target's cache), returning their draft probabilities when sampling, and may
change how the target verifies (early exit reuses its own work). Self-drafting methods
(layer_skip, early_exit, s3d) share the target's weights and KV cache: the draft writes the
kept layers' slots, and the verify forward overwrites every layer at those positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeState:
    pending: torch.Tensor  # (1,) last emitted token, on the device
    pos: int  # its position: the target's cache holds positions < pos
    history: list[int]  # prompt + emitted tokens, on the host
    temperature: float
    generator: torch.Generator


def pick(logits: torch.Tensor, temperature: float, generator):
    """Tokens (T,) from logits (T, V): argmax when greedy, else sampled; with their probs."""
    if temperature == 0.0:
        return logits.argmax(-1), None
    probs = torch.softmax(logits / temperature, -1)
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(-1), probs


class Drafter:
    """Autoregressive decoding is the drafter that proposes nothing (gamma = 0)."""

    gamma = 0

    def start(self, prompt: torch.Tensor) -> None:
        """Called after the target's prefill of `prompt` (T,)."""

    def propose(self, state: DecodeState):
        empty = state.pending[:0]
        return empty, None

    def verify(self, target, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """Target logits (gamma+1, V) for tokens (gamma+1,) at positions pos..pos+gamma."""
        return target.step(tokens[None], target.positions(pos, tokens.shape[0]))[0]

    def accepted(self, state: DecodeState, verified: torch.Tensor, n_accepted: int) -> None:
        """Called once per iteration with the accept count (already on the host)."""


class Autoregressive(Drafter):
    """Plain decoding: no draft, the verify forward is the one-token decode step."""


def draft_sequentially(model, layers, state: DecodeState, gamma: int):
    """gamma tokens from `model` (a Target) through `layers` (None: all), one forward per
    token, after the pending one; with their probabilities when sampling."""
    token, tokens, probs = state.pending, [], []
    for i in range(gamma):
        logits = model.step(token[None], model.positions(state.pos + i, 1), layers)[0]
        token, p = pick(logits, state.temperature, state.generator)
        tokens.append(token)
        probs.append(p)
    return torch.cat(tokens), None if probs[0] is None else torch.cat(probs)


class LayerSkip(Drafter):
    """Sequential self-drafting: the target with `skip_layers` left out, one token a step."""

    def __init__(self, target, gamma: int, skip_layers):
        self.gamma = gamma
        self.kept = tuple(i for i in range(target.num_layers) if i not in set(skip_layers))
        self.target = target

    def propose(self, state: DecodeState):
        return draft_sequentially(self.target, self.kept, state, self.gamma)


class EarlyExit(LayerSkip):
    """Draft from the first `exit_layer` layers (then the final norm and LM head), one
    token a step. The verify forward runs every layer over all gamma + 1 tokens: on
    bandwidth-bound hardware that reads the weights once, as a one-token step does, and
    it rewrites the lower layers' cache slots with the values the draft wrote."""

    def __init__(self, target, gamma: int, exit_layer: int):
        super().__init__(target, gamma, range(exit_layer, target.num_layers))


class S3D(Drafter):
    """Simultaneous drafting: [pending, mask x (gamma-1)] in one forward of an adapter's
    draft view (`draft_key`, see planner.runtime.adapter.attach: the kept layers with their
    LoRA, the mask's own embedding); the logits at position pos+i give draft token i+1. The
    verify forward runs the checkpoint's own modules."""

    def __init__(self, target, gamma: int, draft_key: tuple, mask_token_id: int):
        self.gamma = gamma
        self.draft_key = draft_key
        self.target = target
        self.masks = torch.full((gamma - 1,), mask_token_id, dtype=torch.long, device=target.device)

    def propose(self, state: DecodeState):
        tokens = torch.cat([state.pending, self.masks])  # (gamma,)
        logits = self.target.step(tokens[None], self.target.positions(state.pos, self.gamma), self.draft_key)[0]
        return pick(logits, state.temperature, state.generator)


class DraftModel(Drafter):
    """A separate small model sharing the tokenizer, with its own cache rolled back by
    position. When every draft is accepted, the last one is fed to the draft model once so
    its cache holds every accepted position."""

    def __init__(self, draft, gamma: int):
        self.gamma = gamma
        self.draft = draft

    def start(self, prompt: torch.Tensor) -> None:
        self.draft.prefill(prompt[None], self.draft.positions(0, prompt.shape[0]))

    def propose(self, state: DecodeState):
        return draft_sequentially(self.draft, None, state, self.gamma)

    def accepted(self, state: DecodeState, verified: torch.Tensor, n_accepted: int) -> None:
        if n_accepted == self.gamma:
            self.draft.step(verified[None, -1:], self.draft.positions(state.pos + self.gamma, 1))


class PromptLookup(Drafter):
    """N-gram lookup: find the latest earlier occurrence of the context's last n tokens
    (n = ngram down to 1) and propose what followed it; no model. Proposals shorter than
    gamma are padded by repeating their last token so the verify shape stays fixed."""

    def __init__(self, target, gamma: int, ngram: int):
        self.gamma = gamma
        self.ngram = ngram
        self.device = target.device

    def propose(self, state: DecodeState):
        proposal = lookup(state.history, self.ngram, self.gamma) or [state.history[-1]]
        proposal += [proposal[-1]] * (self.gamma - len(proposal))
        return torch.tensor(proposal, device=self.device), None


def lookup(history: list[int], ngram: int, gamma: int) -> list[int]:
    """Up to gamma tokens that followed the most recent earlier match of the last n tokens."""
    for n in range(min(ngram, len(history) - 1), 0, -1):
        suffix = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start : start + n] == suffix:
                return history[start + n : start + n + gamma]
    return []
