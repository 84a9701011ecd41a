"""`tune`: an Optuna study whose trials are measured decodings on the user's prompts.

Each trial is one set-up decoded on the tuning prompts in rounds interleaved with
autoregressive decoding (runtime.DecodingBench); its value is the median round's paired
speedup over all prompts (objective mean) or over the slowest group's prompts (worst-group,
the group-robust objective). A set-up whose output differs from autoregressive decoding
fails its trial. Optuna samples (TPE, constant liar for parallel workers), prunes
(ThresholdPruner on each round's speedup) and stores (planner.search.storage); the
performance model, calibrated on this machine's autoregressive step, seeds the study with
each method's analytical best and skips set-ups it predicts far below the best measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from planner._files import content_digest, ensure_writable
from planner._signals import sigint_handler
from planner.autotune import describe
from planner.errors import InputError, SpecplanError
from planner.plan.schema import (
    Candidate, Constraints, Decoding, GroupSpeedup, HardwareRef, ModelRef, Plan, SearchSettings, Tuning,
)
from planner.search.space import MAX_PREDICTORS, Space, params_of, suggest
from planner.search.storage import check_storage, open_study, storage_errors
from planner.tune.request import TuneRequest, digest, fingerprint, split_prompts

# A set-up the calibrated model predicts below this fraction of the best speedup measured so
# far is pruned before it is decoded. The model is off by up to 26% per method on shared CPU
# cores (autotune's calibration table), so half leaves a wide margin: only set-ups the model
# says lose by 2x are skipped. The seeds (each method's analytical best) are always measured.
PRUNE_PREDICTED_BELOW = 0.5
# A set-up whose round measured below this speedup stops after that round (optuna's
# ThresholdPruner): a shared machine moves a round by up to 27%, never by 30% in our runs.
PRUNE_MEASURED_BELOW = 0.7
ANALYTICAL_TRIALS = 100  # the analytical search behind the seeds: microseconds a trial
NGRAMS = (1, 5)  # prompt_lookup n-gram sizes searched
HELD_OUT_CANDIDATES = 3  # set-ups checked on the held-out prompts: the plan is the best lossless there
CONTEXT_MARGIN = 1024  # prompt tokens the KV cache holds beside max_new_tokens


class TrialFailed(Exception):
    """A set-up that cannot be the plan: its output differed, or this checkpoint refused it."""


@dataclass(frozen=True)
class Measured:
    """One trial of the study, as stored."""

    number: int
    state: str  # complete | pruned | fail
    decoding: Decoding
    predicted_speedup: float  # the calibrated performance model's
    value: float | None  # the objective's (complete trials)
    speedup: float | None  # median paired speedup, all tuning prompts; pruned trials: over the rounds before pruning
    speedup_range: tuple[float, float] | None
    group_speedups: tuple[tuple[str, float], ...]
    tokens_per_iteration: float | None
    accept_counts: tuple[int, ...]
    why: str  # pruned or failed: the reason
    autoregressive_ms: float | None = None  # the autoregressive step it was paired with (median round), ms per token


@dataclass(frozen=True)
class TuneResult:
    plan: Plan
    trials: tuple[Measured, ...]  # every finished trial of the study, in trial order (other workers' too)
    chosen: Measured | None  # None: no set-up beat autoregressive decoding in every round
    mean_optimal: Measured | None  # the best median speedup over all prompts
    held_out: dict  # decoding -> runtime.Comparison on the held-out prompts (autoregressive included)
    differed: tuple[Decoding, ...]  # better-ranked set-ups left out: their held-out outputs differed
    storage: str
    study: str
    dtype: str  # what the target decoded in
    calibration: object  # planner.tune.calibration.Calibration fitted to the trials, or None (no trial decoded every prompt)
    files: tuple[Path, ...]  # the plan, its calibration and its reports


def tune(request: TuneRequest, *, log=lambda message: None, on_trial=None) -> TuneResult:
    """Tune `request.model` on its prompts with a measured Optuna study and write the plan,
    the performance model calibrated on the study's trials (NAME.calibration.yaml,
    planner.tune.fit) and the reports (planner.tune.report) next to `request.out`.
    on_trial(finished, total, best) is called as trials finish (best: the best trial so far,
    a Measured, or None).

    Raises:
        InputError (or a kind of it): an option, model, draft, prompts file, device or storage
            that cannot be used, or a study of this name with another fingerprint; before
            anything is measured.
        MissingDependencyError: a quantization backend or a database driver is missing.
    """
    from planner.plan.schema import save_plan
    from planner.tune.fit import calibrate
    from planner.tune.report import calibration_path, write_reports

    setup = _Setup.prepare(request, log)
    study, created = setup.open_study()
    measured_tuning = _MeasuredTuning(setup, study, log)
    if created:
        measured_tuning.seed()
    measured_tuning.run(on_trial)
    trials = tuple(_measured(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished() and "decoding" in t.user_attrs)
    candidates, mean_optimal = _held_out_candidates(ranked(trials)), choose(trials)[1]
    measured_tuning.close()
    held_out = setup.measure_held_out([m.decoding for m in candidates + [mean_optimal] if m is not None])
    # the plan: the best candidate whose held-out outputs are identical too
    chosen = next((m for m in candidates if not setup.held or held_out[m.decoding].identical), None)
    differed = tuple(m.decoding for m in candidates[: candidates.index(chosen) if chosen else len(candidates)])
    for d in differed:
        log(f"left out {describe(d)}: its output differed from autoregressive decoding on held-out prompts")
    plan = setup.plan(chosen, trials, held_out, finished=sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)),
                      study_name=setup.study_name, calibrated=measured_tuning.calibrated)
    save_plan(plan, request.out)
    calibration = calibrate(setup.spec, measured_tuning.calibrated, setup.priors, trials, context=setup.context,
                            draft_specs=setup.draft_specs, study=setup.study_name)
    files = (Path(request.out),)
    if calibration is not None:
        calibration.save(calibration_path(request.out))
        files += (calibration_path(request.out),)
    result = TuneResult(plan, trials, chosen, mean_optimal, held_out, differed, setup.storage, setup.study_name,
                        setup.dtype, calibration, ())
    return dataclasses.replace(result, files=files + write_reports(result, request.out))


def ranked(trials) -> list[Measured]:
    """Candidates for the plan, best first: complete trials whose slowest round beat
    autoregressive decoding (a median over rounds that dip below 1.0 is within a shared
    machine's noise), by objective value, each set-up once."""
    clear = sorted((m for m in trials if m.state == "complete" and m.speedup_range[0] > 1.0), key=lambda m: -m.value)
    seen, unique = set(), []
    for m in clear:
        if m.decoding not in seen:
            seen.add(m.decoding)
            unique.append(m)
    return unique


def _held_out_candidates(candidates: list[Measured]) -> list[Measured]:
    """The best set-up of each method, best first, HELD_OUT_CANDIDATES at most: where one
    set-up's held-out output differs (a near-tie its multi-token verify breaks otherwise
    than a one-token step), its method's neighbours tend to as well."""
    best = {}
    for m in candidates:
        best.setdefault(m.decoding.method, m)
    return list(best.values())[:HELD_OUT_CANDIDATES]


def choose(trials) -> tuple[Measured | None, Measured | None]:
    """(the best candidate for the plan (see `ranked`; None when no set-up beat autoregressive
    decoding in every round), the set-up with the best median speedup over all prompts)."""
    candidates = ranked(trials)
    mean_optimal = max((m for m in trials if m.state == "complete"), key=lambda m: m.speedup, default=None)
    return (candidates[0] if candidates else None), mean_optimal


# ------------------------------------------------------------------------ set-up


@dataclass
class _Setup:
    """Everything checked and read before any measurement: model, drafts, prompts, space,
    storage, fingerprint, profile."""

    request: TuneRequest
    log: object
    spec: object
    source: Path
    draft_specs: dict
    tuning: list
    held: list
    space: Space
    storage: str
    study_name: str
    fingerprint: dict
    profile: object
    dtype: str
    priors: str | None

    @classmethod
    def prepare(cls, request: TuneRequest, log) -> "_Setup":
        from planner.autotune import DEMO_DIR, DEMO_PRIORS, s3d_decoding
        from planner.hardware.measure import device_name, resolve_device
        from planner.models import load_model_spec
        from planner.runtime.quantize import require_backend
        from planner.search.study import check_draft
        from planner.train.demo import DRAFT_DIR

        request.check()
        ensure_writable(request.out)  # first: the default storage lies beside it
        check_storage(request.storage_url())  # the study opens only after the device is profiled: refuse it first
        source = Path(request.model) if request.model else DEMO_DIR
        spec = load_model_spec(request.model or str(DEMO_DIR))
        drafts = request.draft_models or ((str(DEMO_DIR / DRAFT_DIR),) if request.model is None else ())
        draft_specs = {str(Path(d).resolve()): check_draft(spec, load_model_spec(d)) for d in drafts}
        resolve_device(request.device)
        for quant in request.quants:
            require_backend(quant)
        prompts = _prompts(request.prompts or DEMO_DIR / "prompts.jsonl")
        if isinstance(request.held_out, (int, float)):
            tuning, held = split_prompts(prompts, request.held_out)
        else:
            tuning, held = prompts, _prompts(request.held_out)
        s3d = s3d_decoding(source, spec)  # its own adapter, or one shipped for this checkpoint
        space = Space(spec.num_layers, _methods(request, draft_specs, s3d), tuple(request.quants), tuple(draft_specs),
                      skip_pattern=request.skip_pattern, ngrams=NGRAMS, s3d=s3d)
        profile = cls._profile(request, log)
        dtype = profile.decode_dtype if request.dtype == "auto" else request.dtype
        stamp = fingerprint(model_digest=content_digest(source) if source.exists() else request.model,
                             model_name=spec.name, device_name=device_name(request.device), prompts=tuning,
                             request=request, space=repr(dataclasses.replace(space, drafts=())), dtype=dtype)
        stamp["drafts"] = [f"{Path(d).name} sha256:{content_digest(d)[:16]}" for d in draft_specs]
        study_name = request.study or f"tune-{digest(stamp)[:10]}"
        priors = str(DEMO_PRIORS) if request.model is None and DEMO_PRIORS.exists() else None
        return cls(request, log, spec, source, draft_specs, tuning, held, space, request.storage_url(), study_name, stamp,
                   profile, dtype, priors)

    @property
    def context(self) -> int:
        """Tokens the predictions' KV cache holds: the prompt margin and the output, at most the model's positions."""
        return min(self.request.max_new_tokens + CONTEXT_MARGIN, self.spec.max_position_embeddings)

    @staticmethod
    def _profile(request, log):
        from planner.hardware import HardwareProfile, load_profile, profile_device

        if isinstance(request.profile, HardwareProfile):
            return request.profile
        if request.profile:
            return load_profile(request.profile)
        log(f"profiling {request.device} (quick) for the analytical model")
        return profile_device(request.device, quick=True)

    def open_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed and pruned trials are reported by tune, not logged
        pruner = optuna.pruners.ThresholdPruner(lower=PRUNE_MEASURED_BELOW)
        study, created = open_study(self.storage, self.study_name, sampler=None, directions=["maximize"],
                                    fingerprint=self.fingerprint, pruner=pruner, heartbeat=True)
        with storage_errors(self.storage):
            known = len(study.get_trials(deepcopy=False))
        study.sampler = _sampler(self.request.seed + known, self.request.trials)  # workers that join later sample anew
        self.log(f"study {self.study_name} in {self.storage}: " + ("created" if created else f"{known} trials so far"))
        return study, created

    def skeleton(self, quant: str, decoding: Decoding | None = None) -> Plan:
        """A plan for the checkpoint (the benches load it through one)."""
        from planner.perf.speedup import predict

        d = decoding or Decoding("autoregressive", quant=quant)
        context = self.context
        return Plan(
            model=ModelRef(name=self.spec.name, source=str(self.source.resolve()) if self.source.exists() else str(self.source),
                           num_layers=self.spec.num_layers, vocab_size=self.spec.vocab_size, hidden_size=self.spec.hidden_size),
            hardware=HardwareRef(profile=self.profile.name, device_name=self.profile.device_name,
                                memory_gib=self.profile.memory_gib),
            decoding=d,
            prediction=predict(self.spec, self.profile, Decoding("autoregressive", quant=quant), context=context),
            constraints=Constraints(context=context),
        )

    def bench(self, prompts, quant: str):
        from planner.runtime import DecodingBench

        max_gamma = max(MAX_PREDICTORS, self.space.s3d.gamma if self.space.s3d else 0)
        return DecodingBench(self.skeleton(quant), [p for p, _ in prompts], groups=[g for _, g in prompts],
                             max_new_tokens=self.request.max_new_tokens, max_gamma=max_gamma, seed=self.request.seed,
                             device=self.request.device, chat=self.request.chat, dtype=self.dtype)

    def predict(self, profile, decoding: Decoding, acceptance=None):
        from planner.perf.speedup import predict

        return predict(self.spec, profile, decoding, context=self.context, priors=self.priors,
                       draft_spec=self.draft_specs.get(decoding.draft_model), acceptance=acceptance,
                       basis="analytical" if acceptance is None else "calibrated")

    def measure_held_out(self, decodings) -> dict:
        """decoding -> Comparison of each of `decodings` (autoregressive first) on the held-out
        prompts, in one bench per target quantization."""
        if not self.held or not decodings:
            return {}
        comparisons = {}
        for quant in dict.fromkeys(d.quant for d in decodings):
            same = list(dict.fromkeys(d for d in decodings if d.quant == quant))
            self.log(f"measuring {len(same)} set-up(s) on {len(self.held)} held-out prompts in {self.request.rounds} rounds")
            comparisons |= {c.decoding: c for c in self.bench(self.held, quant).compare(same, self.request.rounds)}
        return comparisons

    def plan(self, chosen, trials, held_out, *, finished: int, study_name: str, calibrated) -> Plan:
        from planner.autotune import with_measured_speedup
        from planner.perf.speedup import alpha_from_tokens_per_iteration

        r = self.request
        decoding = chosen.decoding if chosen else Decoding("autoregressive")
        held = held_out.get(decoding)

        def candidate(d: Decoding, speedup: float, tokens_per_iteration: float) -> Candidate:
            # basis: autoregressive tokens/s from the profile calibrated on the measured step;
            # a set-up's speedup and acceptance as measured
            if d.method == "autoregressive":
                return Candidate(d, dataclasses.replace(self.predict(calibrated, d), basis="calibrated"))
            model = self.predict(calibrated, d, acceptance=alpha_from_tokens_per_iteration(tokens_per_iteration, d.gamma))
            return Candidate(d, dataclasses.replace(with_measured_speedup(model, speedup), basis="measured"))

        if chosen is None:
            main = candidate(decoding, 1.0, 1.0)
        elif held is not None:
            main = candidate(decoding, held.speedup, held.tokens_per_iteration)
        else:
            main = candidate(decoding, chosen.speedup, chosen.tokens_per_iteration)
        others = {}
        for m in sorted((m for m in trials if m.state == "complete"), key=lambda m: -m.value):
            if m.decoding != decoding and m.decoding not in others and len(others) < 5:
                others[m.decoding] = candidate(m.decoding, m.speedup, m.tokens_per_iteration)
        held_groups = dict(held.group_speedups) if held is not None else {}
        tuning_groups = dict(chosen.group_speedups) if chosen else {g: 1.0 for _, g in self.tuning}
        plain = held_out.get(Decoding("autoregressive", quant=decoding.quant))
        measured = None
        if held is not None:
            measured = {"tokens_per_s": held.tokens_per_s, "tokens_per_iteration": held.tokens_per_iteration,
                        "speedup": held.speedup, "identical": held.identical, "prompts": len(self.held),
                        "max_new_tokens": r.max_new_tokens, "device": r.device,
                        "baseline_tokens_per_s": plain.tokens_per_s if plain else None}
        return self.skeleton(decoding.quant, decoding).replace(
            prediction=main.prediction,
            alternatives=tuple(others.values()),
            search=SearchSettings(sampler="TPESampler", seed=r.seed, trials=finished, objective=r.objective,
                                  methods=self.space.methods, storage=self.storage, study=study_name),
            measured=measured,
            tuning=Tuning(
                objective=r.objective, tuning_prompts=len(self.tuning), held_out_prompts=len(self.held),
                tuning_speedup=chosen.speedup if chosen else 1.0, held_out_speedup=held.speedup if held else None,
                held_out_range=tuple(held.speedup_range) if held else (),
                groups=tuple(GroupSpeedup(g, tuning_groups.get(g, 1.0), held_groups.get(g))
                             for g in dict.fromkeys(g for _, g in self.tuning + self.held)),
                max_new_tokens=r.max_new_tokens, rounds=r.rounds),
        )


def _prompts(source) -> list:
    """(prompt, group) pairs: given as such, or read from a file (runtime.read_grouped_prompts)."""
    from planner.runtime import read_grouped_prompts

    return list(source) if isinstance(source, tuple) else read_grouped_prompts(source)


def _methods(request: TuneRequest, draft_specs: dict, s3d) -> tuple[str, ...]:
    """The speculative methods searched: those asked for, or every one this checkpoint can run."""
    runnable = ["layer_skip", "early_exit", "prompt_lookup"] + (["draft_model"] if draft_specs else []) + (["s3d"] if s3d else [])
    if request.methods is None:
        return tuple(runnable)
    for method in request.methods:
        if method not in runnable:
            why = {"draft_model": "give a draft model", "s3d": "the checkpoint has no s3d.json: adapt it first",
                   "autoregressive": "it is the baseline every trial is measured against"}.get(method, "no such method")
            raise InputError(f"`methods`: cannot search {method} ({why})")
    return tuple(request.methods)


def _sampler(seed: int, trials: int):
    import warnings

    import optuna

    with warnings.catch_warnings():  # `group` and `constant_liar` are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: a trial running on another worker counts as a poor one, so parallel
        # workers do not all sample the same promising region
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 3)), multivariate=True,
                                          group=True, constant_liar=True)


