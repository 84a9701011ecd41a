"""specplan's command line: each command parses, calls one library function, prints.

Errors from the library (SpecplanError) are caught once, in `main`, and printed as one
line on stderr with exit code 2 for bad input.
"""

from __future__ import annotations

import json
import sys

import click

from planner.errors import SpecplanError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="specplan")
def cli():
    """specplan: choose, predict and run the fastest lossless speculative decoding set-up
    for a model on a GPU under a memory budget."""


# ---------------------------------------------------------------- hardware (issue 2)
# (commands: profile, profiles)

# ---------------------------------------------------------------- models (issue 2)
# (commands: models)

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
    try:
        cli.main(args=argv, prog_name="specplan", standalone_mode=False)
    except SpecplanError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
