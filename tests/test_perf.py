"""The performance model against hand-computed values and its own invariants."""

import math
import os
import subprocess
import sys

import pytest

from planner.errors import InputError
from planner.hardware import HardwareProfile, load_profile
from planner.models import load_model_spec
from planner.perf import (
    Execution, alpha_from_tokens_per_iteration, forward_latency_s, load_priors, middle_block, predict, predict_detail,
    tokens_per_iteration, vram_bytes,
)
from planner.perf.acceptance import Prior
from planner.perf.cost import expected_experts_read, layer_time_s, layer_weight_read_bytes
from planner.plan import Decoding

# A round-number device: 1000 GB/s effective, 100 TFLOP/s effective, 1 us per kernel.
TOY = HardwareProfile(name="toy", device_name="toy", kind="gpu", memory_gib=80, bandwidth_gbps=1000,
                      peak_tflops={"bf16": 100.0}, bandwidth_efficiency=1.0, compute_efficiency=1.0,
                      kernel_launch_us=1.0, graph_kernel_us=1.0, token_slope=0.0, quant_slowdown={"int8": 1.0, "int4": 1.0})
GRAPH = Execution(dtype="bf16", graphs=True)


@pytest.fixture(scope="module")
def llama8b():
    return load_model_spec("llama-3.1-8b")


def test_perf_imports_without_torch():
    code = "import sys, planner.perf, planner.search, planner.plan; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_one_token_forward_is_weight_bytes_over_bandwidth_plus_kernels(llama8b):
    t = forward_latency_s(llama8b, TOY, new_tokens=1, context=0, execution=GRAPH)
    layer_bytes = llama8b.layer_bytes("none") + llama8b.kv_bytes_per_token_per_layer()  # the new token's KV write
    head_bytes = llama8b.lm_head_bytes() + 4096 * 2  # the LM head and the final norm
    expected = 32 * (layer_bytes / 1e12 + 8e-6) + head_bytes / 1e12 + 3e-6
    assert t == pytest.approx(expected, rel=1e-9)


def test_large_batch_turns_compute_bound(llama8b):
    one = forward_latency_s(llama8b, TOY, new_tokens=1, context=0, batch_size=1, execution=GRAPH)
    many = forward_latency_s(llama8b, TOY, new_tokens=1, context=0, batch_size=4096, execution=GRAPH)
    flops = 4096 * (32 * 2 * llama8b.layer_linear_params + 2 * llama8b.lm_head_params)
    assert many > 10 * one and many == pytest.approx(flops / 100e12, rel=0.05)


def test_tau_closed_form():
    alpha, gamma = 0.8, 4
    assert tokens_per_iteration([alpha] * gamma) == pytest.approx((1 - alpha ** (gamma + 1)) / (1 - alpha))
    assert alpha_from_tokens_per_iteration(tokens_per_iteration([0.63] * 5), 5) == pytest.approx(0.63, abs=1e-6)


def test_s3d_relation_and_priors():
    priors = load_priors()
    s3d = priors["s3d"]
    assert s3d.ceiling < 1 and s3d.decay < 1  # mask-token drafting never reaches full acceptance
    assert s3d.alpha(0.0) < s3d.ceiling and s3d.alpha(0.2) > s3d.alpha(0.5) > s3d.alpha(0.8)
    assert s3d.alpha(s3d.midpoint) == pytest.approx(s3d.ceiling / 2)


def test_speculation_matches_leviathan_formula(llama8b):
    """With a constant alpha, speedup = tau * T_ar / (gamma * T_draft + T_verify) (Leviathan et al. 2023)."""
    d = Decoding("layer_skip", gamma=4, skip_layers=middle_block(32, 12))
    detail = predict_detail(llama8b, TOY, d, context=512, acceptance=0.7, execution=GRAPH)
    tau = (1 - 0.7**5) / 0.3
    t_draft = forward_latency_s(llama8b, TOY, layers=20, new_tokens=1, context=512, execution=GRAPH)
    t_verify = forward_latency_s(llama8b, TOY, new_tokens=5, context=512, execution=GRAPH)
    assert detail.prediction.speedup == pytest.approx(tau * detail.autoregressive_s / (4 * t_draft + t_verify))
    assert detail.prediction.speedup <= detail.prediction.tokens_per_iteration
    assert detail.prediction.basis == "calibrated"


