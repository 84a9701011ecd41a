"""Field cases from people who deploy speculative decoding (issue 14, part 9).

Tolerances as the issue sets them: batch-1 tokens/s within 15%, speedups within 20%, and the
direction (faster or slower than no speculation) right in every load case. A case the model
cannot meet stays here as xfail(strict=True) with the reason.
"""

import pytest

from planner.hardware import load_profile
from planner.models import load_model_spec
from planner.models.architectures import spec_from_hf_config
from planner.perf import Execution, predict
from planner.perf.cost import EngineCost
from planner.plan import Decoding
from planner.plan.export import engine_info

RTX3090_QWEN = "https://openclawradar.com/article/speculative-decoding-benchmarks-rtx-3090-qwen-hvac"
# Qwen2.5-32B's config.json as quoted in github.com/vllm-project/vllm/issues/18162 (Qwen2.5-32B-Instruct)
QWEN25_32B = {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 27648, "max_position_embeddings": 32768,
              "num_attention_heads": 40, "num_hidden_layers": 64, "num_key_value_heads": 8, "vocab_size": 152064,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# vLLM 0.5.x as issue 7586 ran it: --enforce-eager (eager kernels), batch-expansion verify (each
# draft token attends as a sequence of its own, vllm/spec_decode/batch_expansion.py), the n-gram
# proposer before github.com/vllm-project/vllm/pull/9333 (2.6-4.4 ms a step on an H100, 3.5 ms taken),
# and the current engine's host step (engines.yaml vllm: step_us).
VLLM_05_EAGER = EngineCost(name="vllm-0.5", graphs=False, step_us=engine_info("vllm").cost.step_us, ngram_step_us=3500,
                           kernels_per_layer=engine_info("vllm").cost.kernels_per_layer, verify_kv_reads="per_token")


def _llamacpp(profile):
    return Execution.default_for(profile, engine_info("llamacpp").cost)


def _best_draft(target, draft, profile, *, quant, draft_quant, context=512):
    """The fastest draft length 1-16 (llama.cpp drafts up to 16 tokens by default)."""
    return max((predict(target, profile, Decoding("draft_model", gamma=g, quant=quant, draft_model=draft.name,
                                                  draft_quant=draft_quant), context=context, draft_spec=draft,
                        execution=_llamacpp(profile)) for g in range(1, 17)), key=lambda p: p.tokens_per_s)


def _rtx3090_qwen25_32b():
    return load_profile("rtx3090"), spec_from_hf_config(QWEN25_32B, "qwen2.5-32b"), load_model_spec("qwen2.5-1.5b")


def test_rtx3090_qwen25_32b_q4_without_draft():
    """llama.cpp, RTX 3090, Qwen2.5-32B Q4_K_M without a draft: 35.5 tok/s (91.0 tok/s at +156%,
    RTX3090_QWEN). Q4_K_M is costed as int4 (W4A16)."""
    profile, target, _ = _rtx3090_qwen25_32b()
    plain = predict(target, profile, Decoding("autoregressive", quant="int4"), context=512, execution=_llamacpp(profile))
    assert plain.tokens_per_s == pytest.approx(91.0 / 2.56, rel=0.15)


@pytest.mark.xfail(strict=True, reason=(
    "predicted 1.90x (gamma 3) against 2.56x: -26%, since llama.cpp's verify is costed at its kernels' published "
    "cost over a few rows (engines.yaml llamacpp rows_tokens_per_s: 4 rows 1.33x a one-row step, 7 rows 1.96x); "
    "before, at 1.14x a step for any draft length, it was 2.61x (gamma 6). At the draft_model prior's 0.79 "
    "acceptance the model cannot reach 2.56x; it needs about 0.93. The page's prompts are templated business "
    "tasks (SQL, quote formatting, note parsing) and it reports 100% acceptance for a Qwen3 pair on them, but no "
    "acceptance for this pair; llama-server's adaptive draft length (--draft-p-min) is not modelled either"))
def test_rtx3090_qwen25_32b_q4_with_1p5b_draft():
    """llama.cpp, RTX 3090, Qwen2.5-32B Q4_K_M + Qwen2.5-1.5B Q4_K_M: 91.0 tok/s, +156% over no
    draft (35.5 tok/s) (RTX3090_QWEN). Acceptance is the prior."""
    profile, target, draft = _rtx3090_qwen25_32b()
    best = _best_draft(target, draft, profile, quant="int4", draft_quant="int4")
    assert best.speedup == pytest.approx(2.56, rel=0.20)


def test_rtx3090_qwen25_7b_q4_with_0p5b_q8_draft():
    """llama.cpp, RTX 3090, Qwen2.5-7B Q4_K_M + Qwen2.5-0.5B Q8_0: 205.4 tok/s, +50% (RTX3090_QWEN).
    The verify is costed at llama.cpp's int4 kernels' published cost over rows (engines.yaml
    llamacpp rows_tokens_per_s); before, at 1.14x a step for 17 tokens, the prediction was 1.95x."""
    profile, target, draft = load_profile("rtx3090"), load_model_spec("qwen2.5-7b"), load_model_spec("qwen2.5-0.5b")
    assert _best_draft(target, draft, profile, quant="int4", draft_quant="int8").speedup == pytest.approx(1.50, rel=0.20)


def test_rtx3090_qwen25_14b_q8_with_0p5b_q4_draft():
    """llama.cpp, RTX 3090, Qwen2.5-14B Q8_0 + Qwen2.5-0.5B Q4_K_M: 137.5 tok/s, +186% over no
    draft (48.1 tok/s) (RTX3090_QWEN). Q8_0 is costed as int8, Q4_K_M as int4; acceptance is the
    prior; the card's config.json is cited in planner/profiles/models/qwen2.5-14b.yaml."""
    profile, target, draft = load_profile("rtx3090"), load_model_spec("qwen2.5-14b"), load_model_spec("qwen2.5-0.5b")
    plain = predict(target, profile, Decoding("autoregressive", quant="int8"), context=512, execution=_llamacpp(profile))
    best = _best_draft(target, draft, profile, quant="int8", draft_quant="int4")
    assert plain.tokens_per_s == pytest.approx(137.5 / 2.86, rel=0.15)
    assert best.tokens_per_s == pytest.approx(137.5, rel=0.15)
    assert best.speedup == pytest.approx(2.86, rel=0.20)


# github.com/ggml-org/llama.cpp/pull/10455 (mostlygeek's comments, 2024-11-24): llama-server,
# Qwen2.5-Coder-32B-Instruct Q4_K_M + Qwen2.5-Coder-0.5B-Instruct Q4_K_M, --draft-max 16
# --draft-min 0, -c 10240, greedy (top_k 1); the prompt is llama.vim's source (8318 tokens with
# the system prompt) and "Suggest an improvement for the `chunk_sim` function", answered in
# code (440 tokens): code editing. RTX 3090: 29 tok/s with speculative.n_max 0, 167 with 16. The
# maintainer's reply there: runs after the first reuse the previous run's draft context, so
# with greedy sampling drafting is free and every draft is the answer; only the first run is
# relevant: 440 tokens in 9432.51 ms, 46.65 tok/s (1.61x).
PR10455_CONTEXT = 8318 + 440 // 2  # the KV cache half-way through the answer
PR10455_PLAIN_TOK_S, PR10455_FIRST_RUN_TOK_S = 29.0, 46.65


def _pr10455():
    return load_profile("rtx3090"), spec_from_hf_config(QWEN25_32B, "qwen2.5-coder-32b"), load_model_spec("qwen2.5-0.5b")


def test_llamacpp_pr10455_32b_q4_without_draft_at_8k_context():
    """The no-draft half of PR 10455's code-editing case: 29 tok/s at an 8318-token prompt."""
    profile, target, _ = _pr10455()
    plain = predict(target, profile, Decoding("autoregressive", quant="int4"), context=PR10455_CONTEXT,
                    execution=_llamacpp(profile))
    assert plain.tokens_per_s == pytest.approx(PR10455_PLAIN_TOK_S, rel=0.15)


@pytest.mark.xfail(strict=True, reason=(
    "predicted 1.95x (59.7 tok/s, gamma 3, the draft_model prior's 0.75) against the first run's 1.61x (46.65 tok/s): +21%, "
    "just outside 20%. Before llama.cpp's verify was costed at its kernels' published cost over rows (engines.yaml "
    "llamacpp rows_tokens_per_s: 17 rows 2.8x a one-row step, as the 167 tok/s runs show: about 100 ms an "
    "iteration, 2.9x a step) it was 2.75x (+71%) at 1.14x. No workload prior closes the rest: code editing "
    "accepts more than chat, which only raises the prediction; the curve is llama 8B Q4_0's (no Q4_K table over "
    "1-16 rows was found) and llama-server's adaptive draft length (--draft-p-min) is not modelled"))
def test_llamacpp_pr10455_code_editing_32b():
    """PR 10455's first run: Qwen2.5-Coder-32B Q4_K_M + 0.5B Q4_K_M drafting up to 16 tokens,
    29 -> 46.65 tok/s (1.61x); the 29 -> 167 tok/s figure is the draft-cache artefact above."""
    profile, target, draft = _pr10455()
    best = _best_draft(target, draft, profile, quant="int4", draft_quant="int4", context=PR10455_CONTEXT)
    assert best.speedup == pytest.approx(PR10455_FIRST_RUN_TOK_S / PR10455_PLAIN_TOK_S, rel=0.20)


# github.com/hemingkx/Spec-Bench Leaderboard.md, "Leaderboard on 3090" (one RTX 3090, Vicuna-7B-v1.3,
# greedy, fp16, batch 1, transformers): PLD's speedup per task. The workload priors were derived
# from the same page's A100 table (planner/profiles/priors.yaml), so this table is held out.
SPEC_BENCH_3090_PLD = {"chat": 1.57, "summarisation": 2.31, "rag": 1.56}


@pytest.mark.parametrize("workload, published", sorted(SPEC_BENCH_3090_PLD.items()))
def test_spec_bench_prompt_lookup_by_workload_rtx3090(workload, published):
    """Prompt lookup (10 drafted tokens, Spec-Bench's PLD setting) on each workload's prior,
    eager transformers, within the issue's 20% on speedups."""
    profile, spec = load_profile("rtx3090"), load_model_spec("vicuna-7b")
    prediction = predict(spec, profile, Decoding("prompt_lookup", gamma=10), context=1024, workload=workload,
                         execution=Execution.default_for(profile, engine_info("hf").cost))
    assert prediction.speedup == pytest.approx(published, rel=0.20)


def test_summarisation_workload_favours_prompt_lookup_in_plan(tmp_path):
    """plan --workload summarisation records the workload, and its prompt lookup prior (0.62,
    above chat's 0.30) makes prompt lookup's predicted speedup higher than on chat."""
    from click.testing import CliRunner

    from planner.cli import cli
    from planner.plan import load_plan

    speedups = {}
    for workload in ("chat", "summarisation"):
        out = tmp_path / f"{workload}.yaml"
        result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--methods",
                                          "autoregressive,prompt_lookup", "--trials", "20", "--workload", workload,
                                          "--out", str(out)])
        assert result.exit_code == 0, result.output
        plan = load_plan(out)
        assert plan.constraints.workload == workload
        speedups[workload] = plan.prediction.speedup
    assert speedups["summarisation"] > 1.3 * speedups["chat"]


