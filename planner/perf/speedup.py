"""Iteration time per method, tokens per iteration, throughput, speedup: `predict`.

    T_iter = T_draft + T_verify            tokens/s (per sequence) = tau / T_iter
    speedup = tau * T(1, all) / T_iter     (over autoregressive at the same quantization)

Drafting per method (T(n, layers) from planner.perf.cost; t_d the profile's draft_step_us,
host work per draft forward, 0 unless a tune study fitted it):
    layer_skip    gamma x (T(1, kept) + t_d)   sequential self-drafting
    s3d           T(gamma, kept) + t_d         one forward of [token, mask x (gamma-1)]; its LM head
                                               reads draft_vocab_size rows when the adapter has
                                               a draft vocabulary (planner.runtime.adapter)
    early_exit    gamma x (T(1, first E) + t_d)
                                               verify: T(gamma+1, all)
                                               for the last draft token only (the runtime
                                               reuses the draft's lower-layer states)
    draft_model   gamma x (T_draft(1) + t_d)
    prompt_lookup the engine's n-gram proposer (planner.perf.cost.ngram_proposer_s)
    eagle, eagle3, mtp   T_head(gamma+1) + (gamma-1) x T_head(topk)
                  the head (planner.perf.heads) first runs over the verified window (the
                  draft extend, which also yields the first step's top-k), then one step per
                  further depth over topk tokens per sequence (SGLang's EAGLE worker; a chain
                  is topk 1, as vLLM's EAGLE proposer runs it)
    medusa        one pass of the gamma heads' weights (each a residual block and an LM head)
Verify: T(n, all) over the verified tokens n: gamma + 1 for a chain, num_draft_tokens for a
tree (one forward with a tree attention mask; each token attends to the context and its
ancestors, priced as attention over the context). tau of a tree:
planner.perf.acceptance.tree_tokens_per_iteration. Every target forward (a plain step or a verify) adds the engine's
host work per step, E(B) = step + B x per-sequence; a speculative iteration adds the
engine's speculative_step on top (planner.perf.cost.EngineCost). Sanity: speedup <= tau.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial

from planner.errors import InputError
from planner.hardware.profile import HardwareProfile
from planner.models.spec import ModelSpec
from planner.perf.acceptance import (
    Prior, position_acceptances, resolve_priors, size_gap, skipped_fraction, tokens_per_iteration,
    tree_tokens_per_iteration,
)
from planner.perf.cost import Execution, forward_latency_s, layer_time_s, ngram_proposer_s
from planner.perf.heads import HEAD_METHODS, head_spec, medusa_spec
from planner.perf.memory import GIB, EngineMemory, vram_bytes
from planner.plan.schema import Decoding, Prediction


@dataclass(frozen=True)
class Detail:
    prediction: Prediction
    alphas: tuple[float, ...]
    autoregressive_s: float  # T(1, all): one plain decoding step
    draft_s: float
    verify_s: float
    vram_bytes: dict[str, float]  # by component (planner.perf.memory.vram_bytes); vram_gib is their sum


def verified_tokens(d: Decoding) -> int:
    """Tokens one verify forward runs per sequence: the tree's num_draft_tokens, else gamma + 1."""
    return d.num_draft_tokens or d.gamma + 1


def _head_draft_s(spec, profile, d: Decoding, *, context, batch_size, execution, draft_spec) -> float:
    draft_ex = dataclasses.replace(execution, tensor_parallel=d.draft_tensor_parallel or execution.tensor_parallel)
    if d.method == "medusa":
        heads = medusa_spec(spec, d.gamma)
        return d.gamma * layer_time_s(heads, profile, new_tokens=1, context=0, batch_size=batch_size,
                                      quant=d.draft_quant, execution=draft_ex)
    H = partial(forward_latency_s, head_spec(d.method, spec, draft_spec), profile, context=context,
                batch_size=batch_size, quant=d.draft_quant, execution=draft_ex)
    return H(new_tokens=d.gamma + 1) + (d.gamma - 1) * H(new_tokens=d.topk)


