"""HardwareProfile: one device as data, read from and written to profile YAML.

A profile holds published figures (peak bandwidth, peak FLOP/s, memory) and the
efficiency factors the performance model applies to them; a measured profile also
holds the raw measurements in `measured`. Every figure's origin is in `sources`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from planner._fields import from_mapping, versioned_mapping
from planner._yaml import read_yaml, write_yaml_atomic
from planner.errors import InputError, NotFoundError, SpecplanWarning, near_matches
from planner.profiles import PROFILES_DIR

SCHEMA_VERSION = 1
SHIPPED_DIR = PROFILES_DIR / "gpus"
MEASURED_DIR = SHIPPED_DIR / "measured"  # profiles `specplan profile` measured on real devices, committed


def decode_dtype_for(kind: str, peak_tflops: dict) -> str:
    """The dtype unquantized decoding runs in on a device of `kind` ("gpu" or "cpu") with
    these matmul FLOP/s per dtype: bf16 on GPUs; on CPUs bf16 where its matmul reaches at
    least half of fp32's FLOP/s (a bandwidth-bound decode step then reads half the bytes
    at no loss: AVX512-BF16/AMX CPUs), else fp32 (CPUs that emulate bf16 run it far slower)."""
    if kind == "gpu":
        return "bf16"
    bf16, fp32 = peak_tflops.get("bf16", 0.0), peak_tflops.get("fp32", 0.0)
    return "bf16" if fp32 and bf16 >= 0.5 * fp32 else "fp32"


@dataclass(frozen=True)
class HardwareProfile:
    name: str  # key, e.g. "h100-sxm" or "cpu-local"
    device_name: str  # what the vendor calls it, e.g. "NVIDIA H100 80GB HBM3"
    kind: str  # "gpu" or "cpu"
    memory_gib: float  # VRAM (or RAM on a CPU)
    bandwidth_gbps: float  # peak memory bandwidth, GB/s (1e9 bytes/s)
    peak_tflops: dict[str, float]  # dense peak per dtype: bf16, fp16, fp32 (int8 where known)
    bandwidth_efficiency: float = 0.85  # achievable fraction of bandwidth_gbps for weight reads
    compute_efficiency: float = 0.70  # achievable fraction of peak_tflops for GEMMs
    kernel_launch_us: float = 5.0  # per kernel, eager mode
    graph_kernel_us: float = 1.5  # per kernel, under CUDA-graph replay
    token_slope: float = 0.01  # extra time of a decode GEMM per additional token (n tokens: 1 + slope*(n-1))
    # CPU: microseconds each extra token adds to a decoder layer as the runtime runs it, row_us +
    # row_us_per_mparam x the layer's linear parameters in millions (measured by `specplan profile`
    # on two runtime layers); both 0: not measured, and the token slope prices extra tokens
    row_us: float = 0.0
    row_us_per_mparam: float = 0.0
    # host work per draft forward beyond its kernels (the drafting loop's sampling and cache
    # bookkeeping); 0 unless fitted to a tune study's trials (planner.tune.fit)
    draft_step_us: float = 0.0
    quant_slowdown: dict[str, float] = field(default_factory=lambda: {"int8": 1.3, "int4": 1.45})
    # achieved fraction of peak FLOP/s of a decode-shaped GEMM per row count (batch x tokens),
    # measured by `specplan profile`; empty: tensor-core tile quantization (planner.perf.cost)
    gemm_efficiency: dict[int, float] = field(default_factory=dict)
    memory_free_gib: float | None = None
    # How GPUs of this kind reach each other under tensor parallelism: "nvlink" or "pcie";
    # interconnect_gbps per GPU and direction (GB/s); 0: unknown, tensor parallel refused.
    interconnect: str = "pcie"
    interconnect_gbps: float = 0.0
    # Fixed cost, microseconds, of one small (decode-sized: a few KB to ~100 KB) all-reduce over
    # the GPUs of a tensor-parallel group: one figure for any GPU count, or {GPU count: us} where
    # it grows with the count (`allreduce_latency_s`); the figures' origin is in `sources`.
    allreduce_latency_us: float | dict[int, float] = 0.0
    sources: dict[str, str] = field(default_factory=dict)
    measured: dict | None = None

    @property
    def decode_dtype(self) -> str:
        """"bf16" or "fp32": what the runtime decodes unquantized weights in on this device."""
        return decode_dtype_for(self.kind, self.peak_tflops)

    def allreduce_latency_s(self, gpus: int) -> float:
        """Seconds of fixed cost of one small (decode-sized) all-reduce over `gpus` GPUs (0 for one):
        `allreduce_latency_us`, or where that maps GPU counts to microseconds, its figure for `gpus`,
        linear between the two nearest counts it gives and held at its first or last count beyond them."""
        if gpus <= 1:
            return 0.0
        table = self.allreduce_latency_us
        if not isinstance(table, dict):
            return table * 1e-6
        counts = sorted(table)
        if gpus <= counts[0]:
            return table[counts[0]] * 1e-6
        for low, high in zip(counts, counts[1:]):
            if gpus <= high:
                share = (gpus - low) / (high - low)
                return (table[low] + share * (table[high] - table[low])) * 1e-6
        return table[counts[-1]] * 1e-6

    @property
    def effective_bandwidth_gbps(self) -> float:
        return self.bandwidth_gbps * self.bandwidth_efficiency

    def to_dict(self) -> dict:
        data = {"schema_version": SCHEMA_VERSION}
        data.update(dataclasses.asdict(self))
        return data

    def save(self, path) -> None:
        """Write the profile as YAML to `path`, atomically.

        Raises:
            InputError: `path` cannot be written.
        """
        write_yaml_atomic(path, self.to_dict())


_POSITIVE = ("memory_gib", "memory_free_gib", "bandwidth_gbps", "peak_tflops", "quant_slowdown")
_FRACTIONS = ("bandwidth_efficiency", "compute_efficiency", "gemm_efficiency")  # achievable share of a peak: (0, 1]
_NON_NEGATIVE = ("kernel_launch_us", "graph_kernel_us", "token_slope", "draft_step_us", "interconnect_gbps",
                 "allreduce_latency_us", "row_us", "row_us_per_mparam")
# Figures of the device the performance model uses whose dataclass default is a typical value,
# not this device's: a profile file that leaves one out is read with the default, its source
# says so and a SpecplanWarning names it. (draft_step_us, gemm_efficiency and the interconnect
# default to "not fitted", "not measured" and "none", which the model treats as such.)
STAND_IN_FIELDS = ("bandwidth_efficiency", "compute_efficiency", "kernel_launch_us", "graph_kernel_us", "token_slope",
                   "quant_slowdown")
# microsecond figures, per op, row, draft forward or all-reduce: a second is beyond any device
_MICROSECONDS = ("kernel_launch_us", "graph_kernel_us", "draft_step_us", "allreduce_latency_us", "row_us", "row_us_per_mparam")
MAX_US = 1e6
INTERCONNECTS = ("nvlink", "pcie")
KINDS = ("gpu", "cpu")


def _check_range(name: str, path: str, value) -> None:
    if name in _POSITIVE and value <= 0:
        raise InputError(f"{path}: must be positive, got {value}")
    if name in _FRACTIONS and not 0 < value <= 1:
        raise InputError(f"{path}: must be a fraction of the peak, above 0 and at most 1, got {value}")
    if name in _NON_NEGATIVE and value < 0:
        raise InputError(f"{path}: must not be negative, got {value}")
    if name in _MICROSECONDS and value > MAX_US:
        raise InputError(f"{path}: {value} us is more than a second: not a figure of a device")
    if name == "interconnect" and value not in INTERCONNECTS:
        raise InputError(f"{path}: '{value}' is not one of {', '.join(INTERCONNECTS)}")
    if name == "kind" and value not in KINDS:
        raise InputError(f"{path}: '{value}' is not one of {', '.join(KINDS)}")


def profile_from_dict(data: object, origin: str = "profile") -> HardwareProfile:
    """A HardwareProfile from the mapping a profile file holds, every field checked. A figure
    of STAND_IN_FIELDS that the mapping leaves out takes the dataclass default, its source
    says so, and a SpecplanWarning names it.

    Raises:
        InputError: "<origin>: <field path>: <why>" for the first field that is unknown, missing,
            of the wrong type, not finite, or out of range (peaks, bandwidths and memory must be
            positive, efficiencies in (0, 1], launch costs, token_slope and draft_step_us not negative,
            microsecond figures at most a second;
            allreduce_latency_us a number or a mapping of GPU counts, 2 or more, to microseconds).
    """
    data = versioned_mapping(data, origin, what="a profile", version=SCHEMA_VERSION)
    try:
        profile = from_mapping(HardwareProfile, data, check=_check_range)
    except InputError as exc:
        raise InputError(f"{origin}: {exc}") from None
    defaulted = [name for name in STAND_IN_FIELDS if name not in data]
    if defaulted:
        given = ", ".join(f"{name} {getattr(profile, name)}" for name in defaulted)
        warnings.warn(SpecplanWarning(f"{origin}: not in the file, so specplan's default is used: {given}"), stacklevel=2)
        said = {name: f"default: not in {origin}; specplan's typical figure" for name in defaulted}
        profile = dataclasses.replace(profile, sources={**profile.sources, **said})
    if not profile.peak_tflops:
        raise InputError(f"{origin}: peak_tflops: must map dtypes to TFLOP/s")
    latency = profile.allreduce_latency_us
    if isinstance(latency, dict):
        if not latency:
            raise InputError(f"{origin}: allreduce_latency_us: must be a number or map GPU counts to microseconds")
        if min(latency) < 2:
            raise InputError(f"{origin}: allreduce_latency_us.{min(latency)}: a GPU count must be 2 or more "
                             "(one GPU does no all-reduce)")
    return profile


def shipped_profile_names() -> list[str]:
    """Hand-written profiles of published specs (the fleet the planner compares)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def measured_profile_names() -> list[str]:
    """Committed measured profiles, loadable by name like shipped ones."""
    return sorted(p.stem for p in MEASURED_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A shipped or committed measured profile by name (e.g. 'a10g'), or a profile YAML by path.

    Raises:
        NotFoundError: no such profile name (with the near ones) or file.
        InputError: a file that is unreadable, not UTF-8, not YAML, or has a field that does
            not validate (see `profile_from_dict`).
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return profile_from_dict(read_yaml(path), origin=str(path))
    key = name_or_path.lower()
    for folder in (SHIPPED_DIR, MEASURED_DIR):
        if (folder / f"{key}.yaml").exists():
            return profile_from_dict(read_yaml(folder / f"{key}.yaml"), origin=str(folder / f"{key}.yaml"))
    known = shipped_profile_names() + measured_profile_names()
    raise NotFoundError(
        f"unknown GPU profile '{name_or_path}'{near_matches(key, known)}"
        " (run `specplan profiles` to list them, or pass a profile YAML path)"
    )


def shipped_profiles() -> list[HardwareProfile]:
    return [load_profile(name) for name in shipped_profile_names()]


def measured_profiles() -> list[HardwareProfile]:
    return [load_profile(name) for name in measured_profile_names()]
