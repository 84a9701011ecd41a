"""Model sources (issue 12): a .gguf file converted once into a cached fp32 directory, a hub
id from the local cache, and every bad checkpoint, name or prompts file refused as one line
on stderr, exit code 2, nothing written, by every command that takes a model.

Tiny GGUF files (conftest's ck_write_gguf) keep these tests to seconds; the real SmolLM2
checkpoint is decoded in test_smollm2.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ck_write_gguf
from test_runtime_run import _cli, _plan

from planner.plan.schema import load_plan
from planner.runtime.checkpoint import local_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _one_line(code, out, err) -> str:
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_gguf_is_converted_once_into_a_cached_fp32_directory(ck_cache, tmp_path):
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = ck_write_gguf(tmp_path / "tiny.gguf", quantized=True)
    directory = Path(local_checkpoint(path))
    assert directory == ck_cache / "gguf" / hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {p.name for p in directory.iterdir()}
    weights = load_file(directory / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    q8 = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.1.attn_output.weight")
    assert q8.tensor_type == gguf.GGMLQuantizationType.Q8_0
    # dequantized into fp32 exactly as gguf itself does: nothing lost, nothing rounded again
    assert np.array_equal(weights["model.layers.1.self_attn.o_proj.weight"].numpy(), gguf.quants.dequantize(q8.data, q8.tensor_type))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template and tokenizer.eos_token == "</s>"

    # the same bytes under another name: the cached directory, not a second conversion
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    renamed = shutil.copy(path, tmp_path / "renamed.gguf")
    assert local_checkpoint(str(renamed)) == str(directory)
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (ck_cache / "gguf").iterdir()] == [directory.name]  # no temporary directory left


def test_concurrent_conversions_leave_one_complete_directory(ck_cache, tmp_path):
    path = ck_write_gguf(tmp_path / "tiny.gguf", seed=1)
    convert = f"from planner.runtime.checkpoint import local_checkpoint; print(local_checkpoint({path!r}))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", convert], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    directories = {out.strip() for out, _ in results}
    assert len(directories) == 1
    directory = Path(directories.pop())
    assert [p.name for p in (ck_cache / "gguf").iterdir()] == [directory.name]  # the loser's copy is gone
    assert json.loads((directory / "specplan-gguf.json").read_text())["gguf"] == str(Path(path).resolve())
    assert local_checkpoint(path) == str(directory)


def test_a_plan_made_from_a_gguf_records_it_and_runs_it(ck_cache, tmp_path, capsys):
    path = ck_write_gguf(tmp_path / "tiny.gguf", seed=2)
    code, out, err = _cli(["predict", "--model", path, "--gpu", "a10g", "--method", "autoregressive", "--context", "256", "--json"],
                          capsys)
    assert code == 0, err
    assert json.loads(out)["model"] == "tiny"
    plan_path = tmp_path / "plan.yaml"
    code, _, err = _cli(["plan", "--model", path, "--gpu", "a10g", "--engine", "vllm", "--methods", "autoregressive,prompt_lookup",
                         "--context", "256", "--trials", "5", "--out", str(plan_path)], capsys)  # vllm: unquantized
    assert code == 0, err
    assert load_plan(plan_path).model.source == path
    for flag, chat in (([], True), (["--no-chat"], False)):  # the tiny GGUF has a chat template: chat by default
        code, out, err = _cli(["run", "--plan", str(plan_path), "--prompt", "hello", "--max-new-tokens", "6", "--baseline",
                               "--json", *flag], capsys)
        assert code == 0, err
        report = json.loads(out)
        assert report["chat"] is chat and report["identical"] is True


def test_autotune_on_a_gguf_calibrates_through_its_chat_template(ck_cache, tmp_path):
    from planner.autotune import AutotuneRequest, autotune

    path = ck_write_gguf(tmp_path / "tiny.gguf", seed=3)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nabc abc abc\n")
    result = autotune(AutotuneRequest(path, str(prompts), out=str(tmp_path / "plan.yaml"), max_new_tokens=8, trials=3,
                                      num_prompts=1, device="cpu"))
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.model.source == str(Path(path).resolve())
    assert plan.measured["chat"] is True and result.report.chat is True and result.report.identical is True


def _hub_cache(root: Path, repo_id: str, files_from: str) -> Path:
    """A Hugging Face hub cache holding `repo_id` at one commit, with the files of a directory."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    return snapshot


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty hub cache and an endpoint that refuses connections at once (no network needed)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def test_a_hub_id_runs_from_the_local_cache_offline(rt_models, hub, monkeypatch):
    from huggingface_hub import constants

    from planner.models import load_model_spec
    from planner.runtime import run_plan

    snapshot = _hub_cache(hub, "someone/tiny-llama", rt_models["llama"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert local_checkpoint("someone/tiny-llama") == str(snapshot)
    assert load_model_spec("someone/tiny-llama").num_layers == 4
    report = run_plan(_plan("someone/tiny-llama"), ["hello"], max_new_tokens=5, baseline=True, device="cpu")
    assert report.identical is True and report.chat is False  # the tiny tokenizer has no chat template


@pytest.mark.parametrize("offline, message", [
    (True, "no such local directory, the local Hugging Face cache does not have it, and HF_HUB_OFFLINE is set"),
    (False, "no such local directory, the local Hugging Face cache does not have it, and the hub cannot be asked"),
])
def test_an_unreachable_hub_id_is_one_line_within_seconds(hub, monkeypatch, tmp_path, capsys, offline, message):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    path = tmp_path / "plan.yaml"
    _plan("someone/no-such-model").save(path)
    for args in (["run", "--plan", str(path), "--prompt", "hi"],
                 ["predict", "--model", "someone/no-such-model", "--gpu", "a10g", "--method", "autoregressive"]):
        start = time.monotonic()
        err = _one_line(*_cli(args, capsys))
        assert "'someone/no-such-model'" in err and message in err
        assert time.monotonic() - start < 10  # a retrying client took ~26 s


def _bad_sources(root: Path, llama: str) -> dict[str, str]:
    config_only, truncated, garbage = (root / n for n in ("config-only", "truncated", "garbage"))
    for d in (config_only, truncated, garbage):
        shutil.copytree(llama, d)
    (config_only / "model.safetensors").unlink()
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (garbage / "model.safetensors").write_bytes(b"\x93NUMPY" + bytes(range(256)) * 8)
    (root / "not.gguf").write_text("hello, I am not a GGUF file\n")
    return {
        "config_only": str(config_only),
        "truncated": str(truncated),
        "garbage": str(garbage),
        "alien_gguf": ck_write_gguf(root / "alien.gguf", architecture="frobnicator"),
        "not_gguf": str(root / "not.gguf"),
        "plain_file": str(config_only / "config.json"),
    }


BAD_SOURCES = {
    "config_only": "config.json but no weights",
    "truncated": "cannot load weights from",
    "garbage": "cannot load weights from",
    "alien_gguf": "GGUF model with architecture frobnicator is not supported",
    "not_gguf": "not a GGUF file",
    "plain_file": "a file, not a checkpoint",
}


@pytest.mark.parametrize("kind", sorted(BAD_SOURCES))
def test_run_refuses_a_bad_checkpoint_in_one_line(rt_models, ck_cache, tmp_path, capsys, kind):
    source = _bad_sources(tmp_path, rt_models["llama"])[kind]
    path = tmp_path / "plan.yaml"
    _plan(source).save(path)
    err = _one_line(*_cli(["run", "--plan", str(path), "--prompt", "hello"], capsys))
    assert BAD_SOURCES[kind] in err
    assert not (ck_cache / "gguf").exists() or not any((ck_cache / "gguf").iterdir())  # no conversion left behind


def test_every_command_taking_a_model_refuses_bad_ones_in_one_line(rt_models, ck_cache, tmp_path, capsys):
    bad = _bad_sources(tmp_path, rt_models["llama"])
    data = tmp_path / "prompts.txt"
    data.write_text("a prompt to continue\nanother one\n")
    out = tmp_path / "out"
    cases = [
        (["predict", "--model", bad["not_gguf"], "--gpu", "a10g", "--method", "autoregressive"], "not a GGUF file"),
        (["plan", "--model", bad["alien_gguf"], "--gpu", "a10g", "--out", str(tmp_path / "plan.yaml")], "frobnicator"),
        (["autotune", "--model", bad["alien_gguf"], "--out", str(tmp_path / "auto.yaml"), "--device", "cpu"], "frobnicator"),
        (["adapt", "--model", bad["truncated"], "--prompts", str(data), "--skip-layers", "1", "--gamma", "2", "--out", str(out)],
         "cannot load weights from"),
        (["adapt", "--model", bad["config_only"], "--prompts", str(data), "--skip-layers", "1", "--gamma", "2", "--out", str(out)],
         "config.json but no weights"),
    ]
    for args, message in cases:
        err = _one_line(*_cli(args, capsys))
        assert message in err, (args, err)
    assert not out.exists() and not (tmp_path / "auto.yaml").exists() and not (tmp_path / "plan.yaml").exists()


def test_a_plan_from_a_model_card_needs_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    code, _, err = _cli(["plan", "--model", "llama-3.2-1b", "--gpu", "a10g", "--trials", "5", "--out", str(path)], capsys)
    assert code == 0, err
    assert load_plan(path).model.source == "llama-3.2-1b"
    start = time.monotonic()
    err = _one_line(*_cli(["run", "--plan", str(path), "--prompt", "hello"], capsys))
    assert "'llama-3.2-1b' is a model card" in err and "running needs a checkpoint as --model" in err
    assert time.monotonic() - start < 5  # refused before any hub is asked
    err = _one_line(*_cli(["run", "--plan", str(path), "--model", "lama-3.2-1b", "--prompt", "hello"], capsys))
    assert "no such directory, .gguf file, hub id (org/name) or model card (did you mean: llama-3.2-1b" in err


@pytest.mark.parametrize("content, message", [
    (b"first prompt\nsecond \xff\xfe prompt\n", "line 2: not UTF-8 text (byte 0xff)"),
    (b'{"prompt": "fine"}\n{"prompt": 42}\n', 'line 2: "prompt" must be a string, got int 42'),
    (b'{"prompt": ["a", "list"]}\n', 'line 1: "prompt" must be a string, got list'),
    (b'{"text": "no prompt"}\n', 'line 1: expected a JSON object with a "prompt" field'),
])
def test_a_bad_prompts_file_is_one_line(rt_models, tmp_path, capsys, content, message):
    plan, prompts = tmp_path / "plan.yaml", tmp_path / "prompts.txt"
    _plan(rt_models["llama"]).save(plan)
    prompts.write_bytes(content)
    err = _one_line(*_cli(["run", "--plan", str(plan), "--prompts", str(prompts)], capsys))
    assert f"{prompts}: {message}" in err
    err = _one_line(*_cli(["autotune", "--model", rt_models["llama"], "--prompts", str(prompts), "--out",
                           str(tmp_path / "auto.yaml"), "--device", "cpu"], capsys))
    assert message in err and not (tmp_path / "auto.yaml").exists()


def test_chat_without_a_chat_template_is_one_line(rt_models, tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    _plan(rt_models["llama"]).save(path)
    err = _one_line(*_cli(["run", "--plan", str(path), "--prompt", "hello", "--chat"], capsys))
    assert "no chat template" in err


def test_a_truncated_gguf_is_one_line_naming_it(ck_smollm2_gguf, tmp_path, capsys):
    """The real file cut after its first MiB: gguf's reader runs past the end of the data."""
    cut = tmp_path / "cut.gguf"
    with open(ck_smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(2**20))
    code, _, err = _cli(["predict", "--model", str(cut), "--gpu", "a10g", "--method", "autoregressive"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the file is truncated or corrupt" in err and "Traceback" not in err
