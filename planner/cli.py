"""specplan's command line: each command parses, calls one library function, prints.

Errors from the library (SpecplanError) are caught once, in the command group, and
printed as one line on stderr with exit code 2 for bad input; the library names its
parameters in backquotes (`vram_gib`) and the line printed names the option (--vram-gib).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import sys
import warnings

import click

from planner.errors import SpecplanError
from planner.plan.schema import METHODS, QUANTIZATIONS
from planner.train.adapt import DRAFT_VOCAB_SIZE


# click >= 8.2 raises this for a bare group; 8.1 prints the help itself and exits 0.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Cli(click.Group):
    """Catches SpecplanError once: one line on stderr, its exit code, no traceback; and Ctrl-C:
    "interrupted", exit 130 (every file specplan writes is replaced whole or not at all)."""

    def main(self, args=None, prog_name=None, **kwargs):
        """click's main, with its usage errors as one line (click's own take four)."""
        kwargs.pop("standalone_mode", None)
        try:
            code = super().main(args=args, prog_name="specplan", standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # bare `specplan`: the help, as click prints it
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C while click parsed the options
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        from planner._signals import quiet_interrupts

        with quiet_interrupts() as interrupted, _notes():
            try:
                return super().invoke(ctx)
            except BaseException as exc:
                # A library may turn Ctrl-C into another error while it unwinds (Optuna 5 raises
                # UnboundLocalError from its trial loop): the flag says what happened.
                if interrupted or isinstance(exc, KeyboardInterrupt):
                    click.echo("interrupted", err=True)
                    ctx.exit(130)
                if not isinstance(exc, SpecplanError):
                    raise
                click.echo(f"error: {_flags(str(exc), self.get_command(ctx, ctx.invoked_subcommand or ''))}", err=True)
                ctx.exit(exc.exit_code)


@contextlib.contextmanager
def _notes():
    """The library's SpecplanWarnings as one "note:" line each on stderr, once per message;
    other warnings as Python shows them."""
    from planner.errors import SpecplanWarning

    with warnings.catch_warnings():
        warnings.simplefilter("default", SpecplanWarning)
        show = warnings.showwarning

        def note(message, category, *args, **kwargs):
            if issubclass(category, SpecplanWarning):
                click.echo(f"note: {message}", err=True)
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = note
        yield


_PARAMETER = re.compile(r"`([a-z_][a-z0-9_]*)`")
# Library parameters that a command's option holds under another name: run_plan's `model` is
# adapt's and autotune's model_path and predict's model_name; predict_detail's `draft_spec`
# is what predict's --draft-model names.
_OPTION_NAMES = {"model": ("model_path", "model_name"), "draft_spec": ("draft_model",), "tensor_parallel": ("tp",)}


def _flags(message: str, command: click.Command | None) -> str:
    """The library names its parameters (`vram_gib`); the command line says the option (--vram-gib)."""
    options = {p.name: p.opts[0] for p in command.params if isinstance(p, click.Option)} if command else {}

    def flag(match: re.Match) -> str:
        name = match.group(1)
        return next((options[n] for n in (name, *_OPTION_NAMES.get(name, ())) if n in options), name)

    return _PARAMETER.sub(flag, message)


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
@click.option("--quick", is_flag=True, help="Smaller problems: under 15 s on a GPU, a few seconds on a CPU.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the profile YAML here; its stem names the "
              "profile (default: print it, named after the device).")
def profile(device, quick, out):
    """Measure this machine's device into a profile YAML usable wherever a shipped name is.

    \b
    Example:
      specplan profile --device cpu --quick --out cpu.yaml
      specplan profile --device cuda:0 --out planner/profiles/gpus/measured/h100-sxm-measured.yaml
      specplan plan --model llama-3.2-1b --gpu cpu.yaml
    """
    from pathlib import Path

    import yaml
    from tqdm import tqdm

    from planner._files import ensure_writable
    from planner.hardware import profile_device
    from planner.hardware.measure import STEPS, resolve_device

    resolve_device(device)  # a missing GPU or a bad path is reported before any bar is drawn
    if out:
        ensure_writable(out)
    with tqdm(total=len(STEPS), desc="profiling", unit="step", file=sys.stderr, leave=False) as bar:
        def step(name):
            bar.update(STEPS.index(name) - bar.n)
            bar.set_postfix_str(name)

        measured = profile_device(device, quick=quick, name=Path(out).stem if out else None, progress=step)
        bar.update(bar.total - bar.n)
    if out:
        measured.save(out)
        click.echo(f"wrote {out} in {measured.measured['wall_time_s']:.0f} s: {measured.device_name}, "
                   f"{measured.measured['copy_bandwidth_gbps']:.4g} GB/s copy, "
                   f"{measured.measured['matmul_tflops']['bf16']:.4g} bf16 TFLOP/s, {measured.memory_gib:.1f} GiB", err=True)
    else:
        click.echo(yaml.safe_dump(measured.to_dict(), sort_keys=False, width=100), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profiles(as_json):
    """List the shipped GPU profiles and committed measured ones (names usable as --gpu).

    \b
    Example:
      specplan profiles
      specplan profiles --json
    """
    from planner.hardware import measured_profiles, shipped_profiles

    found = [("published", p) for p in shipped_profiles()] + [("measured", p) for p in measured_profiles()]
    if as_json:
        click.echo(json.dumps([dict(p.to_dict(), origin=origin) for origin, p in found], indent=2, default=str))
        return
    rows = [[p.name, p.device_name, f"{p.memory_gib:.1f}", f"{p.bandwidth_gbps:.0f}", f"{p.peak_tflops['bf16']:.0f}",
             f"{p.bandwidth_efficiency:.2f}", origin] for origin, p in found]
    click.echo(_table(rows, ["name", "device", "memory GiB", "bandwidth GB/s", "bf16 TFLOP/s", "bw efficiency", "figures"]))


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
        click.echo(json.dumps([dict(dataclasses.asdict(s), param_count=s.param_count, active_param_count=s.active_param_count,
                                     hf_id=load_card(s.name)["hf_id"]) for s in specs], indent=2))
        return
    rows = [[s.name, s.architecture, s.num_layers, s.hidden_size, f"{s.param_count / 1e9:.2f}",
             f"{s.weight_bytes('none') / 2**30:.1f}", f"{s.weight_bytes('int4') / 2**30:.1f}", s.tokenizer_family]
            for s in specs]
    click.echo(_table(rows, ["name", "arch", "layers", "hidden", "params B", "bf16 GiB", "int4 GiB", "tokenizer"]))


# ---------------------------------------------------------------- perf + search (issue 3)


class _Finite(click.FloatRange):
    """A FloatRange that also refuses nan and inf, which pass every comparison click makes."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _layer_list(ctx, param, text: str | None) -> tuple[int, ...] | None:
    """'10-17', '3,5,9' or '2-4,9' -> sorted layer indices. A range written backwards, a layer
    listed twice or an empty list is refused, never reinterpreted. The one parser of layer lists."""
    if text is None:
        return None
    layers = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise click.BadParameter(f"'{text}': expected A-B or a comma-separated list of layers like 3,5,9") from None
        if high < low:
            raise click.BadParameter(f"'{text}': the range {part.strip()} runs backwards (write {high}-{low})")
        layers += range(low, high + 1)
    twice = sorted({layer for layer in layers if layers.count(layer) > 1})
    if twice:
        raise click.BadParameter(f"'{text}': layer {twice[0]} is listed twice")
    return tuple(sorted(layers))


