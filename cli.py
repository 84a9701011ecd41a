"""specplan's command line: each command parses, calls one library function, prints.

Errors from the library (SpecplanError) are caught once, in the command group, and
printed as one line on stderr with exit code 2 for bad input.
"""

from __future__ import annotations

import json
import sys

import click

from planner.errors import SpecplanError


class _Cli(click.Group):
    """Catches SpecplanError once: one line on stderr, its exit code, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpecplanError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version=__import__("planner").__version__, prog_name="specplan")
def cli():
    """specplan: choose, predict and run the fastest lossless speculative decoding set-up
    for a model on a GPU under a memory budget."""


# ---------------------------------------------------------------- hardware (issue 2)


def _table(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@cli.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--quick", is_flag=True, help="Smaller problems: under 15 s on a GPU.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the profile YAML here (default: print it).")
def profile(device, quick, out):
    """Measure this machine's device into a profile YAML.

    \b
    Example:
      specplan profile --device cpu --quick --out cpu.yaml
      specplan plan --model llama-3.2-1b --gpu cpu.yaml
    """
    import yaml
    from tqdm import tqdm

    from planner.hardware import profile_device
    from planner.hardware.measure import resolve_device

    resolve_device(device)  # a missing GPU is reported before any bar is drawn
    with tqdm(total=5, desc="profiling", unit="step", file=sys.stderr, leave=False) as bar:
        def step(name):
            bar.set_postfix_str(name)
            bar.update(0 if bar.n == 0 and name == "memory bandwidth" else 1)

        measured = profile_device(device, quick=quick, progress=step)
        bar.update(bar.total - bar.n)
    if out:
        measured.save(out)
        click.echo(f"wrote {out}: {measured.device_name}, {measured.effective_bandwidth_gbps:.0f} GB/s read, "
                   f"{measured.peak_tflops['bf16']:.3g} bf16 TFLOP/s, {measured.memory_gib:.1f} GiB", err=True)
    else:
        click.echo(yaml.safe_dump(measured.to_dict(), sort_keys=False, width=100), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profiles(as_json):
    """List the shipped GPU profiles (names usable as --gpu).

    \b
    Example:
      specplan profiles
    """
    from planner.hardware import shipped_profiles

    found = shipped_profiles()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in found], indent=2))
        return
    rows = [[p.name, p.device_name, f"{p.memory_gib:.1f}", f"{p.bandwidth_gbps:.0f}", f"{p.peak_tflops['bf16']:.0f}",
             f"{p.bandwidth_efficiency:.2f}"] for p in found]
    click.echo(_table(rows, ["name", "device", "memory GiB", "bandwidth GB/s", "bf16 TFLOP/s", "bw efficiency"]))


# ---------------------------------------------------------------- models (issue 2)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json):
    """List the shipped model cards (names usable as --model).

    \b
    Example:
      specplan models
    """
    from planner.models import load_card, load_model_spec, shipped_model_names

    specs = [load_model_spec(n) for n in shipped_model_names()]
    if as_json:
        click.echo(json.dumps([dict(vars(s), param_count=s.param_count, hf_id=load_card(s.name)["hf_id"]) for s in specs], indent=2))
        return
    rows = [[s.name, s.architecture, s.num_layers, s.hidden_size, f"{s.param_count / 1e9:.2f}",
             f"{s.weight_bytes('none') / 2**30:.1f}", f"{s.weight_bytes('int4') / 2**30:.1f}", s.tokenizer_family]
            for s in specs]
    click.echo(_table(rows, ["name", "arch", "layers", "hidden", "params B", "bf16 GiB", "int4 GiB", "tokenizer"]))


# ---------------------------------------------------------------- perf + search (issue 3)


def _layer_range(text: str) -> tuple[int, ...]:
    """'10-17' or '3,5,9' -> layer indices."""
    try:
        if "-" in text:
            first, last = (int(x) for x in text.split("-", 1))
            return tuple(range(first, last + 1))
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}': expected A-B or a comma-separated list of layers") from None


def _decoding_from_options(spec, method, gamma, skip_layers, skip_ratio, exit_layer, quant, draft_model):
    from planner.errors import InputError
    from planner.perf import middle_block
    from planner.plan import Decoding

    if skip_layers and skip_ratio is not None:
        raise InputError("give --skip-layers or --skip-ratio, not both")
    skipped = _layer_range(skip_layers) if skip_layers else ()
    if skip_ratio is not None:
        if not 0 < skip_ratio < 1:
            raise InputError(f"--skip-ratio must be between 0 and 1, got {skip_ratio}")
        skipped = middle_block(spec.num_layers, round(skip_ratio * spec.num_layers))
    if method in ("layer_skip", "s3d") and not skipped:
        skipped = middle_block(spec.num_layers, spec.num_layers // 2)
    if method == "early_exit" and exit_layer is None:
        exit_layer = 3 * spec.num_layers // 4
    for layer in skipped:
        if not 0 <= layer < spec.num_layers:
            raise InputError(f"--skip-layers: layer {layer} is outside 0-{spec.num_layers - 1} for {spec.name}")
    if exit_layer is not None and not 1 <= exit_layer < spec.num_layers:
        raise InputError(f"--exit-layer {exit_layer} is outside 1-{spec.num_layers - 1} for {spec.name}")
    gamma = 0 if method == "autoregressive" else (gamma or 4)
    return Decoding(method=method, gamma=gamma, skip_layers=skipped if method in ("layer_skip", "s3d") else (),
                    exit_layer=exit_layer if method == "early_exit" else None, quant=quant,
                    draft_model=draft_model if method == "draft_model" else None)


_METHODS = click.Choice(["autoregressive", "layer_skip", "early_exit", "s3d", "draft_model", "prompt_lookup"])
_QUANTS = click.Choice(["none", "int8", "int4"])


@cli.command()
@click.option("--model", "model_name", required=True, help="Card name, model directory, config.json or hub id.")
@click.option("--gpu", required=True, help="Shipped profile name or a measured profile YAML.")
@click.option("--method", required=True, type=_METHODS)
@click.option("--gamma", type=click.IntRange(1, 16), help="Drafted tokens per iteration (default 4).")
@click.option("--skip-layers", help="Layers the draft skips: A-B or a list (default: the middle half).")
@click.option("--skip-ratio", type=float, help="Skip a centred block of this fraction of the layers.")
@click.option("--exit-layer", type=int, help="early_exit: the draft runs layers [0, E).")
@click.option("--quant", type=_QUANTS, default="none", show_default=True)
@click.option("--draft-model", help="draft_model: card name, directory or config.json of the draft.")
@click.option("--acceptance", type=click.FloatRange(0, 1), help="Per-token acceptance; overrides the prior.")
@click.option("--context", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def predict(model_name, gpu, method, gamma, skip_layers, skip_ratio, exit_layer, quant, draft_model, acceptance,
            context, batch_size, as_json):
    """Predict one set-up: tokens/s, speedup, tokens per iteration, latencies, VRAM.

    \b
    Example:
      specplan predict --model llama-3.1-8b --gpu a10g --method s3d --gamma 4 --skip-ratio 0.4 --quant int4
    """
    from planner.hardware import load_profile
    from planner.models import load_model_spec
    from planner.perf import predict_detail

    spec, profile = load_model_spec(model_name), load_profile(gpu)
    decoding = _decoding_from_options(spec, method, gamma, skip_layers, skip_ratio, exit_layer, quant, draft_model)
    draft_spec = load_model_spec(draft_model) if method == "draft_model" and draft_model else None
    detail = predict_detail(spec, profile, decoding, context=context, batch_size=batch_size, acceptance=acceptance,
                            draft_spec=draft_spec)
    p = detail.prediction
    if as_json:
        data = dict(vars(p), tokens_per_s_total=p.tokens_per_s * batch_size, model=spec.name, gpu=profile.name,
                    decoding={k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(decoding).items()},
                    acceptance_per_position=list(detail.alphas))
        click.echo(json.dumps(data, indent=2))
        return
    rows = [
        ["tokens/s", f"{p.tokens_per_s:.1f}" + (f" per sequence, {p.tokens_per_s * batch_size:.1f} total" if batch_size > 1 else "")],
        ["speedup", f"{p.speedup:.2f}x over autoregressive ({quant})"],
        ["tokens per iteration", f"{p.tokens_per_iteration:.2f} (acceptance {p.acceptance:.2f}, {p.basis})"],
        ["target forward", f"{p.target_latency_ms:.2f} ms"],
        ["draft per iteration", f"{p.draft_latency_ms:.2f} ms"],
        ["iteration", f"{p.iteration_ms:.2f} ms"],
        ["VRAM", f"{p.vram_gib:.2f} GiB of {profile.memory_gib:.1f}"],
    ]
    click.echo(f"{spec.name} on {profile.name}: {_describe(decoding)}")
    click.echo(_table(rows, ["figure", "predicted"]))


def _describe(d) -> str:
    parts = [d.method]
    if d.gamma:
        parts.append(f"gamma {d.gamma}")
    if d.skip_layers:
        parts.append(f"skip {d.skip_layers[0]}-{d.skip_layers[-1]}" if list(d.skip_layers) == list(range(d.skip_layers[0], d.skip_layers[-1] + 1)) else f"skip {len(d.skip_layers)} layers")
    if d.exit_layer is not None:
        parts.append(f"exit {d.exit_layer}")
    if d.draft_model:
        parts.append(f"draft {d.draft_model}")
    parts.append(d.quant)
    return ", ".join(parts)


@cli.command("plan")
@click.option("--model", "model_name", required=True, help="Card name, model directory, config.json or hub id.")
@click.option("--gpu", required=True, help="Shipped profile name or a measured profile YAML.")
@click.option("--vram-gib", type=click.FloatRange(min=0, min_open=True), help="Memory budget (default: the GPU's).")
@click.option("--context", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--trials", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--objective", type=click.Choice(["speed", "pareto"]), default="speed", show_default=True)
@click.option("--methods", help="Comma-separated methods to search (default: all).")
@click.option("--skip-pattern", type=click.Choice(["middle", "any"]), default="middle", show_default=True,
              help="Skipped layers: a centred block, or arbitrary subsets.")
@click.option("--storage", help="Optuna storage URL shared by workers, e.g. sqlite:///study.db")
@click.option("--study", "study_name", help="Study name in --storage.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw every evaluated set-up (PNG).")
@click.option("--out", type=click.Path(dir_okay=False), default="plan.yaml", show_default=True)
def plan_command(model_name, gpu, vram_gib, context, trials, seed, objective, methods, skip_pattern, storage,
                 study_name, plot, out):
    """Search for the fastest lossless set-up under the memory budget and write the plan.

    \b
    Example:
      specplan plan --model llama-3.1-8b --gpu a10g --vram-gib 12 --out plan.yaml
    """
    from planner.hardware import load_profile
    from planner.models import load_model_spec
    from planner.plan import save_plan
    from planner.search import search

    method_list = _method_list(methods)
    spec, profile = load_model_spec(model_name), load_profile(gpu)
    result = search(spec, profile, vram_gib=vram_gib, context=context, trials=trials, seed=seed, objective=objective,
                    methods=method_list, skip_pattern=skip_pattern, storage=storage, study_name=study_name,
                    model_source=model_name)
    if plot:
        from planner.search.plot import plot_search

        plot_search(result, plot)
    save_plan(result.plan, out)
    _print_plan(result.plan)
    click.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))


def _method_list(methods):
    if not methods:
        return None
    from planner.errors import InputError, near_matches
    from planner.plan import METHODS

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    for method in chosen:
        if method not in METHODS:
            raise InputError(f"--methods: unknown method '{method}'{near_matches(method, METHODS)}")
    return chosen


def _print_plan(plan) -> None:
    rows = [["chosen", _describe(plan.decoding), f"{plan.prediction.tokens_per_s:.1f}", f"{plan.prediction.speedup:.2f}x",
             f"{plan.prediction.tokens_per_iteration:.2f}", f"{plan.prediction.vram_gib:.1f}"]]
    rows += [[f"alt {i + 1}", _describe(c.decoding), f"{c.prediction.tokens_per_s:.1f}", f"{c.prediction.speedup:.2f}x",
              f"{c.prediction.tokens_per_iteration:.2f}", f"{c.prediction.vram_gib:.1f}"] for i, c in enumerate(plan.alternatives)]
    budget = plan.constraints.vram_gib
    click.echo(f"{plan.model.name} on {plan.hardware.profile}" + (f", budget {budget:g} GiB" if budget else "")
               + f", context {plan.constraints.context}, {plan.search.trials} trials ({plan.prediction.basis})")
    click.echo(_table(rows, ["", "set-up", "tokens/s", "speedup", "tokens/iter", "VRAM GiB"]))


# ---------------------------------------------------------------- runtime (issue 4)


@cli.command("run")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan YAML to run.")
@click.option("--prompt", default=None, help="One prompt.")
@click.option("--prompts", "prompts_path", default=None, type=click.Path(dir_okay=False), help="File: one prompt per line, or JSONL with \"prompt\".")
@click.option("--model", default=None, help="Checkpoint directory or hub id (default: the plan's model.source).")
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0: greedy.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--baseline", is_flag=True, help="Also decode autoregressively; report speedup and identity.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--vram-gib", default=None, type=float, help="Memory budget; a plan that does not fit is refused.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no streamed text).")
def run_command(plan_path, prompt, prompts_path, model, max_new_tokens, temperature, seed, baseline, device, vram_gib, as_json):
    """Decode prompts with a plan, streaming the text, and report measured vs predicted speed.

    \b
    Example:
      specplan run --plan plan.yaml --prompt "The capital of France is" --baseline
    """
    from planner.errors import InputError
    from planner.plan import load_plan
    from planner.runtime import read_prompts, run_plan

    if (prompt is None) == (prompts_path is None):
        raise InputError("give exactly one of --prompt TEXT or --prompts FILE")
    prompts = [prompt] if prompt is not None else read_prompts(prompts_path)
    stream = None if as_json else (lambda text: click.echo(text, nl=False))
    report = run_plan(load_plan(plan_path), prompts, model=model, max_new_tokens=max_new_tokens, temperature=temperature,
                      seed=seed, baseline=baseline, device=device, vram_gib=vram_gib, stream=stream)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())


# ---------------------------------------------------------------- S3D + demo (issue 5)
# (commands: adapt, autotune)

# ---------------------------------------------------------------- deployment (issue 7)
# (commands: export)


@cli.command("export")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan YAML to export.")
@click.option("--to", "engine", required=True, help="Engine: vllm, sglang, trtllm, hf or llamacpp.")
@click.option("--engine-version", default=None, help="Engine version to write for (default: the whole known range).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="File to write (default: stdout).")
def export_command(plan_path, engine, engine_version, out):
    """Write a plan as the file a serving engine takes.

    \b
    Example:
      specplan export --plan plan.yaml --to vllm --out serve_vllm.sh
    """
    from planner.plan import load_plan
    from planner.plan.export import export_plan, write_export

    result = export_plan(load_plan(plan_path), engine, engine_version=engine_version, plan_label=plan_path)
    if out is None:
        click.echo(result.text, nl=False)
        return
    write_export(result, out)
    click.echo(f"wrote {out} ({result.version_range})")


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="specplan")


if __name__ == "__main__":
    main()
