"""Field cases for learned heads, draft trees and tensor parallel (issue 17), each against its
published source. Tolerances: tokens/s 15%, speedups 20%, mean accepted length 15%. A miss is
a strict xfail naming why, never a loosened tolerance.

Sources:
- SafeAILab/EAGLE pull 173: SGLang, one H100, Llama-2-7b-chat, EAGLE (lmzheng/sglang-EAGLE-
  llama2-chat-7B) tree 5 steps / topk 8 / 64 draft tokens, batch 1: 156 -> 297 tok/s.
- sgl-project/sglang pull 4716: SGLang, 8 x H100 TP 8, Llama-3.3-70B-Instruct fp16, EAGLE-3
  tree 8 / 8 / 64, batch 1 (MT-bench): 88.61 -> 234.54 tok/s, acceptance length 5.88.
- SafeAILab/EAGLE issue 228: SGLang, one H200, Qwen3-8B with Tengyunw/qwen3_8b_eagle3:
  186 -> 365 tok/s (the tree's shape was not published).
- docs.sglang.io advanced_features/speculative_decoding: SGLang, one H100, Llama-3.1-8B-Instruct,
  MT-bench, no speculation: 158.34 tok/s.
- sgl-project/sglang pull 2863: SGLang without CUDA graphs, one H20 96 GB, Qwen2-7B-Instruct
  with yuhuili/EAGLE-Qwen2-7B-Instruct, tree 5 / 8 / 64: 64.9 -> 110.81 tok/s; the same with
  CUDA graphs at --mem-fraction 0.7 ran out of memory.
"""

import pytest

from planner.hardware import load_profile
from planner.models import load_model_spec
from planner.perf import Execution, predict_detail
from planner.plan import Decoding
from planner.search.request import SearchRequest

TOKENS_PER_S, SPEEDUP, ACCEPTED = 0.15, 0.20, 0.15
# SGLang's step_us and draft_step_us (planner/profiles/engines.yaml) are fitted to EAGLE2_7B's two
# figures, so that case (id ...-fitted) passes by construction; the others are held out.
TP8 = ("8-GPU tensor parallel: with the all-reduce at 8.4 us on 8 GPUs (the 2-GPU NCCL floor plus the TP 8 increase "
       "sgl-project/sglang pull 2904 measured) the 70B's step is still under-costed (predicted {:.0f}% over); what else "
       "SGLang pays at TP 8 is not modelled")
EAGER = ("SGLang's eager per-layer host cost is not modelled (its kernels_per_layer 10 is the CUDA-graph count): the "
         "published eager figure is about half the prediction")


def _predict(model, gpu, decoding, *, tp=1, graphs=None, context=1024):
    """(autoregressive, `decoding`) as a plan for SGLang predicts them: its step cost, execution
    and memory policy (planner/profiles/engines.yaml)."""
    spec, profile = load_model_spec(model), load_profile(gpu)
    request = SearchRequest(context=context, engine="sglang", tensor_parallel=tp,
                            execution=None if graphs is None else ("graphs" if graphs else "eager"))
    return request.predict(spec, profile, Decoding("autoregressive")), request.predict(spec, profile, decoding)


def _within(predicted, published, tolerance):
    return abs(predicted / published - 1) <= tolerance


EAGLE2_7B = ("llama-2-7b", "h100-sxm", Decoding("eagle", gamma=5, topk=8, num_draft_tokens=64), {}, 156.0, 297.0)
EAGLE3_70B = ("llama-3.3-70b", "h100-sxm", Decoding("eagle3", gamma=8, topk=8, num_draft_tokens=64), {"tp": 8}, 88.61, 234.54)
EAGLE_QWEN2_EAGER = ("qwen2-7b", "h20", Decoding("eagle", gamma=5, topk=8, num_draft_tokens=64), {"graphs": False},
                     64.9, 110.81)


def test_eagle3_tree_accepted_length_matches_sglang_pull_4716():
    """Sequoia's tree sum over SGLang's tree, fed the EAGLE-3 prior fitted to vLLM chains on the
    8B head, gives the 70B tree's published mean accepted length 5.88."""
    model, gpu, decoding, kw, _, _ = EAGLE3_70B
    _, predicted = _predict(model, gpu, decoding, **kw)
    assert _within(predicted.tokens_per_iteration, 5.88, ACCEPTED), predicted.tokens_per_iteration


