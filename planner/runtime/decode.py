"""Decoding: prefill, then one speculative loop for every method.

Each iteration the drafter proposes gamma tokens (gamma = 0: plain autoregressive), the
target scores gamma + 1 positions in one forward, and the accept rule keeps a prefix plus
one token from the target. Everything stays on the device until one `.tolist()` per
iteration fetches the accept count and the tokens: the only host synchronisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from planner.runtime.drafters import DecodeState, Drafter, pick


@dataclass(frozen=True)
class Generation:
    tokens: tuple[int, ...]  # generated tokens (prompt excluded), cut after EOS / max_new_tokens
    iterations: int  # speculative iterations after the prefill
    drafted: int  # draft tokens proposed
    accepted: int  # draft tokens accepted
    prefill_s: float
    decode_s: float  # all iterations, device-synchronised
    accept_counts: tuple[int, ...] = ()  # [n]: iterations that accepted exactly n draft tokens, n = 0..gamma

    @property
    def decode_tokens(self) -> int:
        return len(self.tokens) - 1  # the first token comes from the prefill


def accept_greedy(target_logits: torch.Tensor, draft: torch.Tensor):
    """Longest prefix of `draft` (gamma,) matching the target's argmax, plus the target's
    next token. Returns (tokens (gamma+1,), n accepted as a 0-d tensor): emit tokens[:n+1]."""
    target = target_logits.argmax(-1)  # (gamma+1,)
    gamma = draft.shape[0]
    n = torch.cumprod((draft == target[:gamma]).int(), 0).sum()
    return target, n  # accepted drafts equal the target's own tokens, so target[:n+1] is the output


def accept_sampled(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, generator):
    """Speculative sampling. p: target probs (gamma+1, V); q: draft probs (gamma, V) that
    `draft` (gamma,) was sampled from. Draft i is kept with probability min(1, p_i/q_i); at
    the first rejection the token is resampled from norm(max(p - q, 0)); if every draft is
    kept, a bonus token is sampled from p_gamma. The output is distributed exactly as p."""
    gamma = draft.shape[0]
    idx = torch.arange(gamma, device=draft.device)
    p_draft, q_draft = p[idx, draft], q[idx, draft]  # (gamma,)
    u = torch.rand(gamma, device=draft.device, generator=generator)
    n = torch.cumprod((u * q_draft <= p_draft).int(), 0).sum()
    residual = torch.cat([(p[:gamma] - q).clamp_min(0), p[gamma:]])  # (gamma+1, V)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)  # p == q: never rejected
    replacement = sample(residual, generator)  # (gamma+1,)
    positions = torch.arange(gamma + 1, device=draft.device)
    padded = torch.cat([draft, replacement[-1:]])
    return torch.where(positions == n, replacement, padded), n


def sample(probs: torch.Tensor, generator) -> torch.Tensor:
    """One token per row of probs (T, V), by the exponential-race trick: no host sync."""
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(-1)


def _verify(target_logits, draft, draft_probs, state: DecodeState):
    if state.temperature == 0.0:
        return accept_greedy(target_logits, draft)
    p = torch.softmax(target_logits / state.temperature, -1)
    if draft_probs is None:  # a deterministic draft (prompt lookup) is a one-hot q
        draft_probs = torch.nn.functional.one_hot(draft, p.shape[-1]).to(p.dtype)
    return accept_sampled(p, draft_probs, draft, state.generator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(
    target,
    drafter: Drafter,
    prompt: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    eos_ids: tuple[int, ...] = (),
    on_tokens=None,
) -> Generation:
    """Decode `prompt` with `drafter` on `target` (a runtime.load.Target).

    on_tokens(list[int]) is called with each iteration's accepted tokens (for streaming)."""
    device = target.device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor(prompt, device=device)
    _sync(device)
    start = time.perf_counter()
    logits = target.prefill(ids[None], target.positions(0, len(prompt)))[0, -1:]  # (1, V)
    first, _ = pick(logits, temperature, generator)
    drafter.start(ids)
    tokens = [first.item()]
    prefill_s = time.perf_counter() - start
    state = DecodeState(first, len(prompt), list(prompt) + tokens, temperature, generator)
    if on_tokens:
        on_tokens(tokens[:])
    iterations = drafted = accepted = 0
    accept_counts = [0] * (drafter.gamma + 1)
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and tokens[-1] not in eos_ids:
        draft, draft_probs = drafter.propose(state)  # (gamma,), (gamma, V) | None
        verify_in = torch.cat([state.pending, draft])  # (gamma+1,)
        target_logits = drafter.verify(target, verify_in, state.pos)  # (gamma+1, V)
        out, n = _verify(target_logits, draft, draft_probs, state)
        host = torch.cat([n[None], out]).tolist()  # the one host sync of the iteration
        n_acc, new = host[0], host[1 : host[0] + 2]
        drafter.accepted(state, verify_in, n_acc)
        state.pending = out[n_acc : n_acc + 1]
        state.pos += n_acc + 1
        new = _cut(new, max_new_tokens - len(tokens), eos_ids)
        tokens += new
        state.history += new
        iterations, drafted, accepted = iterations + 1, drafted + draft.shape[0], accepted + n_acc
        accept_counts[n_acc] += 1
        if on_tokens:
            on_tokens(new)
    _sync(device)
    return Generation(tuple(tokens), iterations, drafted, accepted, prefill_s, time.perf_counter() - start,
                      tuple(accept_counts))


def _cut(new: list[int], room: int, eos_ids) -> list[int]:
    new = new[:room]
    for i, token in enumerate(new):
        if token in eos_ids:
            return new[: i + 1]
    return new
