"""What the NVIDIA driver reports about a GPU (via `nvidia-ml-py`), read lazily.

NVML gives facts no micro-benchmark can: total and free memory as the driver sees them,
and the memory interface (bus width, maximum memory clock) the theoretical bandwidth
follows from.
"""

from __future__ import annotations


def theoretical_bandwidth_gbps(bus_width_bits: int, max_memory_clock_mhz: float) -> float:
    """Peak DRAM bandwidth: bus width in bytes x NVML's max memory clock x 2 transfers per clock.

    NVML reports the memory clock so that the double-data-rate factor of 2 yields the
    vendor's figure for HBM and GDDR parts alike (H100 SXM: 5120 bit x 2619 MHz -> 3352 GB/s)."""
    return bus_width_bits / 8 * max_memory_clock_mhz * 1e6 * 2 / 1e9


def nvml_facts(index: int, uuid: str | None = None) -> tuple[dict, str | None]:
    """(facts, why_missing): memory and memory-interface figures for one GPU.

    The GPU is found by `uuid` (torch's, without NVML's 'GPU-' prefix) when given, since
    CUDA_VISIBLE_DEVICES and CUDA's device order can make CUDA index N another NVML index;
    else by `index`. Facts are empty and `why_missing` says why when nvidia-ml-py or the
    driver is absent; the profiler then falls back to torch's view of the device."""
    try:
        import pynvml
    except ImportError:
        return {}, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {}, f"NVML did not start ({exc})"
    try:
        handle = _handle(pynvml, index, uuid)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        facts = {"memory_total_gib": round(memory.total / 2**30, 2), "memory_free_gib": round(memory.free / 2**30, 2)}
        try:
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        except (pynvml.NVMLError, AttributeError) as exc:  # AttributeError: an nvidia-ml-py without the call
            return facts, f"NVML gave no memory bus width or clock ({exc})"
        facts.update(
            memory_bus_width_bits=bus_bits,
            max_memory_clock_mhz=clock_mhz,
            theoretical_bandwidth_gbps=round(theoretical_bandwidth_gbps(bus_bits, clock_mhz), 1),
        )
        return facts, None
    except pynvml.NVMLError as exc:
        return {}, f"NVML could not read GPU {index} ({exc})"
    finally:
        pynvml.nvmlShutdown()


def _handle(pynvml, index: int, uuid: str | None):
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass  # e.g. a MIG slice's UUID: the index is the best remaining guess
    return pynvml.nvmlDeviceGetHandleByIndex(index)
