"""Any decoder's config read through the per-model_type table, planner/profiles/architectures.yaml.

What differs between families (field names, biases, norm kinds and counts, q/k norms,
experts, learned positions, projections) is data: each table entry sets slots, constants or
expressions over the config's fields. What every family shares lives here once: attention is
q, k, v and o; an MLP is (gate,) up and down; a mixture-of-experts layer adds a router, routed
experts and perhaps a shared expert; a narrower embedding is projected in and out.
"""

from __future__ import annotations

import ast
import operator
from functools import lru_cache

from planner._yaml import read_yaml
from planner.errors import InputError, near_matches
from planner.models.spec import Linear, ModelSpec
from planner.profiles import PROFILES_DIR

TABLE_PATH = PROFILES_DIR / "architectures.yaml"
NORM_PARAMS_PER_FEATURE = {"rms": 1, "layernorm": 2, "layernorm_no_bias": 1, "parameter_free": 0}
CHOICE_SLOTS = {"norm": tuple(NORM_PARAMS_PER_FEATURE), "qk_norm_kind": tuple(NORM_PARAMS_PER_FEATURE),
                "qk_norm": ("none", "head", "every_head")}
POSITIVE_SLOTS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                  "vocab_size", "embedding_dim")
COUNT_SLOTS = ("norms_per_layer", "norms_outside_layers", "num_experts", "num_experts_per_tok",
               "shared_expert_intermediate_size", "position_embeddings", "max_position_embeddings")  # 0 allowed
FLAG_SLOTS = ("tie_embeddings", "qkv_bias", "o_bias", "gated_mlp", "mlp_bias", "shared_expert_gate", "lm_head_bias")
ENTRY_KEYS = ("defaults", "aliases", "refuse")
# config.json's torch_dtype (transformers 5 writes `dtype`) in the short names used everywhere else
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}

_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_COMPARISONS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
                ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not}


SLOTS = (*CHOICE_SLOTS, *POSITIVE_SLOTS, *COUNT_SLOTS, *FLAG_SLOTS)


@lru_cache(maxsize=1)
def _table() -> dict:
    """The table, checked: `base` sets every slot, entries set only slots and ENTRY_KEYS."""
    table = read_yaml(TABLE_PATH)
    missing = sorted(set(SLOTS) - set(table["base"]))
    if missing:
        raise InputError(f"{TABLE_PATH}: base: sets no '{missing[0]}'")
    known = (*SLOTS, *ENTRY_KEYS)
    for model_type, entry in table["architectures"].items():
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise InputError(f"{TABLE_PATH}: {model_type}: {unknown[0]}: unknown slot{near_matches(unknown[0], known)}")
    return table


def known_architectures() -> list[str]:
    """The model_types the table describes."""
    return sorted(_table()["architectures"])


class _ConfigFields:
    """A config's fields as table expressions read them: aliases followed, the config
    class's defaults where config.json omits a field, every value checked."""

    def __init__(self, config: dict, name: str, defaults: dict, aliases: dict):
        self.config, self.name, self.defaults, self.aliases = config, name, defaults, aliases

    def read(self, field: str):
        for key in (field, *self.aliases.get(field, ())):
            if self.config.get(key) is not None:
                return self._checked(key, self.config[key], self.defaults.get(field))
        if field in self.defaults:
            return self.defaults[field]
        if field in self.config:
            raise InputError(f"{self.name}: config field '{field}' must be a positive integer, got None")
        names = " or ".join(f"'{key}'" for key in (field, *self.aliases.get(field, ())))
        raise InputError(f"{self.name}: config has no {names}")

    def _checked(self, key: str, value, default):
        """The value, of the default's type (a flag, a list) or else a positive integer."""
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{self.name}: config field '{key}' must be true or false, got {value!r}")
        elif isinstance(default, list):
            if not isinstance(value, list):
                raise InputError(f"{self.name}: config field '{key}' must be a list, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{self.name}: config field '{key}' must be a positive integer, got {value!r}")
        return value


@lru_cache(maxsize=None)
def _parse(expression: str) -> ast.expr:
    return ast.parse(expression.strip(), mode="eval").body


