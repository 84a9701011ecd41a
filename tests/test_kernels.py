"""The lean CPU kernels (issue 19): `torch.ops.specplan.linear` against a float64 reference,
`rms_norm`, `rotary` and `attention` against the transformers code they replace, their batch
invariance (a row's result does not depend on which other rows share the call), the swap into
a model, the runtime's numerics rule on tiny models and on the real SmolLM2 checkpoint (a
token's logits inside a k-token verify equal those of the one-token step, bit for bit), and
the fallback when the kernels cannot be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from planner.runtime import kernels
from planner.runtime.kernels import LEAN_ATTENTIONS, LEAN_MLPS, LEAN_NORMS, LeanLinear, use_lean_kernels, use_lean_linears

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the lean kernel cannot be built on this machine")

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Error bound of a fp32-accumulated dot product rounded to the output dtype: one rounding of
# the output (2^-8 relative for bf16) plus fp32 accumulation (K * 2^-24, small here).
REL_TOL = {"bf16": 2**-7, "fp32": 1e-5}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1536, 576), (7, 70), (49, 64), (3, 5), (4, 1), (130, 33)])
def test_the_kernel_equals_a_float64_reference_within_one_output_rounding(dtype, shape):
    n, k = shape
    g = torch.Generator().manual_seed(n * 1000 + k)
    w, b, x = (torch.randn(*s, generator=g).to(DTYPES[dtype]) for s in ((n, k), (n,), (9, k)))
    got = torch.ops.specplan.linear(x, w, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    scale = (x.double().abs() @ w.double().abs().T + b.double().abs()).max()
    assert got.dtype == DTYPES[dtype] and got.shape == (9, n)
    assert (got.double() - ref).abs().max() <= REL_TOL[dtype] * scale


@pytest.mark.skipif(not torch.ops.specplan.amx(), reason="no AMX tiles on this CPU (or SPECPLAN_AMX=0)")
@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize("m", [1, 4, 16, 17, 33])
def test_amx_tiles_and_the_vector_kernel_each_meet_the_reference_and_stay_batch_invariant(amx, m):
    """bf16 with K a multiple of 32 runs on AMX's tiles where the CPU has them: rows past the last
    whole block of 16 (N = 1540 here) and every row when AMX is off take the vector kernel."""
    g = torch.Generator().manual_seed(m)
    w, b, x = (torch.randn(*s, generator=g).bfloat16() for s in ((1540, 576), (1540,), (m, 576)))
    try:
        assert torch.ops.specplan.set_amx(amx) == amx
        got = torch.ops.specplan.linear(x, w, b)
        rows = torch.cat([torch.ops.specplan.linear(x[i : i + 1], w, b) for i in range(m)])
    finally:
        torch.ops.specplan.set_amx(True)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    scale = (x.double().abs() @ w.double().abs().T + b.double().abs()).max()
    assert (got.double() - ref).abs().max() <= REL_TOL["bf16"] * scale
    assert torch.equal(rows, got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_rows_give_no_rows(dtype):
    w = torch.randn(64, 576).to(DTYPES[dtype])
    assert torch.ops.specplan.linear(torch.zeros(0, 576, dtype=DTYPES[dtype]), w, None).shape == (0, 64)


@pytest.mark.skipif(not torch.ops.specplan.amx(), reason="no AMX tiles on this CPU (or SPECPLAN_AMX=0)")
@pytest.mark.parametrize("value, on", [("0", False), ("Off", False), ("no", False), ("false", False), ("1", True), ("", True)])
def test_specplan_amx_in_the_environment_chooses_the_kernel(value, on):
    import os
    import subprocess
    import sys

    code = "from planner.runtime import kernels; import torch; kernels.available(); print(torch.ops.specplan.amx())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SPECPLAN_AMX=value), capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent.parent, check=True).stdout
    assert out.strip().splitlines()[-1] == str(on)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), k=st.one_of(st.integers(1, 200), st.sampled_from([32, 64, 96, 192])),  # multiples of 32: AMX's tiles
       splits=st.lists(st.integers(1, 9), min_size=1, max_size=6), dtype=st.sampled_from(list(DTYPES)), bias=st.booleans())
def test_a_row_is_computed_the_same_whatever_rows_share_the_call(n, k, splits, dtype, bias):
    g = torch.Generator().manual_seed(n + 7 * k)
    m = sum(splits)
    w, x = torch.randn(n, k, generator=g).to(DTYPES[dtype]), torch.randn(m, k, generator=g).to(DTYPES[dtype])
    b = torch.randn(n, generator=g).to(DTYPES[dtype]) if bias else None
    whole = torch.ops.specplan.linear(x, w, b)
    pieces, start = [], 0
    for size in splits:
        pieces.append(torch.ops.specplan.linear(x[start : start + size], w, b))
        start += size
    assert torch.equal(torch.cat(pieces), whole)
    assert torch.equal(torch.ops.specplan.linear(x[None], w, b)[0], whole)  # leading dims are rows too


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_projections_in_one_call_equal_one_call_each(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64, generator=g).to(DTYPES[dtype])
    weights = [torch.randn(n, 64, generator=g).to(DTYPES[dtype]) for n in (64, 17, 16)]
    biases = [None, torch.randn(17, generator=g).to(DTYPES[dtype]), None]
    together = torch.ops.specplan.linears(x, weights, biases)
    for y, w, b in zip(together, weights, biases):
        assert torch.equal(y, torch.ops.specplan.linear(x, w, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_silu_gated_linear_rounds_where_llamas_mlp_rounds(dtype):
    """silu(gate) * up as transformers computes it from the same two projections: exact up to
    silu's exp, whose last fp32 bits may differ from torch's (in bf16, one rounding step in a
    few elements at most)."""
    g = torch.Generator().manual_seed(6)
    dt = DTYPES[dtype]
    x, gate, up = torch.randn(4, 64, generator=g).to(dt), torch.randn(96, 64, generator=g).to(dt), torch.randn(96, 64, generator=g).to(dt)
    ref = torch.nn.functional.silu(torch.ops.specplan.linear(x, gate, None)) * torch.ops.specplan.linear(x, up, None)
    got = torch.ops.specplan.silu_gated_linear(x, gate, None, up, None)
    torch.testing.assert_close(got, ref, rtol=REL_TOL[dtype], atol=REL_TOL[dtype])
    if dtype == "bf16":
        assert (got == ref).float().mean() > 0.97


def test_linears_are_swapped_in_place_sharing_their_parameters():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4, bias=False)), nn.Embedding(3, 8))
    model[3].weight.data = model[0].weight.data[:3, :8].contiguous()
    weights = [model[0].weight, model[2][0].weight]
    x = torch.randn(5, 8)
    before = model[2](model[1](model[0](x)))
    assert use_lean_linears(model) == 2
    assert isinstance(model[0], LeanLinear) and isinstance(model[2][0], LeanLinear)
    assert model[0].weight is weights[0] and model[2][0].weight is weights[1]  # no copy
    torch.testing.assert_close(model[2](model[1](model[0](x))), before)
    assert use_lean_linears(model) == 0  # already swapped


def test_linears_the_kernel_cannot_run_are_left_alone():
    model = nn.Sequential(nn.Linear(8, 8).half(), nn.Linear(8, 8).to(torch.float64))
    assert use_lean_linears(model) == 0
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Linear


def test_when_the_kernel_cannot_be_built_one_line_says_so_and_torch_linears_stay(monkeypatch, capsys):
    def no_compiler():
        raise RuntimeError("Error building extension: g++: command not found")

    monkeypatch.setattr(kernels, "_build", no_compiler)
    monkeypatch.setattr(kernels, "available", kernels.available.__wrapped__)  # bypass the cached answer
    model = nn.Sequential(nn.Linear(8, 8))
    assert use_lean_linears(model) == 0
    assert type(model[0]) is nn.Linear
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not be built (Error building extension: g++: command not found)" in err[0]


def _fresh_build(monkeypatch, tmp_path):
    """`kernels.available` as on a machine whose kernel cache is empty (tmp_path)."""
    monkeypatch.setenv("SPECPLAN_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "available", kernels.available.__wrapped__)  # bypass the cached answer


def test_a_lock_left_by_a_killed_build_is_removed_before_building(monkeypatch, tmp_path, capsys):
    """torch's builder waits for ever on its `lock` file; one left by a killed build used to hang
    every later run without a word."""
    import torch.utils.cpp_extension

    _fresh_build(monkeypatch, tmp_path)
    seen = {}

    def fake_load(name, sources, build_directory, **kwargs):
        seen["lock left"] = (Path(build_directory) / "lock").exists()
        raise RuntimeError("fake build stopped here")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    stale = kernels.build_directory() / "lock"
    assert stale.is_relative_to(tmp_path)
    stale.parent.mkdir(parents=True)
    stale.touch()
    assert kernels.available() is False
    assert seen == {"lock left": False}
    assert "fake build stopped here" in capsys.readouterr().err


def test_without_a_compiler_one_line_names_it_and_torch_is_not_asked_to_build(monkeypatch, tmp_path, capsys):
    import torch.utils.cpp_extension

    _fresh_build(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: pytest.fail("load called"))
    assert kernels.available() is False
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["specplan: the lean CPU kernel could not be built (no C++ compiler: '/nonexistent/c++' not found); "
                   "decoding uses torch's own modules"]


def _rms_norm_reference(x, weight, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(x.shape[-1], eps).to(x.dtype)
    norm.weight.data = weight
    return norm(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_is_llamas_up_to_the_order_of_its_fp32_sum(dtype):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 7, 576, generator=g).to(DTYPES[dtype]), torch.randn(576, generator=g).to(DTYPES[dtype])
    got, ref = torch.ops.specplan.rms_norm(x, w, 1e-5), _rms_norm_reference(x, w, 1e-5)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    # the statistics differ in the last fp32 bits; a bf16 output may then round one step apart
    torch.testing.assert_close(got, ref, rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


def _rotary_tables(positions, width, dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=width * 4, num_attention_heads=4, head_dim=width))
    return rope(torch.zeros(1, len(positions), dtype=dtype), torch.tensor(positions)[None])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_equals_transformers_apply_rotary_pos_emb_bit_for_bit(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 5, 6, 32, generator=g).to(DTYPES[dtype]).transpose(1, 2)  # (B, H, T, D) as the module makes it
    k = torch.randn(1, 5, 2, 32, generator=g).to(DTYPES[dtype]).transpose(1, 2)
    cos, sin = _rotary_tables(range(40, 45), 32, DTYPES[dtype])
    got, ref = torch.ops.specplan.rotary(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def _causal_mask(query_positions, slots, dtype, window=None):
    query, key = torch.tensor(query_positions)[:, None], torch.arange(slots)[None]
    visible = (key <= query) & ((query - key < window) if window else True)
    return torch.where(visible, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)[None, None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, 6])
def test_attention_equals_sdpa_over_the_cache_with_shared_kv_heads(dtype, window):
    g = torch.Generator().manual_seed(3)
    dt = DTYPES[dtype]
    q = torch.randn(2, 4, 6, 32, generator=g).to(dt).transpose(1, 2)  # 6 heads over 2 KV heads
    k, v = (torch.randn(2, 2, 48, 32, generator=g).to(dt) for _ in range(2))
    mask = _causal_mask(range(20, 24), 48, dt, window)
    got = torch.ops.specplan.attention(q, k, v, mask, 0.17)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(3, 1), v.double().repeat_interleave(3, 1), attn_mask=mask.double(), scale=0.17)
    assert got.shape == (2, 4, 6, 32) and got.dtype == dt
    torch.testing.assert_close(got.double(), ref.transpose(1, 2), rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


@settings(max_examples=30, deadline=None)
@given(tokens=st.integers(1, 6), start=st.integers(0, 30), dtype=st.sampled_from(list(DTYPES)))
def test_norm_rotary_and_attention_compute_a_token_the_same_whatever_tokens_share_the_call(tokens, start, dtype):
    g = torch.Generator().manual_seed(tokens + 10 * start)
    dt = DTYPES[dtype]
    x, w = torch.randn(1, tokens, 64, generator=g).to(dt), torch.randn(64, generator=g).to(dt)
    q = torch.randn(1, tokens, 4, 16, generator=g).to(dt).transpose(1, 2)
    k, v = (torch.randn(1, 2, 40, 16, generator=g).to(dt) for _ in range(2))
    cos, sin = _rotary_tables(range(start, start + tokens), 16, dt)
    mask = _causal_mask(range(start, start + tokens), 40, dt)
    whole_norm = torch.ops.specplan.rms_norm(x, w, 1e-6)
    whole_q, _ = torch.ops.specplan.rotary(q, q[:, :2], cos, sin)
    whole_attention = torch.ops.specplan.attention(q, k, v, mask, 0.25)
    for t in range(tokens):
        one = slice(t, t + 1)
        assert torch.equal(torch.ops.specplan.rms_norm(x[:, one], w, 1e-6), whole_norm[:, one])
        assert torch.equal(torch.ops.specplan.rotary(q[:, :, one], q[:, :2, one], cos[:, one], sin[:, one])[0], whole_q[:, :, one])
        assert torch.equal(torch.ops.specplan.attention(q[:, :, one], k, v, mask[:, :, one], 0.25), whole_attention[:, one])


LEAN_ARCHS = ["llama", "mistral", "qwen2", "qwen3"]  # the families of LEAN_NORMS and LEAN_ATTENTIONS


@pytest.mark.parametrize("arch", LEAN_ARCHS)
def test_norms_and_attentions_are_swapped_and_decode_as_transformers_modules_do(rt_models, arch):
    """Every norm, attention and MLP of the family is swapped (no copy of a parameter), and a
    prefill plus one-token steps give the logits of the same model with torch's modules
    (fp32: the same math up to the order of fp32 sums)."""
    from planner.runtime.load import load_target

    lean = load_target(rt_models[arch], device=torch.device("cpu"), max_seq_len=64, dtype=torch.float32)
    plain = load_target(rt_models[arch], device=torch.device("cpu"), max_seq_len=64, dtype=torch.float32, lean=False)
    kinds = {type(m).__name__ for m in lean.decoder.hf_model.modules()}
    families = LEAN_NORMS + LEAN_ATTENTIONS + LEAN_MLPS
    assert {f"Lean{name}" for name in families if name.lower().startswith(arch)} <= kinds
    assert not kinds & set(families)
    for target in (lean, plain):
        prompt = torch.tensor([list(range(3, 20))])
        target.prefill(prompt, target.positions(0, 17))
        target.logits = [target.step(torch.tensor([[t]]), target.positions(17 + i, 1)) for i, t in enumerate((5, 9, 11, 4))]
    for a, b in zip(lean.logits, plain.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", LEAN_ARCHS)
def test_a_fused_decoder_layer_computes_what_its_lean_modules_compute_one_by_one(rt_models, arch, dtype, monkeypatch):
    """specplan::decoder_layer runs for every layer of a step (prefill aside: the cache has no
    buffer yet) and its logits equal, bit for bit, those of the same lean modules called one by one."""
    from planner.runtime.load import load_target

    calls = []
    fused = torch.ops.specplan.decoder_layer

    def counted(*args):
        calls.append(args[0].shape)
        return fused(*args)

    logits = {}
    for mode in ("fused", "one by one"):
        target = load_target(rt_models[arch], device=torch.device("cpu"), max_seq_len=64, dtype=DTYPES[dtype])
        layers = target.decoder.layers
        assert {type(layer).__name__ for layer in layers} == {f"Lean{type(layers[0]).__mro__[2].__name__}"}
        if mode == "fused":
            monkeypatch.setattr(torch.ops.specplan, "decoder_layer", counted)
            assert all(kernels._fused_parts(layer) is not None for layer in layers)
        else:
            monkeypatch.setattr(kernels, "_fused_parts", lambda layer: None)
        target.prefill(torch.tensor([list(range(3, 20))]), target.positions(0, 17))
        steps = [target.step(torch.tensor([[t]]), target.positions(17 + i, 1)) for i, t in enumerate((5, 9, 11))]
        logits[mode] = steps + [target.step(torch.tensor([[4, 8, 2]]), target.positions(20, 3))]
        monkeypatch.undo()
    assert len(calls) == 4 * len(layers) and calls[-1][1] == 3
    for a, b in zip(logits["fused"], logits["one by one"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_adapters_layer_copies_are_one_fused_call_computing_what_their_modules_compute(rt_models, dtype, monkeypatch):
    """The S3D draft's copies of the kept layers (LoRA linears) are one specplan::decoder_layer
    call each, with their LoRA pairs, and the draft's logits equal, bit for bit, those of the
    same lean modules (lean LoRA linears, the lean MLP's silu_mul) called one by one; switching
    the adapter off makes the copies run peft's own forward."""
    from planner.runtime.adapter import untrained_draft
    from planner.runtime.load import load_target

    logits = {}
    for mode in ("fused", "one by one"):
        target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=64, dtype=DTYPES[dtype])
        target.prefill(torch.tensor([list(range(3, 20))]), target.positions(0, 17))
        torch.manual_seed(0)  # peft draws LoRA's A at random
        key = untrained_draft(target.decoder, (1, 2))
        copies = [m for m in target.decoder.view(key).modules() if type(m).__name__ == "LeanLlamaDecoderLayer"]
        assert len(copies) == len(target.decoder.layers) - 2
        with torch.no_grad():
            for m in target.decoder.view(key).modules():
                if hasattr(m, "lora_B"):
                    m.lora_B["default"].weight.normal_(0, 0.05)  # B starts at zero: make the adapter count
        calls = []
        fused = torch.ops.specplan.decoder_layer
        if mode == "fused":
            assert all(kernels._fused_parts(c) is not None and len(kernels._fused_parts(c)[4]) == 7 for c in copies)
            monkeypatch.setattr(torch.ops.specplan, "decoder_layer", lambda *args: calls.append(args[-3]) or fused(*args))
        else:
            monkeypatch.setattr(kernels, "_fused_parts", lambda layer: None)
        logits[mode] = target.step(torch.tensor([[5, 7, 7]]), target.positions(17, 3), key)
        monkeypatch.undo()
        if mode == "fused":
            assert len(calls) == len(copies) and all(len(a) == 7 for a in calls)
            for m in target.decoder.view(key).modules():
                if hasattr(m, "lora_A"):
                    m.enable_adapters(False)
            assert all(kernels._fused_parts(c) is None for c in copies)
    assert torch.equal(logits["fused"], logits["one by one"])


