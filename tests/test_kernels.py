"""The lean CPU kernel (issue 19): `torch.ops.specplan.linear` against a float64 reference,
its batch invariance (a row's result does not depend on which other rows share the call),
the swap into a model's linears, the runtime's numerics rule on a tiny model and on the real
SmolLM2 checkpoint (a token's logits inside a k-token verify equal those of the one-token
step, bit for bit), and the fallback when the kernel cannot be built."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from planner.runtime import kernels
from planner.runtime.kernels import LeanLinear, use_lean_linears

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


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), k=st.integers(1, 200), splits=st.lists(st.integers(1, 5), min_size=1, max_size=6),
       dtype=st.sampled_from(list(DTYPES)), bias=st.booleans())
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
@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "mistral", "phi"])  # gpt_neox's attention is not: BENCHMARKS.md
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
