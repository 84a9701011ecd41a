"""--plot: every evaluated set-up, tokens/s against VRAM, the Pareto front and the chosen plan;
with --batch-sizes, total tokens/s against batch size for every gamma and the schedule's envelope."""

from __future__ import annotations

import io
from pathlib import Path

from planner._files import write_atomic
from planner.errors import InputError


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (more tokens/s with no more VRAM)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    return front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path) -> Path:
    """`path` as a Path, its suffix naming a format matplotlib writes.

    Raises:
        InputError: not a .png, .svg or .pdf name.
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"{path}: expected a .png, .svg or .pdf file name for the chart")
    return path


def _rendered(fig, fmt: str) -> bytes:
    """The figure as `fmt` (png, svg or pdf) bytes, closed: nothing touches a file until it is whole."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=110)
    finally:
        _pyplot().close(fig)
    return buffer.getvalue()


def _save(fig, path: Path) -> None:
    write_atomic(path, _rendered(fig, path.suffix.lower().lstrip(".")))


def plot_search(result, path) -> None:
    """Draw a SearchResult (tokens/s against VRAM, the Pareto front, the chosen plan) to `path`.

    Raises:
        InputError: `path` is not a .png, .svg or .pdf name, or cannot be written.
    """
    plt = _pyplot()
    path = check_plot_path(path)
    candidates = result.evaluated
    fig, ax = plt.subplots(figsize=(8, 5))
    methods = sorted({c.decoding.method for c in candidates})
    for method in methods:
        pts = [(c.prediction.vram_gib, c.prediction.tokens_per_s) for c in candidates if c.decoding.method == method]
        ax.scatter(*zip(*pts), s=12, alpha=0.6, label=method)
    feasible = [c for c, ok in zip(candidates, result.feasible) if ok]
    points = [(c.prediction.tokens_per_s, c.prediction.vram_gib) for c in feasible]
    front = sorted((points[i][1], points[i][0]) for i in pareto_front(points))
    if front:
        ax.plot(*zip(*front), color="black", linewidth=1, label="Pareto front")
    chosen = result.plan.prediction
    ax.scatter([chosen.vram_gib], [chosen.tokens_per_s], marker="*", s=250, color="red", zorder=5, label="chosen plan")
    ax.axvline(result.budget_gib, color="grey", linestyle="--", linewidth=1, label=f"budget {result.budget_gib:.1f} GiB")
    ax.set_xlabel("VRAM (GiB)")
    ax.set_ylabel("tokens/s (predicted)")
    ax.set_title(f"{result.plan.model.name} on {result.plan.hardware.profile}: {len(candidates)} set-ups")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_schedule(result, path) -> None:
    """Draw a ScheduleResult to `path`: one line per gamma (0 = autoregressive), the chosen
    envelope on top.

    Raises:
        InputError: `path` is not a .png, .svg or .pdf name, or cannot be written.
    """
    plt = _pyplot()
    path = check_plot_path(path)
    sizes = result.batch_sizes
    method = next((e.method for e in result.plan.schedule if e.gamma), result.plan.decoding.method)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("viridis")
    top = max(result.curves)
    for gamma, predictions in sorted(result.curves.items()):
        label = "gamma 0 (autoregressive)" if gamma == 0 else f"gamma {gamma}"
        ax.plot(sizes, [p.tokens_per_s * b for p, b in zip(predictions, sizes)], linewidth=1, alpha=0.7,
                color="grey" if gamma == 0 else colours(gamma / max(top, 1)), label=label,
                linestyle="--" if gamma == 0 else "-")
    ax.plot(sizes, [p.tokens_per_s * b for p, b in zip(result.chosen, sizes)], color="red", linewidth=2.5,
            marker="o", label="chosen schedule")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (concurrent sequences)")
    ax.set_ylabel("tokens/s, all sequences (predicted)")
    ax.set_title(f"{result.plan.model.name} on {result.plan.hardware.profile}: {method}, {result.plan.decoding.quant}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)


def fleet_chart_png(model: str, rows) -> bytes:
    """Bars per GPU: tokens/s per sequence at the smallest batch, total at the largest, and USD
    per million tokens where priced. PNG bytes, so a fleet writes nothing until all is ready."""
    plt = _pyplot()
    planned = [row for row in rows if row.plan is not None]
    priced = [row for row in planned if row.usd_per_million_tokens is not None]
    panels = [("tokens/s per sequence\n(smallest batch)", planned, lambda r: r.tokens_per_s),
              ("tokens/s total\n(largest batch)", planned, lambda r: r.tokens_per_s_total)]
    if priced:
        panels.append(("USD per million tokens\n(largest batch)", priced, lambda r: r.usd_per_million_tokens))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for ax, (title, chosen, value) in zip(axes, panels):
        names = [r.gpu for r in chosen]
        values = [value(r) for r in chosen]
        ax.bar(names, values, color="tab:blue")
        for x, v in enumerate(values):
            ax.annotate(f"{v:.0f}" if v >= 100 else f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    fig.suptitle(f"{model}: predicted, per GPU", fontsize=10)
    fig.tight_layout()
    return _rendered(fig, "png")
