"""A plan's free text cannot escape into a command: every field carries a newline and a
command substitution, and the exported scripts parse, hold the payload only inside
comments and quotes, and run (engine binaries stubbed) without executing it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from planner.plan.export import export_plan
from planner.plan.schema import Decoding, HardwareRef, ModelRef
from tests._export_support import ENGINE_BINARY, SCHEDULE, engine_args, make_plan, run_script

PAYLOAD = "evil\n$(touch pwned)`touch pwned`'\"; touch pwned #\r\u2028end"


def _payload_plan():
    return make_plan(
        Decoding(method="draft_model", gamma=4, draft_model=f"org/draft{PAYLOAD}"),
        schedule=SCHEDULE,
        model=ModelRef(name=f"name{PAYLOAD}", source=f"org/model{PAYLOAD}", num_layers=32, vocab_size=128256),
        hardware=HardwareRef(profile=f"profile{PAYLOAD}", device_name=f"device{PAYLOAD}"),
    )


_HARMLESS_DOUBLE_QUOTED = re.compile(r"'|\$\w+|\$\{\w+(:-)?\}|\\")  # "'" from shlex.quote, "$NAME", "${NAME:-}"


def _outside_comments_and_quotes(text: str) -> str:
    """What the shell runs as code: comments, single-quoted text and harmless double-quoted words removed.

    Double-quoted text is kept (it expands $(...)) unless it is a plain variable reference."""
    kept, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            kept.append(text[i:i + 2])
            i += 2
        elif char == "'":
            i = text.index("'", i + 1) + 1
        elif char == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            inner = text[i + 1:end]
            if not _HARMLESS_DOUBLE_QUOTED.fullmatch(inner):
                kept.append(inner)
            i = end + 1
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;"):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        else:
            kept.append(char)
            i += 1
    return "".join(kept)


def _shell_exports():
    plan = _payload_plan()
    return {engine: export_plan(plan, engine, engine_version="1.2.1" if engine == "trtllm" else None,
                                plan_label=f"plan{PAYLOAD}.yaml").text  # the plan's path as given on the command line
            for engine in ENGINE_BINARY}


@pytest.mark.parametrize("engine", ENGINE_BINARY)
def test_payload_stays_in_comments_and_quotes(engine):
    text = _shell_exports()[engine]
    assert subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0
    assert "touch pwned" in text  # the payload is there ...
    assert "touch pwned" not in _outside_comments_and_quotes(text)  # ... but only where it cannot run
    assert all(line.startswith("#") for line in text.splitlines() if "device" in line and "evil" in line)


def _fake_python(tmp_path):
    """python3 whose `-c` (llama.cpp's download step) prints a checkpoint directory; the rest is real python."""
    bin_dir = tmp_path / "pybin"
    bin_dir.mkdir()
    checkpoint = tmp_path / "downloaded"
    checkpoint.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then echo {checkpoint}; exit 0; fi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("engine", ENGINE_BINARY)
def test_running_the_script_never_runs_the_payload(engine, tmp_path):
    env = {"CONFIG": str(tmp_path / "options.yaml")}
    if engine == "llamacpp":
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{_fake_python(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    if engine == "trtllm":  # the payload's quote cannot go into the YAML: the script stops, then runs without it
        result = run_script(_shell_exports()[engine], tmp_path, env)
        assert result.returncode == 2 and not list(tmp_path.rglob("pwned"))
        env["DRAFT_MODEL"] = "org/draft"
    result = run_script(_shell_exports()[engine], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.rglob("pwned"))
    args = engine_args(tmp_path, ENGINE_BINARY[engine])
    if engine == "trtllm":
        assert args[0] == f"org/model{PAYLOAD}"  # the model reached the engine as one word, unchanged
    elif engine == "vllm":
        assert args[1] == f"org/model{PAYLOAD}"
    elif engine == "sglang":
        assert args[args.index("--model-path") + 1] == f"org/model{PAYLOAD}"


def test_trtllm_refuses_a_draft_model_that_would_break_its_yaml(tmp_path):
    """The draft model goes into a double-quoted YAML string: a quote in it stops the script."""
    text = export_plan(make_plan(schedule=SCHEDULE), "trtllm").text
    result = run_script(text, tmp_path, {"DRAFT_MODEL": 'a"b', "CONFIG": str(tmp_path / "o.yaml")})
    assert result.returncode == 2 and "must not contain quotes" in result.stderr
    assert not (tmp_path / "bin" / "trtllm-serve.args").exists()


def test_transformers_file_keeps_the_payload_in_strings_and_comments():
    text = export_plan(_payload_plan(), "hf", plan_label=f"plan{PAYLOAD}.yaml").text
    module = ast.parse(text)
    clean = ast.parse(export_plan(make_plan(schedule=SCHEDULE), "hf").text)
    assert [type(node) for node in module.body] == [type(node) for node in clean.body]  # no statement added
    values = {node.targets[0].id: node.value for node in module.body if isinstance(node, ast.Assign)}
    assert ast.literal_eval(values["MODEL"].values[1]) == f"org/model{PAYLOAD}"
    assert ast.literal_eval(values["DRAFT_MODEL"].values[1]) == f"org/draft{PAYLOAD}"


def test_checks_catch_an_unescaped_header(tmp_path):
    """Negative control: a header line that lets the newline through is caught by both checks."""
    text = export_plan(make_plan(), "vllm").text.replace("# plan: ", f"# plan: {PAYLOAD}", 1)
    assert "touch pwned" in _outside_comments_and_quotes(text)
    run_script(text, tmp_path)
    assert (tmp_path / "pwned").exists()
