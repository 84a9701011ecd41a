"""Shared pytest fixtures; each issue's fixtures sit in its own section, names prefixed by area."""

# ---------------------------------------------------------------- runtime (issue 4)
# Tiny random checkpoints (4 layers, hidden 64, vocab 128) of each architecture the
# runtime supports, saved once per session with a character-level tokenizer.

import pytest

# Families whose own transformers modules the runtime drives; the overrides give each one
# the features that make it differ (sliding windows, soft-capping, multipliers, partial
# rotary, parallel residuals, learned positions, mixture-of-experts routing).
RT_OVERRIDES = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": 8},
    "phi3": {},
    "gemma": {},
    "gemma2": {"sliding_window": 8, "query_pre_attn_scalar": 16},
    "gemma3_text": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "qwen3": {},
    "olmo2": {},
    "granite": {"embedding_multiplier": 4.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 2.0},
    "stablelm": {"partial_rotary_factor": 0.5},
    "gpt_neox": {"rotary_pct": 0.5},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
    "phi": {"partial_rotary_factor": 0.5},
    "starcoder2": {"sliding_window": 8},
    "falcon": {"head_dim": None, "num_kv_heads": 2, "new_decoder_architecture": True, "alibi": False},
    "cohere": {"logit_scale": 0.5},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
}
RT_ARCHITECTURES = tuple(RT_OVERRIDES)


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
    from transformers import AutoConfig

    fields = dict(
        num_hidden_layers=layers, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
    )
    fields = {**fields, **RT_OVERRIDES[arch]}
    return AutoConfig.for_model(arch, **{k: v for k, v in fields.items() if v is not None})  # None: the family has no such field


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
