"""Model specs from configs alone, and the shipped cards."""

import json
import re

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.errors import InputError, NotFoundError
from planner.models import (
    load_card,
    load_model_spec,
    param_count_errors,
    shipped_model_names,
    spec_from_hf_config,
)
from planner.models.cards import CARDS_DIR

REQUIRED_CARDS = {
    "llama-3.1-8b", "llama-3.1-70b", "llama-2-7b", "llama-2-13b", "llama-2-70b", "qwen2.5-7b",
    "mistral-7b", "phi-3-mini", "gemma-2-9b", "vicuna-7b", "tinyllama-1.1b",
}
# small same-tokenizer drafts the planner pairs with the targets above
DRAFT_CARDS = {"llama-3.2-1b": "llama3", "qwen2.5-0.5b": "qwen2", "qwen2.5-1.5b": "qwen2",
               "tinyllama-1.1b": "llama2", "gemma-2-2b": "gemma2"}


def test_required_and_draft_cards_are_shipped():
    assert REQUIRED_CARDS | set(DRAFT_CARDS) <= set(shipped_model_names())
    for draft, family in DRAFT_CARDS.items():
        assert load_model_spec(draft).tokenizer_family == family


def test_every_card_has_its_fields_and_sources():
    for name in shipped_model_names():
        card = load_card(name)
        assert card["name"] == name and "/" in card["hf_id"] and card["dtype"] in ("bf16", "fp16", "fp32")
        assert card["tokenizer_family"] and card["sources"]["published_params"] and card["sources"]["config"]


@pytest.mark.parametrize("name, computed, published, error", param_count_errors())
def test_param_count_within_one_percent_of_published(name, computed, published, error):
    assert abs(error) < 0.01, (name, computed, published)


def test_llama_3_1_8b_shape_and_count():
    spec = load_model_spec("Llama-3.1-8B")  # names are exact keys in any case
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.head_dim) == (32, 4096, 8, 128)
    assert spec.param_count == 8_030_261_248  # the safetensors index's total
    assert (spec.tokenizer_family, spec.checkpoint_dtype) == ("llama3", "bf16")


