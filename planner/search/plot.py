"""--plot: every evaluated set-up, tokens/s against VRAM, the Pareto front and the chosen plan."""

from __future__ import annotations

from pathlib import Path

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


def plot_search(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {path}: expected a .png, .svg or .pdf file name")
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
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise InputError(f"--plot {path}: cannot write ({exc.strerror})") from None
    finally:
        plt.close(fig)
