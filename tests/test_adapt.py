"""S3D adaptation on a tiny random Llama (rt_models fixture): the layer-by-layer forward, the
saved directory and metadata, the 1% guard on the full model, resume and one-line errors."""

import json

import pytest
from click.testing import CliRunner

from planner.cli import cli

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(300))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapt_data") / "code.py"
    path.write_text(TEXT)
    return str(path)


def test_forward_without_skip_matches_the_model(rt_models):
    import torch
    from transformers import AutoModelForCausalLM

    from planner.train.adapt import forward_logits

    model = AutoModelForCausalLM.from_pretrained(rt_models["llama"], dtype=torch.float32).eval()
    ids = torch.randint(3, 120, (2, 20))
    with torch.no_grad():
        assert torch.allclose(forward_logits(model, ids), model(input_ids=ids).logits, atol=1e-4)
        # skipping changes only the draft positions; the prefix stays the full model's
        skipped = forward_logits(model, ids, skip=(1, 2), draft_from=15)
        assert torch.allclose(skipped[:, :15], model(input_ids=ids).logits[:, :15], atol=1e-4)
        assert not torch.allclose(skipped[:, 15:], model(input_ids=ids).logits[:, 15:], atol=1e-3)


def test_adapt_saves_a_loadable_model_with_s3d_metadata(rt_models, data_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapted"
    result = CliRunner().invoke(cli, ["adapt", "--model", rt_models["llama"], "--data", data_file, "--skip-layers", "1-2",
                                      "--gamma", "3", "--steps", "12", "--batch", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "s3d.json").read_text())
    assert meta["skip_layers"] == [1, 2] and meta["gamma"] == 3
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert meta["mask_token_id"] == tokenizer.mask_token_id == 128  # the char tokenizer had none: appended
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 129
    assert meta["full_model_heldout_loss_after"] <= meta["full_model_heldout_loss_before"] * 1.01


def test_resume_continues_from_the_checkpoint(rt_models, data_file, tmp_path):
    import torch

    from planner.train.adapt import adapt

    out = tmp_path / "adapted"
    adapt(rt_models["llama"], [data_file], skip_layers=(1,), gamma=2, out=str(out), steps=4, batch=2)
    result = adapt(rt_models["llama"], [data_file], skip_layers=(1,), gamma=2, out=str(out), steps=8, batch=2, resume=True)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    assert result.gamma == 2


def test_a_full_model_made_worse_is_refused_and_not_saved(rt_models, data_file, tmp_path, monkeypatch):
    # A random model only gets better from training; a negative allowance makes any result "worse".
    monkeypatch.setattr("planner.train.adapt.MAX_LOSS_RISE", -0.5)
    out = tmp_path / "adapted"
    result = CliRunner().invoke(cli, ["adapt", "--model", rt_models["llama"], "--data", data_file, "--skip-layers", "1",
                                      "--gamma", "2", "--steps", "3", "--batch", "2", "--out", str(out)])
    assert result.exit_code == 2
    assert "raised the full model's held-out loss" in result.output
    assert not (out / "config.json").exists() and not (out / "s3d.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/file", "--skip-layers", "1-2", "--gamma", "3"], "--data /no/such/file: no such file"),
        (["--data", "{short}", "--skip-layers", "1-2", "--gamma", "3"], "--data holds 13 tokens: too little text"),
        (["--model", "llama-3.2-1b", "--skip-layers", "1-2", "--gamma", "3"], "running needs a checkpoint as --model"),
        (["--skip-layers", "2-9", "--gamma", "3"], "--skip-layers: layer 4 is outside the model's 0-3"),
        (["--skip-layers", "0-3", "--gamma", "3"], "--skip-layers: skips all 4 layers; the draft must keep one"),
        (["--skip-layers", "1-2", "--gamma", "0"], "--gamma must be between 1 and 16, got 0"),
        (["--skip-layers", "1-2", "--gamma", "17"], "--gamma must be between 1 and 16, got 17"),
        (["--skip-layers", "1", "--gamma", "2", "--lr", "inf"], "'inf' is not a finite number"),
        (["--skip-layers", "1", "--gamma", "2", "--lr", "nan"], "'nan' is not a finite number"),
        (["--skip-layers", "1", "--gamma", "2", "--lr", "0"], "0.0 is not in the range x>0"),
        (["--skip-layers", "1", "--gamma", "2", "--device", "gpu"], "unknown device 'gpu'"),
        (["--skip-layers", "1", "--gamma", "2", "--out", "{short}/adapted"], "adapted: cannot write ("),
        (["--skip-layers", "1", "--gamma", "2", "--out", "{short}"], "is a file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(rt_models, data_file, tmp_path, args, message):
    out = tmp_path / "adapted"
    (tmp_path / "short.txt").write_text("a short text")
    args = [a.replace("{short}", str(tmp_path / "short.txt")) for a in args]
    if "--data" not in args:
        args = ["--data", data_file] + args
    if "--model" not in args:
        args = ["--model", rt_models["llama"]] + args
    if "--out" not in args:
        args = ["--out", str(out)] + args
    result = CliRunner().invoke(cli, ["adapt"] + args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


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
def test_the_library_checks_skip_layers_before_loading(rt_models, data_file, tmp_path, skip_layers, message):
    from planner.errors import InputError
    from planner.train.adapt import adapt

    with pytest.raises(InputError, match=message):
        adapt(rt_models["llama"], [data_file], skip_layers=skip_layers, gamma=2, out=str(tmp_path / "adapted"))
    assert not (tmp_path / "adapted").exists()


def test_cuda_without_a_gpu_is_one_line(rt_models, data_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = CliRunner().invoke(cli, ["adapt", "--model", rt_models["llama"], "--data", data_file, "--skip-layers", "1",
                                      "--gamma", "2", "--device", "cuda", "--out", str(tmp_path / "adapted")])
    assert result.exit_code == 2
    assert result.output == "error: --device cuda: no CUDA GPU is visible on this machine (try --device cpu)\n"


def test_training_that_diverges_is_refused_and_writes_nothing(rt_models, data_file, tmp_path):
    from planner.errors import InputError
    from planner.train.adapt import adapt

    out = tmp_path / "adapted"
    with pytest.raises(InputError, match="training diverged: .* at step 2 of 4"):
        adapt(rt_models["llama"], [data_file], skip_layers=(1,), gamma=2, out=str(out), steps=4, batch=2, lr=1e30)
    assert not out.exists()


def test_a_held_out_loss_that_is_not_finite_is_refused_and_not_saved(rt_models, data_file, tmp_path, monkeypatch):
    from planner.errors import InputError
    from planner.train import _loss
    from planner.train.adapt import adapt

    losses = iter([4.0, float("nan")])  # before and after adaptation
    monkeypatch.setattr(_loss, "next_token_loss", lambda model, windows: next(losses))
    out = tmp_path / "adapted"
    with pytest.raises(InputError, match="made the full model's held-out loss nan .*the model was not saved"):
        adapt(rt_models["llama"], [data_file], skip_layers=(1,), gamma=2, out=str(out), steps=2, batch=2)
    assert not (out / "config.json").exists() and not (out / "s3d.json").exists()
