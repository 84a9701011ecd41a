"""The one-command job: profile this machine, plan for a model, calibrate the plan on real
prompts, write plan.yaml, run it and compare predicted with measured.

Calibration, on prompts other than the final run's:
1. time: a short autoregressive run gives this model's real step time; the profile's
   per-kernel cost is set so that the performance model's step equals it (the bandwidth and
   FLOP/s terms stay the profile's). On GPUs with CUDA graphs this changes little; on CPUs the
   eager dispatch cost of a real model's ops differs from any micro-benchmark's.
2. the search, with that profile, proposes each method's best set-up (for s3d: the skip set
   and gamma of the checkpoint's adapter, when it has one; for draft_model: the gamma the
   model prefers).
3. each set-up and autoregressive decoding are run in interleaved rounds (one
   runtime.DecodingBench: the model loaded once): tokens per iteration gives the acceptance,
   and the median round's speedup over autoregressive gives the iteration time. The performance model with
   the measured acceptance is printed beside it: where the two differ, the model mis-costs
   that method's forwards on this machine (on two shared CPU cores by 4-26%).
The plan is the set-up with the best measured speedup among those whose every calibration
round beat autoregressive decoding (autoregressive when none did).
Its prediction is the model's with both measured corrections; the final run, on other
prompts and longer outputs, is the check of that prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from planner._files import ensure_writable
from planner.errors import InputError
from planner.perf.cost import KERNELS_PER_HEAD, KERNELS_PER_LAYER, Execution, forward_latency_s
from planner.plan.schema import Candidate, Decoding
from planner.profiles import PROFILES_DIR
from planner.search.space import MAX_PREDICTORS  # the draft lengths the search proposes, and autotune measures
from planner.train.demo import DRAFT_DIR

DEMO_DIR = PROFILES_DIR / "demo"
DEMO_PRIORS = DEMO_DIR.parent / "priors-demo.yaml"
SEARCHED_METHODS = ("autoregressive", "layer_skip", "early_exit", "prompt_lookup")
CALIBRATION_PROMPTS = 3
CALIBRATION_TOKENS = 32
CALIBRATION_ROUNDS = 3
MIN_NEW_TOKENS = 8  # a few speculative iterations at least, in the calibration and the final run


@dataclass(frozen=True)
class Calibrated:
    """One set-up after calibration: the plan's candidate, the performance model's prediction
    with the measured acceptance only, and the measurement."""

    candidate: Candidate  # prediction: measured acceptance and iteration time
    model: object  # planner.plan.schema.Prediction with the measured acceptance only
    measured: object  # planner.runtime.run.Comparison


@dataclass(frozen=True)
class AutotuneResult:
    plan: object  # planner.plan.schema.Plan, measured figures included
    report: object  # planner.runtime.run.RunReport of the tuned decoding, with the baseline
    calibrated: tuple[Calibrated, ...]  # autoregressive first, then each measured set-up
    out: Path
    kernel_us: tuple[float, float]  # per-kernel cost: the profile's, and calibrated on this model


def best_per_method(evaluated) -> dict[str, Candidate]:
    best: dict[str, Candidate] = {}
    for c in evaluated:
        m = c.decoding.method
        if m not in best or c.prediction.tokens_per_s > best[m].prediction.tokens_per_s:
            best[m] = c
    return best


def _draft_decoding(spec, profile, draft: Path, draft_spec, *, context: int, priors) -> Decoding:
    """draft_model with the gamma the performance model prefers for this draft."""
    from planner.perf.speedup import predict

    options = [Decoding(method="draft_model", gamma=g, draft_model=str(draft.resolve())) for g in range(1, MAX_PREDICTORS + 1)]
    return max(options, key=lambda d: predict(spec, profile, d, context=context, draft_spec=draft_spec, priors=priors).tokens_per_s)


def s3d_decoding(source: Path, spec) -> Decoding | None:
    """The set-up of the checkpoint's S3D adapter (its own or a shipped one), or None."""
    from planner.runtime.adapter import planned_s3d

    found = planned_s3d(str(source), (spec.num_layers, spec.hidden_size, spec.vocab_size))
    return found[0] if found else None