# ------------------------------------------------------------------------ the trials


class _Interrupt:
    """Ctrl-C while a trial decodes ends that trial at once (Optuna marks it failed and
    re-raises); while Optuna talks to its storage it waits for the next safe point, since an
    interrupt inside SQLAlchemy can leave a lock held or a trial half recorded."""

    def __init__(self):
        self.came = False
        self._decoding = False

    def __call__(self, signum, frame):
        self.came = True
        if self._decoding:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def decoding(self, on: bool = True):
        previous, self._decoding = self._decoding, on
        try:
            if on and self.came:
                raise KeyboardInterrupt
            yield
        finally:
            self._decoding = previous


class _MeasuredTuning:
    """The measured study: benches (one per target quantization, loaded when first needed),
    the performance model calibrated on this machine, the objective."""

    def __init__(self, setup: _Setup, study, log):
        from planner.autotune import calibrate_kernel_cost

        self.setup, self.study, self.log = setup, study, log
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.interrupt = _Interrupt()
        self._benches = {}
        self._quant_factor = {"none": 1.0}
        r = setup.request
        bench = self.bench("none")
        log(f"timing autoregressive decoding: 1 round of {len(setup.tuning)} tuning prompts x {r.max_new_tokens} tokens, "
            f"{'through the chat template' if bench.chat else 'as raw text'}")
        step_s = bench.compare([], 1)[0].iteration_ms / 1e3
        log(f"autoregressive step: {step_s * 1e3:.1f} ms")
        # the model's step made equal to this checkpoint's measured one (autotune's calibration)
        self.calibrated = calibrate_kernel_cost(setup.spec, setup.profile, step_s, context=setup.context)

    def bench(self, quant: str):
        if quant not in self._benches:
            self._benches[quant] = self.setup.bench(self.setup.tuning, quant)
        return self._benches[quant]

    def close(self) -> None:
        self._benches.clear()  # the held-out bench loads the checkpoint anew

    def seed(self) -> None:
        """Queue each method's analytical best (on the calibrated model) as the first trials."""
        from planner.autotune import best_per_method
        from planner.search.request import SearchRequest
        from planner.search.study import search

        s = self.setup
        request = SearchRequest(context=s.context, trials=ANALYTICAL_TRIALS,
                                seed=s.request.seed, methods=s.space.methods, quants=s.space.quants,
                                drafts=tuple(s.draft_specs), skip_pattern=s.space.skip_pattern, priors=s.priors)
        result = search(s.spec, self.calibrated, request)
        best = {m: c.decoding for m, c in best_per_method(result.evaluated).items()}
        if s.space.s3d is not None:
            best["s3d"] = dataclasses.replace(s.space.s3d, quant=s.space.quants[0])
        predicted = {d: s.predict(self.calibrated, d).speedup for d in best.values()}
        # no more seeds than trials left to run: a queued trial nobody runs would stay WAITING
        left = max(0, s.request.trials - len(self.study.get_trials(deepcopy=False)))
        with storage_errors(s.storage):
            seeds = sorted(predicted, key=predicted.get, reverse=True)[:left]
            for decoding in seeds:
                self.study.enqueue_trial(params_of(decoding, s.space), user_attrs={"seed": "analytical best"},
                                         skip_if_exists=True)
        top = max(predicted, key=predicted.get)
        plan = f"{describe(top)}, predicted {predicted[top]:.2f}x" if predicted[top] > 1.0 else \
            f"autoregressive (the best speculative set-up, {describe(top)}, predicted {predicted[top]:.2f}x)"
        self.log(f"analytical plan: {plan}; seeded with {len(seeds)} analytical best set-up(s): "
                 f"{', '.join(sorted(d.method for d in seeds)) or 'none (the study is full)'}")

    def run(self, on_trial) -> None:
        """Trials until the study holds `trials` finished ones (whichever worker ran them)."""
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        total, states = self.setup.request.trials, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

        def finished() -> int:
            return len(self.study.get_trials(deepcopy=False, states=states))

        def after_trial(study, trial):
            if self.interrupt.came:
                study.stop()
            if on_trial:
                best = choose([_measured(t) for t in study.get_trials(deepcopy=False, states=states) if "decoding" in t.user_attrs])[0]
                on_trial(finished(), total, best)

        with sigint_handler(self.interrupt), storage_errors(self.setup.storage):
            done = finished()
            if on_trial:
                on_trial(done, total, None)
            if done < total:
                try:
                    self.study.optimize(self.objective, n_trials=total - done, catch=(TrialFailed,),
                                        callbacks=[MaxTrialsCallback(total, states=states), after_trial])
                except BaseException:
                    if self.interrupt.came:  # Optuna may turn a KeyboardInterrupt into another error as it unwinds
                        raise KeyboardInterrupt from None
                    raise
        if self.interrupt.came:
            raise KeyboardInterrupt

    def objective(self, trial) -> float:
        import optuna

        s = self.setup
        decoding = suggest(trial, s.space)
        predicted = s.predict(self.calibrated, decoding).speedup
        _record(trial, decoding, predicted_speedup=predicted, worker=self.worker)
        best = _best_speedup(self.study)
        if "seed" not in trial.user_attrs and best and predicted < PRUNE_PREDICTED_BELOW * best:
            trial.set_user_attr("why", f"predicted {predicted:.2f}x, under {PRUNE_PREDICTED_BELOW:g} x the best measured "
                                       f"{best:.2f}x: not measured")
            raise optuna.TrialPruned()

        def on_round(r: int, comparisons) -> None:
            plain, c = comparisons
            with self.interrupt.decoding(False):  # storage work
                trial.report(c.speedup * factor, r)
                if trial.should_prune():
                    # the rounds measured so far are kept: a calibration learns most from set-ups the model overrated
                    trial.set_user_attr("measured", _measured_attrs(plain, c, factor, rounds=r + 1))
                    trial.set_user_attr("why", f"{r + 1} round(s) measured {c.speedup * factor:.2f}x, "
                                               f"under {PRUNE_MEASURED_BELOW:g}x")
                    raise optuna.TrialPruned()

        try:
            bench = self.bench(decoding.quant)
            factor = self.quant_factor(decoding.quant)
            with self.interrupt.decoding():
                plain, c = bench.compare([decoding], s.request.rounds, on_round=on_round)
        except KeyboardInterrupt:
            trial.set_user_attr("why", "interrupted")
            raise
        except SpecplanError as exc:  # this checkpoint cannot run the set-up (memory, shapes)
            trial.set_user_attr("why", str(exc))
            raise TrialFailed(str(exc)) from None
        trial.set_user_attr("measured", _measured_attrs(plain, c, factor, rounds=s.request.rounds))
        if not c.identical:
            trial.set_user_attr("why", "output differs from autoregressive decoding")
            raise TrialFailed("output differs from autoregressive decoding")
        return c.speedup * factor if s.request.objective == "mean" else min(v * factor for _, v in c.group_speedups)

    def quant_factor(self, quant: str) -> float:
        """Autoregressive tokens/s of the `quant` target over the unquantized one's, measured
        once in interleaved rounds: a quantized set-up's speedup is over the model as given."""
        import statistics

        if quant not in self._quant_factor:
            plain, quantized = self.bench("none"), self.bench(quant)
            ratios = []
            for _ in range(self.setup.request.rounds):
                with self.interrupt.decoding():
                    a = plain.compare([], 1)[0].tokens_per_s
                    b = quantized.compare([], 1)[0].tokens_per_s
                ratios.append(b / a)
            self._quant_factor[quant] = statistics.median(ratios)
            self.log(f"{quant}: autoregressive decoding at {self._quant_factor[quant]:.2f}x the unquantized model's")
        return self._quant_factor[quant]


