"""The one-command job: profile this machine, plan analytically, tune the plan in a small
measured study, and run it on held-out prompts.

1. profile: `tune` measures this device (quick) for the performance model, times one
   autoregressive round and sets the per-kernel cost so that the model's step equals this
   checkpoint's (calibrate_kernel_cost).
2. analytical plan: the search on that model gives each method's best set-up (s3d: the
   checkpoint's adapter, when it has one; draft_model: the given draft), which seed the study.
3. a small `tune` (planner.tune: AUTOTUNE_TRIALS measured trials in CALIBRATION_ROUNDS
   interleaved rounds on CALIBRATION_PROMPTS prompts): the plan is the best set-up whose every
   round beat autoregressive decoding and whose output was identical (autoregressive when none
   did), and the performance model is fitted to the trials (NAME.calibration.yaml).
4. the plan is run, with autoregressive decoding after each prompt, on `num_prompts` other
   prompts with longer outputs: the held-out check of the tuned figure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from planner.errors import InputError
from planner.perf.cost import KERNELS_PER_HEAD, KERNELS_PER_LAYER, Execution, forward_latency_s
from planner.plan.schema import Candidate, Decoding
from planner.profiles import PROFILES_DIR

DEMO_DIR = PROFILES_DIR / "demo"
DEMO_PRIORS = DEMO_DIR.parent / "priors-demo.yaml"
AUTOTUNE_TRIALS = 8  # the small study: the seeds (one per method) and a few Optuna proposals
CALIBRATION_PROMPTS = 3
CALIBRATION_TOKENS = 32
CALIBRATION_ROUNDS = 2
MIN_NEW_TOKENS = 8  # a few speculative iterations at least, in the study and the final run


@dataclass(frozen=True)
class AutotuneResult:
    plan: object  # planner.plan.schema.Plan, the held-out run's figures in plan.measured
    report: object  # planner.runtime.run.RunReport of the plan's decoding on the held-out prompts, with the baseline
    tuned: object  # planner.tune.TuneResult of the small study (its trials and calibration)
    out: Path


def best_per_method(evaluated) -> dict[str, Candidate]:
    best: dict[str, Candidate] = {}
    for c in evaluated:
        m = c.decoding.method
        if m not in best or c.prediction.tokens_per_s > best[m].prediction.tokens_per_s:
            best[m] = c
    return best


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
    max_new_tokens: int = 64  # tokens per prompt in the held-out run (the study decodes at most CALIBRATION_TOKENS)
    num_prompts: int = 3  # held-out prompts of the final run (the next CALIBRATION_PROMPTS tune)
    trials: int = AUTOTUNE_TRIALS  # measured trials of the small tune study
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    dtype: str = "auto"  # auto: the measured profile's decode dtype
    chat: bool | None = None  # prompts as a user turn of the chat template (None: when the tokenizer has one)
    out: str = "plan.yaml"
    # Target quantizations the plan may choose; the default keeps the model as given (quantized
    # weights change its outputs). The study picks one.
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


def autotune(request: AutotuneRequest | None = None, *, log=lambda message: None, on_trial=None) -> AutotuneResult:
    """Profile, plan, tune (`trials` measured trials, planner.tune) and run the plan on held-out
    prompts, as `request` asks (None: the defaults, the bundled demo model, and for the
    draft_model method the demo's small draft). The study tunes on CALIBRATION_PROMPTS prompts
    after the first `num_prompts` (the first ones when the file has no more), with at most
    CALIBRATION_TOKENS new tokens; the plan then decodes the first `num_prompts` with
    `max_new_tokens`. plan.measured["chat"] records whether the prompts went through the chat
    template. `log` receives progress lines; on_trial: as tune's. Writes `out`, its
    calibration and tune's reports beside it, and the study (a SQLite file beside `out`: a
    later `specplan tune` with the same settings continues it).

    Raises:
        InputError (or one of its kinds): bad options, models, prompts, device or `out`, before
            anything is measured where it can be known then.
        MissingDependencyError: what tune raises, or a quantization whose backend is not installed.
    """
    from planner.runtime import read_grouped_prompts, run_plan
    from planner.tune import TuneRequest, tune

    r = request or AutotuneRequest()
    r.check()
    prompts = read_grouped_prompts(r.prompts or DEMO_DIR / "prompts.jsonl")
    held_out = prompts[:r.num_prompts]
    tuning = prompts[r.num_prompts : r.num_prompts + CALIBRATION_PROMPTS] or held_out[:CALIBRATION_PROMPTS]
    tune_request = TuneRequest(model=r.model, prompts=tuple(tuning), held_out=(),
                               draft_models=(r.draft_model,) if r.draft_model else (), trials=r.trials,
                               max_new_tokens=min(CALIBRATION_TOKENS, r.max_new_tokens), rounds=CALIBRATION_ROUNDS,
                               device=r.device, dtype=r.dtype, chat=r.chat, seed=r.seed, out=r.out, quants=r.quants)
    tuned = tune(tune_request, log=log, on_trial=on_trial)
    log(f"running the plan, {describe(tuned.plan.decoding)}, with autoregressive decoding after each prompt, on "
        f"{len(held_out)} held-out prompts")
    report = run_plan(tuned.plan, [p for p, _ in held_out], max_new_tokens=r.max_new_tokens, seed=r.seed, baseline=True,
                      device=r.device, dtype=tuned.dtype, chat=r.chat)
    plan = tuned.plan.replace(measured={"tokens_per_s": report.tokens_per_s, "tokens_per_iteration": report.tokens_per_iteration,
                                        "speedup": report.speedup, "identical": report.identical, "prompts": len(held_out),
                                        "max_new_tokens": r.max_new_tokens, "device": report.device, "chat": report.chat})
    plan.save(r.out)
    return AutotuneResult(plan, report, tuned, Path(r.out))


def with_measured_speedup(model, speedup: float):
    """`model` (a Prediction) with its iteration time set by a measured speedup over
    autoregressive decoding (whose step the calibrated profile already reproduces)."""
    scale = model.speedup / speedup  # measured iteration time / the model's
    return replace(model, tokens_per_s=model.tokens_per_s / scale, speedup=speedup,
                   iteration_ms=model.iteration_ms * scale, draft_latency_ms=model.draft_latency_ms * scale)


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
    """Predicted (the plan's prediction, from the study) against measured on the held-out
    prompts, for the plan and autoregressive decoding."""
    r, p = result.report, result.plan.prediction
    plain = ["autoregressive", f"{p.tokens_per_s / p.speedup:.1f}", f"{r.baseline_tokens_per_s:.1f}", "1.00x", "1.00x"]
    if result.plan.decoding.method == "autoregressive":  # the plan is the baseline: one row, not two of the same
        return [plain]
    return [[describe(result.plan.decoding), f"{p.tokens_per_s:.1f}", f"{r.tokens_per_s:.1f}", f"{p.speedup:.2f}x",
             f"{r.speedup:.2f}x"], plain]


SUMMARY_HEADERS = ["decoding", "predicted tokens/s", "measured tokens/s", "predicted speedup", "measured speedup"]