def test_the_fused_layers_transposed_lora_b_follows_in_place_updates(rt_models):
    """An adapted copy's parts hold each LoRA B transposed, worked out once and again once B
    changes (a training step) or the adapter is switched off."""
    from planner.runtime.adapter import untrained_draft
    from planner.runtime.load import load_target

    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=64, dtype=torch.float32)
    key = untrained_draft(target.decoder, (1, 2))
    copy = next(m for m in target.decoder.view(key).modules() if type(m).__name__ == "LeanLlamaDecoderLayer")
    b = copy.self_attn.q_proj.lora_B["default"].weight
    first = kernels._fused_parts(copy)
    assert kernels._fused_parts(copy)[5][0] is first[5][0]  # worked out once
    with torch.no_grad():
        b.normal_()
    assert torch.equal(kernels._fused_parts(copy)[5][0], b.t())
    copy.self_attn.q_proj.enable_adapters(False)
    assert kernels._fused_parts(copy) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_adapters_lora_linears_are_one_lean_call_computing_what_peft_computes(rt_models, dtype):
    """The S3D draft's LoRA linears (peft) run as specplan::lora_linear when decoding: peft's
    result up to the order of the sums (the draft only proposes; the verify never runs it)."""
    from planner.runtime.adapter import untrained_draft
    from planner.runtime.load import load_target

    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=64, dtype=DTYPES[dtype])
    key = untrained_draft(target.decoder, (1, 2))
    loras = [m for m in target.decoder.view(key).modules() if hasattr(m, "lora_A")]
    assert loras and all(type(m).__name__ == "LeanLoraLinear" for m in loras)
    lora = loras[0]
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_(0, 0.1)  # LoRA's B starts at zero: make the low-rank part count
        x = torch.randn(3, 5, lora.in_features).to(DTYPES[dtype])
        lean = lora(x)
        reference = super(kernels._LeanLoraLinear, lora).forward(x)  # peft's own forward
    torch.testing.assert_close(lean, reference, rtol=REL_TOL[dtype] * 2, atol=REL_TOL[dtype] * 2)
    assert not torch.equal(lean, lora.base_layer(x))  # the adapter's part is there
    x.requires_grad_(True)
    assert lora(x).requires_grad  # training runs peft's forward


