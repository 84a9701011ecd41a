"""Exports: each engine's file is a complete launch (run here with the engine binary stubbed),
serves the plan's concurrency with its memory share, holds only names from the field table
of the version it targets, writes TensorRT-LLM's schedule for that version's reading,
cites only what it read, and refuses what the engine cannot run."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli, main
from planner.plan.export import ExportError, compose_path, engine_info, export_plan, write_compose, write_export
from planner.plan.export._launch import launch_for
from planner.plan.export._resolve import resolve
from planner.plan.export.trtllm import draft_len_schedule, llm_api_options
from planner.plan.schema import Candidate, Decoding, HardwareRef, load_plan, save_plan
from planner.errors import InputError, NotFoundError
from tests._export_support import (
    DRAFT, EAGLE3, EARLY, LOOKUP, MTP, SCHEDULE, SKIP, engine_args, entry, flag_value, launched_args, make_plan,
    prediction, run_script,
)

SERVERS = ("vllm", "sglang", "trtllm", "llamacpp")
LLAMACPP_ENV_KEYS = ("MODEL", "DRAFT_MODEL")


def _local_models(tmp_path) -> dict[str, str]:
    """Checkpoint directories for llama.cpp's converter (a hub id would be downloaded)."""
    env = {}
    for key in LLAMACPP_ENV_KEYS:
        (tmp_path / key.lower()).mkdir()
        env[key] = str(tmp_path / key.lower())
    return env


def _launch(plan, engine, tmp_path, **kwargs) -> list[str]:
    tmp_path.mkdir(exist_ok=True)
    text = export_plan(plan, engine, **kwargs).text
    env = _local_models(tmp_path) if engine == "llamacpp" else {}
    return launched_args(text, engine, tmp_path, env)


def _vllm_config(args: list[str]) -> dict:
    """--speculative-config.KEY VALUE words back into the dict vLLM builds from them."""
    config = {}
    for i, arg in enumerate(args):
        if arg.startswith("--speculative-config."):
            value = args[i + 1]
            config[arg.split(".", 1)[1]] = value if not value[:1].isdigit() and value[:1] != "[" else json.loads(value)
    return config


# -- every engine: a complete launch --------------------------------------------------

@pytest.mark.parametrize("engine", SERVERS)
def test_every_server_export_runs_and_serves_the_schedules_largest_batch(engine, tmp_path):
    args = _launch(make_plan(schedule=SCHEDULE), engine, tmp_path)
    concurrency = {"vllm": "--max-num-seqs", "sglang": "--max-running-requests", "trtllm": "--max_batch_size",
                   "llamacpp": "-np"}[engine]
    assert flag_value(args, concurrency) == "128"
    assert flag_value(args, "--host") == "0.0.0.0" and flag_value(args, "--port") == str(engine_info(engine).port)


@pytest.mark.parametrize("engine", SERVERS)
def test_autoregressive_plan_keeps_its_batch_size(engine, tmp_path):
    """A plan over batch sizes 1-16 that never speculates still serves 16 sequences."""
    plan = make_plan(Decoding(method="autoregressive"), schedule=(entry(1, 16, 0),))
    args = _launch(plan, engine, tmp_path)
    assert "16" in args and not any("speculative" in a or "draft" in a for a in args)


@pytest.mark.parametrize("engine", SERVERS)
def test_model_is_a_variable_defaulting_to_the_hub_id(engine, tmp_path):
    text = export_plan(make_plan(LOOKUP if engine != "llamacpp" else DRAFT), engine).text
    assert "[ -n \"${MODEL:-}\" ] || MODEL=meta-llama/Llama-3.1-8B-Instruct" in text
    local = tmp_path / "my model"
    local.mkdir()
    env = {**(_local_models(tmp_path) if engine == "llamacpp" else {}), "MODEL": str(local), "PORT": "9001"}
    args = launched_args(text, engine, tmp_path, env)
    assert flag_value(args, "--port") == "9001"
    if engine == "llamacpp":
        assert flag_value(args, "-m") == f"{tmp_path}/my model-F16.gguf"
    else:
        assert str(local) in args


