"""Shared pytest fixtures; each issue's fixtures sit in its own section, names prefixed by area."""

# ---------------------------------------------------------------- runtime (issue 4)
# Tiny random checkpoints (4 layers, hidden 64, vocab 128) of each architecture the
# runtime supports, saved once per session with a character-level tokenizer.

import pytest

RT_ARCHITECTURES = ("llama", "qwen2", "mistral", "phi3", "gemma")


def _rt_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    while len(vocab) < 128:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _rt_config(arch: str, layers: int = 4):
    import transformers

    classes = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "phi3": "Phi3Config", "gemma": "GemmaConfig"}
    return getattr(transformers, classes[arch])(
        num_hidden_layers=layers, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
    )


def _rt_save(path, arch: str, layers: int, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_rt_config(arch, layers), dtype=torch.float32)
    model.save_pretrained(path)
    _rt_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def rt_models(tmp_path_factory):
    """{architecture: checkpoint directory} for every RT_ARCHITECTURES entry."""
    root = tmp_path_factory.mktemp("rt_models")
    return {arch: _rt_save(root / arch, arch, 4, seed=i) for i, arch in enumerate(RT_ARCHITECTURES)}


@pytest.fixture(scope="session")
def rt_draft_model(tmp_path_factory):
    """A 2-layer llama with the same tokenizer and vocabulary: a separate draft model."""
    return _rt_save(tmp_path_factory.mktemp("rt_draft"), "llama", 2, seed=99)
