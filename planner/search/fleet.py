"""Fleet planning: one model on many GPUs, a plan and engine configs per GPU, and a summary.

Everything is planned, exported and drawn in memory first; files are written only once
every GPU name, engine, price and budget has been checked, so bad input leaves nothing
behind. In a fleet, a GPU that cannot hold the largest batch sizes is planned for the
batch sizes it can hold (the summary says so), and one that holds none is listed without
a plan: "this GPU cannot serve this model" is an answer, not an error. Only a fleet in
which no GPU fits is refused.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path

from planner._files import write_atomic
from planner._yaml import write_yaml_atomic
from planner.errors import BudgetError, InputError, near_matches
from planner.hardware import load_profile, shipped_profile_names
from planner.models.spec import ModelSpec
from planner.plan.export import Export, export_plan, write_compose, write_export
from planner.plan.schema import Plan
from planner.search.engines import RUNTIME, drafts_trees, engine_space
from planner.search.request import SearchRequest
from planner.search.schedule import fitting_batch_sizes, schedule_search

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class FleetRow:
    gpu: str
    plan: Plan | None  # None: not even the smallest batch size fits this GPU
    batch_sizes: tuple[int, ...]  # the batch sizes planned: those that fit
    tokens_per_s: float  # per sequence, at the smallest batch size
    speedup: float  # over autoregressive at the same quantization, smallest batch size
    tokens_per_s_total: float  # all sequences, at the largest batch size planned
    vram_gib: float  # at the largest batch size planned
    usd_per_hour: float | None
    note: str = ""

    @property
    def usd_per_million_tokens(self) -> float | None:
        """At full load (the largest batch size planned), where a token is cheapest."""
        if self.usd_per_hour is None or self.plan is None:
            return None
        return self.usd_per_hour / (self.tokens_per_s_total * SECONDS_PER_HOUR) * 1e6


@dataclass(frozen=True)
class FleetSummary:
    model: str
    rows: tuple[FleetRow, ...]
    markdown: str
    files: tuple[Path, ...]  # every file written, summary first


def parse_gpus(text: str) -> tuple[str, ...]:
    """'a10g,l4,h100-sxm' or 'all' (every shipped profile).

    Raises:
        InputError: an empty list, or a GPU listed twice.
    """
    if text.strip() == "all":
        return tuple(shipped_profile_names())
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("`gpus`: expected a comma-separated list of GPU profiles, or all")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"`gpus`: {', '.join(twice)} listed twice")
    return tuple(names)


def parse_prices(text: str | None) -> dict[str, float]:
    """'a10g=1.0,h100-sxm=4.5' -> USD per GPU-hour.

    Raises:
        InputError: an entry that is not GPU=PRICE with a positive price.
    """
    prices: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            price = float(value) if sep else float("nan")
        except ValueError:
            price = float("nan")
        if not price > 0:
            raise InputError(f"`usd_per_hour` {part.strip()!r}: expected GPU=PRICE with a positive price, e.g. a10g=1.0")
        prices[name.strip()] = price
    return prices


def _row(gpu: str, profile, spec, request: SearchRequest, prices) -> FleetRow:
    budget = request.budget_gib(profile)
    sizes = fitting_batch_sizes(spec, profile, request)
    if not sizes:
        return FleetRow(gpu, None, (), 0.0, 0.0, 0.0, 0.0, prices.get(gpu),
                        note=f"does not fit {budget:.1f} GiB even at batch size {request.batch_sizes[0]}")
    result = schedule_search(spec, profile, request.replace(batch_sizes=sizes))
    first, last = result.chosen[0], result.chosen[-1]
    notes = [f"batch sizes above {sizes[-1]} do not fit {budget:.1f} GiB"] if sizes[-1] < request.batch_sizes[-1] else []
    note = "; ".join(notes + list(result.plan.notes))
    return FleetRow(gpu, result.plan, sizes, first.tokens_per_s, first.speedup, last.tokens_per_s * sizes[-1],
                    last.vram_gib, prices.get(gpu), note)


def plan_fleet(spec: ModelSpec, gpus, request: SearchRequest, *, out_dir, exports=(),
               usd_per_hour: dict[str, float] | None = None) -> FleetSummary:
    """Plan `spec` for `request` on every GPU in `gpus`; write DIR/<gpu>/plan.yaml,
    DIR/<gpu>/<engine>.<ext>, DIR/summary.md and DIR/summary.png. The search is restricted to
    what `request.engine` (whose step cost every trial pays) and every engine in `exports` can
    run (within `request.methods`), so each export is the best those engines can do; with engines, a plan quantizes only as
    `request.quants` allows. `usd_per_hour` prices GPUs by name.

    Raises:
        InputError: out_dir is a file or cannot be created, a price for a GPU not in `gpus`,
            a request for the Pareto front or with a storage, a method or quantization the
            engines cannot run, or a budget above a GPU's memory; files that cannot be written.
        NotFoundError: an unknown GPU profile or engine.
        BudgetError: the model fits none of the GPUs.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"`out_dir` {out_dir}: exists and is not a directory")
    if request.objective != "speed" or request.storage:
        raise InputError("a fleet plans each GPU for speed in one process: leave out `objective` pareto and `storage`")
    profiles = {gpu: load_profile(gpu) for gpu in gpus}
    folders = {}
    for gpu in profiles:
        other = folders.setdefault(gpu_folder(gpu), gpu)
        if other != gpu:
            raise InputError(f"`gpus`: {other} and {gpu} would both write {out_dir / gpu_folder(gpu)}: rename one profile file")
    exports = tuple(dict.fromkeys(exports))
    engine = request.engine if request.engine != RUNTIME else None
    methods, engine_quants = engine_space(([engine] if engine else []) + list(exports), request.methods)
    if engine_quants is not None:
        quants = tuple(q for q in request.quants or ("none",) if q in engine_quants)
        if not quants:
            raise InputError(f"the engines apply none of `quants` {', '.join(request.quants)}")
        request = request.replace(methods=methods, quants=quants)
    if not all(drafts_trees(name) for name in exports):  # an export that drafts chains: no trees
        request = request.replace(trees=False)
    prices = usd_per_hour or {}
    for name in prices:
        if name not in profiles:
            raise InputError(f"`usd_per_hour`: {name} is not in `gpus`{near_matches(name, profiles)}")
    rows = tuple(_row(gpu, profile, spec, request, prices) for gpu, profile in profiles.items())
    if not any(row.plan for row in rows):
        raise BudgetError(f"{spec.name} fits none of the GPUs ({', '.join(profiles)}) at batch size "
                          f"{request.batch_sizes[0]} and context {request.context}")
    files = {row.gpu: [export_plan(row.plan, name, plan_label=f"{gpu_folder(row.gpu)}/plan.yaml") for name in exports]
             for row in rows if row.plan}
    from planner.search.plot import fleet_chart_png

    markdown = summary_markdown(spec.name, rows, context=request.context, engines=exports or ((engine,) if engine else ()))
    chart = fleet_chart_png(spec.name, rows)
    written = _write(out_dir, rows, files, markdown, chart)
    return FleetSummary(spec.name, rows, markdown, written)


