"""What `tune` found, as tables (printed and written to NAME.tune.md) and two charts, all
next to the plan NAME.yaml: per-position acceptance of the chosen set-up
(NAME.acceptance.png) and predicted against measured speedup for every trial
(NAME.trials.png); and how well the performance model, fitted to the trials
(NAME.calibration.yaml), predicts set-ups it did not see."""

from __future__ import annotations

from pathlib import Path

from planner._files import write_atomic
from planner.autotune import describe
from planner.plan.schema import Decoding

TRIAL_HEADERS = ["trial", "state", "set-up", "predicted", "measured (rounds)", "value", "note"]
GROUP_HEADERS = ["group", "chosen: tuning", "chosen: held-out", "mean-optimal: tuning", "mean-optimal: held-out"]
ACCEPTANCE_HEADERS = ["draft token", "accepted (of iterations)", "accepted after the previous one"]
HELD_OUT_HEADERS = ["held-out set-up", "measured speedup", "model before the fit", "model after the fit"]
FITTED_HEADERS = ["fitted", "value"]


def trial_rows(result) -> list[list[str]]:
    """Every finished trial: its set-up, predicted and measured speedup, value and why it was
    pruned or failed."""
    rows = []
    for m in result.trials:
        measured = "-" if m.speedup is None else f"{m.speedup:.2f}x"
        if m.speedup_range:
            measured += f" ({m.speedup_range[0]:.2f}-{m.speedup_range[1]:.2f})"
        mark = " *" if result.chosen is not None and m.number == result.chosen.number else ""
        rows.append([f"{m.number}{mark}", m.state, describe(m.decoding), f"{m.predicted_speedup:.2f}x", measured,
                     "-" if m.value is None else f"{m.value:.3f}", m.why])
    return rows


def group_rows(result) -> list[list[str]]:
    """Each prompt group's speedup for the chosen set-up and the mean-optimal one, on the
    tuning prompts (from the trials) and on the held-out prompts."""

    def cell(speedups, group):
        value = dict(speedups).get(group)
        return "-" if value is None else f"{value:.2f}x"

    chosen, best = result.chosen, result.mean_optimal
    held = {d: c.group_speedups for d, c in result.held_out.items()}
    groups = [g.group for g in result.plan.tuning.groups]
    plain = "1.00x"  # the plan is autoregressive decoding: no set-up beat it in every round
    return [[g, cell(chosen.group_speedups, g) if chosen else plain, cell(held.get(chosen.decoding, ()), g) if chosen else plain,
             cell(best.group_speedups, g) if best else "-", cell(held.get(_decoding(best), ()), g)] for g in groups]


def summary(result) -> str:
    """One line: the plan's set-up and its speedup on the tuning and the held-out prompts
    (when the plan is autoregressive decoding, the mean-optimal set-up's instead)."""
    t, best = result.plan.tuning, result.mean_optimal
    left_out = "".join(f"; {describe(d)} left out: its held-out output differed from autoregressive decoding"
                       for d in result.differed)
    if result.chosen is None:
        line = ("every set-up that beat autoregressive decoding in every tuning round differed from it on held-out prompts"
                if result.differed else "no set-up beat autoregressive decoding in every tuning round")
        line += ": the plan is autoregressive decoding"
        held = result.held_out.get(_decoding(best))
        if best is not None:
            line += f"; the mean-optimal, {describe(best.decoding)}, measured {best.speedup:.2f}x on the tuning prompts"
            line += f" and {_figure(held)} on {t.held_out_prompts} held-out prompts" if held is not None else ""
        return line + left_out
    held = result.held_out.get(result.chosen.decoding)
    line = f"chosen: {describe(result.plan.decoding)} at {t.tuning_speedup:.2f}x on {t.tuning_prompts} tuning prompts"
    if held is None:
        return line + " (no held-out prompts)" + left_out
    return line + f", {_figure(held)} on {t.held_out_prompts} held-out prompts (outputs identical)" + left_out


def _figure(c) -> str:
    return f"{c.speedup:.2f}x ({c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f})"


