"""S3D draft adapters as files: the round trip through adapter.safetensors and s3d.json, the
content fingerprint that ties an adapter to its checkpoint, where adapters are found (given,
in the checkpoint's directory, shipped) and how `specplan plan` uses them."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

from planner.cli import cli
from conftest import rt_write_adapter
from planner.errors import InputError, NotFoundError
from planner.runtime.adapter import attach, find_adapter, planned_s3d, read_adapter

SHAPE = (4, 64, 128)  # the rt_models' layers, width and vocabulary


@pytest.fixture(scope="module")
def llama_adapter(rt_models, tmp_path_factory):
    return rt_write_adapter(rt_models["llama"], tmp_path_factory.mktemp("adapter") / "a", skip_layers=(1, 2), gamma=3, seed=4)


def test_an_adapter_round_trips_through_its_files(rt_models, llama_adapter):
    """Loaded into another target, the draft computes what the saved one did; the verify
    forward computes what it did before."""
    from planner.runtime.load import load_target

    adapter = read_adapter(llama_adapter)
    assert adapter.info.skip_layers == (1, 2) and adapter.info.gamma == 3 and adapter.info.mask_token_id == 128
    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=32, dtype=torch.float32)
    ids, positions = torch.tensor([[40, 41, 42, 128, 128]]), target.positions(0, 5)
    before = target.step(ids[:, :3], positions[:3])
    key = attach(target.decoder, adapter)
    assert torch.equal(target.step(ids[:, :3], positions[:3]), before)
    drafted = target.step(ids, positions, key)
    again = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=32, dtype=torch.float32)
    assert torch.equal(again.step(ids, positions, attach(again.decoder, adapter)), drafted)
    assert not torch.allclose(drafted[:, :3], target.step(ids[:, :3], positions[:3], (0, 3)), atol=1e-3)  # LoRA at work


def test_the_adapter_is_small(llama_adapter):
    from safetensors.torch import load_file

    tensors = load_file(llama_adapter / "adapter.safetensors")
    lora = sum(t.numel() for name, t in tensors.items() if "lora_" in name)
    assert tensors["mask_embedding"].shape == (64,)
    # two kept layers, rank 4: r x (in + out) for q and o (64 -> 64), k and v (64 -> 32), gate, up and down (64 <-> 128)
    assert lora == 2 * 4 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))


def test_the_content_fingerprint_is_the_weight_files_sha256(rt_models, tmp_path):
    import hashlib

    from planner.runtime.checkpoint import content_fingerprint

    model = tmp_path / "model"
    shutil.copytree(rt_models["llama"], model)
    expected = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert content_fingerprint(str(model)) == expected
    rt_write_adapter(str(model), model)  # an adapter saved beside the weights is not part of them
    assert content_fingerprint(str(model)) == expected


def test_a_gguf_file_and_its_conversion_share_a_fingerprint(tmp_path, ck_cache):
    import hashlib

    from conftest import ck_write_gguf
    from planner.runtime.checkpoint import content_fingerprint, local_checkpoint

    gguf = ck_write_gguf(tmp_path / "tiny.gguf")
    expected = hashlib.sha256(open(gguf, "rb").read()).hexdigest()
    assert content_fingerprint(gguf) == content_fingerprint(local_checkpoint(gguf)) == expected


def test_adapters_are_found_given_beside_the_weights_or_shipped(rt_models, llama_adapter, tmp_path, monkeypatch):
    from planner.runtime import adapter as module

    assert find_adapter(rt_models["llama"], SHAPE) is None
    assert find_adapter(rt_models["llama"], SHAPE, given=str(llama_adapter)).path == llama_adapter
    model = tmp_path / "model"
    shutil.copytree(rt_models["llama"], model)
    rt_write_adapter(str(model), model, skip_layers=(2,), gamma=2)
    assert find_adapter(str(model), SHAPE).info.skip_layers == (2,)
    shipped = tmp_path / "shipped"
    shutil.copytree(llama_adapter, shipped / "tiny-llama")
    monkeypatch.setattr(module, "SHIPPED_DIR", shipped)
    assert find_adapter(rt_models["llama"], SHAPE).path == shipped / "tiny-llama"
    assert find_adapter(rt_models["qwen2"], SHAPE) is None  # same shape, other weights: its fingerprint differs


def test_an_adapter_for_another_checkpoint_is_refused(rt_models, llama_adapter):
    with pytest.raises(InputError, match=r"was trained on llama \(sha256 [0-9a-f]{12}\), not on this checkpoint \(sha256 [0-9a-f]{12}\)"):
        find_adapter(rt_models["qwen2"], SHAPE, given=str(llama_adapter))
    with pytest.raises(InputError, match="trained for a 4-layer model of width 64 and vocabulary 128, not this 4-layer one of width 64 "
                                         "and vocabulary 256"):
        find_adapter(rt_models["llama"], (4, 64, 256), given=str(llama_adapter))


@pytest.mark.parametrize("change, message", [
    ({"gamma": 0}, "s3d.json: gamma: must be at least 1, got 0"),
    ({"skip_layers": [2, 1]}, "skip_layers [2, 1] is not an ascending set"),
    ({"format": "other/1"}, "format: 'other/1' is not specplan-s3d-adapter/1"),
    ({"rank": "8"}, "rank: expected int, got str '8'"),
    ({"base": None}, "base: must not be empty"),
    ({"mask_token_id": 5}, "mask_token_id 5 is a token of the vocabulary; the mask is one past it (128)"),
])
def test_a_damaged_s3d_json_is_one_line(llama_adapter, tmp_path, change, message):
    broken = tmp_path / "broken"
    shutil.copytree(llama_adapter, broken)
    info = json.loads((broken / "s3d.json").read_text())
    (broken / "s3d.json").write_text(json.dumps({**info, **change}))
    with pytest.raises(InputError, match=re.escape(message)):
        read_adapter(broken)


def test_missing_or_foreign_weights_are_one_line(rt_models, llama_adapter, tmp_path):
    from planner.runtime.load import load_target

    with pytest.raises(NotFoundError, match="no S3D adapter here"):
        read_adapter(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(llama_adapter, broken)
    whole = (broken / "adapter.safetensors").read_bytes()
    for damaged in (b"not safetensors", whole[: len(whole) // 2], b""):  # refused when read, before any decoding
        (broken / "adapter.safetensors").write_bytes(damaged)
        with pytest.raises(InputError, match="adapter.safetensors: not a readable safetensors file"):
            read_adapter(broken)
    (broken / "adapter.safetensors").write_bytes(whole)
    adapter = read_adapter(broken)
    (broken / "adapter.safetensors").write_bytes(b"not safetensors")  # damaged after it was read
    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=16, dtype=torch.float32)
    with pytest.raises(InputError, match="cannot load the S3D adapter's weights .*adapter.safetensors: "):
        attach(target.decoder, adapter)


def test_plan_takes_the_adapters_skip_set_and_gamma(rt_models, llama_adapter, tmp_path):
    from planner.plan.schema import load_plan

    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(cli, ["plan", "--model", rt_models["llama"], "--gpu", "a10g", "--methods", "s3d",
                                      "--adapter", str(llama_adapter), "--trials", "5", "--context", "256", "--out", str(out)])
    assert result.exit_code == 0, result.output
    decoding = load_plan(out).decoding
    assert (decoding.method, decoding.skip_layers, decoding.gamma, decoding.adapter) == ("s3d", (1, 2), 3, str(llama_adapter))
    assert "s3d, gamma 3, skip 1-2, adapter" in result.output


@pytest.mark.parametrize("args, message", [
    (["--methods", "layer_skip"], "--adapter is s3d's draft: add s3d to --methods"),
    (["--batch-sizes", "1,2"], "--adapter plans s3d for one GPU at one batch size"),
    (["--model", "llama-3.2-1b"], "--adapter needs --model to be a checkpoint (a directory or .gguf file)"),
])
def test_plan_adapter_misuse_is_one_line(rt_models, llama_adapter, tmp_path, args, message):
    base = {"--model": rt_models["llama"], "--gpu": "a10g", "--adapter": str(llama_adapter), "--out": str(tmp_path / "p.yaml")}
    for flag, value in base.items():
        if flag not in args:
            args = args + [flag, value]
    result = CliRunner().invoke(cli, ["plan", "--trials", "5", "--context", "256"] + args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_planned_s3d_uses_the_adapters_held_out_acceptance(rt_models, llama_adapter, tmp_path):
    adapted = tmp_path / "adapted"
    shutil.copytree(llama_adapter, adapted)
    info = json.loads((adapted / "s3d.json").read_text())
    info["training"] = {"held_out": {"tokens_per_iteration_after": 2.0}}
    (adapted / "s3d.json").write_text(json.dumps(info))
    decoding, alpha = planned_s3d(rt_models["llama"], SHAPE, given=str(adapted))
    assert decoding.skip_layers == (1, 2) and decoding.adapter == str(adapted)
    assert 1 + alpha + alpha**2 + alpha**3 == pytest.approx(2.0, abs=1e-6)
    assert planned_s3d("llama-3.2-1b", SHAPE) is None  # a card: nothing to draft with


def test_a_plan_names_an_adapter_only_for_s3d():
    from planner.errors import PlanError
    from planner.plan.schema import Decoding, HardwareRef, ModelRef, Plan, Prediction, plan_from_dict

    data = Plan(model=ModelRef(name="m", source="/m", num_layers=4, vocab_size=128), hardware=HardwareRef("cpu", "cpu"),
                decoding=Decoding(method="layer_skip", gamma=2, skip_layers=(1,)),
                prediction=Prediction("analytical", 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.1)).to_dict()
    data["decoding"]["adapter"] = "/a"
    with pytest.raises(PlanError, match="decoding.adapter: method layer_skip has none"):
        plan_from_dict(data)
    data["decoding"]["method"] = "s3d"
    assert plan_from_dict(data).decoding.adapter == "/a"


HALF = tuple(range(0, 128, 2))  # a draft vocabulary of the rt_models' even tokens


@pytest.fixture(scope="module")
def vocab_adapter(rt_models, tmp_path_factory):
    return rt_write_adapter(rt_models["llama"], tmp_path_factory.mktemp("adapter") / "v", skip_layers=(1, 2), gamma=3,
                            seed=4, draft_vocab=HALF)


def test_a_draft_vocabulary_round_trips_and_is_planned(rt_models, vocab_adapter):
    """Saved with the adapter, read back, its draft scores only those tokens; the plan carries
    its size, and the draft it prices reads fewer LM head rows (and holds them)."""
    import dataclasses

    from planner.hardware.profile import load_profile
    from planner.models.architectures import spec_from_hf_config
    from planner.perf.speedup import predict_detail
    from planner.runtime.load import load_target

    adapter = read_adapter(vocab_adapter)
    assert adapter.info.draft_vocab_size == 64
    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=16, dtype=torch.float32)
    drafted = target.step(torch.tensor([[40, 41, 128, 128]]), target.positions(0, 4), attach(target.decoder, adapter))
    assert torch.isneginf(drafted[..., 1::2]).all() and torch.isfinite(drafted[..., 0::2]).all()
    decoding, _ = planned_s3d(rt_models["llama"], SHAPE, given=str(vocab_adapter))
    assert decoding.draft_vocab_size == 64
    from planner.runtime.checkpoint import read_hf_config

    spec, profile = spec_from_hf_config(read_hf_config(rt_models["llama"]).to_dict(), "llama"), load_profile("a10g")
    trimmed = predict_detail(spec, profile, decoding, context=64, acceptance=0.5)
    whole = predict_detail(spec, profile, dataclasses.replace(decoding, draft_vocab_size=None), context=64, acceptance=0.5)
    assert trimmed.draft_s < whole.draft_s and trimmed.verify_s == whole.verify_s
    assert trimmed.vram_bytes["draft"] - whole.vram_bytes["draft"] == 64 * 64 * 2  # 64 rows of width 64 in bf16


@pytest.mark.parametrize("size, message", [
    (65, "'draft_vocab' should hold the 65 ids s3d.json's draft_vocab_size gives; found shape [64]"),
    (500, "draft_vocab_size 500 is more than the base's vocabulary (128)"),
    (0, "draft_vocab_size: must be at least 1, got 0"),
])
def test_a_damaged_draft_vocabulary_is_one_line(vocab_adapter, tmp_path, size, message):
    broken = tmp_path / "broken"
    shutil.copytree(vocab_adapter, broken)
    info = json.loads((broken / "s3d.json").read_text())
    (broken / "s3d.json").write_text(json.dumps({**info, "draft_vocab_size": size}))
    with pytest.raises(InputError, match=re.escape(message)):
        read_adapter(broken)


def test_draft_vocabulary_ids_out_of_order_are_refused_when_attached(rt_models, vocab_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    from planner.runtime.load import load_target

    broken = tmp_path / "broken"
    shutil.copytree(vocab_adapter, broken)
    tensors = load_file(broken / "adapter.safetensors")
    tensors["draft_vocab"] = tensors["draft_vocab"].flip(0).contiguous()
    save_file(tensors, broken / "adapter.safetensors")
    target = load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=16, dtype=torch.float32)
    with pytest.raises(InputError, match="'draft_vocab' must hold distinct token ids in ascending order, from 0 to below 128"):
        attach(target.decoder, read_adapter(broken))


def test_the_draft_vocabulary_is_the_training_datas_most_frequent_tokens():
    from planner.train.adapt import draft_vocabulary

    sequences = [(7, 7, 7, 9, 9, 3), (9, 5, 7)]
    assert draft_vocabulary(sequences, 2, 16).tolist() == [7, 9]  # 4 and 3 times
    assert draft_vocabulary(sequences, 3, 16).tolist() == [3, 7, 9]  # a tie (3 and 5, once each) goes to the lower id
    assert draft_vocabulary(sequences, 6, 16).tolist() == [0, 1, 3, 5, 7, 9]  # topped up with the lowest ids
    assert draft_vocabulary(sequences, 16, 16) is None and draft_vocabulary(sequences, 99, 16) is None


def test_a_plan_gives_a_draft_vocabulary_only_to_s3d_and_within_the_vocabulary():
    from planner.errors import PlanError
    from planner.plan.schema import Decoding, HardwareRef, ModelRef, Plan, Prediction, plan_from_dict

    data = Plan(model=ModelRef(name="m", source="/m", num_layers=4, vocab_size=128), hardware=HardwareRef("cpu", "cpu"),
                decoding=Decoding(method="layer_skip", gamma=2, skip_layers=(1,)),
                prediction=Prediction("analytical", 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.1)).to_dict()
    data["decoding"]["draft_vocab_size"] = 64
    with pytest.raises(PlanError, match="decoding.draft_vocab_size: method layer_skip has none"):
        plan_from_dict(data)
    data["decoding"]["method"] = "s3d"
    assert plan_from_dict(data).decoding.draft_vocab_size == 64
    data["decoding"]["draft_vocab_size"] = 129
    with pytest.raises(PlanError, match=re.escape("decoding.draft_vocab_size: 129 is more than the model's vocabulary (128)")):
        plan_from_dict(data)


def test_predict_takes_the_checkpoints_adapter_as_plan_does(rt_models, vocab_adapter, tmp_path):
    """predict --method s3d on a checkpoint with an adapter beside its weights: the adapter's skip
    set, gamma, draft vocabulary and held-out acceptance; another set-up asked for is predicted
    untrained, with a note naming the adapter's."""
    from planner.runtime.checkpoint import content_fingerprint

    checkpoint = tmp_path / "llama"
    shutil.copytree(rt_models["llama"], checkpoint)
    for name in ("s3d.json", "adapter.safetensors"):
        shutil.copy(vocab_adapter / name, checkpoint / name)
    info = json.loads((checkpoint / "s3d.json").read_text())
    info["base"]["sha256"] = content_fingerprint(str(checkpoint))
    info["training"] = {"held_out": {"tokens_per_iteration_after": 2.0}}
    (checkpoint / "s3d.json").write_text(json.dumps(info))
    base = ["predict", "--model", str(checkpoint), "--gpu", "a10g", "--method", "s3d", "--context", "64", "--json"]
    found = CliRunner().invoke(cli, base)
    assert found.exit_code == 0, found.output
    data = json.loads(found.output)
    assert (data["decoding"]["skip_layers"], data["decoding"]["gamma"], data["decoding"]["draft_vocab_size"]) == ([1, 2], 3, 64)
    assert data["basis"] == "calibrated" and data["tokens_per_iteration"] == pytest.approx(2.0, abs=1e-6)
    other = CliRunner().invoke(cli, base + ["--gamma", "2"])
    assert other.exit_code == 0, other.output
    assert "note: this checkpoint's S3D adapter drafts gamma 3, skip 1-2; the prediction is for an untrained draft" in other.output
    assert json.loads(other.output[other.output.index("{"):])["basis"] == "analytical"
    planned = CliRunner().invoke(cli, ["plan", "--model", str(checkpoint), "--gpu", "a10g", "--methods", "s3d", "--trials", "5",
                                       "--context", "64", "--out", str(tmp_path / "plan.yaml")])
    assert planned.exit_code == 0, planned.output
    assert f"note: s3d drafts with the adapter found for this checkpoint, {checkpoint} (draft vocabulary 64 tokens)" \
        in planned.output  # the plan records no path for a found adapter (run finds it again): the note names it