def test_s3d_drafts_in_one_forward_and_beats_sequential(llama8b):
    skip = middle_block(32, 12)
    s3d = predict_detail(llama8b, TOY, Decoding("s3d", gamma=4, skip_layers=skip), acceptance=0.7, execution=GRAPH)
    seq = predict_detail(llama8b, TOY, Decoding("layer_skip", gamma=4, skip_layers=skip), acceptance=0.7, execution=GRAPH)
    assert s3d.draft_s == pytest.approx(forward_latency_s(llama8b, TOY, layers=20, new_tokens=4, execution=GRAPH))
    assert s3d.draft_s < seq.draft_s / 3.5


def test_no_gain_when_acceptance_below_draft_cost(llama8b):
    d = Decoding("layer_skip", gamma=3, skip_layers=middle_block(32, 4))
    assert predict(llama8b, TOY, d, acceptance=0.05).speedup < 1


def test_early_exit_drafts_on_the_lower_layers_and_verifies_all(llama8b):
    d = Decoding("early_exit", gamma=3, exit_layer=8)
    detail = predict_detail(llama8b, TOY, d, acceptance=0.6, context=100, execution=GRAPH)
    lower = forward_latency_s(llama8b, TOY, layers=8, new_tokens=1, context=100, execution=GRAPH)
    assert detail.draft_s == pytest.approx(3 * lower)
    assert detail.verify_s == pytest.approx(forward_latency_s(llama8b, TOY, new_tokens=4, context=100, execution=GRAPH))


def test_quantization_shrinks_time_and_memory(llama8b):
    a10g = load_profile("a10g")
    bf16, int4 = (predict(llama8b, a10g, Decoding("autoregressive", quant=q)) for q in ("none", "int4"))
    assert int4.tokens_per_s > 2 * bf16.tokens_per_s and int4.vram_gib < bf16.vram_gib / 2.5


def test_vram_counts_draft_model_weights_and_its_cache(llama8b):
    draft = load_model_spec("llama-3.2-1b")
    kwargs = dict(gamma=4, quant="none", context=4096, batch_size=2)
    own = vram_bytes(llama8b, device_kind=TOY.kind, method="autoregressive", **kwargs)
    with_draft = vram_bytes(llama8b, device_kind=TOY.kind, method="draft_model", draft_spec=draft, **kwargs)
    slots = 4096 + 5
    assert own["kv_cache"] == 2 * slots * 32 * 2 * 8 * 128 * 2
    assert with_draft["draft"] == draft.weight_bytes("none") + 2 * slots * draft.kv_bytes_per_token()


def test_prior_override_by_mapping(llama8b):
    priors = {"s3d": Prior(ceiling=0.5, steepness=0.0)}
    d = Decoding("s3d", gamma=2, skip_layers=(15, 16))
    assert predict(llama8b, TOY, d, priors=priors).acceptance == pytest.approx(0.5)
    assert math.isclose(predict(llama8b, TOY, d, priors=priors).tokens_per_iteration, 1.75)
    skip = Decoding("layer_skip", gamma=2, skip_layers=(15, 16))  # a method the mapping leaves alone
    assert predict(llama8b, TOY, skip, priors=priors).acceptance == pytest.approx(predict(llama8b, TOY, skip).acceptance)


def test_priors_file_replaces_named_methods_and_is_reread_when_changed(llama8b, tmp_path):
    path = tmp_path / "priors.yaml"
    path.write_text("methods:\n  prompt_lookup: {alpha: 0.6}\n")
    d = Decoding("prompt_lookup", gamma=3)
    assert predict(llama8b, TOY, d, priors=str(path)).acceptance == pytest.approx(0.6)
    path.write_text("methods:\n  prompt_lookup: {alpha: 0.1}\n")
    os.utime(path, ns=(1, 10**18))  # a new modification time, however fast the rewrite
    assert predict(llama8b, TOY, d, priors=str(path)).acceptance == pytest.approx(0.1)
    path.write_text("methods:\n  prompt_lookup: 0.4\n")
    os.utime(path, ns=(1, 2 * 10**18))
    with pytest.raises(InputError, match="priors for prompt_lookup must be a mapping"):
        predict(llama8b, TOY, d, priors=str(path))