def test_layer_bytes_llama_by_hand():
    spec = load_model_spec("llama-3.1-8b")
    weights = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336  # q, o; k, v; gate, up, down
    norms = 2 * 4096
    assert spec.layer_bytes("none") == weights * 2 + norms * 2
    assert spec.layer_bytes("none", "fp32") == weights * 4 + norms * 4
    # int8: a byte a weight plus a bf16 scale per output channel (q, k, v, o, gate, up, down)
    out_channels = 4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096
    assert spec.layer_bytes("int8") == weights + out_channels * 2 + norms * 2
    # int4: half a byte a weight plus a bf16 scale and a bf16 zero per 128 input weights of a row
    groups = (4096 + 1024 + 1024 + 4096 + 14336 + 14336) * (4096 // 128) + 4096 * (14336 // 128)
    assert spec.layer_bytes("int4") == weights / 2 + groups * 4 + norms * 2
    with pytest.raises(ValueError):
        spec.layer_bytes("int3")


def test_layer_bytes_qwen_bias_stays_in_dtype():
    spec = load_model_spec("qwen2.5-0.5b")  # hidden 896, 14 heads, 2 KV heads of 64, MLP 4864
    weights = 896 * 896 * 2 + 896 * 128 * 2 + 3 * 896 * 4864
    bias = 896 + 128 + 128
    norms = 2 * 896
    assert spec.layer_params == weights + bias + norms
    out_channels = 896 + 128 + 128 + 896 + 4864 + 4864 + 896
    assert spec.layer_bytes("int8") == weights + out_channels * 2 + (bias + norms) * 2
    groups = (896 + 128 + 128 + 896 + 4864 + 4864) * 7 + 896 * 38
    assert spec.layer_bytes("int4", "fp16") == weights / 2 + groups * 4 + (bias + norms) * 2


def test_weight_bytes_tied_and_untied():
    tied, untied = load_model_spec("llama-3.2-1b"), load_model_spec("llama-3.1-8b")
    assert tied.weight_bytes("none") == tied.param_count * 2
    assert untied.weight_bytes("none") == untied.param_count * 2
    head_int8 = 128256 * 4096 + 128256 * 2
    assert untied.lm_head_bytes("int8") == head_int8
    assert untied.weight_bytes("int8") == (
        128256 * 4096 * 2 + head_int8 + 32 * untied.layer_bytes("int8") + 4096 * 2
    )


def test_spec_from_model_dir_config_json_and_card_path(tmp_path):
    config = dict(load_card("tinyllama-1.1b")["config"], torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_dir = load_model_spec(str(tmp_path))
    from_file = load_model_spec(str(tmp_path / "config.json"))
    shipped = load_model_spec("tinyllama-1.1b")
    assert from_dir.param_count == from_file.param_count == shipped.param_count
    assert from_dir.checkpoint_dtype == shipped.checkpoint_dtype == "fp32"
    card = tmp_path / "my-card.yaml"
    card.write_text((CARDS_DIR / "tinyllama-1.1b.yaml").read_text())
    assert load_model_spec(str(card)) == shipped  # tokenizer family and dtype travel with a card file


def test_unknown_card_suggests_near_match():
    with pytest.raises(NotFoundError, match="did you mean: llama-3.1-8b"):
        load_model_spec("llama-3.1-8")
    with pytest.raises(NotFoundError, match="unknown model 'gpt-5'") as info:
        load_model_spec("gpt-5")
    assert "did you mean" not in str(info.value)


def test_missing_path_and_bad_json(tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        load_model_spec(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(NotFoundError, match="no such file"):
        load_model_spec("nope/config.json")  # a relative path, not a hub id
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(InputError, match="line 2"):
        load_model_spec(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        load_model_spec(str(bad))
    with pytest.raises(NotFoundError, match="no config.json"):
        load_model_spec(str(tmp_path / ".."))


def test_card_file_with_unknown_field_names_it(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("name: x\nconfig: {model_type: llama}\ntokeniser_family: llama3\n")
    with pytest.raises(InputError, match="tokeniser_family: unknown card field .*tokenizer_family"):
        load_model_spec(str(card))


def test_hub_id_offline_is_one_line(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NotFoundError) as info:
        load_model_spec("someone/some-model")
    assert str(info.value) == ("'someone/some-model': no such local directory, the local Hugging Face cache does not have "
                               "it, and HF_HUB_OFFLINE is set (download it first, or give a local directory or .gguf file)")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "bert"}, "x: model_type 'bert' is not a decoder-only causal LM (an encoder)"),
        ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
          "vocab_size": 10}, "x: config has no 'intermediate_size'"),
        ({"model_type": "llama", "hidden_size": "64", "num_attention_heads": 4}, "'hidden_size' must be a positive integer, got '64'"),
        ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 0}, "'num_attention_heads' must be a positive integer, got 0"),
        ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
          "intermediate_size": 8, "vocab_size": 10, "torch_dtype": "int8"}, "'torch_dtype' 'int8' is not one of"),
    ],
)
def test_unsupported_or_bad_config_names_the_field(config, message):
    with pytest.raises(InputError, match=re.escape(message)) as info:
        spec_from_hf_config(config, "x")
    assert "\n" not in str(info.value)


def test_gemma_ties_by_default_and_gemma2_has_four_norms():
    base = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 8,
            "vocab_size": 10, "head_dim": 32}
    gemma = spec_from_hf_config({"model_type": "gemma", **base}, "g")
    gemma2 = spec_from_hf_config({"model_type": "gemma2", **base}, "g2")
    llama = spec_from_hf_config({"model_type": "llama", **base}, "l")
    assert gemma.tie_embeddings and gemma2.tie_embeddings and not llama.tie_embeddings
    assert (gemma.head_dim, gemma.layer_norm_params, gemma2.layer_norm_params) == (32, 2 * 64, 4 * 64)
    qwen = load_model_spec("qwen2.5-7b")
    assert qwen.qkv_bias and qwen.attention_params == 3584 * 3584 * 2 + 3584 * 512 * 2 + (3584 + 1024)


def test_models_command_lists_cards():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    header, _, *rows = result.output.strip().splitlines()
    assert header.split() == ["name", "arch", "layers", "hidden", "params", "B", "bf16", "GiB", "int4", "GiB", "tokenizer"]
    assert {row.split()[0] for row in rows} == set(shipped_model_names())
    llama8b = next(row.split() for row in rows if row.startswith("llama-3.1-8b "))
    assert llama8b == ["llama-3.1-8b", "llama", "32", "4096", "8.03", "15.0", "4.7", "llama3"]
    listed = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert {m["name"] for m in listed} == set(shipped_model_names())
    assert next(m for m in listed if m["name"] == "gemma-2-9b")["hf_id"] == "google/gemma-2-9b"