@pytest.mark.parametrize("case", [
    pytest.param(EAGLE2_7B, id="eagle2-tree-llama2-7b-h100-fitted"),
    pytest.param(EAGLE3_70B, id="eagle3-tree-llama3.3-70b-tp8", marks=pytest.mark.xfail(strict=True, reason=TP8.format(16))),
    pytest.param(EAGLE_QWEN2_EAGER, id="eagle-tree-qwen2-7b-h20-eager", marks=pytest.mark.xfail(strict=True, reason=EAGER)),
])
def test_autoregressive_tokens_per_s(case):
    model, gpu, decoding, kw, base_published, _ = case
    base, _ = _predict(model, gpu, decoding, **kw)
    assert _within(base.tokens_per_s, base_published, TOKENS_PER_S), base.tokens_per_s


@pytest.mark.parametrize("case", [
    pytest.param(EAGLE2_7B, id="eagle2-tree-llama2-7b-h100-fitted"),
    pytest.param(EAGLE3_70B, id="eagle3-tree-llama3.3-70b-tp8", marks=pytest.mark.xfail(strict=True, reason=TP8.format(16))),
    pytest.param(EAGLE_QWEN2_EAGER, id="eagle-tree-qwen2-7b-h20-eager", marks=pytest.mark.xfail(strict=True, reason=EAGER)),
])
def test_speculative_tokens_per_s(case):
    model, gpu, decoding, kw, _, spec_published = case
    _, predicted = _predict(model, gpu, decoding, **kw)
    assert _within(predicted.tokens_per_s, spec_published, TOKENS_PER_S), predicted.tokens_per_s


@pytest.mark.parametrize("case", [
    pytest.param(EAGLE2_7B, id="eagle2-tree-llama2-7b-h100-fitted"),
    pytest.param(EAGLE3_70B, id="eagle3-tree-llama3.3-70b-tp8"),  # held out: 2.63x against 2.65x
    pytest.param(EAGLE_QWEN2_EAGER, id="eagle-tree-qwen2-7b-h20-eager"),  # 1.67x against 1.71x (both speeds ~2x over)
])
def test_speedup(case):
    model, gpu, decoding, kw, base_published, spec_published = case
    base, predicted = _predict(model, gpu, decoding, **kw)
    assert _within(predicted.speedup, spec_published / base_published, SPEEDUP), predicted.speedup


def test_eagle3_qwen3_8b_h200_tokens_per_s():
    """Held out: 183 against 186 tok/s without speculation, 372 against 365 with the EAGLE-3 head. The
    tree's shape was not published with the figure (SafeAILab/EAGLE issue 228): SGLang's 8/8/64 is assumed."""
    base, predicted = _predict("qwen3-8b", "h200", Decoding("eagle3", gamma=8, topk=8, num_draft_tokens=64))
    assert _within(base.tokens_per_s, 186.0, TOKENS_PER_S) and _within(predicted.tokens_per_s, 365.0, TOKENS_PER_S)


def test_sglang_docs_llama31_8b_h100_without_speculation():
    """Held out: SGLang's speculative-decoding docs (docs.sglang.io, advanced_features/speculative_decoding,
    "Performance Highlights"): Llama-3.1-8B-Instruct on one H100, MT-bench, no speculation, 158.34 tok/s;
    predicted 145 (-8%). Their EAGLE-2/3 rows (244.10, 373.25) give no tree shape, so they are not cases."""
    base, _ = _predict("llama-3.1-8b", "h100-sxm", Decoding("eagle3", gamma=5, topk=4, num_draft_tokens=8))
    assert _within(base.tokens_per_s, 158.34, TOKENS_PER_S), base.tokens_per_s


@pytest.mark.xfail(strict=True, reason="SGLang's reserve (engines.yaml memory: 13.1 GiB on an H20) is counted, but not "
                   "its EAGLE CUDA-graph capture (verify graphs over batch x 64 tokens of a 152k vocabulary's logits): "
                   "predicted 27.9 GiB, under 0.7 of 89.4 GiB")
def test_qwen2_7b_h20_graphs_at_fraction_0_7_run_out_of_memory():
    _, predicted = _predict("qwen2-7b", "h20", Decoding("eagle", gamma=5, topk=8, num_draft_tokens=64))
    assert predicted.vram_gib > 0.7 * load_profile("h20").memory_gib


