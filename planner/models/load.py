"""Building a ModelSpec: from a HF config dict, a model directory, a config.json, a
shipped card (profiles/models/<name>.yaml), a .gguf file's metadata or a hub id (its cached
or downloaded config.json)."""

from __future__ import annotations

import json
from pathlib import Path

from planner.errors import InputError, NotFoundError
from planner.models.architectures import layout_from_config
from planner.models.cards import load_card, read_card
from planner.models.spec import ModelSpec

# config.json's torch_dtype (transformers 5 writes `dtype`) in the short names used everywhere else
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def _checkpoint_dtype(config: dict, name: str) -> str:
    raw = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if str(raw) not in _DTYPE_NAMES:
        raise InputError(f"{name}: config field 'torch_dtype' {raw!r} is not one of bfloat16, float16, float32")
    return _DTYPE_NAMES[str(raw)]


def spec_from_hf_config(config: dict, name: str) -> ModelSpec:
    """ModelSpec from the fields of a Hugging Face config.json (no weights).

    Each model_type's layout is data, profiles/architectures.yaml, read by
    planner.models.architectures.layout_from_config. Raises InputError (one line) naming the
    model_type when it is not a decoder-only causal LM or not known, and naming the field when
    one is missing or bad (see layout_from_config)."""
    return ModelSpec(
        name=name,
        **layout_from_config(config, name),
        tokenizer_family=config.get("tokenizer_family", ""),
        checkpoint_dtype=_checkpoint_dtype(config, name),
    )


def _spec_from_card(card: dict, default_name: str) -> ModelSpec:
    config = dict(card["config"], tokenizer_family=card.get("tokenizer_family", ""))
    if "dtype" in card:
        config["torch_dtype"] = card["dtype"]
    return spec_from_hf_config(config, card.get("name", default_name))


def _read_config_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object of config fields")
    return config


def _spec_from_hub(hub_id: str) -> ModelSpec:
    from planner.runtime.checkpoint import hub_snapshot  # lazy, and torch-free

    config_path = hub_snapshot(hub_id, weights=False) / "config.json"
    return spec_from_hf_config(_read_config_json(config_path), hub_id.rsplit("/", 1)[-1].lower())


def _spec_from_file(path: Path) -> ModelSpec:
    if path.suffix in (".yaml", ".yml"):
        return _spec_from_card(read_card(path), path.stem)
    if path.suffix.lower() == ".gguf":
        from planner.runtime.checkpoint import gguf_config  # imports transformers (and torch): only for .gguf

        return spec_from_hf_config(gguf_config(path), path.stem.lower())
    return spec_from_hf_config(_read_config_json(path), path.resolve().parent.name.lower())


def load_model_spec(name_or_path: str) -> ModelSpec:
    """A ModelSpec from a card name, a model directory, a config.json (or card YAML) path,
    a .gguf file or a hub id. Card names are exact keys in any case; a miss lists the near ones.

    Raises NotFoundError for a missing path, an unknown card or an unreachable hub id;
    InputError for a config that is not a supported decoder, or a file that is not GGUF."""
    path = Path(name_or_path)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.exists():
            raise NotFoundError(f"{path}: no config.json in this directory")
        return spec_from_hf_config(_read_config_json(config_path), path.resolve().name.lower())
    if path.is_file():
        return _spec_from_file(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or path.suffix in (".json", ".yaml", ".yml", ".gguf")
    if looks_like_path:
        raise NotFoundError(f"{name_or_path}: no such file or directory")
    if "/" in name_or_path:
        return _spec_from_hub(name_or_path)
    return _spec_from_card(load_card(name_or_path), name_or_path.lower())