@pytest.mark.parametrize("command", ["predict", "plan"])
def test_unknown_workload_refused_in_one_line(command, tmp_path):
    from click.testing import CliRunner

    from planner.cli import cli

    args = ["--model", "llama-3.1-8b", "--gpu", "a10g", "--workload", "code"]
    args += ["--method", "prompt_lookup"] if command == "predict" else ["--trials", "1", "--out", str(tmp_path / "p.yaml")]
    result = CliRunner().invoke(cli, [command, *args])
    assert result.exit_code == 2
    assert result.output == "error: unknown --workload 'code': expected one of chat, summarisation, rag\n"


def test_vllm_05_eager_ngram_slower_under_load_faster_alone():
    """github.com/vllm-project/vllm/issues/7586: vLLM 0.5.3.post1, --enforce-eager, A100-40GB,
    Llama-3.1-8B, n-gram with 3 speculative tokens slower than no speculation under server load.
    Direction only: at batch 32 and 64 slower, at batch 1 (no load) not slower."""
    profile, spec = load_profile("a100-40gb"), load_model_spec("llama-3.1-8b")
    ex = Execution.default_for(profile, VLLM_05_EAGER)

    def speedup(batch):
        return predict(spec, profile, Decoding("prompt_lookup", gamma=3), context=1024, batch_size=batch, execution=ex).speedup

    assert speedup(1) > 1.0
    assert speedup(32) < 1.0 and speedup(64) < 1.0


