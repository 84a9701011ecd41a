"""`specplan autotune`: profile, plan, calibrate, write plan.yaml, run; on the bundled demo
model and on a user's model directory (a tiny random Llama), with small settings."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from planner.cli import cli
from conftest import rt_write_adapter
from planner.autotune import ranked_calibrations
from planner.plan.schema import load_plan

SMALL = ["--max-new-tokens", "12", "--trials", "20", "--num-prompts", "1", "--device", "cpu"]


@pytest.fixture()
def user_model(rt_models, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(rt_models["llama"], model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def add(a, b):\n    return a + b\n")
    return model, prompts


def test_autotune_on_the_demo_model_writes_a_calibrated_plan_and_identical_outputs(tmp_path):
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, ["autotune", "--out", str(out)] + SMALL)
    assert result.exit_code == 0, result.output
    assert "outputs identical to autoregressive: yes" in result.output
    assert "predicted tokens/s" in result.output and "measured tokens/s" in result.output
    assert "measured speedup (rounds)" in result.output
    plan = load_plan(out)
    assert plan.prediction.basis == "calibrated"
    assert plan.model.source.endswith("profiles/demo") and plan.measured["identical"] is True
    assert plan.measured["tokens_per_s"] > 0


def test_autotune_chooses_the_fastest_measured_set_up_and_predicts_its_measured_speedup(tmp_path):
    from planner.autotune import AutotuneRequest, autotune

    result = autotune(AutotuneRequest(out=str(tmp_path / "plan.yaml"), max_new_tokens=12, trials=20, num_prompts=1,
                                      device="cpu"))
    calibrated = result.calibrated
    assert calibrated[0].candidate.decoding.method == "autoregressive"
    assert {"s3d", "draft_model", "prompt_lookup"} <= {c.candidate.decoding.method for c in calibrated}
    clear = [c for c in calibrated if c.candidate.decoding.method == "autoregressive" or c.measured.speedup_range[0] > 1.0]
    fastest = max(clear, key=lambda c: c.measured.speedup)
    assert result.plan.decoding == fastest.candidate.decoding
    for c in calibrated:
        # the plan's prediction carries the measured acceptance and the measured speedup
        assert c.candidate.prediction.speedup == pytest.approx(c.measured.speedup)
        assert c.candidate.prediction.tokens_per_iteration == pytest.approx(c.measured.tokens_per_iteration, rel=1e-3)
        assert c.model.tokens_per_iteration == pytest.approx(c.measured.tokens_per_iteration, rel=1e-3)
    assert [a.decoding for a in result.plan.alternatives] == [c.candidate.decoding for c in ranked_calibrations(calibrated)[1:]]


def test_a_set_up_whose_slowest_round_lost_is_never_the_plan():
    """A better median whose rounds dip below 1.0 ranks after autoregressive decoding."""
    from types import SimpleNamespace as NS

    def calibrated(method, tokens_per_s, speedup_range):
        return NS(candidate=NS(decoding=NS(method=method), prediction=NS(tokens_per_s=tokens_per_s)),
                  measured=NS(speedup_range=speedup_range))

    plain = calibrated("autoregressive", 100.0, (1.0, 1.0))
    noisy = calibrated("prompt_lookup", 101.0, (0.99, 1.01))
    steady = calibrated("draft_model", 120.0, (1.1, 1.3))
    assert ranked_calibrations([noisy, plain]) == [plain, noisy]
    assert ranked_calibrations([noisy, plain, steady]) == [steady, plain, noisy]


def test_autotune_on_a_user_model_measures_s3d_only_when_adapted(user_model, tmp_path):
    from planner.autotune import AutotuneRequest, autotune

    model, prompts = user_model
    plain = autotune(AutotuneRequest(str(model), str(prompts), out=str(tmp_path / "a.yaml"), max_new_tokens=12, trials=20,
                                     device="cpu"))
    assert "s3d" not in {c.candidate.decoding.method for c in plain.calibrated}
    assert plain.report.identical is True

    rt_write_adapter(str(model), model, skip_layers=(1, 2), gamma=3)  # an adapter saved beside the weights
    adapted = autotune(AutotuneRequest(str(model), str(prompts), out=str(tmp_path / "b.yaml"), max_new_tokens=12, trials=20,
                                       device="cpu"))
    s3d = [c.candidate for c in adapted.calibrated if c.candidate.decoding.method == "s3d"]
    assert [c.decoding.skip_layers for c in s3d] == [(1, 2)]
    assert s3d[0].prediction.basis == "calibrated"


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