def _evaluate(node: ast.expr, fields: _ConfigFields):
    """A table expression's value: names read config fields; `a // b` must divide exactly."""
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=field):
            return fields.read(field)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return not _evaluate(operand, fields)
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _evaluate(body if _evaluate(test, fields) else orelse, fields)
        case ast.BoolOp(op=op, values=values):
            stop_when = isinstance(op, ast.Or)  # `or` stops at the first truthy value, `and` at the first falsy
            for value_node in values:
                value = _evaluate(value_node, fields)
                if bool(value) == stop_when:
                    break
            return value
        case ast.BinOp(left=left, op=ast.FloorDiv(), right=right):
            numerator, denominator = _evaluate(left, fields), _evaluate(right, fields)
            if numerator % denominator:
                raise InputError(f"{fields.name}: config field '{ast.unparse(left)}' ({numerator}) is not a "
                                 f"multiple of '{ast.unparse(right)}' ({denominator})")
            return numerator // denominator
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _ARITHMETIC:
            return _ARITHMETIC[type(op)](_evaluate(left, fields), _evaluate(right, fields))
        case ast.Compare(left=left, ops=[op], comparators=[right]) if type(op) in _COMPARISONS:
            return _COMPARISONS[type(op)](_evaluate(left, fields), _evaluate(right, fields))
    raise InputError(f"{TABLE_PATH}: unsupported expression {ast.unparse(node)!r}")


def _slot_value(slot: str, raw, fields: _ConfigFields):
    """A slot's constant, or its expression's value, checked against the slot's kind."""
    if isinstance(raw, str) and raw not in CHOICE_SLOTS.get(slot, ()):
        raw = _evaluate(_parse(raw), fields)
    if not _fits_slot(slot, raw):
        raise InputError(f"{TABLE_PATH}: {fields.config['model_type']}: slot {slot} gave {raw!r}")
    return raw


def _fits_slot(slot: str, value) -> bool:
    if slot in CHOICE_SLOTS:
        return value in CHOICE_SLOTS[slot] or (slot == "qk_norm_kind" and value is None)
    if slot in FLAG_SLOTS:
        return isinstance(value, bool)
    smallest = 1 if slot in POSITIVE_SLOTS else 0
    return isinstance(value, int) and not isinstance(value, bool) and value >= smallest


def _entry(config: dict, name: str) -> dict:
    """The table entry for the config's model_type; InputError naming it when there is none."""
    model_type = config.get("model_type")
    if not model_type:
        raise InputError(f"{name}: config has no 'model_type'")
    table = _table()
    if model_type in table["architectures"]:
        return table["architectures"][model_type]
    what = table["not_decoder_only"].get(model_type)
    if what is None and config.get("is_encoder_decoder"):
        what = "an encoder-decoder"
    if what:
        raise InputError(f"{name}: model_type '{model_type}' is not a decoder-only causal LM ({what})")
    known = known_architectures()
    hint = near_matches(model_type, known) or f" (known: {', '.join(known)})"
    raise InputError(f"{name}: model_type '{model_type}' is not known{hint}")


def _mlp(prefix: str, width: int, slots: dict, *, expert: bool = False) -> tuple[Linear, ...]:
    h, bias = slots["hidden_size"], slots["mlp_bias"]
    inputs = ("gate", "up") if slots["gated_mlp"] else ("up",)
    down = Linear(prefix + "down", width, h, bias, expert)
    return tuple(Linear(prefix + n, h, width, bias, expert) for n in inputs) + (down,)


def _layer_linears(slots: dict) -> tuple[Linear, ...]:
    h = slots["hidden_size"]
    q_width, kv_width = slots["num_heads"] * slots["head_dim"], slots["num_kv_heads"] * slots["head_dim"]
    qkv_bias = slots["qkv_bias"]
    attention = (Linear("q", h, q_width, qkv_bias), Linear("k", h, kv_width, qkv_bias),
                 Linear("v", h, kv_width, qkv_bias), Linear("o", q_width, h, slots["o_bias"]))
    if not slots["num_experts"]:
        return attention + _mlp("", slots["intermediate_size"], slots)
    routed = (Linear("router", h, slots["num_experts"]),) + _mlp("", slots["intermediate_size"], slots, expert=True)
    shared_width = slots["shared_expert_intermediate_size"]
    shared = _mlp("shared_", shared_width, slots) if shared_width else ()
    gate = (Linear("shared_expert_gate", h, 1),) if slots["shared_expert_gate"] else ()
    return attention + routed + shared + gate


