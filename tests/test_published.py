"""Predictions held to figures other projects published (batch-1 decode tokens/s).

Each row: model card, shipped GPU profile, weight quantization, published tokens/s, source.
The same table, with each error, is in BENCHMARKS.md (`python bench/published.py`).
"""

import statistics

import pytest

from planner.hardware import load_profile
from planner.models import load_model_spec
from planner.perf import predict
from planner.plan import Decoding

GPT_FAST = "gpt-fast README, Benchmarks table (A100-80GB power-limited to 330 W, batch 1, 5-token prompt)"
MLC = "mlc-ai/llm-perf-bench PR #1 (RTX 4090, CUDA 11.8): MLC LLM 4-bit, batch 1"
EXLLAMA = "mlc-ai/llm-perf-bench PR #1 (RTX 4090): Exllama 4-bit GPTQ, batch 1"
LLAMACPP = "ggml-org/llama.cpp PR #15802 (RTX 3090, llama 8B Q4_0, microbatch 1)"

PUBLISHED = [
    ("llama-2-7b", "a100-80gb", "none", 104.9, GPT_FAST),
    ("llama-2-7b", "a100-80gb", "int8", 155.58, GPT_FAST),
    ("llama-2-7b", "a100-80gb", "int4", 196.80, GPT_FAST),
    ("llama-2-70b", "a100-80gb", "int8", 19.13, GPT_FAST),
    ("llama-2-70b", "a100-80gb", "int4", 25.25, GPT_FAST),
    ("llama-2-7b", "rtx4090", "int4", 191.0, MLC),
    ("llama-2-13b", "rtx4090", "int4", 108.8, MLC),
    ("llama-2-7b", "rtx4090", "int4", 152.56, EXLLAMA),
    ("llama-2-13b", "rtx4090", "int4", 93.88, EXLLAMA),
    ("llama-3.1-8b", "rtx3090", "int4", 155.02, LLAMACPP),
]


def prediction_errors():
    rows = []
    for model, gpu, quant, published, source in PUBLISHED:
        predicted = predict(load_model_spec(model), load_profile(gpu), Decoding("autoregressive", quant=quant), context=128).tokens_per_s
        rows.append((model, gpu, quant, published, predicted, predicted / published - 1, source))
    return rows


def test_median_error_within_15_percent():
    errors = [abs(row[5]) for row in prediction_errors()]
    assert statistics.median(errors) <= 0.15, errors


@pytest.mark.parametrize("row", PUBLISHED, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}-{r[3]}")
def test_each_row_within_factor_of_two(row):
    model, gpu, quant, published, _ = row
    predicted = predict(load_model_spec(model), load_profile(gpu), Decoding("autoregressive", quant=quant), context=128).tokens_per_s
    assert 0.5 < predicted / published < 2.0
