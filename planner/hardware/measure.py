"""Measuring a device into a HardwareProfile: torch micro-benchmarks plus NVML facts.

Timing is honest in the gpt-fast way: warm-up first, CUDA events (or a synchronised
wall clock on a CPU) around the timed calls, the median of repeats kept. Short GPU calls
are repeated back to back between one pair of events so launch latency does not count
as device time. Everything read is rotated over copies that together exceed the
last-level cache several times, so no figure comes from cache.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from planner.errors import DeviceError
from planner.hardware.nvml import nvml_facts
from planner.hardware.profile import HardwareProfile, decode_dtype_for, load_profile, shipped_profile_names

STEPS = ("memory bandwidth", "matmul FLOP/s", "decode-shaped matmul", "launch overhead", "quantized matmuls")
DECODE_WEIGHT_SHAPE = (14336, 4096)  # (out, in): a Llama-3-8B MLP projection
DECODE_TOKENS = (1, 2, 4, 8, 16, 32)
from planner.models.spec import INT4_GROUP_SIZE  # as planner.runtime.quantize and ModelSpec's int4 byte count
CACHE_MULTIPLE = 3  # rotated buffers span at least this many last-level caches
MIN_SAMPLE_S = 1e-3  # GPU calls shorter than this are repeated inside one timed sample
ROW_ROUNDS = 5  # interleaved rounds of the per-row timing (_runtime_row_cost), the fastest of each kept
BUDGET_S = 1.0  # one figure's timed repeats take about this long at most (at least one call): slow paths stay short
DEFAULT_QUANT_SLOWDOWN = {"int8": 1.3, "int4": 1.45}  # HardwareProfile's defaults, cited in planner/profiles/gpus


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: `quick` halves the work; tests may shrink further."""

    bandwidth_mib: int
    matmul_n: int
    repeats: int
    decode_shape: tuple[int, int] = DECODE_WEIGHT_SHAPE
    row_shape: tuple[int, int] | None = None  # (intermediate, hidden) of the wider layer _runtime_row_cost times; None: decode_shape


FULL_GPU, QUICK_GPU = Sizes(2048, 8192, 20), Sizes(1024, 4096, 8)
FULL_CPU, QUICK_CPU = Sizes(512, 1024, 5), Sizes(256, 768, 3, row_shape=(7168, 2048))


def resolve_device(device: str):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device.

    Raises:
        DeviceError: an unknown device name, no CUDA GPU, or an index beyond the GPUs visible.
    """
    import torch

    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise DeviceError(f"unknown device '{device}': expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"`device` {device}: no CUDA GPU is visible on this machine (try `device` cpu)")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"`device` {device}: only {count} CUDA GPU(s) visible (cuda:0 to cuda:{count - 1})")
    return torch.device(f"cuda:{index}")


# ------------------------------------------------------------------------------- timing


def _timer(device):
    """median_s(fn, repeats): median seconds of one call of fn, after warm-up."""
    import torch

    if device.type != "cuda":

        def median_s(fn, repeats: int) -> float:
            start = time.perf_counter()
            fn()  # warm-up, and the estimate that caps the repeats of slow paths (fp16 on most CPUs)
            repeats = max(1, min(repeats, int(BUDGET_S / (time.perf_counter() - start))))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        return median_s

    def events_s(fn, calls: int) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls

    def median_s(fn, repeats: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        one_s = events_s(fn, 1)
        calls = min(100, max(1, math.ceil(MIN_SAMPLE_S / one_s)))
        repeats = max(1, min(repeats, int(BUDGET_S / (calls * one_s))))  # e.g. bf16 on a T4 (no bf16 tensor cores)
        return statistics.median(events_s(fn, calls) for _ in range(repeats))

    return median_s


def _last_level_cache_bytes(device) -> int:
    """L2 on a GPU; the largest CPU cache sysfs lists (32 MiB when it lists none)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=32 * 2**20)


def _rotation(make, bytes_each: int, cache_bytes: int):
    """Enough copies from make() to exceed the cache CACHE_MULTIPLE times; next() cycles them."""
    copies = min(16, max(1, math.ceil(CACHE_MULTIPLE * cache_bytes / bytes_each)))
    return itertools.cycle([make() for _ in range(copies)]).__next__


# ------------------------------------------------------------------------- measurements