def _acceptance_figures(text: str):
    """'0.8' (per token) or '0.84,0.60,0.39,0.27' (per position, as vLLM logs it) -> float or tuple.

    Raises:
        click.BadParameter: not numbers, a figure outside 0-1, or per-position figures that rise.
    """
    from planner.errors import InputError
    from planner.search.request import check_acceptance

    shown = text if len(text) <= 60 else text[:57] + "..."  # a long list is not echoed whole
    try:
        figures = [float(part) for part in text.split(",")]
    except ValueError:
        bad = next(part.strip() for part in text.split(",") if not _is_float(part))
        raise click.BadParameter(f"'{bad[:30]}'" + (f" (in '{shown}')" if bad != text.strip() else "")
                                 + ": expected a number from 0 to 1, or one per drafted position like 0.84,0.60,0.39,0.27") from None
    bad = next((part.strip() for part, f in zip(text.split(","), figures) if not math.isfinite(f)), None)
    if bad is not None:
        raise click.BadParameter(f"'{bad}' is not a finite number" + (f" (in '{shown}')" if bad != text.strip() else ""))
    try:
        return check_acceptance(figures if "," in text else figures[0])
    except InputError as exc:
        raise click.BadParameter(str(exc).replace("`acceptance` ", "")) from None


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _acceptance(ctx, param, text: str | None):
    """predict's --acceptance: one figure per token, or per-position figures."""
    return None if text is None else _acceptance_figures(text)


def _plan_acceptance(ctx, param, texts: tuple[str, ...]):
    """plan's --acceptance, repeatable: [METHOD=]FIGURES; without METHOD, every method not named."""
    from planner.search.request import SPECULATIVE

    if not texts:
        return None
    bare, named = None, {}
    for text in texts:
        method, sep, figures = text.rpartition("=")
        if sep and method not in SPECULATIVE:
            raise click.BadParameter(f"'{text}': '{method}' is not a speculative method ({', '.join(SPECULATIVE)})")
        if not sep and bare is not None:
            raise click.BadParameter(f"'{text}': give one figure for every method, or METHOD=FIGURES for each")
        if sep:
            named[method] = _acceptance_figures(figures)
        else:
            bare = _acceptance_figures(figures)
    return {m: named.get(m, bare) for m in SPECULATIVE if m in named or bare is not None}


def _acceptance_text(alphas) -> str:
    """Acceptance per drafted position in vLLM's form (`--acceptance` takes it back)."""
    from planner.perf.speedup import per_position_acceptances

    return ",".join(f"{rate:.3f}" for rate in per_position_acceptances(alphas))


_SKIPPING = ("layer_skip", "s3d")
_HEADS = ("eagle", "eagle3", "mtp", "medusa")
_SPECULATIVE = ("layer_skip", "early_exit", "s3d", "draft_model", "prompt_lookup", *_HEADS)
_APPLIES_TO = {"--gamma": _SPECULATIVE, "--skip-layers": _SKIPPING, "--skip-ratio": _SKIPPING,
               "--exit-layer": ("early_exit",), "--draft-model": ("draft_model", *_HEADS)}


def _with_s3d_adapter(model_name: str, spec, decoding, acceptance, *, chosen: bool):
    """predict's s3d with the checkpoint's S3D adapter, found as `plan` finds it (beside the
    weights or shipped for that checkpoint): its skip set and gamma where the options chose
    none, its draft vocabulary, and its held-out acceptance unless `acceptance` is given. An
    adapter for another set-up than the options chose is named in a note on stderr and left
    out (the prediction is then for an untrained draft). Returns (decoding, acceptance)."""
    import dataclasses

    from planner.runtime.adapter import planned_s3d

    adapted = planned_s3d(model_name, (spec.num_layers, spec.hidden_size, spec.vocab_size))
    if adapted is None:
        return decoding, acceptance
    planned, alpha = adapted
    if chosen and (planned.skip_layers, planned.gamma) != (decoding.skip_layers, decoding.gamma):
        drafts = _describe(planned).removeprefix("s3d, ").removesuffix(", none")
        click.echo(f"note: this checkpoint's S3D adapter drafts {drafts}; the prediction is for an untrained draft of "
                   "the set-up asked for", err=True)
        return decoding, acceptance
    decoding = dataclasses.replace(decoding, skip_layers=planned.skip_layers, gamma=planned.gamma,
                                   draft_vocab_size=planned.draft_vocab_size)
    return decoding, acceptance if acceptance is not None else alpha