@pytest.mark.xfail(strict=True, reason=(
    "the model speculates here: 1.39x at batch 32 (1.17x at 64) at the draft_model prior's 0.82 acceptance. The "
    "engine's eager and batch-expansion cost is not what is missing: the n-gram half of the issue, costed with the "
    "same VLLM_05_EAGER, is predicted slower at 32 and 64 (test above), and at batch 32 this set-up turns slower "
    "than no speculation (0.99x) from an acceptance of 0.60 down. What the model lacks is the MLP speculator "
    "itself: its acceptance in that run is not published in the issue, and it is costed as llama-3.2-1b drafting "
    "(three 1B forwards, 11.4 ms at batch 32) rather than as its own MLP heads; no sourced figure for either"))
def test_vllm_05_eager_small_draft_slower_under_load():
    """github.com/vllm-project/vllm/issues/7586: the small MLP draft (llama3-8b-accelerator) slower
    than no speculation under load too; stood in for by llama-3.2-1b as a draft model."""
    profile, spec, draft = load_profile("a100-40gb"), load_model_spec("llama-3.1-8b"), load_model_spec("llama-3.2-1b")
    prediction = predict(spec, profile, Decoding("draft_model", gamma=3, draft_model=draft.name), context=1024,
                         batch_size=32, draft_spec=draft, execution=Execution.default_for(profile, VLLM_05_EAGER))
    assert prediction.speedup < 1.0


