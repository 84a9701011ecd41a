"""Held-out next-token loss of a causal LM over fixed windows of a token stream."""

from __future__ import annotations


def consecutive_windows(stream, *, seq_len: int, max_windows: int):
    """(n, seq_len + 1) consecutive windows from the start of the stream: the same every call."""
    import torch

    n = min(max_windows, (len(stream) - 1) // seq_len)
    return torch.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]).long()


def next_token_loss(model, windows, *, batch: int = 8) -> float:
    """Mean cross-entropy of the model's next-token prediction over (n, S + 1) windows."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(batch):
            logits = model(input_ids=chunk[:, :-1]).logits  # (b, S, V)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum"))
            count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count
