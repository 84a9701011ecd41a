"""Print the published-figure comparison table (markdown) for BENCHMARKS.md.

    python bench/published.py
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_published import prediction_errors  # noqa: E402

rows = prediction_errors()
print("| model | GPU | weights | published tok/s | predicted tok/s | error | source |")
print("| --- | --- | --- | ---: | ---: | ---: | --- |")
for model, gpu, quant, published, predicted, error, source in rows:
    print(f"| {model} | {gpu} | {quant} | {published:.1f} | {predicted:.1f} | {error:+.1%} | {source} |")
print(f"\nmedian absolute error: {statistics.median(abs(r[5]) for r in rows):.1%}")
