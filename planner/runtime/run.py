"""run_plan: check a plan against its checkpoint and budget, load it, decode, measure.

Every check that can refuse a run (model mismatch, s3d without an adapter for the checkpoint, prompt too long,
missing GPU or quantization backend, memory budget) happens before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from planner._files import read_utf8
from planner.errors import InputError, PlanError

WARMUP_TOKENS = 8  # enough iterations to compile/capture every fixed-shape step once


@dataclass(frozen=True)
class RunReport:
    method: str
    device: str  # the torch device: cpu, cuda:0
    device_name: str  # what it is: the GPU's or the CPU's name, as a profile of it records
    plan_device_name: str  # the device the plan's predictions are for (plan.hardware.device_name)
    compiled: bool  # CUDA graphs via torch.compile (GPU); eager on CPU
    dtype: str  # what the weights decoded in: bf16, fp16 or fp32
    chat: bool  # prompts went in as a user turn of the tokenizer's chat template (else as raw text)
    texts: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    tokens_per_s: float  # generated tokens after the first / decode time
    acceptance: float | None  # accepted / drafted tokens; None for autoregressive
    tokens_per_iteration: float
    iteration_ms: float
    predicted: dict  # the plan's prediction, beside the measured figures
    vram_estimate_gib: float
    peak_memory_gib: float | None  # CUDA only
    baseline_tokens_per_s: float | None = None
    speedup: float | None = None  # median over rounds of the plan's tokens/s over the same round's autoregressive
    identical: bool | None = None  # outputs token-identical to the baseline in every round (expected when greedy)
    speedup_rounds: tuple[float, ...] | None = None  # each round's speedup, in order
    speedup_range: tuple[float, float] | None = None  # the slowest and the fastest round's

    @property
    def hardware_mismatch(self) -> str | None:
        """See hardware_mismatch: one line when the plan was made for another device, else None."""
        return hardware_mismatch(self.plan_device_name, self.device, self.device_name)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), predictions_apply=self.hardware_mismatch is None)

    def summary(self) -> str:
        """Measured figures beside the plan's predicted ones, one line each."""
        p = self.predicted
        graphs = f"{'CUDA graphs' if self.compiled else 'eager'}, {self.dtype}"
        prompts = "chat template" if self.chat else "raw prompts"
        acceptance = "-" if self.acceptance is None else f"{self.acceptance:.3f}"
        predicted_acceptance = p.get("accepted_per_drafted")
        predicted_acceptance = "-" if predicted_acceptance is None else f"{predicted_acceptance:.3f}"
        lines = [
            f"method {self.method} on {self.device} ({graphs}, {prompts})   measured   predicted",
            f"  tokens/s              {self.tokens_per_s:10.1f}  {p['tokens_per_s']:10.1f}",
            f"  accepted / drafted    {acceptance:>10}  {predicted_acceptance:>10}",
            f"  tokens/iteration      {self.tokens_per_iteration:10.2f}  {p['tokens_per_iteration']:10.2f}",
            f"  iteration ms          {self.iteration_ms:10.3f}  {p['iteration_ms']:10.3f}",
        ]
        peak = "-" if self.peak_memory_gib is None else f"{self.peak_memory_gib:.2f}"
        lines.append(f"  memory GiB            {peak:>10}  {p['vram_gib']:10.2f}")
        if self.hardware_mismatch:
            lines.append(f"  predicted for {self.plan_device_name}, not for this {self.device_name}: the predictions do not apply")
        if self.baseline_tokens_per_s is not None:
            same = "identical" if self.identical else "DIFFERENT"
            lines.append(f"  autoregressive tokens/s {self.baseline_tokens_per_s:8.1f}   speedup {self.speedup:.2f}x   outputs {same}")
        if self.speedup_rounds and len(self.speedup_rounds) > 1:
            low, high = self.speedup_range
            lines.append(f"  speedup over {len(self.speedup_rounds)} rounds: median {self.speedup:.2f}x, range {low:.2f}-{high:.2f}x")
        return "\n".join(lines)


