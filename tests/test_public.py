"""The library's public surface, as the README shows it."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_library_example() -> str:
    section = (REPO / "README.md").read_text().split("## As a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs_without_torch():
    code = _readme_library_example() + "import sys\nassert 'torch' not in sys.modules, 'planning imported torch'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Decoding(method=")


def test_public_names_are_the_functions_even_after_importing_the_plan_package():
    code = ("import planner.plan, planner.plan.schema\n"
            "from planner.plan import Plan\n"
            "from planner import plan, predict, run_plan, load_model_spec, load_profile\n"
            "import planner, inspect\n"
            "assert all(inspect.isfunction(f) for f in (plan, predict, run_plan, load_model_spec, load_profile))\n"
            "assert planner.plan is plan and sys.modules['planner.plan'].Plan is Plan\n")
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
