"""Building a ModelSpec: from a HF config dict, a model directory, a config.json, a
shipped card (profiles/models/<name>.yaml) or, when online, a hub id."""

from __future__ import annotations

import json
from pathlib import Path

from planner._yaml import read_yaml
from planner.errors import InputError, NotFoundError, near_matches
from planner.models.spec import ModelSpec

CARDS_DIR = Path(__file__).resolve().parents[2] / "profiles" / "models"
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "phi3", "gemma", "gemma2")


def _field(config: dict, key: str, name: str):
    if key not in config or config[key] is None:
        raise InputError(f"{name}: config has no '{key}'")
    return config[key]


def spec_from_hf_config(config: dict, name: str) -> ModelSpec:
    """ModelSpec from the fields of a Hugging Face config.json."""
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_TYPES:
        raise InputError(
            f"{name}: model_type '{model_type}' is not supported (supported: {', '.join(SUPPORTED_TYPES)})"
        )
    hidden = _field(config, "hidden_size", name)
    heads = _field(config, "num_attention_heads", name)
    return ModelSpec(
        name=name,
        architecture=model_type,
        num_layers=_field(config, "num_hidden_layers", name),
        hidden_size=hidden,
        intermediate_size=_field(config, "intermediate_size", name),
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        vocab_size=_field(config, "vocab_size", name),
        # Gemma ties by default; the others untie unless the config says so.
        tie_embeddings=bool(config.get("tie_word_embeddings", model_type.startswith("gemma"))),
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        qkv_bias=model_type == "qwen2",
        norms_per_layer=4 if model_type == "gemma2" else 2,
        tokenizer_family=config.get("tokenizer_family", ""),
    )


def shipped_model_names() -> list[str]:
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


def load_card(name: str) -> dict:
    path = CARDS_DIR / f"{name.lower()}.yaml"
    if not path.exists():
        raise NotFoundError(
            f"unknown model '{name}'{near_matches(name, shipped_model_names())}"
            " (run `specplan models` to list cards, or pass a model directory or config.json)"
        )
    return read_yaml(path)


def _spec_from_card(name: str) -> ModelSpec:
    card = load_card(name)
    config = dict(card["config"], tokenizer_family=card.get("tokenizer_family", ""))
    return spec_from_hf_config(config, card["name"])


def _read_config_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def _spec_from_hub(hub_id: str) -> ModelSpec:
    from transformers import AutoConfig  # lazy: planning does not need transformers

    try:
        config = AutoConfig.from_pretrained(hub_id).to_dict()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFoundError(f"cannot read a config for '{hub_id}' from the hub ({first})") from None
    return spec_from_hf_config(config, hub_id.rsplit("/", 1)[-1].lower())


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A ModelSpec from a card name, a model directory, a config.json path or a hub id."""
    path = Path(name_or_path)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.exists():
            raise NotFoundError(f"{path}: no config.json in this directory")
        return spec_from_hf_config(_read_config_json(config_path), path.resolve().name.lower())
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            card = read_yaml(path)
            if not isinstance(card, dict) or "config" not in card:
                raise InputError(f"{path}: a model card needs a 'config' mapping")
            return spec_from_hf_config(dict(card["config"]), card.get("name", path.stem))
        return spec_from_hf_config(_read_config_json(path), path.resolve().parent.name.lower())
    if (CARDS_DIR / f"{name_or_path.lower()}.yaml").exists():
        return _spec_from_card(name_or_path)
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        return _spec_from_hub(name_or_path)
    if path.suffix in (".json", ".yaml", ".yml") or name_or_path.startswith((".", "/")):
        raise NotFoundError(f"{name_or_path}: no such file or directory")
    load_card(name_or_path)  # raises NotFoundError with near matches
    raise AssertionError("unreachable")