def _predicted(plan) -> dict:
    """The plan's prediction as a mapping, plus `accepted_per_drafted`: the share of drafted
    tokens it expects accepted, (tokens per iteration - 1) / gamma, the form the run measures
    (the prediction's `acceptance` is a per-token probability: not the same figure)."""
    predicted = dataclasses.asdict(plan.prediction)
    gamma = plan.decoding.gamma
    predicted["accepted_per_drafted"] = (plan.prediction.tokens_per_iteration - 1) / gamma if gamma else None
    return predicted


def hardware_mismatch(plan_device_name: str, device: str, device_name: str) -> str | None:
    """One line when a plan made for the device named `plan_device_name` runs on `device`
    (cpu, cuda:0) named `device_name`: a plan's predictions are for its device. None when the
    names match (any case)."""
    if plan_device_name.strip().lower() == device_name.strip().lower():
        return None
    return f"plan made for {plan_device_name}; running on {device} ({device_name}): predictions do not apply"


@dataclass(frozen=True)
class _Totals:
    tokens_per_s: float
    acceptance: float | None
    tokens_per_iteration: float
    iteration_ms: float


UNGROUPED = "all"  # the group of a prompt that names none


def read_prompts(path) -> list[str]:
    """The prompts of the UTF-8 text file at `path`: one per line, or JSONL with a string
    "prompt" field per line; blank lines are skipped.

    Raises NotFoundError for a missing file; InputError for an unreadable or non-UTF-8
    file, a JSON line without a string "prompt", or a file without prompts."""
    return [prompt for prompt, _ in read_grouped_prompts(path)]


def read_grouped_prompts(path) -> list[tuple[str, str]]:
    """(prompt, group) for each prompt of `path` (as read_prompts reads it); a JSON line may
    name its group in a string "group" field (chat, code, math...), and a prompt that names
    none is in group UNGROUPED.

    Raises what read_prompts raises, and InputError for a "group" that is not a non-empty string."""
    text = read_utf8(path)
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            prompts.append((line, UNGROUPED))
            continue
        try:
            record = json.loads(line)
            prompt = record["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}: line {number}: expected a JSON object with a \"prompt\" field") from None
        if not isinstance(prompt, str):
            raise InputError(f"{path}: line {number}: \"prompt\" must be a string, got {type(prompt).__name__} {prompt!r:.40}")
        group = record.get("group", UNGROUPED)
        if not isinstance(group, str) or not group.strip():
            raise InputError(f"{path}: line {number}: \"group\" must be a non-empty string, got {group!r:.40}")
        prompts.append((prompt, group))
    if not prompts:
        raise InputError(f"{path}: no prompts in the file")
    return prompts


def check_plan_matches(plan, hf_config) -> None:
    """PlanError when the plan was made for a different model than the checkpoint."""
    layers, vocab = hf_config.num_hidden_layers, hf_config.vocab_size
    if plan.model.num_layers != layers:
        raise PlanError(f"model.num_layers: the plan says {plan.model.num_layers} but the checkpoint has {layers}")
    if plan.model.vocab_size != vocab:
        raise PlanError(f"model.vocab_size: the plan says {plan.model.vocab_size} but the checkpoint has {vocab}")
    if plan.model.hidden_size and plan.model.hidden_size != hf_config.hidden_size:
        raise PlanError(f"model.hidden_size: the plan says {plan.model.hidden_size} but the checkpoint has {hf_config.hidden_size}")
    for i, layer in enumerate(plan.decoding.skip_layers):
        if not 0 <= layer < layers:
            raise PlanError(f"decoding.skip_layers[{i}]: layer {layer} is beyond the checkpoint's {layers} layers")
    exit_layer = plan.decoding.exit_layer
    if plan.decoding.method == "early_exit" and not (exit_layer and 1 <= exit_layer < layers):
        raise PlanError(f"decoding.exit_layer: {exit_layer} is outside 1-{layers - 1} for this checkpoint")


