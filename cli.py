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
# (commands: predict, plan)

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