@dataclass(frozen=True)
class AutotuneRequest:
    """Options of one `autotune` run; each is documented once, here."""

    model: str | None = None  # checkpoint directory or .gguf file; None: the bundled demo model
    prompts: str | None = None  # one prompt per line, or JSONL with "prompt"; None: the demo's prompts
    draft_model: str | None = None  # draft_model's draft (a directory); None: the demo's draft with the demo model
    max_new_tokens: int = 64  # tokens per prompt in the final run (calibration decodes at most 32)
    num_prompts: int = 3  # prompts of the final run (the next ones calibrate)
    trials: int = 100  # analytical search trials
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    dtype: str = "auto"  # auto: the measured profile's decode dtype
    chat: bool | None = None  # prompts as a user turn of the chat template (None: when the tokenizer has one)
    out: str = "plan.yaml"
    # Target quantizations the plan may choose; the default keeps the model as given (quantized
    # weights change its outputs). The search picks one; calibration measures at that one.
    quants: tuple[str, ...] = ("none",)

    def check(self) -> None:
        """Raises InputError for a value no run could use (MissingDependencyError: a
        quantization whose backend is not installed)."""
        from planner.runtime.quantize import require_backend

        if not self.quants:
            raise InputError("`quants` is empty: allow at least none")
        for quant in self.quants:
            require_backend(quant)
        if self.max_new_tokens < MIN_NEW_TOKENS:
            raise InputError(f"`max_new_tokens` must be at least {MIN_NEW_TOKENS} for autotune to time decoding, "
                             f"got {self.max_new_tokens}")
        if self.num_prompts < 1 or self.trials < 1:
            raise InputError(f"`num_prompts` and `trials` must be at least 1, got {self.num_prompts} and {self.trials}")


