"""The shipped model cards: planner/profiles/models/<name>.yaml, one per model users can name.

A card holds the model's Hugging Face config fields (what a ModelSpec is built from),
its tokenizer family, checkpoint dtype and published parameter count with a source.
"""

from __future__ import annotations

from pathlib import Path

from planner._yaml import read_yaml
from planner.errors import InputError, NotFoundError, near_matches
from planner.models.architectures import spec_from_hf_config
from planner.models.spec import ModelSpec
from planner.profiles import PROFILES_DIR

CARDS_DIR = PROFILES_DIR / "models"
CARD_KEYS = ("name", "hf_id", "config", "tokenizer_family", "dtype", "published_params", "sources")


def shipped_model_names() -> list[str]:
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))


def card_path(name: str) -> Path | None:
    """The shipped card for `name` (an exact key, any case), or None."""
    path = CARDS_DIR / f"{name.lower()}.yaml"
    return path if path.is_file() else None


def read_card(path: str | Path) -> dict:
    """A card file checked for its keys: a card with a missing or unknown key names it."""
    card = read_yaml(path)
    if not isinstance(card, dict) or not isinstance(card.get("config"), dict):
        raise InputError(f"{path}: a model card needs a 'config' mapping of Hugging Face config fields")
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise InputError(f"{path}: {unknown[0]}: unknown card field{near_matches(str(unknown[0]), CARD_KEYS)}")
    return card


def load_card(name: str) -> dict:
    path = card_path(name)
    if path is None:
        raise NotFoundError(
            f"unknown model '{name}'{near_matches(name, shipped_model_names())}"
            " (run `specplan models` to list cards, or pass a model directory or config.json)"
        )
    return read_card(path)


def spec_from_card(card: dict, default_name: str) -> ModelSpec:
    """The ModelSpec of a card (as read_card returns it), named by its `name` or `default_name`.
    Raises InputError as spec_from_hf_config does for a bad `config`."""
    config = dict(card["config"], tokenizer_family=card.get("tokenizer_family", ""))
    if "dtype" in card:
        config["torch_dtype"] = card["dtype"]
    return spec_from_hf_config(config, card.get("name", default_name))


def param_count_errors() -> list[tuple[str, int, int, float]]:
    """(card, computed parameters, published parameters, relative error) for every shipped card."""
    rows = []
    for name in shipped_model_names():
        card = load_card(name)
        computed = spec_from_card(card, name).param_count
        published = card["published_params"]
        rows.append((name, computed, published, computed / published - 1))
    return rows