def _decoding_from_options(spec, method, gamma, skip_layers, skip_ratio, exit_layer, quant, draft_model):
    """The Decoding the options describe; an option that the method would ignore is refused."""
    from planner.errors import InputError
    from planner.perf import middle_block
    from planner.plan import Decoding

    given = {"--gamma": gamma, "--skip-layers": skip_layers, "--skip-ratio": skip_ratio, "--exit-layer": exit_layer,
             "--draft-model": draft_model}
    for flag, value in given.items():
        if value is not None and method not in _APPLIES_TO[flag]:
            raise InputError(f"{flag} does not apply to --method {method} (it applies to {', '.join(_APPLIES_TO[flag])})")
    if skip_layers is not None and skip_ratio is not None:
        raise InputError("give --skip-layers or --skip-ratio, not both")
    if method == "draft_model" and draft_model is None:
        raise InputError("--method draft_model needs --draft-model NAME")
    layers = spec.num_layers
    if skip_ratio is not None:
        count = round(skip_ratio * layers)
        if not 1 <= count <= layers - 2:  # a centred block keeps the first and the last layer
            raise InputError(f"--skip-ratio {skip_ratio:g} skips {count} of the {layers} layers of {spec.name}: "
                             f"a centred block skips 1 to {layers - 2} ({1 / layers:.3g} to {(layers - 2) / layers:.3g})")
        skip_layers = middle_block(layers, count)
    if method in _SKIPPING and skip_layers is None:
        skip_layers = middle_block(layers, layers // 2)
    for layer in skip_layers or ():
        if not 0 <= layer < layers:
            raise InputError(f"--skip-layers: layer {layer} is outside 0-{layers - 1} for {spec.name}")
    if skip_layers is not None and len(skip_layers) >= layers:
        raise InputError(f"--skip-layers/--skip-ratio: skips all {layers} layers of {spec.name}; the draft must keep one")
    if method == "early_exit" and exit_layer is None:
        exit_layer = 3 * layers // 4
    if exit_layer is not None and not 1 <= exit_layer < layers:
        raise InputError(f"--exit-layer {exit_layer} is outside 1-{layers - 1} for {spec.name}")
    return Decoding(method=method, gamma=0 if method == "autoregressive" else (gamma or 4),
                    skip_layers=skip_layers or (), exit_layer=exit_layer, quant=quant, draft_model=draft_model)


def _target_spec(model_name: str, context: int):
    """The model's spec, refused when --context is beyond the positions it was trained for."""
    from planner.errors import InputError
    from planner.models import load_model_spec

    spec = load_model_spec(model_name)
    if context > spec.max_position_embeddings:
        raise InputError(f"--context {context} is beyond the {spec.max_position_embeddings} positions of {spec.name}")
    return spec


def _method_list(ctx, param, text: str | None) -> tuple[str, ...] | None:
    """--methods layer_skip,s3d -> ('layer_skip', 's3d'), each a known method; None when not
    given. An empty list is refused, not read as every method. The one parser of --methods."""
    if text is None:
        return None
    from planner.errors import near_matches

    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    if not chosen:
        raise click.BadParameter(f"'{text}': name at least one method ({', '.join(METHODS)}), or leave --methods out")
    for method in chosen:
        if method not in METHODS:
            raise click.BadParameter(f"unknown method '{method}'{near_matches(method, METHODS)}")
    return chosen


_METHODS = click.Choice(list(METHODS))
_QUANTS = click.Choice(list(QUANTIZATIONS))


_CALIBRATION_OPTION = click.option(
    "--calibration", type=click.Path(dir_okay=False),
    help="A calibration `specplan tune` fitted (NAME.calibration.yaml): its profile (for --gpu) and acceptance priors.")


@cli.command()
@click.option("--model", "model_name", required=True, help="Card name, model directory, config.json, .gguf file or hub id.")
@click.option("--gpu", help="Shipped profile name or a measured profile YAML (or give --calibration).")
@_CALIBRATION_OPTION
@click.option("--method", required=True, type=_METHODS)
@click.option("--gamma", type=click.IntRange(1, 16), help="Drafted tokens per iteration (default 4).")
@click.option("--skip-layers", callback=_layer_list, help="Layers the draft skips: A-B or a list (default: the middle half).")
@click.option("--skip-ratio", type=_Finite(0, 1, min_open=True, max_open=True),
              help="Skip a centred block of this fraction of the layers.")
@click.option("--exit-layer", type=int, help="early_exit: the draft runs layers [0, E).")
@click.option("--quant", type=_QUANTS, default="none", show_default=True)
@click.option("--draft-model", help="draft_model: card name, directory or config.json of the draft.")
@click.option("--acceptance", callback=_acceptance, help="Measured acceptance replacing the prior: per token (0.8), or "
              "per drafted position as vLLM logs it (0.84,0.60,0.39,0.27: the share of drafts accepted up to each).")
@click.option("--workload", help="What the prompts ask for: chat (default), summarisation or rag; the acceptance "
              "priors take that workload's published figures (planner/profiles/priors.yaml).")
@click.option("--context", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True)
@click.option("--draft-quant", type=_QUANTS, help="draft_model: the draft's weight quantization (default none).")
@click.option("--engine", help="Cost the serving engine's own step, execution and memory policy: vllm, sglang, trtllm, "
                               "hf or llamacpp (default: specplan's runtime).")
@click.option("--execution", type=click.Choice(["graphs", "eager"]), help="CUDA graphs or eager (default: the engine's).")
@click.option("--vram-gib", type=_Finite(min=0, min_open=True),
              help="Memory budget per GPU (default: the GPU's, or the engine's share of it); a set-up that does not fit "
                   "is refused.")
@click.option("--topk", type=click.IntRange(1, 10), help="eagle/eagle3/mtp: a draft tree's children per expanded node "
              "(SGLang's --speculative-eagle-topk; default 1, a chain).")
@click.option("--num-draft-tokens", type=click.IntRange(2, 64), help="eagle/eagle3/mtp tree: tokens verified per iteration, "
              "the root included (SGLang's --speculative-num-draft-tokens; default gamma + 1).")
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tensor parallel: GPUs of --gpu each forward is split over; VRAM is then per GPU.")
@click.option("--draft-tp", type=click.IntRange(1, 64), help="The draft's or head's own tensor parallel: 1 or --tp "
              "(vLLM's draft_tensor_parallel_size; default --tp).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def predict(model_name, gpu, calibration, method, gamma, skip_layers, skip_ratio, exit_layer, quant, draft_model,
            acceptance, workload, context, batch_size, draft_quant, engine, execution, vram_gib, topk, num_draft_tokens, tp, draft_tp,
            as_json):
    """Predict one set-up: tokens/s, speedup, tokens per iteration, latencies, VRAM.

    \b
    Example:
      specplan predict --model llama-3.1-8b --gpu a10g --method s3d --gamma 4 --skip-ratio 0.4 --quant int4
      specplan predict --model llama-3.1-8b --gpu h100-sxm --method autoregressive --engine vllm --quant fp8
      specplan predict --model ./my-llama --calibration plan.calibration.yaml --method layer_skip --gamma 3
      specplan predict --model llama-3.3-70b --gpu h100-sxm --tp 8 --engine sglang --method eagle3 --gamma 8 \\
          --topk 8 --num-draft-tokens 64
    """
    import dataclasses

    from planner.errors import InputError
    from planner.models import load_model_spec
    from planner.perf import predict_detail
    from planner.perf.acceptance import workloads
    from planner.perf.memory import require_fit
    from planner.perf.speedup import per_position_acceptances
    from planner.plan.export.engines import engine_info
    from planner.search.engines import RUNTIME
    from planner.search.request import SearchRequest
    from planner.search.study import check_draft, check_tensor_parallel, split_hint

    spec = _target_spec(model_name, context)
    profile, priors = _profile_and_priors(gpu, calibration, spec)
    request = SearchRequest(context=context, vram_gib=vram_gib, batch_sizes=(batch_size,), engine=engine, execution=execution,
                            tensor_parallel=tp)
    budget = request.budget_gib(profile)
    decoding = _decoding_from_options(spec, method, gamma, skip_layers, skip_ratio, exit_layer, quant, draft_model)
    if method == "s3d":
        chosen = gamma is not None or skip_layers is not None or skip_ratio is not None
        decoding, acceptance = _with_s3d_adapter(model_name, spec, decoding, acceptance, chosen=chosen)
    decoding = _tree_and_parallel(decoding, topk, num_draft_tokens, tp, draft_tp)
    if draft_quant is not None:
        if method != "draft_model":
            raise InputError(f"--draft-quant does not apply to --method {method} (it applies to draft_model)")
        decoding = dataclasses.replace(decoding, draft_quant=draft_quant)
    if acceptance is not None and method == "autoregressive":
        raise InputError("--acceptance does not apply to --method autoregressive (nothing is drafted)")
    if acceptance is not None and workload is not None and workload != workloads()[0]:
        raise InputError(f"--workload {workload} picks the acceptance priors and --acceptance replaces them: give one")
    if engine is not None and engine != RUNTIME:
        why = engine_info(engine).cannot_run(decoding)  # as plan refuses what the engine cannot serve
        if why:
            raise InputError(why)
    check_tensor_parallel(spec, profile, tp, decoding.draft_tensor_parallel)
    draft_spec = None
    if draft_model and method == "draft_model":
        draft_spec = check_draft(spec, load_model_spec(draft_model))
    elif draft_model and _readable_config(draft_model):  # a head's own config; a hub id only names the head
        draft_spec = load_model_spec(draft_model)
    detail = predict_detail(spec, profile, decoding, context=context, batch_size=batch_size, acceptance=acceptance,
                            draft_spec=draft_spec, execution=request.execution_on(profile),
                            engine_memory=request.engine_memory, priors=priors, workload=workload,
                            basis="calibrated" if calibration else None)
    p = detail.prediction
    per_gpu = f" on each of {tp} GPUs" if tp > 1 else ""
    require_fit(p.vram_gib, budget, parts=detail.vram_bytes, hint=split_hint(spec, profile, p.vram_gib, tp),
                what=f"{spec.name} on {profile.name} ({_describe(decoding)}) at context {context} and batch {batch_size}"
                     f"{per_gpu}")
    if as_json:
        data = dict(vars(p), tokens_per_s_total=p.tokens_per_s * batch_size, model=spec.name, gpu=profile.name,
                    decoding={k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(decoding).items()},
                    acceptance_per_position=per_position_acceptances(detail.alphas))
        click.echo(json.dumps(data, indent=2))
        return
    rows = [
        ["tokens/s", f"{p.tokens_per_s:.1f}" + (f" per sequence, {p.tokens_per_s * batch_size:.1f} total" if batch_size > 1 else "")],
        ["speedup", f"{p.speedup:.2f}x over autoregressive ({quant})"],
        ["tokens per iteration", f"{p.tokens_per_iteration:.2f} ({p.basis})"],
        ["acceptance", f"{_acceptance_text(detail.alphas)} per position (vLLM's form; mean per token {p.acceptance:.2f})"
         if detail.alphas else "none drafted"],
        ["target forward", f"{p.target_latency_ms:.2f} ms"],
        ["draft per iteration", f"{p.draft_latency_ms:.2f} ms"],
        ["iteration", f"{p.iteration_ms:.2f} ms"],
        ["VRAM", f"{p.vram_gib:.2f} GiB of {budget:.1f}{per_gpu}" + (f" (budget; {profile.memory_gib:.1f} on the GPU)"
                                                                       if vram_gib else "")],
    ]
    served = "" if engine is None else f"; served by {engine} ({'CUDA graphs' if request.execution_on(profile).graphs else 'eager'})"
    click.echo(f"{spec.name} on {profile.name}: {_describe(decoding)}{served}")
    click.echo(_table(rows, ["figure", "predicted"]))


def _profile_and_priors(gpu, calibration, spec):
    """(profile, priors): --gpu's profile and the shipped priors, or a calibration's (checked
    against the model and, when --gpu is given too, its device)."""
    from planner.errors import InputError
    from planner.hardware import load_profile

    if not calibration:
        if not gpu:
            raise InputError("give --gpu NAME, or --calibration FILE (a calibration specplan tune fitted)")
        return load_profile(gpu), None
    from planner.tune.calibration import calibrated_model

    return calibrated_model(calibration, spec, load_profile(gpu) if gpu else None)
def _readable_config(name: str) -> bool:
    """Whether `name` is a local config or checkpoint directory (a head's own shape), not a hub id."""
    from pathlib import Path

    return Path(name).exists()


def _tree_and_parallel(decoding, topk, num_draft_tokens, tp, draft_tp):
    """`decoding` with a draft tree and the draft's tensor parallel, refused where they do not apply.

    Raises:
        InputError: --topk/--num-draft-tokens on a method with no tree, a tree SGLang cannot
            build, or --draft-tp other than 1 or --tp.
    """
    import dataclasses

    from planner.errors import InputError
    from planner.plan.schema import TREE_METHODS, tree_problem

    if (topk is not None or num_draft_tokens is not None) and decoding.method not in TREE_METHODS:
        raise InputError(f"--topk and --num-draft-tokens apply to {', '.join(TREE_METHODS)}, not --method {decoding.method}")
    if draft_tp is not None and decoding.method not in ("draft_model", *_HEADS):
        raise InputError(f"--draft-tp applies to a draft model or head, not --method {decoding.method}")
    if draft_tp is not None and draft_tp not in (1, tp):
        raise InputError(f"--draft-tp {draft_tp}: a draft runs on 1 GPU or on the target's {tp} (vLLM's rule)")
    topk = topk or 1
    if num_draft_tokens is None:
        num_draft_tokens = 0 if topk == 1 else min(64, 1 + topk + (decoding.gamma - 1) * topk * topk)
    decoding = dataclasses.replace(decoding, topk=topk, num_draft_tokens=num_draft_tokens,
                                   draft_tensor_parallel=draft_tp)
    why = tree_problem(decoding)
    if why:
        raise InputError(f"--num-draft-tokens: {why}")
    return decoding


def _describe(d) -> str:
    parts = [d.method]
    if d.gamma:
        parts.append(f"gamma {d.gamma}")
    if d.topk > 1:
        parts.append(f"tree topk {d.topk} tokens {d.num_draft_tokens}")
    if d.skip_layers:
        parts.append(f"skip {d.skip_layers[0]}-{d.skip_layers[-1]}" if list(d.skip_layers) == list(range(d.skip_layers[0], d.skip_layers[-1] + 1)) else f"skip {len(d.skip_layers)} layers")
    if d.exit_layer is not None:
        parts.append(f"exit {d.exit_layer}")
    if d.draft_model:
        parts.append(f"draft {d.draft_model}")
    if d.adapter:
        parts.append(f"adapter {d.adapter}")
    parts.append(d.quant)
    return ", ".join(parts)


@cli.command("plan")
@click.option("--model", "model_name", required=True, help="Card name, model directory, config.json, .gguf file or hub id.")
@click.option("--gpu", help="Shipped profile name or a measured profile YAML.")
@_CALIBRATION_OPTION
@click.option("--gpus", help="Fleet: comma-separated profiles, or all; needs --out-dir.")
@click.option("--batch-sizes", help="Plan a schedule over batch sizes: 1,2,4,8 or 1-256 (powers of two).")
@click.option("--engine", help="Plan for this engine (its methods, its own step cost and execution, its memory policy): "
              "vllm, sglang, trtllm, hf, llamacpp, or specplan (the built-in runtime, which also runs layer_skip, "
              "early_exit and s3d). Default: what some serving engine runs, and s3d with an adapter.")
@click.option("--execution", type=click.Choice(["graphs", "eager"]), help="CUDA graphs or eager (default: the engine's).")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Fleet: write DIR/<gpu>/plan.yaml, exports, summary.")
@click.option("--export", "exports", help="Fleet: engines to export each plan to, e.g. vllm,sglang,hf.")
@click.option("--usd-per-hour", help="Fleet: GPU prices for cost per million tokens, e.g. a10g=1.0,h100-sxm=4.5")
@click.option("--vram-gib", type=_Finite(min=0, min_open=True), help="Memory budget per GPU (default: the GPU's).")
@click.option("--context", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--trials", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--objective", type=click.Choice(["speed", "pareto"]), default="speed", show_default=True)
@click.option("--methods", callback=_method_list,
              help="Comma-separated methods to search (default: what --engine can deploy).")
@click.option("--quant", "quants", callback=lambda ctx, param, text: _quant_list(text),
              help="Target quantizations the plan may choose, e.g. none,int4 (default: none; a plan quantizes "
                   "unasked only when the model does not fit unquantized, and says so).")
@click.option("--acceptance", multiple=True, callback=_plan_acceptance,
              help="Measured acceptance replacing the priors, [METHOD=]FIGURES: per token (0.8) or per drafted position "
                   "as vLLM logs it (0.84,0.60,0.39,0.27; drafts no longer than that); repeatable, one per method, a bare "
                   "one for every method not named.")
@click.option("--workload", help="What the prompts ask for: chat (default), summarisation or rag; the acceptance "
              "priors take that workload's published figures (planner/profiles/priors.yaml).")
@click.option("--skip-pattern", type=click.Choice(["middle", "any"]), default="middle", show_default=True,
              help="Skipped layers: a centred block, or arbitrary subsets.")
@click.option("--storage", help="Optuna storage URL shared by workers, e.g. sqlite:///study.db")
@click.option("--study", "study_name", help="Study name in --storage.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw every evaluated set-up (PNG).")
@click.option("--adapter", type=click.Path(file_okay=False),
              help="s3d: the draft adapter (specplan adapt --out); default: one in the model's directory, or a shipped "
                   "one made for this checkpoint. s3d then takes its skipped layers and gamma.")
@click.option("--tp", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Tensor parallel: GPUs of --gpu each forward is split over; the budget is per GPU.")
@click.option("--head", "heads", multiple=True, callback=lambda ctx, param, texts: _heads(texts),
              help="A learned draft head, METHOD=NAME (eagle, eagle3, mtp, medusa; NAME a hub id or the head's config.json); "
                   "repeatable. Default: the public heads known for the model.")
@click.option("--out", type=click.Path(dir_okay=False), default="plan.yaml", show_default=True)
def plan_command(model_name, gpu, calibration, gpus, batch_sizes, engine, execution, out_dir, exports, usd_per_hour,
                 vram_gib, context, trials, seed, objective, methods, quants, acceptance, workload, skip_pattern, storage,
                 study_name, plot, adapter, tp, heads, out):
    """Search for the fastest lossless set-up under the memory budget and write the plan.

    \b
    Example:
      specplan plan --model llama-3.1-8b --gpu a10g --vram-gib 12 --out plan.yaml
      specplan plan --model llama-3.1-8b --gpu h100-sxm --batch-sizes 1-128 --engine vllm --plot sched.png
      specplan plan --model llama-3.1-8b --gpus all --batch-sizes 1-128 --out-dir deploy \\
          --export vllm,sglang,hf --usd-per-hour a10g=1.0,h100-sxm=4.5
      specplan plan --model SmolLM2-135M-Instruct.Q4_1.gguf --gpu cpu.yaml --methods s3d,autoregressive
      specplan plan --model ./my-llama --calibration plan.calibration.yaml --out calibrated.yaml
      specplan plan --model llama-3.1-70b --gpu h100-sxm --tp 8 --engine sglang \\
          --head eagle3=yuhuili/EAGLE3-LLaMA3.1-Instruct-70B
    """
    from planner._files import ensure_writable
    from planner.errors import InputError
    from planner.plan import save_plan
    from planner.runtime.adapter import find_adapter, planned_s3d
    from planner.search import search
    from planner.search.engines import RUNTIME
    from planner.search.plot import check_plot_path
    from planner.search.request import SearchRequest
    from planner.search.schedule import parse_batch_sizes, schedule_search

    if calibration and gpus:
        raise InputError("--calibration was fitted on one device: give it with --gpu (or alone), not --gpus")
    _check_plan_options(gpu or calibration, gpus, out_dir, exports, usd_per_hour, batch_sizes, objective, storage, plot,
                        skip_pattern, adapter, methods, engine)
    request = SearchRequest(context=context, vram_gib=vram_gib, batch_sizes=parse_batch_sizes("1" if batch_sizes is None else batch_sizes),
                            trials=trials, seed=seed, objective=objective, methods=methods, quants=quants,
                            acceptance=acceptance, workload=workload, skip_pattern=skip_pattern, engine=engine,
                            execution=execution, storage=storage, study_name=study_name, model_source=model_name,
                            tensor_parallel=tp, heads=heads)
    if gpus:
        return _plan_fleet(model_name, gpus, request, out_dir, exports, usd_per_hour)
    for path in (out, plot and check_plot_path(plot)):  # refused before the search, not after it
        if path:
            ensure_writable(path)
    spec = _target_spec(model_name, context)
    profile, priors = _profile_and_priors(gpu, calibration, spec)
    wants_s3d = batch_sizes is None and ("s3d" in request.methods if request.methods else engine in (None, RUNTIME))
    adapted = planned_s3d(model_name, (spec.num_layers, spec.hidden_size, spec.vocab_size), given=adapter) \
        if wants_s3d else None
    measured = {"s3d": adapted[1]} if adapted and adapted[1] is not None else {}  # the adapter's held-out figure
    request = request.replace(s3d=adapted and adapted[0], acceptance=measured | request.acceptance_by_method, priors=priors)
    if batch_sizes is not None:
        result = schedule_search(spec, profile, request)
    else:
        result = search(spec, profile, request)
    if plot:
        from planner.search.plot import plot_schedule, plot_search

        (plot_schedule if batch_sizes is not None else plot_search)(result, plot)
    plan = result.plan
    if adapted and adapter is None and "s3d" in {d.method for d in [plan.decoding] + [c.decoding for c in plan.alternatives]}:
        found = find_adapter(model_name, (spec.num_layers, spec.hidden_size, spec.vocab_size))  # memoised fingerprint
        vocab = found.info.draft_vocab_size
        plan = plan.replace(notes=plan.notes + (f"s3d drafts with the adapter found for this checkpoint, {found.path}"
                                                + (f" (draft vocabulary {vocab} tokens)" if vocab else "") + "; run finds it again",))
    save_plan(plan, out)
    _print_plan(plan, result.budget_gib)
    if plan.schedule:
        _print_schedule(plan)
    click.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))


