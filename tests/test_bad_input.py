"""Bad input anywhere: exit code 2, at most two lines on stderr, no traceback, nothing written.

First the audit's cases one by one (options, profiles, plan files, Optuna storages, Ctrl-C),
then hypothesis generating malformed option values for predict, plan, profiles and models,
and malformed fields (and whole files) for hardware profiles and plan files.
"""

from __future__ import annotations

import copy
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cli import cli
from planner.hardware import load_profile
from planner.hardware import profile as profile_module
from planner.plan import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction
from planner.profiles import PROFILES_DIR

REPO = Path(__file__).resolve().parents[1]
PREDICT = ["predict", "--model", "llama-3.1-8b", "--gpu", "a10g"]  # 32 layers, 131072 positions
EXAMPLES = settings(max_examples=25, deadline=None)


def _snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def refused(args, folder: Path) -> str:
    """Run the CLI; assert it refused in at most two stderr lines and wrote nothing in `folder`."""
    before = _snapshot(folder)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert "Traceback" not in result.output and result.stdout == "", (args, result.output)
    assert 1 <= len(result.stderr.strip().splitlines()) <= 2, (args, result.stderr)
    assert _snapshot(folder) == before, args
    return result.stderr


@contextmanager
def _folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


# ---------------------------------------------------------------- the audit's cases


@pytest.mark.parametrize("args, message", [
    (["--method", "s3d", "--acceptance", "nan"], "'nan' is not a finite number"),
    (["--method", "s3d", "--skip-ratio", "nan"], "'nan' is not a finite number"),
    (["--method", "layer_skip", "--skip-layers", "20-10"], "the range 20-10 runs backwards"),
    (["--method", "layer_skip", "--skip-layers", "5,5,5,5"], "layer 5 is listed twice"),
    (["--method", "s3d", "--skip-ratio", "0.001"], "--skip-ratio 0.001 skips 0 of the 32 layers"),
    (["--method", "s3d", "--skip-ratio", "0.999"], "a centred block skips 1 to 30"),
    (["--method", "s3d", "--skip-layers", "0-31"], "skips all 32 layers"),
    (["--method", "s3d", "--context", "200000"], "--context 200000 is beyond the 131072 positions of llama-3.1-8b"),
    (["--method", "early_exit", "--skip-ratio", "0.3"], "--skip-ratio does not apply to --method early_exit"),
    (["--method", "autoregressive", "--gamma", "3"], "--gamma does not apply to --method autoregressive"),
    (["--method", "draft_model"], "--method draft_model needs --draft-model"),
    (["--method", "autoregressive", "--acceptance", "0.9"], "--acceptance does not apply to --method autoregressive"),
    (["--method", "s3d", "--acceptance", ",".join(["0.5"] * 30) + ",x"], "'x' (in '0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,"
                                                                          "0.5,0.5,0.5,0.5,0.5,0...')"),  # not echoed whole
    # an engine given to predict refuses what it cannot serve, as plan --engine does
    (["--method", "s3d", "--engine", "vllm"], "vLLM cannot run s3d"),
    (["--method", "autoregressive", "--engine", "llamacpp", "--quant", "fp8"], "cannot apply fp8 weight quantization"),
    (["--method", "autoregressive", "--engine", "hf", "--quant", "int4"], "transformers cannot apply int4"),
    (["--method", "draft_model", "--draft-model", "llama-3.2-1b", "--draft-quant", "int4", "--engine", "vllm"],
     "vLLM cannot apply int4 weight quantization to the draft"),
    (["--method", "autoregressive", "--engine", ""], "unknown engine ''"),
])
def test_predict_options(tmp_path, args, message):
    assert message in refused(PREDICT + args, tmp_path)


def test_draft_with_another_vocabulary_is_refused(tmp_path):
    err = refused(["predict", "--model", "qwen2.5-7b", "--gpu", "l4", "--method", "draft_model",
                   "--draft-model", "qwen2.5-0.5b"], tmp_path)
    assert "qwen2.5-0.5b has a vocabulary of 151936 tokens and qwen2.5-7b one of 152064" in err