def _bandwidth(device, sizes: Sizes, median_s, cache_bytes: int) -> dict:
    import torch

    n = max(sizes.bandwidth_mib * 2**20, CACHE_MULTIPLE * cache_bytes) // 4
    src, dst = torch.rand(n, device=device), torch.empty(n, device=device)
    copy_s = median_s(lambda: dst.copy_(src), sizes.repeats)
    read_s = median_s(lambda: src.sum(), sizes.repeats)  # reads n floats, writes one
    return {
        "bandwidth_buffer_mib": round(n * 4 / 2**20),
        "read_bandwidth_gbps": _sig(n * 4 / read_s / 1e9),
        "copy_bandwidth_gbps": _sig(2 * n * 4 / copy_s / 1e9),  # bytes read + bytes written
    }


def _matmul_tflops(device, sizes: Sizes, median_s) -> dict:
    """Dense square matmuls; fp32 is true fp32 (PyTorch leaves TF32 off for matmuls by default)."""
    import torch

    n, out = sizes.matmul_n, {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        out[name] = _sig(2 * n**3 / median_s(lambda: a @ b, sizes.repeats) / 1e12)
    return out


def _decode_dtype(device, matmul_tflops: dict):
    """The dtype the runtime and planner.perf decode unquantized weights in on this device."""
    import torch

    kind = "gpu" if device.type == "cuda" else "cpu"
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[decode_dtype_for(kind, matmul_tflops)]


def cpu_decode_dtype() -> str:
    """decode_dtype_for this CPU from a quick matmul measurement (under a second), for
    runs without a measured CPU profile."""
    import torch

    device = torch.device("cpu")
    return decode_dtype_for("cpu", _matmul_tflops(device, QUICK_CPU, _timer(device)))


def _decode_matmul(device, sizes: Sizes, median_s, cache_bytes: int, matmul_tflops: dict) -> dict:
    """Latency of y = x W^T with a (14336, 4096) weight for 1..32 tokens, in the decode dtype."""
    import torch

    dtype = _decode_dtype(device, matmul_tflops)
    out_features, in_features = sizes.decode_shape
    weight_bytes = out_features * in_features * dtype.itemsize
    weight = _rotation(lambda: torch.randn(out_features, in_features, device=device, dtype=dtype), weight_bytes, cache_bytes)
    latency_us = {}
    for tokens in DECODE_TOKENS:
        x = torch.randn(tokens, in_features, device=device, dtype=dtype)  # (tokens, in)
        latency_us[tokens] = _sig(median_s(lambda: x @ weight().T, sizes.repeats) * 1e6)  # (tokens, out)
    return {
        "decode_matmul_shape": [out_features, in_features],
        "decode_matmul_dtype": str(dtype).removeprefix("torch."),
        "decode_matmul_latency_us": latency_us,
        "decode_matmul_bandwidth_gbps": _sig(weight_bytes / (latency_us[1] * 1e-6) / 1e9),
    }


def _runtime_layer_step(device):
    """One decode step (one token, KV cache, mask) of a small layer as the runtime runs it
    (a transformers Llama layer built by runtime.load as it builds every target: the runtime's
    position cache and mask, its dtype for the device, and on a CPU the lean kernels, one fused
    call per layer where they build): the ops planner.perf counts as KERNELS_PER_LAYER, with
    negligible bytes and FLOPs."""
    import torch
    from transformers import LlamaConfig

    from planner.runtime.load import random_target

    config = LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=32, vocab_size=64)
    decoder = random_target(config, device=device, max_seq_len=128, compiled=False).decoder
    model = decoder.hf_model
    with torch.inference_mode():
        decoder(torch.zeros(1, 64, dtype=torch.long, device=device), decoder.positions[:64], (0,))  # fills the cache
    pos = decoder.positions[64:65]
    decoder.cache.input_pos = pos
    layer = decoder.hf_model.model.layers[0]
    x = torch.randn(1, 1, config.hidden_size, device=device, dtype=model.dtype)
    kwargs = {
        "attention_mask": decoder.masks(pos),
        "position_embeddings": decoder.hf_model.model.rotary_emb(x, pos[None]),
        "position_ids": pos[None],
        decoder.cache_kwarg: decoder.cache,
    }

    @torch.inference_mode()
    def step():
        return layer(x, **kwargs)

    return step


