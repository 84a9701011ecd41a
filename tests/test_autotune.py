"""`specplan autotune`: profile, analytical plan, a small measured study (planner.tune) with
its calibration, the plan run on held-out prompts; on the bundled demo model and on a user's
model directory (a tiny random Llama), with small settings."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from planner.cli import cli
from conftest import rt_write_adapter
from planner.plan.schema import load_plan

SMALL = ["--max-new-tokens", "12", "--trials", "3", "--num-prompts", "1", "--device", "cpu"]


@pytest.fixture()
def user_model(rt_models, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(rt_models["llama"], model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def add(a, b):\n    return a + b\n")
    return model, prompts


def test_autotune_on_the_demo_model_tunes_calibrates_and_runs_the_plan_on_held_out_prompts(tmp_path):
    from planner.tune.calibration import load_calibration

    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, ["autotune", "--out", str(out)] + SMALL)
    assert result.exit_code == 0, result.output
    assert "analytical plan: " in result.output and "seeded with 3 analytical best set-up(s)" in result.output  # --trials 3: no more seeds than trials
    assert "outputs identical to autoregressive: yes" in result.output
    assert "predicted tokens/s" in result.output and "measured tokens/s" in result.output
    assert "measured (rounds)" in result.output and "calibration fitted to " in result.output
    plan = load_plan(out)
    assert plan.model.source.endswith("profiles/demo") and plan.measured["identical"] is True
    assert plan.measured["prompts"] == 1 and plan.measured["max_new_tokens"] == 12 and plan.measured["tokens_per_s"] > 0
    assert plan.prediction.basis == ("calibrated" if plan.decoding.method == "autoregressive" else "measured")
    assert f"(prediction basis: {plan.prediction.basis})" in result.output
    assert plan.search.trials == 3 and plan.tuning.tuning_prompts == 3 and plan.tuning.held_out_prompts == 0
    assert load_calibration(tmp_path / "plan.calibration.yaml").model.name == "demo"


def test_autotune_seeds_a_study_with_each_methods_analytical_best_and_plans_the_best_that_beat_autoregressive(tmp_path):
    from planner.autotune import AutotuneRequest, autotune
    from planner.tune import choose

    result = autotune(AutotuneRequest(out=str(tmp_path / "plan.yaml"), max_new_tokens=12, trials=5, num_prompts=1,
                                      device="cpu"))
    trials = result.tuned.trials
    assert [m.number for m in trials] == list(range(5))
    assert {m.decoding.method for m in trials} == {"s3d", "draft_model", "prompt_lookup", "layer_skip", "early_exit"}
    chosen = choose(trials)[0]
    assert result.plan.decoding == (chosen.decoding if chosen else load_plan(tmp_path / "plan.yaml").decoding)
    if chosen is None:
        assert result.plan.decoding.method == "autoregressive"
    assert result.report.identical is True and result.plan.measured["prompts"] == 1


def test_autotune_on_a_user_model_measures_s3d_only_when_adapted(user_model, tmp_path):
    from planner.autotune import AutotuneRequest, autotune

    model, prompts = user_model
    plain = autotune(AutotuneRequest(str(model), str(prompts), out=str(tmp_path / "a.yaml"), max_new_tokens=12, trials=3,
                                     device="cpu"))
    assert {m.decoding.method for m in plain.tuned.trials} == {"layer_skip", "early_exit", "prompt_lookup"}
    assert plain.report.identical is True

    rt_write_adapter(str(model), model, skip_layers=(1, 2), gamma=3)  # an adapter saved beside the weights
    adapted = autotune(AutotuneRequest(str(model), str(prompts), out=str(tmp_path / "b.yaml"), max_new_tokens=12, trials=4,
                                       device="cpu"))
    s3d = [m for m in adapted.tuned.trials if m.decoding.method == "s3d"]
    assert [m.decoding.skip_layers for m in s3d] == [(1, 2)] and s3d[0].decoding.gamma == 3


@pytest.mark.parametrize("option, missing", [("--model", "nope"), ("--draft-model", "nodraft")])
def test_autotune_with_a_missing_model_directory_is_one_line(tmp_path, option, missing):
    result = CliRunner().invoke(cli, ["autotune", option, str(tmp_path / missing), "--out", str(tmp_path / "p.yaml")] + SMALL)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and missing in result.output
    assert not (tmp_path / "p.yaml").exists()


def test_autotune_names_a_missing_relative_directory_and_a_missing_gpu_before_measuring(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["autotune", "--model", "./my-llama", "--out", "p.yaml"] + SMALL)
    assert result.exit_code == 2 and result.output == "error: ./my-llama: no such file or directory\n"
    result = CliRunner().invoke(cli, ["autotune", "--out", "p.yaml"] + SMALL[:-2] + ["--device", "cuda"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "no CUDA GPU" in result.output
    assert not (tmp_path / "p.yaml").exists()


def test_an_unwritable_out_is_refused_before_any_measurement(tmp_path):
    result = CliRunner().invoke(cli, ["autotune", "--out", str(tmp_path / "no" / "plan.yaml")] + SMALL)
    assert result.exit_code == 2
    assert result.output.strip().endswith("cannot write (no directory " + str(tmp_path / "no") + ")")


def test_kernel_cost_calibration_reproduces_the_measured_step():
    from planner.autotune import calibrate_kernel_cost
    from planner.hardware import load_profile
    from planner.models import load_model_spec
    from planner.perf.cost import forward_latency_s

    spec, profile = load_model_spec("qwen2.5-0.5b"), load_profile("a10g")
    predicted = forward_latency_s(spec, profile, context=576)
    for measured in (predicted * 1.05, predicted * 1.7):
        calibrated = calibrate_kernel_cost(spec, profile, measured, context=576)
        assert abs(forward_latency_s(spec, calibrated, context=576) - measured) < 1e-9
        assert calibrated.bandwidth_gbps == profile.bandwidth_gbps
    # faster than the roofline allows: the kernel cost stops at zero instead of going negative
    assert calibrate_kernel_cost(spec, profile, 1e-9, context=576).graph_kernel_us == 0.0


def test_too_few_new_tokens_to_time_is_one_line(tmp_path):
    args = ["autotune", "--out", str(tmp_path / "p.yaml"), "--max-new-tokens", "1", "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --max-new-tokens must be at least 8 for autotune to time decoding, got 1"]
    assert not (tmp_path / "p.yaml").exists()