def _heads(texts) -> dict[str, str] | None:
    """plan's --head METHOD=NAME, repeatable -> {method: name}."""
    heads = {}
    for text in texts:
        method, sep, name = text.partition("=")
        if not sep or method not in _HEADS or not name:
            raise click.BadParameter(f"'{text}': expected METHOD=NAME with METHOD one of {', '.join(_HEADS)}")
        heads[method] = name
    return heads or None


def _check_plan_options(gpu, gpus, out_dir, exports, usd_per_hour, batch_sizes, objective, storage, plot, skip_pattern,
                        adapter, methods, engine):
    from planner.errors import InputError

    if adapter and engine not in (None, "specplan"):
        raise InputError(f"--adapter plans s3d, which only the built-in runtime runs: leave out --engine {engine}, or "
                         "give --engine specplan")
    if adapter and (gpus or batch_sizes):
        raise InputError("--adapter plans s3d for one GPU at one batch size: leave out --gpus and --batch-sizes")
    if adapter and methods and "s3d" not in methods:
        raise InputError("--adapter is s3d's draft: add s3d to --methods, or leave out --adapter")
    if bool(gpu) == bool(gpus):
        raise InputError("give --gpu NAME for one plan, or --gpus LIST --out-dir DIR for a fleet")
    fleet_only = {"--out-dir": out_dir, "--export": exports, "--usd-per-hour": usd_per_hour}
    for flag, value in fleet_only.items():
        if value and not gpus:
            raise InputError(f"{flag} plans a fleet: use it with --gpus")
    if gpus and not out_dir:
        raise InputError("--gpus writes one plan per GPU: give --out-dir DIR")
    if gpus and plot:
        raise InputError("--plot draws one GPU's plan; a fleet draws DIR/summary.png")
    if batch_sizes and (objective != "speed" or storage):
        raise InputError("--batch-sizes plans for speed in one process: leave out --objective pareto and --storage")
    if gpus and (objective != "speed" or storage or skip_pattern != "middle"):
        raise InputError("--gpus plans each GPU for speed in one process, skipping a centred block: leave out "
                         "--objective pareto, --storage and --skip-pattern any")