def _runtime_row_cost(device, sizes: Sizes, median_s, cache_bytes: int) -> dict:
    """What each extra row (token) adds to a decoder layer as the runtime runs it on a CPU (lean
    kernels, its cache and mask, 128 cached positions), on two Llama-shaped layers: one from
    `sizes.decode_shape` (hidden = its in, intermediate = its out) and one an eighth as wide.
    Each is a stack of enough layers to exceed the last-level cache CACHE_MULTIPLE times, timed
    over 1 and 8 new tokens (the wider from `sizes.row_shape` where given: --quick's is a quarter of
    the decode matmul's); the per-row time per layer is fitted as
    row_us + row_us_per_mparam x (the layer's linear parameters, millions): a fixed part
    (attention over the context, norms, activation, repacking x for the matrix units) and a part
    that grows with the weights (the matmuls' arithmetic). Each figure is the fastest of ROW_ROUNDS
    interleaved rounds; where the narrower layer's rows do not cost less than the wider's (and
    more than nothing), the timing noise exceeds them: both coefficients are 0, so the model keeps
    the token slope, and `unmeasured` says why."""
    import torch
    from transformers import LlamaConfig

    from planner.runtime.load import random_target

    out_features, in_features = sizes.row_shape or sizes.decode_shape
    layers_us, params = [], []
    for hidden, intermediate in ((in_features, out_features), (max(64, in_features // 8), max(64, out_features // 8))):
        heads = max(1, hidden // 64)
        config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                             num_key_value_heads=max(1, heads // 4), head_dim=64, vocab_size=64, num_hidden_layers=1)
        per_layer = hidden * (2 * hidden + 2 * 64 * config.num_key_value_heads) + 3 * hidden * intermediate
        config.num_hidden_layers = layers = min(64, max(1, math.ceil(CACHE_MULTIPLE * cache_bytes / (2 * per_layer))))
        decoder = random_target(config, device=device, max_seq_len=160, compiled=False).decoder
        every = tuple(range(layers))
        with torch.inference_mode():
            decoder(torch.zeros(1, 128, dtype=torch.long, device=device), decoder.positions[:128], every)

            def step(tokens: int):
                ids = torch.zeros(1, tokens, dtype=torch.long, device=device)
                return lambda: decoder(ids, decoder.positions[128 : 128 + tokens], every)

            timed = [(median_s(step(1), sizes.repeats), median_s(step(8), sizes.repeats)) for _ in range(ROW_ROUNDS)]
            one, eight = min(t[0] for t in timed), min(t[1] for t in timed)  # interleaved; the least disturbed of each
        layers_us.append(max(0.0, (eight - one) / 7 / layers * 1e6))
        params.append(per_layer / 1e6)
        del decoder
    (large_us, small_us), (large_m, small_m) = layers_us, params
    figures = {"layer_params_m": [_sig(large_m), _sig(small_m)], "per_row_us": [_sig(large_us), _sig(small_us)]}
    if not 0 < small_us < large_us:  # noise larger than the rows' cost (a loaded machine): keep the token slope
        return {"runtime_row_us": {**figures, "row_us": 0.0, "row_us_per_mparam": 0.0,
                                   "unmeasured": "the wider layer's rows did not cost more than the narrower's: timing noise"}}
    per_mparam = (large_us - small_us) / (large_m - small_m)
    return {"runtime_row_us": {**figures, "row_us": _sig(max(0.0, small_us - per_mparam * small_m)),
                               "row_us_per_mparam": _sig(per_mparam)}}


def _launch_overhead(device, median_s) -> dict:
    """Per-op cost of a decode step's ops: eager, from the runtime's own layer, and (CUDA) the
    graph-replayed cost of small kernels.

    Eager: a one-token step of a small runtime layer, divided by the ops planner.perf counts
    per layer (KERNELS_PER_LAYER["eager"]), so the model's overhead term equals what the
    runtime's layer really costs to dispatch; on CPUs that is several times the cost of a
    small add, because the matmuls, SDPA and cache copies dominate."""
    import torch

    from planner.perf.cost import KERNELS_PER_LAYER

    layer_step, rounds = _runtime_layer_step(device), 10

    def layer_steps():
        for _ in range(rounds):
            layer_step()

    out = {"eager": _sig(median_s(layer_steps, 9) / (rounds * KERNELS_PER_LAYER["eager"]) * 1e6)}
    if device.type == "cuda":
        x, w = torch.randn(1, 64, device=device), torch.randn(64, 64, device=device)
        cache, index = torch.zeros(128, 64, device=device), torch.tensor([3], device=device)
        ops = (
            lambda: torch.nn.functional.linear(x, w),
            lambda: x.pow(2),
            lambda: x.mean(-1, keepdim=True),
            lambda: torch.rsqrt(x),
            lambda: x * w[0],
            lambda: x + w[1],
            lambda: torch.softmax(x, dim=-1),
            lambda: cache.index_copy_(0, index, x),
        )

        def small_kernels():
            for _ in range(25):
                for op in ops:
                    op()

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            small_kernels()  # cuBLAS and allocator warm-up must happen before capture, off the default stream
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            small_kernels()
        out["graph"] = _sig(median_s(graph.replay, 10) / (25 * len(ops)) * 1e6)
    return out


def _quant_bytes(out_features: int, in_features: int) -> dict:
    """Bytes a weight-only kernel streams: packed weight plus bf16 scales (and zeros for int4)."""
    return {
        "int8": out_features * in_features + 2 * out_features,
        "int4": out_features * in_features // 2 + (in_features // INT4_GROUP_SIZE) * out_features * 2 * 2,
    }


# What a missing kernel raises: torch's ops per device (RuntimeError, NotImplementedError), torchao's
# checks (AssertionError, ValueError) and its optional kernel packages (ImportError, e.g. fbgemm for int4).
_KERNEL_ERRORS = (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError, AssertionError, ImportError)


def _unavailable(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"unavailable: {type(exc).__name__}: {first_line}".rstrip(": ")


def _torch_quant_kernels(device, shape: tuple[int, int]):
    """{bits: prepare} for torch's built-in weight-only kernels. prepare() packs one weight and
    returns make(); each make() is a call(x) on its own copy (packing once: it is slow on CPUs)."""
    import torch

    out_features, in_features = shape
    groups = in_features // INT4_GROUP_SIZE

    def int8():
        w = torch.randint(-128, 127, (out_features, in_features), dtype=torch.int8, device=device)
        scales = torch.rand(out_features, dtype=torch.bfloat16, device=device)
        return lambda: (lambda x, w=w.clone(): torch._weight_int8pack_mm(x, w, scales))

    def int4():
        # tinygemm layout: scales and zeros (groups, out, 2) in bf16; the packing op differs by device
        scales_zeros = torch.rand(groups, out_features, 2, dtype=torch.bfloat16, device=device)
        if device.type == "cuda":
            nibbles = torch.randint(0, 256, (out_features, in_features // 2), dtype=torch.uint8, device=device)
            packed, mm = torch._convert_weight_to_int4pack(nibbles, 8), torch._weight_int4pack_mm
        else:
            values = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32)
            packed, mm = torch._convert_weight_to_int4pack_for_cpu(values, 8), torch._weight_int4pack_mm_for_cpu
        return lambda: (lambda x, p=packed.clone(): mm(x, p, INT4_GROUP_SIZE, scales_zeros))

    return {"int8": int8, "int4": int4}


def _torchao_kernels(device, shape: tuple[int, int]):
    """{bits: prepare()} quantizing an nn.Linear with torchao's configs as planner.runtime.quantize
    does (each copy a freshly quantized linear), or why torchao cannot be used."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return 'not installed (pip install ".[quant]" from a clone of specplan)'
    except (RuntimeError, AttributeError) as exc:  # a torchao built for another torch
        return _unavailable(exc)
    import torch

    out_features, in_features = shape

    def quantized_linear(config):
        # quantize_ walks a module's children, as it does the runtime's decoder
        model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=False, device=device,
                                                    dtype=torch.bfloat16))
        quantize_(model, config)
        return model

    return {
        "int8": lambda: (lambda: quantized_linear(Int8WeightOnlyConfig())),
        "int4": lambda: (lambda: quantized_linear(Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE))),
    }


def _quant_slowdowns(device, sizes: Sizes, median_s, cache_bytes: int, decode: dict) -> dict:
    """Slowdown of weight-only int8/int4 decode matmuls (one token) per installed backend.

    slowdown = t_quant / (t_dense * bytes_quant / bytes_dense), where t_dense is the one-token
    decode matmul in the decode dtype (HardwareProfile.decode_dtype) and bytes count the packed
    weight with its scales. 1.0 means the quantized kernel streams its smaller weight as
    fast as the dense kernel streams the dense one; planner.perf multiplies the ideal
    read time of quantized weights by this factor. Activations are bf16 (what the kernels take).
    """
    import torch

    out_features, in_features = sizes.decode_shape
    dense_bytes = out_features * in_features * _decode_dtype(device, decode["matmul_tflops"]).itemsize
    dense_s = decode["decode_matmul_latency_us"][1] * 1e-6
    quant_bytes = _quant_bytes(out_features, in_features)
    x = torch.randn(1, in_features, device=device, dtype=torch.bfloat16)  # (1, in)
    results: dict[str, dict | str] = {}
    for backend, kernels in (("torch", _torch_quant_kernels(device, sizes.decode_shape)),
                             ("torchao", _torchao_kernels(device, sizes.decode_shape))):
        if isinstance(kernels, str):
            results[backend] = kernels
            continue
        results[backend] = {}
        for bits, prepare in kernels.items():
            try:
                kernel = _rotation(prepare(), quant_bytes[bits], cache_bytes)
                seconds = median_s(lambda: kernel()(x), sizes.repeats)
            except _KERNEL_ERRORS as exc:
                results[backend][bits] = _unavailable(exc)
                continue
            results[backend][bits] = _sig(seconds / (dense_s * quant_bytes[bits] / dense_bytes))
    return results


def chosen_quant_slowdown(per_backend: dict) -> tuple[dict, str]:
    """(slowdown per bit width, where each came from) for the performance model.

    torchao's figure wins: it is what planner.runtime quantizes with. torch's built-in
    kernels stand in where torchao did not run; HardwareProfile's defaults fill the rest."""
    chosen, origin = dict(DEFAULT_QUANT_SLOWDOWN), {bits: "default" for bits in DEFAULT_QUANT_SLOWDOWN}
    for backend in ("torch", "torchao"):  # later wins
        results = per_backend.get(backend)
        if not isinstance(results, dict):
            continue
        for bits, value in results.items():
            if isinstance(value, (int, float)):
                chosen[bits], origin[bits] = value, backend
    return chosen, ", ".join(f"{bits} from {who}" for bits, who in origin.items())


# ------------------------------------------------------------------------- the profile


def token_slope(latency_us: dict) -> float:
    """How a decode matmul slows per extra token: planner.perf scales the memory side as
    1 + slope * (n - 1) and takes the max with the compute side. Read at 8 tokens, the
    widest verification step speculative decoding usually takes; where the matmul is
    already compute-bound there (CPUs), both sides of the max then describe the same time."""
    return round(max(0.0, (latency_us[8] / latency_us[1] - 1) / 7), 4)


def gemm_efficiency_curve(latency_us: dict, shape, peak_tflops: float) -> dict[int, float]:
    """Achieved fraction of `peak_tflops` of the decode matmul (`shape` = (out, in)) at each
    measured row count: 2 x rows x out x in FLOPs over its latency. planner.perf.cost reads it
    as the GEMM efficiency over rows (HardwareProfile.gemm_efficiency), capped at 1."""
    out_features, in_features = shape
    return {int(rows): _sig(min(1.0, 2 * rows * out_features * in_features / (us * 1e-6) / (peak_tflops * 1e12)))
            for rows, us in latency_us.items()}


def _sig(value: float, digits: int = 4) -> float:
    """Round to significant digits: CPU TFLOP/s and H100 GB/s both keep their precision."""
    return float(f"{value:.{digits}g}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(device) -> str:
    """What `device` (a name such as 'cuda:0' or a torch.device) is, as its driver names it (a
    CUDA GPU) or /proc/cpuinfo does (a CPU): what a profile records as its device_name.

    Raises:
        DeviceError: as `resolve_device`.
    """
    import torch

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_memory_gib() -> tuple[float, float | None]:
    """(total RAM, available RAM or None) in GiB."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return total, int(line.split()[1]) / 2**20
    except OSError:
        pass
    return total, None


def _published_match(device_name: str) -> HardwareProfile | None:
    """The shipped profile whose device_name is exactly what the driver reports."""
    for name in shipped_profile_names():
        shipped = load_profile(name)
        if shipped.device_name.lower() == device_name.lower():
            return shipped
    return None


def _measure(dev, sizes: Sizes, step) -> dict:
    median_s, cache_bytes = _timer(dev), _last_level_cache_bytes(dev)
    measured = {"last_level_cache_mib": round(cache_bytes / 2**20, 1)}
    step(STEPS[0])
    measured.update(_bandwidth(dev, sizes, median_s, cache_bytes))
    step(STEPS[1])
    measured["matmul_tflops"] = _matmul_tflops(dev, sizes, median_s)
    step(STEPS[2])
    measured.update(_decode_matmul(dev, sizes, median_s, cache_bytes, measured["matmul_tflops"]))
    if dev.type == "cpu":
        measured.update(_runtime_row_cost(dev, sizes, median_s, cache_bytes))
    step(STEPS[3])
    measured["launch_overhead_us"] = _launch_overhead(dev, median_s)
    step(STEPS[4])
    measured["quant_matmul_slowdown"] = _quant_slowdowns(dev, sizes, median_s, cache_bytes, measured)
    return measured


def _gpu_facts(dev, measured: dict, command: str) -> dict:
    """Name, memory and peaks of a GPU: published where a shipped profile matches, else NVML/measured."""
    import torch

    name = device_name(dev)
    uuid = getattr(torch.cuda.get_device_properties(dev), "uuid", None)
    nvml, why_missing = nvml_facts(dev.index or 0, str(uuid) if uuid else None)
    measured.update(nvml)
    if why_missing:
        measured["nvml_missing"] = why_missing
    free_bytes, total_bytes = torch.cuda.mem_get_info(dev)
    shipped = _published_match(name)
    facts = {
        "device_name": name,
        "memory_gib": nvml.get("memory_total_gib", round(total_bytes / 2**30, 2)),
        "memory_free_gib": nvml.get("memory_free_gib", round(free_bytes / 2**30, 2)),
        "sources": {"memory_gib": "measured: NVML total memory" if nvml else "measured: torch.cuda.mem_get_info"},
    }
    if shipped:
        measured.update(published_profile=shipped.name, published_bandwidth_gbps=shipped.bandwidth_gbps)
        facts.update(bandwidth_gbps=shipped.bandwidth_gbps, peak_tflops=dict(shipped.peak_tflops))
        facts["sources"].update(bandwidth_gbps=f"published: {shipped.sources.get('bandwidth_gbps', shipped.name)}",
                                peak_tflops=f"published: {shipped.sources.get('peak_tflops', shipped.name)}")
    else:
        facts["peak_tflops"] = dict(measured["matmul_tflops"])
        facts["sources"]["peak_tflops"] = f"measured: {command} (no shipped profile for '{name}'; efficiency 1.0)"
        if "theoretical_bandwidth_gbps" in nvml:
            facts["bandwidth_gbps"] = nvml["theoretical_bandwidth_gbps"]
            facts["sources"]["bandwidth_gbps"] = "measured: NVML memory bus width x max memory clock x 2"
        else:
            facts["bandwidth_gbps"] = max(measured["read_bandwidth_gbps"], measured["decode_matmul_bandwidth_gbps"])
            facts["sources"]["bandwidth_gbps"] = f"measured: {command} (fastest read measured; {why_missing})"
    return facts


def _cpu_facts(measured: dict, command: str) -> dict:
    """A CPU has no published peak here: the fastest measured read and matmul stand in for them."""
    total_gib, free_gib = _cpu_memory_gib()
    return {
        "device_name": _cpu_name(),
        "memory_gib": round(total_gib, 2),
        "memory_free_gib": None if free_gib is None else round(free_gib, 2),
        "bandwidth_gbps": max(measured["read_bandwidth_gbps"], measured["decode_matmul_bandwidth_gbps"]),
        "peak_tflops": dict(measured["matmul_tflops"]),
        "sources": {
            "memory_gib": "measured: os.sysconf physical pages (free: /proc/meminfo MemAvailable)",
            "bandwidth_gbps": f"measured: {command} (fastest read measured, no published figure for CPUs)",
            "peak_tflops": f"measured: {command} (no published figure for CPUs; compute efficiency 1.0)",
        },
    }


def profile_device(device: str = "auto", *, quick: bool = False, sizes: Sizes | None = None, name: str | None = None,
                   progress=None) -> HardwareProfile:
    """Measure `device` ('auto', 'cpu', 'cuda', 'cuda:N') into a HardwareProfile.

    progress(step) is called with each entry of STEPS as it starts; `name` is the profile's
    key (default: a slug of the device name); `sizes` overrides the problem sizes.

    Raises:
        DeviceError: as `resolve_device`.
    """
    import torch

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    sizes = sizes or ((QUICK_GPU if quick else FULL_GPU) if gpu else (QUICK_CPU if quick else FULL_CPU))
    command = f"specplan profile --device {device}{' --quick' if quick else ''}"
    started = time.perf_counter()
    if gpu:
        with torch.cuda.device(dev):
            measured = _measure(dev, sizes, progress or (lambda _: None))
            facts = _gpu_facts(dev, measured, command)
    else:
        measured = _measure(dev, sizes, progress or (lambda _: None))
        facts = _cpu_facts(measured, command)
    measured.update(command=command, torch_version=str(torch.__version__), wall_time_s=round(time.perf_counter() - started, 1))
    return _assemble(facts, measured, name=name, gpu=gpu, command=command)


def _assemble(facts: dict, measured: dict, *, name: str | None, gpu: bool, command: str) -> HardwareProfile:
    """Derived fields the performance model reads, each from the raw figure named in sources."""
    from planner.perf.cost import KERNELS_PER_LAYER

    decode_us = measured["decode_matmul_latency_us"]
    launch = measured["launch_overhead_us"]
    quant, quant_origin = chosen_quant_slowdown(measured["quant_matmul_slowdown"])
    peak_bf16 = facts["peak_tflops"].get("bf16") or max(facts["peak_tflops"].values())
    sources = facts["sources"] | {
        "bandwidth_efficiency": f"measured: {command} (decode matmul bandwidth / bandwidth_gbps: weight reads in "
                                "decoding are matrix-vector products, which is what the model predicts)",
        "compute_efficiency": f"measured: {command} (bf16 matmul TFLOP/s / peak bf16)",
        "kernel_launch_us": f"measured: {command} (a one-token step of a small runtime layer / its {KERNELS_PER_LAYER['eager']} ops)",
        "graph_kernel_us": f"measured: {command}" + (" (CUDA-graph replay of the same ops)" if gpu else
                                                      " (no CUDA graphs on a CPU: the eager figure)"),
        "token_slope": f"measured: {command} (decode matmul at 8 tokens over 1 token, per extra token)",
        **({"row_us": f"measured: {command} (runtime layers at 8 tokens over 1, two widths; see measured.runtime_row_us)",
            "row_us_per_mparam": f"measured: {command} (as row_us)"} if not gpu and "unmeasured" not in
           measured.get("runtime_row_us", {}) else {}),
        "gemm_efficiency": f"measured: {command} (decode matmul FLOP/s at each row count / peak bf16)",
        "quant_slowdown": f"measured: {command} ({quant_origin}; see measured.quant_matmul_slowdown)",
    }
    return HardwareProfile(
        name=name or _slug(facts["device_name"]),
        device_name=facts["device_name"],
        kind="gpu" if gpu else "cpu",
        memory_gib=facts["memory_gib"],
        memory_free_gib=facts["memory_free_gib"],
        bandwidth_gbps=facts["bandwidth_gbps"],
        peak_tflops=facts["peak_tflops"],
        bandwidth_efficiency=_sig(measured["decode_matmul_bandwidth_gbps"] / facts["bandwidth_gbps"]),
        compute_efficiency=_sig(measured["matmul_tflops"]["bf16"] / peak_bf16),
        kernel_launch_us=launch["eager"],
        graph_kernel_us=launch.get("graph", launch["eager"]),
        token_slope=token_slope(decode_us),
        row_us=measured.get("runtime_row_us", {}).get("row_us", 0.0),
        row_us_per_mparam=measured.get("runtime_row_us", {}).get("row_us_per_mparam", 0.0),
        gemm_efficiency=gemm_efficiency_curve(decode_us, measured["decode_matmul_shape"], peak_bf16) if gpu else {},
        quant_slowdown=quant,
        sources=sources,
        measured=measured,
    )
