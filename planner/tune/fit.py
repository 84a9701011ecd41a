"""Calibration of the performance model from a tune study's measured trials.

A measured trial gives one set-up's paired speedup over autoregressive decoding (the median
round), its tokens per iteration tau, how many drafts each iteration accepted, and the
autoregressive step it was paired with (T_ar). From the trials on unquantized targets:

cost (planner/perf/cost.py, speedup.py): the per-kernel cost t_k, the token slope sigma (on a
    CPU profile that measured its per-row cost, row_us in its place: the model then prices extra
    tokens by it) and the draft's host cost per forward t_d, by least squares on the relative errors of

        T(1, all) = T_ar        and        T_iter = tau / speedup x T_ar

    (speedup = tau T(1, all) / T_iter is the model's own definition, so a paired ratio gives
    the iteration time). The model is affine in (t_k, sigma, t_d) wherever the roofline's
    max() keeps its branch, so each Gauss-Newton step is a linear least-squares problem
    (numpy.linalg.lstsq) whose columns are the model's own differences, solved with no
    parameter negative (the best feasible solution over the subsets of free parameters:
    exact non-negative least squares), with a weak pull towards the starting profile for a
    parameter the trials do not inform.
acceptance (planner/perf/acceptance.py): per method, S3D's relation (Zhong & Bharadwaj
    2024, arXiv:2405.20314) with position decay

        alpha_i(beta) = U / (1 + exp(k (beta - beta0))) x delta^(i-1)

    by maximum a posteriori: an iteration that reached draft position i accepted it with
    probability alpha_i (a Bernoulli trial; the counts are the trial's accept_counts), and
    each parameter has a Gaussian prior of width PRIOR_WIDTH centred on the method's prior,
    so what the trials cannot tell apart (one beta per method, as with s3d's one adapter)
    stays where the prior put it. The maximum is found on a grid refined around its best
    point: four bounded parameters and a likelihood that costs microseconds (scipy is not a
    dependency).

Held-out set-ups: every third distinct set-up, in trial order, is left out of a second fit;
their measured speedups are compared with the model's predictions before the fit (the
study's step-calibrated profile and the priors it used) and after it.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, replace

import numpy as np

from planner.perf.acceptance import Prior, resolve_priors
from planner.perf.cost import Execution, cpu_rows_measured
from planner.perf.speedup import beta_for, predict_detail
from planner.plan.schema import Decoding
from planner.tune.calibration import Calibration, FitSummary, FittedFor, HeldOutSetUp, fitted_source

HELD_OUT_EVERY = 3  # every third distinct set-up tests the fit
# Each cost parameter's finite-difference step (exact where the model is affine) and the scale
# of its pull towards the starting profile, weighted as a 0.1% error on one trial: enough to pin
# a parameter no trial informs, too little to move one they do
COST_STEP_SCALE = {"kernel_launch_us": (1.0, 1.0), "graph_kernel_us": (1.0, 1.0), "token_slope": (0.01, 0.1),
                   "row_us": (1.0, 10.0), "draft_step_us": (10.0, 100.0)}
COST_PULL = 1e-6
GAUSS_NEWTON_STEPS = 20
PRIOR_WIDTH = {"ceiling": 0.2, "steepness": 5.0, "midpoint": 0.25, "decay": 0.2}
GRID_POINTS, REFINE_POINTS, REFINE_ROUNDS = 17, 7, 60


@dataclass(frozen=True)
class Observation:
    """One trial that decoded every prompt at least once: what the fit reads."""

    decoding: Decoding
    speedup: float  # median paired speedup over autoregressive decoding
    tokens_per_iteration: float
    accept_counts: tuple[int, ...]  # [n]: iterations that accepted n drafts, n = 0..gamma
    autoregressive_ms: float  # the paired autoregressive step, ms per token


def observations(trials) -> list[Observation]:
    """The trials (planner.tune.Measured) the fit reads, in trial order: every prompt decoded
    at least once (complete; pruned after a round, over the rounds it ran: the set-ups the
    model overrated teach the fit most; or failed because the output differed: its timing
    and acceptance are as real) on an unquantized target, with the paired autoregressive
    step recorded. Trials pruned by the model before decoding are not measurements."""
    return [Observation(m.decoding, m.speedup, m.tokens_per_iteration, m.accept_counts, m.autoregressive_ms)
            for m in sorted(trials, key=lambda m: m.number)
            if m.speedup_range is not None and m.decoding.quant == "none" and m.autoregressive_ms]


# ------------------------------------------------------------------------ cost


def _kernel_field(profile) -> str:
    return "graph_kernel_us" if Execution.default_for(profile).graphs else "kernel_launch_us"


def _row_field(profile) -> str:
    """sigma's field: a CPU profile's measured per-row cost (row_us, planner.perf.cost.cpu_rows_measured)
    where it has one, since the model then does not read the token slope; else the token slope."""
    return "row_us" if cpu_rows_measured(profile) else "token_slope"


def _fields(profile) -> tuple[str, str, str]:
    return _kernel_field(profile), _row_field(profile), "draft_step_us"


def cost_parameters(profile) -> tuple[float, float, float]:
    """(t_k in us, sigma, t_d in us) of `profile`: the per-kernel cost of its execution mode;
    sigma its token slope, or its per-row cost in us on a CPU that measured one."""
    return tuple(float(getattr(profile, f)) for f in _fields(profile))


def with_cost(profile, theta):
    """`profile` with (t_k in us, sigma, t_d in us) = theta."""
    return replace(profile, **dict(zip(_fields(profile), map(float, theta))))


def _times_s(spec, profile, obs, *, context, draft_specs) -> np.ndarray:
    """Predicted (T(1, all), T_iter) of each observation, in s, interleaved."""
    times = []
    for o in obs:
        d = predict_detail(spec, profile, o.decoding, context=context, draft_spec=draft_specs.get(o.decoding.draft_model))
        times += [d.autoregressive_s, d.draft_s + d.verify_s]
    return np.array(times)


def measured_times_s(obs) -> np.ndarray:
    """Measured (T_ar, tau / speedup x T_ar) of each observation, in s, interleaved."""
    times = []
    for o in obs:
        step = o.autoregressive_ms / 1e3
        times += [step, o.tokens_per_iteration / o.speedup * step]
    return np.array(times)


def fit_cost(spec, profile, obs, *, context: int, draft_specs: dict):
    """`profile` with t_k, sigma and t_d fitted to `obs` (see the module's docstring)."""
    y = measured_times_s(obs)
    start = np.array(cost_parameters(profile))
    steps, scales = zip(*(COST_STEP_SCALE[f] for f in _fields(profile)))
    pull = np.sqrt(COST_PULL) / np.array(scales)
    theta = start
    for _ in range(GAUSS_NEWTON_STEPS):
        at = _times_s(spec, with_cost(profile, theta), obs, context=context, draft_specs=draft_specs)
        jacobian = np.column_stack([
            (_times_s(spec, with_cost(profile, theta + step * np.eye(3)[j]), obs, context=context, draft_specs=draft_specs)
             - at) / step for j, step in enumerate(steps)])
        # rows: (T(theta) + J (x - theta) - y) / y, then the pull pull_j (x_j - start_j)
        a = np.vstack([jacobian / y[:, None], np.diag(pull)])
        b = np.concatenate([(y - at + jacobian @ theta) / y, pull * start])
        new = non_negative_lstsq(a, b)
        done = np.allclose(new, theta, rtol=1e-6, atol=1e-9)
        theta = new
        if done:
            break
    return with_cost(profile, theta)


def non_negative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin |a x - b| over x >= 0, exactly: the optimum solves the unconstrained problem on
    its non-zero columns, so it is the best feasible one of those solutions (2^n of them;
    n = 3 here)."""
    n = a.shape[1]
    best, best_cost = np.zeros(n), float(np.sum(b**2))
    for free in itertools.product((False, True), repeat=n):
        columns = np.flatnonzero(free)
        if not columns.size:
            continue
        x = np.zeros(n)
        x[columns] = np.linalg.lstsq(a[:, columns], b, rcond=None)[0]
        cost = float(np.sum((a @ x - b) ** 2))
        if (x >= 0).all() and cost < best_cost:
            best, best_cost = x, cost
    return best


# ------------------------------------------------------------------------ acceptance


def acceptance_counts(spec, obs, method: str, draft_specs: dict) -> np.ndarray:
    """(4, R): beta, draft position i (from 1), iterations that accepted it and that rejected
    it, for each position some iteration of a `method` observation reached."""
    rows = []
    for o in obs:
        if o.decoding.method != method:
            continue
        beta = beta_for(spec, o.decoding, draft_specs.get(o.decoding.draft_model))
        counts = o.accept_counts
        for i in range(1, len(counts)):
            reached, accepted = sum(counts[i - 1 :]), sum(counts[i:])
            if reached:
                rows.append((beta, i, accepted, reached - accepted))
    return np.array(rows, dtype=float).T.reshape(4, -1)


_PARAMETERS = ("ceiling", "steepness", "midpoint", "decay")


def _objective(params: np.ndarray, rows: np.ndarray, centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Negative log posterior of each row of params (C, 4) given the counts `rows` (4, R)."""
    beta, position, accepted, rejected = rows
    ceiling, steepness, midpoint, decay = (params[:, j : j + 1] for j in range(4))
    logistic = ceiling / (1 + np.exp(np.clip(steepness * (beta - midpoint), -50, 50)))
    alpha = np.where(steepness == 0, ceiling, logistic) * decay ** (position - 1)  # as Prior.alpha: k = 0 is constant
    alpha = np.clip(alpha, 1e-9, 1 - 1e-9)
    nll = -(accepted * np.log(alpha) + rejected * np.log1p(-alpha)).sum(axis=1)
    return nll + 0.5 * (((params - centre) / width) ** 2).sum(axis=1)


def _best_on_grid(axes, rows, centre, width) -> np.ndarray:
    best, best_value = None, np.inf
    grid = np.array(list(itertools.product(*axes)))
    for chunk in np.array_split(grid, max(1, len(grid) // 20000)):
        values = _objective(chunk, rows, centre, width)
        i = int(np.argmin(values))
        if values[i] < best_value:
            best, best_value = chunk[i], values[i]
    return best


def fit_prior(rows: np.ndarray, prior: Prior) -> Prior:
    """The MAP (U, k, beta0, delta) of the counts `rows` (acceptance_counts) with Gaussian
    priors of width PRIOR_WIDTH around `prior`; k and beta0 stay the prior's where its
    steepness is 0 (a constant alpha, as for prompt lookup)."""
    centre = np.array([getattr(prior, p) for p in _PARAMETERS])
    width = np.array([PRIOR_WIDTH[p] for p in _PARAMETERS])
    curve = prior.steepness > 0
    bounds = [(0.02, 1.0), (0.0, max(20.0, 3 * prior.steepness)) if curve else (0.0, 0.0),
              (prior.midpoint - 1.0, prior.midpoint + 1.0) if curve else (prior.midpoint, prior.midpoint), (0.1, 1.0)]
    axes = [np.linspace(low, high, GRID_POINTS if high > low else 1) for low, high in bounds]
    best = _best_on_grid(axes, rows, centre, width)
    step = np.array([(high - low) / (GRID_POINTS - 1) for low, high in bounds])
    for _ in range(REFINE_ROUNDS):
        # a grid of +-step around the best point: moved to its edge, look again at that scale
        # (the parameters are correlated, so the coarse best may sit several steps off)
        axes = [np.linspace(max(low, x - s), min(high, x + s), REFINE_POINTS if s else 1)
                for (low, high), x, s in zip(bounds, best, step)]
        new = _best_on_grid(axes, rows, centre, width)
        at_edge = any(s and abs(n - x) >= s * (1 - 1e-9) and low < n < high
                      for (low, high), n, x, s in zip(bounds, new, best, step))
        best, step = new, step if at_edge else step / 3
        if step.max() < 1e-5:
            break
    return replace(prior, **{p: float(v) for p, v in zip(_PARAMETERS, best)})


# ------------------------------------------------------------------------ the calibration


def fit(spec, profile, priors: dict[str, Prior], obs, *, context: int, draft_specs: dict, source: str):
    """(`profile` with its cost fitted, {method: fitted Prior} for each method of `obs`)."""
    fitted = fit_cost(spec, profile, obs, context=context, draft_specs=draft_specs)
    fitted = replace(fitted, sources={**profile.sources, **{f: source for f in _fields(profile)}})
    fitted_priors = {}
    for method in dict.fromkeys(o.decoding.method for o in obs):
        rows = acceptance_counts(spec, obs, method, draft_specs)
        if rows.size:
            fitted_priors[method] = replace(fit_prior(rows, priors[method]), source=source)
    return fitted, fitted_priors


def split_held_out(obs) -> tuple[list[Observation], list[Observation]]:
    """(to fit, held out): every HELD_OUT_EVERY-th distinct set-up in trial order is held out
    (none when there are fewer distinct set-ups than that)."""
    set_ups = list(dict.fromkeys(o.decoding for o in obs))
    held = set(set_ups[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY])
    return [o for o in obs if o.decoding not in held], [o for o in obs if o.decoding in held]


def calibrate(spec, profile, priors, trials, *, context: int, draft_specs: dict, study: str) -> Calibration | None:
    """The calibration of `spec` on `profile` (the study's step-calibrated one) fitted to the
    study's `trials`, its held-out error measured first on a fit without a third of the
    set-ups; None when no trial decoded every prompt on an unquantized target. `priors`: what
    resolve_priors takes (the priors the study predicted with).

    Raises:
        InputError, NotFoundError: `priors` that cannot be read (as resolve_priors).
    """
    from planner.autotune import describe
    from planner.perf.speedup import predict

    obs = observations(trials)
    if not obs:
        return None
    table = resolve_priors(priors)
    kw = dict(context=context, draft_specs=draft_specs)

    def speedup(model_profile, model_priors, d: Decoding) -> float:
        return predict(spec, model_profile, d, context=context, priors=model_priors,
                       draft_spec=draft_specs.get(d.draft_model)).speedup

    fitting, held = split_held_out(obs)
    held_out = ()
    if held:
        part_profile, part_priors = fit(spec, profile, table, fitting, source="held-out test", **kw)
        held_out = tuple(
            HeldOutSetUp(describe(d), statistics.median(o.speedup for o in held if o.decoding == d),
                         speedup(profile, table, d), speedup(part_profile, {**table, **part_priors}, d))
            for d in dict.fromkeys(o.decoding for o in held))
    source = fitted_source(study, len(obs))
    fitted_profile, fitted_priors = fit(spec, profile, table, obs, source=source, **kw)

    def error(predicted: str) -> float | None:
        errors = [abs(getattr(h, predicted) / h.measured_speedup - 1) for h in held_out]
        return statistics.fmean(errors) if errors else None

    before = dict(zip(_fields(profile), cost_parameters(profile)))
    summary = FitSummary(study=study, trials=len(obs), set_ups=len({o.decoding for o in obs}), context=context,
                         held_out=held_out, error_before=error("before_speedup"), error_after=error("after_speedup"),
                         before=before)
    model = FittedFor(spec.name, spec.num_layers, spec.hidden_size, spec.vocab_size)
    return Calibration(model, fitted_profile, fitted_priors, summary)
