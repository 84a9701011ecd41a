"""Calibration of the performance model from tune's trials (issue 15, part 6): the fit
recovers known constants from synthetic trials, a fit to a real demo study predicts its
held-out set-ups better than the model it started from, and `plan`/`predict --calibration`
take the file (and refuse a bad one in one line)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.hardware import load_profile
from planner.models import load_model_spec
from planner.perf.acceptance import Prior, position_acceptances, resolve_priors, tokens_per_iteration
from planner.perf.speedup import beta_for, middle_block, predict, predict_detail
from planner.plan.schema import Decoding
from planner.tune import Measured
from planner.tune.calibration import Calibration, FitSummary, FittedFor, load_calibration
from planner.tune.fit import calibrate, cost_parameters, fit, non_negative_lstsq, observations, with_cost

DATA = Path(__file__).resolve().parent / "data"
DEMO = Path(__file__).resolve().parent.parent / "planner" / "profiles" / "demo"
CONTEXT = 100
TRUE_PRIORS = {"layer_skip": Prior(0.95, 6.0, 0.45, 0.9), "early_exit": Prior(0.9, 5.0, 0.3, 1.0),
               "s3d": Prior(0.8, 3.0, 0.5, 0.5), "draft_model": Prior(0.75, 0.8, 3.8, 0.95),
               "prompt_lookup": Prior(0.2, 0.0, 0.5, 0.8)}
TRUE_COST = (7.0, 0.08, 250.0)  # t_k us, sigma, t_d us


@pytest.fixture(scope="module")
def synthetic():
    """Trials decoded by a model with TRUE_COST and TRUE_PRIORS on a CPU-like profile where
    weights, kernels and the draft's host cost each matter; acceptance counts of 10^5
    iterations each (their expectation, rounded)."""
    spec, draft = load_model_spec(str(DEMO)), load_model_spec(str(DEMO / "draft"))
    start = replace(load_profile("a10g"), kind="cpu", bandwidth_gbps=10.0, peak_tflops={"fp32": 0.5, "bf16": 0.1},
                    kernel_launch_us=5.0, token_slope=0.01)
    true = with_cost(start, TRUE_COST)
    decodings = [Decoding("layer_skip", gamma=g, skip_layers=middle_block(12, k)) for k in (2, 4, 6, 8) for g in (1, 3, 5)]
    decodings += [Decoding("early_exit", gamma=3, exit_layer=e) for e in (4, 8, 10)]
    decodings += [Decoding("s3d", gamma=4, skip_layers=middle_block(12, 4)), Decoding("draft_model", gamma=4, draft_model="d"),
                  Decoding("prompt_lookup", gamma=5)]
    trials = [_trial(n, spec, true, d, {"d": draft}) for n, d in enumerate(decodings)]
    return spec, start, {"d": draft}, trials


def _trial(number, spec, profile, d: Decoding, drafts, iterations=100_000) -> Measured:
    prior = TRUE_PRIORS[d.method]
    alphas = position_acceptances(prior.alpha(beta_for(spec, d, drafts.get(d.draft_model))), d.gamma, prior.decay)
    detail = predict_detail(spec, profile, d, context=CONTEXT, draft_spec=drafts.get(d.draft_model), priors=TRUE_PRIORS)
    probabilities, reached = [], 1.0
    for alpha in alphas:  # accepted exactly n drafts: the first n accepted, the next one not
        probabilities.append(reached * (1 - alpha))
        reached *= alpha
    counts = tuple(round(iterations * p) for p in probabilities + [reached])
    speedup = detail.prediction.speedup
    return Measured(number, "complete", d, 1.0, speedup, speedup, (speedup, speedup), (), tokens_per_iteration(alphas),
                    counts, "", autoregressive_ms=detail.autoregressive_s * 1e3)


def test_on_a_cpu_that_measured_its_per_row_cost_the_fit_recovers_row_us_in_sigmas_place(synthetic):
    """Where the profile prices extra tokens by its measured per-row cost, the token slope is not
    read, so the fit moves row_us instead (and leaves the slope as it was)."""
    spec, start, drafts, trials = synthetic
    start = replace(start, row_us=5.0, row_us_per_mparam=0.3)
    true = with_cost(start, (7.0, 20.0, 250.0))
    assert true.row_us == 20.0 and true.token_slope == start.token_slope
    rows_trials = [_trial(t.number, spec, true, t.decoding, drafts) for t in trials]
    profile, _ = fit(spec, start, resolve_priors(None), observations(rows_trials), context=CONTEXT, draft_specs=drafts,
                     source="test")
    assert cost_parameters(profile) == pytest.approx((7.0, 20.0, 250.0), rel=0.02)
    assert profile.token_slope == start.token_slope and profile.sources["row_us"] == "test"


def test_the_fit_recovers_the_constants_that_made_synthetic_trials(synthetic):
    spec, start, drafts, trials = synthetic
    profile, priors = fit(spec, start, resolve_priors(None), observations(trials), context=CONTEXT, draft_specs=drafts,
                          source="test")
    assert cost_parameters(start) != pytest.approx(TRUE_COST, rel=0.5)
    assert cost_parameters(profile) == pytest.approx(TRUE_COST, rel=0.02)
    for method in ("layer_skip", "early_exit"):  # several betas: the whole curve
        fitted, true = priors[method], TRUE_PRIORS[method]
        assert (fitted.ceiling, fitted.steepness, fitted.midpoint, fitted.decay) == pytest.approx(
            (true.ceiling, true.steepness, true.midpoint, true.decay), rel=0.03, abs=0.01)
    assert (priors["prompt_lookup"].ceiling, priors["prompt_lookup"].decay) == pytest.approx((0.2, 0.8), abs=0.005)
    for method in ("s3d", "draft_model"):  # one beta each: the acceptance there and the decay
        d = next(m.decoding for m in trials if m.decoding.method == method)
        beta = beta_for(spec, d, drafts.get(d.draft_model))
        assert priors[method].alpha(beta) == pytest.approx(TRUE_PRIORS[method].alpha(beta), abs=0.005)
        assert priors[method].decay == pytest.approx(TRUE_PRIORS[method].decay, abs=0.01)
        assert priors[method].source == "test"


def test_calibrate_holds_out_every_third_set_up_and_predicts_them_better_after_the_fit(synthetic):
    spec, start, drafts, trials = synthetic
    c = calibrate(spec, start, None, trials, context=CONTEXT, draft_specs=drafts, study="synthetic")
    held = [h.set_up for h in c.fit.held_out]
    assert len(held) == len(trials) // 3 and c.fit.trials == len(trials) == c.fit.set_ups
    assert c.fit.error_before > 0.2 and c.fit.error_after < 0.1 * c.fit.error_before
    # layer_skip keeps 8 set-ups in the fit: its 4 held-out ones are predicted as measured (early_exit
    # keeps 2 for 4 parameters, and prompt_lookup none: theirs are extrapolations)
    skips = [h for h in c.fit.held_out if h.set_up.startswith("layer_skip")]
    assert len(skips) == 4 and all(h.after_speedup == pytest.approx(h.measured_speedup, rel=0.01) for h in skips)
    assert c.model == FittedFor("demo", 12, spec.hidden_size, spec.vocab_size)
    assert "synthetic" in c.profile.sources["token_slope"] and set(c.priors) == set(TRUE_PRIORS)


def test_quantized_unmeasured_and_unpaired_trials_are_not_fitted_but_trials_pruned_after_a_round_are(synthetic):
    _, _, _, trials = synthetic
    m = trials[0]
    left_out = [replace(m, decoding=replace(m.decoding, quant="int8")),
                replace(m, speedup=None, speedup_range=None, state="pruned", tokens_per_iteration=None, accept_counts=()),
                replace(m, autoregressive_ms=None)]
    assert observations(left_out) == [] and len(observations(trials + left_out)) == len(trials)
    after_a_round = replace(m, state="pruned", value=None, speedup_range=(m.speedup, m.speedup))
    assert [o.speedup for o in observations([after_a_round])] == [m.speedup]


def test_non_negative_least_squares_matches_the_constrained_optimum():
    a = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    assert non_negative_lstsq(a, a @ np.array([1.0, 2.0, 3.0])) == pytest.approx([1.0, 2.0, 3.0])
    x = non_negative_lstsq(a, np.array([-1.0, 1.0, 0.0, -1.0]))  # unconstrained, the first would go negative
    assert x[0] == 0.0 and (x >= 0).all()
    brute = min((np.array(p) for p in np.ndindex(31, 31, 31)), key=lambda p: np.sum((a @ (p / 30) - [-1, 1, 0, -1]) ** 2))
    assert x == pytest.approx(brute / 30, abs=1 / 30)


def test_a_real_demo_study_predicts_its_held_out_set_ups_better_after_the_fit():
    """tests/data/demo-study.json: the trials of a real `specplan tune` on the demo model on the
    2-core build machine and the profile it started from (BENCHMARKS.md, "Calibration")."""
    from planner.hardware.profile import profile_from_dict

    study = json.loads((DATA / "demo-study.json").read_text())
    spec, draft = load_model_spec(str(DEMO)), load_model_spec(str(DEMO / "draft"))

    def trial(t) -> Measured:
        d = t["decoding"]
        decoding = Decoding(**dict(d, skip_layers=tuple(d["skip_layers"]), draft_model=d["draft_model"] and str(DEMO / "draft")))
        return Measured(**dict(t, decoding=decoding, speedup_range=t["speedup_range"] and tuple(t["speedup_range"]),
                               group_speedups=(), accept_counts=tuple(t["accept_counts"])))

    c = calibrate(spec, profile_from_dict(study["start_profile"]), str(DEMO.parent / "priors-demo.yaml"),
                  [trial(t) for t in study["trials"]], context=study["context"], draft_specs={str(DEMO / "draft"): draft},
                  study="demo")
    assert len(c.fit.held_out) >= 3
    assert c.fit.error_after < 0.5 * c.fit.error_before


# ------------------------------------------------------------------------ the file, plan and predict


def _calibration(**changes) -> Calibration:
    spec = load_model_spec("qwen2.5-0.5b")
    return Calibration(FittedFor(spec.name, spec.num_layers, spec.hidden_size, spec.vocab_size),
                       with_cost(load_profile("a10g"), (3.0, 0.05, 400.0)),
                       {"layer_skip": Prior(0.6, 5.0, 0.4, 0.9, "test fit")},
                       FitSummary(study="s", trials=4, set_ups=4, context=1056), **changes)


def test_the_calibration_file_round_trips_and_plan_and_predict_take_it(tmp_path):
    path = tmp_path / "c.calibration.yaml"
    c = _calibration()
    c.save(path)
    assert load_calibration(path) == c
    spec = load_model_spec("qwen2.5-0.5b")
    d = Decoding("layer_skip", gamma=3, skip_layers=middle_block(spec.num_layers, 8))
    args = ["predict", "--model", "qwen2.5-0.5b", "--method", "layer_skip", "--gamma", "3", "--skip-layers", "8-15",
            "--context", "1056", "--json"]
    calibrated = CliRunner().invoke(cli, args + ["--calibration", str(path)])
    assert calibrated.exit_code == 0, calibrated.output
    expected = predict(spec, c.profile, d, context=1056, priors=c.priors)
    assert json.loads(calibrated.output)["speedup"] == pytest.approx(expected.speedup)
    assert json.loads(calibrated.output)["basis"] == "calibrated"
    shipped = json.loads(CliRunner().invoke(cli, args + ["--gpu", "a10g"]).output)
    assert shipped["speedup"] > expected.speedup  # the fitted draft cost and acceptance are worse than a10g's defaults
    both = CliRunner().invoke(cli, args + ["--gpu", "a10g", "--calibration", str(path)])  # the same device: fine
    assert both.exit_code == 0 and json.loads(both.output)["speedup"] == pytest.approx(expected.speedup)

    out = tmp_path / "plan.yaml"
    planned = CliRunner().invoke(cli, ["plan", "--model", "qwen2.5-0.5b", "--calibration", str(path), "--trials", "30",
                                       "--context", "1056", "--methods", "autoregressive,layer_skip", "--out", str(out)])
    assert planned.exit_code == 0, planned.output
    from planner.plan.schema import load_plan

    plan = load_plan(out)
    assert plan.hardware.device_name == "NVIDIA A10G"
    assert plan.prediction.speedup == pytest.approx(
        predict(spec, c.profile, plan.decoding, context=1056, priors=c.priors).speedup)


@pytest.mark.parametrize("edit, message", [
    (None, "no such file"),
    (lambda text: text + "  - [unclosed\n", "c.yaml: line"),
    (lambda text: "- just a list\n", "c.yaml: a calibration must be a YAML mapping"),
    (lambda text: text.replace("ceiling: 0.6", "ceiling: .nan"),
     "c.yaml: priors.layer_skip.ceiling: must be a finite number, got nan"),
    (lambda text: text.replace("ceiling: 0.6", "ceiling: 1.5"), "c.yaml: priors.layer_skip.ceiling: must be above 0 and at most 1"),
    (lambda text: text.replace("draft_step_us: 400.0", "draft_step_us: -1"),
     "c.yaml: profile: draft_step_us: must not be negative, got -1.0"),
    (lambda text: text.replace("layer_skip:", "layer_skipp:"), "c.yaml: priors.layer_skipp: no such drafting method (did you mean: layer_skip"),
    (lambda text: text.replace("schema_version: 1\n", "schema_version: 7\n", 1), "c.yaml: schema_version 7 is not supported"),
    (lambda text: text.replace("num_layers: 24", "num_layers: 12"), "c.yaml: fitted for model qwen2.5-0.5b (12 layers"),
])
def test_a_bad_calibration_file_is_one_line_and_exit_code_2(tmp_path, edit, message):
    path = tmp_path / "c.yaml"
    _calibration().save(path)
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    for command in (["predict", "--method", "layer_skip"], ["plan", "--out", str(tmp_path / "p.yaml")]):
        result = CliRunner().invoke(cli, command + ["--model", "qwen2.5-0.5b", "--calibration", str(path)])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert not (tmp_path / "p.yaml").exists()


def test_a_calibration_for_another_model_or_device_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    _calibration().save(path)
    other_model = CliRunner().invoke(cli, ["predict", "--model", "llama-3.1-8b", "--method", "autoregressive",
                                           "--calibration", str(path)])
    assert other_model.exit_code == 2 and "fitted for model qwen2.5-0.5b" in other_model.output
    assert "not for llama-3.1-8b" in other_model.output
    other_gpu = CliRunner().invoke(cli, ["plan", "--model", "qwen2.5-0.5b", "--gpu", "h100-sxm", "--calibration", str(path),
                                         "--out", str(tmp_path / "p.yaml")])
    assert other_gpu.exit_code == 2 and len(other_gpu.output.strip().splitlines()) == 1
    assert "fitted on NVIDIA A10G, not on NVIDIA H100 80GB HBM3 (h100-sxm)" in other_gpu.output
    fleet = CliRunner().invoke(cli, ["plan", "--model", "qwen2.5-0.5b", "--gpus", "all", "--out-dir", str(tmp_path / "d"),
                                     "--calibration", str(path)])
    assert fleet.exit_code == 2 and "--calibration was fitted on one device" in fleet.output
    neither = CliRunner().invoke(cli, ["predict", "--model", "qwen2.5-0.5b", "--method", "autoregressive"])
    assert neither.exit_code == 2 and "give --gpu NAME, or --calibration FILE" in neither.output