def test_speculation_stops_paying_as_the_batch_grows(llama8b):
    """Weights are read once per forward, but B x (gamma + 1) verified tokens turn compute-bound."""
    a10g, d = load_profile("a10g"), Decoding("s3d", gamma=4, skip_layers=middle_block(32, 10))
    by_batch = {b: predict(llama8b, a10g, d, batch_size=b, context=1024) for b in (1, 8, 128)}
    assert by_batch[1].speedup > 1.3 and by_batch[128].speedup < 1.0
    assert by_batch[8].tokens_per_s * 8 > 5 * by_batch[1].tokens_per_s  # batching still multiplies throughput
    kv_1 = vram_bytes(llama8b, device_kind=a10g.kind, method="s3d", gamma=4, quant="none", context=1024)["kv_cache"]
    kv_8 = vram_bytes(llama8b, device_kind=a10g.kind, method="s3d", gamma=4, quant="none", context=1024, batch_size=8)["kv_cache"]
    assert kv_8 == 8 * kv_1


def test_draft_model_prior_falls_with_the_size_gap(llama8b):
    d = Decoding("draft_model", gamma=4, draft_model="x")
    small, tiny = load_model_spec("llama-3.2-1b"), load_model_spec("qwen2.5-0.5b")
    near = predict(llama8b, TOY, d, draft_spec=small).acceptance
    far = predict(load_model_spec("llama-3.1-70b"), TOY, d, draft_spec=small).acceptance
    assert 0.7 < far < near < 0.9
    assert predict(llama8b, TOY, d, draft_spec=tiny).acceptance < near


# ---------------------------------------------------------------- mixture of experts (issue 12)
# A small Mixtral: hidden 64, 4 heads and 2 KV heads of 16, 8 experts of width 96, 2 per token,
# 3 layers, vocabulary 100. Per layer: attention 64x64 x 2 + 64x32 x 2 = 12288, router 64x8 = 512,
# norms 2 x 64 = 128, one expert 3 x 64 x 96 = 18432 parameters.
MOE_CONFIG = dict(model_type="mixtral", num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=100, num_local_experts=8, num_experts_per_tok=2)


def test_expected_experts_read_by_hand():
    assert expected_experts_read(8, 2, tokens=1) == 2  # one token reads its own k
    assert expected_experts_read(8, 2, tokens=2) == pytest.approx(8 * (1 - 0.75**2))  # 3.5
    assert expected_experts_read(8, 8, tokens=3) == 8
    assert 7.99 < expected_experts_read(8, 2, tokens=64) < 8  # never more than there are
    assert expected_experts_read(0, 0, tokens=5) == 0  # a dense model


def test_moe_forward_reads_the_routed_experts_and_memory_holds_all():
    from planner.models import spec_from_hf_config

    moe = spec_from_hf_config(MOE_CONFIG, "tiny-mixtral")
    dense_bytes, expert_bytes, kv_bytes = 2 * (12288 + 512 + 128), 2 * 18432, 2 * 2 * 16 * 2
    one = layer_time_s(moe, TOY, new_tokens=1, context=0, execution=GRAPH)
    assert one == pytest.approx((dense_bytes + 2 * expert_bytes + kv_bytes) / 1e12 + 8e-6, rel=1e-12)
    two = layer_time_s(moe, TOY, new_tokens=1, context=0, batch_size=2, execution=GRAPH)  # 3.5 experts read
    assert two == pytest.approx((dense_bytes + 3.5 * expert_bytes + 2 * kv_bytes) / 1e12 + 8e-6, rel=1e-12)
    held = 3 * (12288 + 512 + 8 * 18432 + 128) + 2 * 100 * 64 + 64  # layers, embedding and head, final norm
    assert moe.param_count == held
    parts = vram_bytes(moe, device_kind=TOY.kind, method="autoregressive", gamma=0, quant="none", context=0)
    assert parts["weights"] == 2 * held