def test_seventy_b_splits_over_tensor_parallel_gpus():
    """Weights and KV split over N GPUs: per-GPU memory falls with N, and eight H100s decode a
    70B faster than four (bandwidth summed, all-reduces paid)."""
    spec, profile = load_model_spec("llama-3.1-70b"), load_profile("h100-sxm")
    per_gpu = {}
    for tp in (1, 4, 8):
        ex = Execution.default_for(profile, tensor_parallel=tp)
        per_gpu[tp] = predict_detail(spec, profile, Decoding("autoregressive"), execution=ex).prediction
    assert per_gpu[1].vram_gib > profile.memory_gib > per_gpu[4].vram_gib > per_gpu[8].vram_gib
    assert per_gpu[8].tokens_per_s > per_gpu[4].tokens_per_s


# -- bad input: one line, exit 2 --------------------------------------------------------------

from click.testing import CliRunner  # noqa: E402

from planner.cli import cli  # noqa: E402


@pytest.mark.parametrize("args, message", [
    (["--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--method", "autoregressive"],
     "needs 132.80 GiB (weights 131.42, kv cache 0.63, runtime 0.75), over the 79.6 GiB budget; split it with --tp 2"),
    (["--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--method", "autoregressive", "--tp", "3"],
     "64 attention heads do not split evenly"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--method", "draft_model", "--draft-model", "llama-3.2-1b",
      "--topk", "4"], "--topk and --num-draft-tokens apply to eagle, eagle3, mtp"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--method", "eagle3", "--gamma", "3", "--topk", "4",
      "--num-draft-tokens", "64"], "between 4 and 37"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--method", "eagle3", "--tp", "2", "--draft-tp", "4"],
     "a draft runs on 1 GPU or on the target's 2"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--method", "medusa"], "no published acceptance prior for medusa"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--method", "mtp", "--engine", "trtllm"],
     "llama-3.1-8b has no multi-token-prediction layers"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--method", "prompt_lookup", "--workload", "rag", "--acceptance", "0.8"],
     "--workload rag picks the acceptance priors and --acceptance replaces them"),
])
def test_predict_refuses_in_one_line(args, message):
    result = CliRunner().invoke(cli, ["predict", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_mtp_is_planned_only_for_a_checkpoint_with_mtp_layers(tmp_path):
    """A config.json's num_nextn_predict_layers makes mtp plannable; a card without any is refused in one line."""
    import json

    from planner.models import load_model_spec

    refused = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--methods", "mtp",
                                       "--trials", "5", "--out", str(tmp_path / "no.yaml")])
    assert refused.exit_code == 2 and "no multi-token-prediction layers" in refused.output
    assert not (tmp_path / "no.yaml").exists()
    config = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 1000, "num_nextn_predict_layers": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model_spec(str(tmp_path / "config.json")).mtp_layers == 1
    made = CliRunner().invoke(cli, ["predict", "--model", str(tmp_path / "config.json"), "--gpu", "h100-sxm", "--method", "mtp",
                                    "--gamma", "1", "--acceptance", "0.7"])
    assert made.exit_code == 0, made.output


def test_run_refuses_a_head_plan_naming_the_engines(tmp_path):
    plan = tmp_path / "plan.yaml"
    made = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--methods", "eagle3",
                                    "--trials", "20", "--out", str(plan)])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(cli, ["run", "--plan", str(plan), "--prompt", "hi"])
    assert result.exit_code == 2
    assert "does not run eagle3 heads; serve the plan with vllm, sglang" in result.output


def test_seventy_b_plans_and_exports_with_tensor_parallel(tmp_path):
    """Issue 17's done-when: llama-3.1-70b on h100-sxm at --tp 4 and 8 plans and exports for vLLM
    and SGLang, EAGLE-3 among the candidates when a head is given."""
    for tp in ("4", "8"):
        for engine in ("vllm", "sglang"):
            plan = tmp_path / f"{engine}{tp}.yaml"
            made = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--tp", tp,
                                            "--engine", engine, "--head", "eagle3=yuhuili/EAGLE3-LLaMA3.1-Instruct-70B",
                                            "--trials", "60", "--out", str(plan)])
            assert made.exit_code == 0, made.output
            assert "eagle3" in made.output
            exported = CliRunner().invoke(cli, ["export", "--plan", str(plan), "--to", engine])
            assert exported.exit_code == 0, exported.output
            assert f"TP={tp}" in exported.output