def _draft_and_verify_s(spec, profile, d: Decoding, *, context, batch_size, execution, draft_spec):
    forward = partial(forward_latency_s, profile=profile, context=context, batch_size=batch_size, quant=d.quant,
                      execution=execution)
    T = partial(forward, spec)
    kept = spec.num_layers - len(d.skip_layers)
    verify = T(new_tokens=verified_tokens(d))
    host_s = profile.draft_step_us * 1e-6  # per draft forward
    if d.method == "autoregressive":
        return 0.0, T(new_tokens=1)
    if d.method == "layer_skip":
        return d.gamma * (T(layers=kept, new_tokens=1) + host_s), verify
    if d.method == "s3d":
        trimmed = dataclasses.replace(spec, vocab_size=min(d.draft_vocab_size or spec.vocab_size, spec.vocab_size))
        return forward(trimmed, layers=kept, new_tokens=d.gamma) + host_s, verify  # its head: the draft vocabulary
    if d.method == "early_exit":
        return d.gamma * (T(layers=d.exit_layer, new_tokens=1) + host_s), verify
    if d.method == "draft_model":
        if draft_spec is None:
            raise InputError("method draft_model needs the draft model's spec: `draft_spec`")
        draft_ex = dataclasses.replace(execution, tensor_parallel=d.draft_tensor_parallel or execution.tensor_parallel)
        step = forward_latency_s(draft_spec, profile, new_tokens=1, context=context, batch_size=batch_size,
                                 quant=d.draft_quant, execution=draft_ex)
        return d.gamma * (step + host_s + execution.engine.draft_step_us * 1e-6), verify
    if d.method in HEAD_METHODS:
        if d.method == "mtp" and not spec.mtp_layers:
            raise InputError(no_mtp_layers(spec))
        head_s = _head_draft_s(spec, profile, d, context=context, batch_size=batch_size, execution=execution,
                               draft_spec=draft_spec)
        return head_s + d.gamma * execution.engine.draft_step_us * 1e-6, verify  # gamma draft forwards
    if d.method == "prompt_lookup":
        return ngram_proposer_s(execution, batch_size=batch_size, context=context), verify
    raise InputError(f"unknown method '{d.method}'")


def check_fp8(profile: HardwareProfile, d: Decoding) -> None:
    """fp8 (W8A8) weights need fp8 tensor cores: a profile with an fp8 peak (Ada, Hopper, Blackwell).

    Raises:
        InputError: fp8 for the target or the draft on a profile without fp8 tensor cores.
    """
    if "fp8" in (d.quant, d.draft_quant) and "fp8" not in profile.peak_tflops:
        raise InputError(f"fp8 needs fp8 tensor cores (Ada, Hopper or newer); {profile.name} has none")


def alphas_for(spec: ModelSpec, d: Decoding, prior: Prior | None, acceptance: float | tuple[float, ...] | None,
               draft_spec: ModelSpec | None = None) -> list[float]:
    """Acceptance of each drafted position, given that the ones before it were accepted: a
    measured per-token figure (constant), measured per-position figures (vLLM's form, see
    `conditional_acceptances`), else the prior.

    Raises:
        InputError: per-position figures for fewer positions than `d.gamma`.
    """
    if d.method == "autoregressive" or d.gamma == 0:
        return []
    if isinstance(acceptance, tuple):
        if d.gamma > len(acceptance):
            raise InputError(f"`acceptance` covers {len(acceptance)} drafted positions, fewer than gamma {d.gamma}: "
                             "give a figure for each position, or one figure for all")
        return conditional_acceptances(acceptance[: d.gamma])
    if acceptance is not None:
        return [acceptance] * d.gamma
    if prior is None:
        raise InputError(f"no published acceptance prior for {d.method}: give its measured `acceptance`")
    return position_acceptances(prior.alpha(beta_for(spec, d, draft_spec)), d.gamma, prior.decay)


def beta_for(spec: ModelSpec, d: Decoding, draft_spec: ModelSpec | None = None) -> float:
    """What the acceptance prior of `d`'s method reads: the skipped fraction of the layers
    (self-drafting; 0 for prompt lookup), or for a separate draft model log10(target params /
    draft params)."""
    if d.method == "draft_model" and draft_spec is not None:
        return size_gap(spec.param_count, draft_spec.param_count)
    return skipped_fraction(d.method, spec.num_layers, skip_layers=d.skip_layers, exit_layer=d.exit_layer)


def no_mtp_layers(spec: ModelSpec) -> str:
    """Why mtp cannot draft for `spec`, in words."""
    return (f"{spec.name} has no multi-token-prediction layers (config.json num_nextn_predict_layers or "
            f"mtp_num_hidden_layers): mtp drafts from a checkpoint's own MTP layers (DeepSeek-V3, GLM-4.5, MiMo, Qwen3-Next)")


