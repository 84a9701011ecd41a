"""Exports checked by the engines' own code (vLLM and SGLang: the README's test install takes their
wheels without dependencies; see docs/deployment.md). Each exported script runs with the engine binary stubbed; the arguments
it would have received go to the engine's own argument parser and config checks."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest

from planner.plan.export import export_plan
from tests._export_support import DRAFT, EAGLE3, LOOKUP, MTP, SCHEDULE, entry, flag_value, launched_args, make_plan

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed (README's test install; docs/deployment.md)")
needs_sglang = pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                                  reason="sglang is not installed (README's test install; docs/deployment.md)")
needs_trtllm = pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is None,
                                  reason="tensorrt_llm is not installed (a CUDA wheel from pypi.nvidia.com)")

LOOKUP_SCHEDULE = tuple(entry(e.batch_min, e.batch_max, e.gamma, "prompt_lookup") for e in SCHEDULE)
FP8 = dataclasses.replace(DRAFT, quant="fp8", draft_quant="fp8")  # fp8 weights for the target and its draft
PLANS = {"draft": make_plan(DRAFT, schedule=SCHEDULE), "lookup": make_plan(LOOKUP, schedule=LOOKUP_SCHEDULE),
         "fp8": make_plan(FP8, schedule=SCHEDULE)}


@pytest.mark.skipif(not os.environ.get("CI"), reason="outside CI the engines' parsers are optional")
def test_ci_checks_the_exports_with_the_engines_own_parsers():
    """Under CI (`CI` set) the README's test install brings vLLM's and SGLang's wheels: their tests must not skip."""
    assert [m for m in ("vllm", "sglang") if importlib.util.find_spec(m) is None] == []


@pytest.fixture(scope="module")
def vllm_parser():
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # lets the CUDA wheel build its parser on a CPU (0.33)
    import vllm.platforms
    from vllm.platforms.cpu import CpuPlatform
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if not vllm.platforms.current_platform.device_type:  # older wheels ignore that variable: pick the CPU platform
        vllm.platforms._current_platform = CpuPlatform()

    try:
        from vllm.entrypoints.common.cli_args import make_arg_parser
    except ImportError:  # before 0.33 it lived with the OpenAI server
        from vllm.entrypoints.openai.cli_args import make_arg_parser

    return make_arg_parser(FlexibleArgumentParser())


@needs_vllm
@pytest.mark.parametrize("name", PLANS)
def test_vllm_parses_the_launch_and_schedules_the_planned_gammas(name, vllm_parser, tmp_path):
    from vllm.config import SpeculativeConfig
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    plan = PLANS[name]
    args = launched_args(export_plan(plan, "vllm").text, "vllm", tmp_path)
    assert args[0] == "serve"
    ns = vllm_parser.parse_args(args[1:])
    assert (ns.model_tag, ns.max_num_seqs, ns.tensor_parallel_size, ns.port) == (plan.model.source, 128, 1, 8000)
    assert ns.gpu_memory_utilization == pytest.approx(0.92)  # vLLM's own default (engines.yaml memory.share)
    spec = ns.speculative_config
    assert set(spec) <= set(SpeculativeConfig.__dataclass_fields__)
    dense = build_dynamic_sd_schedule_lookup(spec["num_speculative_tokens_per_batch_size"], ns.max_num_seqs,
                                             spec["num_speculative_tokens"])
    assert dense[1:] == [e.gamma for e in plan.schedule for _ in range(e.batch_min, e.batch_max + 1)]
    if name == "fp8":  # the target's and the draft's weights
        assert ns.quantization == "fp8" and spec["quantization"] == "fp8"


@needs_vllm
def test_vllm_checks_can_fail(vllm_parser):
    """Negative control: vLLM's parser refuses an unknown flag and its schedule check a table not starting at 1."""
    from vllm.v1.spec_decode.dynamic.utils import validate_and_normalize_dynamic_sd_schedule

    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["m", "--max-num-sequences", "4"])
    with pytest.raises(ValueError, match="must start at 1"):
        validate_and_normalize_dynamic_sd_schedule([[4, 15, 2]])


def _sglang_namespace(args: list[str]):
    """SGLang's own argument parser over `args` (strict: an unknown flag exits)."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser.parse_args(args)


@needs_sglang
@pytest.mark.parametrize("name", PLANS)
def test_sglang_server_args_accept_the_launch(name, tmp_path):
    plan = PLANS[name]
    args = launched_args(export_plan(plan, "sglang").text, "sglang", tmp_path)
    assert args[0] == "serve"  # `sglang serve` hands the rest to the server's argument parser
    ns = vars(_sglang_namespace(args[1:]))
    tp = ns.get("tp_size", ns.get("tensor_parallel_size"))  # the flag's dest was renamed after 0.5.5
    assert (ns["model_path"], tp, ns["max_running_requests"], ns["context_length"]) == (plan.model.source, 1, 128, 4096)
    assert ns["mem_fraction_static"] == pytest.approx({"lookup": 0.84}.get(name, 0.76))  # SGLang's default (its reserve)
    gamma = plan.schedule[0].gamma  # SGLang takes one draft length: the one of the plan's batch size, 1
    algorithm = {"draft": "STANDALONE", "lookup": "NGRAM", "fp8": "STANDALONE"}[name]
    assert ns["speculative_algorithm"] == algorithm and ns["speculative_num_draft_tokens"] == gamma + 1
    if name == "fp8":
        assert ns["quantization"] == "fp8" and ns["speculative_draft_model_quantization"] == "fp8"
    from sglang.srt.server_args import prepare_server_args

    try:
        server = prepare_server_args(args[1:])  # validation too (0.5.23 runs it on a CPU; 0.5.5 wants a GPU)
    except RuntimeError as exc:
        assert "accelerator" in str(exc)
    else:
        assert server.speculative_algorithm == algorithm and server.tp_size == 1


@needs_sglang
def test_sglang_checks_can_fail():
    """Negative control: SGLang's parser refuses a flag it does not have."""
    with pytest.raises(SystemExit):
        _sglang_namespace(["--model-path", "m", "--speculative-draft-length", "4"])


