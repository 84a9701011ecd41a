"""`specplan adapt` on a tiny random Llama (rt_models fixture): a small draft-only adapter
that the runtime loads and decodes with losslessly, its metadata, a resumed run that ends
where an uninterrupted one does, and every refusal as one line that writes nothing."""

import json

import pytest
from click.testing import CliRunner

from planner.cli import cli

PROMPTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}" for i in range(24)]
SMALL = dict(steps=6, batch=4, max_new_tokens=12)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapt_prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECPLAN_CACHE", str(tmp_path / "cache"))  # distillation data made afresh per test


def _adapt(rt_models, prompts_file, out, *extra):
    return CliRunner().invoke(cli, ["adapt", "--model", rt_models["llama"], "--prompts", prompts_file, "--skip-layers", "1-2",
                                    "--gamma", "3", "--steps", "6", "--batch", "4", "--max-new-tokens", "12", "--rank", "4",
                                    "--out", str(out), *extra])


def test_adapt_writes_a_small_adapter_that_decodes_like_the_checkpoint(rt_models, prompts_file, tmp_path):
    from planner.plan.schema import Constraints, Decoding, HardwareRef, ModelRef, Plan, Prediction
    from planner.runtime import run_plan
    from planner.runtime.checkpoint import content_fingerprint

    out = tmp_path / "adapter"
    result = _adapt(rt_models, prompts_file, out, "--draft-vocab", "48")
    assert result.exit_code == 0, result.output
    assert "held-out greedy draft:" in result.output and f"wrote {out} (adapter.safetensors" in result.output
    assert "rank 4, draft vocabulary 48)" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "s3d.json"]  # no checkpoints left
    meta = json.loads((out / "s3d.json").read_text())
    assert meta["skip_layers"] == [1, 2] and meta["gamma"] == 3 and meta["rank"] == 4
    assert meta["mask_token_id"] == 128  # one past the vocabulary
    assert meta["draft_vocab_size"] == 48  # the draft's LM head scores 48 of the 128 tokens; the verify all of them
    assert meta["base"]["sha256"] == content_fingerprint(rt_models["llama"])
    assert meta["data"]["prompts"] == "prompts.jsonl" and meta["data"]["sequences"] == len(PROMPTS)
    assert len(meta["data"]["sha256"]) == 64 and meta["training"]["steps"] == 6
    assert "self_attn.q_proj" in meta["target_modules"] and "mlp.down_proj" in meta["target_modules"]
    plan = Plan(model=ModelRef(name="tiny", source=rt_models["llama"], num_layers=4, vocab_size=128),
                hardware=HardwareRef(profile="cpu-local", device_name="cpu"),
                decoding=Decoding(method="s3d", gamma=3, skip_layers=(1, 2), adapter=str(out)),
                prediction=Prediction(basis="analytical", tokens_per_s=1.0, speedup=1.0, tokens_per_iteration=1.0,
                                      acceptance=0.5, target_latency_ms=1.0, draft_latency_ms=1.0, iteration_ms=1.0, vram_gib=0.01),
                constraints=Constraints(context=128))
    report = run_plan(plan, PROMPTS[:2] + ["held out"], max_new_tokens=16, baseline=True)
    assert report.identical is True


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(rt_models, prompts_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from planner.train import loop

    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _adapt(rt_models, prompts_file, whole).exit_code == 0
    save = loop._save_checkpoint

    def interrupted(path, model, optimizer, step):  # checkpoints are written every step of a 6-step run
        save(path, model, optimizer, step)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", interrupted)
    assert _adapt(rt_models, prompts_file, split).exit_code == 130  # the CLI's Ctrl-C
    assert (split / "checkpoints" / "last.pt").is_file() and not (split / "s3d.json").exists()
    monkeypatch.setattr(loop, "_save_checkpoint", save)
    refused = _adapt(rt_models, prompts_file, split, "--resume", "--lr", "0.002")
    assert refused.exit_code == 2 and "--resume: " in refused.output and "another lr (0.001, now 0.002)" in refused.output
    result = _adapt(rt_models, prompts_file, split, "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_file(whole / "adapter.safetensors"), load_file(split / "adapter.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not (split / "checkpoints").exists()


def test_a_held_out_loss_that_is_not_finite_is_refused_and_nothing_saved(rt_models, tmp_path, monkeypatch):
    from planner.errors import InputError
    from planner.train import adapt as module

    figures = iter([(1.0, 4.0, [0.0]), (1.0, float("nan"), [0.0])])  # before and after training
    monkeypatch.setattr(module, "evaluate", lambda *args: next(figures))
    out = tmp_path / "adapter"
    with pytest.raises(InputError, match="made the draft's held-out loss nan .*nothing was saved"):
        module.adapt(rt_models["llama"], PROMPTS, skip_layers=(1,), gamma=2, out=str(out), **SMALL)
    assert not out.exists()


def test_training_that_diverges_is_refused_and_writes_nothing(rt_models, tmp_path):
    from planner.errors import InputError
    from planner.train.adapt import adapt

    out = tmp_path / "adapter"
    with pytest.raises(InputError, match="training diverged: "):
        adapt(rt_models["llama"], PROMPTS, skip_layers=(1,), gamma=2, out=str(out), lr=1e30, **SMALL)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "/no/such/file", "--skip-layers", "1-2", "--gamma", "3"], "/no/such/file: no such file"),
        (["--prompts", "{empty}", "--skip-layers", "1-2", "--gamma", "3"], "no prompts in the file"),
        (["--model", "llama-3.2-1b", "--skip-layers", "1-2", "--gamma", "3"], "running needs a checkpoint as --model"),
        (["--skip-layers", "2-9", "--gamma", "3"], "--skip-layers: layer 4 is outside the model's 0-3"),
        (["--skip-layers", "0-3", "--gamma", "3"], "--skip-layers: skips all 4 layers; the draft must keep one"),
        (["--skip-layers", "1-2", "--gamma", "0"], "--gamma must be between 1 and 16, got 0"),
        (["--skip-layers", "1-2", "--gamma", "17"], "--gamma must be between 1 and 16, got 17"),
        (["--skip-layers", "1", "--gamma", "2", "--lr", "inf"], "'inf' is not a finite number"),
        (["--skip-layers", "1", "--gamma", "2", "--lr", "nan"], "'nan' is not a finite number"),
        (["--skip-layers", "1", "--gamma", "2", "--lr", "0"], "0.0 is not in the range x>0"),
        (["--skip-layers", "1", "--gamma", "2", "--rank", "0"], "0 is not in the range x>=1"),
        (["--skip-layers", "1", "--gamma", "2", "--device", "gpu"], "unknown device 'gpu'"),
        (["--skip-layers", "1", "--gamma", "2", "--out", "{empty}/adapter"], "adapter: cannot write ("),
        (["--skip-layers", "1", "--gamma", "2", "--out", "{empty}"], "is a file"),
        (["--skip-layers", "1", "--gamma", "2", "--chat"], "--chat: this model's tokenizer has no chat template"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(rt_models, prompts_file, tmp_path, args, message):
    out = tmp_path / "adapter"
    (tmp_path / "empty.txt").write_text("\n")
    args = [a.replace("{empty}", str(tmp_path / "empty.txt")) for a in args]
    defaults = {"--prompts": prompts_file, "--model": rt_models["llama"], "--out": str(out)}
    for flag, value in defaults.items():
        if flag not in args:
            args = [flag, value] + args
    result = CliRunner().invoke(cli, ["adapt"] + args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_an_unwritable_out_is_refused_before_any_work(rt_models, prompts_file, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(cli, ["adapt", "--model", rt_models["llama"], "--prompts", prompts_file, "--skip-layers", "1",
                                      "--gamma", "2", "--out", str(locked / "adapter")])
    assert result.exit_code == 2 and "cannot write (permission denied)" in result.output


@pytest.mark.parametrize(
    "skip_layers, message",
    [
        ((2, 1), "expected ascending layer indices, each once"),
        ((1, 1), "expected ascending layer indices, each once"),
        ((1, True), "expected ascending layer indices, each once"),
        ("1-2", "expected a tuple of layer indices, got str"),
        ((), "names no layer"),
    ],
)
def test_the_library_checks_skip_layers_before_loading(rt_models, tmp_path, skip_layers, message):
    from planner.errors import InputError
    from planner.train.adapt import adapt

    with pytest.raises(InputError, match=message):
        adapt(rt_models["llama"], PROMPTS, skip_layers=skip_layers, gamma=2, out=str(tmp_path / "adapter"))
    assert not (tmp_path / "adapter").exists()


def test_cuda_without_a_gpu_is_one_line(rt_models, prompts_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = CliRunner().invoke(cli, ["adapt", "--model", rt_models["llama"], "--prompts", prompts_file, "--skip-layers", "1",
                                      "--gamma", "2", "--device", "cuda", "--out", str(tmp_path / "adapter")])
    assert result.exit_code == 2
    assert result.output == "error: --device cuda: no CUDA GPU is visible on this machine (try --device cpu)\n"


def test_distillation_data_is_the_models_own_greedy_continuation_and_is_cached(rt_models, tmp_path):
    """The cached sequences are the checkpoint's greedy decoding of each prompt (the runtime's,
    unbatched), and a second call reads them back."""
    import torch
    from transformers import AutoModelForCausalLM

    from planner.runtime.decode import generate
    from planner.runtime.drafters import Autoregressive
    from planner.runtime.load import load_target
    from planner.train.distill import greedy_continuations

    model = AutoModelForCausalLM.from_pretrained(rt_models["llama"], dtype=torch.float32).eval()
    prompts = [[40, 41, 42], [50, 51, 52, 53, 54, 55, 56], [60]]
    made = greedy_continuations(model, prompts, max_new_tokens=10, pad_id=0, eos_ids=(2,), base_sha256="x")
    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=32, dtype=torch.float32)
    for prompt, sequence in zip(prompts, made.ids):
        plain = generate(target, Autoregressive(), prompt, max_new_tokens=10, eos_ids=(2,)).tokens
        assert sequence == tuple(prompt) + plain
    again = greedy_continuations(None, prompts, max_new_tokens=10, pad_id=0, eos_ids=(2,), base_sha256="x")
    assert again == made