def test_predict_refuses_a_set_up_over_the_budget_with_its_figures(tmp_path):
    err = refused(["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--method", "autoregressive"], tmp_path)
    assert ("llama-3.1-70b on h100-sxm (autoregressive, none) at context 2048 and batch 1 needs 132.80 GiB (weights "
            "131.42, kv cache 0.63, runtime 0.75), over the 79.6 GiB budget") in err
    err = refused(PREDICT + ["--method", "autoregressive", "--vram-gib", "12"], tmp_path)
    assert "needs 15.96 GiB" in err and "over the 12.0 GiB budget" in err


@pytest.mark.parametrize("command", [PREDICT + ["--method", "autoregressive"], ["plan", "--model", "llama-3.1-8b", "--gpu",
                                                                                "a10g", "--trials", "5"]])
def test_a_budget_above_the_device_is_refused(tmp_path, command):
    err = refused(command + ["--vram-gib", "500", *(["--out", tmp_path / "p.yaml"] if "plan" in command else [])], tmp_path)
    assert "--vram-gib 500 is above the 22.5 GiB of a10g" in err


def test_a_fleet_budget_above_one_of_its_gpus_is_refused(tmp_path):
    err = refused(["plan", "--model", "llama-3.2-1b", "--gpus", "a10g,h100-sxm", "--vram-gib", "40", "--trials", "5",
                   "--out-dir", tmp_path / "d"], tmp_path)
    assert "--vram-gib 40 is above the 22.5 GiB of a10g" in err


def test_the_library_refuses_a_context_beyond_the_model_too():
    from planner.errors import InputError
    from planner.models import load_model_spec
    from planner.search import SearchRequest, search

    with pytest.raises(InputError, match="`context` 8192 is beyond the 4096 positions of llama-2-7b"):
        search(load_model_spec("llama-2-7b"), load_profile("a10g"), SearchRequest(context=8192, trials=5))