def gpu_folder(gpu: str) -> str:
    """The folder under the output directory for a `gpus` entry: a shipped profile's name, or a
    profile file's stem, with anything but letters, digits, '.', '_' and '-' replaced: never a path."""
    name = Path(gpu).stem if ("/" in gpu or "\\" in gpu or gpu.endswith((".yaml", ".yml"))) else gpu
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "gpu"


def _write(out_dir: Path, rows, exports: dict[str, list[Export]], markdown: str, chart: bytes) -> tuple[Path, ...]:
    planned = [row for row in rows if row.plan is not None]
    for path in [out_dir] + [out_dir / gpu_folder(row.gpu) for row in planned]:  # every folder before any file
        _mkdir(path)
    written = [write_atomic(out_dir / "summary.md", markdown), write_atomic(out_dir / "summary.png", chart)]
    for row in planned:
        gpu_dir = out_dir / gpu_folder(row.gpu)
        write_yaml_atomic(gpu_dir / "plan.yaml", row.plan.to_dict())
        written.append(gpu_dir / "plan.yaml")
        for export in exports[row.gpu]:
            path = gpu_dir / f"{export.engine}{export.suffix}"
            write_export(export, path)
            compose = write_compose(export, path)  # as `specplan export` writes one beside the script
            written += [path] + ([compose] if compose else [])
    return tuple(written)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the directory ({exc.strerror})") from None


# -- the summary ----------------------------------------------------------------------------


def _gamma_text(plan: Plan) -> str:
    if not plan.schedule:
        return str(plan.decoding.gamma)
    return ", ".join(f"{e.batch_min}-{e.batch_max}: {e.gamma}" for e in plan.schedule)


def summary_rows(rows) -> list[list[str]]:
    """One row of strings per GPU, in the column order of SUMMARY_HEADERS."""
    table = []
    for row in rows:
        if row.plan is None:
            table.append([row.gpu, "—", "—", "—", "—", "—", "—", "—", "—", "—", row.note])
            continue
        d = row.plan.decoding
        cost = row.usd_per_million_tokens
        table.append([
            row.gpu, d.method, _gamma_text(row.plan), d.quant, f"{row.tokens_per_s:.1f}", f"{row.speedup:.2f}x",
            f"{row.batch_sizes[-1]}", f"{row.tokens_per_s_total:.0f}", f"{row.vram_gib:.1f}",
            "—" if cost is None else f"{cost:.3f}", row.note,
        ])
    return table


SUMMARY_HEADERS = ["GPU", "method", "gamma (batch: gamma)", "quant", "tokens/s per seq (smallest batch)", "speedup",
                   "max batch", "tokens/s total (max batch)", "VRAM GiB (max batch)", "USD per M tokens", "note"]


def summary_markdown(model: str, rows, *, context: int, engines) -> str:
    first = next(row for row in rows if row.plan)
    search = first.plan.search
    lines = [
        f"# {model} on {len(rows)} GPUs",
        "",
        f"Predicted ({first.plan.prediction.basis}) at context {context}; {search.trials} trials per GPU, seed {search.seed}; "
        f"methods searched: {', '.join(search.methods)}"
        + (f" (what {', '.join(engines)} can run)" if engines else "") + ".",
        "Speedup is over autoregressive decoding at the same quantization; USD per million tokens is at the "
        "largest batch size planned (full load).",
        "",
        "| " + " | ".join(SUMMARY_HEADERS) + " |",
        "| " + " | ".join("---" for _ in SUMMARY_HEADERS) + " |",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in summary_rows(rows)]
    for row in rows:
        if row.plan and row.plan.schedule:
            lines += ["", f"## {row.gpu}: schedule", "", schedule_markdown(row.plan)]
    return "\n".join(lines) + "\n"


def schedule_markdown(plan: Plan) -> str:
    lines = ["| batch sizes | method | gamma | tokens/s per sequence | tokens/s total |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {e.batch_min}-{e.batch_max} | {e.method} | {e.gamma} | {e.tokens_per_s_per_sequence:.1f} | "
              f"{e.tokens_per_s_total:.0f} |" for e in plan.schedule]
    return "\n".join(lines)