@needs_trtllm
def test_trtllm_config_classes_accept_the_options():
    import yaml
    from tensorrt_llm.llmapi import (DraftTargetDecodingConfig, Eagle3DecodingConfig, MTPDecodingConfig,
                                     NGramDecodingConfig)

    plans = {**PLANS, "eagle3": make_plan(EAGLE3), "mtp": make_plan(MTP)}
    for name, cls in (("draft", DraftTargetDecodingConfig), ("lookup", NGramDecodingConfig),
                      ("eagle3", Eagle3DecodingConfig), ("mtp", MTPDecodingConfig)):
        text = export_plan(plans[name], "trtllm").text
        body = text.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0].replace("${DRAFT_MODEL}", "draft")
        spec = yaml.safe_load(body)["speculative_config"]
        spec.pop("decoding_type")
        cls(**spec)


# ------------------------------------------------------------ a fleet plan through all five engines


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """`specplan plan --gpus a10g,h100-sxm --batch-sizes 1-128 --out-dir DIR --export` to all five
    engines (the issue's "done when"): DIR/<gpu>/plan.yaml and one launch script per engine."""
    from click.testing import CliRunner

    from planner.cli import cli

    out = tmp_path_factory.mktemp("fleet")
    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpus", "a10g,h100-sxm", "--batch-sizes", "1-128",
                                      "--trials", "40", "--out-dir", str(out), "--export", "vllm,sglang,trtllm,hf,llamacpp"])
    assert result.exit_code == 0, result.output
    return out


FLEET_GPUS = ("a10g", "h100-sxm")


def _fleet_launch(fleet, gpu: str, engine: str, tmp_path) -> tuple:
    """(the GPU's plan, its largest planned batch, the arguments the engine's launch passes)."""
    from planner.plan.schema import load_plan

    plan = load_plan(fleet / gpu / "plan.yaml")
    env = {}
    if engine == "llamacpp":  # local checkpoints for the converter (a hub id would be downloaded)
        env = {key: str(tmp_path / key.lower()) for key in ("MODEL", "DRAFT_MODEL")}
        for path in env.values():
            Path(path).mkdir()
    env["CONFIG"] = str(tmp_path / "options.yaml")
    script = next(p for p in (fleet / gpu).iterdir() if p.suffix == ".sh" and p.stem.startswith(engine))
    return plan, max(e.batch_max for e in plan.schedule), launched_args(script.read_text(), engine, tmp_path, env)


@needs_vllm
@pytest.mark.parametrize("gpu", FLEET_GPUS)
def test_a_fleet_plans_vllm_launch_parses_and_serves_its_largest_batch(fleet, gpu, vllm_parser, tmp_path):
    from vllm.config import SpeculativeConfig

    plan, top, args = _fleet_launch(fleet, gpu, "vllm", tmp_path)
    ns = vllm_parser.parse_args(args[1:])
    assert ns.max_num_seqs == top and 0 < ns.gpu_memory_utilization <= 1
    if plan.decoding.method != "autoregressive":
        assert set(ns.speculative_config) <= set(SpeculativeConfig.__dataclass_fields__)


@needs_sglang
@pytest.mark.parametrize("gpu", FLEET_GPUS)
def test_a_fleet_plans_sglang_launch_parses_and_serves_its_largest_batch(fleet, gpu, tmp_path):
    _, top, args = _fleet_launch(fleet, gpu, "sglang", tmp_path)
    ns = vars(_sglang_namespace(args[1:]))
    assert ns["max_running_requests"] == top and 0 < ns["mem_fraction_static"] <= 1


@pytest.mark.parametrize("gpu", FLEET_GPUS)
@pytest.mark.parametrize("engine, concurrency", [("trtllm", "--max_batch_size"), ("llamacpp", "-np")])
def test_a_fleet_plans_trtllm_and_llamacpp_launches_use_only_sourced_names(fleet, gpu, engine, concurrency, tmp_path):
    """TensorRT-LLM and llama.cpp have no CPU package: every flag and key is checked against the
    field table read from their sources (planner/profiles/engines.yaml)."""
    import yaml

    from planner.plan.export import engine_info

    _, top, args = _fleet_launch(fleet, gpu, engine, tmp_path)
    fields = set(engine_info(engine).table(None).fields)
    assert {a for a in args if a.startswith("-")} <= fields and flag_value(args, concurrency) == str(top)
    if engine == "trtllm" and (tmp_path / "options.yaml").exists():
        options = yaml.safe_load((tmp_path / "options.yaml").read_text()) or {}
        assert set(options) | set(options.get("speculative_config") or {}) <= fields


def test_an_engine_that_runs_on_gpus_only_is_refused_for_a_cpu_profile():
    """engines.yaml `devices`: TensorRT-LLM runs on NVIDIA GPUs only, llama.cpp on either."""
    import dataclasses

    from planner.errors import InputError
    from planner.hardware import load_profile
    from planner.search.request import SearchRequest

    cpu = dataclasses.replace(load_profile("a10g"), name="my-cpu", kind="cpu")
    with pytest.raises(InputError, match="TensorRT-LLM runs on GPUs only; my-cpu is a CPU"):
        SearchRequest(engine="trtllm").execution_on(cpu)
    assert SearchRequest(engine="llamacpp").execution_on(cpu) is not None
    assert SearchRequest(engine="trtllm").execution_on(load_profile("a10g")) is not None