def _layer_norm_params(slots: dict) -> int:
    qk_features = {
        "none": 0,
        "head": 2 * slots["head_dim"],  # one q and one k norm shared by every head
        "every_head": (slots["num_heads"] + slots["num_kv_heads"]) * slots["head_dim"],
    }[slots["qk_norm"]]
    qk_kind = slots["qk_norm_kind"] or slots["norm"]
    hidden_norms = slots["norms_per_layer"] * slots["hidden_size"] * NORM_PARAMS_PER_FEATURE[slots["norm"]]
    return hidden_norms + qk_features * NORM_PARAMS_PER_FEATURE[qk_kind]


def _check_layers_alike(entry: dict, fields: _ConfigFields) -> None:
    for field, expression in entry.get("refuse", {}).items():
        if _evaluate(_parse(expression), fields):
            raise InputError(
                f"{fields.name}: config field '{field}' ({fields.read(field)!r}) mixes dense and mixture-of-experts "
                "layers; a ModelSpec describes one shape for every layer"
            )


def _check_experts(slots: dict, fields: _ConfigFields) -> None:
    experts, per_token = slots["num_experts"], slots["num_experts_per_tok"]
    if per_token > experts:
        raise InputError(
            f"{fields.name}: config field 'num_experts_per_tok' ({per_token}) exceeds the {experts} experts"
        )


def layout_from_config(config: dict, name: str) -> dict:
    """ModelSpec's shape fields (all but name, tokenizer family and dtype) from a HF config.

    Raises InputError, one line: a config without model_type; a model_type that is not a
    decoder-only causal LM, or that the table does not know (both named); a field missing, of
    the wrong type or not positive, or a hidden size that heads do not divide when the config
    gives no head_dim (the field named); layers of different shapes (MoE among dense)."""
    entry = _entry(config, name)
    base = _table()["base"]
    fields = _ConfigFields(config, name, defaults={**base["defaults"], **entry.get("defaults", {})},
                           aliases=entry.get("aliases", {}))
    slots = {s: _slot_value(s, entry.get(s, base[s]), fields) for s in base if s not in ENTRY_KEYS}
    _check_layers_alike(entry, fields)
    _check_experts(slots, fields)
    h = slots["hidden_size"]
    return dict(
        architecture=config["model_type"],
        num_layers=slots["num_layers"],
        hidden_size=h,
        intermediate_size=slots["intermediate_size"],
        num_heads=slots["num_heads"],
        num_kv_heads=slots["num_kv_heads"],
        head_dim=slots["head_dim"],
        vocab_size=slots["vocab_size"],
        tie_embeddings=slots["tie_embeddings"],
        layer_linears=_layer_linears(slots),
        layer_norm_params=_layer_norm_params(slots),
        final_norm_params=slots["norms_outside_layers"] * h * NORM_PARAMS_PER_FEATURE[slots["norm"]],
        num_experts=slots["num_experts"],
        num_experts_per_tok=slots["num_experts_per_tok"],
        embedding_dim=slots["embedding_dim"],
        position_embeddings=slots["position_embeddings"],
        lm_head_bias=slots["lm_head_bias"],
        max_position_embeddings=slots["max_position_embeddings"],
    )


def _checkpoint_dtype(config: dict, name: str) -> str:
    raw = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if str(raw) not in _DTYPE_NAMES:
        raise InputError(f"{name}: config field 'torch_dtype' {raw!r} is not one of bfloat16, float16, float32")
    return _DTYPE_NAMES[str(raw)]


def spec_from_hf_config(config: dict, name: str) -> ModelSpec:
    """ModelSpec from the fields of a Hugging Face config.json (no weights).

    Each model_type's layout is data, planner/profiles/architectures.yaml, read by layout_from_config.
    Raises InputError (one line) naming the model_type when it is not a decoder-only causal
    LM or not known, and naming the field when one is missing or bad (see layout_from_config)."""
    return ModelSpec(
        name=name,
        **layout_from_config(config, name),
        tokenizer_family=config.get("tokenizer_family", ""),
        checkpoint_dtype=_checkpoint_dtype(config, name),
        mtp_layers=_mtp_layers(config, name),
    )


# config.json fields naming a checkpoint's multi-token-prediction layers: DeepSeek-V3, GLM-4.5
# and MiMo (num_nextn_predict_layers), Qwen3-Next (mtp_num_hidden_layers)
MTP_FIELDS = ("num_nextn_predict_layers", "mtp_num_hidden_layers")


def _mtp_layers(config: dict, name: str) -> int:
    for field in MTP_FIELDS:
        value = config.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{name}: config field '{field}' {value!r} is not a whole number of layers")
            return value
    return 0