def s3d_adapter(decoding, source: str, hf_config):
    """The adapter an s3d `decoding` of the checkpoint `source` drafts with (see
    planner.runtime.adapter.find_adapter), checked against the decoding's skip set.

    Raises PlanError when there is none or it was trained for other skipped layers; what
    find_adapter raises for an unreadable adapter or one trained on another checkpoint."""
    from planner.runtime.adapter import config_shape, find_adapter

    adapter = find_adapter(source, config_shape(hf_config), given=decoding.adapter)
    if adapter is None:
        raise PlanError(f"decoding.method: s3d drafts with an adapter trained on this checkpoint, and {source} has none "
                        "(none given, none in its directory, none shipped for it): run `specplan adapt` first")
    if tuple(decoding.skip_layers) != adapter.info.skip_layers:
        raise PlanError(f"decoding.skip_layers: {list(decoding.skip_layers)} differs from the layers the adapter "
                        f"{adapter.path} was trained to skip, {list(adapter.info.skip_layers)}")
    return adapter


def _use_chat(tokenizer, chat: bool | None) -> bool:
    """Whether prompts go through the tokenizer's chat template: `chat`, or when None, whether
    the tokenizer has a template (an instruct model is served through its template, so
    acceptance measured on raw text is not what it serves). InputError for chat=True
    without a template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise InputError("`chat`: this model's tokenizer has no chat template (leave `chat` out: the prompts go in as raw text)")
    return has_template if chat is None else chat


def _prompt_ids(tokenizer, prompt: str, chat: bool, number: int) -> list[int]:
    if not chat:
        return tokenizer(prompt).input_ids
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja2 errors, or a template that raises on purpose
        raise InputError(f"prompt {number}: the tokenizer's chat template failed ({str(exc).strip() or type(exc).__name__})") from None
    return tokenizer(text, add_special_tokens=False).input_ids  # the template writes its own special tokens


def _encode(tokenizer, prompts, max_new_tokens: int, context: int, chat: bool) -> list[list[int]]:
    if not prompts:
        raise InputError("no prompt given")
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = _prompt_ids(tokenizer, prompt, chat, i + 1) if prompt.strip() else []
        if not ids:
            raise InputError(f"prompt {i + 1} is empty")
        if len(ids) + max_new_tokens > context:
            raise InputError(
                f"prompt {i + 1} has {len(ids)} tokens; with `max_new_tokens` {max_new_tokens} it exceeds "
                f"the plan's context of {context} tokens"
            )
        encoded.append(ids)
    return encoded


def _budget_gib(device, vram_gib: float | None, plan_vram_gib: float | None):
    """(the tightest memory limit in GiB, what sets it), or (None, "") when none is known."""
    import torch

    limits = [(v, label) for v, label in ((vram_gib, "`vram_gib`"), (plan_vram_gib, "the plan's constraints.vram_gib")) if v is not None]
    if device.type == "cuda":
        limits.append((torch.cuda.get_device_properties(device).total_memory / 1024**3, f"the device ({device})"))
    return min(limits) if limits else (None, "")


def make_drafter(plan, target, *, draft=None, adapter=None):
    """The plan's drafter on `target` (`draft`: the loaded draft model, for draft_model;
    `adapter`: the s3d_adapter, for s3d)."""
    from planner.runtime import drafters

    d = plan.decoding
    if d.method == "autoregressive":
        return drafters.Autoregressive()
    if d.method == "layer_skip":
        return drafters.LayerSkip(target, d.gamma, d.skip_layers)
    if d.method == "early_exit":
        return drafters.EarlyExit(target, d.gamma, d.exit_layer)
    if d.method == "s3d":
        from planner.runtime.adapter import attach

        return drafters.S3D(target, d.gamma, attach(target.decoder, adapter), adapter.info.mask_token_id)
    if d.method == "draft_model":
        return drafters.DraftModel(draft, d.gamma)
    return drafters.PromptLookup(target, d.gamma, d.ngram)


def _totals(generations) -> _Totals:
    tokens = sum(g.decode_tokens for g in generations)
    seconds = sum(g.decode_s for g in generations)
    iterations = sum(g.iterations for g in generations)
    drafted = sum(g.drafted for g in generations)
    return _Totals(
        tokens_per_s=tokens / seconds if seconds else 0.0,
        acceptance=sum(g.accepted for g in generations) / drafted if drafted else None,
        tokens_per_iteration=tokens / iterations if iterations else 0.0,
        iteration_ms=1000 * seconds / iterations if iterations else 0.0,
    )


def _streamer(tokenizer, stream):
    """on_tokens callback that passes the newly decoded text of one sequence to stream(str)."""
    seen: list[int] = []
    printed = [""]

    def on_tokens(new):
        seen.extend(new)
        text = tokenizer.decode(seen, skip_special_tokens=True)
        stream(text[len(printed[0]) :])
        printed[0] = text

    return on_tokens


@dataclass(frozen=True)
class Comparison:
    """One decoding timed in rounds interleaved with the others (compare_decodings)."""

    decoding: object  # planner.plan.schema.Decoding
    tokens_per_iteration: float
    tokens_per_s: float  # median over rounds
    iteration_ms: float  # median over rounds
    speedup: float  # median over rounds of tokens/s over the same round's autoregressive tokens/s
    speedup_range: tuple[float, float]  # slowest and fastest round
    identical: bool  # every prompt's tokens equal autoregressive decoding's
    group_speedups: tuple[tuple[str, float], ...] = ()  # (group, median over rounds of its paired speedup), in prompt order
    accept_counts: tuple[int, ...] = ()  # [n]: iterations (first round, every prompt) that accepted n drafts, n = 0..gamma

    def acceptance_by_position(self) -> tuple[float, ...]:
        """[i]: the fraction of iterations whose draft token i + 1 was accepted (tokens 1..gamma)."""
        iterations = sum(self.accept_counts)
        return tuple(sum(self.accept_counts[n:]) / iterations for n in range(1, len(self.accept_counts))) if iterations else ()


def _plan_profile(plan):
    """The plan's hardware profile, or None where it names none this machine can load."""
    from planner.errors import SpecplanError
    from planner.hardware import load_profile

    try:
        return load_profile(plan.hardware.profile)
    except SpecplanError:
        return None


