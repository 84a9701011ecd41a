"""Bad input through the real CLI: one line on stderr, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "cli.py", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "--model", "lama-3.1-8b", "--gpu", "a10g"], "unknown model 'lama-3.1-8b' (did you mean: llama-3.1-8b"),
        (["predict", "--model", "llama-3.1-8b", "--gpu", "a10", "--method", "autoregressive"], "unknown GPU profile 'a10' (did you mean: a10g"),
        (["run", "--plan", "missing-plan.yaml", "--prompt", "hi"], "missing-plan.yaml: no such file"),
    ],
)
def test_one_line_exit_2(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_yaml_gives_line(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("schema_version: 1\nmodel: {name: x\n")
    proc = run_cli("run", "--plan", str(bad), "--prompt", "hi")
    assert proc.returncode == 2 and "line 3" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help_and_version_exit_0():
    assert run_cli("--help").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout


def test_usage_error_exit_2():
    proc = run_cli("profile", "--quick-ish")
    assert proc.returncode == 2 and "No such option" in proc.stderr