def _plan_fleet(model_name, gpus, request, out_dir, exports, usd_per_hour):
    from planner.search.fleet import SUMMARY_HEADERS, parse_gpus, parse_prices, plan_fleet, summary_rows

    summary = plan_fleet(_target_spec(model_name, request.context), parse_gpus(gpus), request, out_dir=out_dir,
                         exports=[e.strip() for e in (exports or "").split(",") if e.strip()],
                         usd_per_hour=parse_prices(usd_per_hour))
    click.echo(_table(summary_rows(summary.rows), SUMMARY_HEADERS))
    click.echo(f"wrote {len(summary.files)} files in {out_dir} (summary.md, summary.png, one directory per GPU)")


def _print_schedule(plan) -> None:
    rows = [[f"{e.batch_min}-{e.batch_max}", e.method, e.gamma, f"{e.tokens_per_s_per_sequence:.1f}",
             f"{e.tokens_per_s_total:.0f}"] for e in plan.schedule]
    click.echo("schedule (gamma 0: don't speculate):")
    click.echo(_table(rows, ["batch sizes", "method", "gamma", "tokens/s per sequence", "tokens/s total"]))


def _quant_list(text: str | None) -> tuple[str, ...] | None:
    """--quant none,int4 -> ('none', 'int4'); each one a known quantization."""
    if text is None:
        return None
    chosen = tuple(q.strip() for q in text.split(",") if q.strip())
    for quant in chosen or (text,):
        if quant not in QUANTIZATIONS:
            raise click.BadParameter(f"'{quant}' is not one of {', '.join(QUANTIZATIONS)}")
    return chosen


