"""The training loop shared by the demo recipe and S3D adaptation: AdamW, warm-up then cosine
learning rate, a tqdm bar with the loss, and a checkpoint that a later run resumes from.

Batches are drawn from a generator seeded by (seed, step), so a resumed run sees exactly the
batches the interrupted run would have seen.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable

import torch

from planner._files import write_atomic
from planner.errors import InputError

CHECKPOINT = "last.pt"
CHECKPOINT_EVERY_MAX = 50


def lr_at(step: int, steps: int, peak_lr: float) -> float:
    """Linear warm-up over the first 5% of steps, cosine decay to a tenth of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _save_checkpoint(path: Path, model, optimizer, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # here, not before training: a run refused early writes nothing
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, buffer)
    write_atomic(path, buffer.getvalue())  # a crash mid-write leaves the previous checkpoint intact


def train(
    model,
    params,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    steps: int,
    peak_lr: float,
    checkpoint_dir: Path,
    resume: bool,
    checkpoint_every: int | None = None,
    desc: str = "train",
) -> list[float]:
    """Run `steps` optimiser steps of loss_fn(step); returns the loss of each step run here.
    A checkpoint is written every `checkpoint_every` steps (default: a tenth of the run, at
    least every step and at most every CHECKPOINT_EVERY_MAX) and after the last.

    Raises InputError when training diverges (a loss or a trained weight that is not finite,
    e.g. from too high a learning rate); no checkpoint is written from that step on."""
    from tqdm import tqdm

    every = checkpoint_every or max(1, min(CHECKPOINT_EVERY_MAX, steps // 10))  # a short run can be resumed too
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1)
    path = checkpoint_dir / CHECKPOINT
    start = 0
    if resume and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    losses: list[float] = []
    with tqdm(range(start, steps), initial=start, total=steps, desc=desc, dynamic_ncols=True) as bar:  # closed on errors too
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, peak_lr)
            loss = loss_fn(step)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise InputError(f"training diverged: the loss is {losses[-1]} at step {step + 1} of {steps} "
                                 "(try a lower learning rate)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if (step + 1) % every == 0 or step + 1 == steps:
                if not all(torch.isfinite(p).all() for p in params):
                    raise InputError(f"training diverged: weights are not finite after step {step + 1} of {steps} "
                                     "(try a lower learning rate)")
                _save_checkpoint(path, model, optimizer, step + 1)
    return losses