def test_dense_forward_reads_the_whole_layer_whatever_the_tokens(llama8b):
    assert layer_weight_read_bytes(llama8b, tokens=64, quant="int4") == llama8b.layer_bytes("int4")


def test_a_draft_model_set_up_without_the_drafts_spec_names_the_parameter(llama8b):
    decoding = Decoding("draft_model", gamma=4, draft_model="llama-3.2-1b")
    with pytest.raises(InputError, match="method draft_model needs the draft model's spec: `draft_spec`"):
        predict_detail(llama8b, TOY, decoding)


SGLANG_SOURCE = "sgl-project/sglang server_args.py _handle_gpu_memory_settings @ 469c63e (engines.yaml)"


@pytest.mark.parametrize("gpu, method, reserve_mib", [
    ("a10g", "autoregressive", 512 + 2048 * 1.5 + 24 * 2 + 128),  # 22.5 GiB: chunked prefill 2048, graphs up to 24
    ("t4", "autoregressive", 512 + 2048 * 1.5 + 8 * 2 + 128),  # 15 GiB: graphs up to 8
    ("h100-sxm", "autoregressive", 512 + 8192 * 1.5 + 256 * 2 + 128),  # 79.6 GiB: 8192 and 256, above the 10 GiB floor
    ("h100-sxm", "draft_model", 512 + 8192 * 1.5 + 256 * 2 + 128 + 6 * 1024),  # a STANDALONE draft: 6 GiB more
])
def test_sglang_reserve_is_its_own_mem_fraction_static_rule(llama8b, gpu, method, reserve_mib):
    """SGLang keeps gpu_mem - mem_fraction_static x gpu_mem for activations, CUDA graphs and
    metadata (SGLANG_SOURCE); with SGLang targeted that reserve replaces specplan's own
    activation and runtime estimates in the VRAM figure."""
    from planner.perf.memory import GIB
    from planner.search.engines import engine_memory

    profile = load_profile(gpu)
    draft = load_model_spec("llama-3.2-1b") if method == "draft_model" else None
    d = Decoding(method, gamma=4 if draft else 0, draft_model="llama-3.2-1b" if draft else None)
    detail = predict_detail(llama8b, profile, d, draft_spec=draft, engine_memory=engine_memory("sglang"))
    parts = detail.vram_bytes
    assert parts["engine"] == pytest.approx(reserve_mib * 2**20)
    assert parts["activations"] == parts["runtime"] == 0.0
    assert detail.prediction.vram_gib == pytest.approx(sum(parts.values()) / GIB)


def test_vllm_allocates_its_memory_utilization_and_captures_graphs_beside_it(llama8b):
    """vLLM's gpu_memory_utilization (0.92, vllm/config/cache.py) is the budget when none is given;
    a given budget stands (the exporter writes it as the utilization); CUDA graphs add 512 x 2 MiB."""
    from planner.perf.memory import budget_gib
    from planner.search.engines import engine_memory

    vllm, profile = engine_memory("vllm"), load_profile("a100-80gb")
    assert budget_gib(None, memory_gib=profile.memory_gib, device=profile.name, engine=vllm) == pytest.approx(
        0.92 * profile.memory_gib)
    assert budget_gib(30.0, memory_gib=profile.memory_gib, device=profile.name, engine=vllm) == 30.0
    with pytest.raises(InputError, match="`vram_gib` 90 is above the 79.\\d GiB of a100-80gb"):
        budget_gib(90.0, memory_gib=profile.memory_gib, device=profile.name, engine=vllm)
    plain = predict_detail(llama8b, profile, Decoding("autoregressive"))
    served = predict_detail(llama8b, profile, Decoding("autoregressive"), engine_memory=vllm)
    assert served.vram_bytes["engine"] == 512 * 2 * 2**20
    assert served.prediction.vram_gib == pytest.approx(plain.prediction.vram_gib + 1.0)
    eager = Execution(dtype="bf16", graphs=False)
    assert predict_detail(llama8b, profile, Decoding("autoregressive"), engine_memory=vllm,
                          execution=eager).vram_bytes["engine"] == 0.0


