"""The Optuna search: quality against exhaustive enumeration, determinism, budget, storage, CLI."""

import json
import time

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli
from planner.errors import BudgetError, InputError
from planner.hardware import load_profile, shipped_profile_names
from planner.models import load_model_spec
from planner.perf import predict
from planner.plan import METHODS, QUANTIZATIONS, Decoding, load_plan
from planner.plan.schema import HEAD_METHODS
from planner.search import SearchRequest, Space, draft_candidates, enumerate_space, search


def _exhaustive_best(spec, profile, budget, methods=None):
    drafts = draft_candidates(spec) if methods is None or "draft_model" in methods else {}
    space = Space.for_model(spec, methods=methods, drafts=tuple(drafts))
    best = 0.0
    for decoding in enumerate_space(space):
        p = predict(spec, profile, decoding, draft_spec=drafts.get(decoding.draft_model))
        if p.vram_gib <= budget:
            best = max(best, p.tokens_per_s)
    return best


@pytest.mark.parametrize("model, gpu, budget", [("llama-3.1-8b", "a10g", 12.0), ("tinyllama-1.1b", "rtx4090", 24.0), ("qwen2.5-7b", "l4", 8.0)])
def test_search_within_two_percent_of_exhaustive(model, gpu, budget):
    spec, profile = load_model_spec(model), load_profile(gpu)
    # Every method the exhaustive enumeration covers: learned heads (test_heads_field_cases) are not in it.
    everything = SearchRequest(vram_gib=budget, trials=300, seed=1, quants=QUANTIZATIONS,
                               methods=tuple(m for m in METHODS if m not in HEAD_METHODS))
    found = search(spec, profile, everything).plan.prediction.tokens_per_s
    assert found >= 0.98 * _exhaustive_best(spec, profile, budget)


def test_same_seed_same_plan():
    spec, profile = load_model_spec("mistral-7b"), load_profile("l4")
    first = search(spec, profile, SearchRequest(trials=80, seed=7)).plan
    assert search(spec, profile, SearchRequest(trials=80, seed=7)).plan == first


def test_70b_300_trials_is_fast():
    # CPU time, not wall time: the bound is what the search costs on a 2-core CPU, and a shared
    # machine's other load must not fail the test (wall-clock runs are in BENCHMARKS.md).
    start = time.process_time()
    search(load_model_spec("llama-3.1-70b"), load_profile("h100-sxm"), SearchRequest(trials=300, seed=0))
    assert time.process_time() - start < 10


def test_a10g_12gib_plan_is_quantized_speculative_and_fits():
    plan = search(load_model_spec("llama-3.1-8b"), load_profile("a10g"), SearchRequest(vram_gib=12, trials=300, seed=0)).plan
    assert plan.decoding.quant in ("int8", "int4") and plan.decoding.method != "autoregressive"
    assert plan.prediction.vram_gib <= 12 and plan.prediction.speedup > 1
    assert len(plan.alternatives) == 5 and plan.search.seed == 0 and plan.prediction.basis == "analytical"


def _card_gpu_pairs():
    """Every shipped card, paired with the shipped GPUs in turn, so both lists are covered."""
    from planner.models import shipped_model_names

    gpus = shipped_profile_names()
    return [(card, gpus[i % len(gpus)]) for i, card in enumerate(shipped_model_names())]


@pytest.mark.parametrize("card, gpu", _card_gpu_pairs())
def test_self_speculative_plans_follow_the_literature(card, gpu):
    """Restricted to self-drafting, mid-layer skipping with about four token predictors wins (S3D)."""
    spec, profile = load_model_spec(card), load_profile(gpu)
    try:
        plan = search(spec, profile, SearchRequest(trials=100, seed=0, methods=["autoregressive", "layer_skip", "s3d", "early_exit"],
                                                   quants=QUANTIZATIONS)).plan
    except BudgetError:
        assert spec.weight_bytes("int4") / 2**30 > 0.9 * profile.memory_gib  # only a card that cannot fit at all
        return
    assert plan.decoding.method == "s3d" and 3 <= plan.decoding.gamma <= 7
    skipped = plan.decoding.skip_layers
    assert skipped[0] > 0 and skipped[-1] < spec.num_layers - 1  # a middle block
    assert 0.15 <= len(skipped) / spec.num_layers <= 0.6


def test_memory_forces_quantization():
    plan = search(load_model_spec("llama-2-13b"), load_profile("t4"), SearchRequest(trials=120, seed=0)).plan
    assert plan.decoding.quant in ("int8", "int4") and plan.prediction.vram_gib <= 15.0


def test_nothing_fits_names_the_smallest_budget():
    with pytest.raises(BudgetError, match=r"nothing fits 2.0 GiB: the smallest set-up \(autoregressive, int4\) needs 5.\d GiB"):
        search(load_model_spec("llama-3.1-8b"), load_profile("a10g"), SearchRequest(vram_gib=2, trials=30))