def test_a_swapped_module_runs_its_own_forward_where_the_ops_do_not_apply(rt_models):
    """With gradients on (training) the swapped modules run transformers' code."""
    from planner.runtime.load import load_target

    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=64, dtype=torch.float32)
    norm = target.decoder.hf_model.model.norm
    x = torch.randn(3, 64, requires_grad=True)
    norm(x).sum().backward()  # specplan::rms_norm has no backward: this ran LlamaRMSNorm's forward
    assert x.grad is not None
    mlp = target.decoder.hf_model.model.layers[0].mlp
    mlp(x[None]).sum().backward()  # nor specplan::silu_gated_linear
    assert type(mlp).__name__ == "LeanLlamaMLP"
    assert use_lean_kernels(target.decoder.hf_model) == 0  # already lean


def _verify_vs_steps(target, prompt: list[int], width: int):
    """Logits of `width` tokens in one forward, and of the same tokens one step at a time."""
    ids = torch.tensor(prompt)
    target.prefill(ids[None], target.positions(0, len(prompt)))
    tokens = torch.tensor(prompt[-width:])[None]
    pos = len(prompt)
    verify = target.step(tokens, target.positions(pos, width))[0]
    steps = torch.cat([target.step(tokens[:, i : i + 1], target.positions(pos + i, 1))[0] for i in range(width)])
    return verify, steps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "mistral", "phi", "qwen2", "qwen3"])  # gpt_neox's attention is not: BENCHMARKS.md