def _print_plan(plan, budget_gib: float) -> None:
    rows = [["chosen", _describe(plan.decoding), f"{plan.prediction.tokens_per_s:.1f}", f"{plan.prediction.speedup:.2f}x",
             f"{plan.prediction.tokens_per_iteration:.2f}", f"{plan.prediction.vram_gib:.1f}"]]
    rows += [[f"alt {i + 1}", _describe(c.decoding), f"{c.prediction.tokens_per_s:.1f}", f"{c.prediction.speedup:.2f}x",
              f"{c.prediction.tokens_per_iteration:.2f}", f"{c.prediction.vram_gib:.1f}"] for i, c in enumerate(plan.alternatives)]
    c, settings = plan.constraints, plan.search
    served = f", served by {settings.engine} ({settings.execution})" if settings.engine else ""
    click.echo(f"{plan.model.name} on {plan.hardware.profile}"
               + (f", budget {round(budget_gib, 1):g} GiB" if c.vram_gib or c.engine else "")
               + f", context {c.context}{served}, {settings.trials} trials ({plan.prediction.basis})")
    click.echo(_table(rows, ["", "set-up", "tokens/s", "speedup", "tokens/iter", "VRAM GiB"]))
    for note in plan.notes:
        click.echo(f"note: {note}")


# ---------------------------------------------------------------- runtime (issue 4)

_CHAT_OPTION = click.option(
    "--chat/--no-chat", default=None,
    help="Give each prompt as a user turn of the tokenizer's chat template, or as raw text. Default: the template when "
         "the tokenizer has one, since an instruct model is served through its template and acceptance measured on raw "
         "text is not what it serves.")


_DTYPES = click.Choice(["auto", "bf16", "fp16", "fp32"])
_DTYPE_HELP = "Weights' dtype; auto: bf16 on GPUs and on CPUs whose measured bf16 matmul is fast, else fp32."


@cli.command("run")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan YAML to run.")
@click.option("--prompt", default=None, help="One prompt.")
@click.option("--prompts", "prompts_path", default=None, type=click.Path(dir_okay=False), help="File: one prompt per line, or JSONL with \"prompt\".")
@click.option("--model", default=None, help="Checkpoint directory, .gguf file or hub id (default: the plan's model.source; "
              "a plan made from a model card needs one).")
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=_Finite(min=0), help="0: greedy.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--baseline", is_flag=True, help="Also decode autoregressively; report speedup and identity.")
@click.option("--rounds", type=click.IntRange(1), default=1, show_default=True,
              help="With --baseline: rounds over every prompt, interleaved; reports the median speedup and its range.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--vram-gib", default=None, type=_Finite(min=0, min_open=True),
              help="Memory budget; a plan that does not fit is refused.")