def acceptance_rows(result) -> list[list[str]]:
    """Per draft position of the chosen set-up: how often it was accepted, and how often
    given the one before it was (the α_i of docs/performance-model.md)."""
    reached = acceptance_by_position(result)
    rows, previous = [], 1.0
    for i, fraction in enumerate(reached):
        rows.append([str(i + 1), f"{fraction:.3f}", f"{fraction / previous:.3f}" if previous else "-"])
        previous = fraction
    return rows


def acceptance_by_position(result) -> tuple[float, ...]:
    """The chosen set-up's per-position acceptance: on the held-out prompts where measured
    there, else on the tuning prompts."""
    chosen = result.chosen
    if chosen is None:
        return ()
    held = result.held_out.get(chosen.decoding)
    counts = held.accept_counts if held is not None else chosen.accept_counts
    iterations = sum(counts)
    return tuple(sum(counts[n:]) / iterations for n in range(1, len(counts))) if iterations else ()


def held_out_rows(result) -> list[list[str]]:
    """Each set-up left out of the calibration's test fit: measured speedup, and the model's
    prediction (with its relative error) before and after the fit; then the mean errors."""
    c = result.calibration
    if c is None or not c.fit.held_out:
        return []

    def cell(predicted, measured):
        return f"{predicted:.2f}x ({predicted / measured - 1:+.0%})"

    rows = [[h.set_up, f"{h.measured_speedup:.2f}x", cell(h.before_speedup, h.measured_speedup),
             cell(h.after_speedup, h.measured_speedup)] for h in c.fit.held_out]
    return rows + [["mean |error|", "", f"{c.fit.error_before:.0%}", f"{c.fit.error_after:.0%}"]]


def fitted_rows(result) -> list[list[str]]:
    """The calibration's fitted constants: the cost terms, and each method's acceptance curve."""
    from planner.tune.fit import cost_parameters

    c = result.calibration
    if c is None:
        return []
    kernel_us, slope, draft_us = cost_parameters(c.profile)
    was = list(c.fit.before.values()) or [None] * 3

    def before(value, form):
        return "" if value is None else f" (was {value:{form}})"

    rows = [["per-kernel cost", f"{kernel_us:.2f} us" + before(was[0], ".2f")],
            ["token slope", f"{slope:.3f} per extra token" + before(was[1], ".3f")],
            ["draft host cost", f"{draft_us:.0f} us per draft forward" + before(was[2], ".0f")]]
    for method, p in c.priors.items():
        curve = f"U {p.ceiling:.3f}, k {p.steepness:.2f}, beta0 {p.midpoint:.3f}, " if p.steepness else f"alpha {p.ceiling:.3f}, "
        rows.append([f"{method} acceptance", curve + f"decay {p.decay:.3f}"])
    return rows


def calibration_summary(result) -> str:
    """One line: what the calibration was fitted to and its held-out error before and after."""
    c = result.calibration
    if c is None:
        return "no calibration: no trial decoded every prompt on the unquantized model"
    line = f"calibration fitted to {c.fit.trials} measured trials ({c.fit.set_ups} set-ups)"
    if c.fit.error_before is None:
        return line + "; too few set-ups to hold any out"
    return (line + f"; on {len(c.fit.held_out)} held-out set-up(s) the speedup's error was {c.fit.error_before:.0%} "
            f"before the fit, {c.fit.error_after:.0%} after")


def _decoding(m) -> Decoding | None:
    return m.decoding if m is not None else None


