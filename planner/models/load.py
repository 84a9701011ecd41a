"""Building a ModelSpec from what a user names: a model directory, a config.json, a
shipped card (planner/profiles/models/<name>.yaml), a .gguf file's metadata or a hub id (its cached
or downloaded config.json)."""

from __future__ import annotations

import json
from pathlib import Path

from planner.errors import InputError, NotFoundError
from planner.models.architectures import spec_from_hf_config
from planner.models.cards import load_card, read_card, spec_from_card
from planner.models.spec import ModelSpec


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
        return spec_from_card(read_card(path), path.stem)
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
    return spec_from_card(load_card(name_or_path), name_or_path.lower())
