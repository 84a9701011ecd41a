"""Bad input through the CLI: one line on stderr, exit code 2, no traceback.

One case runs the real `cli.py` in a subprocess to prove it end to end; the rest call
cli.main() (the console script's entry point) in-process, which is what users run.
(Unknown GPU profiles and `--device cuda` without a GPU are tested in test_hardware.py.)
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_main(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_real_process_one_line_exit_2():
    proc = subprocess.run([sys.executable, "cli.py", "predict", "--model", "lama-3.1-8b", "--gpu", "a10g",
                           "--method", "autoregressive"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "unknown model 'lama-3.1-8b' (did you mean: llama-3.1-8b" in one_error_line(proc.stderr)


@pytest.mark.parametrize(
    "model, message",
    [
        ("mistral-8b", "unknown model 'mistral-8b' (did you mean: mistral-7b"),
        ("./no/such/model", "./no/such/model: no such file or directory"),
        ("missing/config.json", "missing/config.json: no such file or directory"),
    ],
)
def test_bad_model_names_and_paths(capsys, model, message):
    code, out, err = run_main(["predict", "--model", model, "--gpu", "a10g", "--method", "autoregressive"], capsys)
    assert code == 2 and out == ""
    assert message in one_error_line(err)


def test_model_dir_without_config_and_bad_config(tmp_path, capsys):
    code, _, err = run_main(["predict", "--model", str(tmp_path), "--gpu", "a10g", "--method", "autoregressive"], capsys)
    assert code == 2 and "no config.json in this directory" in one_error_line(err)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    code, _, err = run_main(["predict", "--model", str(tmp_path), "--gpu", "a10g", "--method", "autoregressive"], capsys)
    assert code == 2 and "model_type 'bert' is not a decoder-only causal LM" in one_error_line(err)


def test_yaml_syntax_error_gives_line(tmp_path, capsys):
    bad = tmp_path / "plan.yaml"
    bad.write_text("schema_version: 1\nmodel: {name: x\n")
    code, out, err = run_main(["export", "--plan", str(bad), "--to", "vllm"], capsys)
    assert code == 2 and out == ""
    assert f"{bad}: line 3:" in one_error_line(err)


def test_card_yaml_syntax_error_gives_line(tmp_path, capsys):
    bad = tmp_path / "card.yaml"
    bad.write_text("name: x\nconfig:\n  hidden_size: 64\n   vocab_size: 10\n")
    code, _, err = run_main(["predict", "--model", str(bad), "--gpu", "a10g", "--method", "autoregressive"], capsys)
    assert code == 2 and f"{bad}: line 4:" in one_error_line(err)


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "--quick-ish"], "No such option '--quick-ish'. Did you mean '--quick'? (see 'specplan profile --help')"),
        (["modles"], "No such command 'modles'"),
        (["predict", "--method", "autoregressive"], "Missing option '--model'"),
        (["predict", "--model", "x", "--gpu", "a10g", "--method", "hydra"], "Invalid value for '--method'"),
    ],
)
def test_click_usage_errors_are_one_line(capsys, args, message):
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == ""
    assert message in one_error_line(err)


def test_help_version_and_bare_command_exit_0(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "Usage: specplan" in out and "models" in out
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == "specplan, version 0.1.0"
    code, out, _ = run_main([], capsys)
    assert code == 0 and "Usage: specplan" in out
    code, out, _ = run_main(["models", "--help"], capsys)
    assert code == 0 and "specplan models" in out