def _measured_attrs(plain, c, factor: float, *, rounds: int) -> dict:
    """A trial's "measured" attribute (JSON) from its runtime.Comparison `c` against
    autoregressive decoding (`plain`) over `rounds` rounds; speedups times `factor` (the
    quantized target's autoregressive speed over the unquantized one's)."""
    return {"speedup": c.speedup * factor, "speedup_range": [v * factor for v in c.speedup_range],
            "groups": [[g, v * factor] for g, v in c.group_speedups], "tokens_per_iteration": c.tokens_per_iteration,
            "accept_counts": list(c.accept_counts), "identical": c.identical, "autoregressive_ms": plain.iteration_ms,
            "rounds": rounds}


def _record(trial, decoding: Decoding, **attrs) -> None:
    plain = dataclasses.asdict(decoding)
    plain["skip_layers"] = list(plain["skip_layers"])  # JSON for database storages
    trial.set_user_attr("decoding", plain)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _best_speedup(study) -> float | None:
    from optuna.trial import TrialState

    speedups = [t.user_attrs["measured"]["speedup"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "measured" in t.user_attrs]
    return max(speedups, default=None)


def _measured(trial) -> Measured:
    attrs = trial.user_attrs
    decoding = Decoding(**dict(attrs["decoding"], skip_layers=tuple(attrs["decoding"]["skip_layers"])))
    m = attrs.get("measured")
    state = trial.state.name.lower()
    last_round = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
    return Measured(
        number=trial.number, state=state, decoding=decoding, predicted_speedup=attrs.get("predicted_speedup", 0.0),
        value=trial.value if state == "complete" else None,
        speedup=m["speedup"] if m else last_round,
        speedup_range=tuple(m["speedup_range"]) if m else None,
        group_speedups=tuple((g, v) for g, v in m["groups"]) if m else (),
        tokens_per_iteration=m["tokens_per_iteration"] if m else None,
        accept_counts=tuple(m["accept_counts"]) if m else (),
        why=attrs.get("why", ""),
        autoregressive_ms=m.get("autoregressive_ms") if m else None,
    )
