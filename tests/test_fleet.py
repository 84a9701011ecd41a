"""`specplan plan --batch-sizes / --engine / --gpus`: schedules in saved plans, speculation
switched off where the performance model says it stops paying, engine-restricted search,
fleets writing plans, exports and a summary, and bad input refused before anything is written."""

from __future__ import annotations

import dataclasses
import re

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.hardware import load_profile
from planner.models import load_model_spec
from planner.perf import predict
from planner.plan import load_plan
from planner.plan.export import engine_info
from planner.search.request import SearchRequest
from planner.search.schedule import parse_batch_sizes, schedule_search

TRIALS = "40"
PNG_MAGIC = b"\x89PNG"


def _run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _independent_best_gamma(spec, profile, decoding, batch, *, context, budget, largest):
    """Fastest gamma (0 = plain decoding) at one batch size, straight from predict."""
    draft = load_model_spec(decoding.draft_model) if decoding.method == "draft_model" else None

    def at(gamma, b):
        d = dataclasses.replace(decoding, gamma=gamma) if gamma else dataclasses.replace(
            decoding, method="autoregressive", gamma=0, skip_layers=(), exit_layer=None, draft_model=None)
        return predict(spec, profile, d, context=context, batch_size=b, draft_spec=draft if gamma else None)

    fitting = [g for g in range(1, 13) if at(g, largest).vram_gib <= budget]
    return max([0, *fitting], key=lambda g: at(g, batch).tokens_per_s)


@pytest.mark.parametrize("gpu, context", [("h100-sxm", 2048), ("a10g", 256)])
def test_schedule_gammas_are_what_the_model_predicts(gpu, context):
    spec, profile = load_model_spec("llama-3.1-8b"), load_profile(gpu)
    sizes = parse_batch_sizes("1-128")
    request = SearchRequest(batch_sizes=sizes, context=context, trials=40, methods=engine_info("vllm").methods,
                            quants=engine_info("vllm").quants)
    result = schedule_search(spec, profile, request)
    plan = result.plan
    gamma_at = {b: next(e.gamma for e in plan.schedule if e.batch_min <= b <= e.batch_max) for b in sizes}
    for batch in sizes:
        assert gamma_at[batch] == _independent_best_gamma(spec, profile, plan.decoding, batch, context=context,
                                                          budget=profile.memory_gib, largest=sizes[-1]), batch
    assert gamma_at[1] > 0
    if gpu == "a10g":
        # At a short context the verify of 128 x (gamma + 1) tokens is compute-bound on an A10G:
        # the model says speculation stops paying, and the schedule turns it off.
        assert gamma_at[128] == 0 and plan.schedule[-1].method == "autoregressive"
    else:
        # At context 2048 every sequence still reads its own 256 MiB of KV cache per step, so an
        # H100 stays memory-bound and the model says drafting pays even at batch 128.
        assert gamma_at[128] > 0


