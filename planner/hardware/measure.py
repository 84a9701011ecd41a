"""Measuring a device into a HardwareProfile: NVML facts plus torch micro-benchmarks.

Every timed region is warmed up first and synchronised before the clock is read; the
figure kept is the median of repeats. Bandwidth buffers are larger than any cache.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from dataclasses import dataclass

from planner.errors import DeviceError
from planner.hardware.profile import HardwareProfile, load_profile, shipped_profile_names

DECODE_WEIGHT_SHAPE = (14336, 4096)  # (out, in): a Llama-3-8B MLP projection
DECODE_TOKENS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes; `quick` halves the work, tests may shrink further."""

    bandwidth_mib: int
    matmul_n: int
    repeats: int


FULL_GPU, QUICK_GPU = Sizes(2048, 8192, 20), Sizes(1024, 4096, 8)
FULL_CPU, QUICK_CPU = Sizes(512, 1024, 5), Sizes(256, 512, 3)


def theoretical_bandwidth_gbps(bus_width_bits: int, max_memory_clock_mhz: float) -> float:
    """Peak DRAM bandwidth from NVML: bus width (bytes) x memory clock x 2 (double data rate)."""
    return bus_width_bits / 8 * max_memory_clock_mhz * 1e6 * 2 / 1e9


def resolve_device(device: str):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device, or DeviceError naming the problem."""
    import torch

    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise DeviceError(f"unknown device '{device}': expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA GPU is visible on this machine (try --device cpu)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return torch.device(f"cuda:{index}")


def _timer(device):
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def median_s(fn, repeats: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median_s


def _bandwidth(device, sizes: Sizes, median_s) -> dict:
    import torch

    n = sizes.bandwidth_mib * 2**20 // 4
    src, dst = torch.rand(n, device=device), torch.empty(n, device=device)
    copy_s = median_s(lambda: dst.copy_(src), sizes.repeats)
    read_s = median_s(lambda: src.sum(), sizes.repeats)  # reads n floats, writes one
    return {
        "read_bandwidth_gbps": round(n * 4 / read_s / 1e9, 1),
        "copy_bandwidth_gbps": round(2 * n * 4 / copy_s / 1e9, 1),  # bytes read + written
    }


def _matmul_tflops(device, sizes: Sizes, median_s) -> dict:
    import torch

    out = {}
    n = sizes.matmul_n
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        seconds = median_s(lambda: a @ b, sizes.repeats)
        out[name] = round(2 * n**3 / seconds / 1e12, 3)
    return out


def _decode_matmul(device, sizes: Sizes, median_s) -> tuple[dict, float]:
    """Latency of y = x W^T with a 14336x4096 bf16 weight for 1..32 tokens."""
    import torch

    dtype = torch.bfloat16
    weight = torch.randn(*DECODE_WEIGHT_SHAPE, device=device, dtype=dtype)
    latency = {}
    for tokens in DECODE_TOKENS:
        x = torch.randn(tokens, DECODE_WEIGHT_SHAPE[1], device=device, dtype=dtype)
        latency[tokens] = round(median_s(lambda: x @ weight.T, sizes.repeats) * 1e6, 1)
    return latency, latency[1] / 1e6


def _launch_overhead(device, median_s) -> dict:
    """Per-op cost of the small ops one decode step is made of (a tiny linear, norm pieces,
    softmax, a cache write): eager, and (on CUDA) the same kernels replayed from a CUDA graph.
    The mix matters on CPUs, where a small matmul costs several times a small add."""
    import torch

    x = torch.randn(1, 64, device=device)
    w = torch.randn(64, 64, device=device)
    cache = torch.zeros(128, 64, device=device)
    index = torch.tensor([3], device=device)
    ops_per_round, rounds = 8, 25

    def layer_like():
        for _ in range(rounds):
            y = torch.nn.functional.linear(x, w)
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
            y = torch.softmax(y + x, dim=-1)
            cache.index_copy_(0, index, y)

    out = {"eager": round(median_s(layer_like, 7) / (ops_per_round * rounds) * 1e6, 2)}
    if device.type == "cuda":
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            layer_like()  # warm-up on a side stream before capture
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            layer_like()
        out["graph"] = round(median_s(graph.replay, 10) / (ops_per_round * rounds) * 1e6, 2)
    return out


def _quant_backends(device, bf16_latency_s: float, median_s, repeats: int) -> dict:
    """Slowdown of weight-only int8/int4 decode matmuls per installed backend.

    slowdown = t_quant / (t_bf16 * bytes_quant / bytes_bf16): 1.0 means the quantized
    kernel streams its (smaller) weight as fast as the bf16 kernel streams bf16."""
    import torch

    out_features, in_features = DECODE_WEIGHT_SHAPE
    x = torch.randn(1, in_features, device=device, dtype=torch.bfloat16)
    results: dict[str, dict] = {}

    def record(backend: str, bits: str, fn, bytes_ratio: float):
        try:
            seconds = median_s(fn, repeats)
        except (RuntimeError, NotImplementedError, TypeError, AttributeError) as exc:
            results.setdefault(backend, {})[bits] = f"unavailable: {type(exc).__name__}"
            return
        results.setdefault(backend, {})[bits] = round(seconds / (bf16_latency_s * bytes_ratio), 3)

    w8 = torch.randint(-128, 127, (out_features, in_features), dtype=torch.int8, device=device)
    scales = torch.rand(out_features, device=device, dtype=torch.bfloat16)
    if hasattr(torch, "_weight_int8pack_mm"):
        record("torch", "int8", lambda: torch._weight_int8pack_mm(x, w8, scales), 0.5)
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        results["torchao"] = "not installed (pip install 'specplan[quant]')"
        return results
    for bits, config, ratio in (("int8", Int8WeightOnlyConfig(), 0.5), ("int4", Int4WeightOnlyConfig(group_size=128), 0.266)):
        linear = torch.nn.Linear(in_features, out_features, bias=False, device=device, dtype=torch.bfloat16)
        try:
            quantize_(linear, config)
        except (RuntimeError, NotImplementedError, ImportError, ValueError) as exc:
            results.setdefault("torchao", {})[bits] = f"unavailable: {type(exc).__name__}"
            continue
        record("torchao", bits, lambda: linear(x), ratio)
    return results


def _nvml_facts(index: int) -> dict:
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        facts = {"memory_total_gib": round(memory.total / 2**30, 2), "memory_free_gib": round(memory.free / 2**30, 2)}
        try:
            bus = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
            clock = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            facts["theoretical_bandwidth_gbps"] = round(theoretical_bandwidth_gbps(bus, clock), 1)
            facts["memory_bus_width_bits"], facts["max_memory_clock_mhz"] = bus, clock
        except pynvml.NVMLError:
            pass
        return facts
    finally:
        pynvml.nvmlShutdown()


def _cpu_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _published_match(device_name: str) -> HardwareProfile | None:
    """The shipped profile whose device name this GPU reports, for its published figures."""
    for name in shipped_profile_names():
        shipped = load_profile(name)
        if shipped.device_name.lower() == device_name.lower():
            return shipped
    return None


def profile_device(device: str = "auto", *, quick: bool = False, sizes: Sizes | None = None, progress=None) -> HardwareProfile:
    """Measure `device` and return its HardwareProfile. progress(step_name) is called per step."""
    import torch

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    sizes = sizes or ((QUICK_GPU if quick else FULL_GPU) if gpu else (QUICK_CPU if quick else FULL_CPU))
    median_s = _timer(dev)
    step = progress or (lambda name: None)
    command = f"specplan profile --device {device}{' --quick' if quick else ''}"

    step("memory bandwidth")
    measured = _bandwidth(dev, sizes, median_s)
    step("matmul FLOP/s")
    measured["matmul_tflops"] = _matmul_tflops(dev, sizes, median_s)
    step("decode-shaped matmul")
    decode, bf16_one_token_s = _decode_matmul(dev, sizes, median_s)
    measured["decode_matmul_latency_us"] = decode
    step("launch overhead")
    measured["launch_overhead_us"] = _launch_overhead(dev, median_s)
    step("quantized matmuls")
    measured["quant_matmul_slowdown"] = _quant_backends(dev, bf16_one_token_s, median_s, sizes.repeats)

    if gpu:
        device_name = torch.cuda.get_device_name(dev)
        nvml = _nvml_facts(dev.index or 0)
        measured.update(nvml)
        shipped = _published_match(device_name)
        memory_gib = nvml.get("memory_total_gib") or torch.cuda.get_device_properties(dev).total_memory / 2**30
        peak_bw = (shipped.bandwidth_gbps if shipped else None) or nvml.get("theoretical_bandwidth_gbps")
        peak_tflops = dict(shipped.peak_tflops) if shipped else dict(measured["matmul_tflops"])
        bw_source = f"published: {shipped.sources.get('bandwidth_gbps', shipped.name)}" if shipped else "measured: NVML bus width x max memory clock x 2"
        if not peak_bw:
            peak_bw, bw_source = measured["read_bandwidth_gbps"], f"measured: {command} (read bandwidth; no published or NVML figure)"
    else:
        device_name, memory_gib = _cpu_name(), _cpu_memory_gib()
        shipped = None
        peak_bw = measured["read_bandwidth_gbps"]
        peak_tflops = dict(measured["matmul_tflops"])
        bw_source = f"measured: {command} (read bandwidth; no published figure for CPUs)"
    quant = _slowdown_fields(measured["quant_matmul_slowdown"])
    launch = measured["launch_overhead_us"]
    return HardwareProfile(
        name=_slug(device_name) if gpu else f"cpu-{_slug(platform.machine())}",
        device_name=device_name,
        kind="gpu" if gpu else "cpu",
        memory_gib=round(memory_gib, 2),
        memory_free_gib=measured.get("memory_free_gib"),
        bandwidth_gbps=round(peak_bw, 1),
        peak_tflops=peak_tflops,
        bandwidth_efficiency=round(min(measured["read_bandwidth_gbps"] / peak_bw, 1.0), 3),
        compute_efficiency=round(min(measured["matmul_tflops"]["bf16"] / peak_tflops["bf16"], 1.0), 3),
        kernel_launch_us=launch["eager"],
        graph_kernel_us=launch.get("graph", launch["eager"]),
        quant_slowdown=quant,
        token_slope=round(max(0.0, (decode[8] / decode[1] - 1) / 7), 4),
        sources={
            "token_slope": f"measured: {command} (decode matmul latency at 8 tokens over 1 token, per extra token)",
            "bandwidth_gbps": bw_source,
            "peak_tflops": f"published: {shipped.sources.get('peak_tflops')}" if shipped else f"measured: {command}",
            "bandwidth_efficiency": f"measured: {command} (read bandwidth / bandwidth_gbps)",
            "compute_efficiency": f"measured: {command} (bf16 matmul / peak)",
            "kernel_launch_us": f"measured: {command}",
            "graph_kernel_us": f"measured: {command}" + ("" if gpu else " (no CUDA graphs on CPU: eager figure)"),
            "quant_slowdown": f"measured: {command} (best installed backend; defaults where none ran)",
        },
        measured=measured,
    )


def _slowdown_fields(per_backend: dict) -> dict:
    """Best measured slowdown per bit width across backends; defaults where none ran."""
    best = {"int8": 1.3, "int4": 1.45}
    found: dict[str, float] = {}
    for results in per_backend.values():
        if not isinstance(results, dict):
            continue
        for bits, value in results.items():
            if isinstance(value, float):
                found[bits] = min(value, found.get(bits, value))
    best.update(found)
    return best