def test_row_cost_by_hand():
    """c(r) = r x R(1) / R(r), linear in rows between published counts, the last rate held beyond."""
    from planner.perf.cost import row_cost

    rates = {1: 100.0, 2: 160.0, 4: 200.0}
    assert row_cost(rates, 1) == pytest.approx(1.0)
    assert row_cost(rates, 2) == pytest.approx(1.25)
    assert row_cost(rates, 3) == pytest.approx((1.25 + 2.0) / 2)
    assert row_cost(rates, 8) == pytest.approx(4.0)  # 8 rows at 200 tok/s: 40 ms against 10 ms


def test_llamacpp_int4_verify_costs_its_published_curve_and_int8_keeps_the_token_slope(llama8b):
    """llama.cpp's int4 kernels over 17 rows: 17 x 156.56 / R(17) a one-row step (engines.yaml,
    pulls 15802 and 7716); its int8 has no curve, so the profile's 1% per token applies."""
    from planner.perf import Execution, forward_latency_s
    from planner.perf.cost import layer_time_s, weight_read_factor
    from planner.plan.export import engine_info

    profile = load_profile("rtx3090")
    engine = engine_info("llamacpp").cost
    ex = Execution.default_for(profile, engine)
    c16, c32 = 16 * 156.56 / 914.10, 32 * 156.56 / 1197.13
    assert weight_read_factor(profile, engine, "int4", rows=17, new_tokens=17) == pytest.approx(c16 + (c32 - c16) / 16)
    assert weight_read_factor(profile, engine, "int8", rows=17, new_tokens=17) == pytest.approx(1.16)
    layer = [layer_time_s(llama8b, profile, new_tokens=n, context=512, quant="int4", execution=ex) for n in (1, 17)]
    assert 2.5 < layer[1] / layer[0] < 2.9
    forward = [forward_latency_s(llama8b, profile, new_tokens=n, context=512, quant="int8", execution=ex) for n in (1, 17)]
    assert forward[1] / forward[0] < 1.3


def test_a_cpu_profile_prices_each_extra_row_by_its_measured_per_row_figures():
    """On a CPU whose profile measured row_us and row_us_per_mparam (the runtime's layers over 1
    and 8 tokens), each token past the first adds row_us + row_us_per_mparam x the layer's linear
    parameters (millions) to a layer, and the token slope is not applied; a GPU profile or a CPU
    profile without them keeps the token slope."""
    import dataclasses

    from planner.perf.cost import layer_time_s

    spec = load_model_spec("llama-3.1-8b")
    cpu = dataclasses.replace(load_profile("a10g"), kind="cpu", token_slope=0.05, row_us=20.0, row_us_per_mparam=0.5,
                              peak_tflops={"bf16": 1e3, "fp16": 1e3, "fp32": 1e3})  # compute never binds here
    params_m = spec.layer_flops(1, 0) / 2 / 1e6
    one, four = (layer_time_s(spec, cpu, new_tokens=n, context=0) for n in (1, 4))
    assert four - one == pytest.approx(3 * (20.0 + 0.5 * params_m) * 1e-6, rel=1e-3)  # (and 3 tokens of KV written)
    gpu = dataclasses.replace(cpu, kind="gpu")
    unmeasured = dataclasses.replace(cpu, row_us=0.0, row_us_per_mparam=0.0)

    def extra(profile):
        return layer_time_s(spec, profile, new_tokens=4, context=0) - layer_time_s(spec, profile, new_tokens=1, context=0)

    assert extra(gpu) == extra(dataclasses.replace(gpu, row_us=0.0, row_us_per_mparam=0.0))  # a GPU ignores them
    assert extra(unmeasured) > extra(dataclasses.replace(unmeasured, token_slope=0.0))  # the token slope, as before
    assert extra(dataclasses.replace(cpu, token_slope=0.0)) == extra(cpu)  # not both