def test_memory_share_follows_the_budget_or_the_prediction(tmp_path):
    # no budget: the engines' usual 90%
    assert launch_for(make_plan()).memory_share == 0.90
    # a budget of 40 of the H100's 79.6 GiB
    assert launch_for(make_plan(vram_budget=40.0)).memory_share == pytest.approx(0.51)
    # a budget below the prediction plus headroom gives way to the prediction (20 GiB x 1.1 / 79.6)
    assert launch_for(make_plan(vram_budget=10.0)).memory_share == pytest.approx(0.28)
    args = _launch(make_plan(vram_budget=40.0), "vllm", tmp_path)
    assert flag_value(args, "--gpu-memory-utilization") == "0.51"
    # the share follows the VRAM at the largest batch the schedule covers, not the plan's batch-1 figure
    big = make_plan(schedule=(entry(1, 15, 4), dataclasses.replace(entry(16, 64, 0), vram_gib=70.0)))
    assert launch_for(big).memory_share == pytest.approx(0.95) and "70.0 GiB at batch size 64" in launch_for(big).memory_note
    unknown = make_plan(hardware=HardwareRef(profile="/nowhere/gpu.yaml", device_name="GPU"))
    text = export_plan(unknown, "vllm").text
    assert "--gpu-memory-utilization" not in text and "memory: engine default (profile not readable" in text


def test_sglang_static_pool_leaves_its_reserve_outside_the_share():
    """SGLang's --mem-fraction-static sizes weights and KV cache only; activations, CUDA graphs and a
    draft worker come from the rest (its own default: (memory - reserve) / memory, engines.yaml)."""
    # H100 79.6 GiB: reserve 512 + 8192 x 1.5 + 256 x 2 + 128 MiB = 13.1 GiB, + 6 GiB for a draft model
    assert launch_for(make_plan(DRAFT), "sglang").memory_share == pytest.approx(0.76)  # (79.6 - 19.1) / 79.6
    assert launch_for(make_plan(LOOKUP), "sglang").memory_share == pytest.approx(0.84)  # (79.6 - 13.1) / 79.6
    assert launch_for(make_plan(DRAFT), "vllm").memory_share == pytest.approx(0.92)  # vLLM's default share (engines.yaml) holds everything
    # a budget of 60 GiB: the static pool is what it leaves beside the reserve
    note = launch_for(make_plan(DRAFT, vram_budget=60.0), "sglang").memory_note
    assert launch_for(make_plan(DRAFT, vram_budget=60.0), "sglang").memory_share == pytest.approx(0.52)
    assert "less the engine's 19.1 GiB reserve" in note
    # planned for SGLang, the plan's figure already holds the reserve: only the rest must fit the pool
    planned = make_plan(DRAFT, vram_budget=30.0)
    planned = planned.replace(constraints=dataclasses.replace(planned.constraints, engine="sglang"))
    assert launch_for(planned, "sglang").memory_share == pytest.approx(0.14)  # max(10.9, 20 - 19.1 + 10%) / 79.6
    assert "expect less KV cache than planned or an OOM" not in launch_for(planned, "sglang").memory_note


def test_trtllm_kv_fraction_is_of_the_memory_left_after_the_weights(tmp_path):
    """TensorRT-LLM reads kv_cache_free_gpu_memory_fraction after loading the weights: the export
    converts the whole-GPU share so that weights plus cache fill it (H100 79.6 GiB, 15.0 GiB of weights)."""
    def fraction(plan):
        text = export_plan(plan, "trtllm").text
        return next((line.split("=")[1].split()[0] for line in text.splitlines()
                     if line.startswith('[ -n "${KV_CACHE_FREE_GPU_MEMORY_FRACTION')), None), text

    value, text = fraction(make_plan(LOOKUP))
    assert value == "0.87" and "fill 0.90 of the GPU" in text  # (0.90 x 79.6 - 15.0) / (79.6 - 15.0)
    assert fraction(make_plan(LOOKUP, vram_budget=40.0))[0] == "0.39"  # (0.51 x 79.6 - 15.0) / 64.6
    value, text = fraction(make_plan(DRAFT))  # a draft named by hub id: its weights are not known offline
    assert value is None and "TensorRT-LLM's default KV fraction" in text
    carded = make_plan(dataclasses.replace(DRAFT, draft_model="llama-3.2-1b"))  # as `specplan plan` writes it: a card name
    assert fraction(carded)[0] == "0.87" and "after 17.3 GiB of weights" in fraction(carded)[1]


# -- vLLM ------------------------------------------------------------------------------

def test_vllm_schedule_is_the_per_batch_table_with_speculation_off_at_large_batch(tmp_path):
    args = _launch(make_plan(schedule=SCHEDULE), "vllm", tmp_path)
    assert args[:2] == ["serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert _vllm_config(args) == {
        "num_speculative_tokens": 4, "method": "draft_model", "model": "meta-llama/Llama-3.2-1B",
        "num_speculative_tokens_per_batch_size": [[1, 3, 4], [4, 15, 2], [16, 63, 1], [64, 128, 0]]}


