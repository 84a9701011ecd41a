"""`specplan run` / run_plan end to end on CPU, and every refusal as one line, exit code 2,
before anything is loaded."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from conftest import rt_write_adapter
from planner.plan.schema import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction
from planner.runtime import run_plan


def _plan(source: str, *, layers: int = 4, vocab: int = 128, context: int = 256, vram_gib: float = 0.01, **decoding) -> Plan:
    decoding.setdefault("method", "layer_skip")
    if decoding["method"] == "layer_skip":
        decoding.setdefault("skip_layers", (1, 2))
    decoding.setdefault("gamma", 3)
    return Plan(
        model=ModelRef(name="tiny", source=source, num_layers=layers, vocab_size=vocab),
        hardware=HardwareRef(profile="cpu-local", device_name="cpu"),
        decoding=Decoding(**decoding),
        prediction=Prediction(basis="analytical", tokens_per_s=100.0, speedup=1.4, tokens_per_iteration=2.0,
                              acceptance=0.5, target_latency_ms=1.0, draft_latency_ms=0.5, iteration_ms=2.0, vram_gib=vram_gib),
        constraints=Constraints(context=context),
    )


def _cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_baseline_cli_reports_identical_outputs(rt_models, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    _plan(rt_models["llama"]).save(path)
    code, out, err = _cli(["run", "--plan", str(path), "--prompt", "the cat sat", "--max-new-tokens", "20", "--baseline"], capsys)
    assert code == 0, err
    assert "outputs identical" in out
    assert "speedup" in out and "predicted" in out


def test_run_json_over_a_prompts_file(rt_models, tmp_path, capsys):
    path, prompts = tmp_path / "plan.yaml", tmp_path / "prompts.jsonl"
    _plan(rt_models["gemma"], method="prompt_lookup", gamma=4).save(path)
    prompts.write_text('{"prompt": "abcabcabc"}\n{"prompt": "hello hello"}\n')
    code, out, err = _cli(["run", "--plan", str(path), "--prompts", str(prompts), "--max-new-tokens", "12", "--baseline", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["identical"] is True
    assert len(report["tokens"]) == 2 and all(len(t) == 12 for t in report["tokens"])  # no EOS-less stop
    assert report["predicted"]["tokens_per_s"] == 100.0 and report["tokens_per_s"] > 0


def test_run_plan_streams_the_text_it_reports(rt_models):
    pieces = []
    report = run_plan(_plan(rt_models["qwen2"], method="early_exit", exit_layer=2), ["hello"], max_new_tokens=10,
                      stream=pieces.append)
    assert "".join(pieces) == report.texts[0] + "\n"
    assert report.acceptance is not None and 0 <= report.acceptance <= 1


def test_run_plan_draft_model_and_sampling(rt_models, rt_draft_model):
    plan = _plan(rt_models["mistral"], method="draft_model", draft_model=rt_draft_model, vram_gib=0.02)
    first = run_plan(plan, ["abc"], max_new_tokens=10, temperature=0.8, seed=3)
    again = run_plan(plan, ["abc"], max_new_tokens=10, temperature=0.8, seed=3)
    assert first.tokens == again.tokens


@pytest.mark.parametrize("where", ["given", "own"])
def test_s3d_with_an_adapter_is_identical_to_the_checkpoint(rt_models, tmp_path, where):
    """An adapter named by the plan, or saved in the checkpoint's directory, drafts; greedy
    output equals plain decoding of the checkpoint, and sampling is reproducible."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(rt_models["phi3"], model)
    adapter = rt_write_adapter(str(model), model if where == "own" else tmp_path / "adapter", skip_layers=(1, 2), gamma=3)
    plan = _plan(str(model), method="s3d", skip_layers=(1, 2), adapter=None if where == "own" else str(adapter))
    report = run_plan(plan, ["hello", "the cat"], max_new_tokens=16, baseline=True)
    assert report.identical is True and report.acceptance is not None
    sampled = [run_plan(plan, ["hello"], max_new_tokens=10, temperature=0.9, seed=5).tokens for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_an_adapter_for_another_checkpoint_is_refused_in_one_line(rt_models, tmp_path, capsys):
    """Same shape, other weights: the content fingerprint tells them apart."""
    adapter = rt_write_adapter(rt_models["llama"], tmp_path / "adapter", skip_layers=(1, 2))
    other = tmp_path / "other"
    _rewrite_weights(rt_models["llama"], other)
    path = tmp_path / "plan.yaml"
    _plan(str(other), method="s3d", skip_layers=(1, 2), adapter=str(adapter)).save(path)
    code, out, err = _cli(["run", "--plan", str(path), "--prompt", "hello"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"adapter {adapter} was trained on llama (sha256 " in err and "not on this checkpoint (sha256 " in err


def _rewrite_weights(source: str, out) -> None:
    """A copy of the checkpoint `source` whose weights differ slightly."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(source, out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(out)


@pytest.mark.parametrize(
    "plan_kwargs, args, message",
    [
        ({"layers": 6}, [], "num_layers: the plan says 6 but the checkpoint has 4"),
        ({"vocab": 32000}, [], "vocab_size: the plan says 32000"),
        ({"skip_layers": (1, 9), "layers": 4}, [], "skip_layers[1]: layer 9"),
        ({"method": "s3d", "skip_layers": (1,)}, [], "has none (none given, none in its directory, none shipped for it): run `specplan adapt` first"),
        ({"method": "s3d", "skip_layers": (1,), "adapter": "/no/adapter"}, [], "/no/adapter: no S3D adapter here (no s3d.json)"),
        ({"context": 16}, ["--max-new-tokens", "10"], "with --max-new-tokens 10 it exceeds the plan's context of 16"),
        ({"context": 4096}, [], "the plan's context of 4096 tokens is beyond the 512 positions of "),
        ({}, ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        ({}, ["--temperature", "-1"], "Invalid value for '--temperature': -1.0 is not in the range x>=0"),
        ({}, ["--temperature", "nan"], "Invalid value for '--temperature': 'nan' is not a finite number"),
        ({}, ["--vram-gib", "inf"], "Invalid value for '--vram-gib': 'inf' is not a finite number"),
        ({}, ["--vram-gib", "nan"], "Invalid value for '--vram-gib': 'nan' is not a finite number"),
        ({}, ["--chat"], "--chat: this model's tokenizer has no chat template (leave --chat out"),
        ({}, ["--device", "cuda"], "no CUDA GPU"),
        ({"quant": "int8"}, [], 'int8 needs torchao: pip install ".[quant]" (from a clone of specplan)'),
        ({}, ["--vram-gib", "0.00001"], "but --vram-gib allows 0.00 GiB; nothing was loaded"),
        ({"vram_gib": 500.0}, ["--vram-gib", "1"], "plan prediction 500.00 GiB"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(rt_models, tmp_path, capsys, plan_kwargs, args, message):
    if "quant" in plan_kwargs and _has_torchao():
        pytest.skip("torchao installed: int8 is available")
    path = tmp_path / "plan.yaml"
    plan = _plan(rt_models["llama"], **plan_kwargs)
    plan.save(path)
    code, out, err = _cli(["run", "--plan", str(path), "--prompt", "hello world", *args], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert out == ""


@pytest.mark.parametrize("option, value, message", [
    ("temperature", float("nan"), "`temperature` must be a finite number, 0 or more, got nan"),
    ("temperature", -0.5, "`temperature` must be a finite number, 0 or more, got -0.5"),
    ("vram_gib", float("inf"), "`vram_gib` must be a positive finite number, got inf"),
    ("vram_gib", 0.0, "`vram_gib` must be a positive finite number, got 0.0"),
])
def test_run_plan_refuses_numbers_out_of_range_before_loading(rt_models, option, value, message):
    from planner.errors import InputError

    with pytest.raises(InputError, match=message):
        run_plan(_plan(rt_models["llama"]), ["hello"], **{option: value})


def _has_torchao() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def test_empty_prompt_and_missing_prompt(rt_models, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    _plan(rt_models["llama"]).save(path)
    code, _, err = _cli(["run", "--plan", str(path), "--prompt", "  "], capsys)
    assert code == 2 and "prompt 1 is empty" in err
    code, _, err = _cli(["run", "--plan", str(path)], capsys)
    assert code == 2 and "--prompt" in err


def test_compare_decodings_measures_each_against_autoregressive_in_rounds(rt_models, rt_draft_model):
    from planner.errors import InputError, PlanError
    from planner.runtime.run import compare_decodings

    plan = _plan(rt_models["llama"], vram_gib=0.02)
    decodings = [plan.decoding, Decoding(method="draft_model", gamma=2, draft_model=rt_draft_model),
                 Decoding(method="prompt_lookup", gamma=3)]
    result = compare_decodings(plan, decodings, ["hello there", "abc abc abc"], max_new_tokens=10, rounds=2, device="cpu")
    assert [c.decoding.method for c in result] == ["autoregressive", "layer_skip", "draft_model", "prompt_lookup"]
    plain = result[0]
    assert plain.speedup == 1.0 and plain.speedup_range == (1.0, 1.0) and plain.tokens_per_iteration == 1.0
    for c in result[1:]:
        assert c.identical is True
        assert 1.0 <= c.tokens_per_iteration <= c.decoding.gamma + 1
        assert c.speedup_range[0] <= c.speedup <= c.speedup_range[1]
    # one round: the speedup is that round's tokens/s over autoregressive's
    one = compare_decodings(plan, decodings[1:2], ["hello there"], max_new_tokens=10, rounds=1, device="cpu")
    assert one[1].speedup == pytest.approx(one[1].tokens_per_s / one[0].tokens_per_s)
    assert one[1].speedup_range == (one[1].speedup, one[1].speedup)
    with pytest.raises(InputError, match="`rounds` must be at least 1"):
        compare_decodings(plan, decodings, ["hi"], rounds=0, device="cpu")
    with pytest.raises(InputError, match="`max_new_tokens` must be at least 2 to time decoding"):
        compare_decodings(plan, decodings, ["hi"], max_new_tokens=1, device="cpu")
    with pytest.raises(PlanError, match="decoding.quant: int8 differs from none"):
        compare_decodings(plan, [Decoding(method="prompt_lookup", gamma=2, quant="int8")], ["hi"], device="cpu")


def test_a_decoding_bench_loads_once_and_compares_again(rt_models):
    from planner.errors import PlanError
    from planner.runtime import DecodingBench

    plan = _plan(rt_models["llama"])
    bench = DecodingBench(plan, ["hello there"], max_new_tokens=10, max_gamma=3, device="cpu")
    first = bench.compare([plan.decoding], rounds=1)
    again = bench.compare([Decoding(method="prompt_lookup", gamma=2)], rounds=1)
    assert [c.decoding.method for c in first] == ["autoregressive", "layer_skip"]
    assert [c.decoding.method for c in again] == ["autoregressive", "prompt_lookup"]
    assert first[1].identical and again[1].identical
    with pytest.raises(PlanError, match="decoding.gamma: 4 is more than the 3"):
        bench.compare([Decoding(method="prompt_lookup", gamma=4)], rounds=1)


def test_prompts_that_end_at_once_leave_nothing_to_time(rt_models, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from planner.errors import InputError
    from planner.runtime.run import compare_decodings

    source = tmp_path / "model"
    shutil.copytree(rt_models["llama"], source)
    first = run_plan(_plan(str(source), method="autoregressive", gamma=0), ["hello"], max_new_tokens=2).tokens[0][0]
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(first)  # the model's first greedy token now ends the text
    tokenizer.save_pretrained(source)
    with pytest.raises(InputError, match="every prompt ended at its first token: nothing to time"):
        compare_decodings(_plan(str(source)), [], ["hello"], max_new_tokens=10, rounds=1, device="cpu")


# ---------------------------------------------------------------- one memory rule, hardware of the plan (issue 13)


def _cpu_profile():
    from planner.hardware import HardwareProfile

    return HardwareProfile(name="cpu-here", device_name="cpu", kind="cpu", memory_gib=64, bandwidth_gbps=20,
                           peak_tflops={"fp32": 1.0, "bf16": 0.5}, kernel_launch_us=5.0, graph_kernel_us=5.0)


@pytest.mark.parametrize("decoding", [Decoding("layer_skip", gamma=3, skip_layers=(1, 2)), Decoding("autoregressive"),
                                      Decoding("s3d", gamma=2, skip_layers=(1,)), "draft_model"])
@pytest.mark.parametrize("device_type, kind", [("cpu", "cpu"), ("cuda", "gpu")])
def test_runtime_estimate_is_predicts_vram(rt_models, rt_draft_model, decoding, device_type, kind):
    """One rule for memory: what the runtime checks against the budget before loading is what
    `predict` gives for the same model, set-up, context, device kind and dtype."""
    import dataclasses

    from planner.perf import Execution, predict_detail
    from planner.runtime.checkpoint import read_hf_config
    from planner.runtime.memory import estimate_vram_gib, spec_from_config

    config, draft_config = read_hf_config(rt_models["llama"]), None
    if decoding == "draft_model":
        decoding, draft_config = Decoding("draft_model", gamma=4, draft_model=rt_draft_model), read_hf_config(rt_draft_model)
    profile = dataclasses.replace(_cpu_profile(), kind=kind)
    predicted = predict_detail(spec_from_config(config), profile, decoding, context=300,
                               draft_spec=draft_config and spec_from_config(draft_config),
                               execution=Execution(dtype="fp32", graphs=kind == "gpu")).prediction.vram_gib
    estimate = estimate_vram_gib(config, decoding, context=300, max_gamma=decoding.gamma, device_type=device_type,
                                 dtype="fp32", draft_config=draft_config)
    assert estimate == predicted


def test_budget_check_refuses_below_predicts_vram_and_runs_above(rt_models):
    from planner.errors import BudgetError
    from planner.perf import Execution, predict_detail
    from planner.runtime.checkpoint import read_hf_config
    from planner.runtime.memory import spec_from_config

    plan = _plan(rt_models["llama"])
    spec = spec_from_config(read_hf_config(rt_models["llama"]))
    need = predict_detail(spec, _cpu_profile(), plan.decoding, context=plan.constraints.context,
                          execution=Execution(dtype="fp32", graphs=False)).prediction.vram_gib
    with pytest.raises(BudgetError, match=f"estimate on this device {need:.2f} GiB"):
        run_plan(plan, ["hello"], max_new_tokens=4, device="cpu", dtype="fp32", vram_gib=need * 0.999)
    report = run_plan(plan, ["hello"], max_new_tokens=4, device="cpu", dtype="fp32", vram_gib=need * 1.001)
    assert report.vram_estimate_gib == need


def test_run_says_when_the_plan_was_made_for_other_hardware(rt_models, tmp_path, capsys):
    import dataclasses

    import torch

    from planner.hardware.measure import device_name

    here = device_name(torch.device("cpu"))
    elsewhere, local = tmp_path / "a10g.yaml", tmp_path / "here.yaml"
    plan = _plan(rt_models["llama"])
    plan.replace(hardware=dataclasses.replace(plan.hardware, device_name="NVIDIA A10G")).save(elsewhere)
    plan.replace(hardware=dataclasses.replace(plan.hardware, device_name=here)).save(local)
    args = ["--prompt", "hello", "--max-new-tokens", "4", "--device", "cpu"]

    code, out, err = _cli(["run", "--plan", str(elsewhere), *args], capsys)
    assert code == 0
    assert err == f"warning: plan made for NVIDIA A10G; running on cpu ({here}): predictions do not apply\n"
    assert "predicted for NVIDIA A10G, not for this" in out
    code, out, err = _cli(["run", "--plan", str(elsewhere), *args, "--json"], capsys)
    assert code == 0 and json.loads(out)["predictions_apply"] is False and err.startswith("warning: plan made for")

    code, out, err = _cli(["run", "--plan", str(local), *args], capsys)
    assert code == 0 and err == "" and "predicted for" not in out
    code, out, err = _cli(["run", "--plan", str(local), *args, "--json"], capsys)
    assert json.loads(out)["predictions_apply"] is True


def test_run_baseline_in_rounds_reports_the_median_speedup_and_its_range(rt_models, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    _plan(rt_models["llama"]).save(path)
    args = ["run", "--plan", str(path), "--prompt", "the cat sat", "--max-new-tokens", "12", "--baseline", "--rounds", "3"]
    code, out, err = _cli(args + ["--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    rounds, (low, high) = report["speedup_rounds"], report["speedup_range"]
    assert len(rounds) == 3 and (low, high) == (min(rounds), max(rounds))
    assert report["speedup"] == sorted(rounds)[1] and report["identical"] is True
    code, out, err = _cli(args, capsys)
    assert code == 0, err
    assert "speedup over 3 rounds: median " in out and "outputs identical" in out


@pytest.mark.parametrize("args, message", [
    (["--baseline", "--rounds", "0"], "Invalid value for '--rounds': 0 is not in the range x>=1."),
    (["--rounds", "2"], "--rounds 2 times the plan against autoregressive decoding: give --baseline too"),
])
def test_rounds_out_of_range_or_without_a_baseline_is_one_line(rt_models, tmp_path, capsys, args, message):
    path = tmp_path / "plan.yaml"
    _plan(rt_models["llama"]).save(path)
    code, out, err = _cli(["run", "--plan", str(path), "--prompt", "hello world", *args], capsys)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1, err
