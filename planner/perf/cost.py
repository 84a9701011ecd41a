"""Forward latency of a decoder: a roofline per layer plus per-kernel launch overhead.

    T(n, layers) = layers * [max(bytes / BW_eff, flops / C_eff) + k_layer * t_kernel]
                 + max(head_bytes / BW_eff, head_flops / C_eff) + k_head * t_kernel

bytes = weight bytes read at the quantization (times the profile's measured slowdown of
weight-only kernels) + the KV cache read at context S (+ written for the n new tokens),
for every sequence of the batch; flops = 2 x linear params a token runs through x n +
attention 4 x n x S x heads x head_dim, per sequence. BW_eff and C_eff are the profile's
peak x efficiency. A mixture-of-experts layer reads its attention, router and shared expert
whatever the routing, and only the experts its B x n tokens are routed to
(`expected_experts_read`); its memory holds them all (planner.perf.memory).
Launch overhead is what keeps eager decoding of small models flat in n; t_kernel is the
profile's eager or CUDA-graph per-kernel cost.

On a CPU whose profile measured them (`row_us`, `row_us_per_mparam`: `specplan profile` times the
runtime's own layers over 1 and 8 tokens at two widths), each row past the first adds its own
time instead of a token slope on the weight read: per layer, row_us + row_us_per_mparam x the
layer's linear parameters in millions (and the LM head its parameters' share). On the build
machine's 2 AMX cores the quick profile fits 7.4 us + 1.8 us per million parameters (about 14 us a
row for SmolLM2-135M's layer, 20 measured): its verify over 4 tokens is predicted at 1.09
one-token steps (measured 1.10) where the token slope of a large matmul (0.006) gave 1.01.

Compute runs at the GEMM efficiency of the forward's row count (batch x new tokens,
`gemm_efficiency`): a measured curve where `specplan profile` measured one, else tensor-core
tile quantization. Weight reads over n > 1 tokens take the profile's token slope longer, or,
where the engine publishes its quantized kernels' throughput over rows (llama.cpp's mat-vec and
MMQ kernels, `EngineCost.rows_tokens_per_s`), that curve's cost (`row_cost`). A serving
engine adds its own host work per step (`EngineCost`: scheduling, input preparation, sampling,
rejection sampling, host sync) and its n-gram proposer's scan of the context
(`ngram_proposer_s`); the built-in runtime's engine cost is zero beyond its kernels.

Tensor parallel over N GPUs (Megatron-LM's layout, Shoeybi et al. 2019, arXiv:1909.08053, as
vLLM and SGLang shard a decoder): each GPU reads 1/N of every layer's weights and of the LM
head (vocabulary-parallel), holds the KV of max(1, kv_heads / N) of the KV heads (a KV head is
replicated when N exceeds their count), runs 1/N of the FLOPs, and waits for one all-reduce of
the hidden states after attention and one after the MLP:

    T_allreduce = latency + 2 (N - 1) / N x bytes / interconnect      (ring all-reduce)

bytes = batch x new tokens x hidden x activation bytes; latency and interconnect (one
direction, per GPU) from the profile (`allreduce_latency_us`, for N GPUs where the profile
gives it per GPU count; `interconnect_gbps`). The
2 (N - 1) / N factor is a ring all-reduce's traffic per GPU (Patarasuk & Yuan 2009, "Bandwidth
optimal all-reduce algorithms for clusters of workstations").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.errors import InputError
from planner.hardware.profile import HardwareProfile
from planner.models.spec import DTYPE_BYTES, ModelSpec

# Ops one decoder layer of the runtime (planner/runtime/model.py) dispatches: eager runs
# every elementwise op of the norms, rotary embedding, attention and cache update on its own
# (64 top-level aten ops per layer, 17 outside the layers, counted with torch.profiler on
# a one-token step); a compiled CUDA-graph step fuses them into about eight kernels.
KERNELS_PER_LAYER = {"eager": 64, "graph": 8}
KERNELS_PER_HEAD = {"eager": 17, "graph": 3}  # embedding, final norm, LM head, argmax/sampling
# The smallest row count of a dense bf16/fp16 tensor-core MMA: the PTX ISA's mma.sync shapes
# m16n8k8/m16n8k16 (NVIDIA PTX ISA, "Warp-level matrix multiply-accumulate instructions").
# A GEMM over fewer rows pays for 16 (tile quantization, NVIDIA "Matrix Multiplication
# Background User's Guide"), so its achieved FLOP/s scale as rows / 16 below that.
MMA_ROWS = 16
VERIFY_KV_READS = ("once", "per_token")


@dataclass(frozen=True)
class EngineCost:
    """What one serving engine adds to a step beside the forward's kernels (engines.yaml `cost`).

    step_us: host time per engine step (one target forward) that the GPU waits for:
    scheduling, input preparation, sampling, output processing, host sync. It is the same
    under CUDA graphs and eager; the execution mode changes the kernels' launch cost
    (kernels_per_layer x the profile's per-kernel cost). sequence_us: more per sequence of the
    batch. speculative_step_us: more per speculative iteration (draft bookkeeping, rejection
    sampling, the extra sync). draft_step_us: more per draft forward of a learned head or a
    draft model (each EAGLE step's sampling, tree bookkeeping and sync). ngram_step_us /
    ngram_token_ns: the n-gram proposer per
    iteration, fixed and per context token of each sequence. kernels_per_layer: the engine's
    kernels per decoder layer (None: the built-in runtime's counts, KERNELS_PER_LAYER).
    verify_kv_reads: "once" (one multi-token attention over the cache per sequence) or
    "per_token" (each verified token attends as a sequence of its own: vLLM 0.5's batch
    expansion, vllm/spec_decode/batch_expansion.py). rows_tokens_per_s: quantization ->
    {rows: tokens/s} the engine's own benchmark published for a forward over that many rows
    (its quantized matmul kernels' token-count curve, `row_cost`); a quantization absent here
    takes the profile's token_slope."""

    name: str = "specplan"
    graphs: bool = True  # the engine's default execution: CUDA graphs, or eager
    step_us: float = 0.0
    sequence_us: float = 0.0
    speculative_step_us: float = 0.0
    draft_step_us: float = 0.0
    ngram_step_us: float = 0.0
    ngram_token_ns: float = 0.0
    kernels_per_layer: int | None = None
    verify_kv_reads: str = "once"
    rows_tokens_per_s: dict[str, dict[int, float]] = field(default_factory=dict)

    def step_s(self, batch_size: int) -> float:
        """Seconds of engine host work per target forward at `batch_size` sequences."""
        return (self.step_us + batch_size * self.sequence_us) * 1e-6


RUNTIME = EngineCost()  # specplan's own decoding loop: its kernels are all it costs


@dataclass(frozen=True)
class Execution:
    """How the runtime executes a forward on a profile."""

    dtype: str  # activation / unquantized weight dtype: HardwareProfile.decode_dtype
    graphs: bool  # CUDA graphs (compiled fixed-shape steps) or eager
    engine: EngineCost = RUNTIME  # the serving engine's own cost per step
    tensor_parallel: int = 1  # GPUs each forward is split over (Megatron-style); 1: one GPU

    @classmethod
    def default_for(cls, profile: HardwareProfile, engine: EngineCost = RUNTIME, graphs: bool | None = None,
                    tensor_parallel: int = 1) -> "Execution":
        """The built-in runtime's execution on `profile` (CUDA graphs on a GPU), or `engine`'s
        default mode there; `graphs` overrides the mode (a CPU never has graphs);
        `tensor_parallel` GPUs share each forward."""
        if graphs is None:
            graphs = engine.graphs
        return cls(dtype=profile.decode_dtype, graphs=graphs and profile.kind == "gpu", engine=engine,
                   tensor_parallel=tensor_parallel)

    def kernel_s(self, profile: HardwareProfile) -> float:
        return (profile.graph_kernel_us if self.graphs else profile.kernel_launch_us) * 1e-6

    @property
    def mode(self) -> str:
        return "graph" if self.graphs else "eager"

    @property
    def kernels_per_layer(self) -> int:
        return self.engine.kernels_per_layer or KERNELS_PER_LAYER[self.mode]


def _peak_tflops(profile: HardwareProfile, dtype: str) -> float:
    return profile.peak_tflops.get(dtype) or profile.peak_tflops.get("bf16") or max(profile.peak_tflops.values())


def gemm_efficiency(profile: HardwareProfile, rows: int) -> float:
    """Achieved fraction of peak FLOP/s of a decode-shaped GEMM over `rows` rows (batch x tokens).

    A measured curve (`HardwareProfile.gemm_efficiency`, rows -> fraction, from `specplan
    profile`) is interpolated linearly in log2(rows), held flat below its first point, and
    beyond its last point keeps that point's latency (the fraction grows with rows) up to
    compute_efficiency. Without
    one, a GPU pays tensor-core tile quantization: compute_efficiency x min(1, rows / 16)
    (MMA_ROWS); a CPU runs at compute_efficiency whatever the rows."""
    curve = sorted(profile.gemm_efficiency.items())
    if not curve:
        if profile.kind != "gpu":
            return profile.compute_efficiency
        return profile.compute_efficiency * min(1.0, rows / MMA_ROWS)
    if rows <= curve[0][0]:
        return curve[0][1]
    for (r0, e0), (r1, e1) in zip(curve, curve[1:]):
        if rows <= r1:
            t = (math.log2(rows) - math.log2(r0)) / (math.log2(r1) - math.log2(r0))
            return e0 + t * (e1 - e0)
    last_rows, last = curve[-1]
    return max(last, min(profile.compute_efficiency, last * rows / last_rows))


def row_cost(tokens_per_s: dict[int, float], rows: int) -> float:
    """Time of a forward over `rows` rows relative to a one-row forward, from an engine's published
    throughput at each row count (tokens/s of forwards over r rows, r = 1 among them):

        c(r) = r x R(1) / R(r)

    interpolated linearly in rows between published row counts; beyond the last one the
    throughput stays that row count's (c grows with rows as the compute roof takes over)."""
    curve = sorted((r, r * tokens_per_s[1] / rate) for r, rate in tokens_per_s.items())
    for (r0, c0), (r1, c1) in zip(curve, curve[1:]):
        if rows <= r1:
            return c0 + (rows - r0) / (r1 - r0) * (c1 - c0)
    last_rows, last = curve[-1]
    return last * rows / last_rows


def weight_read_factor(profile: HardwareProfile, engine: EngineCost, quant: str, *, rows: int, new_tokens: int) -> float:
    """How much longer a forward's weight-streaming matmuls take over `rows` rows (batch x new tokens)
    than over one: the engine's published curve for `quant` (`row_cost`) where it has one, else
    the profile's token slope, 1 + token_slope x (new_tokens - 1)."""
    curve = engine.rows_tokens_per_s.get(quant)
    if curve:
        return row_cost(curve, rows)
    return 1.0 + profile.token_slope * (new_tokens - 1)


def cpu_rows_measured(profile: HardwareProfile) -> bool:
    """Whether `profile` prices extra rows by the CPU per-row figures (row_us, row_us_per_mparam)
    that `specplan profile` measures on the runtime's own layers, instead of the token slope:
    on a CPU the rows' arithmetic, attention and repacking add to the weight stream's time
    rather than hide under it (BENCHMARKS.md, "The planner on this CPU", session 10)."""
    return profile.kind == "cpu" and (profile.row_us > 0 or profile.row_us_per_mparam > 0)


def compute_dtype(quant: str, dtype: str) -> str:
    """The dtype the matmuls run in: fp8 for W8A8 fp8 weights, else the activation dtype."""
    return "fp8" if quant == "fp8" else dtype


def _weight_read_bytes(weight_bytes: float, quant: str, profile: HardwareProfile) -> float:
    """Bytes as a bf16 kernel would have to stream to take as long as the quantized one."""
    return weight_bytes * (profile.quant_slowdown.get(quant, 1.0) if quant != "none" else 1.0)


def expected_experts_read(num_experts: int, experts_per_token: int, tokens: int) -> float:
    """Expected distinct experts of one MoE layer that a forward over `tokens` tokens reads.

        E_read = E x (1 - (1 - k/E)^tokens)      (0 <= E_read <= E; k for one token)

    Assumption: every token picks its k of the E experts uniformly and independently of the
    other tokens, so an expert escapes one token with probability C(E-1, k)/C(E, k) = 1 - k/E
    and all of them with (1 - k/E)^tokens; the expected number read is E times one minus that
    (linearity of expectation). Trained routers are pushed towards uniform use by their
    load-balancing loss (Switch Transformer, Fedus et al. 2022, arXiv:2101.03961), but tokens
    of one sequence tend to share experts and uneven use reads fewer of them, so the figure
    leans high. 0 for a dense model (E = 0)."""
    if num_experts == 0:
        return 0.0
    return num_experts * (1 - (1 - experts_per_token / num_experts) ** tokens)


def layer_weight_read_bytes(spec: ModelSpec, *, tokens: int, quant: str = "none", dtype: str = "bf16") -> float:
    """Weight bytes one layer's forward over `tokens` tokens (batch x new tokens) reads: all of
    a dense layer; outside its experts plus the expected experts read for a MoE layer."""
    experts = expected_experts_read(spec.num_experts, spec.num_experts_per_tok, tokens)
    return spec.layer_dense_bytes(quant, dtype) + experts * spec.expert_bytes(quant, dtype)


def kv_share(spec: ModelSpec, tensor_parallel: int) -> float:
    """The share of a layer's KV cache one of `tensor_parallel` GPUs holds: its KV heads,
    max(1, kv_heads / N) of them (a KV head is replicated where N exceeds their count)."""
    if spec.num_kv_heads == 0:  # no attention (Medusa's heads)
        return 0.0
    return max(1.0, spec.num_kv_heads / tensor_parallel) / spec.num_kv_heads


def allreduce_s(profile: HardwareProfile, nbytes: float, tensor_parallel: int) -> float:
    """Seconds of one all-reduce of `nbytes` over `tensor_parallel` GPUs of `profile` (0 for
    one GPU): latency + 2 (N - 1) / N x nbytes / interconnect (a ring all-reduce's traffic per GPU),
    the latency the profile's for N GPUs (`HardwareProfile.allreduce_latency_s`).

    Raises:
        InputError: N > 1 on a profile whose interconnect bandwidth is unknown.
    """
    if tensor_parallel == 1:
        return 0.0
    if profile.interconnect_gbps <= 0:
        raise InputError(f"{profile.name} states no interconnect bandwidth: `tensor_parallel` {tensor_parallel} "
                         "cannot be costed (add interconnect_gbps to its profile)")
    ring = 2 * (tensor_parallel - 1) / tensor_parallel * nbytes / (profile.interconnect_gbps * 1e9)
    return profile.allreduce_latency_s(tensor_parallel) + ring


def layer_time_s(
    spec: ModelSpec, profile: HardwareProfile, *, new_tokens: int, context: int, batch_size: int = 1,
    quant: str = "none", execution: Execution | None = None,
) -> float:
    """One decoder layer over `new_tokens` tokens per sequence attending to `context` tokens."""
    ex = execution or Execution.default_for(profile)
    tp = ex.tensor_parallel
    rows = batch_size * new_tokens
    read = layer_weight_read_bytes(spec, tokens=rows, quant=quant, dtype=ex.dtype)
    weights = _weight_read_bytes(read, quant, profile) / tp
    # Each sequence's cache is read once per forward, or once per new token where the engine
    # verifies each token as a sequence of its own (EngineCost.verify_kv_reads).
    kv_reads = new_tokens if ex.engine.verify_kv_reads == "per_token" else 1
    kv = batch_size * (context + new_tokens) * spec.kv_bytes_per_token_per_layer(ex.dtype) * kv_reads * kv_share(spec, tp)
    linear_flops = batch_size * spec.layer_flops(new_tokens, 0) / tp
    attention_flops = (batch_size * spec.layer_flops(new_tokens, context) - linear_flops * tp) / tp
    # Decode GEMMs are not perfectly flat in n below the compute roof: the profile's measured
    # slope of the 4096x14336 matmul's latency per extra token, or the engine's own curve for
    # its quantized kernels over a few rows (llama.cpp's mat-vec kernels cost grows with rows).
    rows_s = 0.0
    if cpu_rows_measured(profile):  # a CPU's extra rows add their own time (measured on the runtime's layers)
        rows_s = (rows - 1) * (profile.row_us + profile.row_us_per_mparam * linear_flops / (2 * rows) / 1e6) * 1e-6
    else:
        weights *= weight_read_factor(profile, ex.engine, quant, rows=rows, new_tokens=new_tokens)
    memory_s = (weights + kv) / (profile.effective_bandwidth_gbps * 1e9) + rows_s
    peak = _peak_tflops(profile, compute_dtype(quant, ex.dtype)) * 1e12
    compute_s = linear_flops / (peak * gemm_efficiency(profile, rows)) + attention_flops / (peak * profile.compute_efficiency)
    hidden_bytes = rows * spec.hidden_size * DTYPE_BYTES[ex.dtype]
    reduce_s = 2 * allreduce_s(profile, hidden_bytes, tp)  # after attention and after the MLP
    return max(memory_s, compute_s) + ex.kernels_per_layer * ex.kernel_s(profile) + reduce_s


def head_time_s(
    spec: ModelSpec, profile: HardwareProfile, *, new_tokens: int, batch_size: int = 1, quant: str = "none",
    execution: Execution | None = None,
) -> float:
    """Final norm, any embedding projections and LM head (read on every forward), plus the step's fixed kernels."""
    ex = execution or Execution.default_for(profile)
    head_quant = "none" if spec.tie_embeddings else quant  # a tied head stays unquantized
    weights = _weight_read_bytes(spec.head_bytes(head_quant, ex.dtype), head_quant, profile) / ex.tensor_parallel
    curve = ex.engine.rows_tokens_per_s.get(head_quant)
    if curve:  # the engine's quantized matmul kernels cost a quantized head over rows as they cost the layers
        weights *= row_cost(curve, batch_size * new_tokens)
    flops = batch_size * spec.head_flops(new_tokens) / ex.tensor_parallel
    memory_s = weights / (profile.effective_bandwidth_gbps * 1e9)
    if cpu_rows_measured(profile):  # the head's extra rows: the weight-proportional part of row_us_per_mparam
        memory_s += (batch_size * new_tokens - 1) * profile.row_us_per_mparam * flops / (2 * batch_size * new_tokens) / 1e12
    peak = _peak_tflops(profile, compute_dtype(head_quant, ex.dtype)) * 1e12
    compute_s = flops / (peak * gemm_efficiency(profile, batch_size * new_tokens))
    return max(memory_s, compute_s) + KERNELS_PER_HEAD[ex.mode] * ex.kernel_s(profile)


def forward_latency_s(
    spec: ModelSpec, profile: HardwareProfile, *, layers: int | None = None, new_tokens: int = 1,
    context: int = 2048, batch_size: int = 1, quant: str = "none", execution: Execution | None = None,
) -> float:
    """One forward of `layers` decoder layers (default: all) over `new_tokens` tokens."""
    layers = spec.num_layers if layers is None else layers
    kw = dict(batch_size=batch_size, quant=quant, execution=execution)
    return layers * layer_time_s(spec, profile, new_tokens=new_tokens, context=context, **kw) + head_time_s(
        spec, profile, new_tokens=new_tokens, **kw
    )


def ngram_proposer_s(execution: Execution, *, batch_size: int, context: int) -> float:
    """Seconds an engine's n-gram (prompt lookup) proposer takes per iteration: a fixed part
    (host-device syncs, launches) plus a scan of each sequence's `context` tokens."""
    engine = execution.engine
    return engine.ngram_step_us * 1e-6 + batch_size * context * engine.ngram_token_ns * 1e-9