class _Session:
    """A plan's checkpoint loaded once with its prompts encoded; a drafter per decoding, built
    (with its draft model, loaded once per path) when first asked for."""

    def __init__(self, plan, decodings, prompts, *, model, max_new_tokens, device, vram_gib, max_gamma, chat, dtype="auto"):
        """Every check that can refuse `decodings` happens before the target loads; the KV
        cache holds room for verifies of up to max_gamma + 1 tokens. A .gguf source is
        converted (once, cached) first; everything after that reads a directory. `dtype`
        auto: the decode dtype of the plan's profile when it is of this device's kind."""
        import torch

        from planner.runtime.checkpoint import load_tokenizer, local_checkpoint, read_hf_config
        from planner.runtime.load import DTYPES, load_target, resolve_device, resolve_dtype
        from planner.runtime.quantize import require_backend

        if max_new_tokens < 1:
            raise InputError(f"`max_new_tokens` must be at least 1, got {max_new_tokens}")
        if vram_gib is not None and not (math.isfinite(vram_gib) and vram_gib > 0):
            raise InputError(f"`vram_gib` must be a positive finite number, got {vram_gib}")
        self.plan, self.device = plan, resolve_device(device)
        self.source = local_checkpoint(model or plan.model.source)
        self.hf_config = read_hf_config(self.source)
        positions = getattr(self.hf_config.get_text_config(), "max_position_embeddings", None)  # None: no limit (ALiBi)
        if isinstance(positions, int) and plan.constraints.context > positions:
            raise InputError(f"the plan's context of {plan.constraints.context} tokens is beyond the {positions} positions "
                             f"of {model or plan.model.source}: plan for this checkpoint (specplan plan --model)")
        self.max_gamma = max_gamma
        self.max_seq_len = plan.constraints.context + max_gamma + 1  # a verify may write gamma + 1 slots past the last token
        self.dtype = resolve_dtype(dtype, self.device, _plan_profile(plan))
        self.dtype_name = next(name for name, value in DTYPES.items() if value == self.dtype)
        self._budget = _budget_gib(self.device, vram_gib, plan.constraints.vram_gib)
        self._draft_configs, self._drafts, self._drafters, self._estimates, self._adapters = {}, {}, {}, {}, {}
        for d in decodings:
            self.check(d)
        require_backend(plan.decoding.quant)
        self.tokenizer = load_tokenizer(self.source)
        self.chat = _use_chat(self.tokenizer, chat)
        self.encoded = _encode(self.tokenizer, prompts, max_new_tokens, plan.constraints.context, self.chat)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = () if eos is None else (eos,)
        # The caches hold what these prompts can reach, not the plan's whole context (which the
        # memory check counts): every step attends over the whole cache, a fixed length that
        # keeps a verify's numbers equal to a one-token step's, so a shorter cache is a cheaper step.
        longest = max((len(ids) for ids in self.encoded), default=0) + max_new_tokens
        self.cache_len = min(self.max_seq_len, longest + max_gamma + 1)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.target = load_target(self.source, device=self.device, max_seq_len=self.cache_len, dtype=self.dtype,
                                  quant=plan.decoding.quant)

    def check(self, d) -> float:
        """Refuse decoding `d` of this checkpoint before anything of it loads; its memory estimate (GiB)."""
        from planner.runtime.checkpoint import read_hf_config
        from planner.runtime.memory import check_budget, estimate_vram_gib

        if d in self._estimates:
            return self._estimates[d]
        quant = self.plan.decoding.quant
        if d.quant != quant:
            raise PlanError(f"decoding.quant: {d.quant} differs from {quant}; decodings run together share the target's")
        if d.gamma > self.max_gamma:
            raise PlanError(f"decoding.gamma: {d.gamma} is more than the {self.max_gamma} this checkpoint's cache was sized for")
        check_plan_matches(self.plan.replace(decoding=d), self.hf_config)
        if d.method == "s3d":
            self._adapters[d] = s3d_adapter(d, self.source, self.hf_config)
        if d.method == "draft_model" and d.draft_model not in self._draft_configs:
            config = read_hf_config(d.draft_model)
            if config.vocab_size != self.hf_config.vocab_size:
                raise PlanError(f"decoding.draft_model: vocabulary {config.vocab_size} differs from the target's {self.hf_config.vocab_size}")
            self._draft_configs[d.draft_model] = config
        estimate = estimate_vram_gib(self.hf_config, d, context=self.plan.constraints.context, max_gamma=self.max_gamma,
                                     device_type=self.device.type, dtype=self.dtype_name,
                                     draft_config=self._draft_configs.get(d.draft_model))
        budget, where = self._budget
        check_budget(estimate_gib=estimate, predicted_gib=self.plan.prediction.vram_gib if d == self.plan.decoding else 0.0,
                     budget_gib=budget, where=where)
        self._estimates[d] = estimate
        return estimate

    def drafter(self, d):
        from planner.runtime.load import load_target

        if d not in self._drafters:
            self.check(d)
            draft = None
            if d.method == "draft_model":
                if d.draft_model not in self._drafts:
                    self._drafts[d.draft_model] = load_target(d.draft_model, device=self.device, max_seq_len=self.cache_len,
                                                              dtype=self.dtype)
                draft = self._drafts[d.draft_model]
            self._drafters[d] = make_drafter(self.plan.replace(decoding=d), self.target, draft=draft,
                                             adapter=self._adapters.get(d))
        return self._drafters[d]