def test_storage_resumes_a_shared_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec, profile = load_model_spec("tinyllama-1.1b"), load_profile("l4")
    first = search(spec, profile, SearchRequest(trials=6, storage=url, study_name="s"))
    second = search(spec, profile, SearchRequest(trials=6, storage=url, study_name="s"))
    assert second.plan.search.trials == 12 and second.evaluated[:6] == first.evaluated  # ranks the whole study
    assert second.plan.prediction.tokens_per_s >= first.plan.prediction.tokens_per_s
    with pytest.raises(InputError, match="`storage` needs `study_name`"):
        search(spec, profile, SearchRequest(trials=5, storage=url))


def test_plan_command_writes_plan_and_plot(tmp_path):
    out, png = tmp_path / "plan.yaml", tmp_path / "plan.png"
    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--vram-gib", "12",
                                      "--trials", "60", "--out", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "chosen" in result.output and png.stat().st_size > 10_000
    assert load_plan(out).constraints.vram_gib == 12


def test_plan_command_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--vram-gib", "1", "--trials", "10", "--out", str(out)])
    assert result.exit_code == 2 and "nothing fits" in result.output and not out.exists()
    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--methods", "s3d,hydra", "--out", str(out)])
    assert result.exit_code == 2 and "unknown method 'hydra'" in result.output


def test_predict_json_and_table():
    args = ["predict", "--model", "llama-3.1-8b", "--gpu", "a10g", "--method", "s3d", "--gamma", "4", "--skip-ratio", "0.4", "--quant", "int4"]
    data = json.loads(CliRunner().invoke(cli, args + ["--json"]).output)
    assert {"tokens_per_s", "speedup", "tokens_per_iteration", "vram_gib"} <= set(data)
    assert data["decoding"]["skip_layers"] == list(range(10, 23)) and len(data["acceptance_per_position"]) == 4
    assert "tokens per iteration" in CliRunner().invoke(cli, args).output
    override = json.loads(CliRunner().invoke(cli, args + ["--json", "--acceptance", "0.9"]).output)
    assert override["acceptance"] == pytest.approx(0.9) and override["basis"] == "calibrated"


def test_predict_rejects_layers_outside_the_model():
    result = CliRunner().invoke(cli, ["predict", "--model", "llama-3.1-8b", "--gpu", "a10g", "--method", "layer_skip", "--skip-layers", "20-40"])
    assert result.exit_code == 2 and "layer 32 is outside 0-31" in result.output


def test_a_request_normalises_its_options_once():
    request = SearchRequest(methods=["draft_model", "autoregressive", "draft_model"], batch_sizes=[8, 1, 8],
                            acceptance=[0.84, 0.6, 0.39], priors={"methods": {"prompt_lookup": {"alpha": 0.5}}})
    assert request.methods == ("draft_model", "autoregressive") and request.batch_sizes == (1, 8)
    assert request.acceptance_for("draft_model") == (0.84, 0.6, 0.39) and request.acceptance_for("autoregressive") is None
    assert request.priors["prompt_lookup"].ceiling == 0.5 and request.priors["s3d"].ceiling == 0.9  # the rest shipped
    per_method = SearchRequest(acceptance={"prompt_lookup": 0.3})
    assert per_method.acceptance_for("prompt_lookup") == 0.3 and per_method.acceptance_for("s3d") is None
    assert request.replace(trials=5).acceptance_for("draft_model") == (0.84, 0.6, 0.39)


@pytest.mark.parametrize("options, message", [
    ({"objective": "fast"}, "unknown `objective` 'fast'"),
    ({"trials": 0}, "`trials` must be at least 1"),
    ({"methods": ["s3e"]}, "`methods`: unknown 's3e' \\(did you mean: s3d"),
    ({"acceptance": 1.2}, "`acceptance` 1.2: expected a number from 0 to 1"),
    ({"acceptance": [0.6, 0.7]}, "cannot rise \\(0.6 at position 1, then 0.7\\)"),
    ({"acceptance": {"autoregressive": 0.5}}, "'autoregressive' is not a speculative method"),
    ({"vram_gib": float("nan")}, "`vram_gib` must be a positive number"),
    ({"batch_sizes": [0, 2]}, "`batch_sizes` \\[0, 2\\]: expected positive whole numbers"),
    ({"execution": "compiled"}, "unknown `execution` 'compiled': expected graphs or eager"),
    ({"engine": "vlm"}, "unknown engine 'vlm' \\(did you mean: vllm"),
])
def test_a_request_no_search_could_use_is_refused_naming_the_parameter(options, message):
    with pytest.raises(InputError, match=message):
        SearchRequest(**options)


