"""Model shapes the runtime benchmarks time: Llama-3-8B on a GPU, a tiny Llama on CPU."""

from __future__ import annotations


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