def markdown(result) -> str:
    """The report as Markdown: the plan's held-out figure, the group table, per-position
    acceptance and every trial."""
    tuning = result.plan.tuning
    lines = [f"# tune: {result.plan.model.name}", "", summary(result) + ".", "",
             f"Objective {tuning.objective}, {tuning.max_new_tokens} new tokens, {tuning.rounds} rounds; "
             f"study {result.study} in {result.storage}, {result.plan.search.trials} trials.", "",
             "## Speedup per prompt group", "", _md_table(group_rows(result), GROUP_HEADERS), ""]
    if acceptance_rows(result):
        lines += ["## Per-position acceptance of the chosen set-up", "",
                  _md_table(acceptance_rows(result), ACCEPTANCE_HEADERS), ""]
    lines += ["## Trials (* chosen)", "", _md_table(trial_rows(result), TRIAL_HEADERS), ""]
    lines += ["## Calibration of the performance model", "", calibration_summary(result) + ".", ""]
    if fitted_rows(result):
        lines += ["Fitted constants (in NAME.calibration.yaml beside the plan, for `specplan plan --calibration`):", "",
                  _md_table(fitted_rows(result), FITTED_HEADERS), ""]
    if held_out_rows(result):
        lines += ["Held-out set-ups (every third distinct set-up, left out of a second fit):", "",
                  _md_table(held_out_rows(result), HELD_OUT_HEADERS), ""]
    return "\n".join(lines)


def _md_table(rows, headers) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report_paths(out) -> tuple[Path, Path, Path]:
    """(Markdown report, acceptance chart, trials chart) beside the plan `out`."""
    out = Path(out)
    stem = out.with_suffix("")
    return Path(f"{stem}.tune.md"), Path(f"{stem}.acceptance.png"), Path(f"{stem}.trials.png")


def calibration_path(out) -> Path:
    """NAME.calibration.yaml beside the plan `out`."""
    return Path(f"{Path(out).with_suffix('')}.calibration.yaml")


def write_reports(result, out) -> tuple[Path, ...]:
    """Write the report and the charts beside the plan `out`; their paths."""
    from planner.search.plot import _pyplot, _save

    text_path, acceptance_path, trials_path = report_paths(out)
    write_atomic(text_path, markdown(result))
    plt = _pyplot()
    _save(_acceptance_chart(plt, result), acceptance_path)
    _save(_trials_chart(plt, result), trials_path)
    return text_path, acceptance_path, trials_path


def _acceptance_chart(plt, result):
    fig, ax = plt.subplots(figsize=(6, 4))
    reached = acceptance_by_position(result)
    if reached:
        positions = range(1, len(reached) + 1)
        conditional = [r / p if p else 0.0 for r, p in zip(reached, (1.0, *reached))]
        ax.bar(positions, reached, color="tab:blue", alpha=0.7, label="accepted (of iterations)")
        ax.plot(positions, conditional, "o-", color="tab:orange", label="accepted after the previous one")
        ax.set_xticks(list(positions))
        ax.legend()
    else:
        ax.text(0.5, 0.5, "autoregressive decoding: nothing drafted", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="draft token", ylabel="fraction", ylim=(0, 1.05), title=f"acceptance: {describe(result.plan.decoding)}")
    fig.tight_layout()
    return fig


def _trials_chart(plt, result):
    fig, ax = plt.subplots(figsize=(7, 5))
    methods = sorted({m.decoding.method for m in result.trials})
    colours = dict(zip(methods, plt.get_cmap("tab10").colors))
    top = 1.0
    for m in result.trials:
        if m.speedup is None:  # pruned by the model before it was measured
            ax.plot(m.predicted_speedup, 0.02, "x", color="grey")
            continue
        marker = {"complete": "o", "pruned": "v", "fail": "X"}[m.state]
        ax.plot(m.predicted_speedup, m.speedup, marker, color=colours[m.decoding.method], alpha=0.8,
                markersize=9 if result.chosen is not None and m.number == result.chosen.number else 6)
        top = max(top, m.speedup, m.predicted_speedup)
    top = max([top] + [m.predicted_speedup for m in result.trials])
    ax.plot([0, top * 1.05], [0, top * 1.05], ":", color="black", label="predicted = measured")
    for method in methods:
        ax.plot([], [], "o", color=colours[method], label=method)
    ax.plot([], [], "v", color="grey", label="pruned after a round")
    ax.plot([], [], "X", color="grey", label="failed (output differs)")
    ax.plot([], [], "x", color="grey", label="pruned by the model (not measured)")
    ax.set(xlabel="predicted speedup (calibrated model)", ylabel="measured speedup (median paired round)",
           title=f"{len(result.trials)} trials: predicted against measured")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