def test_plan_batch_sizes_saves_the_schedule_prints_the_table_and_plots(tmp_path):
    out, plot = tmp_path / "plan.yaml", tmp_path / "schedule.png"
    result = _run("plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--context", "128", "--batch-sizes", "1-128",
                  "--engine", "vllm", "--trials", TRIALS, "--out", str(out), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.schedule[0].batch_min == 1 and plan.schedule[-1].batch_max == 128
    assert all(a.batch_max + 1 == b.batch_min for a, b in zip(plan.schedule, plan.schedule[1:]))
    assert plan.schedule[0].gamma > 0 and plan.schedule[-1].gamma == 0
    sizes = parse_batch_sizes("1-128")
    for entry in plan.schedule:
        measured_at = max(b for b in sizes if b <= entry.batch_max)  # a range's figures: its largest batch size planned
        assert entry.tokens_per_s_total == pytest.approx(entry.tokens_per_s_per_sequence * measured_at)
        row = re.search(rf"^{entry.batch_min}-{entry.batch_max}\s+{entry.method}\s+{entry.gamma}\s+"
                        rf"{entry.tokens_per_s_per_sequence:.1f}\s+{entry.tokens_per_s_total:.0f}$", result.output, re.M)
        assert row, result.output
    assert plot.read_bytes()[:4] == PNG_MAGIC
    exported = _run("export", "--plan", str(out), "--to", "vllm")
    assert exported.exit_code == 0 and "num_speculative_tokens_per_batch_size" in exported.output


def test_engine_restricts_the_search(tmp_path):
    out = tmp_path / "plan.yaml"
    result = _run("plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--engine", "vllm", "--trials", TRIALS,
                  "--out", str(out))
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    vllm = engine_info("vllm")
    for decoding in (plan.decoding, *(c.decoding for c in plan.alternatives)):
        assert decoding.method in vllm.methods and decoding.quant in vllm.quants
    assert set(plan.search.methods) <= set(vllm.methods)
    # For the built-in runtime with quantization allowed, the same search prefers what vLLM cannot run.
    free = tmp_path / "free.yaml"
    assert _run("plan", "--model", "llama-3.1-8b", "--gpu", "a10g", "--trials", TRIALS, "--engine", "specplan",
                "--quant", "none,int8,int4", "--out", str(free)).exit_code == 0
    assert vllm.cannot_run(load_plan(free).decoding) is not None


def test_fleet_writes_plans_exports_and_a_costed_summary(tmp_path):
    out_dir = tmp_path / "deploy"
    gpus = ("a10g", "l40s", "h100-sxm")
    prices = {"a10g": 1.0, "h100-sxm": 4.5}
    result = _run("plan", "--model", "llama-3.1-8b", "--gpus", ",".join(gpus), "--batch-sizes", "1-16",
                  "--out-dir", str(out_dir), "--export", "vllm,sglang,hf", "--trials", TRIALS,
                  "--usd-per-hour", ",".join(f"{g}={p}" for g, p in prices.items()))
    assert result.exit_code == 0, result.output
    summary = (out_dir / "summary.md").read_text()
    assert (out_dir / "summary.png").read_bytes()[:4] == PNG_MAGIC
    for gpu in gpus:
        plan = load_plan(out_dir / gpu / "plan.yaml")
        assert plan.hardware.profile == gpu and plan.schedule[-1].batch_max == 16
        for name in ("vllm.sh", "sglang.sh", "hf.py"):
            assert f"profile {gpu}" in (out_dir / gpu / name).read_text()
        # a compose file beside each server launch whose engine publishes an image (transformers: none)
        assert {p.name for p in (out_dir / gpu).glob("*.compose.yaml")} == {"vllm.compose.yaml", "sglang.compose.yaml"}
        assert "vllm.sh" in (out_dir / gpu / "vllm.compose.yaml").read_text()
        # engines load hub ids, not the card names the plan was made from
        assert "MODEL=meta-llama/Llama-3.1-8B " in (out_dir / gpu / "vllm.sh").read_text()
        row = next(line for line in summary.splitlines() if line.startswith(f"| {gpu} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == plan.decoding.method and cells[3] == plan.decoding.quant
        total = plan.schedule[-1].tokens_per_s_total
        assert cells[7] == f"{total:.0f}"
        expected = f"{prices[gpu] / (total * 3600) * 1e6:.3f}" if gpu in prices else "—"
        assert cells[9] == expected
        assert f"## {gpu}: schedule" in summary


@pytest.mark.parametrize("args, message", [
    (["--gpu", "a10g", "--engine", "vlm"], "unknown engine 'vlm'"),
    (["--gpu", "a10g", "--engine", "vllm", "--methods", "s3d"], "vLLM cannot run s3d"),
    (["--gpu", "a10g", "--engine", "vllm", "--batch-sizes", "1-256"], "batch size 256 does not fit 20.7 GiB"),
    (["--gpu", "a10g", "--batch-sizes", "0-4"], "--batch-sizes"),
    (["--gpus", "a10g,h100", "--out-dir", "{tmp}/d"], "unknown GPU profile 'h100'"),
    (["--gpus", "a10g,l40s", "--out-dir", "{tmp}/d", "--export", "vllm,tensorrt"], "unknown engine 'tensorrt'"),
    (["--gpus", "a10g,l40s", "--out-dir", "{tmp}/d", "--usd-per-hour", "t4=0.5"], "t4 is not in --gpus"),
    (["--gpus", "a10g,l40s", "--out-dir", "{tmp}/d", "--usd-per-hour", "a10g=-1"], "positive price"),
    (["--gpus", "a10g,l40s", "--out-dir", "{tmp}/d", "--export", "vllm", "--methods", "layer_skip"], "cannot run layer_skip"),
    (["--gpus", "t4", "--out-dir", "{tmp}/d", "--export", "vllm"], "fits none of the GPUs"),
    (["--gpus", "a10g"], "give --out-dir"),
    (["--gpu", "a10g", "--export", "vllm"], "--export plans a fleet"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(cli, ["plan", "--model", "llama-3.1-8b", "--trials", "5",
                                      "--out", str(tmp_path / "plan.yaml"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_a_profile_file_in_gpus_writes_under_out_dir_in_a_folder_named_for_it(tmp_path):
    """A `--gpus` entry that is a profile file is planned like a shipped name; its files go in
    OUT_DIR/<the file's stem>, never at the entry's own path (relative or absolute)."""
    import shutil

    from planner.profiles import PROFILES_DIR

    (tmp_path / "profiles").mkdir()
    mine = tmp_path / "profiles" / "my l20.yaml"
    shutil.copy(PROFILES_DIR / "gpus" / "l20.yaml", mine)
    out_dir = tmp_path / "deploy"
    result = _run("plan", "--model", "llama-3.1-8b", "--gpus", f"{mine},l20", "--out-dir", str(out_dir), "--trials", TRIALS)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out_dir.iterdir()} == {"summary.md", "summary.png", "my-l20", "l20"}
    assert load_plan(out_dir / "my-l20" / "plan.yaml").hardware.memory_gib > 40
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == ["my l20.yaml"]  # nothing beside the profile
    shutil.copy(mine, tmp_path / "my-l20.yaml")
    clash = _run("plan", "--model", "llama-3.1-8b", "--gpus", f"{mine},{tmp_path / 'my-l20.yaml'}", "--out-dir",
                 str(tmp_path / "d2"), "--trials", TRIALS)
    assert clash.exit_code == 2 and "would both write" in clash.output and not (tmp_path / "d2").exists()
