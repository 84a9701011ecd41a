"""The library's public surface, as the README shows it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_wheel_installs_one_top_level_package_with_all_its_data(tmp_path):
    """site-packages gets `planner` (its command line and shipped data inside) and nothing with a
    generic name such as `cli` or `profiles`; every data file of planner/profiles and the lean
    kernel's C++ source are in it."""
    import importlib.util
    import shutil
    import zipfile

    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building a wheel offline needs setuptools in this environment")
    source = tmp_path / "src"
    shutil.copytree(REPO / "planner", source / "planner", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"planner"}
    data = {p.relative_to(source).as_posix() for p in (source / "planner" / "profiles").rglob("*") if p.is_file()}
    assert data <= set(names), sorted(data - set(names))
    kernel = {p.relative_to(source).as_posix() for p in (source / "planner" / "runtime" / "csrc").iterdir() if p.is_file()}
    assert {"planner/runtime/csrc/lean_linear.cpp", "planner/runtime/csrc/lean_vec.h"} <= kernel <= set(names), \
        sorted(kernel - set(names))  # every source and header the build compiles
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "specplan = planner.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