def refuse_served_only(method: str) -> None:
    """Nothing, when the built-in runtime decodes `method`.

    Raises:
        InputError: a learned-head method (eagle, eagle3, mtp, medusa), naming the engines that
            run it (planner/profiles/engines.yaml) to export the plan to.
    """
    from planner.plan.export import engine_info, engine_names
    from planner.plan.schema import HEAD_METHODS

    if method in HEAD_METHODS:
        engines = [name for name in engine_names() if method in engine_info(name).methods]
        raise InputError(f"the built-in runtime does not run {method} heads; serve the plan with "
                         f"{', '.join(engines)} (specplan export --to {engines[0]})")


def run_plan(
    plan,
    prompts: list[str],
    *,
    model: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    baseline: bool = False,
    rounds: int = 1,
    device: str = "auto",
    vram_gib: float | None = None,
    chat: bool | None = None,
    dtype: str = "auto",
    stream=None,
    warn=None,
) -> RunReport:
    """Decode `prompts` with `plan` on the checkpoint `model` (default plan.model.source): a
    directory, a .gguf file or a hub id.

    With `baseline`, each prompt is also decoded autoregressively right after the plan's
    decoding, so a slow spell of a shared machine falls on both alike; `rounds` (with
    `baseline`) repeats that over all prompts, autoregressive first in odd rounds, and the
    report gives the median round's speedup, each round's and their range (the text and
    tokens are the first round's; `identical` holds for every round). `chat`: each prompt
    as a user turn of the tokenizer's chat template (None: when it has one; see _use_chat).
    stream(text) receives decoded text as tokens are accepted; a newline ends each prompt.
    warn(line) receives, once the checks have passed and before decoding, what
    hardware_mismatch says when the plan was made for another device than this one.
    Raises InputError or one of its kinds (PlanError, BudgetError, DeviceError,
    NotFoundError) for anything that refuses the run."""
    import statistics

    import torch

    from planner.hardware.measure import device_name
    from planner.runtime.decode import generate
    from planner.runtime.drafters import Autoregressive

    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"`temperature` must be a finite number, 0 or more, got {temperature}")
    if rounds < 1:
        raise InputError(f"`rounds` must be at least 1, got {rounds}")
    if rounds > 1 and not baseline:
        raise InputError(f"`rounds` {rounds} times the plan against autoregressive decoding: give `baseline` too")
    refuse_served_only(plan.decoding.method)
    s = _Session(plan, [plan.decoding], prompts, model=model, max_new_tokens=max_new_tokens, device=device,
                 vram_gib=vram_gib, max_gamma=plan.decoding.gamma, chat=chat, dtype=dtype)
    drafter, plain = s.drafter(plan.decoding), Autoregressive()
    name = device_name(s.device)
    mismatch = hardware_mismatch(plan.hardware.device_name, str(s.device), name)
    if mismatch and warn:
        warn(mismatch)

    def decode(chosen, ids, on_tokens=None):
        return generate(s.target, chosen, ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                        eos_ids=s.eos_ids, on_tokens=on_tokens)

    warm = min(WARMUP_TOKENS, max_new_tokens)
    for chosen in (drafter, plain) if baseline else (drafter,):
        generate(s.target, chosen, s.encoded[0], max_new_tokens=warm, temperature=temperature, seed=seed)
    runs, plain_runs = [], []
    for ids in s.encoded:
        runs.append(decode(drafter, ids, _streamer(s.tokenizer, stream) if stream else None))
        if stream:
            stream("\n")
        if baseline:
            plain_runs.append(decode(plain, ids))
    paired = [(runs, plain_runs)] + [_paired_round(decode, drafter, plain, s.encoded, plain_first=r % 2 == 1)
                                     for r in range(1, rounds)]
    totals = _totals(runs)  # round 1's: tokens per iteration and acceptance are the same every round when greedy
    peak = torch.cuda.max_memory_allocated(s.device) / 1024**3 if s.device.type == "cuda" else None
    report = RunReport(
        method=plan.decoding.method,
        device=str(s.device),
        device_name=name,
        plan_device_name=plan.hardware.device_name,
        compiled=s.target.compiled,
        dtype=s.dtype_name,
        chat=s.chat,
        texts=tuple(s.tokenizer.decode(g.tokens, skip_special_tokens=True) for g in runs),
        tokens=tuple(g.tokens for g in runs),
        tokens_per_s=statistics.median(_totals(plan_round).tokens_per_s for plan_round, _ in paired),
        acceptance=totals.acceptance,
        tokens_per_iteration=totals.tokens_per_iteration,
        iteration_ms=statistics.median(_totals(plan_round).iteration_ms for plan_round, _ in paired),
        predicted=_predicted(plan),
        vram_estimate_gib=s.check(plan.decoding),
        peak_memory_gib=peak,
    )
    if not baseline:
        return report
    speedups = tuple(_speedup(plan_round, plain_round) for plan_round, plain_round in paired)
    return dataclasses.replace(
        report,
        baseline_tokens_per_s=statistics.median(_totals(plain_round).tokens_per_s for _, plain_round in paired),
        speedup=statistics.median(speedups) if all(_totals(plain_round).tokens_per_s for _, plain_round in paired) else None,
        identical=all(a.tokens == b.tokens for plan_round, plain_round in paired for a, b in zip(plan_round, plain_round)),
        speedup_rounds=speedups,
        speedup_range=(min(speedups), max(speedups)),
    )


