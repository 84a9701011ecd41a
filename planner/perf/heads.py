"""Learned draft heads (EAGLE-1/2, EAGLE-3, MTP, Medusa) as shapes the cost model can price.

A head is costed like any decoder: its layers and its LM head through planner.perf.cost.
Shapes, from each method's reference implementation:
    eagle   one decoder layer of the target's shape, fed fc(concat(embedding, feature)) with
            fc: 2h -> h (with bias), and the target's own LM head
            (SafeAILab/EAGLE eagle/model/cnets.py; Li et al. 2024, arXiv:2401.15077)
    eagle3  one decoder layer whose q/k/v read 2h (the token's embedding beside the fused
            feature), fc: 3h -> h fusing three target layers' features, and an LM head over
            a reduced draft vocabulary of 32000 tokens (Li et al. 2025, arXiv:2503.01840;
            SafeAILab/EAGLE eagle/traineagle3 config draft_vocab_size)
    mtp     one decoder layer of the target's shape after eh_proj: 2h -> h, sharing the
            target's LM head (DeepSeek-V3's multi-token-prediction module, arXiv:2412.19437 §2.2)
    medusa  K heads, each a residual block h -> h (with bias) and its own LM head h -> vocab,
            all run once on the target's last hidden state (Cai et al. 2024, arXiv:2401.10774)
A head's own config (`--draft-model`) replaces the target-shaped layer where one is given.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from planner._yaml import read_yaml
from planner.models.spec import Linear, ModelSpec
from planner.profiles import PROFILES_DIR

HEAD_METHODS = ("eagle", "eagle3", "mtp", "medusa")
TREE_METHODS = ("eagle", "eagle3", "mtp")  # drafted as a tree where the engine builds one (SGLang's topk)
EAGLE3_DRAFT_VOCAB = 32000
HEADS_FILE = PROFILES_DIR / "heads.yaml"


def head_spec(method: str, target: ModelSpec, given: ModelSpec | None = None) -> ModelSpec:
    """The drafting network of `method` for `target` as a one-layer ModelSpec (`medusa`: one
    "layer" per head, see medusa_spec): the head's layer (`given`'s first layer where its config
    is given, else one of the target's shape) plus the fusing projection, and its LM head."""
    base = given or target
    h = base.hidden_size
    layer = base.layer_linears
    if method == "eagle":
        extra, vocab = (Linear("fc", 2 * h, h, bias=True),), target.vocab_size
    elif method == "eagle3":
        # q/k/v read the token embedding concatenated with the fused feature: 2h wide.
        layer = tuple(dataclasses.replace(lin, in_features=2 * h) if lin.name in ("q", "k", "v") else lin for lin in layer)
        extra = (Linear("fc", 3 * target.hidden_size, h),)
        vocab = given.vocab_size if given is not None else min(EAGLE3_DRAFT_VOCAB, target.vocab_size)
    elif method == "mtp":
        extra, vocab = (Linear("eh_proj", 2 * h, h),), target.vocab_size
    else:
        raise ValueError(f"no head shape for method {method!r}")
    return dataclasses.replace(base, name=f"{target.name}-{method}-head", num_layers=1, layer_linears=layer + extra,
                               vocab_size=vocab, tie_embeddings=False)


def medusa_spec(target: ModelSpec, heads: int) -> ModelSpec:
    """Medusa's `heads` heads as `heads` layers of a residual block and an LM head each; no
    attention (and no KV cache): only their weights are read."""
    h, vocab = target.hidden_size, target.vocab_size
    linears = (Linear("medusa_res", h, h, bias=True), Linear("medusa_lm_head", h, vocab))
    return dataclasses.replace(target, name=f"{target.name}-medusa-heads", num_layers=heads, layer_linears=linears,
                               layer_norm_params=0, num_kv_heads=0, num_heads=0, num_experts=0, num_experts_per_tok=0)


@lru_cache(maxsize=1)
def _known_heads() -> dict:
    return read_yaml(HEADS_FILE)["heads"]


def published_head(model_name: str, method: str) -> str | None:
    """The hub id of a public `method` head trained for the shipped model `model_name`
    (planner/profiles/heads.yaml, each with its source), or None."""
    return (_known_heads().get(model_name) or {}).get(method)


def head_source(model_name: str, method: str) -> str | None:
    """Where the head published_head names was found."""
    row = _known_heads().get(model_name) or {}
    return (row.get("sources") or {}).get(method)