def test_vllm_prompt_lookup_and_first_range_at_one(tmp_path):
    config = _vllm_config(_launch(make_plan(LOOKUP), "vllm", tmp_path))
    assert config == {"num_speculative_tokens": 3, "method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    plan = make_plan(schedule=(entry(2, 7, 3), entry(8, 8, 0)), batch_size=2)
    assert export_plan(plan, "vllm").text.count("'[[1,7,3],[8,8,0]]'") == 1


# -- SGLang ----------------------------------------------------------------------------

def test_sglang_uses_sglang_serve_with_standalone_flags_and_says_what_it_dropped(tmp_path):
    plan = make_plan(schedule=SCHEDULE, batch_size=8)
    args = _launch(plan, "sglang", tmp_path)
    assert args[0] == "serve" and flag_value(args, "--model-path") == "meta-llama/Llama-3.1-8B-Instruct"
    assert flag_value(args, "--speculative-algorithm") == "STANDALONE"
    assert flag_value(args, "--speculative-num-steps") == "2"  # batch 8 lies in the 4-15 range
    assert flag_value(args, "--speculative-num-draft-tokens") == "3"
    assert flag_value(args, "--tp-size") == "1" and flag_value(args, "--mem-fraction-static") == "0.76"  # SGLang's own default here: test_sglang_static_pool
    assert "# dropped: per-batch-size schedule" in export_plan(plan, "sglang").text


def test_sglang_ngram_and_speculation_off_at_plan_batch(tmp_path):
    args = _launch(make_plan(LOOKUP), "sglang", tmp_path)
    assert flag_value(args, "--speculative-algorithm") == "NGRAM"
    off = _launch(make_plan(schedule=SCHEDULE, batch_size=100), "sglang", tmp_path / "off")
    assert "--speculative-algorithm" not in off


# -- the draft's own quantization -------------------------------------------------------

FP8_DRAFT = dataclasses.replace(DRAFT, quant="fp8", draft_quant="fp8")


def test_vllm_quantizes_the_draft_through_its_speculative_config(tmp_path):
    args = _launch(make_plan(FP8_DRAFT), "vllm", tmp_path / "fp8")
    assert flag_value(args, "--quantization") == "fp8" and _vllm_config(args)["quantization"] == "fp8"
    unquantized_draft = _launch(make_plan(dataclasses.replace(FP8_DRAFT, draft_quant="none")), "vllm", tmp_path / "none")
    assert flag_value(unquantized_draft, "--quantization") == "fp8" and "quantization" not in _vllm_config(unquantized_draft)


def test_sglang_always_names_the_drafts_quantization_from_0_5_7(tmp_path):
    """Left out, SGLang's draft takes the target's --quantization: an unquantized draft is `unquant`."""
    args = _launch(make_plan(FP8_DRAFT), "sglang", tmp_path / "fp8")
    assert flag_value(args, "--speculative-draft-model-quantization") == "fp8"
    apart = make_plan(dataclasses.replace(FP8_DRAFT, draft_quant="none"))
    assert flag_value(_launch(apart, "sglang", tmp_path / "none"), "--speculative-draft-model-quantization") == "unquant"
    older = _launch(make_plan(FP8_DRAFT), "sglang", tmp_path / "old", engine_version="0.5.6")
    assert flag_value(older, "--quantization") == "fp8" and "--speculative-draft-model-quantization" not in older
    with pytest.raises(ExportError, match=r"SGLang 0.5.5-0.5.6.post2 quantizes the draft as the target \(fp8\), not "
                                          r"none: export for `engine_version` 0.5.7 or later"):
        export_plan(apart, "sglang", engine_version="0.5.6")


def test_llamacpp_writes_the_drafts_gguf_type(tmp_path):
    plan = make_plan(dataclasses.replace(DRAFT, quant="int8", draft_quant="int4"))
    args = launched_args(export_plan(plan, "llamacpp").text, "llamacpp", tmp_path, _local_models(tmp_path))
    assert flag_value(args, "-m") == f"{tmp_path}/model-Q8_0.gguf" and flag_value(args, "-md") == f"{tmp_path}/draft_model-Q4_0.gguf"
    assert engine_args(tmp_path, "llama-quantize") == [f"{tmp_path}/draft_model-F16.gguf", f"{tmp_path}/draft_model-Q4_0.gguf",
                                                       "Q4_0"]  # the last quantize run: the draft's


@pytest.mark.parametrize("engine, draft_quant", [("llamacpp", "fp8"), ("trtllm", "int8"), ("hf", "int4"), ("vllm", "int8"),
                                                 ("sglang", "int4")])
def test_a_draft_quantization_the_engine_cannot_apply_is_refused_in_one_line(engine, draft_quant, tmp_path):
    plan_path = tmp_path / "plan.yaml"
    save_plan(make_plan(dataclasses.replace(DRAFT, draft_quant=draft_quant)), plan_path)
    result = CliRunner().invoke(cli, ["export", "--plan", str(plan_path), "--to", engine, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and f"cannot apply {draft_quant} weight quantization to the draft" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "x").exists()


# -- TensorRT-LLM: both readings of draft_len_schedule ---------------------------------

def _read_upper(schedule: dict[int, int], batch: int) -> int:
    """1.3.0rc27 on (PR #10860): the first key >= batch size; none left: 0."""
    return next((schedule[k] for k in sorted(schedule) if batch <= k), 0)


def _read_lower(schedule: dict[int, int], batch: int) -> int:
    """1.2: the largest key <= batch size (Drafter.get_draft_len_for_batch_size, bisect_right); none: 0."""
    keys = [k for k in sorted(schedule) if k <= batch]
    return schedule[keys[-1]] if keys else 0


READERS = {"1.3.0rc27": _read_upper, "1.4.0rc1": _read_upper, "1.2.1": _read_lower, "1.2.0": _read_lower}


@pytest.mark.parametrize("version", READERS)
def test_trtllm_schedule_drafts_the_plans_gamma_at_every_batch_size_in_the_targeted_reading(version):
    schedule = yaml.safe_load(_trtllm_yaml(make_plan(schedule=SCHEDULE), version))["speculative_config"]
    read = READERS[version]
    for lo, hi, gamma in [(e.batch_min, e.batch_max, e.gamma) for e in SCHEDULE]:
        assert all(read(schedule["draft_len_schedule"], b) == gamma for b in range(lo, hi + 1)), (version, lo)
    if read is _read_lower:
        assert schedule["draft_len_schedule"] == {1: 4, 4: 2, 16: 1, 64: 0}  # key 1 required, 0 written
    else:
        assert schedule["draft_len_schedule"] == {3: 4, 15: 2, 63: 1}  # 0 above the largest key is implicit


def test_trtllm_schedules_misread_by_the_other_version_is_caught():
    """Negative control: the reading matters, so each version's check can fail."""
    upper = yaml.safe_load(_trtllm_yaml(make_plan(schedule=SCHEDULE), "1.4.0rc1"))["speculative_config"]
    lower = yaml.safe_load(_trtllm_yaml(make_plan(schedule=SCHEDULE), "1.2.1"))["speculative_config"]
    assert _read_lower(upper["draft_len_schedule"], 1) == 0  # no speculation at batch 1-2
    assert _read_upper(lower["draft_len_schedule"], 2) == 2  # batch 2 would draft 2, not 4


def _trtllm_yaml(plan, version) -> str:
    """The YAML the exported script writes, the draft model filled in as the shell would."""
    text = export_plan(plan, "trtllm", engine_version=version).text
    body = text.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    return body.replace("${DRAFT_MODEL}", "meta-llama/Llama-3.2-1B")


def test_trtllm_script_writes_its_yaml_and_runs_trtllm_serve(tmp_path):
    plan = make_plan(schedule=SCHEDULE)
    config = tmp_path / "options.yaml"
    args = launched_args(export_plan(plan, "trtllm").text, "trtllm", tmp_path, {"CONFIG": str(config)})
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct" and flag_value(args, "--extra_llm_api_options") == str(config)
    assert flag_value(args, "--max_batch_size") == "128" and flag_value(args, "--backend") == "pytorch"
    written = yaml.safe_load(config.read_text())
    info = engine_info("trtllm")
    assert written == llm_api_options(resolve(plan, info), info.table(None))
    header = export_plan(plan, "trtllm", engine_version="1.2.1").text
    assert "# written for: TensorRT-LLM 1.2.1" in header and "first batch size of its range" in header


def test_trtllm_caps_lengths_above_the_first_range_and_says_so():
    plan = make_plan(schedule=(entry(1, 3, 2), entry(4, 8, 3)))
    assert yaml.safe_load(_trtllm_yaml(plan, "1.4.0rc1"))["speculative_config"]["draft_len_schedule"] == {8: 2}
    assert "# dropped: draft lengths above" in export_plan(plan, "trtllm").text


def test_trtllm_versions_between_the_readings_are_refused():
    with pytest.raises(InputError, match="knows 1.2.0 to 1.2.1 and 1.3.0rc27 to 1.4.0rc1 only"):
        export_plan(make_plan(schedule=SCHEDULE), "trtllm", engine_version="1.3.0rc10")


# -- TensorRT-LLM: learned heads (EAGLE-3, MTP) -----------------------------------------

def test_trtllm_eagle3_writes_the_eagle3_config_with_the_head_as_a_variable(tmp_path):
    text = export_plan(make_plan(EAGLE3), "trtllm").text
    body = text.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    assert body == ('speculative_config:\n  decoding_type: Eagle3\n  max_draft_len: 5\n'
                    '  speculative_model: "${DRAFT_MODEL}"')
    assert "[ -n \"${DRAFT_MODEL:-}\" ] || DRAFT_MODEL=yuhuili/EAGLE3-LLaMA3.1-Instruct-8B" in text
    assert "# written for: TensorRT-LLM 1.3.0rc27 to 1.4.0rc1" in text and "Eagle3DecodingConfig" in text
    config = tmp_path / "options.yaml"
    args = launched_args(text, "trtllm", tmp_path, {"CONFIG": str(config), "DRAFT_MODEL": "/heads/eagle3"})
    assert flag_value(args, "--extra_llm_api_options") == str(config)
    assert yaml.safe_load(config.read_text()) == {"speculative_config": {
        "decoding_type": "Eagle3", "max_draft_len": 5, "speculative_model": "/heads/eagle3"}}


def test_trtllm_mtp_writes_the_mtp_config_with_its_layers_as_the_draft_length():
    text = export_plan(make_plan(MTP), "trtllm", engine_version="1.4.0rc1").text
    assert _trtllm_yaml(make_plan(MTP), "1.4.0rc1") == ("speculative_config:\n  decoding_type: MTP\n  max_draft_len: 3\n"
                                                         "  num_nextn_predict_layers: 3")
    assert "DRAFT_MODEL" not in text and "# written for: TensorRT-LLM 1.4.0rc1" in text


@pytest.mark.parametrize("decoding", [EAGLE3, MTP], ids=["eagle3", "mtp"])
def test_trtllm_heads_get_the_plans_batch_size_length_and_the_header_says_the_schedule_was_dropped(decoding):
    schedule = (entry(1, 3, 5, decoding.method), entry(4, 15, 2, decoding.method), entry(16, 128, 0))
    plan = make_plan(decoding, schedule=schedule, batch_size=8)
    config = yaml.safe_load(_trtllm_yaml(plan, None))["speculative_config"]
    assert config["max_draft_len"] == 2 and "draft_len_schedule" not in config
    assert (f"# dropped: per-batch-size schedule (TensorRT-LLM takes none for {decoding.method}); wrote gamma=2 "
            "of batch sizes 4-15, which holds the plan's batch size 8") in export_plan(plan, "trtllm").text


def test_trtllm_draft_models_keep_their_schedule_beside_the_heads():
    """Negative control: the per-method rule drops the table for heads only."""
    config = yaml.safe_load(_trtllm_yaml(make_plan(schedule=SCHEDULE), None))["speculative_config"]
    assert config["draft_len_schedule"] == {3: 4, 15: 2, 63: 1}


@pytest.mark.parametrize("decoding, version, message", [
    (Decoding(method="eagle", gamma=3, draft_model="yuhuili/EAGLE-LLaMA3-Instruct-8B"), None,
     "TensorRT-LLM cannot run eagle: its PyTorch backend runs EAGLE-3 heads only"),
    (dataclasses.replace(EAGLE3, topk=4, num_draft_tokens=16), None,
     r"TensorRT-LLM cannot draft a tree \(topk 4\): its export drafts a chain from a head \(engines that draft "
     r"trees: SGLang\)"),
    (EAGLE3, "1.2.1", r"TensorRT-LLM 1.2.1 cannot run eagle3: it is exported for 1.3.0rc27 on"),
    (MTP, "1.2.0", r"TensorRT-LLM 1.2.0 cannot run mtp: it is exported for 1.3.0rc27 on"),
    (dataclasses.replace(MTP, draft_model="some/mtp-head"), None, "runs MTP from the target checkpoint's own layers"),
    (dataclasses.replace(EAGLE3, draft_model=None), None, "needs the EAGLE-3 head's checkpoint"),
    (dataclasses.replace(EAGLE3, draft_quant="fp8"), None, "cannot apply fp8 weight quantization to the EAGLE-3 head"),
], ids=["eagle", "tree", "eagle3-1.2", "mtp-1.2", "mtp-head", "no-head", "head-fp8"])
def test_trtllm_head_refusals_are_one_line(decoding, version, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        export_plan(make_plan(decoding), "trtllm", engine_version=version)
    plan_path = tmp_path / "plan.yaml"
    save_plan(make_plan(decoding), plan_path)
    args = ["export", "--plan", str(plan_path), "--to", "trtllm", "--out", str(tmp_path / "x.sh")]
    result = CliRunner().invoke(cli, args + (["--engine-version", version] if version else []))
    assert result.exit_code == 2 and result.output.count("\n") == 1 and not (tmp_path / "x.sh").exists()


def test_trtllm_head_fields_are_those_of_the_pinned_table():
    """Every key the Eagle3/MTP config holds is in the field table of 1.3.0rc27-1.4.0rc1 (read from the
    Eagle3DecodingConfig and MTPDecodingConfig reference pages), and MTP's key is not in 1.2's, which was not read."""
    info = engine_info("trtllm")
    for decoding in (EAGLE3, MTP):
        options = llm_api_options(resolve(make_plan(decoding), info), info.table(None))
        assert set(options) | set(options["speculative_config"]) <= set(info.table(None).fields)
    assert "num_nextn_predict_layers" not in info.table("1.2.1").fields
    assert {"eagle3", "mtp"} <= set(info.methods) and "eagle" not in info.methods


# -- llama.cpp -------------------------------------------------------------------------

def test_llamacpp_converts_quantizes_and_serves_on_the_gpu(tmp_path):
    plan = make_plan(dataclasses.replace(DRAFT, quant="int4"), schedule=(entry(1, 4, 4), entry(5, 8, 2)))
    text = export_plan(plan, "llamacpp").text
    env = _local_models(tmp_path)
    args = launched_args(text, "llamacpp", tmp_path, env)
    assert flag_value(args, "-m") == f"{tmp_path}/model-Q4_0.gguf" and flag_value(args, "-md") == f"{tmp_path}/draft_model-F16.gguf"
    assert (tmp_path / "model-F16.gguf").read_text() == f"gguf of {env['MODEL']}"  # converted, then quantized
    assert engine_args(tmp_path, "llama-quantize") == [f"{tmp_path}/model-F16.gguf", f"{tmp_path}/model-Q4_0.gguf", "Q4_0"]
    assert flag_value(args, "-np") == "8" and flag_value(args, "-c") == str(4096 * 8)  # -c is shared by the slots
    assert flag_value(args, "-ngl") == flag_value(args, "-ngld") == "999" and flag_value(args, "--draft-max") == "4"
    (tmp_path / "bin" / "llama-server.args").unlink()
    assert run_script(text, tmp_path, env, args=("convert",)).returncode == 0
    assert not (tmp_path / "bin" / "llama-server.args").exists()  # `convert` stops before serving


# -- field tables: every name written is in the table of the version targeted ----------

def _names(args: list[str]) -> set[str]:
    return {a for a in args if a.startswith("-")} | {a for a in args[:1] if not a.startswith("-") and "/" not in a}


@pytest.mark.parametrize("engine, version", [("vllm", None), ("sglang", None), ("sglang", "0.5.6"), ("trtllm", "1.2.1"),
                                             ("trtllm", None), ("llamacpp", None)])
def test_every_flag_and_key_written_is_in_the_targeted_field_table(engine, version, tmp_path):
    fields = set(engine_info(engine).table(version).fields)
    quantized = {"vllm": FP8_DRAFT, "sglang": FP8_DRAFT, "llamacpp": dataclasses.replace(DRAFT, draft_quant="int8")}
    decodings = (DRAFT, LOOKUP) if engine != "llamacpp" else (DRAFT,)
    if engine == "trtllm" and version is None:  # the learned heads: 1.3.0rc27 on
        decodings += (EAGLE3, MTP)
    for i, decoding in enumerate(decodings + ((quantized[engine],) if engine in quantized else ())):
        run_dir = tmp_path / str(i)
        run_dir.mkdir()
        config = run_dir / "options.yaml"
        env = {**(_local_models(run_dir) if engine == "llamacpp" else {}), "CONFIG": str(config)}
        schedule = tuple(entry(e.batch_min, e.batch_max, e.gamma, decoding.method) for e in SCHEDULE)
        text = export_plan(make_plan(decoding, schedule=schedule), engine, engine_version=version).text
        args = launched_args(text, engine, run_dir, env)
        assert _names(args) <= fields, _names(args) - fields
        if engine == "trtllm":
            options = yaml.safe_load(config.read_text())
            assert set(options) | set(options["speculative_config"]) <= fields
    if engine == "llamacpp":
        assert {"llama-quantize", "convert_hf_to_gguf.py", "--outfile", "--outtype"} <= fields
        assert all(name in text for name in ("convert_hf_to_gguf.py", "--outtype", "--outfile"))


def test_field_table_check_fails_on_a_name_the_table_lacks(tmp_path):
    """Negative control: a flag the table does not hold is reported."""
    args = _launch(make_plan(), "vllm", tmp_path) + ["--speculative-model"]
    assert _names(args) - set(engine_info("vllm").table(None).fields) == {"--speculative-model"}


def test_transformers_file_writes_only_table_names():
    from planner.plan.export.hf import drafter_settings, generate_kwargs

    for version in ("4.47.0", "5.24.0"):
        table = engine_info("hf").table(version)
        for decoding in (DRAFT, LOOKUP, EARLY):
            resolved = resolve(make_plan(decoding), engine_info("hf"))
            assert set(drafter_settings(resolved)) | set(generate_kwargs(resolved)) <= set(table.fields)
        text = export_plan(make_plan(DRAFT), "hf", engine_version=version).text
        dtype = "dtype" if version.startswith("5") else "torch_dtype"
        assert f'{dtype}="auto"' in text and dtype in table.fields


# -- headers ---------------------------------------------------------------------------

def test_header_names_plan_gpu_setup_and_what_it_was_written_for():
    text = export_plan(make_plan(LOOKUP, schedule=tuple(entry(lo, hi, g, "prompt_lookup") for lo, hi, g in
                                                         [(1, 31, 3), (32, 63, 2), (64, 128, 0)])), "vllm",
                       engine_version="0.30.0", plan_label="deploy/h100.yaml").text
    header = "\n".join(line for line in text.splitlines() if line.startswith("# "))
    assert "deploy/h100.yaml" in header and "NVIDIA H100 80GB HBM3" in header
    assert "draft length by batch size 1-31: 3, 32-63: 2, 64-128: 0" in header and "see the table" not in header
    assert "written for: vLLM 0.30.0" in header and "vllm/config/speculative.py" in header
    assert "up to 128 sequences at once" in header


def test_early_exit_is_written_for_the_versions_that_have_it():
    text = export_plan(make_plan(EARLY), "hf", engine_version="4.47.0").text
    assert "# written for: transformers 4.47.0" in text
    with pytest.raises(ExportError, match="exported for 4.47.0 on"):
        export_plan(make_plan(EARLY), "hf", engine_version="4.46.0")


def test_header_sources_cite_what_was_read():
    """Citations are wheels, files at commits, or pages; a commit cited for TensorRT-LLM is a stored copy
    that says its release is not pinned (the field names come from the versioned pages)."""
    for name in ("vllm", "sglang", "trtllm", "hf", "llamacpp"):
        for table in engine_info(name).tables:
            assert table.sources
            for source in table.sources:
                assert any(kind in source for kind in ("wheel", "@ ", "github.com/", "nvidia.github.io", "installed",
                                                       "stored copies", "not pinned")), source
    assert all("release not pinned" in s for t in engine_info("trtllm").tables for s in t.sources if "@ " in s)


# -- refusals --------------------------------------------------------------------------

def test_layer_skip_is_refused_naming_the_nearest_expressible_setup():
    plan = make_plan(SKIP, alternatives=(Candidate(DRAFT, prediction(120.0)), Candidate(LOOKUP, prediction(90.0))))
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
    with pytest.raises(NotFoundError, match="unknown engine 'vlm'"):
        export_plan(make_plan(), "vlm")


# -- files: the CLI, compose -----------------------------------------------------------

def test_cli_export_writes_script_and_compose_and_errors_in_one_line(tmp_path, capsys):
    plan_path = tmp_path / "plan.yaml"
    save_plan(make_plan(schedule=SCHEDULE), plan_path)
    out = tmp_path / "serve.sh"
    result = CliRunner().invoke(cli, ["export", "--plan", str(plan_path), "--to", "vllm", "--out", str(out),
                                      "--compose"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o111 and "--max-num-seqs 128" in out.read_text()
    compose = yaml.safe_load((tmp_path / "serve.compose.yaml").read_text())["services"]["vllm"]
    assert compose["image"] == "vllm/vllm-openai:v0.33.0" and compose["entrypoint"] == ["sh", "/specplan/launch.sh"]
    assert compose["volumes"][0]["source"] == "./serve.sh" and compose["ports"] == ["8000:8000"]
    save_plan(make_plan(SKIP), plan_path)
    with pytest.raises(SystemExit) as exited:
        main(["export", "--plan", str(plan_path), "--to", "sglang", "--out", str(tmp_path / "x.sh")])
    assert exited.value.code == 2 and not (tmp_path / "x.sh").exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "SGLang cannot run layer_skip" in error[0]


def test_cli_export_refuses_an_unwritable_compose_file_before_replacing_the_script(tmp_path, capsys):
    plan_path = tmp_path / "plan.yaml"
    save_plan(make_plan(), plan_path)
    out = tmp_path / "serve.sh"
    out.write_text("OLD SCRIPT\n")
    (tmp_path / "serve.compose.yaml").mkdir()
    with pytest.raises(SystemExit) as exited:
        main(["export", "--plan", str(plan_path), "--to", "vllm", "--out", str(out), "--compose"])
    error = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(error) == 1 and "serve.compose.yaml: cannot write" in error[0]
    assert out.read_text() == "OLD SCRIPT\n"


def test_compose_per_engine_with_an_image(tmp_path):
    for engine in ("vllm", "sglang", "trtllm", "llamacpp", "hf"):
        export = export_plan(make_plan(), engine, engine_version="1.2.1" if engine == "trtllm" else None)
        script = tmp_path / f"{engine}$x{export.suffix}"
        write_export(export, script)
        written = write_compose(export, script)
        if engine == "hf":
            assert written is None and not compose_path(script).exists()
            continue
        service = yaml.safe_load(written.read_text())["services"][engine]
        assert service["volumes"][0]["source"] == f"./{engine}$$x.sh"  # compose would interpolate a lone $
        assert service["environment"]["PORT"] == str(export.port)
    assert "tensorrt-llm/release:1.2.1" in (tmp_path / "trtllm$x.compose.yaml").read_text()
    llama = yaml.safe_load((tmp_path / "llamacpp$x.compose.yaml").read_text())["services"]["llamacpp"]
    assert llama["environment"]["LLAMA_SERVER"] == "/app/llama-server" and llama["volumes"][-1]["target"] == "/models"


def _trtllm_plan(tmp_path, *extra, batch_sizes="1-128") -> tuple:
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--context", "128",
                                      "--batch-sizes", batch_sizes, "--engine", "trtllm", "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return load_plan(out), out


def test_trtllm_eagle3_plan_states_the_one_draft_length_it_exports(tmp_path):
    """TensorRT-LLM's EAGLE-3 path takes one max_draft_len, so the plan searches one over the
    batch range; over 1-128 on an A10G one length would lose at the top of the range, so the plan
    takes a method whose draft length the engine switches by batch size."""
    plan, path = _trtllm_plan(tmp_path, batch_sizes="1-8")
    assert plan.decoding.method == "eagle3"
    assert len({e.gamma for e in plan.schedule}) == 1 and len(plan.schedule) == 1
    assert (plan.schedule[0].batch_min, plan.schedule[0].batch_max) == (1, 8)
    wide, _ = _trtllm_plan(tmp_path)
    assert wide.decoding.method != "eagle3" and wide.schedule[-1].gamma == 0
    text = export_plan(plan, "trtllm").text
    assert yaml.safe_load(_trtllm_yaml(plan, None))["speculative_config"]["max_draft_len"] == plan.decoding.gamma
    assert "# dropped:" not in text


def test_trtllm_draft_model_plan_keeps_its_schedule(tmp_path):
    plan, _ = _trtllm_plan(tmp_path, "--methods", "draft_model,prompt_lookup")
    assert len({e.gamma for e in plan.schedule}) > 1
    assert "draft_len_schedule" in yaml.safe_load(_trtllm_yaml(plan, None))["speculative_config"]


def test_a_plan_made_with_a_profile_file_exports_its_budget(tmp_path):
    """The plan records the device's memory, so an export need not find a measured profile
    again by name: the budget reaches vLLM's memory share as it does for a shipped profile."""
    import shutil

    from planner.profiles import PROFILES_DIR

    mine = tmp_path / "mine.yaml"
    shutil.copy(PROFILES_DIR / "gpus" / "l20.yaml", mine)
    mine.write_text(mine.read_text().replace("name: l20", "name: my-l20", 1))
    texts = []
    for gpu in ("l20", str(mine)):
        out = tmp_path / "plan.yaml"
        result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", gpu, "--engine", "vllm", "--vram-gib", "30",
                                          "--trials", "20", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert load_plan(out).hardware.memory_gib > 40
        texts.append(export_plan(load_plan(out), "vllm").text)
    shares = [re.search(r"GPU_MEMORY_UTILIZATION=([0-9.]+)", t) for t in texts]
    assert all(shares) and shares[0].group(1) == shares[1].group(1)