@pytest.mark.parametrize("gpu", ["t4", "l4", "a10g", "a100-40gb"])
def test_nothing_fits_suggests_only_a_budget_the_gpu_holds(tmp_path, gpu):
    """A budget the hint names fits the device it names; where none does, it says what would."""
    import re

    memory = load_profile(gpu).memory_gib
    for model, budget in (("llama-3.1-8b", "2"), ("llama-3.1-70b", None), ("llama-2-13b", None)):
        options = ["--vram-gib", budget] if budget else []
        result = CliRunner().invoke(cli, ["plan", "--model", model, "--gpu", gpu, "--trials", "5",
                                          "--out", tmp_path / "p.yaml", *options])
        if result.exit_code == 0:
            continue
        assert "nothing fits" in result.stderr, result.stderr
        named = re.search(r"use --vram-gib ([\d.]+) or more", result.stderr)
        if named:
            assert float(named.group(1)) <= memory, result.stderr
        else:
            assert f"more than the {memory:.1f} GiB of {gpu}" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--vram-gib", "nan"], "'nan' is not a finite number"),
    (["--vram-gib", "inf"], "'inf' is not a finite number"),
    (["--context", "200000"], "is beyond the 131072 positions"),
    (["--plot", "{tmp}/chart.jpg"], "expected a .png, .svg or .pdf file name"),
    (["--plot", "{tmp}/no/dir/chart.png"], "cannot write (no directory"),
    (["--storage", "not a url", "--study", "s"], "--storage 'not a url': neither a database URL nor a journal file"),
    (["--storage", "nosuchdb://host/x", "--study", "s"], "SQLAlchemy knows no database 'nosuchdb'"),
    (["--storage", "sqlite:///{tmp}/no/dir/study.db", "--study", "s"], "no directory {tmp}/no/dir"),
    (["--storage", "{tmp}/no/dir/study.log", "--study", "s"], "no directory {tmp}/no/dir"),
    (["--storage", "study.db", "--study", "s"], "a database needs a URL: sqlite:///study.db"),
    (["--storage", "sqlite:///{tmp}/study.db"], "--storage needs --study"),
    (["--batch-sizes", "1,,2"], "an empty item"),
    (["--batch-sizes", ""], "an empty item"),
    (["--batch-sizes", ","], "an empty item"),
    (["--batch-sizes", "0,2"], "batch sizes must be positive"),
])
def test_plan_options(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    err = refused(["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "5",
                   "--out", tmp_path / "plan.yaml", *args], tmp_path)
    assert message.replace("{tmp}", str(tmp_path)) in err


@pytest.mark.parametrize("command", [["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "5"], ["tune"]])
@pytest.mark.parametrize("methods", ["", " ", " , ,"])
def test_an_empty_method_list_is_refused_not_read_as_every_method(tmp_path, monkeypatch, command, methods):
    import planner.tune  # noqa: F401  (the package; `planner.tune` the attribute is its function)

    monkeypatch.setattr(sys.modules["planner.tune"], "tune", lambda *a, **k: pytest.fail("tuned with an empty --methods"))
    err = refused([*command, "--methods", methods, "--out", tmp_path / "plan.yaml"], tmp_path)
    assert "Invalid value for '--methods'" in err and "name at least one method" in err


@pytest.mark.parametrize("option", [["--objective", "pareto"], ["--storage", "sqlite:///x.db", "--study", "s"],
                                    ["--skip-pattern", "any"]])
def test_fleet_refuses_what_it_would_ignore(tmp_path, option):
    err = refused(["plan", "--model", "llama-3.1-8b", "--gpus", "a10g,l4", "--out-dir", tmp_path / "d", *option], tmp_path)
    assert "--gpus plans each GPU for speed in one process" in err


def test_storage_that_is_no_database_or_journal(tmp_path):
    (tmp_path / "junk.db").write_text("not a database " * 100)
    (tmp_path / "junk.log").write_text("not a journal\n")
    base = ["plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", "5", "--study", "s", "--out", tmp_path / "p.yaml"]
    assert "file is not a database" in refused(base + ["--storage", f"sqlite:///{tmp_path}/junk.db"], tmp_path)
    assert "not an Optuna journal" in refused(base + ["--storage", tmp_path / "junk.log"], tmp_path)


def test_a_shared_study_keeps_to_its_search(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    base = ["plan", "--model", "llama-3.2-1b", "--trials", "3", "--storage", storage, "--study", "s"]
    first = CliRunner().invoke(cli, base + ["--gpu", "a10g", "--out", tmp_path / "a.yaml"])
    assert first.exit_code == 0, first.output
    assert "holds another search (gpu 'a10g', not 'l4')" in refused(base + ["--gpu", "l4", "--out", tmp_path / "b.yaml"], tmp_path)
    err = refused(base + ["--gpu", "a10g", "--objective", "pareto", "--out", tmp_path / "b.yaml"], tmp_path)
    assert "was made for 1 objective(s), not 2" in err


def test_a_journal_file_is_a_storage(tmp_path):
    base = ["plan", "--model", "llama-3.2-1b", "--gpu", "a10g", "--trials", "3", "--storage", tmp_path / "study.log",
            "--study", "s", "--out", tmp_path / "plan.yaml"]
    assert CliRunner().invoke(cli, base).exit_code == 0
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["search"]["trials"] == 3
    assert CliRunner().invoke(cli, base).exit_code == 0
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["search"]["trials"] == 6  # resumed


def _profile_file(folder: Path, text: str | bytes) -> Path:
    path = folder / "gpu.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("edit, message", [
    (("token_slope: 0.01", "token_slope: -5"), "gpu.yaml: token_slope: must not be negative, got -5.0"),
    (("token_slope: 0.01", "token_slope: 0.01\nrow_us_per_mparam: 1.0e+300"),
     "gpu.yaml: row_us_per_mparam: 1e+300 us is more than a second: not a figure of a device"),
    (("kernel_launch_us: 6.0", "kernel_launch_us: 2000000.0"),
     "gpu.yaml: kernel_launch_us: 2000000.0 us is more than a second: not a figure of a device"),
    (("memory_gib: 22.5", "memory_gib: .nan"), "gpu.yaml: memory_gib: must be a finite number, got nan"),
    (("  bf16: 70.0", "  bf16: .inf"), "gpu.yaml: peak_tflops.bf16: must be a finite number, got inf"),
    (("bandwidth_gbps: 600", "bandwidth_gbps: fast"), "gpu.yaml: bandwidth_gbps: expected a number, got str 'fast'"),
    (("bandwidth_gbps: 600", "bandwidth_gbps: 0"), "gpu.yaml: bandwidth_gbps: must be positive, got 0.0"),
    (("compute_efficiency: 0.65", "compute_efficiency: 1.5"), "compute_efficiency: must be a fraction of the peak"),
    (("kind: gpu", "kind: tpu"), "gpu.yaml: kind: 'tpu' is not one of gpu, cpu"),
    (("token_slope: 0.01", "token_slope: 0.01\ntoken_slope: 0.02"), "gpu.yaml: line 19: 'token_slope' is given twice"),
    (("allreduce_latency_us: 19.4", "allreduce_latency_us: {2: 6.0, 8: -1}"),
     "gpu.yaml: allreduce_latency_us.8: must not be negative, got -1.0"),
    (("allreduce_latency_us: 19.4", "allreduce_latency_us: {1: 5.0, 4: 19.4}"),
     "gpu.yaml: allreduce_latency_us.1: a GPU count must be 2 or more (one GPU does no all-reduce)"),
    (("allreduce_latency_us: 19.4", "allreduce_latency_us: {}"),
     "gpu.yaml: allreduce_latency_us: must be a number or map GPU counts to microseconds"),
    (("allreduce_latency_us: 19.4", "allreduce_latency_us: fast"),
     "gpu.yaml: allreduce_latency_us: expected a number, got str 'fast'"),
])
def test_profile_fields(tmp_path, edit, message):
    text = (PROFILES_DIR / "gpus" / "a10g.yaml").read_text()
    assert edit[0] in text
    path = _profile_file(tmp_path, text.replace(edit[0], edit[1], 1))
    assert message in refused(PREDICT[:3] + ["--gpu", path, "--method", "s3d"], tmp_path)


def test_profile_that_is_not_utf8(tmp_path):
    path = _profile_file(tmp_path, b"name: \xff\n")
    assert "gpu.yaml: line 1: not UTF-8 text (byte 0xff)" in refused(PREDICT[:3] + ["--gpu", path, "--method", "s3d"], tmp_path)


def _plan_dict() -> dict:
    prediction = Prediction(basis="analytical", tokens_per_s=150.0, speedup=1.5, tokens_per_iteration=2.5, acceptance=0.7,
                            target_latency_ms=10.0, draft_latency_ms=2.0, iteration_ms=12.0, vram_gib=20.0)
    return Plan(model=ModelRef(name="llama-3.1-8b", source="meta-llama/Llama-3.1-8B", num_layers=32, vocab_size=128256),
                hardware=HardwareRef(profile="h100-sxm", device_name="NVIDIA H100 80GB HBM3"),
                decoding=Decoding(method="prompt_lookup", gamma=3), prediction=prediction).to_dict()


def _export(folder: Path, plan: dict | bytes) -> list:
    path = folder / "plan.yaml"
    path.write_bytes(plan if isinstance(plan, bytes) else yaml.safe_dump(plan).encode())
    return ["export", "--plan", path, "--to", "vllm", "--out", folder / "serve.sh"]


def test_the_plan_the_properties_break_exports(tmp_path):
    assert CliRunner().invoke(cli, _export(tmp_path, _plan_dict())).exit_code == 0


@pytest.mark.parametrize("section, field, value, message", [
    ("prediction", "vram_gib", float("nan"), "plan.yaml: prediction.vram_gib: must be a finite number, got nan"),
    ("prediction", "tokens_per_s", float("inf"), "plan.yaml: prediction.tokens_per_s: must be a finite number"),
    ("constraints", "vram_gib", -3.0, "plan.yaml: constraints.vram_gib: must be positive, got -3.0"),
    ("model", "name", "", "plan.yaml: model.name: must not be empty"),
])
def test_plan_fields(tmp_path, section, field, value, message):
    plan = _plan_dict()
    plan[section][field] = value
    assert message in refused(_export(tmp_path, plan), tmp_path)


def test_plan_that_is_not_utf8_or_not_yaml(tmp_path):
    assert "not UTF-8 text" in refused(_export(tmp_path, b"schema_version: 1\nmodel: \xe9\n"), tmp_path)
    assert "plan.yaml: month must be in 1..12" in refused(_export(tmp_path, b"schema_version: 2001-13-01\n"), tmp_path)


def _trial_states(study: Path) -> dict:
    try:
        with sqlite3.connect(study, timeout=0.5) as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.Error:  # not created yet, or busy
        return {}


def test_ctrl_c_during_plan_prints_one_line_exits_130_and_writes_nothing(tmp_path):
    """A long search, interrupted once trials complete in its stored study (so it is searching)."""
    out, study = tmp_path / "plan.yaml", tmp_path / "study.db"
    proc = subprocess.Popen([sys.executable, "cli.py", "plan", "--model", "llama-3.2-1b", "--gpu", "a10g",
                             "--trials", "1000000", "--storage", f"sqlite:///{study}", "--study", "s", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while _trial_states(study).get("COMPLETE", 0) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr == "interrupted\n" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.db"]  # no plan, no temporary file
    states = _trial_states(study)  # stopped between trials: none left running or failed
    assert states.get("COMPLETE") and not states.keys() & {"RUNNING", "FAIL"}, states


# A loader slowed inside transformers' from_pretrained, in the block whose `finally` logs its
# multi-line load report (here: a checkpoint with a missing weight), and a flag file once there.
_SLOW_LOAD = """
import pathlib, sys, time
from transformers import PreTrainedModel
initialize = PreTrainedModel._initialize_missing_keys
def slow(self, *args, **kwargs):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(60)
    return initialize(self, *args, **kwargs)
PreTrainedModel._initialize_missing_keys = slow
from planner.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def holed_model(rt_models, tmp_path_factory):
    """The tiny llama without one weight: transformers reports it when loading."""
    import shutil

    from safetensors.torch import load_file, save_file

    holed = tmp_path_factory.mktemp("holed") / "llama"
    shutil.copytree(rt_models["llama"], holed)
    weights = load_file(holed / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, holed / "model.safetensors", metadata={"format": "pt"})
    return holed


@pytest.mark.parametrize("command", ["run", "adapt", "autotune"])
def test_ctrl_c_while_a_model_loads_prints_one_line_and_exits_130(holed_model, tmp_path, command):
    plan, out, loading = tmp_path / "plan.yaml", tmp_path / "out", tmp_path / "loading"
    (tmp_path / "prompts.txt").write_text("hello world\n")
    Plan(model=ModelRef(name="holed", source=str(holed_model), num_layers=4, vocab_size=128),
         hardware=HardwareRef(profile="cpu-local", device_name="cpu"), decoding=Decoding("layer_skip", gamma=2, skip_layers=(1, 2)),
         prediction=Prediction(basis="analytical", tokens_per_s=1.0, speedup=1.0, tokens_per_iteration=1.0, acceptance=0.5,
                               target_latency_ms=1.0, draft_latency_ms=1.0, iteration_ms=1.0, vram_gib=0.01),
         constraints=Constraints(context=256)).save(plan)  # within the model's 512 positions
    args = {"run": ["run", "--plan", str(plan), "--prompt", "hello", "--device", "cpu", "--dtype", "fp32"],
            "adapt": ["adapt", "--model", str(holed_model), "--prompts", str(tmp_path / "prompts.txt"), "--skip-layers", "1-2",
                      "--gamma", "2", "--steps", "1", "--out", str(out)],
            "autotune": ["autotune", "--model", str(holed_model), "--prompts", str(tmp_path / "prompts.txt"), "--device", "cpu",
                         "--trials", "5", "--out", str(out)]}[command]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_LOAD, str(loading), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 300  # a busy shared machine: autotune profiles it first
    while not loading.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if not loading.exists():
        proc.kill()
        pytest.fail(f"never reached the weights' loading: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    logged = stderr.splitlines()[:-1]  # autotune says what it does before loading: profiling, opening its study
    assert stderr.endswith("\ninterrupted\n" if logged else "interrupted\n"), stderr
    assert all(line.startswith(("profiling", "study ")) for line in logged), stderr
    assert stdout == "" and not out.exists()


# ---------------------------------------------------------------- generated bad input

_NOT_A_NUMBER = st.text(alphabet="bcdxyz!#%&*()[]{};:<>?|~ ", min_size=1)  # no digits, no 'nan'/'inf' letters
_NON_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"])


def _ints_outside(low: int, high: int):
    return st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1)).map(str)


def _floats_outside(low: float, high: float, *, closed: bool):
    """Finite floats outside [low, high] (closed) or (low, high), as text. The margins keep
    hypothesis's -0.0, which equals 0.0, out of an open end."""
    margin = 1e-9 if closed else 0.0
    below = st.floats(max_value=low - margin, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=high + margin, allow_nan=False, allow_infinity=False)
    return st.one_of(below, above).map(repr)


def _backwards_range():
    return st.tuples(st.integers(1, 31), st.integers(0, 30)).filter(lambda t: t[0] > t[1]).map(lambda t: f"{t[0]}-{t[1]}")


def _repeated_layers():
    return st.lists(st.integers(0, 31), min_size=1, max_size=4).map(lambda ls: ",".join(map(str, ls + ls[:1])))


_PREDICT_BAD = {  # option: (method it applies to, malformed values)
    "--acceptance": ("s3d", st.one_of(_floats_outside(0, 1, closed=True), _NON_FINITE, _NOT_A_NUMBER)),
    "--skip-ratio": ("s3d", st.one_of(_floats_outside(0, 1, closed=False), _NON_FINITE, _NOT_A_NUMBER,
                                      st.floats(0.0001, 0.015).map(repr), st.floats(0.985, 0.9999).map(repr))),
    "--gamma": ("s3d", st.one_of(_ints_outside(1, 16), _NOT_A_NUMBER, st.just("2.5"))),
    "--context": ("s3d", st.one_of(_ints_outside(1, 131072), _NOT_A_NUMBER)),
    "--batch-size": ("s3d", st.one_of(st.integers(max_value=0).map(str), _NOT_A_NUMBER)),
    "--skip-layers": ("layer_skip", st.one_of(_backwards_range(), _repeated_layers(), _NOT_A_NUMBER,
                                              st.integers(32, 10**6).map(str), st.just("0-31"))),
    "--exit-layer": ("early_exit", st.one_of(_ints_outside(1, 31), _NOT_A_NUMBER)),
}


@EXAMPLES
@given(st.sampled_from(sorted(_PREDICT_BAD)).flatmap(lambda o: st.tuples(st.just(o), _PREDICT_BAD[o][1])))
def test_predict_refuses_generated_option_values(option_value):
    option, value = option_value
    with _folder() as folder:
        refused(PREDICT + ["--method", _PREDICT_BAD[option][0], f"{option}={value}"], folder)


_UNKNOWN_NAME = st.text(alphabet="ABCXYZ#%", min_size=1, max_size=8)  # never a method, engine or GPU

_PLAN_BAD = {
    "--vram-gib": st.one_of(st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr), _NON_FINITE,
                            _NOT_A_NUMBER),
    "--context": st.one_of(_ints_outside(1, 131072), _NOT_A_NUMBER),
    "--trials": st.one_of(st.integers(max_value=0).map(str), _NOT_A_NUMBER),
    "--batch-sizes": st.one_of(st.tuples(st.integers(2, 512), st.integers(1, 511)).filter(lambda t: t[0] > t[1])
                               .map(lambda t: f"{t[0]}-{t[1]}"), st.integers(max_value=0).map(str), _NOT_A_NUMBER),
    "--methods": _UNKNOWN_NAME,
    "--engine": _UNKNOWN_NAME,
    "--gpu": _UNKNOWN_NAME,
    "--skip-pattern": _UNKNOWN_NAME,
    "--objective": _UNKNOWN_NAME,
    "--seed": _NOT_A_NUMBER,
    "--storage": st.one_of(_NOT_A_NUMBER, _UNKNOWN_NAME.map(lambda n: f"{n}.db"),
                           _UNKNOWN_NAME.map(lambda n: f"nosuch{n.lower()}://host/db")),
}


@EXAMPLES
@given(st.sampled_from(sorted(_PLAN_BAD)).flatmap(lambda o: st.tuples(st.just(o), _PLAN_BAD[o])))
def test_plan_refuses_generated_option_values(option_value):
    option, value = option_value
    with _folder() as folder:
        args = {"--gpu": "a10g", "--trials": "3", "--study": "s", option: value}
        refused(["plan", "--model", "llama-3.1-8b", "--out", folder / "plan.yaml",
                 *[f"{k}={v}" for k, v in args.items()]], folder)


@EXAMPLES
@given(st.sampled_from(["profiles", "models"]),
       st.one_of(_UNKNOWN_NAME.map(lambda n: f"--{n}"), _UNKNOWN_NAME))
def test_listing_commands_refuse_unknown_options_and_arguments(command, argument):
    with _folder() as folder:
        refused([command, argument], folder)


_PROFILE_FIELDS = {  # field path: malformed values
    ("memory_gib",): st.one_of(st.floats(max_value=0), st.just(float("inf"))),
    ("bandwidth_gbps",): st.one_of(st.floats(max_value=0), st.just(float("nan"))),
    ("peak_tflops", "bf16"): st.one_of(st.floats(max_value=0), st.just(float("inf"))),
    ("quant_slowdown", "int4"): st.one_of(st.floats(max_value=0), st.just(float("nan"))),
    ("bandwidth_efficiency",): st.one_of(st.floats(max_value=0), st.floats(min_value=1, exclude_min=True)),
    ("compute_efficiency",): st.one_of(st.floats(max_value=0), st.floats(min_value=1, exclude_min=True)),
    ("kernel_launch_us",): st.floats(max_value=-1e-9),
    ("graph_kernel_us",): st.floats(max_value=-1e-9),
    ("token_slope",): st.floats(max_value=-1e-9),
    ("allreduce_latency_us",): st.one_of(st.floats(max_value=-1e-9), st.just({}), st.just({1: 5.0}),
                                         st.just({2: 6.0, 8: -1.0}), st.just({2: float("nan")})),
    ("kind",): _UNKNOWN_NAME,
    ("name",): st.just(""),
    ("peak_tflops",): st.one_of(st.just({}), st.just([1, 2]), _NOT_A_NUMBER),
}
_WRONG_TYPE = st.one_of(st.booleans(), st.lists(st.integers(), min_size=1, max_size=2))
_TEXT_FIELDS = {("kind",), ("name",), ("model", "name"), ("hardware", "profile"), ("decoding", "method"),
                ("decoding", "quant"), ("prediction", "basis")}


def _malformed(table: dict, path: tuple):
    """The field's own malformed values, or a value of the wrong type (text where a number belongs)."""
    if path == ("unknown_field",):
        return table[path]
    return st.one_of(table[path], _WRONG_TYPE if path in _TEXT_FIELDS else st.one_of(_WRONG_TYPE, _NOT_A_NUMBER))


def _set(data: dict, path: tuple, value) -> dict:
    data = copy.deepcopy(data)
    inner = data
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return data


@EXAMPLES
@given(st.sampled_from(sorted(_PROFILE_FIELDS)).flatmap(lambda p: st.tuples(st.just(p), _malformed(_PROFILE_FIELDS, p))),
       st.sampled_from(["predict", "profiles"]))
def test_profiles_with_generated_bad_fields_are_refused(field_value, command):
    path, value = field_value
    data = _set(load_profile("a10g").to_dict(), path, value)
    with _folder() as folder:
        profile = folder / "measured" / "gpu.yaml"
        profile.parent.mkdir()
        profile.write_text(yaml.safe_dump(data))
        with mock.patch.object(profile_module, "MEASURED_DIR", profile.parent):
            args = PREDICT[:3] + ["--gpu", profile, "--method", "s3d"] if command == "predict" else ["profiles"]
            assert ".".join(path) in refused(args, folder)


_PLAN_FIELDS = {
    ("schema_version",): st.one_of(st.integers(min_value=2), st.integers(max_value=0), st.booleans(), _NOT_A_NUMBER),
    ("model", "num_layers"): st.one_of(st.integers(max_value=0), st.floats(allow_nan=True)),
    ("model", "vocab_size"): st.one_of(st.integers(max_value=0), st.floats(allow_nan=True)),
    ("model", "name"): st.one_of(st.just(""), st.integers(), st.lists(st.integers(), min_size=1, max_size=2)),
    ("hardware", "profile"): st.one_of(st.just(" "), st.integers()),
    ("constraints", "context"): st.one_of(st.integers(max_value=0), st.floats(allow_nan=True)),
    ("constraints", "vram_gib"): st.one_of(st.floats(max_value=0), st.just(float("nan")), st.just(float("inf"))),
    ("decoding", "method"): _UNKNOWN_NAME,
    ("decoding", "quant"): _UNKNOWN_NAME,
    ("decoding", "gamma"): st.one_of(st.integers(max_value=0), st.integers(min_value=17), st.floats(allow_nan=True)),
    ("decoding", "ngram"): st.one_of(st.integers(max_value=0), st.floats(allow_nan=True)),
    ("decoding", "skip_layers"): st.lists(st.integers(), min_size=1, max_size=3),  # prompt_lookup skips none
    ("prediction", "acceptance"): st.one_of(st.floats(max_value=-1e-9),
                                            st.floats(min_value=1, exclude_min=True)),
    ("prediction", "tokens_per_s"): st.one_of(st.floats(max_value=-1e-9), st.just(float("inf"))),
    ("prediction", "vram_gib"): st.one_of(st.floats(max_value=0), st.just(float("nan"))),
    ("prediction", "basis"): _UNKNOWN_NAME,
    ("alternatives",): st.one_of(_NOT_A_NUMBER, st.just([{"method": "s3d"}])),
    ("unknown_field",): st.integers(),
}


@EXAMPLES
@given(st.sampled_from(sorted(_PLAN_FIELDS)).flatmap(lambda p: st.tuples(st.just(p), _malformed(_PLAN_FIELDS, p))))
def test_plan_files_with_generated_bad_fields_are_refused(field_value):
    path, value = field_value
    with _folder() as folder:
        refused(_export(folder, _set(_plan_dict(), path, value)), folder)


@EXAMPLES
@given(st.binary(max_size=200))
def test_any_bytes_as_a_plan_or_profile_are_refused(data):
    with _folder() as folder:
        refused(_export(folder, data), folder)
        refused(PREDICT[:3] + ["--gpu", _profile_file(folder, data), "--method", "s3d"], folder)


@pytest.mark.parametrize("command", [["plan", "--model", "llama-3.1-8b", "--gpu", "a10g"], ["autotune"]])
def test_an_unknown_quantization_in_an_allowed_set_is_refused(tmp_path, command):
    err = refused(command + ["--quant", "none,int3", "--out", tmp_path / "p.yaml"], tmp_path)
    assert "'int3' is not one of none, int8, int4" in err