@click.option("--dtype", type=_DTYPES, default="auto", show_default=True, help=_DTYPE_HELP)
@_CHAT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no streamed text).")
def run_command(plan_path, prompt, prompts_path, model, max_new_tokens, temperature, seed, baseline, rounds, device, vram_gib,
                dtype, chat, as_json):
    """Decode prompts with a plan, streaming the text, and report measured vs predicted speed.

    \b
    Example:
      specplan run --plan plan.yaml --prompt "The capital of France is" --baseline
      specplan run --plan plan.yaml --prompts prompts.txt --baseline --rounds 5
      specplan run --plan plan.yaml --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "What is 2+2?"
    """
    from planner.errors import InputError
    from planner.plan import load_plan
    from planner.runtime import read_prompts, run_plan

    if (prompt is None) == (prompts_path is None):
        raise InputError("give exactly one of --prompt TEXT or --prompts FILE")
    prompts = [prompt] if prompt is not None else read_prompts(prompts_path)
    stream = None if as_json else (lambda text: click.echo(text, nl=False))
    report = run_plan(load_plan(plan_path), prompts, model=model, max_new_tokens=max_new_tokens, temperature=temperature,
                      seed=seed, baseline=baseline, rounds=rounds, device=device, vram_gib=vram_gib, dtype=dtype, chat=chat, stream=stream,
                      warn=lambda line: click.echo(f"warning: {line}", err=True))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())


# ---------------------------------------------------------------- S3D + demo (issue 5)
# (commands: adapt, autotune)


@cli.command()
@click.option("--model", "model_path", required=True, help="Hugging Face causal LM: local directory, .gguf file or hub id.")
@click.option("--prompts", "prompts_path", type=click.Path(dir_okay=False),
              help="Distillation prompts, one per line or JSONL with \"prompt\" (default: the shipped chat and code set).")
@click.option("--skip-layers", required=True, callback=_layer_list,
              help="Layers the draft skips: A-B (inclusive) or a list 3,4,5.")
@click.option("--gamma", type=int, required=True, help="Tokens drafted per forward, 1-16 (mask tokens = gamma - 1).")
@click.option("--rank", type=click.IntRange(1), default=8, show_default=True, help="LoRA rank (alpha = 2 x rank).")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True)
@click.option("--lr", type=_Finite(min=0, min_open=True), default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True, help="Draft blocks per step.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=128, show_default=True,
              help="Length of each prompt's greedy continuation (the training data).")
@click.option("--draft-vocab", type=click.IntRange(0), default=DRAFT_VOCAB_SIZE, show_default=True,
              help="Tokens the draft's LM head scores: the most frequent in the training data (0, or at least the "
                   "vocabulary's size: the whole vocabulary).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--seed", type=int, default=0, show_default=True)
@_CHAT_OPTION
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the adapter.")
def adapt(model_path, prompts_path, skip_layers, gamma, rank, steps, lr, batch, max_new_tokens, draft_vocab, resume, device,
          seed, chat, out):
    """Train an S3D draft adapter for a checkpoint, which stays untouched: LoRA on the kept
    layers and the mask token's embedding, trained on the checkpoint's own greedy
    continuations of the prompts to draft the next gamma tokens in one forward. Decoding
    with it (specplan plan/run --methods s3d) is token-identical to the checkpoint's.

    \b
    Example:
      specplan adapt --model ./my-llama --skip-layers 10-15 --gamma 3 --out ./my-llama-s3d
      specplan plan --model ./my-llama --gpu cpu.yaml --methods s3d --adapter ./my-llama-s3d
    """
    from pathlib import Path

    from planner.runtime import read_prompts
    from planner.train.adapt import adapt as run_adapt

    prompts = read_prompts(prompts_path) if prompts_path else None
    r = run_adapt(model_path, prompts, skip_layers=skip_layers, gamma=gamma, out=out, rank=rank, steps=steps, lr=lr,
                  batch=batch, max_new_tokens=max_new_tokens, resume=resume, device=device, seed=seed, chat=chat,
                  prompts_name=prompts_path and Path(prompts_path).name, draft_vocab=draft_vocab,
                  log=lambda m: click.echo(m, err=True))
    click.echo(f"held-out greedy draft: {r.tokens_per_iteration_before:.2f} -> {r.tokens_per_iteration_after:.2f} tokens per "
               f"iteration (estimate), draft loss {r.draft_loss_before:.3f} -> {r.draft_loss_after:.3f}")
    vocab = "the whole vocabulary" if r.draft_vocab_size is None else f"draft vocabulary {r.draft_vocab_size}"
    click.echo(f"wrote {r.out} (adapter.safetensors {r.adapter_mb:.1f} MB, s3d.json: skip {list(r.skip_layers)}, "
               f"gamma {r.gamma}, rank {r.rank}, {vocab}) in {r.seconds:.0f} s")


@cli.command()
@click.option("--model", "model_path", help="Model directory or .gguf file (default: the bundled demo model).")
@click.option("--prompts", "prompts_path", type=click.Path(dir_okay=False),
              help="Prompts file, one per line or JSONL (default: the demo prompts).")
@click.option("--draft-model", help="Draft model directory for method draft_model (same tokenizer; default: "
              "the demo's draft with the demo model, none otherwise).")
@click.option("--num-prompts", type=click.IntRange(1), default=3, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True)
@click.option("--trials", type=click.IntRange(1), default=8, show_default=True,
              help="Measured trials of the small study (the analytical seeds included).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda")
@click.option("--dtype", type=_DTYPES, default="auto", show_default=True, help=_DTYPE_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quant", "quants", default="none", show_default=True, callback=lambda ctx, param, text: _quant_list(text),
              help="Target quantizations the plan may choose, e.g. none,int4 (quantized weights change the outputs).")
@_CHAT_OPTION
@click.option("--out", type=click.Path(dir_okay=False), default="plan.yaml", show_default=True)
def autotune(model_path, prompts_path, draft_model, num_prompts, max_new_tokens, trials, device, dtype, seed, quants, chat,
             out):
    """Profile this machine, plan for a model analytically, tune the plan in a small measured
    study (specplan tune: each trial a set-up timed against autoregressive decoding in
    interleaved rounds; the performance model fitted to the trials), run the plan on held-out
    prompts and print predicted against measured tokens/s.

    \b
    Examples:
      specplan autotune                     (the bundled demo model)
      specplan autotune --model ./my-llama --prompts prompts.txt
      specplan autotune --model SmolLM2-135M-Instruct.Q4_1.gguf --device cpu
    """
    from planner.autotune import SUMMARY_HEADERS, AutotuneRequest, autotune as run_autotune, summary_rows
    from planner.tune.report import HELD_OUT_HEADERS, TRIAL_HEADERS, calibration_summary, held_out_rows, trial_rows

    request = AutotuneRequest(model=model_path, prompts=prompts_path, draft_model=draft_model,
                              max_new_tokens=max_new_tokens, num_prompts=num_prompts, trials=trials, seed=seed,
                              device=device, dtype=dtype, chat=chat, out=out, quants=quants)
    result = run_autotune(request, log=lambda message: click.echo(message, err=True))
    click.echo(_table(trial_rows(result.tuned), TRIAL_HEADERS))
    if held_out_rows(result.tuned):
        click.echo()
        click.echo(_table(held_out_rows(result.tuned), HELD_OUT_HEADERS))
    click.echo(calibration_summary(result.tuned))
    click.echo()
    click.echo(_table(summary_rows(result), SUMMARY_HEADERS))
    click.echo(f"outputs identical to autoregressive: {'yes' if result.report.identical else 'NO'}")
    click.echo(f"wrote {', '.join(str(f) for f in result.tuned.files)} (prediction basis: {result.plan.prediction.basis})")

