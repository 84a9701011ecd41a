"""The one-command job: profile this machine, plan for a model, calibrate the plan on real
prompts, write plan.yaml, run it and compare predicted with measured.

Calibration, on prompts other than the final run's, in two short greedy measurements:
1. time: one autoregressive run gives this model's real step time; the profile's per-kernel
   cost is set so that the performance model's step equals it (the bandwidth and FLOP/s
   terms stay the profile's). On GPUs with CUDA graphs this changes little; on CPUs the
   eager dispatch cost of a real model's ops differs from any micro-benchmark's.
2. acceptance: the search (with the calibrated profile) proposes each method's best set-up
   (for s3d: the adapted skip set and gamma from s3d.json); each is run, its measured tokens
   per iteration is turned into a per-token acceptance, and it is re-predicted with it.
The plan is the best re-predicted set-up. The search itself stays analytical: one measured
acceptance per method says nothing about that method's other skip sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from planner._yaml import ensure_writable
from planner.perf.cost import KERNELS_PER_HEAD, KERNELS_PER_LAYER, Execution, forward_latency_s
from planner.plan.schema import Candidate, Decoding
from planner.train.demo import DRAFT_DIR

DEMO_DIR = Path(__file__).resolve().parent.parent / "profiles" / "demo"
DEMO_PRIORS = DEMO_DIR.parent / "priors-demo.yaml"
SEARCHED_METHODS = ("autoregressive", "layer_skip", "early_exit", "prompt_lookup")
CALIBRATION_PROMPTS = 2
CALIBRATION_TOKENS = 32


@dataclass(frozen=True)
class AutotuneResult:
    plan: object  # planner.plan.schema.Plan, measured figures included
    report: object  # planner.runtime.run.RunReport of the tuned decoding, with the baseline
    calibrated: tuple[Candidate, ...]  # each measured set-up, re-predicted with its acceptance
    out: Path
    kernel_us: tuple[float, float]  # per-kernel cost: the profile's, and calibrated on this model


def _best_per_method(evaluated) -> dict[str, Candidate]:
    best: dict[str, Candidate] = {}
    for c in evaluated:
        m = c.decoding.method
        if m not in best or c.prediction.tokens_per_s > best[m].prediction.tokens_per_s:
            best[m] = c
    return best


def _draft_decoding(spec, profile, draft: Path, draft_spec, *, context: int, priors) -> Decoding:
    """draft_model with the gamma the performance model prefers for this draft."""
    from planner.perf.speedup import predict

    options = [Decoding(method="draft_model", gamma=g, draft_model=str(draft.resolve())) for g in range(1, 9)]
    return max(options, key=lambda d: predict(spec, profile, d, context=context, draft_spec=draft_spec, priors=priors).tokens_per_s)


def _s3d_decoding(source: Path) -> Decoding | None:
    path = source / "s3d.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return Decoding(method="s3d", gamma=int(meta["gamma"]), skip_layers=tuple(int(i) for i in meta["skip_layers"]))


def autotune(
    model: str | None = None,
    *,
    out: str = "plan.yaml",
    prompts_path: str | None = None,
    draft_model: str | None = None,
    max_new_tokens: int = 64,
    num_prompts: int = 3,
    trials: int = 100,
    seed: int = 0,
    device: str = "auto",
    log=lambda message: None,
) -> AutotuneResult:
    """Profile, plan, calibrate, save and run; `model` defaults to the bundled demo model
    (and `draft_model`, for the draft_model method, to the demo's small draft)."""
    from planner.hardware import profile_device
    from planner.models import load_model_spec
    from planner.perf.speedup import alpha_from_tokens_per_iteration, predict
    from planner.runtime.run import read_prompts, run_plan
    from planner.search.study import search

    source = Path(model) if model else DEMO_DIR
    spec = load_model_spec(str(source))  # refuse a bad --model, --draft-model or --out before measuring anything
    draft = Path(draft_model) if draft_model else (DEMO_DIR / DRAFT_DIR if model is None else None)
    draft_spec = load_model_spec(str(draft)) if draft is not None else None
    ensure_writable(out)
    every_prompt = read_prompts(prompts_path or DEMO_DIR / "prompts.jsonl")
    prompts = every_prompt[:num_prompts]
    # Calibrate on other prompts than the final run's where the file has enough of them.
    calibration_prompts = every_prompt[num_prompts : num_prompts + CALIBRATION_PROMPTS] or prompts[:CALIBRATION_PROMPTS]
    log(f"profiling {device} (quick)")
    profile = profile_device(device, quick=True)
    context = max_new_tokens + 512
    priors = str(DEMO_PRIORS) if model is None and DEMO_PRIORS.exists() else None
    log(f"planning for {source} on {profile.name}: {trials} analytical trials")
    # Unquantized only: the promise is a lossless speed-up of the model as given.
    kw = dict(context=context, trials=trials, seed=seed, methods=list(SEARCHED_METHODS), quants=("none",),
              priors=priors, model_source=str(source.resolve()))
    first = search(spec, profile, **kw)

    def measure(decoding: Decoding):
        log(f"calibrating on {len(calibration_prompts)} prompt(s): {_describe(decoding)}")
        return run_plan(first.plan.replace(decoding=decoding), calibration_prompts, max_new_tokens=CALIBRATION_TOKENS,
                        seed=seed, device=device)

    plain = Decoding(method="autoregressive")
    measure(plain)  # warm-up: the first run in a process pays one-off allocation and dispatch costs
    calibrated_profile = calibrate_kernel_cost(spec, profile, measure(plain).iteration_ms / 1e3, context=context)
    kernel_us = (_kernel_us(profile), _kernel_us(calibrated_profile))
    log(f"per-kernel cost: {kernel_us[0]:.2f} us profiled, {kernel_us[1]:.2f} us in this model's measured step")
    result = search(spec, calibrated_profile, **kw)
    candidates = [c.decoding for m, c in _best_per_method(result.evaluated).items() if m != "autoregressive"]
    candidates += [s3d] if (s3d := _s3d_decoding(source)) else []
    candidates += [_draft_decoding(spec, calibrated_profile, draft, draft_spec, context=context, priors=priors)] if draft else []

    def calibrate(decoding: Decoding) -> Candidate:
        alpha = alpha_from_tokens_per_iteration(measure(decoding).tokens_per_iteration, decoding.gamma)
        return Candidate(decoding, predict(spec, calibrated_profile, decoding, context=context, acceptance=alpha,
                                           priors=priors, draft_spec=draft_spec))

    calibrated = [Candidate(plain, predict(spec, calibrated_profile, plain, context=context, basis="calibrated"))]
    calibrated += [calibrate(d) for d in candidates]
    ranked = sorted(calibrated, key=lambda c: c.prediction.tokens_per_s, reverse=True)
    plan = result.plan.replace(decoding=ranked[0].decoding, prediction=ranked[0].prediction, alternatives=tuple(ranked[1:]))
    plan.save(out)
    log(f"wrote {out}; running {_describe(plan.decoding)} and autoregressive on {len(prompts)} prompts")
    report = run_plan(plan, prompts, max_new_tokens=max_new_tokens, seed=seed, baseline=True, device=device)
    plan = plan.replace(measured={"tokens_per_s": report.tokens_per_s, "tokens_per_iteration": report.tokens_per_iteration,
                                  "speedup": report.speedup, "identical": report.identical, "prompts": len(prompts),
                                  "max_new_tokens": max_new_tokens, "device": report.device})
    plan.save(out)
    return AutotuneResult(plan, report, tuple(calibrated), Path(out), kernel_us)


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


def _describe(d: Decoding) -> str:
    if d.method in ("layer_skip", "s3d"):
        return f"{d.method} gamma {d.gamma} skipping layers {d.skip_layers[0]}-{d.skip_layers[-1]}"
    if d.method == "early_exit":
        return f"early_exit gamma {d.gamma} exit layer {d.exit_layer}"
    if d.method == "draft_model":
        return f"draft_model gamma {d.gamma} draft {Path(d.draft_model).parent.name}/{Path(d.draft_model).name}"
    return d.method if d.method == "autoregressive" else f"{d.method} gamma {d.gamma}"


def summary_rows(result: AutotuneResult) -> list[list[str]]:
    """Predicted against measured for the tuned plan and autoregressive decoding."""
    r, p = result.report, result.plan.prediction
    ar = next(c.prediction for c in result.calibrated if c.decoding.method == "autoregressive")
    return [
        [_describe(result.plan.decoding), f"{p.tokens_per_s:.1f}", f"{r.tokens_per_s:.1f}", f"{p.speedup:.2f}x", f"{r.speedup:.2f}x"],
        ["autoregressive", f"{ar.tokens_per_s:.1f}", f"{r.baseline_tokens_per_s:.1f}", "1.00x", "1.00x"],
    ]


def calibration_rows(result: AutotuneResult) -> list[list[str]]:
    """Every calibrated set-up, best first, as the plan ranked them."""
    ranked = sorted(result.calibrated, key=lambda c: c.prediction.tokens_per_s, reverse=True)
    return [["chosen" if c.decoding == result.plan.decoding else "", _describe(c.decoding),
             f"{c.prediction.tokens_per_iteration:.2f}", f"{c.prediction.tokens_per_s:.1f}", f"{c.prediction.speedup:.2f}x"]
            for c in ranked]


CALIBRATION_HEADERS = ["", "calibrated set-up", "measured tokens/iter", "predicted tokens/s", "predicted speedup"]
SUMMARY_HEADERS = ["decoding", "predicted tokens/s", "measured tokens/s", "predicted speedup", "measured speedup"]
