"""Model specs from configs alone, and the shipped cards."""

import json

import pytest
from click.testing import CliRunner

from cli import cli
from planner.errors import InputError, NotFoundError
from planner.models import load_card, load_model_spec, shipped_model_names, spec_from_hf_config

REQUIRED_CARDS = {
    "llama-3.1-8b", "llama-3.1-70b", "llama-2-7b", "llama-2-13b", "llama-2-70b", "qwen2.5-7b",
    "mistral-7b", "phi-3-mini", "gemma-2-9b", "vicuna-7b", "tinyllama-1.1b",
}


def test_required_cards_are_shipped():
    assert REQUIRED_CARDS <= set(shipped_model_names())


@pytest.mark.parametrize("name", shipped_model_names())
def test_param_count_within_one_percent_of_published(name):
    spec, card = load_model_spec(name), load_card(name)
    assert abs(spec.param_count / card["published_params"] - 1) < 0.01, (spec.param_count, card["published_params"])


def test_llama_3_1_8b_shape_and_count():
    spec = load_model_spec("Llama-3.1-8B")  # names are case-insensitive keys
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.head_dim) == (32, 4096, 8, 128)
    assert spec.param_count == 8_030_261_248  # the safetensors index's total
    assert spec.tokenizer_family == "llama3"


def test_layer_bytes_per_quantization_by_hand():
    spec = load_model_spec("llama-3.1-8b")
    attn = 4096 * 4096 * 2 + 4096 * 1024 * 2
    mlp = 3 * 4096 * 14336
    norms = 2 * 4096 * 2
    assert spec.layer_bytes("none") == (attn + mlp) * 2 + norms
    assert spec.layer_bytes("none", "fp32") == (attn + mlp) * 4 + 2 * 4096 * 4
    # int8: a byte a weight plus a bf16 scale per output channel
    assert spec.layer_bytes("int8") == pytest.approx(attn + mlp + (attn + mlp) / 4096 * 2 + norms)
    # int4: half a byte a weight plus a bf16 scale and zero per 128 weights
    assert spec.layer_bytes("int4") == pytest.approx((attn + mlp) * (0.5 + 4 / 128) + norms)
    with pytest.raises(ValueError):
        spec.layer_bytes("int3")


def test_qwen2_bias_and_gemma2_norms_counted():
    qwen = load_model_spec("qwen2.5-7b")
    assert qwen.qkv_bias and qwen.attention_params == 3584 * 3584 * 2 + 3584 * 512 * 2 + (3584 + 1024)
    gemma = load_model_spec("gemma-2-9b")
    assert gemma.norms_per_layer == 4 and gemma.tie_embeddings and gemma.head_dim == 256


def test_spec_from_model_dir_and_config_json(tmp_path):
    config = dict(load_card("tinyllama-1.1b")["config"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_dir = load_model_spec(str(tmp_path))
    from_file = load_model_spec(str(tmp_path / "config.json"))
    assert from_dir.param_count == from_file.param_count == load_model_spec("tinyllama-1.1b").param_count


def test_unknown_card_suggests_near_match():
    with pytest.raises(NotFoundError, match="did you mean: llama-3.1-8b"):
        load_model_spec("llama-3.1-8")


def test_missing_path_and_bad_json(tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        load_model_spec(str(tmp_path / "nope" / "config.json"))
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(InputError, match="line 2"):
        load_model_spec(str(bad))
    with pytest.raises(NotFoundError, match="no config.json"):
        load_model_spec(str(tmp_path / ".."))


def test_unsupported_or_incomplete_config_names_the_field():
    with pytest.raises(InputError, match="model_type 'bert'"):
        spec_from_hf_config({"model_type": "bert"}, "x")
    with pytest.raises(InputError, match="'intermediate_size'"):
        spec_from_hf_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                             "num_hidden_layers": 2, "vocab_size": 10}, "x")


def test_models_command_lists_cards():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    assert all(name in result.output for name in REQUIRED_CARDS)
    listed = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert {m["name"] for m in listed} == set(shipped_model_names())