def test_a_verify_forward_computes_each_token_as_the_one_token_step_does(rt_models, arch, dtype):
    from planner.runtime.load import load_target

    target = load_target(rt_models[arch], device=torch.device("cpu"), max_seq_len=64, dtype=DTYPES[dtype])
    verify, steps = _verify_vs_steps(target, list(range(3, 20)), width=5)
    assert torch.equal(verify, steps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_smollm2_verify_and_one_token_steps_agree_bit_for_bit(ck_smollm2_dir, dtype):
    from planner.runtime.checkpoint import load_tokenizer
    from planner.runtime.load import load_target

    prompt = load_tokenizer(ck_smollm2_dir)("def fibonacci(n):\n    if n < 2:\n        return n\n")["input_ids"]
    target = load_target(ck_smollm2_dir, device=torch.device("cpu"), max_seq_len=128, dtype=DTYPES[dtype])
    verify, steps = _verify_vs_steps(target, prompt, width=6)
    assert torch.equal(verify, steps)


def test_the_demo_model_in_bf16_verifies_as_it_steps():
    """With torch's linears its 5-token verify differed from one-token steps by up to 0.0625 in
    bf16 (oneDNN's bf16 matmul takes another path for one row), enough to flip near-ties:
    `tune` found draft_model and prompt lookup outputs differing on 2 of 6 demo prompts."""
    from planner.profiles import PROFILES_DIR
    from planner.runtime.load import load_target

    target = load_target(str(PROFILES_DIR / "demo"), device=torch.device("cpu"), max_seq_len=256, dtype=torch.bfloat16)
    for start in (5, 40, 90):
        verify, steps = _verify_vs_steps(target, list(range(start, start + 60)), width=5)
        assert torch.equal(verify, steps)