def _paired_round(decode, drafter, plain, encoded, *, plain_first: bool):
    """(the plan's generations, autoregressive ones) of one more round over every prompt, each
    prompt decoded both ways in a row, autoregressive first when `plain_first`."""
    runs, plain_runs = [], []
    for ids in encoded:
        for chosen in ((plain, drafter) if plain_first else (drafter, plain)):
            (plain_runs if chosen is plain else runs).append(decode(chosen, ids))
    return runs, plain_runs


class DecodingBench:
    """A plan's checkpoint loaded once to time greedy decodings against autoregressive
    decoding on a fixed set of prompts (autotune's calibration). `decodings` are checked
    before anything loads; any decoding is built and warmed up the first time it is compared.
    `chat` as in run_plan; the `chat` attribute says what was chosen."""

    def __init__(self, plan, prompts: list[str], *, decodings=(), model: str | None = None, max_new_tokens: int = 32,
                 max_gamma: int = 8, seed: int = 0, device: str = "auto", chat: bool | None = None,
                 dtype: str = "auto", groups=None):
        """`groups`: a group name per prompt (default: all in one), for per-group speedups."""
        from planner.plan.schema import Decoding

        if max_new_tokens < 2:  # the first token comes from the prefill: no decoding step to time
            raise InputError(f"`max_new_tokens` must be at least 2 to time decoding, got {max_new_tokens}")
        if groups is not None and len(groups) != len(prompts):
            raise InputError(f"{len(groups)} group names for {len(prompts)} prompts")
        self.plain = Decoding(method="autoregressive", quant=plan.decoding.quant)
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.groups = tuple(groups) if groups is not None else (UNGROUPED,) * len(prompts)
        self._session = _Session(plan, [self.plain, *decodings], prompts, model=model, max_new_tokens=max_new_tokens,
                                 device=device, vram_gib=None, max_gamma=max_gamma, chat=chat, dtype=dtype)
        self.chat = self._session.chat
        self._warm = set()

    def compare(self, decodings, rounds: int = 3, on_round=None) -> list[Comparison]:
        """Each of `decodings` and autoregressive decoding (first in the result), `rounds`
        times, interleaved prompt by prompt. Timing on a shared machine drifts by up to 27%
        over seconds: each round's speedups are taken against that round's autoregressive
        run, and the median round is reported, over all prompts and per group.
        on_round(r, comparisons) is called after round r with what would be returned had
        the comparison stopped there (rounds 0..r); an exception it raises ends the comparison."""

        if rounds < 1:
            raise InputError(f"`rounds` must be at least 1, got {rounds}")
        decodings = [self.plain] + [d for d in decodings if d != self.plain]
        s = self._session
        for d in decodings:
            s.check(d)  # refuse any of them before decoding
        drafters = [self._warmed(d) for d in decodings]
        runs = [[[] for _ in range(rounds)] for _ in decodings]  # [decoding][round] -> generations
        for r in range(rounds):
            for ids in s.encoded:
                for k in _rotated(len(decodings), r):
                    runs[k][r].append(self._decode(drafters[k], ids))
            if on_round is not None:
                on_round(r, self._comparisons(decodings, [rounds_of[: r + 1] for rounds_of in runs]))
        return self._comparisons(decodings, runs)

    def _comparisons(self, decodings, runs) -> list[Comparison]:
        """Each decoding's Comparison from runs[decoding][round] -> generations: the median
        round over all prompts and per group."""
        import statistics

        if not all(_totals(gens).tokens_per_s for gens in runs[0]):
            raise InputError("every prompt ended at its first token: nothing to time")
        rounds = len(runs[0])
        names = list(dict.fromkeys(self.groups))
        in_group = {g: [i for i, name in enumerate(self.groups) if name == g] for g in names}
        result = []
        for k, d in enumerate(decodings):
            totals = [_totals(gens) for gens in runs[k]]
            ratios = [_speedup(runs[k][r], runs[0][r]) for r in range(rounds)]
            per_group = [(g, statistics.median(_speedup([runs[k][r][i] for i in idx], [runs[0][r][i] for i in idx])
                                               for r in range(rounds))) for g, idx in in_group.items()]
            result.append(Comparison(
                decoding=d,
                tokens_per_iteration=totals[0].tokens_per_iteration,  # greedy: the same every round
                tokens_per_s=statistics.median(t.tokens_per_s for t in totals),
                iteration_ms=statistics.median(t.iteration_ms for t in totals),
                speedup=statistics.median(ratios),
                speedup_range=(min(ratios), max(ratios)),
                identical=all(a.tokens == b.tokens for a, b in zip(runs[k][0], runs[0][0])),
                group_speedups=tuple(per_group),
                accept_counts=tuple(map(sum, zip(*(g.accept_counts for g in runs[k][0])))),
            ))
        return result

    def _decode(self, drafter, ids, max_new_tokens=None):
        from planner.runtime.decode import generate

        s = self._session
        return generate(s.target, drafter, ids, max_new_tokens=max_new_tokens or self.max_new_tokens, seed=self.seed,
                        eos_ids=s.eos_ids)

    def _warmed(self, d):
        """The drafter of `d`, run once first: a first run pays one-off allocation, dispatch and compile costs."""
        drafter = self._session.drafter(d)
        if d not in self._warm:
            self._decode(drafter, self._session.encoded[0], min(WARMUP_TOKENS, self.max_new_tokens))
            self._warm.add(d)
        return drafter


def compare_decodings(plan, decodings, prompts: list[str], *, model: str | None = None, max_new_tokens: int = 32,
                      rounds: int = 3, seed: int = 0, device: str = "auto", chat: bool | None = None,
                      dtype: str = "auto") -> list[Comparison]:
    """DecodingBench(...).compare(decodings, rounds) in one call: autoregressive decoding first,
    then each of `decodings`. Raises what DecodingBench and its compare raise."""
    bench = DecodingBench(plan, prompts, decodings=decodings, model=model, max_new_tokens=max_new_tokens,
                          max_gamma=max((d.gamma for d in decodings), default=0), seed=seed, device=device, chat=chat,
                          dtype=dtype)
    return bench.compare(decodings, rounds)


def _speedup(generations, plain_generations) -> float:
    """Tokens/s of `generations` over that of the autoregressive `plain_generations` of the same prompts."""
    plain = _totals(plain_generations).tokens_per_s
    return _totals(generations).tokens_per_s / plain if plain else 0.0


def _rotated(n: int, r: int) -> list[int]:
    """0..n-1 starting at r mod n: no decoding always runs first (or last) after a switch."""
    return [(r + i) % n for i in range(n)]
