"""Print the published-figure comparison tables (markdown) for BENCHMARKS.md.

    python bench/published.py
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_published import decode_rate_errors, speedup_errors  # noqa: E402

rates = decode_rate_errors()
print("Batch-1 decode tokens/s (autoregressive; the engine's default execution and step cost, '-': the built-in runtime's)\n")
print("| model | GPU | weights | engine | published tok/s | predicted tok/s | error | source |")
print("| --- | --- | --- | --- | ---: | ---: | ---: | --- |")
for model, gpu, quant, published, predicted, error, source, engine in rates:
    print(f"| {model} | {gpu} | {quant} | {engine} | {published:.1f} | {predicted:.1f} | {error:+.1%} | {source} |")
print(f"\nmedian absolute error: {statistics.median(abs(r[5]) for r in rates):.1%}\n")

speedups = speedup_errors()
print("Early-exit self-speculative speedup at the published acceptance (context 1024, eager bf16)\n")
print("| task | model | GPU | exit layer | gamma | acceptance rate | published speedup | predicted | error | source |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for task, model, gpu, exit_layer, gamma, rate, published, predicted, error, source in speedups:
    print(f"| {task} | {model} | {gpu} | {exit_layer} | {gamma} | {rate:.3f} | {published:.2f}x | {predicted:.2f}x | {error:+.1%} | {source} |")
print(f"\nmedian absolute error: {statistics.median(abs(r[8]) for r in speedups):.1%}")
everything = [abs(r[5]) for r in rates] + [abs(r[8]) for r in speedups]
print(f"median absolute error over all {len(everything)} comparisons: {statistics.median(everything):.1%}")