def autotune(request: AutotuneRequest | None = None, *, log=lambda message: None) -> AutotuneResult:
    """Profile, plan, calibrate, save and run, as `request` asks (None: the defaults, the
    bundled demo model); `log` receives progress lines. plan.measured["chat"] records whether
    the prompts went through the chat template.

    Raises:
        InputError (or one of its kinds): bad options, models or prompts, before anything is
            measured where it can be known then; NotFoundError for a missing model or prompts file.
        DeviceError: the device asked for is not there.
    """
    from planner.hardware import profile_device
    from planner.hardware.measure import resolve_device
    from planner.models import load_model_spec
    from planner.perf.speedup import alpha_from_tokens_per_iteration, predict
    from planner.runtime import DecodingBench, read_prompts, run_plan
    from planner.search.request import SearchRequest
    from planner.search.study import search

    r = request or AutotuneRequest()
    r.check()
    model, draft_model, device, seed, out = r.model, r.draft_model, r.device, r.seed, r.out
    source = Path(model) if model else DEMO_DIR
    # refuse a bad `model`, `draft_model`, `device` or `out` before measuring anything; the names as
    # given (Path() would drop a leading "./" that marks a local path)
    spec = load_model_spec(model or str(DEMO_DIR))
    draft = Path(draft_model) if draft_model else (DEMO_DIR / DRAFT_DIR if model is None else None)
    draft_spec = load_model_spec(draft_model or str(draft)) if draft is not None else None
    resolve_device(device)
    ensure_writable(out)
    every_prompt = read_prompts(r.prompts or DEMO_DIR / "prompts.jsonl")
    prompts = every_prompt[:r.num_prompts]
    # Calibrate on other prompts than the final run's where the file has enough of them.
    calibration_prompts = every_prompt[r.num_prompts : r.num_prompts + CALIBRATION_PROMPTS] or prompts[:CALIBRATION_PROMPTS]
    log(f"profiling {device} (quick)")
    profile = profile_device(device, quick=True)
    dtype = profile.decode_dtype if r.dtype == "auto" else r.dtype
    max_new_tokens = r.max_new_tokens
    context = min(max_new_tokens + 512, spec.max_position_embeddings)  # what the model can hold at most
    priors = str(DEMO_PRIORS) if model is None and DEMO_PRIORS.exists() else None
    log(f"planning for {source} on {profile.name} in {dtype}: {r.trials} analytical trials")
    # Unquantized unless allowed: the promise is a lossless speed-up of the model as given.
    searched = SearchRequest(context=context, trials=r.trials, seed=seed, methods=SEARCHED_METHODS, quants=r.quants,
                             priors=priors, model_source=str(source.resolve()))
    first = search(spec, profile, searched)
    searched = searched.replace(quants=(first.plan.decoding.quant,))  # the checkpoint is loaded once, at one quantization
    tokens = min(CALIBRATION_TOKENS, max_new_tokens)
    s3d = s3d_decoding(source, spec)
    bench = DecodingBench(first.plan, calibration_prompts, max_new_tokens=tokens, seed=seed, device=device, dtype=dtype,
                          max_gamma=max(MAX_PREDICTORS, s3d.gamma if s3d else 0), chat=r.chat)
    log(f"timing autoregressive decoding: {CALIBRATION_ROUNDS} rounds of {len(calibration_prompts)} calibration prompt(s)"
        f" x {tokens} tokens, {'through the chat template' if bench.chat else 'as raw text'}")
    step_s = bench.compare([], CALIBRATION_ROUNDS)[0].iteration_ms / 1e3
    searched_profile = calibrate_kernel_cost(spec, profile, step_s, context=context)
    result = search(spec, searched_profile, searched)
    candidates = [c.decoding for m, c in best_per_method(result.evaluated).items() if m != "autoregressive"]
    candidates += [s3d] if s3d else []
    candidates += [_draft_decoding(spec, searched_profile, draft, draft_spec, context=context, priors=priors)] if draft else []
    candidates = [replace(d, quant=first.plan.decoding.quant) for d in candidates]  # the quantization loaded
    measured = _measure(bench, candidates, log)
    # The kernel cost again, from the median of the calibration rounds: the predictions' base.
    calibrated_profile = calibrate_kernel_cost(spec, profile, measured[0].iteration_ms / 1e3, context=context)
    kernel_us = (_kernel_us(profile), _kernel_us(calibrated_profile))
    log(f"per-kernel cost: {kernel_us[0]:.2f} us profiled, {kernel_us[1]:.2f} us in this model's measured step")

    def calibrate(m) -> Calibrated:
        d = m.decoding
        alpha = None if d.method == "autoregressive" else alpha_from_tokens_per_iteration(m.tokens_per_iteration, d.gamma)
        model = predict(spec, calibrated_profile, d, context=context, acceptance=alpha, priors=priors, draft_spec=draft_spec,
                        basis="calibrated")
        return Calibrated(Candidate(d, with_measured_speedup(model, m.speedup)), model, m)

    calibrated = [calibrate(m) for m in measured if m.identical]
    for m in measured:
        if not m.identical:
            log(f"left out {describe(m.decoding)}: its output differed from autoregressive decoding")
    ranked = [c.candidate for c in ranked_calibrations(calibrated)]
    plan = result.plan.replace(decoding=ranked[0].decoding, prediction=ranked[0].prediction, alternatives=tuple(ranked[1:]))
    plan.save(out)
    log(f"wrote {out}; running {describe(plan.decoding)} and autoregressive on {len(prompts)} prompts")
    report = run_plan(plan, prompts, max_new_tokens=max_new_tokens, seed=seed, baseline=True, device=device, dtype=dtype,
                      chat=bench.chat)
    plan = plan.replace(measured={"tokens_per_s": report.tokens_per_s, "tokens_per_iteration": report.tokens_per_iteration,
                                  "speedup": report.speedup, "identical": report.identical, "prompts": len(prompts),
                                  "max_new_tokens": max_new_tokens, "device": report.device, "chat": report.chat})
    plan.save(out)
    return AutotuneResult(plan, report, tuple(calibrated), Path(out), kernel_us)


def _measure(bench, candidates: list[Decoding], log) -> list:
    """Each candidate against autoregressive decoding (first in the result) in interleaved
    rounds; then the fastest also at its neighbouring gammas."""
    log(f"calibrating against autoregressive in {CALIBRATION_ROUNDS} interleaved rounds:")
    for d in candidates:
        log(f"  {describe(d)}")
    measured = bench.compare(candidates, CALIBRATION_ROUNDS)
    best = max(measured[1:], key=lambda m: m.speedup, default=None)
    near = [d for d in _neighbours(best.decoding) if d not in candidates] if best is not None else []
    if near:
        log(f"the fastest, {describe(best.decoding)} ({best.speedup:.2f}x), at gamma " + " and ".join(str(d.gamma) for d in near))
        measured += bench.compare(near, CALIBRATION_ROUNDS)[1:]
    return measured


def _neighbours(d: Decoding) -> list[Decoding]:
    """The set-up at gamma - 1 and gamma + 1 (1-MAX_PREDICTORS); none for s3d, whose gamma is the adapted one."""
    if d.method == "s3d":
        return []
    return [replace(d, gamma=g) for g in (d.gamma - 1, d.gamma + 1) if 1 <= g <= MAX_PREDICTORS]


