"""What the runtime benchmarks share: the model shapes they time (Llama-3-8B on a GPU, a
tiny Llama on CPU), their common arguments, and the device sync before clock reads."""

from __future__ import annotations

import argparse


def llama_config(shape: str):
    from transformers import LlamaConfig

    if shape == "llama3-8b":
        return LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                           rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    if shape == "tiny":
        return LlamaConfig(num_hidden_layers=8, hidden_size=256, intermediate_size=688, num_attention_heads=8,
                           num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048)
    raise SystemExit(f"unknown shape {shape!r} (llama3-8b or tiny)")


def default_shape(device) -> str:
    return "llama3-8b" if device.type == "cuda" else "tiny"


def base_parser(doc: str, *, tokens: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", default=None, help="llama3-8b or tiny (default: by device)")
    parser.add_argument("--tokens", type=int, default=tokens)
    return parser


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
