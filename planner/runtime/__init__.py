"""Running a plan: load the checkpoint, quantize, draft, verify losslessly, measure.

run.py imports torch only inside its functions, so `import planner.runtime` stays cheap.
"""

from planner.runtime.run import (
    Comparison, DecodingBench, RunReport, compare_decodings, read_grouped_prompts, read_prompts, run_plan,
)

__all__ = ["run_plan", "compare_decodings", "DecodingBench", "read_prompts", "read_grouped_prompts", "RunReport", "Comparison"]