def with_measured_speedup(model, speedup: float):
    """`model` (a Prediction) with its iteration time set by a measured speedup over
    autoregressive decoding (whose step the calibrated profile already reproduces)."""
    scale = model.speedup / speedup  # measured iteration time / the model's
    return replace(model, tokens_per_s=model.tokens_per_s / scale, speedup=speedup,
                   iteration_ms=model.iteration_ms * scale, draft_latency_ms=model.draft_latency_ms * scale)


def _kernel_us(profile) -> float:
    return Execution.default_for(profile).kernel_s(profile) * 1e6


def calibrate_kernel_cost(spec, profile, step_s: float, *, context: int):
    """The profile with its per-kernel cost (eager, or graph-replay where the runtime uses
    CUDA graphs) set so that one autoregressive step of `spec` takes step_s; never below 0."""
    ex = Execution.default_for(profile)
    field = "graph_kernel_us" if ex.graphs else "kernel_launch_us"
    roofline_s = forward_latency_s(spec, replace(profile, **{field: 0.0}), context=context, execution=ex)
    kernels = spec.num_layers * KERNELS_PER_LAYER[ex.mode] + KERNELS_PER_HEAD[ex.mode]
    return replace(profile, **{field: max(0.0, (step_s - roofline_s) / kernels * 1e6)})


def describe(d: Decoding) -> str:
    """A set-up in a few words: method, gamma and what the method's own choice is."""
    if d.method in ("layer_skip", "s3d"):
        first, last = d.skip_layers[0], d.skip_layers[-1]
        contiguous = list(d.skip_layers) == list(range(first, last + 1))
        skipped = f"{first}-{last}" if contiguous else ",".join(map(str, d.skip_layers))
        return f"{d.method} gamma {d.gamma} skipping layers {skipped}"
    if d.method == "early_exit":
        return f"early_exit gamma {d.gamma} exit layer {d.exit_layer}"
    if d.method == "draft_model":
        return f"draft_model gamma {d.gamma} draft {Path(d.draft_model).parent.name}/{Path(d.draft_model).name}"
    if d.method == "prompt_lookup":
        return f"prompt_lookup gamma {d.gamma}" + (f" ngram {d.ngram}" if d.ngram != Decoding.ngram else "")
    return d.method


def summary_rows(result: AutotuneResult) -> list[list[str]]:
    """Predicted against measured for the tuned plan and autoregressive decoding."""
    r, p = result.report, result.plan.prediction
    ar = result.calibrated[0].candidate.prediction
    return [
        [describe(result.plan.decoding), f"{p.tokens_per_s:.1f}", f"{r.tokens_per_s:.1f}", f"{p.speedup:.2f}x", f"{r.speedup:.2f}x"],
        ["autoregressive", f"{ar.tokens_per_s:.1f}", f"{r.baseline_tokens_per_s:.1f}", "1.00x", "1.00x"],
    ]


def ranked_calibrations(calibrated) -> list[Calibrated]:
    """Best first: autoregressive decoding and the set-ups whose slowest calibration round beat
    it, by measured tokens/s; then the rest. A median speedup over rounds that dip below 1.0 is
    within the noise of shared cores (on SmolLM2 a calibrated 1.01x, rounds 0.99-1.01, measured
    0.83x in the final run), so such a set-up is never the plan."""

    def key(c: Calibrated):
        clears = c.candidate.decoding.method == "autoregressive" or c.measured.speedup_range[0] > 1.0
        return clears, c.candidate.prediction.tokens_per_s

    return sorted(calibrated, key=key, reverse=True)


def calibration_rows(result: AutotuneResult) -> list[list[str]]:
    """Every calibrated set-up, best first, as the plan ranked them."""
    ranked = ranked_calibrations(result.calibrated)
    return [["chosen" if c.candidate.decoding == result.plan.decoding else "", describe(c.candidate.decoding),
             f"{c.measured.tokens_per_iteration:.2f}", f"{c.model.speedup:.2f}x",
             f"{c.measured.speedup:.2f}x ({c.measured.speedup_range[0]:.2f}-{c.measured.speedup_range[1]:.2f})"]
            for c in ranked]


CALIBRATION_HEADERS = ["", "calibrated set-up", "tokens/iter", "model speedup", "measured speedup (rounds)"]
SUMMARY_HEADERS = ["decoding", "predicted tokens/s", "measured tokens/s", "predicted speedup", "measured speedup"]