def predict_detail(
    spec: ModelSpec, profile: HardwareProfile, decoding: Decoding, *, context: int = 2048, batch_size: int = 1,
    acceptance: float | tuple[float, ...] | None = None, draft_spec: ModelSpec | None = None, priors=None,
    execution: Execution | None = None, basis: str | None = None, engine_memory: EngineMemory | None = None,
    workload: str | None = None,
) -> Detail:
    """The predicted figures of one set-up, `decoding` of `spec` on `profile`, with the pieces
    they are made of.

    Formulas from docs/performance-model.md ("Iteration time and throughput", "Acceptance",
    "VRAM"), as in this module's docstring: T_iter = T_draft + T_verify; tau from the
    per-position acceptances; tokens/s per sequence = tau / T_iter; speedup =
    tau * T(1, all) / T_iter over autoregressive decoding at the same quantization (Leviathan
    et al. 2023, arXiv:2211.17192, with the draft's cost from the same roofline).

    context: tokens already in the KV cache; batch_size: sequences decoded together.
    acceptance: measured acceptance that replaces the prior (basis "calibrated"): one
    per-token figure in [0, 1], or a tuple of per-position figures in vLLM's form (the share
    of drafts whose first i tokens were accepted; at least gamma of them); else the prior of `priors` (see resolve_priors) for the method and
    `workload` (chat, summarisation, rag; None: chat) (basis "analytical").
    draft_spec: the draft model's spec, needed for method draft_model.
    execution: dtype, CUDA graphs and the serving engine's own cost per step (default:
    Execution.default_for(profile): the built-in runtime). basis overrides the prediction's
    basis label. engine_memory: the serving engine's memory policy
    (planner.perf.memory.EngineMemory), whose reserve or CUDA-graph capture counts in vram_gib.

    Returns a Detail: `prediction` (tokens_per_s per sequence, speedup as a ratio,
    tokens_per_iteration, acceptance as the mean over drafted positions, latencies in ms,
    vram_gib in GiB), `alphas` (acceptance per drafted position), and the seconds of one
    autoregressive step, of the drafting and of the verify forward of one iteration, and the
    VRAM by component in bytes.

    Raises:
        InputError: method draft_model without `draft_spec`, an unknown method, fp8 on a
            profile without fp8 tensor cores, per-position `acceptance` for fewer positions than
            gamma, an unknown `workload`, or `priors` that cannot be read (a priors file that is not
            valid YAML or lacks `methods`).
        NotFoundError: `priors` names a file that does not exist.
    """
    ex = execution or Execution.default_for(profile)
    check_fp8(profile, decoding)
    priors = resolve_priors(priors, workload=workload)
    alphas = alphas_for(spec, decoding, priors.get(decoding.method), acceptance, draft_spec)
    tau = tree_tokens_per_iteration(alphas, decoding.topk, verified_tokens(decoding)) if alphas else 1.0
    draft_s, verify_s = _draft_and_verify_s(spec, profile, decoding, context=context, batch_size=batch_size,
                                            execution=ex, draft_spec=draft_spec)
    engine_s = ex.engine.step_s(batch_size)
    ar_s = forward_latency_s(spec, profile, new_tokens=1, context=context, batch_size=batch_size,
                             quant=decoding.quant, execution=ex) + engine_s
    verify_s += engine_s + (ex.engine.speculative_step_us * 1e-6 if alphas else 0.0)
    iteration_s = draft_s + verify_s
    memory = vram_bytes(spec, device_kind=profile.kind, method=decoding.method, gamma=decoding.gamma, quant=decoding.quant,
                      context=context, batch_size=batch_size, dtype=ex.dtype, graphs=ex.graphs,
                      draft_spec=draft_spec, draft_quant=decoding.draft_quant, tensor_parallel=ex.tensor_parallel,
                      decoding=decoding, engine=engine_memory, memory_gib=profile.memory_gib)
    prediction = Prediction(
        basis=basis or ("calibrated" if acceptance is not None else "analytical"),
        tokens_per_s=tau / iteration_s,
        speedup=tau * ar_s / iteration_s,
        tokens_per_iteration=tau,
        acceptance=sum(alphas) / len(alphas) if alphas else 1.0,
        target_latency_ms=ar_s * 1e3,
        draft_latency_ms=draft_s * 1e3,
        iteration_ms=iteration_s * 1e3,
        vram_gib=sum(memory.values()) / GIB,
    )
    return Detail(prediction, tuple(alphas), ar_s, draft_s, verify_s, memory)


def predict(spec: ModelSpec, profile: HardwareProfile, decoding: Decoding, **kwargs) -> Prediction:
    """Prediction for one set-up. tokens_per_s is per sequence; x batch_size for the total."""
    return predict_detail(spec, profile, decoding, **kwargs).prediction


def conditional_acceptances(per_position) -> list[float]:
    """vLLM's per-position acceptance rates (the share of drafts whose first i tokens were all
    accepted: `num_accepted_tokens_per_pos[i] / num_drafts` in vllm-project/vllm
    vllm/v1/spec_decode/metrics.py, logged as "Per-position acceptance rate") as the acceptance of each position given
    the ones before: alpha_1 = r_1, alpha_i = r_i / r_(i-1) (0 after a position never accepted)."""
    alphas, before = [], 1.0
    for rate in per_position:
        alphas.append(rate / before if before > 0 else 0.0)
        before = rate
    return alphas


def per_position_acceptances(alphas) -> list[float]:
    """The inverse of `conditional_acceptances`: r_i = alpha_1 x ... x alpha_i, vLLM's form."""
    rates, survive = [], 1.0
    for alpha in alphas:
        survive *= alpha
        rates.append(survive)
    return rates


def alpha_from_tokens_per_iteration(tau: float, gamma: int) -> float:
    """The constant alpha whose tau = (1 - alpha^(gamma+1)) / (1 - alpha) matches a measurement."""
    if gamma < 1:
        return 1.0
    tau = min(max(tau, 1.0), gamma + 1.0)
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if tokens_per_iteration([mid] * gamma) < tau:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def middle_block(num_layers: int, count: int) -> tuple[int, ...]:
    """A contiguous block of `count` layers centred in the model (S3D's mid-layer skipping)."""
    count = max(0, min(count, num_layers - 2))
    start = math.ceil((num_layers - count) / 2)
    return tuple(range(start, start + count))