def test_search_costs_the_requested_engine_and_execution():
    """The engine's step cost and execution reach every trial through the request: an
    autoregressive plan predicts what `predict` does for that engine, eager below graphs."""
    from planner.perf import Execution
    from planner.plan.export import engine_info

    spec, profile = load_model_spec("llama-3.1-8b"), load_profile("a100-40gb")
    vllm = Execution.default_for(profile, engine_info("vllm").cost)
    expected = predict(spec, profile, Decoding("autoregressive"), context=2048, execution=vllm).tokens_per_s

    def planned(**options):
        request = SearchRequest(methods=["autoregressive"], quants=["none"], trials=5, **options)
        return search(spec, profile, request).plan

    graphs, eager, runtime = planned(engine="vllm"), planned(engine="vllm", execution="eager"), planned()
    assert graphs.prediction.tokens_per_s == pytest.approx(expected)
    assert eager.prediction.tokens_per_s < graphs.prediction.tokens_per_s < runtime.prediction.tokens_per_s
    assert (graphs.search.engine, graphs.search.execution, eager.search.execution) == ("vllm", "graphs", "eager")
    assert runtime.search.engine is None and runtime.search.execution == "graphs"


def test_plan_command_takes_engine_and_execution(tmp_path):
    out = tmp_path / "plan.yaml"
    args = ["plan", "--model", "llama-3.1-8b", "--gpu", "a100-40gb", "--engine", "vllm", "--trials", "40", "--out", str(out)]
    result = CliRunner().invoke(cli, args + ["--execution", "eager"])
    assert result.exit_code == 0, result.output
    assert "served by vllm (eager)" in result.output
    plan = load_plan(out)
    assert (plan.search.engine, plan.search.execution) == ("vllm", "eager")
    refused = CliRunner().invoke(cli, args + ["--execution", "compiled"])
    assert refused.exit_code == 2 and "Invalid value for '--execution'" in refused.output


def test_search_plans_one_batch_size():
    with pytest.raises(InputError, match="one search plans one batch size"):
        search(load_model_spec("tinyllama-1.1b"), load_profile("l4"), SearchRequest(batch_sizes=(1, 4), trials=5))


PREDICT_S3D = ["predict", "--model", "llama-3.1-8b", "--gpu", "a10g", "--method", "s3d", "--gamma", "4", "--skip-ratio", "0.4",
               "--quant", "int4"]


def _printed(output: str, figure: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(figure))[len(figure):].split()[0]


@pytest.mark.parametrize("given", [None, "0.8", "0.84,0.60,0.39,0.27"])
def test_predict_prints_acceptance_in_the_form_it_takes_and_it_round_trips(given):
    """The per-position figures predict prints, fed back as --acceptance, give the same prediction
    (to the 3 decimals printed, as vLLM logs them)."""
    first = CliRunner().invoke(cli, PREDICT_S3D + (["--acceptance", given] if given else []))
    printed = _printed(first.output, "acceptance")
    if given == "0.8":
        assert printed == "0.800,0.640,0.512,0.410"  # 0.8 per token: 0.8^i of drafts reach position i
    if given and "," in given:
        assert printed == "0.840,0.600,0.390,0.270"
    again = CliRunner().invoke(cli, PREDICT_S3D + ["--acceptance", printed])
    assert _printed(again.output, "acceptance") == printed
    tokens_per_s = [float(_printed(out, "tokens/s")) for out in (first.output, again.output)]
    assert tokens_per_s[1] == pytest.approx(tokens_per_s[0], rel=2e-3)


def test_per_position_acceptance_sets_tokens_per_iteration_as_vllm_counts_it():
    """vLLM's mean acceptance length is 1 + the sum of its per-position rates."""
    args = PREDICT_S3D + ["--json", "--acceptance", "0.84,0.60,0.39,0.27"]
    data = json.loads(CliRunner().invoke(cli, args).output)
    assert data["tokens_per_iteration"] == pytest.approx(1 + 0.84 + 0.60 + 0.39 + 0.27)
    assert data["acceptance_per_position"] == pytest.approx([0.84, 0.60, 0.39, 0.27])
    longer = CliRunner().invoke(cli, [a if a != "4" else "6" for a in args])
    assert longer.exit_code == 2 and "--acceptance covers 4 drafted positions, fewer than gamma 6" in longer.stderr


