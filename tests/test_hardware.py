"""The profiler on this machine's CPU, the shipped GPU profiles, and their error paths."""

import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from cli import cli
from planner.errors import DeviceError, InputError, NotFoundError
from planner.hardware import load_profile, profile_device, shipped_profile_names
from planner.hardware.measure import Sizes, resolve_device, theoretical_bandwidth_gbps

REQUIRED = {"t4", "a10g", "l4", "l40s", "rtx3090", "rtx4090", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200"}
TINY = Sizes(bandwidth_mib=32, matmul_n=128, repeats=2)


def test_required_profiles_shipped_with_sources():
    assert REQUIRED <= set(shipped_profile_names())
    for name in REQUIRED:
        profile = load_profile(name)
        for key in ("bandwidth_gbps", "peak_tflops", "memory_gib"):
            assert profile.sources[key].startswith("published: "), (name, key)
        for key in ("bandwidth_efficiency", "compute_efficiency"):
            assert profile.sources[key].startswith(("default: ", "measured here: ")), (name, key)
        assert 0 < profile.bandwidth_efficiency <= 1 and {"bf16", "fp16", "fp32"} <= set(profile.peak_tflops)


def test_h100_published_figures():
    h100 = load_profile("h100-sxm")
    assert h100.bandwidth_gbps == 3350 and h100.peak_tflops["bf16"] == pytest.approx(989.4)


def test_theoretical_bandwidth_formula():
    # H100 SXM: 5120-bit HBM3 at 2619 MHz -> 3352 GB/s
    assert theoretical_bandwidth_gbps(5120, 2619) == pytest.approx(3352.3, abs=0.1)
    assert theoretical_bandwidth_gbps(384, 9751) == pytest.approx(936.1, abs=0.1)  # RTX 3090


def test_cpu_profile_measures_and_round_trips(tmp_path):
    steps = []
    profile = profile_device("cpu", sizes=TINY, progress=steps.append)
    assert profile.kind == "cpu" and profile.memory_gib > 1
    assert steps == ["memory bandwidth", "matmul FLOP/s", "decode-shaped matmul", "launch overhead", "quantized matmuls"]
    measured = profile.measured
    assert measured["read_bandwidth_gbps"] > 0.1 and measured["copy_bandwidth_gbps"] > 0.1
    assert set(measured["decode_matmul_latency_us"]) == {1, 2, 4, 8, 16, 32}
    assert measured["matmul_tflops"]["fp32"] > 0 and measured["launch_overhead_us"]["eager"] > 0
    assert profile.bandwidth_gbps == measured["read_bandwidth_gbps"] and profile.bandwidth_efficiency == 1.0
    path = tmp_path / "mine.yaml"
    profile.save(path)
    assert load_profile(str(path)) == profile  # a measured profile works wherever a name does


def test_profile_command_on_cpu_quick(tmp_path):
    out = tmp_path / "cpu.yaml"
    result = CliRunner().invoke(cli, ["profile", "--device", "cpu", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(out.read_text())
    assert data["kind"] == "cpu" and data["measured"]["read_bandwidth_gbps"] > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu_is_one_line_exit_2(device):
    proc = subprocess.run([sys.executable, "cli.py", "profile", "--device", device], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --device {device}: no CUDA GPU is visible on this machine (try --device cpu)"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bogus_device():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_unwritable_out_writes_nothing(tmp_path):
    result = CliRunner().invoke(cli, ["profile", "--device", "cpu", "--quick", "--out", str(tmp_path / "no" / "dir.yaml")])
    assert result.exit_code == 2 and "cannot write" in result.output
    assert not (tmp_path / "no").exists()


def test_unknown_profile_suggests_near_match():
    with pytest.raises(NotFoundError, match="did you mean: h100-sxm"):
        load_profile("h100-sx")


def test_malformed_profile_yaml_gives_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: gpu\n  memory_gib: [1\n")
    with pytest.raises(InputError, match=r"bad.yaml: line \d"):
        load_profile(str(bad))


def test_profile_with_unknown_field_names_it(tmp_path):
    data = load_profile("a10g").to_dict()
    data["bandwith_gbps"] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="unknown field 'bandwith_gbps'.*bandwidth_gbps"):
        load_profile(str(path))


def test_profiles_command_lists_them():
    result = CliRunner().invoke(cli, ["profiles"])
    assert result.exit_code == 0 and all(name in result.output for name in REQUIRED)