@pytest.mark.xfail(strict=True, reason="predicted near 1x: the run spent about 33 ms a step on a 125M model "
                   "(305 tok/s over 10 sequences, logprobs on), host work this model has no figure for")
def test_vllm_16258_ngram_batch10_opt125m():
    """github.com/vllm-project/vllm/issues/16258: opt-125m, n-gram 5 tokens, lookup up to 2, batch
    10, enforce_eager: 74-88 tok/s against 276-305 without (0.24-0.32x). The GPU is not named;
    a100-40gb is taken. opt-125m's config.json as quoted in public code (facebook/opt-125m)."""
    config = {"model_type": "opt", "hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
              "do_layer_norm_before": True, "torch_dtype": "float16"}
    profile, spec = load_profile("a100-40gb"), spec_from_hf_config(config, "opt-125m")
    prediction = predict(spec, profile, Decoding("prompt_lookup", gamma=5), context=1024, batch_size=10, acceptance=0.698,
                         execution=Execution.default_for(profile, VLLM_05_EAGER))
    assert 0.24 * 0.8 <= prediction.speedup <= 0.32 * 1.2


def test_fp8_refused_in_one_line_where_no_fp8_tensor_cores():
    from planner.errors import InputError

    with pytest.raises(InputError, match="fp8 needs fp8 tensor cores.*a100-40gb"):
        predict(load_model_spec("llama-3.1-8b"), load_profile("a100-40gb"), Decoding("autoregressive", quant="fp8"))


def test_fp8_halves_weight_reads_on_hopper():
    """W8A8 fp8 reads one byte a weight: a bandwidth-bound step is close to twice as fast as bf16."""
    profile, spec = load_profile("h100-sxm"), load_model_spec("llama-3.1-8b")
    bf16 = predict(spec, profile, Decoding("autoregressive"), context=128).tokens_per_s
    fp8 = predict(spec, profile, Decoding("autoregressive", quant="fp8"), context=128).tokens_per_s
    assert 1.6 < fp8 / bf16 < 2.0


def test_engine_step_cost_lowers_batch1_rate():
    profile, spec = load_profile("h100-sxm"), load_model_spec("llama-3.1-8b")
    runtime = predict(spec, profile, Decoding("autoregressive"), context=128).tokens_per_s
    vllm = predict(spec, profile, Decoding("autoregressive"), context=128,
                   execution=Execution.default_for(profile, engine_info("vllm").cost)).tokens_per_s
    assert vllm < 0.9 * runtime


def _predict_cli(*args):
    from click.testing import CliRunner

    from planner.cli import cli

    return CliRunner().invoke(cli, ["predict", "--model", "llama-3.1-8b", "--method", "autoregressive", "--json", *args])


def test_predict_engine_and_execution_flags():
    """--engine costs the engine's step (vLLM on an A100-40GB: the published 75 tok/s within 15%);
    --execution eager adds its kernels' launches."""
    import json

    graphs = json.loads(_predict_cli("--gpu", "a100-40gb", "--engine", "vllm", "--context", "1088").output)
    eager = json.loads(_predict_cli("--gpu", "a100-40gb", "--engine", "vllm", "--context", "1088", "--execution", "eager").output)
    assert graphs["tokens_per_s"] == pytest.approx(75.0, rel=0.15)
    assert eager["tokens_per_s"] < graphs["tokens_per_s"]


@pytest.mark.parametrize("args, message", [
    (("--gpu", "a100-40gb", "--quant", "fp8"), "error: fp8 needs fp8 tensor cores (Ada, Hopper or newer); a100-40gb has none\n"),
    (("--gpu", "h100-sxm", "--draft-quant", "int4"), "error: --draft-quant does not apply to --method autoregressive (it applies to draft_model)\n"),
])
def test_predict_refuses_in_one_line(args, message):
    result = _predict_cli(*args)
    assert result.exit_code == 2 and result.output == message