def test_plan_takes_measured_acceptance_per_method_and_per_position(tmp_path):
    out = tmp_path / "plan.yaml"
    base = ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "60", "--out", str(out),
            "--methods", "autoregressive,draft_model,prompt_lookup"]
    result = CliRunner().invoke(cli, base + ["--acceptance", "0.84,0.60,0.39,0.27"])
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    rates = [0.84, 0.60, 0.39, 0.27]
    assert 1 <= plan.decoding.gamma <= 4 and plan.prediction.basis == "calibrated"
    assert plan.prediction.tokens_per_iteration == pytest.approx(1 + sum(rates[: plan.decoding.gamma]))
    # Prompt lookup drafts for free: with a near-perfect measured acceptance (code editing), it wins.
    result = CliRunner().invoke(cli, base + ["--acceptance", "prompt_lookup=0.95", "--acceptance", "0.3"])
    assert result.exit_code == 0, result.output
    assert load_plan(out).decoding.method == "prompt_lookup" and load_plan(out).prediction.acceptance == pytest.approx(0.95)


@pytest.mark.parametrize("values, message", [
    (["hydra=0.5"], "'hydra' is not a speculative method"),
    (["0.5", "0.6"], "give one figure for every method, or METHOD=FIGURES for each"),
    (["draft_model=0.5,0.7"], "cannot rise"),
])
def test_plan_refuses_acceptance_it_cannot_use(tmp_path, values, message):
    args = ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--out", str(tmp_path / "p.yaml")]
    result = CliRunner().invoke(cli, args + [a for v in values for a in ("--acceptance", v)])
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "p.yaml").exists()


def _every_card_on_every_gpu():
    from planner.models import shipped_model_names

    return [(card, gpu) for card in shipped_model_names() for gpu in shipped_profile_names()]


@pytest.mark.parametrize("card, gpu", _every_card_on_every_gpu())
def test_the_default_plan_is_deployable_and_unquantized_when_the_model_fits(card, gpu):
    """`specplan plan` with no options: a method some serving engine runs (no s3d without an
    adapter), a draft only with the target's vocabulary, and the model as given whenever plain
    decoding of it fits; else the least quantization that fits, said in words."""
    from planner.plan import Decoding
    from planner.search.engines import deployable_methods
    from planner.search.study import check_draft

    spec, profile = load_model_spec(card), load_profile(gpu)
    unquantized_fits = predict(spec, profile, Decoding("autoregressive")).vram_gib <= profile.memory_gib
    try:
        plan = search(spec, profile, SearchRequest(trials=20)).plan
    except BudgetError:
        assert predict(spec, profile, Decoding("autoregressive", quant="int4")).vram_gib > profile.memory_gib
        return
    for decoding in (plan.decoding, *(c.decoding for c in plan.alternatives)):
        assert decoding.method in deployable_methods(None, adapted=False) and decoding.method != "s3d"
        if decoding.method == "draft_model":  # a head's draft_model names the head, not a model
            check_draft(spec, load_model_spec(decoding.draft_model))  # raises for another vocabulary
    if unquantized_fits:
        assert plan.decoding.quant == "none" and not plan.notes
    else:
        assert plan.decoding.quant != "none"
        assert plan.notes == (f"quantized to {plan.decoding.quant}: {card} does not fit {profile.memory_gib:.1f} GiB "
                              f"unquantized (it needs {predict(spec, profile, Decoding('autoregressive')).vram_gib:.2f} "
                              "GiB); outputs differ from the checkpoint's",)


def test_plan_prints_why_it_quantized_and_quantizes_when_allowed(tmp_path):
    out = tmp_path / "plan.yaml"
    forced = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "t4", "--trials", "30", "--out", str(out)])
    assert forced.exit_code == 0, forced.output
    assert ("note: quantized to int8: llama-3.1-8b does not fit 15.0 GiB unquantized (it needs 15.96 GiB); outputs "
            "differ from the checkpoint's") in forced.output
    assert load_plan(out).notes == (forced.output.split("note: ")[1].splitlines()[0],)
    allowed = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "60",
                                       "--quant", "none,int4", "--out", str(out)])
    assert allowed.exit_code == 0, allowed.output
    assert load_plan(out).decoding.quant == "int4" and "note:" not in allowed.output  # the user allowed it
    bad = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--quant", "none,int3"])
    assert bad.exit_code == 2 and "'int3' is not one of none, int8, int4" in bad.stderr


def test_self_drafting_methods_are_planned_for_the_built_in_runtime(tmp_path):
    out = tmp_path / "plan.yaml"
    served = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "30", "--out", str(out)])
    assert served.exit_code == 0 and not {"layer_skip", "s3d"} & set(load_plan(out).search.methods)
    runtime = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "30",
                                       "--engine", "specplan", "--out", str(out)])
    assert runtime.exit_code == 0, runtime.output
    # A card has no adapter: s3d stays out even for the built-in runtime.
    assert set(load_plan(out).search.methods) == {"autoregressive", "layer_skip", "early_exit", "draft_model", "prompt_lookup"}
    bad = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--engine", "vllm",
                                   "--adapter", str(tmp_path)])
    assert bad.exit_code == 2 and "--adapter plans s3d, which only the built-in runtime runs" in bad.stderr
