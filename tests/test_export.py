"""Exports: every file parses, holds only the fields its engine version accepts, refuses what
the engine cannot run; the transformers export decodes exactly like plain greedy generate."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex

import pytest
import yaml
from click.testing import CliRunner

from cli import cli, main
from planner.plan.export import ExportError, engine_info, export_plan, write_export
from planner.plan.schema import (
    Candidate, Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction, ScheduleEntry, save_plan,
)
from planner.errors import InputError, NotFoundError


def _prediction(tokens_per_s: float) -> Prediction:
    return Prediction(basis="analytical", tokens_per_s=tokens_per_s, speedup=1.5, tokens_per_iteration=2.5,
                      acceptance=0.7, target_latency_ms=10.0, draft_latency_ms=2.0, iteration_ms=12.0, vram_gib=20.0)


DRAFT = Decoding(method="draft_model", gamma=4, draft_model="meta-llama/Llama-3.2-1B")
LOOKUP = Decoding(method="prompt_lookup", gamma=3, ngram=4)
SKIP = Decoding(method="layer_skip", gamma=3, skip_layers=(10, 11, 12))


def make_plan(decoding=DRAFT, schedule=(), alternatives=(), batch_size=1) -> Plan:
    return Plan(
        model=ModelRef(name="llama-3.1-8b", source="meta-llama/Llama-3.1-8B-Instruct", num_layers=32, vocab_size=128256),
        hardware=HardwareRef(profile="h100-sxm", device_name="NVIDIA H100 80GB HBM3"),
        decoding=decoding, prediction=_prediction(150.0),
        constraints=Constraints(context=4096, batch_size=batch_size),
        alternatives=alternatives, schedule=schedule,
    )


def entry(lo, hi, gamma, method="draft_model"):
    return ScheduleEntry(batch_min=lo, batch_max=hi, method=method if gamma else "autoregressive", gamma=gamma,
                         tokens_per_s_per_sequence=100.0, tokens_per_s_total=100.0 * lo)


SCHEDULE = (entry(1, 3, 4), entry(4, 15, 2), entry(16, 63, 1), entry(64, 128, 0))


def _shell_args(text: str) -> list[str]:
    command = [line for line in text.splitlines() if line.startswith("exec ")]
    assert len(command) == 1
    return shlex.split(command[0])[1:]


def _flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("-")]


def _vllm_config(text: str) -> dict:
    args = _shell_args(text)
    return json.loads(args[args.index("--speculative-config") + 1])


# -- vLLM ------------------------------------------------------------------------------

def test_vllm_schedule_is_the_per_batch_table_with_speculation_off_at_large_batch():
    text = export_plan(make_plan(schedule=SCHEDULE), "vllm").text
    config = _vllm_config(text)
    assert config == {"num_speculative_tokens": 4, "method": "draft_model", "model": "meta-llama/Llama-3.2-1B",
                      "num_speculative_tokens_per_batch_size": [[1, 3, 4], [4, 15, 2], [16, 63, 1], [64, 128, 0]]}
    assert set(config) <= set(engine_info("vllm").fields)
    assert "--max-num-seqs 128" in text


def test_vllm_prompt_lookup_and_autoregressive():
    config = _vllm_config(export_plan(make_plan(LOOKUP), "vllm").text)
    assert config == {"num_speculative_tokens": 3, "method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    text = export_plan(make_plan(Decoding(method="autoregressive")), "vllm").text
    assert "--speculative-config" not in _shell_args(text)


def test_vllm_table_first_range_starts_at_one():
    config = _vllm_config(export_plan(make_plan(schedule=(entry(2, 7, 3), entry(8, 8, 0))), "vllm").text)
    assert config["num_speculative_tokens_per_batch_size"][0][:2] == [1, 7]


def test_header_names_plan_gpu_versions_and_sources():
    text = export_plan(make_plan(), "vllm", engine_version="0.30.0", plan_label="deploy/h100.yaml").text
    header = [line for line in text.splitlines() if line.startswith("# ")]
    joined = "\n".join(header)
    assert "deploy/h100.yaml" in joined and "NVIDIA H100 80GB HBM3" in joined
    assert "written for: vLLM 0.30.0" in joined and "vllm/config/speculative.py" in joined


# -- SGLang, TensorRT-LLM, llama.cpp ---------------------------------------------------

def test_sglang_standalone_flags_and_dropped_schedule():
    text = export_plan(make_plan(schedule=SCHEDULE, batch_size=8), "sglang").text
    args = _shell_args(text)
    assert set(_flags(args[3:])) <= set(engine_info("sglang").fields)  # after `python -m sglang.launch_server`
    assert args[args.index("--speculative-algorithm") + 1] == "STANDALONE"
    assert args[args.index("--speculative-num-steps") + 1] == "2"  # batch 8 lies in the 4-15 range
    assert args[args.index("--speculative-num-draft-tokens") + 1] == "3"
    assert "# dropped: per-batch-size schedule" in text


def test_sglang_ngram_and_speculation_off_at_plan_batch():
    args = _shell_args(export_plan(make_plan(LOOKUP), "sglang").text)
    assert args[args.index("--speculative-algorithm") + 1] == "NGRAM"
    off = _shell_args(export_plan(make_plan(schedule=SCHEDULE, batch_size=100), "sglang").text)
    assert "--speculative-algorithm" not in off


def test_trtllm_yaml_schedule_uses_upper_bounds_and_implicit_zero():
    text = export_plan(make_plan(schedule=SCHEDULE), "trtllm").text
    body = yaml.safe_load(text)
    spec = body["speculative_config"]
    assert spec == {"decoding_type": "Draft_Target", "max_draft_len": 4, "speculative_model": "meta-llama/Llama-3.2-1B",
                    "draft_len_schedule": {3: 4, 15: 2, 63: 1}}
    fields = set(engine_info("trtllm").fields)
    assert set(body) <= fields and set(spec) <= fields
    assert body["max_batch_size"] == 128


def test_trtllm_caps_lengths_above_the_first_range_and_says_so():
    text = export_plan(make_plan(schedule=(entry(1, 3, 2), entry(4, 8, 3))), "trtllm").text
    assert yaml.safe_load(text)["speculative_config"]["draft_len_schedule"] == {3: 2, 8: 2}
    assert "# dropped: draft lengths above" in text


def test_llamacpp_flags():
    args = _shell_args(export_plan(make_plan(dataclasses.replace(DRAFT, quant="int4")), "llamacpp").text)
    assert set(_flags(args)) <= set(engine_info("llamacpp").fields)
    assert args[args.index("--draft-max") + 1] == "4"
    assert args[args.index("-m") + 1] == "Llama-3.1-8B-Instruct-Q4_0.gguf"


# -- refusals --------------------------------------------------------------------------

def test_layer_skip_is_refused_naming_the_nearest_expressible_setup():
    plan = make_plan(SKIP, alternatives=(Candidate(DRAFT, _prediction(120.0)), Candidate(LOOKUP, _prediction(90.0))))
    for engine in ("vllm", "sglang", "trtllm", "hf", "llamacpp"):
        with pytest.raises(ExportError, match="cannot run layer_skip: no serving engine has layer skipping"):
            export_plan(plan, engine)
    with pytest.raises(ExportError, match=r"draft_model gamma=4 quant=none at 120.0 tokens/s"):
        export_plan(plan, "vllm")


def test_quantization_and_version_refusals():
    with pytest.raises(ExportError, match="cannot apply int8"):
        export_plan(make_plan(dataclasses.replace(DRAFT, quant="int8")), "vllm")
    with pytest.raises(InputError, match="knows 0.25.0 to 0.33.0 only"):
        export_plan(make_plan(), "vllm", engine_version="0.20.0")
    with pytest.raises(InputError, match="not pinned"):
        export_plan(make_plan(), "llamacpp", engine_version="b5000")
    early = Decoding(method="early_exit", gamma=3, exit_layer=8)
    with pytest.raises(ExportError, match="added in 4.47.0"):
        export_plan(make_plan(early), "hf", engine_version="4.46.0")
    with pytest.raises(NotFoundError, match="unknown engine 'vlm'"):
        export_plan(make_plan(), "vlm")


def test_cli_export_writes_file_and_errors_in_one_line(tmp_path, capsys):
    plan_path = tmp_path / "plan.yaml"
    save_plan(make_plan(schedule=SCHEDULE), plan_path)
    out = tmp_path / "vllm.sh"
    result = CliRunner().invoke(cli, ["export", "--plan", str(plan_path), "--to", "vllm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _vllm_config(out.read_text())["num_speculative_tokens"] == 4
    save_plan(make_plan(SKIP), plan_path)
    with pytest.raises(SystemExit) as exited:
        main(["export", "--plan", str(plan_path), "--to", "sglang", "--out", str(tmp_path / "x.sh")])
    assert exited.value.code == 2 and not (tmp_path / "x.sh").exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "SGLang cannot run layer_skip" in error[0]


# -- engines' own config classes -------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (large CUDA package)")
def test_vllm_config_class_accepts_export():
    from vllm.config import SpeculativeConfig

    assert set(_vllm_config(export_plan(make_plan(LOOKUP), "vllm").text)) <= set(SpeculativeConfig.__dataclass_fields__)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is None, reason="tensorrt_llm is not installed (large CUDA package)")
def test_trtllm_config_class_accepts_export():
    from tensorrt_llm.llmapi import NGramDecodingConfig

    spec = yaml.safe_load(export_plan(make_plan(LOOKUP), "trtllm").text)["speculative_config"]
    spec.pop("decoding_type")
    NGramDecodingConfig(**spec)


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang is not installed (large CUDA package)")
def test_sglang_parser_accepts_export():
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    parser.parse_args(_shell_args(export_plan(make_plan(LOOKUP), "sglang").text)[3:])


def test_transformers_generation_config_accepts_every_kwarg():
    from transformers import GenerationConfig

    for decoding in (DRAFT, LOOKUP, Decoding(method="early_exit", gamma=3, exit_layer=1)):
        kwargs = json.loads(export_plan(make_plan(decoding), "hf").text)["generate_kwargs"]
        assert set(kwargs) <= set(engine_info("hf").fields)
        config = GenerationConfig(**kwargs)
        assert all(getattr(config, key) == value for key, value in kwargs.items())


# -- transformers end to end -----------------------------------------------------------

def _tiny_llama(layers: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("decoding", [DRAFT, LOOKUP], ids=["draft_model", "prompt_lookup"])
def test_transformers_export_decodes_exactly_like_greedy(decoding):
    import torch

    target, assistant = _tiny_llama(2, seed=0), _tiny_llama(1, seed=1)
    document = json.loads(export_plan(make_plan(decoding), "hf").text)
    kwargs = dict(document["generate_kwargs"])
    if document["assistant_model"] is not None:
        kwargs["assistant_model"] = assistant  # the file names it; the caller loads it
    prompt = torch.tensor([[5, 17, 33, 5, 17, 33, 8, 2, 5, 17]])
    with torch.no_grad():
        plain = target.generate(prompt, do_sample=False, max_new_tokens=24, pad_token_id=0)
        speculative = target.generate(prompt, max_new_tokens=24, pad_token_id=0, **kwargs)
    assert torch.equal(plain, speculative)