# ---------------------------------------------------------------- measured tuning (issue 15)


def _held_out(ctx, param, text: str):
    """--held-out: a fraction (0 up to 1) or a prompts file."""
    try:
        return float(text)
    except ValueError:
        return text


@cli.command()
@click.option("--model", "model_path", help="Model directory or .gguf file (default: the bundled demo model).")
@click.option("--prompts", "prompts_path", type=click.Path(dir_okay=False),
              help="Prompts: one per line, or JSONL with \"prompt\" and an optional \"group\" (default: the demo's).")
@click.option("--held-out", default="0.5", show_default=True, callback=_held_out,
              help="Fraction of each group's prompts held out for the final check (the last ones), or a prompts file.")
@click.option("--draft-model", "draft_models", multiple=True,
              help="Draft model directory for draft_model (same tokenizer); repeatable. Default: the demo's draft with the "
                   "demo model.")
@click.option("--quant", "quants", multiple=True, type=_QUANTS, help="A target quantization the study may choose; "
              "repeatable (default: none only, the model as given).")
@click.option("--methods", callback=_method_list,
              help="Comma-separated methods to search (default: every one the checkpoint can run).")
@click.option("--trials", type=click.IntRange(1), default=20, show_default=True,
              help="The study's total: a second run on the same study continues to it.")
@click.option("--storage", help="Optuna storage: sqlite:///FILE.db, a journal FILE.log or postgresql://... shared by "
              "workers (default: sqlite next to --out).")
@click.option("--study", "study_name", help="Study name (default: tune-<fingerprint>).")
@click.option("--objective", type=click.Choice(["mean", "worst-group"]), default="mean", show_default=True,
              help="A trial's value: the median paired speedup over all prompts, or over the slowest group's.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=32, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Interleaved rounds per trial.")
@click.option("--skip-pattern", type=click.Choice(["middle", "any"]), default="middle", show_default=True,
              help="Skipped layers: a centred block, or arbitrary subsets.")
@click.option("--profile", "profile_name", help="Hardware profile for the analytical model (default: measure this "
              "device, ~20 s on a CPU).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda")
@click.option("--dtype", type=_DTYPES, default="auto", show_default=True, help=_DTYPE_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@_CHAT_OPTION
@click.option("--out", type=click.Path(dir_okay=False), default="plan.yaml", show_default=True)
def tune(model_path, prompts_path, held_out, draft_models, quants, methods, trials, storage, study_name, objective,
         max_new_tokens, rounds, skip_pattern, profile_name, device, dtype, seed, chat, out):
    """Tune speculative decoding by measurement: an Optuna study whose trials decode set-ups
    on your prompts against autoregressive decoding in the same rounds; writes the best as
    the plan, checked on held-out prompts, with reports beside it (NAME.tune.md,
    NAME.acceptance.png, NAME.trials.png).

    \b
    Examples:
      specplan tune --trials 12                        (the bundled demo model)
      specplan tune --model SmolLM2-135M-Instruct.Q4_1.gguf --prompts bench/prompts/chat_code.jsonl \\
          --objective worst-group --trials 12 --device cpu
      specplan tune --model ./my-llama --prompts p.jsonl --storage postgresql://user@db/studies --study llama
    """
    from tqdm import tqdm

    from planner.autotune import describe
    from planner.tune import TuneRequest, tune as run_tune
    from planner.tune.report import (
        ACCEPTANCE_HEADERS, GROUP_HEADERS, HELD_OUT_HEADERS, TRIAL_HEADERS, acceptance_rows, calibration_summary,
        group_rows, held_out_rows, summary, trial_rows,
    )

    request = TuneRequest(model=model_path, prompts=prompts_path, held_out=held_out, draft_models=tuple(draft_models),
                          quants=tuple(quants) or ("none",), methods=methods,
                          trials=trials, storage=storage, study=study_name, objective=objective,
                          max_new_tokens=max_new_tokens, rounds=rounds, skip_pattern=skip_pattern, device=device,
                          dtype=dtype, chat=chat, profile=profile_name, seed=seed, out=out)
    bar = None

    def on_trial(finished, total, best):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=finished, desc="tuning", unit="trial", file=sys.stderr, leave=False)
        bar.update(finished - bar.n)
        bar.set_postfix_str(f"best {best.value:.2f}x {describe(best.decoding)}" if best else "best -")

    def log(message):
        if bar is None:
            click.echo(message, err=True)
        else:
            bar.write(message, file=sys.stderr)

    try:
        result = run_tune(request, log=log, on_trial=on_trial)
    finally:
        if bar is not None:
            bar.close()
    click.echo(_table(trial_rows(result), TRIAL_HEADERS))
    click.echo()
    click.echo(_table(group_rows(result), GROUP_HEADERS))
    if acceptance_rows(result):
        click.echo()
        click.echo(_table(acceptance_rows(result), ACCEPTANCE_HEADERS))
    if held_out_rows(result):
        click.echo()
        click.echo(_table(held_out_rows(result), HELD_OUT_HEADERS))
    click.echo()
    click.echo(summary(result))
    click.echo(calibration_summary(result))
    click.echo(f"wrote {', '.join(str(f) for f in result.files)} (study {result.study} in {result.storage})")


# ---------------------------------------------------------------- deployment (issue 7)
# (commands: export)


@cli.command("export")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan YAML to export.")
@click.option("--to", "engine", required=True, help="Engine: vllm, sglang, trtllm, hf or llamacpp.")
@click.option("--engine-version", default=None, help="Engine version to write for (default: the whole known range).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@click.option("--compose", is_flag=True, help="Also write NAME.compose.yaml beside --out: the script in the engine's image.")
def export_command(plan_path, engine, engine_version, out, compose):
    """Write a plan as a complete launch for a serving engine.

    \b
    Example:
      specplan export --plan plan.yaml --to vllm --out serve_vllm.sh --compose
    """
    from planner.plan import load_plan
    from planner._files import ensure_writable
    from planner.plan.export import compose_path, export_plan, write_compose, write_export

    if compose and out is None:
        raise click.UsageError("--compose needs --out (the compose file runs the script written there)")
    result = export_plan(load_plan(plan_path), engine, engine_version=engine_version, plan_label=plan_path)
    if out is None:
        click.echo(result.text, nl=False)
        return
    if compose and result.image is not None:
        ensure_writable(compose_path(out))  # both files or neither: refuse before the script is replaced
    write_export(result, out)
    click.echo(f"wrote {out} ({result.version_range})")
    written = write_compose(result, out) if compose else None
    if written is not None:
        click.echo(f"wrote {written} ({result.image})")
    elif compose:
        click.echo(f"no compose file: {engine} publishes no container image")


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="specplan")


if __name__ == "__main__":
    main()
