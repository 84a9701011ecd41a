"""Running a plan: load the checkpoint, quantize, draft, verify losslessly, measure.

run.py imports torch only inside run_plan, so `import planner.runtime` stays cheap.
"""

from planner.runtime.run import RunReport, read_prompts, run_plan

__all__ = ["run_plan", "read_prompts", "RunReport"]
