"""The profiler on this machine's CPU, the shipped GPU profiles, and their error paths."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli
from planner.errors import DeviceError, InputError, NotFoundError
from planner.hardware import load_profile, measured_profile_names, profile_device, shipped_profile_names
from planner.hardware import profile as profile_module
from planner.hardware.measure import STEPS, Sizes, chosen_quant_slowdown, gemm_efficiency_curve, resolve_device, token_slope
from planner.hardware.nvml import nvml_facts, theoretical_bandwidth_gbps

REQUIRED = {"t4", "a10g", "l4", "l40s", "rtx3090", "rtx4090", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200",
            "rtx3060", "rtx4060ti-16gb", "rtx4080", "rtx5090", "rtx-a6000", "a10", "l20", "h20", "v100-sxm2-32gb", "b200"}
TINY = Sizes(bandwidth_mib=16, matmul_n=128, repeats=2, decode_shape=(1024, 512))
NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")


def test_required_profiles_shipped_with_sources():
    assert REQUIRED <= set(shipped_profile_names())
    for name in REQUIRED:
        profile = load_profile(name)
        for key in ("bandwidth_gbps", "peak_tflops", "memory_gib"):
            assert profile.sources[key].startswith("published: "), (name, key)
        for key in ("bandwidth_efficiency", "compute_efficiency", "kernel_launch_us", "quant_slowdown"):
            assert profile.sources[key].startswith(("default: ", "measured here: ")), (name, key)
        assert 0 < profile.bandwidth_efficiency <= 1 and {"bf16", "fp16", "fp32"} <= set(profile.peak_tflops)


@pytest.mark.parametrize("name", shipped_profile_names())
def test_every_shipped_profile_loads_and_plans_a_small_model(name):
    """A profile added to planner/profiles/gpus is usable by the planner as shipped."""
    from planner.models import load_model_spec
    from planner.search import SearchRequest, search

    profile = load_profile(name)
    plan = search(load_model_spec("qwen2.5-0.5b"), profile, SearchRequest(trials=20, seed=0)).plan
    assert plan.hardware.profile == name and plan.prediction.tokens_per_s > 0
    assert plan.prediction.vram_gib <= profile.memory_gib


def test_h100_published_figures():
    h100 = load_profile("h100-sxm")
    assert h100.bandwidth_gbps == 3350 and h100.peak_tflops["bf16"] == pytest.approx(989.4)


def test_theoretical_bandwidth_formula():
    # NVML's bus width and max memory clock reproduce the datasheet figures
    assert theoretical_bandwidth_gbps(5120, 2619) == pytest.approx(3352.3, abs=0.1)  # H100 SXM, 3.35 TB/s
    assert theoretical_bandwidth_gbps(384, 9751) == pytest.approx(936.1, abs=0.1)  # RTX 3090, 936 GB/s
    assert theoretical_bandwidth_gbps(256, 5001) == pytest.approx(320.0, abs=0.1)  # T4, 320 GB/s


@NO_GPU
def test_nvml_without_driver_says_why():
    facts, why = nvml_facts(0)
    assert facts == {} and why


def test_nvml_facts_from_a_driver(monkeypatch):
    """The NVML path against a stand-in driver reporting an H100 SXM (no GPU here)."""
    import types

    class NVMLError(Exception):
        pass

    def by_uuid(uuid):
        raise NVMLError("not found")  # e.g. a MIG slice: falls back to the index

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_MEM=2, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid, nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=81559 * 2**20, free=80000 * 2**20),
        nvmlDeviceGetMemoryBusWidth=lambda h: 5120, nvmlDeviceGetMaxClockInfo=lambda h, clock: 2619,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    facts, why = nvml_facts(0, "0123-abcd")
    assert why is None and facts["theoretical_bandwidth_gbps"] == pytest.approx(3352.3, abs=0.1)
    assert facts["memory_total_gib"] == pytest.approx(79.65, abs=0.01) and facts["memory_bus_width_bits"] == 5120
    del fake.nvmlDeviceGetMemoryBusWidth  # an nvidia-ml-py without the call: memory still reported
    facts, why = nvml_facts(0)
    assert "theoretical_bandwidth_gbps" not in facts and facts["memory_free_gib"] > 0 and "bus width" in why


def test_quant_slowdown_prefers_the_runtime_backend():
    per_backend = {"torch": {"int8": 1.1, "int4": 2.0}, "torchao": {"int8": 1.4, "int4": "unavailable: RuntimeError"}}
    assert chosen_quant_slowdown(per_backend) == ({"int8": 1.4, "int4": 2.0}, "int8 from torchao, int4 from torch")
    chosen, origin = chosen_quant_slowdown({"torch": {"int8": "unavailable: x"}, "torchao": "not installed"})
    assert chosen == {"int8": 1.3, "int4": 1.45} and origin == "int8 from default, int4 from default"


def test_gemm_efficiency_curve_is_flops_over_peak():
    # (2 x 1 x 1000 x 1000 FLOPs in 1 us = 2 TFLOP/s) / 100 TFLOP/s peak; flat latency: 16 rows 16x the share
    curve = gemm_efficiency_curve({1: 1.0, 16: 1.0, 1024: 1.0}, (1000, 1000), 100.0)
    assert curve == {1: pytest.approx(0.02), 16: pytest.approx(0.32), 1024: 1.0}


def test_perf_reads_a_measured_gemm_curve_between_its_points():
    import dataclasses

    from planner.hardware import load_profile
    from planner.perf.cost import gemm_efficiency

    profile = dataclasses.replace(load_profile("h100-sxm"), gemm_efficiency={1: 0.01, 4: 0.05, 64: 0.6})
    assert gemm_efficiency(profile, 2) == pytest.approx(0.03)  # halfway in log2(rows)
    assert gemm_efficiency(profile, 128) == pytest.approx(0.8)  # the 64-row latency held, capped at compute_efficiency
    assert gemm_efficiency(dataclasses.replace(profile, gemm_efficiency={}), 4) == pytest.approx(0.8 * 4 / 16)


def test_token_slope_reads_eight_tokens():
    assert token_slope({1: 100.0, 8: 114.0}) == pytest.approx(0.02)
    assert token_slope({1: 100.0, 8: 99.0}) == 0.0  # noise never makes more tokens cheaper


def test_cpu_profile_measures_and_round_trips(tmp_path):
    steps = []
    profile = profile_device("cpu", sizes=TINY, name="mine", progress=steps.append)
    assert profile.name == "mine" and profile.kind == "cpu" and profile.memory_gib > 1
    assert steps == list(STEPS)
    m = profile.measured
    assert m["read_bandwidth_gbps"] > 0.1 and m["copy_bandwidth_gbps"] > 0.1
    assert set(m["decode_matmul_latency_us"]) == {1, 2, 4, 8, 16, 32}
    assert m["decode_matmul_dtype"] == {"bf16": "bfloat16", "fp32": "float32"}[profile.decode_dtype]
    assert set(m["matmul_tflops"]) == {"bf16", "fp16", "fp32"} and m["launch_overhead_us"]["eager"] > 0
    assert "graph" not in m["launch_overhead_us"] and profile.graph_kernel_us == profile.kernel_launch_us
    # derived fields the performance model reads come from the raw figures
    assert profile.bandwidth_gbps == max(m["read_bandwidth_gbps"], m["decode_matmul_bandwidth_gbps"])
    assert profile.effective_bandwidth_gbps == pytest.approx(m["decode_matmul_bandwidth_gbps"], rel=2e-3)
    assert profile.peak_tflops == m["matmul_tflops"] and profile.compute_efficiency == 1.0
    torch_quant = m["quant_matmul_slowdown"]["torch"]
    for bits in ("int8", "int4"):  # both built-in kernels exist on CPU in the pinned torch
        assert isinstance(torch_quant[bits], float) and profile.quant_slowdown[bits] == torch_quant[bits]
    assert all(profile.sources[k].startswith("measured: ") for k in ("bandwidth_gbps", "quant_slowdown", "token_slope"))
    rows = m["runtime_row_us"]  # the runtime's own layers, 8 tokens over 1, at two widths
    assert rows["layer_params_m"][0] > 8 * rows["layer_params_m"][1] and all(t >= 0 for t in rows["per_row_us"])
    assert (profile.row_us, profile.row_us_per_mparam) == (rows["row_us"], rows["row_us_per_mparam"])
    if "unmeasured" in rows:  # timing noise above the rows' cost: the token slope prices them, and no source claims more
        assert profile.row_us == profile.row_us_per_mparam == 0.0 and "row_us" not in profile.sources
    else:
        assert profile.sources["row_us"].startswith("measured: ") and profile.row_us_per_mparam > 0
        small_m, small_us = rows["layer_params_m"][1], rows["per_row_us"][1]
        fitted = profile.row_us + profile.row_us_per_mparam * small_m  # the fit passes through the small layer's figure
        assert fitted == pytest.approx(small_us, rel=1e-3, abs=1e-3) or (profile.row_us == 0 and fitted > small_us)
    path = tmp_path / "mine.yaml"
    profile.save(path)
    assert load_profile(str(path)) == profile


def test_default_name_is_a_slug_of_the_device():
    profile = profile_device("cpu", sizes=TINY)
    assert profile.name and set(profile.name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_profile_command_on_cpu_quick_is_usable_as_gpu(tmp_path):
    out = tmp_path / "this-box.yaml"
    result = CliRunner().invoke(cli, ["profile", "--device", "cpu", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "quantized matmuls" in result.output and f"wrote {out}" in result.output  # progress and summary on stderr
    data = yaml.safe_load(out.read_text())
    assert data["name"] == "this-box" and data["kind"] == "cpu" and data["measured"]["read_bandwidth_gbps"] > 0
    assert data["measured"]["wall_time_s"] < 60
    predicted = CliRunner().invoke(cli, ["predict", "--model", "tinyllama-1.1b", "--gpu", str(out),
                                         "--method", "autoregressive", "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.output)["gpu"] == "this-box"


@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu_is_one_line_exit_2(device):
    proc = subprocess.run([sys.executable, "cli.py", "profile", "--device", device], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --device {device}: no CUDA GPU is visible on this machine (try --device cpu)"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cuda_index_beyond_count(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"`device` cuda:7: only 1 CUDA GPU\(s\) visible \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:7")


def test_bogus_device_exit_2():
    result = CliRunner().invoke(cli, ["profile", "--device", "bogus"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: unknown device 'bogus': expected auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("where, message", [
    ("no/dir.yaml", "cannot write (no directory"),
    ("a-file/x.yaml", "cannot write (no directory"),  # the parent is a file
    (".", "is a directory"),
])
def test_unwritable_out_fails_before_measuring(tmp_path, where, message):
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(cli, ["profile", "--device", "cpu", "--quick", "--out", str(tmp_path / where)])
    assert result.exit_code == 2 and message in result.output
    assert "profiling" not in result.output  # failed before measuring anything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_no_file_can_be_created_fails_before_measuring(monkeypatch):
    """/proc takes no new file, though os.access says it is writable to root: the check tries."""
    monkeypatch.setattr("planner.hardware.profile_device", lambda *a, **k: pytest.fail("measured before refusing --out"))
    result = CliRunner().invoke(cli, ["profile", "--device", "cpu", "--quick", "--out", "/proc/x.yaml"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: /proc/x.yaml: cannot write (") and result.output.count("\n") == 1


def test_allreduce_latency_per_gpu_count_is_interpolated_held_and_round_trips(tmp_path):
    """`allreduce_latency_us` maps GPU counts to microseconds: read at a count it gives, linear
    between two, held beyond its first and last; a single figure serves every count."""
    per_count = dataclasses.replace(load_profile("h100-sxm"), allreduce_latency_us={2: 6.0, 8: 9.0})
    assert [round(per_count.allreduce_latency_s(n) * 1e6, 9) for n in (1, 2, 4, 8, 16)] == [0.0, 6.0, 7.0, 9.0, 9.0]
    flat = dataclasses.replace(per_count, allreduce_latency_us=19.4)
    assert flat.allreduce_latency_s(2) == flat.allreduce_latency_s(8) == pytest.approx(19.4e-6)
    per_count.save(tmp_path / "p.yaml")
    assert load_profile(str(tmp_path / "p.yaml")) == per_count
    h100 = load_profile("h100-sxm")  # 8 GPUs pay more than 2 (sgl-project/sglang pull 2904)
    assert h100.allreduce_latency_s(8) > h100.allreduce_latency_s(2) and "pull 2904" in h100.sources["allreduce_latency_us"]


def test_unknown_profile_suggests_near_match():
    with pytest.raises(NotFoundError, match="did you mean: h100-sxm"):
        load_profile("h100-sx")
    result = CliRunner().invoke(cli, ["predict", "--model", "tinyllama-1.1b", "--gpu", "a100", "--method", "autoregressive"])
    assert result.exit_code == 2 and "unknown GPU profile 'a100'" in result.output


def test_malformed_profile_yaml_gives_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: gpu\n  memory_gib: [1\n")
    with pytest.raises(InputError, match=r"bad.yaml: line 3"):
        load_profile(str(bad))


def test_profile_with_unknown_field_names_it(tmp_path):
    data = load_profile("a10g").to_dict()
    data["bandwith_gbps"] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"typo.yaml: bandwith_gbps: unknown field \(did you mean: bandwidth_gbps"):
        load_profile(str(path))


def test_committed_measured_profile_loads_by_name_and_is_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_module, "MEASURED_DIR", tmp_path)
    measured = load_profile("h100-sxm").to_dict() | {"name": "h100-sxm-measured"}
    (tmp_path / "h100-sxm-measured.yaml").write_text(yaml.safe_dump(measured))
    assert measured_profile_names() == ["h100-sxm-measured"]
    assert load_profile("h100-sxm-measured").name == "h100-sxm-measured"
    assert "h100-sxm-measured" not in shipped_profile_names()  # the fleet stays the published set
    listing = CliRunner().invoke(cli, ["profiles"])
    row = next(line for line in listing.output.splitlines() if line.startswith("h100-sxm-measured"))
    assert row.endswith("measured")


def test_profiles_command_lists_them():
    result = CliRunner().invoke(cli, ["profiles"])
    assert result.exit_code == 0
    names = {line.split()[0] for line in result.output.splitlines()[2:]}
    assert REQUIRED <= names
    listed = json.loads(CliRunner().invoke(cli, ["profiles", "--json"]).output)
    h100 = next(p for p in listed if p["name"] == "h100-sxm")
    assert h100["origin"] == "published" and h100["bandwidth_gbps"] == 3350


def test_a_profile_file_that_leaves_out_a_model_figure_says_so(tmp_path, recwarn):
    """A figure the performance model uses is not taken from a default silently: one note on
    stderr naming it, and its source says so; shipped and measured profiles give every one."""
    from planner.errors import SpecplanWarning

    data = load_profile("a10g").to_dict()
    del data["kernel_launch_us"], data["sources"]["kernel_launch_us"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["predict", "--model", "llama-3.2-1b", "--gpu", str(tmp_path / "mine.yaml"),
                                      "--method", "autoregressive"])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"note: {tmp_path / 'mine.yaml'}: not in the file, so specplan's default is used: kernel_launch_us 5.0\n"
    with pytest.warns(SpecplanWarning, match="kernel_launch_us 5.0"):
        mine = load_profile(str(tmp_path / "mine.yaml"))
    assert mine.kernel_launch_us == 5.0 and mine.sources["kernel_launch_us"].startswith("default: not in ")
    recwarn.clear()
    for name in shipped_profile_names() + measured_profile_names():
        load_profile(name)
    assert not [w for w in recwarn if issubclass(w.category, SpecplanWarning)]
