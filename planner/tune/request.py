"""What a `tune` run is asked for (one frozen request, built once by the CLI), the split of
the prompts into tuning and held-out ones, and the fingerprint that keeps studies apart."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError
from planner.hardware.profile import HardwareProfile

Prompt = tuple[str, str]  # (text, group)
OBJECTIVES = ("mean", "worst-group")
MIN_NEW_TOKENS = 8  # a few speculative iterations at least, or there is nothing to time


@dataclass(frozen=True)
class TuneRequest:
    """Options of one `tune` run; each is documented once, here."""

    model: str | None = None  # checkpoint directory or .gguf file; None: the bundled demo model
    # a file of plain lines, or JSONL with "prompt" and an optional "group"; or (prompt, group)
    # pairs; None: the demo's
    prompts: str | tuple[Prompt, ...] | None = None
    # the fraction of each group's prompts held out (the last ones), or a prompts file or pairs
    held_out: float | str | tuple[Prompt, ...] = 0.5
    draft_models: tuple[str, ...] = ()  # draft_model candidates (directories); the demo's draft with the demo model
    quants: tuple[str, ...] = ("none",)  # target quantizations the study may choose
    methods: tuple[str, ...] | None = None  # None: every speculative method this checkpoint can run
    trials: int = 20  # the study's total: a second run on the same study continues to it
    storage: str | None = None  # Optuna storage; None: a SQLite file next to `out`
    study: str | None = None  # study name; None: named after the fingerprint
    objective: str = "mean"  # mean: median paired speedup over all tuning prompts; worst-group: the lowest group's
    max_new_tokens: int = 32
    rounds: int = 3  # interleaved rounds per trial (the median round is the trial's figure)
    skip_pattern: str = "middle"  # skipped layers: a centred block, or "any" subset (Draft & Verify, SWIFT)
    device: str = "auto"
    dtype: str = "auto"
    chat: bool | None = None  # prompts through the chat template (None: when the tokenizer has one)
    # hardware profile for the analytical model (a name, a YAML path or a HardwareProfile);
    # None: measure this device (quick)
    profile: str | HardwareProfile | None = None
    seed: int = 0
    out: str = "plan.yaml"

    def check(self) -> None:
        """Raises InputError for a value no run could use."""
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown `objective` '{self.objective}': expected {' or '.join(OBJECTIVES)}")
        if self.trials < 1:
            raise InputError(f"`trials` must be at least 1, got {self.trials}")
        if self.rounds < 1:
            raise InputError(f"`rounds` must be at least 1, got {self.rounds}")
        if self.max_new_tokens < MIN_NEW_TOKENS:
            raise InputError(f"`max_new_tokens` must be at least {MIN_NEW_TOKENS} to time decoding, got {self.max_new_tokens}")
        if self.skip_pattern not in ("middle", "any"):
            raise InputError(f"unknown `skip_pattern` '{self.skip_pattern}': expected middle or any")
        if not self.quants:
            raise InputError("`quants` is empty: allow at least none")
        if self.methods is not None and not self.methods:
            raise InputError("`methods` is empty: name at least one method, or leave it None for every one")
        if isinstance(self.held_out, (int, float)) and not 0.0 <= self.held_out < 1.0:
            raise InputError(f"`held_out` must be a fraction from 0 up to (not including) 1, or a prompts file, got {self.held_out}")

    def storage_url(self) -> str:
        """The storage, or by default sqlite:///DIR/NAME.study.db beside `out` (NAME: its stem)."""
        if self.storage:
            return self.storage
        out = Path(self.out).resolve()
        return f"sqlite:///{out.with_name(out.stem + '.study.db')}"



def split_prompts(prompts: list[Prompt], held_out: float) -> tuple[list[Prompt], list[Prompt]]:
    """(tuning, held-out): the last `held_out` fraction of each group's prompts is held out,
    rounded to the nearest prompt but keeping at least one of each group for tuning; a group
    of two or more prompts holds at least one out when `held_out` is above 0.

    Raises:
        InputError: `held_out` above 0 with not one group of two prompts or more.
    """
    groups = list(dict.fromkeys(group for _, group in prompts))
    tuning, held = [], []
    for group in groups:
        members = [p for p in prompts if p[1] == group]
        count = min(len(members) - 1, max(1 if held_out > 0 else 0, round(held_out * len(members))))
        tuning += members[: len(members) - count]
        held += members[len(members) - count :]
    if held_out > 0 and not held:
        raise InputError(f"`held_out` {held_out:g}: every group has a single prompt, none is left to hold out "
                         "(give more prompts, a held-out prompts file, or `held_out` 0)")
    return tuning, held


def digest(value) -> str:
    """SHA-256 (hex) of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def fingerprint(*, model_digest: str, model_name: str, device_name: str, prompts: list[Prompt], request: TuneRequest,
                space: str, dtype: str) -> dict:
    """What a study's trial values depend on: results with another fingerprint never mix."""
    return {
        "model": f"{model_name} sha256:{model_digest[:16]}",
        "device": device_name,
        "dtype": dtype,
        "prompts": f"{len(prompts)} sha256:{digest(prompts)[:16]}",
        "quants": list(request.quants),
        "objective": request.objective,
        "max_new_tokens": request.max_new_tokens,
        "rounds": request.rounds,
        "chat": request.chat,
        "space": space,
    }
