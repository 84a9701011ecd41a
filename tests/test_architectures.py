"""ModelSpec from any decoder's config: counts against the models transformers builds, and
the one-line errors for configs that are not decoders or carry bad fields."""

import re

import pytest

from planner.errors import InputError
from planner.models import load_card, shipped_model_names, spec_from_hf_config
from planner.models.architectures import known_architectures

SMALL = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=100, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
NO_GQA = {k: v for k, v in SMALL.items() if k not in ("num_key_value_heads", "intermediate_size")}

# (model_type, config fields): small configs varied over what changes the counts
CASES = [
    ("llama", SMALL),
    ("llama", dict(SMALL, attention_bias=True, mlp_bias=True, tie_word_embeddings=True, head_dim=24)),
    ("granite", dict(SMALL, attention_bias=True, mlp_bias=True)),
    ("mistral", SMALL),
    ("qwen2", dict(SMALL, tie_word_embeddings=True)),
    ("qwen3", dict(SMALL, head_dim=24)),
    ("qwen3", dict(SMALL, attention_bias=True, tie_word_embeddings=True)),
    ("phi3", SMALL),
    ("gemma", dict(SMALL, head_dim=24)),
    ("gemma2", SMALL),
    ("gemma3_text", dict(SMALL, head_dim=16, tie_word_embeddings=False)),
    ("olmo", dict(SMALL, attention_bias=True)),
    ("olmo2", SMALL),
    ("cohere", SMALL),
    ("cohere", dict(SMALL, use_qk_norm=True, attention_bias=True)),
    ("stablelm", SMALL),
    ("stablelm", dict(SMALL, use_qkv_bias=True, qk_layernorm=True, use_parallel_residual=True)),
    ("phi", dict(SMALL, qk_layernorm=True, partial_rotary_factor=0.5)),
    ("phi", dict(SMALL, tie_word_embeddings=True)),
    ("starcoder2", SMALL),
    ("starcoder2", dict(SMALL, use_bias=False, tie_word_embeddings=False)),
    ("gpt_neox", dict(NO_GQA, intermediate_size=96, rotary_pct=0.25)),
    ("gpt_neox", dict(NO_GQA, intermediate_size=96, attention_bias=False, use_parallel_residual=False,
                      tie_word_embeddings=True)),
    ("opt", dict(NO_GQA, ffn_dim=96)),
    ("opt", dict(NO_GQA, ffn_dim=96, word_embed_proj_dim=32, tie_word_embeddings=False)),
    ("opt", dict(NO_GQA, ffn_dim=96, do_layer_norm_before=False, layer_norm_elementwise_affine=False,
                 enable_bias=False)),
    ("falcon", NO_GQA),  # multi-query, parallel attention, one norm
    ("falcon", dict(NO_GQA, new_decoder_architecture=True, num_kv_heads=2, bias=True)),
    ("falcon", dict(NO_GQA, new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1)),
    ("falcon", dict(NO_GQA, multi_query=False, parallel_attn=False, ffn_hidden_size=96, tie_word_embeddings=False)),
    ("gpt2", dict(n_layer=3, n_embd=64, n_head=4, n_positions=128, vocab_size=100)),
    ("gpt2", dict(n_layer=3, n_embd=64, n_head=4, n_positions=128, vocab_size=100, n_inner=96, tie_word_embeddings=False)),
    ("gpt_bigcode", dict(n_layer=3, n_embd=64, n_head=4, n_positions=128, vocab_size=100)),
    ("gpt_bigcode", dict(n_layer=3, n_embd=64, n_head=4, n_positions=128, vocab_size=100, multi_query=False, n_inner=96)),
    ("gptj", dict(n_layer=3, n_embd=64, n_head=4, n_positions=128, vocab_size=100, rotary_dim=8)),
    ("bloom", dict(n_layer=3, hidden_size=64, n_head=4, vocab_size=100)),
    ("mixtral", dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    ("granitemoe", dict(SMALL, num_local_experts=4, num_experts_per_tok=2, attention_bias=True)),
    ("olmoe", dict(SMALL, num_experts=4, num_experts_per_tok=2)),
    ("qwen2_moe", dict(SMALL, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=48)),
    ("qwen2_moe", dict(SMALL, num_experts=6, num_experts_per_tok=1, moe_intermediate_size=32,
                       shared_expert_intermediate_size=48, qkv_bias=False, tie_word_embeddings=True)),
    ("qwen3_moe", dict(SMALL, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=24)),
]


def _built_by_transformers(model_type: str, fields: dict):
    """(config, total parameters, first layer's parameters, tied?) of the model transformers
    builds from the config, on the meta device (no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    layers = next(m for m in model.modules()
                  if isinstance(m, torch.nn.ModuleList) and len(m) == config.num_hidden_layers)
    total = sum(p.numel() for p in model.parameters())  # a tied weight is one parameter, counted once
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return config, total, sum(p.numel() for p in layers[0].parameters()), tied


@pytest.mark.parametrize("model_type, fields", CASES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_counts_equal_the_model_transformers_builds(model_type, fields):
    config, total, layer, tied = _built_by_transformers(model_type, fields)
    spec = spec_from_hf_config(config.to_dict(), model_type)
    assert (spec.param_count, spec.layer_params, spec.tie_embeddings) == (total, layer, tied)
    # a config.json that leaves out what the config class defaults gets the same spec
    assert spec_from_hf_config({"model_type": model_type, **fields}, model_type) == spec


# only the sizes every config must give: flags, KV heads, head_dim and positions take the
# config class's defaults, as for a config.json written before those fields existed
REQUIRED_ONLY = {t: dict(NO_GQA, intermediate_size=96) for t, _ in CASES}
REQUIRED_ONLY["opt"] = dict(NO_GQA, ffn_dim=96)
REQUIRED_ONLY["falcon"] = NO_GQA
for gpt in ("gpt2", "gpt_bigcode", "gptj"):
    REQUIRED_ONLY[gpt] = dict(n_layer=3, n_embd=64, n_head=4, vocab_size=100)
REQUIRED_ONLY["bloom"] = dict(n_layer=3, hidden_size=64, n_head=4, vocab_size=100)
REQUIRED_ONLY["granitemoe"].update(num_local_experts=4, num_experts_per_tok=2)
REQUIRED_ONLY["olmoe"].update(num_experts=4, num_experts_per_tok=2)
REQUIRED_ONLY["mixtral"].update(num_local_experts=4, num_experts_per_tok=2)
REQUIRED_ONLY["qwen2_moe"].update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                  shared_expert_intermediate_size=48)
REQUIRED_ONLY["qwen3_moe"].update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)


@pytest.mark.parametrize("model_type", sorted(REQUIRED_ONLY))
def test_defaults_are_the_config_classes(model_type):
    fields = REQUIRED_ONLY[model_type]
    _, total, layer, tied = _built_by_transformers(model_type, fields)
    spec = spec_from_hf_config({"model_type": model_type, **fields}, model_type)
    assert (spec.param_count, spec.layer_params, spec.tie_embeddings) == (total, layer, tied)


def test_every_known_model_type_is_checked():
    checked = {t for t, _ in CASES}
    assert len(checked) >= 20 and checked == set(known_architectures()) == set(REQUIRED_ONLY)


@pytest.mark.parametrize("name", shipped_model_names())
def test_shipped_cards_equal_the_model_transformers_builds(name):
    card = load_card(name)
    config = {k: v for k, v in card["config"].items() if k != "model_type"}
    _, total, _, _ = _built_by_transformers(card["config"]["model_type"], config)
    assert spec_from_hf_config(card["config"], name).param_count == total


def test_mixtral_experts_held_and_read_by_hand():
    spec = spec_from_hf_config({"model_type": "mixtral", **SMALL, "num_local_experts": 4, "num_experts_per_tok": 2}, "m")
    attention = 64 * 64 * 2 + 64 * 32 * 2  # q, o; k, v (2 KV heads of 16)
    router, expert, norms = 64 * 4, 3 * 64 * 96, 2 * 64
    assert spec.layer_params == attention + router + 4 * expert + norms
    assert spec.active_layer_params == attention + router + 2 * expert + norms
    assert spec.param_count - spec.active_param_count == 3 * 2 * expert  # three layers, two experts unread
    assert spec.layer_bytes("none") == 2 * spec.layer_params
    assert spec.expert_bytes("int8") == 2 * 64 * 96 + 64 * 96 + 2 * (96 + 96 + 64)  # weights + a scale a row
    assert spec.layer_dense_bytes("none") == 2 * (attention + router + norms)
    assert spec.layer_flops(new_tokens=5, context=0) == 2 * 5 * (attention + router + 2 * expert)
    assert spec.active_intermediate_size == 2 * 96


def test_qwen2_moe_shared_expert_is_always_read():
    fields = dict(SMALL, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
    spec = spec_from_hf_config({"model_type": "qwen2_moe", **fields}, "q")
    shared = 3 * 64 * 48 + 64  # gate, up, down and the (1, hidden) shared-expert gate
    assert spec.expert_bytes("none") == 2 * 3 * 64 * 32
    assert spec.layer_dense_bytes("none") == 2 * (spec.attention_params + 64 * 6 + shared + spec.layer_norm_params)
    assert spec.active_intermediate_size == 2 * 32 + 48


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "bert", "hidden_size": 64}, "bert-base: model_type 'bert' is not a decoder-only causal LM (an encoder)"),
        ({"model_type": "t5"}, "bert-base: model_type 't5' is not a decoder-only causal LM (an encoder-decoder)"),
        ({"model_type": "my_seq2seq", "is_encoder_decoder": True}, "model_type 'my_seq2seq' is not a decoder-only causal LM"),
        ({"model_type": "xyzzy"}, "bert-base: model_type 'xyzzy' is not known (known: bloom, cohere, falcon,"),
        ({"model_type": "lama"}, "model_type 'lama' is not known (did you mean: llama"),
        ({"hidden_size": 64}, "bert-base: config has no 'model_type'"),
        (dict(SMALL, model_type="llama", hidden_size=0), "config field 'hidden_size' must be a positive integer, got 0"),
        (dict(SMALL, model_type="llama", vocab_size=100.0), "config field 'vocab_size' must be a positive integer, got 100.0"),
        (dict(SMALL, model_type="llama", attention_bias="yes"), "config field 'attention_bias' must be true or false, got 'yes'"),
        (dict(SMALL, model_type="llama", hidden_size=66), "config field 'hidden_size' (66) is not a multiple of 'num_attention_heads' (4)"),
        (dict(SMALL, model_type="llama", num_hidden_layers=None), "config field 'num_hidden_layers' must be a positive integer, got None"),
        (dict(SMALL, model_type="opt"), "config has no 'ffn_dim'"),
        ({"model_type": "gpt2", "n_layer": 2}, "config has no 'hidden_size' or 'n_embd'"),
        (dict(SMALL, model_type="mixtral", num_local_experts=4, num_experts_per_tok=5),
         "config field 'num_experts_per_tok' (5) exceeds the 4 experts"),
        (dict(SMALL, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
              mlp_only_layers=[1]), "config field 'mlp_only_layers' ([1]) mixes dense and mixture-of-experts layers"),
    ],
)
def test_not_a_decoder_or_a_bad_field_is_one_line_naming_it(config, message):
    with pytest.raises(InputError, match=re.escape(message)) as info:
        spec_from_hf_config(config, "bert-base")
    assert "\n" not in str(info.value)


def test_head_dim_given_needs_no_divisible_hidden_size():
    spec = spec_from_hf_config(dict(SMALL, model_type="llama", hidden_size=66, head_dim=16), "x")
    assert (spec.head_dim, spec.layer_linears[0].out_features) == (16, 64)


def test_planning_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, planner.models; planner.models.spec_from_hf_config({'model_type': 'falcon', 'hidden_size': 64, "
            "'num_attention_heads': 4, 'num_hidden_layers': 2, 'vocab_size': 10}, 'f'); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
