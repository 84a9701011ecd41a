"""The bundled demo model (planner/profiles/demo): size, shape, its S3D adapter, prompts from held-out
files only, a full model that is useful on held-out code, its small draft, and every method
lossless on it."""

from __future__ import annotations

import json

import pytest

from planner.plan.schema import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction
from planner.profiles import PROFILES_DIR
from planner.train.data import read_text, stdlib_split

DEMO = PROFILES_DIR / "demo"
MAX_BYTES = 25 * 1024 * 1024


def _meta() -> dict:
    return json.loads((DEMO / "s3d.json").read_text())


def _prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in (DEMO / "prompts.jsonl").read_text().splitlines() if line.strip()]


def test_demo_model_is_a_small_llama_with_a_tokenizer():
    from transformers import AutoConfig, AutoTokenizer

    files = {p.name for p in DEMO.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "s3d.json", "adapter.safetensors", "prompts.jsonl",
            "README.md"} <= files
    assert not (DEMO / "checkpoints").exists()
    assert sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file()) <= MAX_BYTES
    config = AutoConfig.from_pretrained(DEMO)
    assert config.model_type == "llama" and config.num_hidden_layers >= 12
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    assert len(tokenizer) == config.vocab_size


def test_the_s3d_adapter_is_the_demo_models_own_and_learned_to_draft():
    from planner.runtime.adapter import config_shape, find_adapter
    from planner.runtime.checkpoint import read_hf_config

    adapter = find_adapter(str(DEMO), config_shape(read_hf_config(str(DEMO))))  # refused if made for other weights
    info = adapter.info
    assert adapter.path == DEMO and info.gamma >= 2 and info.mask_token_id == 4096
    assert list(info.skip_layers) == list(range(info.skip_layers[0], info.skip_layers[-1] + 1))
    assert 0 < info.skip_layers[0] and info.skip_layers[-1] < 11
    held_out = info.training["held_out"]
    assert held_out["tokens_per_iteration_after"] > held_out["tokens_per_iteration_before"]
    assert (DEMO / "adapter.safetensors").stat().st_size < 2_000_000


def test_prompts_come_from_held_out_files_only():
    split = stdlib_split()
    assert not set(split.train) & set(split.held_out)
    held = [read_text(p) for p in split.held_out]
    prompts = _prompts()
    assert len(prompts) >= 8
    assert all(any(p in text for text in held) for p in prompts)


def test_full_model_beats_unigram_on_held_out_code():
    """A trained model: on held-out files its loss is well below their own unigram entropy
    (5.86 nats for these three files), so it predicts from context."""
    import collections
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from planner.train._loss import consecutive_windows, next_token_loss
    from planner.train.demo import token_stream

    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32)
    stream = token_stream(tokenizer, stdlib_split().held_out[:3])
    counts = collections.Counter(stream.tolist())
    unigram_nats = -sum(c / len(stream) * math.log(c / len(stream)) for c in counts.values())
    assert next_token_loss(model, consecutive_windows(stream, seq_len=128, max_windows=4)) < unigram_nats - 1.0


def test_the_draft_shares_the_tokenizer_and_is_much_smaller():
    from transformers import AutoConfig

    target, draft = AutoConfig.from_pretrained(DEMO), AutoConfig.from_pretrained(DEMO / "draft")
    assert draft.vocab_size == target.vocab_size and draft.num_hidden_layers < target.num_hidden_layers
    assert (DEMO / "draft" / "tokenizer.json").read_bytes() == (DEMO / "tokenizer.json").read_bytes()
    assert (DEMO / "draft" / "model.safetensors").stat().st_size * 5 < (DEMO / "model.safetensors").stat().st_size


def _plan(decoding: Decoding) -> Plan:
    return Plan(
        model=ModelRef(name="demo", source=str(DEMO), num_layers=12, vocab_size=4096),
        hardware=HardwareRef(profile="cpu-local", device_name="cpu"),
        decoding=decoding,
        prediction=Prediction(basis="analytical", tokens_per_s=1.0, speedup=1.0, tokens_per_iteration=1.0,
                              acceptance=0.5, target_latency_ms=1.0, draft_latency_ms=0.5, iteration_ms=2.0, vram_gib=0.5),
        constraints=Constraints(context=512),
    )


@pytest.mark.parametrize("decoding", [
    Decoding(method="s3d", gamma=4, skip_layers=(4, 5, 6, 7)),
    Decoding(method="layer_skip", gamma=3, skip_layers=(4, 5, 6, 7)),
    Decoding(method="early_exit", gamma=3, exit_layer=8),
    Decoding(method="draft_model", gamma=3, draft_model=str(DEMO / "draft")),
    Decoding(method="prompt_lookup", gamma=3),
], ids=lambda d: d.method)
def test_every_method_is_lossless_on_the_demo_model(decoding):
    from planner.runtime import run_plan

    if decoding.method == "s3d":  # the adapter's own skip set and gamma
        decoding = Decoding(method="s3d", gamma=_meta()["gamma"], skip_layers=tuple(_meta()["skip_layers"]))
    report = run_plan(_plan(decoding), _prompts()[:1], max_new_tokens=24, baseline=True, device="cpu")
    assert report.identical is True
    assert report.tokens_per_iteration > 1.0  # drafts are accepted, not just verified away
